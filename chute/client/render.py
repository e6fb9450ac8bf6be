"""How jobs and their results look in a terminal (rich renderables, no I/O here).

The `profile` kind's result gets tables: a summary, the columns, a preview and the
rejected rows. Keys this module does not know, or a result of another kind, are
shown as plain key/value lines, so a newer server never breaks an older client.

Everything from the server is data, never instructions to the terminal: job names,
file names, errors, column names and values go through `clean` (their control
characters, which start every escape sequence, shown as escapes such as `\x1b`) and
into `Text`, which rich never reads as markup. The CLI's messages use `clean` too.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from chute.client.models import ApiToken, Job

PROFILE_KEYS = {"rows", "columns", "preview", "rejects", "dialect", "input", "parquet"}
PREVIEW_ROWS = 10
REJECT_ROWS = 10


# C0 (with tab and newline: a value is one cell, a name one line), DEL, C1, and the
# bidirectional overrides, which reorder what follows them on the line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def clean(value: object) -> str:
    """`value` as text safe to print on a terminal: control characters escaped."""
    return _CONTROL.sub(_escape, str(value))


def _text(value: Any) -> Text:
    return Text(clean(_cell(value)))


def size_text(n: float) -> str:
    """Bytes as people read them: 1.5 GB (decimal units, as transfer speeds are)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _pairs(title: str | None, pairs: list[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.title = title
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(_text(key), _text(value))
    return grid


def _table(headers: list[Any], title: str | None = None, **options: Any) -> Table:
    table = Table(title=title, **options)
    for header in headers:
        table.add_column(_text(header))
    return table


def jobs_table(jobs: list[Job]) -> Table:
    table = _table(["id", "name", "kind", "status", "upload", "created"], box=None)
    for job in jobs:
        cells = (job.id, job.name, job.kind, job.status, upload_text(job), job.created_at)
        table.add_row(*(_text(value) for value in cells))
    return table


def when_text(iso: str | None, none: str = "never") -> str:
    """An API time as people read it, to the minute: `2026-12-02 09:40 UTC`."""
    if not iso:
        return none
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def tokens_table(tokens: list[ApiToken]) -> Table:
    table = _table(["id", "name", "created", "expires", "last used"], box=None)
    for token in tokens:
        expires = when_text(token.expires_at)
        cells = (
            token.id,
            token.name,
            when_text(token.created_at),
            f"expired {expires}" if token.expired else expires,
            when_text(token.last_used_at),
        )
        table.add_row(*(_text(value) for value in cells))
    return table


def upload_text(job: Job) -> str:
    upload = job.upload
    if not upload:
        return ""
    received, total = upload.get("chunks_received"), upload.get("total_chunks")
    return f"{received}/{total} chunks, {size_text(int(upload.get('bytes_received') or 0))}"


def job_view(job: Job) -> RenderableType:
    pairs: list[tuple[str, Any]] = [
        ("job", f"{job.id} ({job.name})"),
        ("kind", job.kind),
        ("status", job.status),
    ]
    if job.progress is not None and not job.done:
        pairs.append(("progress", f"{job.progress:.0f} %"))
    if job.upload:
        pairs.append(("upload", upload_text(job)))
        if job.upload.get("expires_at") and job.upload.get("state") != "complete":
            pairs.append(("expires", job.upload["expires_at"]))
    if job.error:
        pairs.append(("error", job.error))
    parts: list[RenderableType] = [_pairs(None, pairs)]
    if job.result is not None:
        parts.append(Text(""))
        parts.append(result_view(job.result))
    return Group(*parts)


def result_view(result: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    summary: list[tuple[str, Any]] = []
    if "rows" in result:
        summary.append(("rows", result["rows"]))
    dialect = result.get("dialect")
    if isinstance(dialect, dict):
        known = {k: v for k, v in dialect.items() if v is not None}
        summary.append(("dialect", ", ".join(f"{k} {v!r}" for k, v in known.items())))
    source = result.get("input")
    if isinstance(source, dict):
        if "size" in source:
            summary.append(("input size", size_text(int(source["size"]))))
        if "sha256" in source:
            summary.append(("input sha256", source["sha256"]))
    parquet = result.get("parquet")
    if isinstance(parquet, dict) and "size" in parquet:
        summary.append(("parquet size", size_text(int(parquet["size"]))))
    rejects = result.get("rejects")
    if isinstance(rejects, dict) and "count" in rejects:
        summary.append(("rejected rows", rejects["count"]))
    # Whatever else the result holds, as it is.
    summary += [(key, value) for key, value in result.items() if key not in PROFILE_KEYS]
    if summary:
        parts.append(_pairs("result", summary))

    columns = result.get("columns")
    if isinstance(columns, list) and columns:
        columns = [column for column in columns if isinstance(column, dict)]
        # The server's distinct count is an estimate (clamped to the non-null count).
        approximate = any(column.get("distinct_approximate") for column in columns)
        distinct = "distinct (approx.)" if approximate else "distinct"
        headers = ["column", "type", "nulls", distinct, "min", "max", "mean"]
        table = _table(headers, title="columns")
        for column in columns:
            table.add_row(
                *(
                    _text(column.get(key))
                    for key in ("name", "type", "nulls", "distinct", "min", "max", "mean")
                )
            )
        parts.append(table)

    preview = result.get("preview")
    if isinstance(preview, dict) and preview.get("columns"):
        table = _table(list(preview["columns"]), title="first rows")
        for row in (preview.get("rows") or [])[:PREVIEW_ROWS]:
            table.add_row(*(_text(value) for value in row))
        parts.append(table)

    if isinstance(rejects, dict) and rejects.get("rows"):
        table = _table(["line", "reason", "text"], title="rejected rows")
        for row in rejects["rows"][:REJECT_ROWS]:
            table.add_row(*(_text(row.get(key)) for key in ("line", "reason", "text")))
        parts.append(table)
    return Group(*parts)
