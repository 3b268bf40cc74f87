"""``rapport worker ...``: scaled-out processes of the stream path."""

from __future__ import annotations

import dataclasses
import logging

import typer

from rapport import metrics
from rapport.settings import get_settings
from rapport.workspace import Workspace

cli = typer.Typer(
    no_args_is_help=True,
    help="Scaled-out processes: identity (stage 1), rules (stage 2), dispatch, jobs.",
)


def _partitions(text: str, total: int) -> list[int]:
    if text.strip() == "all":
        return list(range(total))
    try:
        out = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give partition numbers like 0,1,2 (or all)") from None
    bad = [p for p in out if not 0 <= p < total]
    if not out or bad:
        raise typer.BadParameter(
            f"{text!r}: partitions are 0..{total - 1} (setting stream_partitions = {total})"
        )
    return out


@cli.command("rules")
def rules(
    partitions: str = typer.Option(..., "--partitions", help="e.g. 0,1,2 (or all)"),
    nats: str = typer.Option("", "--nats", help="NATS URL (default: setting nats_url)"),
    batch: int = typer.Option(8, "--batch", min=1, help="NATS messages per partition and batch"),
    metrics_port: str = typer.Option("0", "--metrics-port", help=metrics.PORT_HELP),
) -> None:
    """Run the lead rules over these partitions of the persons' events; stop with Ctrl-C."""
    from rapport.stream import worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    metrics.serve_cli(metrics_port, "rules")
    settings = get_settings()
    if nats:
        settings = dataclasses.replace(settings, nats_url=nats)
    owned = _partitions(partitions, settings.stream_partitions)
    ws = Workspace(settings)
    ws.init()
    typer.echo(f"worker: partitions {','.join(map(str, owned))} of {settings.nats_stream}")
    worker.main(ws, owned, batch)


@cli.command("identity")
def identity(
    parent: int = typer.Option(None, help="Stop when this process id is no longer the parent."),
    metrics_port: str = typer.Option("0", "--metrics-port", help=metrics.PORT_HELP),
) -> None:
    """Stage 1: load the event log into the warehouse, resolve identities and publish the
    persons' events to the partitions (one process; scheduled jobs run in ``worker jobs``)."""
    import contextlib

    from rapport.stream.follow import follow

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    metrics.serve_cli(metrics_port, "identity")
    with contextlib.suppress(KeyboardInterrupt):
        follow(Workspace(), parent=parent, jobs_every=0)


@cli.command("dispatch")
def dispatch(
    metrics_port: str = typer.Option("0", "--metrics-port", help=metrics.PORT_HELP),
) -> None:
    """Send due outbox messages; any number may run (messages are leased, never sent twice)."""
    import contextlib

    from rapport.delivery.dispatcher import dispatch as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    metrics.serve_cli(metrics_port, "dispatch")
    with contextlib.suppress(KeyboardInterrupt):
        run(get_settings())


@cli.command("jobs")
def jobs(
    every: float = typer.Option(30.0, "--every", min=1.0, help="Seconds between checks."),
    metrics_port: str = typer.Option("0", "--metrics-port", help=metrics.PORT_HELP),
) -> None:
    """Run the scheduled jobs as they fall due; several may run (each job is leased)."""
    import time

    from rapport.jobs.runner import run_due

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    metrics.serve_cli(metrics_port, "jobs")
    log = logging.getLogger("rapport.jobs")
    ws = Workspace()
    ws.init()
    try:
        while True:
            try:
                for record in run_due(ws):
                    log.info("job %s: %s", record.get("key"), record.get("status"))
            except Exception:  # noqa: BLE001 - a failed check must not stop the runner
                log.exception("scheduled jobs check failed")
            time.sleep(every)
    except KeyboardInterrupt:
        pass
    finally:
        ws.close()
