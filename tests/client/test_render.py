"""How results look: the profile's shape as tables, anything else as key/value lines."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from chute.client import render
from chute.client.models import Job

PROFILE: dict[str, Any] = {
    "rows": 3,
    "columns": [
        {"name": "id", "type": "BIGINT", "nulls": 0, "distinct": 3, "min": 1, "max": 3,
         "mean": 2.0},
        {"name": "city", "type": "VARCHAR", "nulls": 1, "distinct": 2, "min": "Oslo",
         "max": "Rome", "mean": None},
    ],
    "preview": {"columns": ["id", "city"], "rows": [[1, "Oslo"], [2, None], [3, "Rome"]]},
    "rejects": {"count": 1, "rows": [{"line": 5, "reason": "too many columns"}]},
    "dialect": {"delimiter": ";", "quote": '"', "header": True, "encoding": "utf-8"},
    "input": {"size": 1_500_000, "sha256": "ab" * 32},
    "parquet": {"size": 2048},
    "took": 1.25,
}  # fmt: skip


def text(renderable: Any) -> str:
    console = Console(width=200, file=io.StringIO())
    console.print(renderable)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def job(**fields: Any) -> Job:
    base = {"id": 7, "name": "cities", "kind": "profile", "status": "succeeded"}
    return Job.of({**base, **fields})


def test_a_profile_is_shown_as_tables() -> None:
    shown = text(render.job_view(job(result=PROFILE)))
    lines = shown.splitlines()
    assert any("rows" in line and "3" in line for line in lines)
    assert "ab" * 32 in shown
    assert "1.5 MB" in shown and "2.0 kB" in shown
    # One line per column: name, type, nulls, distinct, min, max.
    assert any(
        [word for word in line.split() if word != "│"]
        == ["city", "VARCHAR", "1", "2", "Oslo", "Rome"]
        for line in lines
    )
    assert any("5" in line and "too many columns" in line for line in lines)
    assert "delimiter ';'" in shown
    # A key the profile does not have is still shown.
    assert any("took" in line and "1.25" in line for line in lines)


def test_an_unknown_result_is_shown_as_keys_and_values() -> None:
    shown = text(render.job_view(job(result={"size": 10, "sha256": "cd" * 32})))
    assert any("size" in line and "10" in line for line in shown.splitlines())
    assert "cd" * 32 in shown


def test_a_failed_job_shows_its_error_and_no_result() -> None:
    shown = text(render.job_view(job(status="failed", error="line 3: bad quote")))
    assert "failed" in shown and "line 3: bad quote" in shown
    assert "rows" not in shown


def test_sizes_read_as_people_write_them() -> None:
    assert [render.size_text(n) for n in (999, 1000, 1_234_567, 5e12)] == [
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "5.0 TB",
    ]


def test_control_characters_are_shown_as_escapes() -> None:
    assert render.clean("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert render.clean("tab\there\nnew\r\x7f\x9b\u202eend") == (
        "tab\\there\\nnew\\r\\x7f\\x9b\\u202eend"
    )
    assert render.clean("Zürich — 東京 ✓") == "Zürich — 東京 ✓"
    assert render.clean(None) == "None"


def test_data_is_never_read_as_markup_or_escape_sequences() -> None:
    hostile = "\x1b[2J[bold red]x[/]"
    result = {
        "rows": 1,
        "columns": [{"name": hostile, "type": "VARCHAR", "distinct": 1}],
        "preview": {"columns": [hostile], "rows": [[hostile]]},
        "rejects": {"count": 1, "rows": [{"line": 2, "reason": hostile, "text": hostile}]},
        hostile: hostile,
    }
    # A console that reads markup, as a library user's might.
    shown = text(render.job_view(job(name=hostile, error=hostile, result=result)))
    assert "\x1b[2J" not in shown
    # name, error, a key and its value, a column, a preview header and cell, reason, text
    assert shown.count("\\x1b[2J[bold red]x[/]") == 9


def test_an_approximate_distinct_count_says_so() -> None:
    exact = text(render.result_view(PROFILE))
    assert "distinct" in exact and "approx" not in exact
    columns = [{**column, "distinct_approximate": True} for column in PROFILE["columns"]]
    approximate = text(render.result_view({**PROFILE, "columns": columns}))
    assert "distinct (approx.)" in approximate
