"""``rapport source ...``: create and list the sources that may send data."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from rapport.ingest import sources
from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Sources: who may send data, with which key.")


def _workspace() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


@cli.command("create")
def create(
    name: str = typer.Argument(..., help="Name of the source, e.g. web, app, payments."),
    kind: str = typer.Option("client", help="client (apps, web) or server (has a secret key)."),
    strict: bool = typer.Option(False, "--strict", help="Quarantine events violating the plan."),
    allow: list[str] = typer.Option(
        None, "--allow", help="Only these track events (repeat or comma-separate)."
    ),
    description: str = typer.Option("", help="What the source is."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a source and print its write key (and secret key for server sources)."""
    ws = _workspace()
    try:
        created = sources.create_source(
            ws.db,
            name,
            kind=kind,
            validation_mode="strict" if strict else "lenient",
            allowed_events=allow or None,
            description=description,
        )
    except sources.SourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        ws.close()
    if as_json:
        typer.echo(json.dumps(created))
        return
    typer.echo(f"Source {name!r} created ({created['kind']}, {created['validation_mode']}).")
    typer.echo(f"write key:  {created['write_key']}")
    if created["secret_key"]:
        typer.echo(f"secret key: {created['secret_key']}   (keep it on the server)")


@cli.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the sources."""
    ws = _workspace()
    found = sources.list_sources(ws.db)
    ws.close()
    if as_json:
        typer.echo(json.dumps(found))
        return
    table = Table("name", "kind", "mode", "write key", "allowed events")
    for s in found:
        allowed = ", ".join(s["allowed_events"]) if s["allowed_events"] is not None else "all"
        table.add_row(s["name"], s["kind"], s["validation_mode"], s["write_key"], allowed)
    Console().print(table)


@cli.command("delete")
def delete(name: str) -> None:
    """Delete a source (its events stay in the log)."""
    ws = _workspace()
    deleted = sources.delete_source(ws.db, name)
    ws.close()
    if not deleted:
        typer.echo(f"error: no source named {name!r}", err=True)
        raise typer.Exit(1)
