"""Open an import's input as an Ibis table inside the warehouse connection.

Files are read by DuckDB's own readers (Parquet, CSV, JSON Lines: parallel, no Python per row).
SQL sources (any SQLAlchemy URL: MariaDB/MySQL, PostgreSQL, SQLite, Oracle, Hive...) are
streamed in chunks into a temporary DuckDB table, so every kind of input then flows through
the same set-based pipeline. Every table gets ``__row``: the 1-based row number in the input,
which quarantine entries cite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import sqlalchemy as sa
from ibis.backends.duckdb import Backend

ROW = "__row"
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
Progress = Callable[[str, int, int | None], None]


class SourceError(ValueError):
    """The input cannot be read; the message says which input and why."""


def detect_format(uri: str) -> str:
    """``sql`` for a SQLAlchemy URL, else the file format from the suffix."""
    if "://" in uri and not uri.startswith("file://"):
        return "sql"
    suffixes = Path(uri).suffixes
    for suffix in reversed(suffixes):
        if suffix.lower() in FILE_FORMATS:
            return FILE_FORMATS[suffix.lower()]
    raise SourceError(
        f"{uri}: cannot tell the format from the file name; "
        "use .csv, .jsonl or .parquet, or pass a format"
    )


def open_file(con: Backend, path: str, fmt: str, text_columns: Iterable[str]) -> ir.Table:
    """The file as a table; ``text_columns`` (identifiers) are read as text, never as numbers.

    A CSV reader that guesses ``00123`` is the integer 123 would corrupt a member id.
    """
    path = path.removeprefix("file://")
    if not Path(path).exists():
        raise SourceError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            table = con.read_parquet(path, file_row_number=True)
            return table.rename({ROW: "file_row_number"}).mutate(**{ROW: ibis._[ROW] + 1})
        if fmt == "csv":
            header = con.read_csv(path)
            wanted = {c: "string" for c in text_columns if c in header.columns}
            table = con.read_csv(path, types=wanted or None)
        elif fmt == "jsonl":
            table = con.read_json(path, format="newline_delimited")
        else:
            raise SourceError(f"{path}: unknown format {fmt!r} (csv, jsonl, parquet)")
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - DuckDB's reader errors say what and where
        raise SourceError(f"{path}: cannot read as {fmt}: {exc}") from None
    return table.mutate(**{ROW: ibis.row_number() + 1})


def sql_statement(
    engine: sa.Engine, table: str | None, query: str | None, watermark: tuple[str, Any] | None
) -> sa.Select[Any]:
    """``SELECT *`` from a table or around a query, with ``WHERE wm > :last`` when incremental."""
    if (table is None) == (query is None):
        raise SourceError("give exactly one of a table or a query for a SQL source")
    if table is not None:
        schema, _, name = table.rpartition(".")
        source: Any = sa.table(name, schema=schema or None)
    else:
        source = sa.text(f"({query}) rapport_src")  # no AS: Oracle refuses it
    stmt: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(source)
    if watermark is not None:
        column, last = watermark
        quoted = engine.dialect.identifier_preparer.quote(column)
        stmt = stmt.where(sa.literal_column(quoted) > sa.bindparam("wm", last))
    return stmt


def _chunk_to_arrow(columns: list[str], rows: list[Any]) -> pa.Table:
    return pa.table({name: pa.array([r[i] for r in rows]) for i, name in enumerate(columns)})


def open_sql(
    con: Backend,
    url: str,
    *,
    table: str | None,
    query: str | None,
    watermark: tuple[str, Any] | None,
    progress: Progress | None = None,
    chunk: int = 50_000,
) -> ir.Table:
    """Stream the rows into a temporary DuckDB table (all in ``__import_src``)."""
    try:
        engine = sa.create_engine(url)
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"{_safe(url)}: not a usable SQLAlchemy URL: {exc}") from None
    chunks: list[pa.Table] = []
    done = 0
    try:
        with engine.connect() as conn:
            stmt = sql_statement(engine, table, query, watermark)
            result = conn.execution_options(stream_results=True).execute(stmt)
            columns = list(result.keys())
            for rows in result.partitions(chunk):
                chunks.append(_chunk_to_arrow(columns, list(rows)))
                done += len(rows)
                if progress:
                    progress("read", done, None)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver errors name the table/column
        raise SourceError(f"{_safe(url)}: {exc.__class__.__name__}: {exc}") from None
    finally:
        engine.dispose()
    if chunks:
        data = pa.concat_tables(chunks, promote_options="permissive")
    else:
        data = pa.table({name: pa.array([], pa.string()) for name in columns})
    data = data.cast(
        pa.schema(
            [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in data.schema]
        )
    )
    data = data.append_column(ROW, pa.array(range(1, data.num_rows + 1), pa.int64()))
    return con.create_table("__import_src", data, temp=True, overwrite=True)


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "<url>"
