"""``rapport recommend ...``: build the model, evaluate it offline, show a person's lists."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Recommendations: build, evaluate, show.")
console = Console()


def _ws() -> Workspace:
    ws = Workspace()
    ws.init()
    return ws


@cli.command("build")
def build_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Compute the model from the warehouse's behaviour and store it (rec_* tables)."""
    from rapport.recommend.build import build

    with console.status("building the recommendation model"):
        report = build(_ws().warehouse)
    if as_json:
        typer.echo(json.dumps(report))
        return
    counts = ", ".join(f"{k} {v:,}" for k, v in report.items() if isinstance(v, int))
    console.print(f"Built in {report['seconds']:.1f}s (as of {report['as_of'][:19]}): {counts}")


@cli.command("evaluate")
def evaluate_cmd(
    test_days: int = typer.Option(14, help="The last N days are the test period."),
    k: int = typer.Option(10, help="Length of the lists scored (precision@k, recall@k)."),
    max_persons: int = typer.Option(5000, help="Persons scored per kind, at most."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Offline evaluation on a time split, against a popularity baseline."""
    from rapport.recommend.evaluate import evaluate

    with console.status("training on the history before the split and scoring"):
        report = evaluate(_ws().warehouse, test_days, k, max_persons)
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(
        "kind", "persons", f"P@{k}", f"R@{k}", f"popular P@{k}", f"popular R@{k}",
        title=f"train < {report['split'][:10]} <= test (to {report['end'][:10]})",
    )  # fmt: skip
    for r in report["results"]:
        table.add_row(
            r["kind"], f"{r['persons']:,}", f"{r['precision']:.4f}", f"{r['recall']:.4f}",
            f"{r['baseline_precision']:.4f}", f"{r['baseline_recall']:.4f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"train model built in {report['train_build_seconds']:.1f}s; "
        f"evaluation took {report['seconds']:.1f}s"
    )


@cli.command("show")
def show_cmd(
    person: int = typer.Argument(..., help="Person key."),
    kind: str = typer.Option("guess_you_like", help="guess_you_like | repurchase | ..."),
    n: int = typer.Option(10, help="How many."),
) -> None:
    """A person's recommendations from the stored model."""
    from rapport.recommend.build import read
    from rapport.recommend.model import Model

    found = read(_ws().warehouse)
    if found is None:
        raise typer.BadParameter("no model yet: run `rapport recommend build`")
    model = Model(found)
    table = Table("item", "name", "score", "reason")
    for rec in model.recommend(kind, person, n):
        table.add_row(rec.item_id, model.name(rec.item_id), f"{rec.score:.4f}", rec.reason)
    console.print(table)
