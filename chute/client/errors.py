"""What the client raises: one base class, so a caller can catch everything of ours at once."""

from __future__ import annotations

import httpx


class ChuteClientError(Exception):
    """Something the user should read: the message is plain words, safe to print."""


class ApiError(ChuteClientError):
    """The server answered with an error status; `detail` is its `{"detail"}` text."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{detail} (HTTP {status})")


class UploadError(ChuteClientError):
    """The upload cannot go on: the file changed, or the job holds other bytes."""


def detail_of(response: httpx.Response) -> str:
    """The server's `detail`, or the status line when the body has none."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        # FastAPI's validation errors: a list of {"loc", "msg"}.
        return "; ".join(str(item.get("msg", item)) for item in body["detail"])
    return response.reason_phrase or f"HTTP {response.status_code}"
