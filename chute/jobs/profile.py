"""The built-in `profile` kind: read the whole CSV with DuckDB, keep its good rows as
Parquet, and describe them.

DuckDB streams the file: it never holds more than its memory limit, spilling to the
job's scratch folder, so files far larger than memory work. The steps:

1. choose the encoding (the job's, else a BOM, else UTF-8 if the head decodes, else
   Latin-1); encodings DuckDB cannot read are turned into UTF-8 first;
2. count the first line's fields (a file wider than MAX_COLUMNS fails at once, before
   DuckDB runs out of memory on it), then sniff delimiter, quoting and header on a
   sample, to fail at once on what is not CSV;
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chute.config import Settings
from chute.errors import plain_words
from chute.jobs.kinds import MAX_TEXT, JobCancelled, JobFailed, Progress, cut_text
from chute.upload.csvcheck import HEAD_BYTES, check_encoding, sniff_encoding

log = logging.getLogger(__name__)

PREVIEW_ROWS = 20
# The preview keeps its first rows up to this many characters of values: 20 rows of a
# wide file of long texts would otherwise make the job's JSON megabytes.
PREVIEW_CHARS = 256 * 1024
REJECT_ROWS = 100
# Widest file profiled. DuckDB keeps a vector of 2,048 values per column per thread:
# under its default limit of 1 GB, a file of 10,000 columns was sniffed and written to
# Parquet (peak 0.5 GB), one of 20,000 ran out of memory in the sniffer, with 200 rows.
# Excel itself stops at 16,384.
MAX_COLUMNS = 10_000
# Longest line read, in bytes (DuckDB's default, named here so that Chute's own checks
# agree with it): a longer line is a rejected row, the first (the header) fails the job.
MAX_LINE_BYTES = 2_000_000
# Rows DuckDB's sniffer samples (its sample_size), and the most bytes read to rebuild
# that sample when a line in it is too long.
SAMPLE_ROWS = 20_480
SAMPLE_BYTES = 64 * 1024 * 1024
_DELIMITERS = (",", ";", "\t", "|")  # those DuckDB's sniffer tries
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

    @field_validator("delimiter")
    @classmethod
    def _printable_delimiter(cls, value: str | None) -> str | None:
        # A control character but tab (NUL above all: PostgreSQL refuses it in text), a
        # quote or a line end cannot separate CSV fields.
        if value is not None and value != "\t" and (not value.isprintable() or value == '"'):
            raise ValueError("must be a tab or one printable character other than a quote")
        return value

    @field_validator("encoding")
    @classmethod
    def _text_encoding(cls, value: str | None) -> str | None:
        return None if value is None else check_encoding(value)


def profile(
    input: Path,
    params: dict[str, Any],
    progress: Progress,
    *,
    scratch: Path,
    outputs: Path,
    settings: Settings,
) -> dict[str, Any]:
    try:
        p = ProfileParams.model_validate(params)
    except ValidationError as exc:
        # Checked when the job was created; a job stored before a rule was added ends here.
        why = plain_words(exc.errors(), "params")
        raise JobFailed(f"The job's params are not valid: {why}.") from None
    size = input.stat().st_size
    if size == 0:
        raise JobFailed("The file is empty.")
    encoding = _python_name(p.encoding or _head_encoding(input))
    source = input
    if encoding not in _NATIVE:
        source = scratch / "input.utf-8.csv"
        _transcode(input, encoding, source, progress)
    parquet = outputs / "data.parquet"
    # What Python reads the source as (DuckDB reads UTF-8 for anything transcoded).
    codec = encoding if source == input else "utf-8"
    _check_first_line(source, codec, p)
    options = _read_options(p, _NATIVE.get(encoding, "utf-8"))
    started = time.perf_counter()
    with _connect(scratch, settings) as con:
        sniffed, read_options = _sniff(con, source, options, p, settings, scratch, codec)
        progress(_SNIFFED)
        sniffed_at = time.perf_counter()
        _copy(con, source, read_options, parquet, progress, settings)
        progress(_COPIED)
        copied_at = time.perf_counter()
        try:
            result = _describe(con, parquet)
            result["rejects"] = _rejects(con, source)
        except duckdb.OutOfMemoryException:
            raise JobFailed(_out_of_memory(settings)) from None
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


def _check_first_line(source: Path, codec: str, p: ProfileParams) -> None:
    """Fail in plain words on a file wider than MAX_COLUMNS, or whose header is longer
    than MAX_LINE_BYTES: DuckDB would run out of memory, or fail, with its own words.

    Counts the first line's fields for each delimiter the sniffer may choose (quoted text
    left out) and takes the most: a quick upper bound, before DuckDB reads anything.
    """
    with source.open("rb") as f:
        head = f.read(MAX_LINE_BYTES + 1)
    text = codecs.getincrementaldecoder(codec)(errors="replace").decode(head)
    unquoted = re.sub(r'"[^"]*"?', "", text)
    line, newline, _ = unquoted.partition("\n")
    delimiters = (p.delimiter,) if p.delimiter is not None else _DELIMITERS
    fields = max(line.count(d) + 1 for d in delimiters)
    if fields > MAX_COLUMNS:
        raise JobFailed(
            f"The file has {'' if newline else 'at least '}{fields:,} columns; Chute profiles "
            f"at most {MAX_COLUMNS:,}."
        )
    if not newline and len(head) > MAX_LINE_BYTES and p.header is not False:
        raise JobFailed(
            f"The file's first line, its header, is longer than {MAX_LINE_BYTES:,} bytes, the "
            "longest line Chute reads. If the file has no header row, create the job with "
            'params {"header": false}: a line that long is then a rejected row.'
        )


def _read_options(p: ProfileParams, encoding: str) -> dict[str, Any]:
    options: dict[str, Any] = {"encoding": encoding, "max_line_size": MAX_LINE_BYTES}
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
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):  # a struct: DuckDB's `columns` option
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
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
    con: duckdb.DuckDBPyConnection,
    source: Path,
    options: dict[str, Any],
    p: ProfileParams,
    settings: Settings,
    scratch: Path,
    codec: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Delimiter, quote and header from a sample, before the long pass, and the options to
    read the file with; JobFailed if the sample is not CSV.

    DuckDB's sniffer fails on a line longer than MAX_LINE_BYTES in its sample, where the
    long pass would set it aside as a rejected row. Then the sniffer is given the sample
    without its long lines, and the file is read with all that it found (columns and
    types included), so that the long pass's own sniffer does not read it again.
    """
    query = (
        "SELECT Delimiter, Quote, Escape, HasHeader, Columns, NewLineDelimiter, SkipRows, "
        "Comment, DateFormat, TimestampFormat FROM sniff_csv({})"
    )
    try:
        row = con.execute(query.format(_sql_args(source, {**options, "ignore_errors": True})))
        found = row.fetchone()
        long_lines = False
    except duckdb.Error as exc:
        if "maximum line size" not in str(exc).lower():
            raise JobFailed(_not_csv(exc, settings)) from None
        sample = scratch / "sniff-sample.csv"
        _sample_without_long_lines(source, codec, sample)
        sample_options = {**options, "encoding": "utf-8", "ignore_errors": True}
        try:
            found = con.execute(query.format(_sql_args(sample, sample_options))).fetchone()
        except duckdb.Error as exc:
            raise JobFailed(_not_csv(exc, settings)) from None
        long_lines = True
    assert found is not None
    delimiter, quote, escape, has_header, columns, new_line, skip, comment, dates, times = found
    if p.header is None and not has_header:
        first = ", ".join(cut_text(str(c["name"]), 40) for c in columns[:5])
        raise JobFailed(
            "The file has no header row: its first line looks like data, not column names "
            f"(DuckDB read its columns as {first}). Create the job with params "
            '{"header": false} to read it without one, or {"header": true} to take the '
            "first line as the header anyway."
        )
    sniffed = {
        "delimiter": delimiter,
        "quote": None if quote == "(empty)" else quote,
        "escape": None if escape == "(empty)" else escape,
        "header": bool(has_header) if p.header is None else p.header,
    }
    # Read with what the sample showed, so the long pass cannot decide otherwise.
    read = {**options, "header": sniffed["header"], "delim": delimiter}
    for name in ("quote", "escape"):
        if sniffed[name] is not None:
            read[name] = sniffed[name]
    if long_lines:  # everything, as DuckDB's own sniff_csv prompt spells it
        read.update(
            auto_detect=False,
            quote=sniffed["quote"] or "",
            escape=sniffed["escape"] or "",
            new_line=new_line,
            skip=int(skip),
            comment="" if comment == "(empty)" else comment,
            columns={str(c["name"]): str(c["type"]) for c in columns},
        )
        if dates:
            read["dateformat"] = dates
        if times:
            read["timestampformat"] = times
    return sniffed, read


