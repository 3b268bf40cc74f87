"""``rapport worker ...``: scaled-out processes of the stream path."""

from __future__ import annotations

import dataclasses
import logging

import typer

from rapport.settings import get_settings
from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="Scaled-out stream workers (NATS JetStream).")


def _partitions(text: str, total: int) -> list[int]:
    if text.strip() == "all":
        return list(range(total))
    try:
        out = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give partition numbers like 0,1,2 (or all)") from None
    bad = [p for p in out if not 0 <= p < total]
    if not out or bad:
        raise typer.BadParameter(
            f"{text!r}: partitions are 0..{total - 1} (setting stream_partitions = {total})"
        )
    return out


@cli.command("rules")
def rules(
    partitions: str = typer.Option(..., "--partitions", help="e.g. 0,1,2 (or all)"),
    nats: str = typer.Option("", "--nats", help="NATS URL (default: setting nats_url)"),
    batch: int = typer.Option(8, "--batch", min=1, help="NATS messages per partition and batch"),
) -> None:
    """Run the lead rules over these partitions of the persons' events; stop with Ctrl-C."""
    from rapport.stream import worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    if nats:
        settings = dataclasses.replace(settings, nats_url=nats)
    owned = _partitions(partitions, settings.stream_partitions)
    ws = Workspace(settings)
    ws.init()
    typer.echo(f"worker: partitions {','.join(map(str, owned))} of {settings.nats_stream}")
    worker.main(ws, owned, batch)
