"""The `profile` kind on real files with real DuckDB, called as a worker calls it."""

from __future__ import annotations

import codecs
import datetime as dt
import math
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest

from chute.config import Settings
from chute.jobs.kinds import JobCancelled, JobFailed
from chute.jobs.profile import (
    MAX_COLUMNS,
    MAX_LINE_BYTES,
    PREVIEW_CHARS,
    PREVIEW_ROWS,
    REJECT_ROWS,
    _line_numbers,
    profile,
)

# Quoted fields with commas, quotes and a newline inside, a BOM, a column of mixed
# types (amount), an empty value, and three malformed rows: lines 7 and 9 in the head,
# and a date that is no date after more rows than DuckDB's type sniffer samples.
HEAD = (
    "\ufeffid,name,amount,joined,score\n"  # line 1
    '1,"Smith, John",3.5,2024-01-02,10\n'  # 2
    '2,"two\nlines",4,2024-01-03,20\n'  # 3-4
    '3,"say ""hi""",abc,2024-01-04,30\n'  # 5
    "4,plain,7.25,,40\n"  # 6
    "5,too,many,fields,here,now\n"  # 7: six fields
    "6,ok,8,2024-02-01,60\n"  # 8
    "7,short\n"  # 9: two fields
    "8,last,9,2024-03-01,80\n"  # 10
)
FILLER = 30_000
TRICKY = (
    HEAD
    + "".join(f"{100 + i},filler,1,2024-01-01,0\n" for i in range(FILLER))
    + "99,bad date,1,2024-13-45,90\n"  # line 11 + FILLER
).encode()


def run(tmp_path: Path, data: bytes, progress: Any = None, **params: Any) -> dict[str, Any]:
    source = tmp_path / "input.csv"
    source.write_bytes(data)
    for name in ("scratch", "outputs"):
        (tmp_path / name).mkdir(exist_ok=True)
    reported: list[float] = []
    result = profile(
        source,
        params,
        progress or reported.append,
        scratch=tmp_path / "scratch",
        outputs=tmp_path / "outputs",
        settings=Settings(data_dir=tmp_path / "data", duckdb_memory_limit="256MB"),
    )
    if progress is None:
        assert reported == sorted(reported), "progress only goes forward"
        assert all(0 <= p <= 100 for p in reported)
    return result


def parquet_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect() as con:
        path = str(tmp_path / "outputs" / "data.parquet")
        return con.execute("SELECT * FROM read_parquet(?)", [path]).fetchall()


def test_tricky_csv_gives_rows_types_and_rejected_lines(tmp_path: Path) -> None:
    result = run(tmp_path, TRICKY)
    assert result["rows"] == 6 + FILLER
    columns = {c["name"]: c for c in result["columns"]}
    assert list(columns) == ["id", "name", "amount", "joined", "score"]
    assert {name: c["type"] for name, c in columns.items()} == {
        "id": "BIGINT",
        "name": "VARCHAR",
        "amount": "VARCHAR",  # 3.5, 4 and abc: text
        "joined": "DATE",
        "score": "BIGINT",
    }
    assert columns["joined"]["nulls"] == 1
    assert (columns["joined"]["min"], columns["joined"]["max"]) == ("2024-01-01", "2024-03-01")
    assert (columns["score"]["min"], columns["score"]["max"]) == (0, 80)
    assert columns["score"]["mean"] == pytest.approx((10 + 20 + 30 + 40 + 60 + 80) / (6 + FILLER))
    assert columns["name"]["mean"] is None
    assert columns["id"]["distinct"] == pytest.approx(6 + FILLER, rel=0.05)

    rejects = result["rejects"]
    assert rejects["count"] == 3
    assert [r["line"] for r in rejects["rows"]] == [7, 9, 11 + FILLER]
    reasons = [r["reason"] for r in rejects["rows"]]
    assert reasons[0] == "expected 5 fields, found 6"
    assert reasons[1] == "expected 5 fields, found 2"
    assert "joined" in reasons[2] and "2024-13-45" in reasons[2] and "DATE" in reasons[2]
    assert rejects["rows"][1]["text"] == "7,short"

    assert result["preview"]["columns"] == ["id", "name", "amount", "joined", "score"]
    first = result["preview"]["rows"][:3]
    assert first[0] == [1, "Smith, John", "3.5", "2024-01-02", 10]
    assert first[1][1] == "two\nlines"
    assert first[2][1] == 'say "hi"'
    assert result["dialect"] == {
        "delimiter": ",",
        "quote": '"',
        "escape": '"',
        "header": True,
        "encoding": "utf-8-sig",
    }
    assert result["input"] == {"size": len(TRICKY)}
    # The Parquet file holds the good rows, in the file's order.
    rows = parquet_rows(tmp_path)
    assert [r[0] for r in rows[:7]] == [1, 2, 3, 4, 6, 8, 100]
    assert len(rows) == result["rows"]
    assert result["parquet"]["size"] == (tmp_path / "outputs" / "data.parquet").stat().st_size


