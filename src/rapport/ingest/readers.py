"""Open an import's input as an Ibis table inside the warehouse connection.

Files are read by DuckDB's own readers (Parquet, CSV, JSON Lines: parallel, no Python per row).
SQL sources (any SQLAlchemy URL: MariaDB/MySQL, PostgreSQL, SQLite, Oracle, Hive...) are
streamed in chunks into a temporary DuckDB table, so every kind of input then flows through
the same set-based pipeline. Every table gets ``__row``: the 1-based row number in the input,
which quarantine entries cite.
"""

from __future__ import annotations

import codecs
import tempfile
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


#: a CSV line longer than this (a 16 MB field is a mistake, not a customer's name) ends the
#: import with an error naming the line; DuckDB's default (2 MB) refused real exports
MAX_LINE = 16 << 20
#: what a CSV that is not UTF-8 is tried as: GB18030 decodes GBK and GB2312 (Chinese Windows
#: and warehouse exports) and never mistakes UTF-8 for itself, because UTF-8 is tried first
FALLBACK_ENCODINGS = ("gb18030",)
_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}


def _short(message: str, limit: int = 600) -> str:
    """DuckDB quotes the offending line: a 20 MB field must not become a 20 MB error."""
    return message if len(message) <= limit else message[:limit] + " ..."


def _is_utf8(path: str) -> tuple[bool, str]:
    """Whether the file decodes as UTF-8, streamed; else where it first does not."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return False, f"byte 0x{chunk[exc.start]:02x} at offset {offset + exc.start}"
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False, f"a truncated character at the end (offset {offset})"
    return True, ""


def _transcode(path: str, encoding: str) -> str:
    """A UTF-8 copy of ``path`` (DuckDB reads UTF-8 only); the caller deletes it."""
    fd, name = tempfile.mkstemp(suffix=Path(path).suffix or ".csv")
    line = 0
    try:
        with (
            open(fd, "w", encoding="utf-8", newline="") as out,
            open(path, encoding=encoding, newline="") as f,
        ):
            for line, text in enumerate(f, 1):  # noqa: B007 - the line for the error
                out.write(text)
    except UnicodeDecodeError as exc:
        Path(name).unlink(missing_ok=True)
        raise SourceError(
            f"{path}: line {line + 1} is not valid {encoding} ({exc.reason}); "
            'pass the file\'s encoding (--encoding / "encoding")'
        ) from None
    return name


def csv_encoding(path: str, encoding: str | None) -> str:
    """The file's encoding (a codec name): ``encoding`` when given, else UTF-8 if the file
    decodes as UTF-8, else the first of ``FALLBACK_ENCODINGS`` that decodes it."""
    if encoding:
        try:
            return codecs.lookup(encoding).name
        except LookupError:
            raise SourceError(f"{path}: unknown encoding {encoding!r}") from None
    utf8, where = _is_utf8(path)
    if utf8:
        return "utf-8"
    for candidate in FALLBACK_ENCODINGS:
        try:
            with open(path, encoding=candidate, newline="") as f:
                while f.read(1 << 20):
                    pass
        except UnicodeDecodeError:
            continue
        return codecs.lookup(candidate).name
    raise SourceError(
        f"{path}: not UTF-8 ({where}) nor {', '.join(FALLBACK_ENCODINGS)}; "
        'pass the file\'s encoding (--encoding / "encoding")'
    )


def _read_csv(con: Backend, path: str, text_columns: Iterable[str]) -> ir.Table:
    """Malformed lines (too few or too many fields) are kept aside in DuckDB's
    ``reject_errors`` (see ``csv_rejects``), not loaded and not silently dropped."""
    options: dict[str, Any] = {"max_line_size": MAX_LINE, "store_rejects": True}
    delimiter = _CSV_DELIMITERS.get(Path(path).suffix.lower())
    if delimiter:  # a ragged row must not make the sniffer guess another delimiter
        options.update(delim=delimiter, header=True)
    header = con.read_csv(path, **options)
    wanted = {c: "string" for c in text_columns if c in header.columns}
    return con.read_csv(path, types=wanted or None, **options)


def csv_rejects(con: Backend) -> list[dict[str, Any]]:
    """The malformed lines of the last CSV read: line number, reason and the line itself."""
    try:
        rows = con.raw_sql(
            "SELECT DISTINCT line, error_type, error_message, csv_line FROM reject_errors "
            "ORDER BY line"
        ).fetchall()
    except Exception:  # noqa: BLE001 - no CSV read in this connection yet
        return []
    return [
        {"line": int(line), "error": str(kind), "message": str(msg), "text": str(text)}
        for line, kind, msg, text in rows
    ]


def open_file(
    con: Backend,
    path: str,
    fmt: str,
    text_columns: Iterable[str],
    encoding: str | None = None,
) -> ir.Table:
    """The file as a table; ``text_columns`` (identifiers) are read as text, never as numbers.

    A CSV reader that guesses ``00123`` is the integer 123 would corrupt a member id. A CSV
    in another encoding (``encoding``, or GB18030/GBK detected when it is not UTF-8) is read
    through a UTF-8 copy, loaded into a temporary table before the copy is deleted.
    """
    path = path.removeprefix("file://")
    if not Path(path).exists():
        raise SourceError(f"{path}: no such file")
    copy = None
    try:
        if fmt == "parquet":
            table = con.read_parquet(path, file_row_number=True)
            return table.rename({ROW: "file_row_number"}).mutate(**{ROW: ibis._[ROW] + 1})
        if fmt == "csv":
            found = csv_encoding(path, encoding)
            if found in ("utf-8", "utf-8-sig", "ascii"):
                table = _read_csv(con, path, text_columns)
            else:
                copy = _transcode(path, found)
                table = _read_csv(con, copy, text_columns)
                table = con.create_table("__import_csv", table, temp=True, overwrite=True)
        elif fmt == "jsonl":
            table = con.read_json(path, format="newline_delimited")
        else:
            raise SourceError(f"{path}: unknown format {fmt!r} (csv, jsonl, parquet)")
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - DuckDB's reader errors say what and where
        raise SourceError(f"{path}: cannot read as {fmt}: {_short(str(exc))}") from None
    finally:
        if copy:
            Path(copy).unlink(missing_ok=True)
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
