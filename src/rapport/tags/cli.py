"""``rapport tags ...``: list, compute (with a progress bar), refresh the rollups, show."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Tags: definitions, computation, history.")
console = Console()


def _ws() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


def _as_of(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@cli.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every tag with its kind, coverage and last run."""
    from rapport.tags import store
    from rapport.tags.definitions import list_tags

    ws = _ws()
    total, covered = store.coverage(ws)
    rows = []
    for tag in list_tags(ws.db):
        last = store.last_run(ws.db, tag["name"], status=None)
        rows.append(
            {
                "name": tag["name"],
                "kind": tag["kind"],
                "persons": covered.get(tag["name"], 0),
                "total": total,
                "last_run": None if last is None else last["status"],
                "finished_at": None if last is None else str(last["finished_at"] or "")[:19],
            }
        )
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("tag", "kind", "coverage", "last run")
    for r in rows:
        share = f"{r['persons']:,} / {total:,}"
        table.add_row(r["name"], r["kind"], share, f"{r['last_run'] or '—'} {r['finished_at']}")
    console.print(table)


@cli.command("compute")
def compute_cmd(
    name: str = typer.Argument(None, help="One tag; all tags when omitted."),
    as_of: str = typer.Option(None, help="Evaluate at this instant (ISO, UTC); default now."),
    full: bool = typer.Option(False, help="Recompute everyone, not only what changed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Compute one tag, or every tag (the rollups are refreshed first)."""
    from rapport.tags.compute import compute_all, compute_tag

    ws = _ws()
    at = _as_of(as_of)
    if name:
        reports = [compute_tag(ws, name, at, full=full)]
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=as_json) as bar:
            task = bar.add_task("rollups", total=None)

            def step(tag: str, done: int, total: int) -> None:
                bar.update(task, description=tag or "done", completed=done, total=total)

            reports = compute_all(ws, at, full=full, progress=step)
    if as_json:
        typer.echo(json.dumps(reports, default=str, ensure_ascii=False))
        return
    table = Table("tag", "persons", "incremental", "top values / error")
    for r in reports:
        if "error" in r:
            table.add_row(r["tag"], "—", "—", f"[red]{r['error']}[/red]")
            continue
        top = ", ".join(f"{v} {n:,}" for v, n in list(r["distribution"].items())[:4])
        table.add_row(r["tag"], f"{r['persons']:,}", str(r.get("incremental", False)), top)
    console.print(table)
    if any("error" in r for r in reports):
        raise typer.Exit(1)


@cli.command("rollup")
def rollup_cmd(
    full: bool = typer.Option(False, help="Rebuild every day."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Refresh the daily per-person rollups (``person_daily``)."""
    from rapport.tags.rollups import refresh

    with console.status("rolling up events per person and day…", spinner="dots"):
        report = refresh(_ws(), full=full).as_dict()
    typer.echo(json.dumps(report) if as_json else "  ".join(f"{k}={v}" for k, v in report.items()))


@cli.command("demo")
def demo_cmd() -> None:
    """Define the demo tags (compute them with ``rapport tags compute``)."""
    from rapport.tags.demo import define_demo_tags

    names = define_demo_tags(_ws())
    typer.echo(f"{len(names)} tags defined: {', '.join(names)}")


@cli.command("person")
def person_cmd(
    person: int = typer.Argument(..., help="person_key"),
    history: bool = typer.Option(False, help="Every value held, with its runs."),
) -> None:
    """A person's current tags (or their history)."""
    from rapport.tags import store

    ws = _ws()
    out = store.tag_history(ws, person) if history else store.person_tags(ws, person)
    typer.echo(json.dumps(out, default=str, ensure_ascii=False, indent=2))