def test_parquet_opens_in_arrow_with_the_same_rows(tmp_path: Path) -> None:
    # The file is written with the format's v2 encodings: a reader other than DuckDB's
    # must open it and find the same values and types.
    import pyarrow.parquet as pq

    result = run(tmp_path, TRICKY)
    path = tmp_path / "outputs" / "data.parquet"
    encodings = {
        e
        for c in pq.ParquetFile(path).metadata.row_group(0).to_dict()["columns"]
        for e in c["encodings"]
    }
    assert encodings & {"DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY"}, encodings
    table = pq.read_table(path)
    assert table.num_rows == result["rows"]
    assert [str(t) for t in table.schema.types] == [
        "int64",
        "string",
        "string",
        "date32[day]",
        "int64",
    ]
    assert [tuple(r.values()) for r in table.to_pylist()] == parquet_rows(tmp_path)


def test_params_set_delimiter_and_no_header(tmp_path: Path) -> None:
    data = b"1;alpha;2.5\n2;beta;3.5\n3;gamma;4.5\n"
    result = run(tmp_path, data, delimiter=";", header=False)
    assert result["rows"] == 3
    assert [c["name"] for c in result["columns"]] == ["column0", "column1", "column2"]
    assert result["columns"][2]["type"] == "DOUBLE"
    assert result["dialect"]["delimiter"] == ";"


def test_latin1_and_windows_1252_text_is_read(tmp_path: Path) -> None:
    text = "name,city\nJosé,Zürich\nAnaïs,Besançon\n"
    (tmp_path / "a").mkdir()
    latin = run(tmp_path / "a", text.encode("latin-1"))
    assert latin["preview"]["rows"] == [["José", "Zürich"], ["Anaïs", "Besançon"]]
    assert latin["dialect"]["encoding"] == "latin-1"
    # cp1252 is not one DuckDB reads: the file is turned into UTF-8 first.
    euro = "item,price\nbook,12 €\n"
    (tmp_path / "b").mkdir()
    result = run(tmp_path / "b", euro.encode("cp1252"), encoding="cp1252")
    assert result["preview"]["rows"] == [["book", "12 €"]]
    assert result["dialect"]["encoding"] == codecs.lookup("cp1252").name


def test_preview_and_reject_list_are_capped(tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{i}" if i % 2 else f"{i}" for i in range(400)]
    result = run(tmp_path, ("\n".join(lines) + "\n").encode())
    assert result["rows"] == 200
    assert len(result["preview"]["rows"]) == PREVIEW_ROWS
    assert result["rejects"]["count"] == 200
    assert len(result["rejects"]["rows"]) == REJECT_ROWS
    assert result["rejects"]["rows"][0]["line"] == 2  # row 0 has one field
    assert result["rejects"]["rows"][-1]["line"] == 2 + 2 * (REJECT_ROWS - 1)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"1,2,3\n4,5,6\n7,8,9\n", "no header"),
        (bytes(range(1, 256)) * 300, "could not be read as"),
    ],
    ids=["empty", "no-header", "binary"],
)
def test_not_csv_fails_with_plain_words(tmp_path: Path, data: bytes, words: str) -> None:
    with pytest.raises(JobFailed) as failed:
        run(tmp_path, data)
    message = str(failed.value)
    assert words in message
    assert str(tmp_path) not in message  # no server paths
    assert "Traceback" not in message


def test_header_true_takes_the_first_line_whatever_it_looks_like(tmp_path: Path) -> None:
    result = run(tmp_path, b"1,2\n3,4\n", header=True)
    assert [c["name"] for c in result["columns"]] == ["1", "2"]
    assert result["rows"] == 1


