"""``rapport jobs ...``: list the scheduled jobs, run one (or every due one), show the history."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Scheduled jobs: tags, segments, the lifecycle.")
console = Console()
JSON = typer.Option(False, "--json", help="Print JSON.")


def _ws() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


def _short(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def _status(run: dict[str, Any] | None) -> str:
    if run is None:
        return "never"
    colour = {"ok": "green", "failed": "red"}.get(run["status"], "yellow")
    took = f" {run['seconds']:.1f}s" if run.get("seconds") is not None else ""
    return f"[{colour}]{run['status']}[/{colour}] {_short(run['started_at'])}{took}"


@cli.command("list")
def list_cmd(as_json: bool = JSON) -> None:
    """Every job: schedule, next run (UTC), last run."""
    from rapport.jobs.runner import overview

    rows = overview(_ws())
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("job", "schedule", "next run (UTC)", "last run")
    for r in rows:
        nxt = f"[red]{r['schedule_error']}[/red]" if r["schedule_error"] else _short(r["next_run"])
        table.add_row(r["key"], r["schedule"], nxt, _status(r["last_run"]))
    console.print(table)


@cli.command("run")
def run_cmd(
    key: str = typer.Argument(None, help="The job's key (see `rapport jobs list`)."),
    due: bool = typer.Option(False, "--due", help="Run every job that is due, instead."),
    as_json: bool = JSON,
) -> None:
    """Run one job now, or (``--due``) every job whose time has come."""
    from rapport.jobs.runner import JobBusy, JobNotFound, run_due, run_now

    if bool(key) == due:
        raise typer.BadParameter("give a job's key or --due (one of the two)")
    ws = _ws()
    try:
        records = run_due(ws) if due else [run_now(ws, key)]
    except (JobNotFound, JobBusy) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(records, ensure_ascii=False))
    else:
        for r in records:
            outcome = r["error"] if r["status"] == "failed" else json.dumps(r.get("result"))
            typer.echo(f"{r['key']:<40} {r['status']:<7} {outcome}")
        if not records:
            typer.echo("nothing was due")
    if any(r["status"] == "failed" for r in records):
        raise typer.Exit(1)


@cli.command("history")
def history_cmd(
    key: str = typer.Argument(None, help="One job; all jobs when omitted."),
    limit: int = typer.Option(20, help="How many runs, newest first."),
    as_json: bool = JSON,
) -> None:
    """The latest runs with their status, duration and result or error."""
    from rapport.jobs.runner import history

    runs = history(_ws(), key, limit)
    if as_json:
        typer.echo(json.dumps(runs, ensure_ascii=False))
        return
    table = Table("started (UTC)", "job", "trigger", "status", "seconds", "result / error")
    for r in runs:
        detail = r["error"] or json.dumps(r["result"], ensure_ascii=False)
        took = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
        table.add_row(_short(r["started_at"]), r["key"], r["trigger"], r["status"], took, detail)
    console.print(table)
