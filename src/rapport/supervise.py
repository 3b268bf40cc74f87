"""Keeps the children of ``rapport serve`` (the follower, the dispatcher) running.

A child that dies (SIGKILL, OOM killer, a crash) is started again after a backoff: 0.5 s,
doubling up to 30 s, back to 0.5 s once a child has lived 60 s, so a child that cannot start
does not spin. A thread polls the children every 0.5 s rather than handling SIGCHLD, which
would race with ``subprocess``'s own waits (the event log's writer child). Nothing is
restarted once shutdown has begun: ``SupervisedServer`` tells the supervisor from uvicorn's
signal handler, before the children (often signalled with it: Ctrl-C, systemd's cgroup kill)
are seen gone. What the children do is safe to redo: the follower resumes from its offset in
the warehouse, a dispatcher's claimed messages return when their lease expires.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn

from rapport import metrics

log = logging.getLogger(__name__)

POLL = 0.5
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
RESET_AFTER = 60.0

_PR_SET_PDEATHSIG = 1
try:  # loaded in the parent: a forked child of a threaded process must not dlopen
    _prctl: Any = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not glibc Linux: children stop by their --parent check
    _prctl = None


def die_with_parent() -> None:
    """In a child before it runs (``preexec_fn``): a SIGTERM when its parent dies. uvicorn
    re-raises the signal that stopped it, so ``serve``'s own clean-up may never run; a
    follower's pass then ends mid-transaction (DuckDB rolls back), a dispatcher's claimed
    messages return when their lease expires. (On Linux the "parent" is the thread that
    started the child: the supervisor's thread lives as long as ``serve``.)"""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def background_and_die_with_parent() -> None:
    """The follower's ``preexec_fn``: a lower CPU priority (acknowledging events comes first)."""
    os.nice(10)
    die_with_parent()


@dataclass
class Child:
    """One supervised child: how to start it and its current process."""

    name: str
    argv: list[str]
    preexec_fn: Callable[[], None] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started: float = 0.0
    delay: float = FIRST_DELAY  # the wait before its next restart
    due: float | None = None  # when it is to be restarted; None while it runs
    restarts: int = 0


def describe_exit(code: int) -> str:
    """``Popen.returncode`` in words: a negative code is the signal that killed the child."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Starts the children, restarts each one that dies, stops them all at the end."""

    def __init__(
        self,
        children: Sequence[Child],
        poll: float = POLL,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        reset_after: float = RESET_AFTER,
    ) -> None:
        self.children = list(children)
        self.poll, self.first_delay, self.max_delay = poll, first_delay, max_delay
        self.reset_after = reset_after
        self._stopping = threading.Event()
        self._done = threading.Event()  # the children are stopped: the thread may end
        self._lock = threading.Lock()  # no spawn once stop() has taken the processes
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start every child, and the thread that watches them (it also starts the
        restarted ones, so their death signal is tied to a thread that lives as long)."""
        ready = threading.Event()

        def run() -> None:
            try:
                with self._lock:
                    for child in self.children:
                        metrics.CHILD_RESTARTS.labels(child.name)  # shown at 0 from the start
                        child.delay = self.first_delay
                        self._start(child, time.monotonic())
            finally:
                ready.set()
            self._watch()

        self._thread = threading.Thread(target=run, name="supervisor", daemon=True)
        self._thread.start()
        ready.wait()

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for c in self.children if c.proc and c.proc.poll() is None}

    def stop_restarting(self) -> None:
        """Shutdown has begun: children that die from now on stay dead. Safe in a signal
        handler (it only sets a flag)."""
        self._stopping.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop restarting, then SIGTERM every child and wait for them (SIGKILL for those
        still running ``timeout`` s later). Idempotent."""
        self.stop_restarting()
        with self._lock:
            procs = [(c.name, c.proc) for c in self.children if c.proc is not None]
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for name, proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                log.warning("the %s did not stop in %g s after SIGTERM: killing it", name, timeout)
                proc.kill()
                proc.wait()
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the watching thread -----------------------------------------------------------------
    def _watch(self) -> None:
        """Until ``stop`` has ended the children: the thread's end is their death signal."""
        while not self._done.wait(self.poll):
            if self._stopping.is_set():
                continue
            for child in self.children:
                try:
                    self._check(child)
                except Exception:  # noqa: BLE001 - the watch must go on for the others
                    log.exception("supervisor: checking the %s failed", child.name)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.due is None:
            code = None if child.proc is None else child.proc.poll()
            if code is None:
                return
            lived = now - child.started
            if lived >= self.reset_after:
                child.delay = self.first_delay
            child.due = now + child.delay
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(
                level,
                "the %s (pid %d) %s after %.1f s; restarting it in %g s",
                child.name,
                child.proc.pid if child.proc else 0,
                describe_exit(code),
                lived,
                child.delay,
            )
            return
        if now < child.due:
            return
        with self._lock:
            if self._stopping.is_set():
                return
            child.delay = min(child.delay * 2, self.max_delay)
            if not self._start(child, now):
                return
        child.restarts += 1
        metrics.CHILD_RESTARTS.labels(child.name).inc()
        assert child.proc is not None
        log.warning(
            "restarted the %s: pid %d (restart %d)", child.name, child.proc.pid, child.restarts
        )

    def _start(self, child: Child, now: float) -> bool:
        """Start ``child``; if it cannot be (e.g. no memory to fork), try again after its
        delay."""
        try:
            proc = subprocess.Popen(child.argv, preexec_fn=child.preexec_fn)  # noqa: PLW1509
        except OSError:
            child.due = now + child.delay
            log.exception("supervisor: could not start the %s", child.name)
            return False
        child.proc, child.started, child.due = proc, time.monotonic(), None
        return True


class SupervisedServer(uvicorn.Server):
    """uvicorn's server, telling the supervisor when shutdown begins (at the signal, before
    the connections drain) and stopping the children before it returns."""

    def __init__(self, config: uvicorn.Config, supervisor: Supervisor) -> None:
        super().__init__(config)
        self.supervisor = supervisor

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.supervisor.stop_restarting()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets)
        try:  # before uvicorn re-raises SIGTERM (which ends this process at once)
            await asyncio.to_thread(self.supervisor.stop)
        except Exception:  # noqa: BLE001 - the children still get SIGTERM as serve dies
            log.exception("supervisor: stopping the children failed")


def log_config() -> dict[str, Any]:
    """uvicorn's logging, plus this module's messages (exits, restarts) at INFO on stderr."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"][__name__] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
