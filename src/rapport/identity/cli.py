"""``rapport identity ...``: resolve, rebuild, evaluate, and edit the identity rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="OneID: identity resolution.")
console = Console()


def _ws() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


@cli.command("resolve")
def resolve_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Resolve every record still waiting for a person (the server does this continuously)."""
    from rapport.identity.resolve import resolve_pending

    ws = _ws()
    started = time.perf_counter()
    with console.status("resolving identities…", spinner="dots"):
        report = resolve_pending(ws)
    out: dict[str, float] = dict(report.__dict__)
    out["seconds"] = round(time.perf_counter() - started, 2)
    typer.echo(json.dumps(out) if as_json else _kv(out))


@cli.command("rebuild")
def rebuild_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Recompute every person from the link log with today's rules."""
    from rapport.identity.resolve import full_rebuild

    ws = _ws()
    started = time.perf_counter()
    with console.status("rebuilding persons from the link log…", spinner="dots"):
        out: dict[str, float] = dict(full_rebuild(ws))
    out["seconds"] = round(time.perf_counter() - started, 2)
    typer.echo(json.dumps(out) if as_json else _kv(out))


@cli.command("detect-shared")
def detect_shared(
    dry_run: bool = typer.Option(False, help="Only list what would be blocked."),
) -> None:
    """Find shared values (household devices, test numbers) by degree and block them."""
    from rapport.identity.shared import block_shared, find_shared

    ws = _ws()
    found = find_shared(ws) if dry_run else block_shared(ws)
    for v in found:
        typer.echo(f"{v.id_type}\t{v.value}\t{v.persons} persons")
    typer.echo(f"{len(found)} shared value(s) {'found' if dry_run else 'blocked'}")


@cli.command("profiles")
def profiles_cmd() -> None:
    """Rebuild the merged profile of every person (table ``profiles``, survivorship rules)."""
    from rapport.identity.survivorship import build_profiles

    with console.status("merging per-source values…", spinner="dots"):
        count = build_profiles(_ws())
    typer.echo(f"{count:,} profiles")


@cli.command("match")
def match_cmd(
    merge_threshold: float = typer.Option(0.99, help="Link pairs at or above this probability."),
    review_threshold: float = typer.Option(0.8, help="Queue pairs from here for review."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Probabilistic matching (Splink): link sure look-alikes, queue likely ones for review."""
    from rapport.identity.matching import run_matching

    with console.status("scoring look-alike persons…", spinner="dots"):
        try:
            out = run_matching(
                _ws(), merge_threshold=merge_threshold, review_threshold=review_threshold
            )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps(out, default=str) if as_json else _kv(out))


@cli.command("evaluate")
def evaluate_cmd(
    truth: Path = typer.Option(None, help="Ground truth Parquet (default: the demo's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Pairwise precision and recall of the persons against a ground truth."""
    from rapport.identity.evaluate import evaluate

    ws = _ws()
    path = truth or ws.settings.home / "demo" / "ground_truth.parquet"
    try:
        out = evaluate(ws, path)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(out) if as_json else _kv(out))


@cli.command("lookup")
def lookup_cmd(id_type: str, value: str) -> None:
    """Print the person id holding an identifier value (exit 1 when none)."""
    from rapport.identity.config import ConfigError
    from rapport.identity.resolve import lookup
    from rapport.ingest.normalize import InvalidValue

    try:
        person = lookup(_ws(), id_type, value)
    except (ConfigError, InvalidValue) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if person is None:
        typer.echo("not found", err=True)
        raise typer.Exit(1)
    typer.echo(person)


@cli.command("types")
def types_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The identifier types with their priority, limit and paths."""
    from rapport.identity.config import load

    conf = load(_ws().db)
    rows = sorted(conf.types, key=lambda t: -t.priority)
    if as_json:
        typer.echo(json.dumps([t.as_dict() for t in rows]))
        return
    table = Table("type", "priority", "limit", "merge", "normaliser", "shared after", "paths")
    for t in rows:
        table.add_row(
            t.name,
            str(t.priority),
            str(t.max_per_person or "-"),
            "yes" if t.merge else "no",
            t.normaliser,
            str(t.shared_after or "-"),
            ", ".join(t.paths),
        )
    console.print(table)


@cli.command("block")
def block_cmd(
    value: str = typer.Argument(None, help="An exact (normalised) value."),
    id_type: str = typer.Option(None, "--type", help="Only for this type (default: all)."),
    pattern: str = typer.Option(None, help="A regular expression instead of a value."),
    reason: str = typer.Option(..., help="Why (shown in the history)."),
) -> None:
    """Block a value so it never links anyone; persons it had merged are split."""
    from rapport.identity.config import ConfigError
    from rapport.identity.resolve import block
    from rapport.ingest.normalize import InvalidValue

    try:
        block_id, detached = block(
            _ws(), id_type=id_type, value=value, pattern=pattern, reason=reason, actor="cli"
        )
    except (ConfigError, InvalidValue) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"block {block_id} added; {detached} known value(s) detached")


@cli.command("detach")
def detach_cmd(
    node_id: int = typer.Argument(..., help="The identifier's node id (see the 360° page)."),
    reason: str = typer.Option(..., help="Why (kept in the history)."),
) -> None:
    """Take an identifier away from its person: blocked, and the person recomputed (split)."""
    from rapport.identity.resolve import remove_identifier

    try:
        out = remove_identifier(_ws(), node_id, actor="cli", reason=reason)
    except LookupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(_kv(out))


@cli.command("unlink")
def unlink_cmd(
    seq: int = typer.Argument(..., help="The record's sequence number in the link log."),
    node_id: int = typer.Argument(..., help="The identifier's node id."),
) -> None:
    """Remove one record's link to an identifier; the person splits if the link held it."""
    from rapport.identity.resolve import remove_link

    try:
        out = remove_link(_ws(), seq, node_id, actor="cli")
    except LookupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(_kv(out))


def _kv(out: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in out.items())
