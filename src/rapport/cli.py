"""The ``rapport`` command line. Sub-commands live next to what they drive; this file wires them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import typer

from rapport import accounts
from rapport.settings import get_settings
from rapport.workspace import Workspace

app = typer.Typer(no_args_is_help=True, help="Rapport: customer data platform and lead engine.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
app.add_typer(token_app, name="token")
warehouse_app = typer.Typer(no_args_is_help=True, help="The warehouse.")
app.add_typer(warehouse_app, name="warehouse")


def workspace() -> Workspace:
    return Workspace()


@app.command()
def init() -> None:
    """Create the workspace (idempotent); print the admin password the first time."""
    ws = workspace()
    password = ws.init()
    ws.close()
    if password:
        typer.echo(f"Workspace created in {ws.settings.home}.")
        typer.echo(f"Admin user: admin   password: {password}   (shown once)")
    else:
        typer.echo(f"Workspace in {ws.settings.home} is up to date.")


@app.command()
def serve(
    host: str = typer.Option(None, help="Interface to bind (default from settings)."),
    port: int = typer.Option(None, help="Port (default from settings)."),
) -> None:
    """Serve the collector, the API and the console on one port."""
    import uvicorn

    from rapport.web.app import create_app

    settings = replace(
        get_settings(),
        loader_in_process=False,
        log_writer_process=True,
        dispatcher_in_process=False,
    )
    ws = Workspace(settings)
    ws.init()
    parent = ["--parent", str(os.getpid())]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "rapport", "warehouse", "follow", *parent],
            preexec_fn=_follower_setup,
        ),
        subprocess.Popen(  # deliveries: their own interpreter, at full priority
            [sys.executable, "-m", "rapport", "delivery", "dispatch", *parent],
            preexec_fn=_die_with_parent,
        ),
    ]
    try:
        uvicorn.run(
            create_app(workspace=ws),
            host=host or ws.settings.host,
            port=port or ws.settings.port,
            log_level="info",
            access_log=False,
        )
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(30)


def _follower_setup() -> None:
    """In the follower, before it runs: a lower CPU priority (acknowledging events comes
    first), and the end of ``serve`` is its end too."""
    os.nice(10)
    _die_with_parent()


def _die_with_parent() -> None:
    """On Linux, a SIGTERM when ``serve`` dies. uvicorn re-raises the signal that stopped it,
    so ``serve``'s own clean-up may never run; a follower's pass then ends mid-transaction
    (DuckDB rolls back), a dispatcher's claimed messages return when their lease expires."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@warehouse_app.command("follow")
def warehouse_follow(
    parent: int = typer.Option(None, help="Stop when this process id is no longer the parent."),
) -> None:
    """Load the event log into the warehouse and resolve identities continuously
    (``rapport serve`` starts this)."""
    from rapport.stream.follow import follow

    with contextlib.suppress(KeyboardInterrupt):
        follow(workspace(), parent=parent)


@token_app.command("create")
def token_create(
    role: accounts.Role = typer.Option(accounts.Role.admin, help="Role of the token."),
    name: str = typer.Option("cli", help="A label for the token."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a bearer token for the API (shown once)."""
    ws = workspace()
    ws.init()
    token = accounts.create_token(ws.db, role, name)
    typer.echo(json.dumps({"token": token, "role": role.value, "name": name}) if as_json else token)


def _register() -> None:
    """Sub-command groups contributed by packages (each exposes a Typer ``cli``)."""
    import importlib

    for module, name in [
        ("rapport.ingest.cli", "source"),
        ("rapport.ingest.events_cli", "events"),
        ("rapport.ingest.import_cli", "import"),
        ("rapport.catalog.cli", "plan"),
        ("rapport.ingest.quarantine_cli", "quarantine"),
        ("rapport.demo.cli", "demo"),
        ("rapport.identity.cli", "identity"),
        ("rapport.tags.cli", "tags"),
        ("rapport.segments.cli", "segments"),
        ("rapport.delivery.cli", "delivery"),
        ("rapport.jobs.cli", "jobs"),
        ("rapport.stream.cli", "worker"),
        ("rapport.recommend.cli", "recommend"),
        ("rapport.campaigns.cli", "campaigns"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        cli = mod.cli
        if isinstance(cli, typer.Typer):
            app.add_typer(cli, name=name)
        else:
            app.command(name)(cli)


_register()