def test_a_cancel_stops_the_pass(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},name {i},{i * 0.5}" for i in range(300_000))

    def cancelled(percent: float) -> None:
        # Reports during the long pass come from DuckDB's progress watcher.
        if threading.current_thread() is not threading.main_thread():
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        run(tmp_path, f"id,name,value\n{rows}\n".encode(), progress=cancelled)


def test_line_numbers_count_newlines_before_each_position(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a\nbb\n\nccc\n")
    # 1-based byte positions of "a", "bb", the empty line and "ccc"
    assert _line_numbers(path, [1, 3, 6, 7]) == [1, 2, 3, 4]
    assert _line_numbers(path, []) == []


def test_profile_figures_agree_with_a_full_scan(tmp_path: Path) -> None:
    # Several row groups; a DOUBLE column with NaN and infinity (whose row groups keep no
    # min and max), an empty column, long text, timestamps.
    lines = ["n,x,empty,text,at,flag"]
    for i in range(300_000):
        x = "nan" if i == 5 else "inf" if i == 250_000 else f"{(i * 7919) % 1000 / 3:.3f}"
        text = ("long " * 60 + str(i)) if i % 1000 == 0 else f"t{i % 5000}"
        lines.append(f"{i},{x},,{text},2024-01-01 00:00:{i % 60:02d},{i % 3 == 0}")
    result = run(tmp_path, ("\n".join(lines) + "\n").encode())
    parquet = str(tmp_path / "outputs" / "data.parquet")
    with duckdb.connect() as con:
        for column in result["columns"]:
            name = column["name"]
            nulls, low, high = con.execute(
                f'SELECT count(*) - count("{name}"), min("{name}"), max("{name}") '
                "FROM read_parquet(?)",
                [parquet],
            ).fetchone() or (None, None, None)
            assert column["nulls"] == nulls, name
            assert same(column["min"], low), (name, column["min"], low)
            assert same(column["max"], high), (name, column["max"], high)
    columns = {c["name"]: c for c in result["columns"]}
    assert columns["empty"]["nulls"] == 300_000
    assert columns["x"]["max"] == "nan"  # DuckDB orders NaN above infinity
    assert columns["n"]["distinct"] == pytest.approx(300_000, rel=0.05)
    assert (columns["flag"]["type"], columns["flag"]["distinct"]) == ("BOOLEAN", 2)
    assert columns["empty"]["distinct"] == 0
    assert columns["at"]["distinct"] == pytest.approx(60, abs=3)  # approximate


def same(got: Any, want: Any) -> bool:
    """A profile's JSON value against DuckDB's own."""
    if want is None or isinstance(want, bool | int):
        return bool(got == want)
    if isinstance(want, float):
        return got == str(want) if not math.isfinite(want) else got == pytest.approx(want)
    text = want.isoformat() if isinstance(want, dt.date | dt.time) else str(want)
    if isinstance(got, str) and got.endswith("…"):
        return text.startswith(got[:-1])
    return bool(got == text)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_wide_encodings_are_read(tmp_path: Path, encoding: str) -> None:
    text = "name,city\nJosé,Zürich\n"
    result = run(tmp_path, text.encode(encoding), encoding=encoding)
    assert result["preview"]["rows"] == [["José", "Zürich"]]


def test_a_file_too_wide_to_profile_fails_saying_so(tmp_path: Path) -> None:
    # 100,000 columns in 2.4 MB: DuckDB ran out of memory on it, which read as "could not
    # be read as CSV". The header may be absent: the first line is counted either way.
    columns = 100_000
    data = "".join(",".join(str((r + c) % 10) for c in range(columns)) + "\n" for r in range(12))
    assert 2_000_000 < len(data) < 3_000_000
    with pytest.raises(JobFailed) as failed:
        run(tmp_path, data.encode(), header=False)
    assert str(failed.value) == (
        f"The file has 100,000 columns; Chute profiles at most {MAX_COLUMNS:,}."
    )


def test_running_out_of_memory_fails_saying_so(tmp_path: Path) -> None:
    data = "".join(",".join(str((r + c) % 10) for c in range(3000)) + "\n" for r in range(12))
    source = tmp_path / "input.csv"
    source.write_text(data)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "outputs").mkdir()
    settings = Settings(data_dir=tmp_path / "data", duckdb_memory_limit="32MB", duckdb_threads=1)
    with pytest.raises(JobFailed) as failed:
        profile(
            source,
            {"header": False},
            lambda _: None,
            scratch=tmp_path / "scratch",
            outputs=tmp_path / "outputs",
            settings=settings,
        )
    assert str(failed.value) == (
        "The profile ran out of memory: DuckDB may use 32MB for a job "
        "(CHUTE_DUCKDB_MEMORY_LIMIT), and this file needs more. Files with thousands of "
        "columns need the most."
    )


