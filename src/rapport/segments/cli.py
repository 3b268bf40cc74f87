"""``rapport segments ...``: list, refresh, check MECE, size a condition, lifecycle, funnel."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer

from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Audiences, segmentations, lifecycle, funnel.")


def _ws() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


def _when(as_of: str | None) -> datetime:
    if not as_of:
        return datetime.now(UTC)
    when = datetime.fromisoformat(as_of)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


AS_OF = typer.Option(None, "--as-of", help="Evaluate at this ISO time (default: now).")


def _print(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@cli.command("list")
def list_cmd() -> None:
    """Every audience, segmentation and the lifecycle, with size and last refresh."""
    from rapport.segments.store import list_segments

    for seg in list_segments(_ws()):
        typer.echo(
            f"{seg['name']:<30} {seg['kind']:<12} {seg['mode']:<8} "
            f"{seg['size'] if seg['size'] is not None else '-':>9}  {seg['refreshed_at'] or ''}"
        )


@cli.command("refresh")
def refresh_cmd(
    name: str | None = typer.Argument(None, help="One segment (default: the index and all)."),
    as_of: str | None = AS_OF,
) -> None:
    """Recompute members and bitmaps (and lifecycle transitions)."""
    from rapport.segments.refresh import refresh, refresh_all

    ws = _ws()
    _print(refresh(ws, name, _when(as_of)) if name else refresh_all(ws, _when(as_of)))


@cli.command("index")
def index_cmd() -> None:
    """Rebuild the bitmap index from tag values and segment members."""
    from rapport.segments.bitmaps import refresh_from_warehouse

    sizes = refresh_from_warehouse(_ws())
    typer.echo(f"{len(sizes)} sets, universe {sizes.get('all', 0)} persons")


@cli.command("mece")
def mece_cmd(name: str, as_of: str | None = AS_OF) -> None:
    """Check that a segmentation's buckets are exclusive and exhaustive (exit 1 if not)."""
    from rapport.segments.segmentations import check_mece

    report = check_mece(_ws(), name, _when(as_of))
    _print(report)
    if not report["ok"]:
        raise typer.Exit(1)


@cli.command("create-segmentation")
def create_segmentation_cmd(
    name: str, file: Path = typer.Argument(..., exists=True, help="The definition, JSON.")
) -> None:
    """Create a segmentation from a JSON definition (dimension, buckets, other)."""
    from rapport.segments.segmentations import create_segmentation

    _print(create_segmentation(_ws(), name, json.loads(file.read_text(encoding="utf-8"))))


@cli.command("size")
def size_cmd(
    condition: str = typer.Argument(..., help="JSON or text form."), as_of: str | None = AS_OF
) -> None:
    """How many persons match a condition now (and whether the bitmap index answered)."""
    from rapport.segments.audiences import parse_condition, size_of

    text = condition.strip()
    data = json.loads(text) if text.startswith("{") else text
    _print(size_of(_ws(), parse_condition(data), _when(as_of)))


@cli.command("lifecycle")
def lifecycle_cmd(
    refresh: bool = typer.Option(False, "--refresh", help="Recompute the stages first."),
    as_of: str | None = AS_OF,
) -> None:
    """Lifecycle distribution and the last transitions."""
    from rapport.segments import lifecycle

    ws = _ws()
    if refresh:
        lifecycle.refresh_lifecycle(ws, _when(as_of))
    _print(lifecycle.summary(ws))


@cli.command("funnel")
def funnel_cmd(as_of: str | None = AS_OF) -> None:
    """The AARRR funnel."""
    from rapport.segments.funnel import funnel

    _print(funnel(_ws(), _when(as_of)))


@cli.command("seed-demo")
def seed_demo_cmd(as_of: str | None = AS_OF) -> None:
    """Create the demo's seed segmentations (over the demo tags) and check them."""
    from rapport.segments.demo import define_demo_segments
    from rapport.segments.segmentations import check_mece

    ws = _ws()
    for name in define_demo_segments(ws):
        report = check_mece(ws, name, _when(as_of))
        overlaps = sum(o["count"] for o in report["overlaps"])
        typer.echo(
            f"{name}: {'MECE' if report['ok'] else 'NOT MECE'} "
            f"(overlapping {overlaps}, uncovered {report['uncovered']['count']})"
        )