def _sample_without_long_lines(source: Path, codec: str, target: Path) -> None:
    """The file's first SAMPLE_ROWS lines as UTF-8, less those over MAX_LINE_BYTES,
    reading at most SAMPLE_BYTES (a long line is never held whole)."""
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    kept = read = length = 0
    line: list[str] = []
    too_long = ended = False
    with source.open("rb") as src, target.open("w", encoding="utf-8", newline="") as dst:
        while kept <= SAMPLE_ROWS and read < SAMPLE_BYTES and not ended:
            block = src.read(1 << 20)
            read += len(block)
            ended = not block
            pieces = decoder.decode(block, final=ended).split("\n")
            for i, piece in enumerate(pieces):
                if not too_long:
                    line.append(piece)
                    length += len(piece.encode("utf-8", "replace"))
                    if length >= MAX_LINE_BYTES - 2:
                        too_long, line = True, []
                if i < len(pieces) - 1:  # the line ends here
                    if not too_long:
                        dst.write("".join(line) + "\n")
                        kept += 1
                    line, length, too_long = [], 0, False
        if ended and not too_long:  # the last line, with no newline after it
            dst.write("".join(line))


def _not_csv(exc: duckdb.Error, settings: Settings) -> str:
    # DuckDB's messages name server paths and internals; say what it means instead.
    text = str(exc)
    if isinstance(exc, duckdb.OutOfMemoryException) or "out of memory" in text.lower():
        return _out_of_memory(settings)
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


