"""``rapport plan``: export, import and show the tracking plan of the workspace."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rapport.catalog.models import PropertyOut
from rapport.catalog.plan import PlanError, get_plan
from rapport.catalog.yaml_io import PlanImportError, export_plan, import_plan
from rapport.db import upgrade
from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="The tracking plan: event types and properties.")


def _workspace() -> Workspace:
    ws = Workspace()
    upgrade(ws.settings.metadata_url)
    return ws


@cli.command("export")
def export_cmd(
    file: Path | None = typer.Argument(None, help="Write here instead of standard output."),
) -> None:
    """Print (or write to FILE) the whole plan as YAML."""
    ws = _workspace()
    text = export_plan(ws.db)
    ws.close()
    if file is None:
        typer.echo(text, nl=False)
    else:
        file.write_text(text, encoding="utf-8")
        typer.echo(f"Plan written to {file}.", err=True)


@cli.command("import")
def import_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A YAML plan."),
    replace: bool = typer.Option(False, "--replace", help="Delete what FILE does not declare."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Add and update the definitions of FILE (all or nothing)."""
    ws = _workspace()
    try:
        summary = import_plan(
            ws.db, file.read_text(encoding="utf-8"), replace=replace, actor=f"cli:{_user()}"
        )
    except PlanImportError as exc:
        for error in exc.errors:
            typer.echo(f"{file}: {error}", err=True)
        raise typer.Exit(1) from None
    except PlanError as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        ws.close()
    if as_json:
        typer.echo(json.dumps(summary.model_dump()))
        return
    s = summary
    typer.echo(
        f"Event types: {s.events_created} created, {s.events_updated} updated, "
        f"{s.events_deleted} deleted, {s.events_unchanged} unchanged.\n"
        f"Properties: {s.properties_created} created, {s.properties_updated} updated, "
        f"{s.properties_deleted} deleted, {s.properties_unchanged} unchanged."
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _constraints(prop: PropertyOut) -> str:
    parts = []
    if prop.required:
        parts.append("required")
    if prop.allowed_values is not None:
        parts.append("in " + ", ".join(str(v) for v in prop.allowed_values))
    if prop.min is not None:
        parts.append(f">= {prop.min:g}")
    if prop.max is not None:
        parts.append(f"<= {prop.max:g}")
    if prop.pii:
        parts.append("PII")
    return "; ".join(parts)


@cli.command("show")
def show_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Show the plan as tables."""
    ws = _workspace()
    plan = get_plan(ws.db)
    ws.close()
    if as_json:
        typer.echo(plan.model_dump_json(indent=2))
        return
    console = Console()
    if not (plan.events or plan.user_properties or plan.item_properties):
        console.print("The tracking plan is empty: every event is accepted as it comes.")
        return

    def table(title: str, rows: list[tuple[str, PropertyOut]], first: str) -> None:
        if not rows:
            return
        out = Table(title=title, title_justify="left")
        for column in (first, "property", "type", "constraints", "description"):
            out.add_column(column)
        for owner, prop in rows:
            out.add_row(owner, prop.name, prop.type.value, _constraints(prop), prop.description)
        console.print(out)

    events = Table(title="Event types", title_justify="left")
    for column in ("event", "kind", "properties", "description"):
        events.add_column(column)
    for event in plan.events:
        names = ", ".join(p.name for p in event.properties)
        events.add_row(event.name, event.kind.value, names, event.description)
    console.print(events)
    event_rows = [(e.name, p) for e in plan.events for p in e.properties]
    table("Event properties", [("*", p) for p in plan.common_properties] + event_rows, "event")
    table("User properties", [("user", p) for p in plan.user_properties], "scope")
    table("Item properties", [(p.item_type or "", p) for p in plan.item_properties], "item type")
