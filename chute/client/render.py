"""How jobs and their results look in a terminal (rich renderables, no I/O here).

The `profile` kind's result gets tables: a summary, the columns, a preview and the
rejected rows. Keys this module does not know, or a result of another kind, are
shown as plain key/value lines, so a newer server never breaks an older client.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from chute.client.models import Job

PROFILE_KEYS = {"rows", "columns", "preview", "rejects", "dialect", "input", "parquet"}
PREVIEW_ROWS = 10
REJECT_ROWS = 10


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
        grid.add_row(key, _cell(value))
    return grid


def jobs_table(jobs: list[Job]) -> Table:
    table = Table("id", "name", "kind", "status", "upload", "created", box=None)
    for job in jobs:
        table.add_row(str(job.id), job.name, job.kind, job.status, upload_text(job), job.created_at)
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
        table = Table("column", "type", "nulls", "distinct", "min", "max", "mean", title="columns")
        for column in columns:
            if isinstance(column, dict):
                table.add_row(
                    *(
                        _cell(column.get(key))
                        for key in ("name", "type", "nulls", "distinct", "min", "max", "mean")
                    )
                )
        parts.append(table)

    preview = result.get("preview")
    if isinstance(preview, dict) and preview.get("columns"):
        table = Table(*[str(name) for name in preview["columns"]], title="first rows")
        for row in (preview.get("rows") or [])[:PREVIEW_ROWS]:
            table.add_row(*(_cell(value) for value in row))
        parts.append(table)

    if isinstance(rejects, dict) and rejects.get("rows"):
        table = Table("line", "reason", "text", title="rejected rows")
        for row in rejects["rows"][:REJECT_ROWS]:
            table.add_row(*(_cell(row.get(key)) for key in ("line", "reason", "text")))
        parts.append(table)
    return Group(*parts)