def _out_of_memory(settings: Settings) -> str:
    return (
        "The profile ran out of memory: DuckDB may use "
        f"{settings.duckdb_memory_limit} for a job (CHUTE_DUCKDB_MEMORY_LIMIT), and this "
        "file needs more. Files with thousands of columns need the most."
    )


def _copy(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    options: dict[str, Any],
    parquet: Path,
    progress: Progress,
    settings: Settings,
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
        raise JobFailed(_not_csv(exc, settings)) from None
    finally:
        stop.set()
        watcher.join()
    if cancelled.is_set():
        raise JobCancelled()


def _describe(con: duckdb.DuckDBPyConnection, parquet: Path) -> dict[str, Any]:
    """Rows, and per column: type, nulls, distinct (approximate but for the cases below),
    min, max, mean.

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
        # HyperLogLog's estimate may exceed the values there are (81,943 of 80,000): never
        # show more than that. Exact only where the count is known without a pass: a
        # BOOLEAN column's (from its statistics), and a column of at most one value.
        present = rows - nulls
        exact = (type_ == "BOOLEAN" and known is not None) or present <= 1
        columns.append(
            {
                "name": name,
                "type": type_,
                "nulls": nulls,
                "distinct": present if present <= 1 else min(int(distinct), present),
                "distinct_approximate": not exact,
                "min": _json_value(low),
                "max": _json_value(high),
                "mean": _json_value(mean),
            }
        )
    return {
        "rows": rows,
        "columns": columns,
        "preview": {"columns": names, "rows": _preview(con, table)},
    }


def _preview(con: duckdb.DuckDBPyConnection, table: str) -> list[list[Any]]:
    """The first PREVIEW_ROWS rows, as many as fit in PREVIEW_CHARS (at least one)."""
    rows: list[list[Any]] = []
    size = 0
    for row in con.execute(f"SELECT * FROM {table} LIMIT {PREVIEW_ROWS}").fetchall():
        values = [_json_value(v) for v in row]
        # Values as they will be stored: texts cut to MAX_TEXT (chute.jobs.kinds).
        size += sum(min(len(v), MAX_TEXT) if isinstance(v, str) else 8 for v in values)
        if rows and size > PREVIEW_CHARS:
            break
        rows.append(values)
    return rows


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
    """A value as JSON can hold it: dates and times as ISO text, long text cut.

    Every text of the result is cut when the kind returns (chute.jobs.kinds.cut_texts);
    cut here too because the Parquet writer cuts long text in its statistics, at more
    than MAX_TEXT characters: cut to MAX_TEXT, min and max are right."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    return cut_text(value if isinstance(value, str) else str(value))


def _rejects(con: duckdb.DuckDBPyConnection, source: Path) -> dict[str, Any]:
    """The rejected rows: their total, and the first ones with line number and reason."""
    count = con.execute("SELECT count(DISTINCT line) FROM reject_errors").fetchone()
    # A rejected line may be megabytes, and each of its errors repeats it and its value:
    # fetch only what the result keeps, the parts of a type error taken out by DuckDB.
    cast = [
        f"left(regexp_extract(error_message, {_literal(_CAST)}, {group}), 61)" for group in (1, 2)
    ]
    errors = con.execute(
        "SELECT line, line_byte_position, error_type, left(error_message, 1000), "
        f"left(csv_line, {MAX_TEXT + 1}), {', '.join(cast)}, "
        f"regexp_extract(error_message, {_literal(_CAST)}, 3) "
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
# DuckDB's words for a value that is not of its column's type (RE2 and Python alike).
_CAST = r'(?s)converting column "(.*)"\. Could not convert string "(.*)" to \'(\w+)\''


def _reason(errors: list[tuple[Any, ...]]) -> str:
    """One line's errors in a few words. A wrong number of fields comes first: the type
    errors of such a line only follow from its fields being shifted."""
    for _, _, kind, message, *_ in errors:
        if kind == "LINE SIZE OVER MAXIMUM":
            return f"the line is longer than {MAX_LINE_BYTES:,} bytes, the longest Chute reads"
        if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS"):
            found = _FIELD_COUNT.search(str(message))
            if found:
                return f"expected {found[1]} fields, found {found[2]}"
            return str(message)
    reasons = []
    for _, _, _, message, _, column, value, type_ in errors:
        if type_:  # column and value cut short, so that the reason still ends with the type
            text = f'column "{cut_text(column, 60)}": "{cut_text(value, 60)}" is not a {type_}'
        else:
            text = str(message)
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
