"""``rapport demo``: generate the demo retailer's systems, load them, then serve the console."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from rapport.demo.systems import window_end

if TYPE_CHECKING:
    from rapport.demo.generate import DemoFiles
    from rapport.demo.load import LoadReport


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _as_of(text: str | None) -> datetime:
    if not text:
        return window_end()
    try:
        return window_end(datetime.fromisoformat(text).replace(tzinfo=UTC))
    except ValueError:
        message = f"{text!r} is not a date (YYYY-MM-DD)"
        raise typer.BadParameter(message, param_hint="--as-of") from None


def cli(
    persons: int = typer.Option(100_000, min=1, help="How many (true) people to generate."),
    seed: int = typer.Option(42, help="Random seed: the same seed gives the same data."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop after loading."),
    host: str = typer.Option(None, help="Interface to serve on (default from settings)."),
    port: int = typer.Option(None, help="Port to serve on (default from settings)."),
    as_of: str = typer.Option(
        None, "--as-of", help="Last day of the generated 90 days (YYYY-MM-DD; default today)."
    ),
    workers: int = typer.Option(
        min(4, os.cpu_count() or 1), min=1, help="Processes generating data."
    ),
) -> None:
    """Generate a realistic multi-source retailer (members, orders, tickets, app/web tracking,
    with the usual mess and a hidden ground truth), load it, then serve the console.
    """
    # imported here: every `rapport` command loads this module, only `demo` needs these
    from rapport.demo import load
    from rapport.demo.generate import generate
    from rapport.demo.marketing import print_marketing, run_marketing
    from rapport.workspace import Workspace

    console = Console()
    end = _as_of(as_of)
    ws = Workspace()
    password = ws.init()
    root = ws.settings.home / "demo"
    with _progress(console) as progress:
        task = progress.add_task("generate: persons", total=persons)
        files = generate(
            root,
            persons=persons,
            seed=seed,
            end=end,
            workers=workers,
            progress=lambda n: progress.advance(task, n),
        )
        report = load.LoadReport()
        report.plan = load.load_plan(ws)
        load.create_sources(ws)
        report.events = load.load_events(ws, files, progress)
        report.imports = load.run_imports(ws, files, progress)
        task = progress.add_task("warehouse: events", total=None)
        report.warehouse_events = load.load_warehouse(ws)
        progress.update(task, total=report.warehouse_events, completed=report.warehouse_events)
        task = progress.add_task("identity: resolve", total=None)
        report.identity = load.resolve_identities(ws)
        progress.update(task, total=1, completed=1)
        report.labels = load.label_people(ws, progress)
        task = progress.add_task("marketing: campaign, banner", total=None)
        marketing = run_marketing(ws, end)
        progress.update(task, total=1, completed=1)
    report.quarantine = load.quarantine_counts(ws)
    ws.close()
    _summary(console, files, report)
    print_marketing(console, marketing)
    url = f"http://{host or ws.settings.host}:{port or ws.settings.port}/"
    console.print(f"Console: [bold]{url}[/bold]")
    if password:
        console.print(
            f"Log in as [bold]admin[/bold] with password [bold]{password}[/bold] (shown once)."
        )
    else:
        console.print(
            "Log in as [bold]admin[/bold] with the password `rapport init` printed "
            "(or use `rapport token create` for the API)."
        )
    if no_serve:
        return
    from rapport.cli import serve

    serve(host=host, port=port, role="all", children_metrics=0)  # a plain call: no Typer defaults


def _summary(console: Console, files: DemoFiles, report: LoadReport) -> None:
    console.print(
        f"Generated {files.persons:,} people (seed {files.seed}) in {files.root}; "
        f"ground truth: {files.counts['truth']:,} records in {files.ground_truth.name}."
    )
    console.print(f"Tracking plan: {report.plan}")
    table = Table(title="Loaded")
    table.add_column("source: data", no_wrap=True)
    for column in ("read", "loaded", "dupes", "quarantined"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, run in report.imports.items():
        keys = ("rows_read", "rows_loaded", "rows_duplicate", "rows_quarantined")
        label = f"{run.get('source', '')}: {name.removeprefix('demo:')}"
        table.add_row(label, *(f"{run.get(k) or 0:,}" for k in keys))
    for source, tally in report.events.items():
        statuses = ("accepted", "duplicate", "quarantined")
        table.add_row(
            f"{source}: events", f"{sum(tally.values()):,}", *(f"{tally[k]:,}" for k in statuses)
        )
    console.print(table)
    console.print(f"Warehouse: {report.warehouse_events:,} new events loaded.")
    ident = report.identity
    if ident:
        console.print(
            f"Identity: {ident['records']:,} records resolved, {ident['merges']:,} merges, "
            f"{ident['rejected']:,} links refused by limits, {ident['shared_blocked']:,} shared "
            "values blocked (`rapport identity evaluate` measures it against the ground truth)."
        )
    labels = report.labels
    if labels:
        console.print(
            f"Tags: {labels['tags']} computed; segments: {labels['segments']} refreshed "
            "(Tags and Segments pages)."
        )
        for tag, error in labels["failed_tags"].items():
            console.print(f"[red]tag {tag} failed:[/red] {error}")
        leads = labels.get("leads") or {}
        if leads.get("backtest"):
            console.print(
                f"Leads: rule {leads['rule']} is live; over the last {leads['days']} days it "
                f"{leads['backtest']['summary']}; {leads['leads']:,} leads made (Leads page, "
                "outbound call list)."
            )
    quarantine = Table(title="Quarantine (open) by reason")
    quarantine.add_column("reason")
    quarantine.add_column("records", justify="right")
    for reason, count in sorted(report.quarantine.items(), key=lambda kv: -kv[1]):
        quarantine.add_row(reason, f"{count:,}")
    console.print(quarantine)
