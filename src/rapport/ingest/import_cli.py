"""``rapport import ...``: batch imports from files and databases, with progress bars."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from rapport.ingest.mapping import MappingError, load_mapping
from rapport.workspace import Workspace

if TYPE_CHECKING:
    from rapport.ingest.importer import ImportSpec


def _importer() -> ModuleType:
    """The importer pulls in DuckDB, Ibis and Arrow: load it only when an import runs."""
    from rapport.ingest import importer

    return importer


cli = typer.Typer(no_args_is_help=True, help="Batch imports: files, SQL tables and queries.")
err = Console(stderr=True)

COUNTS = ("rows_read", "rows_loaded", "rows_duplicate", "rows_quarantined")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """A Rich progress bar per stage (on stderr, so ``--json`` output stays clean)."""
    if not enabled:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _run(spec: ImportSpec, as_json: bool) -> None:
    ws = Workspace()
    ws.init()
    try:
        with _progress(err.is_terminal and not as_json) as progress:
            run = _importer().run_import(ws, spec, progress)
    except (_importer().ImportFailed, MappingError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        ws.close()
    if as_json:
        typer.echo(json.dumps(run, default=str))
        return
    typer.echo(
        f"import run {run['id']} ({spec.display_name()}): "
        + ", ".join(f"{k.removeprefix('rows_')} {run[k]:,}" for k in COUNTS)
    )
    if run.get("rows_quarantined"):
        typer.echo("quarantined rows: rapport quarantine list --source " + spec.source)


def _mapping(path: str) -> Any:
    try:
        return load_mapping(path)
    except (MappingError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _spec(**fields: Any) -> ImportSpec:
    try:
        return _importer().parse_spec(fields)
    except MappingError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


@cli.command("file")
def import_file(
    path: str = typer.Argument(..., help="CSV, JSON Lines or Parquet file."),
    source: str = typer.Option(..., "--source", help="Source name the records belong to."),
    mapping: str = typer.Option(..., "--mapping", help="Mapping file (YAML or JSON)."),
    name: str = typer.Option(None, "--name", help="Save the import under this name."),
    watermark: str = typer.Option(None, "--watermark", help="Column for incremental re-runs."),
    fmt: str = typer.Option(None, "--format", help="csv | jsonl | parquet (default: suffix)."),
    encoding: str = typer.Option(
        None, "--encoding", help="CSV encoding, e.g. gbk (default: UTF-8, else GBK detected)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """Import a file."""
    spec = _spec(
        name=name,
        source=source,
        uri=path,
        format=fmt,
        watermark=watermark,
        encoding=encoding,
        mapping=_mapping(mapping),
    )
    _run(spec, as_json)


@cli.command("sql")
def import_sql(
    url: str = typer.Argument(..., help="SQLAlchemy URL, e.g. mysql+pymysql://u:p@host/db."),
    source: str = typer.Option(..., "--source", help="Source name the records belong to."),
    mapping: str = typer.Option(..., "--mapping", help="Mapping file (YAML or JSON)."),
    table: str = typer.Option(None, "--table", help="Table to read (schema.table)."),
    query: str = typer.Option(None, "--query", help="Or a SELECT query."),
    watermark: str = typer.Option(None, "--watermark", help="Column for incremental re-runs."),
    name: str = typer.Option(None, "--name", help="Save the import under this name."),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """Import a database table or query (incremental with --watermark)."""
    if (table is None) == (query is None):
        err.print("[red]error:[/red] give exactly one of --table or --query")
        raise typer.Exit(2)
    spec = _spec(
        name=name,
        source=source,
        uri=url,
        format="sql",
        table=table,
        query=query,
        watermark=watermark,
        mapping=_mapping(mapping),
    )
    _run(spec, as_json)


@cli.command("run")
def run_saved(
    name: str = typer.Argument(..., help="Name of a saved import (rapport import list)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """Run a saved import again (incremental if it has a watermark)."""
    ws = Workspace()
    ws.init()
    definition = _importer().get_import(ws.db, name)
    ws.close()
    if definition is None:
        err.print(f"[red]error:[/red] no saved import named {name!r}")
        raise typer.Exit(1)
    _run(_importer().spec_of(definition), as_json)


@cli.command("list")
def list_imports(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Saved import definitions."""
    ws = Workspace()
    ws.init()
    rows = _importer().list_imports(ws.db)
    ws.close()
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table("name", "source", "input", "watermark", "last watermark")
    for r in rows:
        table.add_row(
            r["name"],
            r["source"],
            r["query"] or r["uri"],
            r["watermark_column"] or "",
            r["last_watermark"] or "",
        )
    Console().print(table)


@cli.command("runs")
def runs(
    source: str = typer.Option(None, "--source", help="Only this source."),
    limit: int = typer.Option(20, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recent import runs with their counts."""
    ws = Workspace()
    ws.init()
    rows = _importer().list_runs(ws.db, source, limit)
    ws.close()
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table("id", "source", "status", "started", *(c.removeprefix("rows_") for c in COUNTS))
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["source"],
            r["status"],
            str(r["started_at"])[:19],
            *(f"{r[c]:,}" for c in COUNTS),
        )
    Console().print(table)