def test_a_header_longer_than_a_line_may_be_fails_saying_so(tmp_path: Path) -> None:
    data = ("name" + "x" * MAX_LINE_BYTES + ",b\n1,2\n").encode()
    with pytest.raises(JobFailed) as failed:
        run(tmp_path, data)
    assert str(failed.value).startswith(
        f"The file's first line, its header, is longer than {MAX_LINE_BYTES:,} bytes"
    )


@pytest.mark.parametrize("where", [50, 30_000], ids=["in-the-sniff-sample", "after-it"])
def test_a_line_too_long_is_a_rejected_row_wherever_it_is(tmp_path: Path, where: int) -> None:
    lines = ["id,name,when"] + [f"{i},n{i},2024-01-{i % 28 + 1:02d}" for i in range(40_000)]
    lines[where] = f"{where}," + "x" * (MAX_LINE_BYTES + 10) + ",2024-01-01"
    result = run(tmp_path, ("\n".join(lines) + "\n").encode())
    assert result["rows"] == 40_000 - 1
    assert [c["type"] for c in result["columns"]] == ["BIGINT", "VARCHAR", "DATE"]
    assert result["rejects"]["count"] == 1
    rejected = result["rejects"]["rows"][0]
    assert rejected["line"] == where + 1
    assert rejected["reason"] == (
        f"the line is longer than {MAX_LINE_BYTES:,} bytes, the longest Chute reads"
    )
    assert rejected["text"].startswith(f"{where},xxx")
    assert result["dialect"]["delimiter"] == "," and result["dialect"]["header"] is True


def test_distinct_is_never_above_the_values_there_are(tmp_path: Path) -> None:
    # HyperLogLog said 81,943 distinct values for a column of 80,000 unique ones.
    rows = 80_000
    lines = ["id,half,flag,empty,one"]
    lines += [f"{i},{i % 40_000},{i % 2 == 0},,{'x' if i == 7 else ''}" for i in range(rows)]
    result = run(tmp_path, ("\n".join(lines) + "\n").encode())
    columns = {c["name"]: c for c in result["columns"]}
    for column in columns.values():
        assert column["distinct"] <= rows - column["nulls"], column
    # DuckDB's estimate for 0..79,999 is 80,398: shown as the count of values there are.
    assert columns["id"]["distinct"] == rows
    assert columns["half"]["distinct"] == pytest.approx(40_000, rel=0.03)
    assert (columns["id"]["distinct_approximate"], columns["half"]["distinct_approximate"]) == (
        True,
        True,
    )
    # Exact where it is known without a pass: booleans, at most one value.
    assert (columns["flag"]["distinct"], columns["flag"]["distinct_approximate"]) == (2, False)
    assert (columns["empty"]["distinct"], columns["empty"]["distinct_approximate"]) == (0, False)
    assert (columns["one"]["distinct"], columns["one"]["distinct_approximate"]) == (1, False)


def test_the_preview_of_a_wide_file_of_long_texts_is_bounded(tmp_path: Path) -> None:
    # 300 columns of 200 characters: 20 rows would be 1.2 million characters.
    header = ",".join(f"c{i}" for i in range(300))
    rows = [",".join(chr(97 + (r + i) % 26) * 200 for i in range(300)) for r in range(25)]
    result = run(tmp_path, ("\n".join([header, *rows]) + "\n").encode())
    preview = result["preview"]["rows"]
    assert 1 <= len(preview) < PREVIEW_ROWS
    assert sum(len(v) for row in preview for v in row) <= PREVIEW_CHARS
    assert preview[0][0] == "a" * 200
