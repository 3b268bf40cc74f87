"""Masking personal data (mobile, ID card, email, bank card, ...) for roles that may not see it.

Which fields are personal: every property flagged ``pii`` in the tracking plan, plus the usual
identifier names, so that an unplanned ``mobile`` in an event is masked too.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy import Engine

from rapport.catalog.cache import current_plan

DEFAULT_PII_FIELDS = frozenset(
    {
        "mobile",
        "phone",
        "email",
        "id_card",
        "bank_card",
        "name",
        "address",
        "birthday",
        "wechat_openid",
        "wechat_unionid",
    }
)


#: parts of a Segment ``context`` that describe the software, not the person: left as they are
#: (``context.library.name`` is not a person's name)
TECHNICAL = frozenset({"library", "app", "os", "device", "screen", "network", "campaign"})


def pii_fields(engine: Engine) -> frozenset[str]:
    return DEFAULT_PII_FIELDS | frozenset(current_plan(engine).pii_fields())


def mask_value(value: Any) -> Any:
    """Enough to recognise a value, not to use it: ``138****8000``, ``z***@qq.com``."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "***"
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(value) >= 11:
        return (
            f"{value[:-8]}****{value[-4:]}" if len(value) <= 13 else f"{value[:4]}****{value[-4:]}"
        )
    return "***"


def mask(obj: Any, fields: frozenset[str]) -> Any:
    """A copy of ``obj`` (JSON-like) with the values of personal keys masked, at any depth."""
    if isinstance(obj, dict):
        return {k: _mask_item(k, v, fields) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask(v, fields) for v in obj]
    return obj


def _mask_item(key: str, value: Any, fields: frozenset[str]) -> Any:
    if isinstance(value, dict | list):
        return value if key in TECHNICAL else mask(value, fields)
    return mask_value(value) if key.lower() in fields else value


def mask_json_text(text: str, fields: frozenset[str]) -> str:
    """``mask`` for a payload stored as JSON text; text that is not JSON is hidden entirely."""
    try:
        return json.dumps(mask(json.loads(text), fields), ensure_ascii=False)
    except ValueError:
        return "*** (not JSON; hidden: it may hold personal data)"


def mask_rows(header: list[str], rows: list[list[Any]], fields: frozenset[str]) -> list[list[Any]]:
    """Rows of a table export (CSV, XLSX) with the cells of personal columns masked, and
    personal keys inside JSON cells too."""
    personal = [name.lower() in fields for name in header]
    out = []
    for row in rows:
        cells = []
        for is_personal, cell in zip(personal, row, strict=False):
            if is_personal:
                cell = mask_value(cell if cell is None or isinstance(cell, str) else str(cell))
            elif isinstance(cell, str) and cell[:1] in ("{", "["):
                cell = mask_json_text(cell, fields)
            cells.append(cell)
        out.append(cells)
    return out


def mask_csv(text: str, fields: frozenset[str]) -> str:
    """``mask_rows`` for CSV text whose first row is the header."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return text
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(rows[0])
    writer.writerows(mask_rows(rows[0], rows[1:], fields))
    return out.getvalue()
