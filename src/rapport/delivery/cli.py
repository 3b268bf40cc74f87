"""``rapport delivery``: run a dispatcher, look at the outbox."""

from __future__ import annotations

import contextlib
import json

import typer

from rapport import metrics

cli = typer.Typer(no_args_is_help=True, help="Delivery: the outbox and its dispatchers.")


@cli.command("dispatch")
def dispatch_command(
    once: bool = typer.Option(False, "--once", help="Send what is due now, then stop."),
    parent: int = typer.Option(None, help="Stop when this process id is no longer the parent."),
    metrics_port: str = typer.Option("0", "--metrics-port", help=metrics.PORT_HELP),
) -> None:
    """Send due messages (runs until stopped; ``rapport serve`` can start it beside the server)."""
    from rapport.delivery.dispatcher import dispatch
    from rapport.settings import get_settings

    if not once:
        metrics.serve_cli(metrics_port, "dispatch")
    with contextlib.suppress(KeyboardInterrupt):
        sent = dispatch(get_settings(), once=once, parent=parent)
        if once:
            typer.echo(f"{sent} message(s) claimed and processed.")


@cli.command("stats")
def stats_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Messages per channel and status, and what is due now."""
    from rapport.delivery.outbox import stats
    from rapport.workspace import Workspace

    ws = Workspace()
    ws.init()
    found = stats(ws.db)
    ws.close()
    if as_json:
        typer.echo(json.dumps(found))
        return
    typer.echo(f"due now: {found['due_now']}   oldest waiting: {found['oldest_waiting_seconds']} s")
    for channel, counts in sorted(found["channels"].items()):
        typer.echo(f"{channel}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
