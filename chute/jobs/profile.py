"""The built-in `profile` kind: read the whole CSV with DuckDB, keep its good rows as
Parquet, and describe them.

DuckDB streams the file: it never holds more than its memory limit, spilling to the
job's scratch folder, so files far larger than memory work. The steps:

1. choose the encoding (the job's, else a BOM, else UTF-8 if the head decodes, else
   Latin-1); encodings DuckDB cannot read are turned into UTF-8 first;
2. sniff delimiter, quoting and header on a sample, to fail at once on what is not CSV;
3. one pass over the file: `COPY (SELECT * FROM read_csv(...)) TO data.parquet`, with
   malformed rows set aside by DuckDB (`store_rejects`) instead of failing the job, in
   the Parquet format's v2 encodings;
4. describe the Parquet file, which is columnar and small next to the CSV.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import decimal
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chute.config import Settings
from chute.jobs.kinds import JobCancelled, JobFailed, Progress
from chute.upload.csvcheck import HEAD_BYTES, sniff_encoding

log = logging.getLogger(__name__)

PREVIEW_ROWS = 20
REJECT_ROWS = 100
# Longest text kept of one value in the profile and preview, and of a rejected line.
MAX_TEXT = 200
# Encodings DuckDB reads itself, by Python's name for them.
_NATIVE = {"utf-8": "utf-8", "utf-8-sig": "utf-8", "utf-16": "utf-16", "latin-1": "latin-1"}
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
_UNSIGNED = ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")
# The Parquet format's v2 encodings (delta for integers and text, byte stream split for
# floats): on the benchmark's CSV the file is 2.5 times smaller than with v1's, and both
# the pass that writes it and the one that describes it are about 10 % faster. DuckDB,
# Arrow (pandas, Polars) and Spark 3 read them.
PARQUET_VERSION = "v2"
# Share of the progress bar each step takes.
_SNIFFED, _COPIED = 2.0, 92.0


class ProfileParams(BaseModel):
    """Parameters of the `profile` kind; all optional."""

    model_config = ConfigDict(extra="forbid")

    delimiter: str | None = Field(None, min_length=1, max_length=1)
    # None: the file must start with a header row; True: take the first row as the header
    # whatever it looks like; False: there is none, columns are named column0, column1...
    header: bool | None = None
    encoding: str | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}") from None
        return value


def profile(
    input: Path,
    params: dict[str, Any],
    progress: Progress,
    *,
    scratch: Path,
    outputs: Path,
    settings: Settings,
) -> dict[str, Any]:
    p = ProfileParams.model_validate(params)
    size = input.stat().st_size
    if size == 0:
        raise JobFailed("The file is empty.")
    encoding = _python_name(p.encoding or _head_encoding(input))
    source = input
    if encoding not in _NATIVE:
        source = scratch / "input.utf-8.csv"
        _transcode(input, encoding, source, progress)
    parquet = outputs / "data.parquet"
    options = _read_options(p, _NATIVE.get(encoding, "utf-8"))
    started = time.perf_counter()
    with _connect(scratch, settings) as con:
        sniffed = _sniff(con, source, options, p)
        progress(_SNIFFED)
        # Read with what the sample showed, so the long pass cannot decide otherwise.
        options["header"] = sniffed["header"]
        options["delim"] = sniffed["delimiter"]
        for name in ("quote", "escape"):
            if sniffed[name] is not None:
                options[name] = sniffed[name]
        sniffed_at = time.perf_counter()
        _copy(con, source, options, parquet, progress)
        progress(_COPIED)
        copied_at = time.perf_counter()
        result = _describe(con, parquet)
        result["rejects"] = _rejects(con, source)
    log.info(
        "profile of %d bytes: sniffed in %.2f s, copied to Parquet in %.2f s, described in %.2f s",
        size,
        sniffed_at - started,
        copied_at - sniffed_at,
        time.perf_counter() - copied_at,
    )
    result["dialect"] = {**sniffed, "encoding": encoding}
    result["input"] = {"size": size}
    result["parquet"] = {"size": parquet.stat().st_size}
    return result


profile.params_model = ProfileParams  # type: ignore[attr-defined]


def _python_name(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    # utf-16 is native only with its BOM (what "utf-16" means); -le and -be are transcoded.
    return {"iso8859-1": "latin-1"}.get(name, name)


def _head_encoding(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    return sniff_encoding(head, whole_file=len(head) < HEAD_BYTES)


def _transcode(source: Path, encoding: str, target: Path, progress: Progress) -> None:
    """Rewrite the file as UTF-8, block by block (DuckDB reads few encodings itself)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    total, done = source.stat().st_size, 0
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(8 * 1024 * 1024):
            dst.write(decoder.decode(block).encode("utf-8"))
            done += len(block)
            progress(_SNIFFED * 0.9 * done / total)
        dst.write(decoder.decode(b"", final=True).encode("utf-8"))


