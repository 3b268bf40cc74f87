"""Call lists for outbound call teams: messages of a ``call_list`` channel wait as ``listed``
and are exported as CSV or XLSX. Exporting marks them delivered (an attempt row says
"exported"), so the next export holds only what came since; ``mark=False`` previews.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, select

from rapport.db.tables import channels, delivery_attempts, outbox
from rapport.delivery.errors import DeliveryError
from rapport.delivery.outbox import now, utc

ENVELOPE = ["message_id", "key", "person_key", "origin", "queued_at"]


def take(engine: Engine, channel: str, mark: bool = True) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of ``channel``'s call list (oldest first)."""
    with engine.begin() as conn:
        row = conn.execute(
            select(channels.c.kind, channels.c.config).where(channels.c.name == channel)
        ).first()
        if row is None:
            raise DeliveryError(f"no channel named {channel!r}", "name", 404)
        if row.kind != "call_list":
            raise DeliveryError(
                f"channel {channel!r} is a {row.kind} channel, not a call list", "name"
            )
        messages = conn.execute(
            select(outbox)
            .where(outbox.c.channel == channel, outbox.c.status == "listed")
            .order_by(outbox.c.id)
        ).all()
        columns = list((row.config or {}).get("columns") or [])
        if not columns:
            for m in messages:
                columns += [k for k in m.payload if k not in columns]
        if mark and messages:
            at = now()
            ids = [m.id for m in messages]
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(ids), outbox.c.status == "listed")
                .values(status="delivered", delivered_at=at, attempts=outbox.c.attempts + 1)
            )
            conn.execute(
                sa.insert(delivery_attempts),
                [
                    {"message_id": m.id, "attempt": m.attempts + 1, "at": at, "outcome": "exported"}
                    for m in messages
                ],
            )
    rows = [
        [m.id, m.key, m.person_key, m.origin, utc(m.queued_at).isoformat()]  # type: ignore[union-attr]
        + [_cell(m.payload.get(c)) for c in columns]
        for m in messages
    ]
    return ENVELOPE + columns, rows


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        import orjson

        return orjson.dumps(value).decode()
    return value


def to_csv(header: list[str], rows: list[list[Any]]) -> bytes:
    """UTF-8 with a BOM, so that Excel opens Chinese names correctly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return ("\ufeff" + buffer.getvalue()).encode()


def to_xlsx(header: list[str], rows: list[list[Any]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("call list")
    sheet.append(header)
    for r in rows:
        sheet.append(r)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
