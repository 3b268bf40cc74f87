"""``rapport events ...``: read the event log, also while ``rapport serve`` writes to it."""

from __future__ import annotations

import json
import time

import msgspec
import typer

from rapport.log import LogRecord
from rapport.workspace import Workspace

cli = typer.Typer(no_args_is_help=True, help="The event log.")


@cli.command("count")
def count(
    event: str = typer.Option(None, help="Only this event name."),
    source: str = typer.Option(None, help="Only this source."),
) -> None:
    """Print the number of stored events (one integer)."""
    ws = Workspace()
    typer.echo(ws.log.count(event=event, source=source))
    ws.close()


def _line(offset: int, record: LogRecord) -> str:
    return json.dumps(
        {
            "offset": offset,
            "source": record.source,
            "type": record.type,
            "event": record.event,
            "userId": record.user_id,
            "anonymousId": record.anonymous_id,
            "timestamp": record.timestamp,
            "payload": msgspec.json.decode(record.payload),
        },
        ensure_ascii=False,
    )


@cli.command("tail")
def tail(
    n: int = typer.Option(20, "-n", help="How many of the newest events."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
) -> None:
    """Print the newest events as JSON lines; with --follow, keep going (Ctrl-C stops)."""
    ws = Workspace()
    log = ws.log
    try:
        rows = log.tail(n)
        last = rows[-1][0] if rows else log.last_offset()
        for offset, record in rows:
            typer.echo(_line(offset, record))
        while follow:
            rows = log.read(last, 1000)
            for offset, record in rows:
                typer.echo(_line(offset, record))
                last = offset
            if not rows:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        ws.close()