def _read_options(p: ProfileParams, encoding: str) -> dict[str, Any]:
    options: dict[str, Any] = {"encoding": encoding}
    if p.delimiter is not None:
        options["delim"] = p.delimiter
    if p.header is not None:
        options["header"] = p.header
    return options


def _sql_args(path: Path, options: dict[str, Any]) -> str:
    """`'path', name = value, ...` for DuckDB's CSV functions, every value quoted."""
    args = [_literal(str(path))]
    for name, value in options.items():
        args.append(f"{name} = {_literal(value)}")
    return ", ".join(args)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


@contextlib.contextmanager
def _connect(scratch: Path, settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    config: dict[str, Any] = {
        "memory_limit": settings.duckdb_memory_limit,
        "temp_directory": str(scratch / "duckdb"),
    }
    if settings.duckdb_threads:
        config["threads"] = settings.duckdb_threads
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute("SET enable_progress_bar = true; SET enable_progress_bar_print = false")
        yield con
    finally:
        con.close()


def _sniff(
    con: duckdb.DuckDBPyConnection, source: Path, options: dict[str, Any], p: ProfileParams
) -> dict[str, Any]:
    """Delimiter, quote and header from a sample, before the long pass; JobFailed if the
    sample is not CSV."""
    try:
        row = con.execute(
            "SELECT Delimiter, Quote, Escape, HasHeader, Columns "
            f"FROM sniff_csv({_sql_args(source, {**options, 'ignore_errors': True})})"
        ).fetchone()
    except duckdb.Error as exc:
        raise JobFailed(_not_csv(exc)) from None
    assert row is not None
    delimiter, quote, escape, has_header, columns = row
    if p.header is None and not has_header:
        first = ", ".join(str(c["name"]) for c in columns[:5])
        raise JobFailed(
            "The file has no header row: its first line looks like data, not column names "
            f"(DuckDB read its columns as {first}). Create the job with params "
            '{"header": false} to read it without one, or {"header": true} to take the '
            "first line as the header anyway."
        )
    return {
        "delimiter": delimiter,
        "quote": None if quote == "(empty)" else quote,
        "escape": None if escape == "(empty)" else escape,
        "header": bool(has_header) if p.header is None else p.header,
    }


def _not_csv(exc: duckdb.Error) -> str:
    # DuckDB's messages name server paths and internals; say what it means instead.
    text = str(exc)
    if "sniff" in text.lower() or "dialect" in text.lower():
        return (
            "The file could not be read as CSV: no delimiter and quoting give its lines "
            "the same number of columns. If it is CSV, set the job's delimiter param."
        )
    if "unicode" in text.lower() or "encod" in text.lower():
        return (
            "The file could not be read as text in the encoding chosen; set the job's "
            "encoding param."
        )
    return "The file could not be read as CSV."


def _copy(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    options: dict[str, Any],
    parquet: Path,
    progress: Progress,
) -> None:
    """The one pass over the whole file, reporting DuckDB's own progress."""
    stop = threading.Event()
    cancelled = threading.Event()

    def watch() -> None:
        while True:
            done = con.query_progress()
            try:
                if done >= 0:
                    progress(_SNIFFED + (_COPIED - _SNIFFED) * min(done, 100.0) / 100.0)
                else:
                    progress(_SNIFFED)  # still a chance to hear of a cancel
            except JobCancelled:
                cancelled.set()
                con.interrupt()
                return
            if stop.wait(0.25):
                return

    watcher = threading.Thread(target=watch, name="chute-profile-progress", daemon=True)
    watcher.start()
    try:
        read = f"read_csv({_sql_args(source, {**options, 'store_rejects': True})})"
        con.execute(
            f"COPY (SELECT * FROM {read}) TO {_literal(str(parquet))} "
            f"(FORMAT parquet, PARQUET_VERSION {PARQUET_VERSION})"
        )
    except duckdb.InterruptException:
        raise JobCancelled() from None
    except duckdb.Error as exc:
        if cancelled.is_set():
            raise JobCancelled() from None
        raise JobFailed(_not_csv(exc)) from None
    finally:
        stop.set()
        watcher.join()
    if cancelled.is_set():
        raise JobCancelled()


def _describe(con: duckdb.DuckDBPyConnection, parquet: Path) -> dict[str, Any]:
    """Rows, and per column: type, nulls, approximate distinct, min, max, mean.

    Nulls, min and max come from the statistics the Parquet writer keeps per row group
    (exact, and free to read); only distinct and mean need a pass over the values.
    """
    table = f"read_parquet({_literal(str(parquet))})"
    described = con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()
    names = [str(row[0]) for row in described]
    types = [str(row[1]) for row in described]
    rows_row = con.execute(
        f"SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata({_literal(str(parquet))})"
    ).fetchone()
    rows = int(rows_row[0]) if rows_row else 0
    stats = _row_group_stats(con, parquet, names, types)
    aggregates = []
    for name, type_ in zip(names, types, strict=True):
        col = _identifier(name)
        numeric = type_.startswith(_NUMERIC + _UNSIGNED)
        known = stats[name]
        if type_ == "BOOLEAN" and known is not None:
            # At most two values, and the statistics say which: no pass needed.
            aggregates.append(str(len({v for v in known[:2] if v is not None})))
        else:
            aggregates.append(f"approx_count_distinct({col})")
        aggregates.append(f"avg({col})" if numeric else "NULL")
        if known is None:  # no usable statistics: compute them
            aggregates += [f"count({col})", f"min({col})", f"max({col})"]
    values = iter(con.execute(f"SELECT {', '.join(aggregates)} FROM {table}").fetchone() or ())
    columns = []
    for name, type_ in zip(names, types, strict=True):
        distinct, mean = next(values), next(values)
        known = stats[name]
        if known is None:
            count, low, high = next(values), next(values), next(values)
            nulls = rows - int(count)
        else:
            low, high, nulls = known
        columns.append(
            {
                "name": name,
                "type": type_,
                "nulls": nulls,
                "distinct": int(distinct),
                "min": _json_value(low),
                "max": _json_value(high),
                "mean": _json_value(mean),
            }
        )
    preview = con.execute(f"SELECT * FROM {table} LIMIT {PREVIEW_ROWS}").fetchall()
    return {
        "rows": rows,
        "columns": columns,
        "preview": {"columns": names, "rows": [[_json_value(v) for v in r] for r in preview]},
    }


def _row_group_stats(
    con: duckdb.DuckDBPyConnection, parquet: Path, names: list[str], types: list[str]
) -> dict[str, tuple[Any, Any, int] | None]:
    """(min, max, nulls) per column from the file's row group statistics, or None for a
    column where some row group holds values but no min and max (NaN in a DOUBLE
    column, say). Long text is cut in statistics, but beyond what the profile shows."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE chute_stats AS SELECT path_in_schema AS col, "
        "stats_min_value AS lo, stats_max_value AS hi, stats_null_count AS nulls, "
        f"num_values AS n FROM parquet_metadata({_literal(str(parquet))})"
    )
    found: dict[str, tuple[Any, Any, int] | None] = {}
    for name, type_ in zip(names, types, strict=True):
        row = con.execute(
            f"SELECT min(TRY_CAST(lo AS {type_})), max(TRY_CAST(hi AS {type_})), "
            "coalesce(sum(nulls), 0), "
            "count(*) FILTER (WHERE nulls IS NULL OR (lo IS NULL AND nulls < n) "
            f"OR (TRY_CAST(lo AS {type_}) IS NULL AND lo IS NOT NULL)) "
            "FROM chute_stats WHERE col = ?",
            [name],
        ).fetchone()
        usable = row is not None and row[3] == 0
        found[name] = (row[0], row[1], int(row[2])) if usable and row is not None else None
    return found


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_value(value: Any) -> Any:
    """A value as JSON can hold it: dates and times as ISO text, long text cut short."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _rejects(con: duckdb.DuckDBPyConnection, source: Path) -> dict[str, Any]:
    """The rejected rows: their total, and the first ones with line number and reason."""
    count = con.execute("SELECT count(DISTINCT line) FROM reject_errors").fetchone()
    errors = con.execute(
        "SELECT line, line_byte_position, error_type, error_message, csv_line "
        "FROM reject_errors WHERE line IN "
        f"(SELECT DISTINCT line FROM reject_errors ORDER BY line LIMIT {REJECT_ROWS}) "
        "ORDER BY line, column_idx NULLS FIRST"
    ).fetchall()
    by_line: dict[int, list[tuple[Any, ...]]] = {}
    for row in errors:
        by_line.setdefault(int(row[0]), []).append(row)
    firsts = [rows[0] for rows in by_line.values()]
    lines = _line_numbers(source, [int(row[1]) for row in firsts])
    return {
        "count": int(count[0]) if count else 0,
        "rows": [
            {"line": line, "reason": _reason(rows), "text": _json_value(rows[0][4])}
            for line, rows in zip(lines, by_line.values(), strict=True)
        ],
    }


_FIELD_COUNT = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")
_CAST = re.compile(r'converting column "(.*)"\. Could not convert string "(.*)" to \'(\w+)\'')


def _reason(errors: list[tuple[Any, ...]]) -> str:
    """One line's errors in a few words. A wrong number of fields comes first: the type
    errors of such a line only follow from its fields being shifted."""
    for _, _, kind, message, _ in errors:
        if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS"):
            found = _FIELD_COUNT.search(str(message))
            if found:
                return f"expected {found[1]} fields, found {found[2]}"
            return str(message)
    reasons = []
    for _, _, _, message, _ in errors:
        cast = _CAST.search(str(message))
        text = f'column "{cast[1]}": "{cast[2]}" is not a {cast[3]}' if cast else str(message)
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons)


def _line_numbers(source: Path, positions: list[int]) -> list[int]:
    """The file's line number (1-based) at each of DuckDB's byte positions (1-based,
    ascending).

    DuckDB counts CSV records, and a record with a quoted newline spans several lines;
    people look for the line in an editor. Reads the file up to the last position only.
    """
    numbers: list[int] = []
    pending = iter(positions)
    target = next(pending, None)
    newlines = offset = 0
    with source.open("rb") as f:
        while target is not None and (block := f.read(8 * 1024 * 1024)):
            end = offset + len(block)
            while target is not None and target - 1 < end:
                numbers.append(newlines + block.count(b"\n", 0, target - 1 - offset) + 1)
                target = next(pending, None)
            newlines += block.count(b"\n")
            offset = end
    # Positions past the end (none are expected) get the last line.
    numbers += [newlines + 1 for _ in range(len(positions) - len(numbers))]
    return numbers
