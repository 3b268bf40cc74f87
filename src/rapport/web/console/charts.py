"""ECharts options for a source's data-quality report (``rapport.ingest.quality``)."""

from __future__ import annotations

from typing import Any

from rapport.ingest.quality import quality_report

COLUMNS = ["Field", "Kind", "Records", "Filled", "Fill rate", "Invalid", "Duplicates", "Distinct"]


def quality(ws: Any, source: str) -> dict[str, Any] | None:
    """Charts, a table and a one-line summary for ``source``; None when it has no fields yet."""
    report = quality_report(ws, source)
    mine = next((s for s in report["sources"] if s["source"] == source), None)
    if mine is None or not mine["fields"]:
        return None
    fields = mine["fields"]
    names = [f["field"] for f in fields]
    conflicts = {c["property"]: c["identifiers"] for c in report["conflicts"]}
    # horizontal bars read best with the first field on top
    labels = list(reversed(names))
    ordered = list(reversed(fields))
    height = max(220, 28 * len(fields) + 70)

    def bars(key: str) -> list[int]:
        return [int(f.get(key) or 0) for f in ordered]

    fill_chart = {
        "grid": {"left": 140, "right": 40, "top": 10, "bottom": 30},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "xAxis": {"type": "value", "max": 100, "axisLabel": {"formatter": "{value}%"}},
        "yAxis": {"type": "category", "data": labels},
        "series": [
            {
                "name": "fill rate %",
                "type": "bar",
                "data": [
                    None if f["fill_rate"] is None else round(100 * f["fill_rate"], 1)
                    for f in ordered
                ],
                "itemStyle": {"color": "#6366f1", "borderRadius": [0, 3, 3, 0]},
                "label": {"show": True, "position": "right", "formatter": "{c}%"},
            }
        ],
    }
    problem_chart = {
        "grid": {"left": 140, "right": 20, "top": 30, "bottom": 30},
        "legend": {"top": 0},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "xAxis": {"type": "value", "minInterval": 1},
        "yAxis": {"type": "category", "data": labels},
        "series": [
            {
                "name": "invalid",
                "type": "bar",
                "stack": "p",
                "data": bars("invalid"),
                "itemStyle": {"color": "#dc2626"},
            },
            {
                "name": "duplicates",
                "type": "bar",
                "stack": "p",
                "data": bars("duplicates"),
                "itemStyle": {"color": "#d97706"},
            },
            {
                "name": "disagree across sources",
                "type": "bar",
                "stack": "p",
                "data": [conflicts.get(f["field"], 0) for f in ordered],
                "itemStyle": {"color": "#7c3aed"},
            },
        ],
    }
    rows = [
        [
            f["field"],
            f["kind"],
            _n(f["records"]),
            _n(f["filled"]),
            "—" if f["fill_rate"] is None else f"{100 * f['fill_rate']:.1f}%",
            _n(f["invalid"]),
            _n(f["duplicates"]),
            _n(f["distinct"]),
        ]
        for f in fields
    ]
    invalid = sum(int(f.get("invalid") or 0) for f in fields)
    summary = f"{mine['records']:,} records · {len(fields)} fields · {invalid:,} invalid values"
    return {
        "fields": names,
        "fill_chart": fill_chart,
        "problem_chart": problem_chart,
        "height": height,
        "columns": COLUMNS,
        "rows": rows,
        "summary": summary,
        "conflicts": [c for c in report["conflicts"] if c["examples"]],
    }


def _n(value: Any) -> str:
    return "—" if value is None else f"{value:,}"
