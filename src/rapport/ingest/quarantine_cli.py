"""``rapport quarantine ...``: see rejected records and replay them once the plan is fixed."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from rapport.ingest import quarantine
from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Rejected records, with their reasons.")


def _workspace() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


@cli.command("list")
def list_(
    source: str = typer.Option(None, help="Only this source."),
    reason: str = typer.Option(None, help="Only this reason, e.g. unplanned_event."),
    status: str = typer.Option("open", help="open | replayed | discarded | all"),
    limit: int = typer.Option(100, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List quarantined records, newest first."""
    ws = _workspace()
    entries = quarantine.list_entries(
        ws.db, source, reason, None if status == "all" else status, limit
    )
    ws.close()
    if as_json:
        typer.echo(json.dumps(entries, ensure_ascii=False))
        return
    table = Table("id", "source", "kind", "event", "reason", "detail", "status")
    for e in entries:
        table.add_row(
            str(e["id"]), e["source"], e["kind"], e["event"], e["reason"], e["detail"], e["status"]
        )
    Console().print(table)


@cli.command("replay")
def replay(
    ids: list[int] = typer.Argument(None, help="Entries to replay."),
    source: str = typer.Option(None, help="Replay every open entry of this source."),
    all_: bool = typer.Option(False, "--all", help="Replay every open entry."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Re-check entries against the current tracking plan; those that pass enter the log."""
    ws = _workspace()
    if not ids:
        if source is None and not all_:
            ws.close()
            typer.echo("error: give entry ids, --source NAME or --all", err=True)
            raise typer.Exit(2)
        ids = quarantine.open_ids(ws.db, source)
    summary = quarantine.replay(ws, ids)
    ws.close()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"replayed {summary['replayed']}, still failing {summary['still_failing']}, "
            f"skipped {summary['skipped']} (not open)"
        )
