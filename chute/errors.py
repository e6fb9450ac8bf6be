"""Every error a client can see, in one table: a name, an HTTP status and plain words.

Services raise `ChuteError(Problem.X)`; one handler in `chute.app` renders it as
`{"detail": ...}` with the problem's headers, if any. Backends map their native errors
into this table. Anything else becomes a 500 whose body carries no exception text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from starlette.responses import JSONResponse


class Problem(Enum):
    # (status, message) or (status, message, headers); a message may have {placeholders}
    # filled by ChuteError. Clients retry 408, 423 and 429 (DESIGN §2), when Retry-After says.
    TUS_BAD_HEADER = (400, "{what}.")
    NOT_AUTHENTICATED = (401, "Not signed in.")
    BAD_CREDENTIALS = (401, "Wrong user name or password.")
    # A bearer JWT from the identity provider that Chute does not take; {why}: which rule.
    BAD_TOKEN = (
        401,
        "The bearer token was refused: {why}.",
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    # An API token (`chute_...`) the database does not hold as live: said apart from a
    # password sign-in's token, so a pipeline's owner knows to make a new one.
    API_TOKEN_REFUSED = (
        401,
        "The API token was refused: it is unknown, revoked or expired, or its user is disabled.",
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    FOREIGN_ORIGIN = (403, "Request refused: it does not come from this site.")
    ADMIN_ONLY = (403, "Only an admin may do this.")
    USER_DISABLED = (403, "This user is disabled; ask an admin to enable it.")
    TOKEN_FROM_TOKEN = (
        403,
        "An API token cannot make API tokens: sign in with your password (chute login, "
        "or the web page) to make one.",
    )
    JOB_NOT_FOUND = (404, "Job not found.")
    USER_NOT_FOUND = (404, "User not found.")
    OUTPUT_NOT_FOUND = (404, "The job has no result file named {name!r}.")
    TUS_UPLOAD_NOT_FOUND = (404, "Upload not found.")
    WEBHOOK_NOT_FOUND = (404, "Webhook not found.")
    DELIVERY_NOT_FOUND = (404, "Webhook delivery not found.")
    TOKEN_NOT_FOUND = (404, "API token not found.")
    # The body stopped coming, or came too slowly: the answer closes the connection.
    BODY_IDLE = (
        408,
        "No byte of the request body came for {seconds:g} seconds; nothing was kept, "
        "send it again.",
        {"Connection": "close"},
    )
    BODY_TOO_SLOW = (
        408,
        "The request body did not arrive within {seconds:g} seconds; send it again.",
        {"Connection": "close"},
    )
    NOT_ACCEPTING_DATA = (409, "This job is not accepting data (status: {status}).")
    UPLOAD_COMPLETE = (409, "The upload is complete and can no longer be discarded.")
    UPLOAD_REPLACED = (409, "The upload was discarded while this chunk was being sent.")
    UPLOAD_IS_TUS = (
        409,
        "This job's upload is being sent with tus: finish it there (a HEAD request on its "
        "tus URL gives the offset to resume from).",
    )
    UPLOAD_EXISTS = (
        409,
        "This job already has an upload with bytes stored: resume it, or discard it first.",
    )
    PARTIAL_UNFINISHED = (
        409,
        "A partial upload that Upload-Concat names is not finished: finish it first.",
    )
    OFFSET_DIFFERS = (
        409,
        "Upload-Offset is {sent}, but the upload holds {offset} bytes: resume from there.",
    )
    TOTAL_CHUNKS_DIFFERS = (
        409,
        "total_chunks is {got}, but earlier chunks of this upload said {expected}.",
    )
    CHUNK_SIZE_DIFFERS = (409, "{what}")
    # file_size against the chunks (DESIGN §2): {what} says which sizes disagree.
    FILE_SIZE_DIFFERS = (409, "{what}")
    CHUNK_CONFLICT = (409, "Chunk {index} is already stored with different bytes.")
    JOB_NOT_CANCELLABLE = (409, "The job has already ended (status: {status}).")
    NO_RESULT = (409, "The job has no result: it is {status}.")
    USER_EXISTS = (409, "A user with that name already exists.")
    USER_IS_YOU = (409, "An admin cannot {action} their own user; ask another admin.")
    LAST_ADMIN = (
        409,
        "This is the last enabled admin: add or enable another admin before you {action} it.",
    )
    TOO_MANY_WEBHOOKS = (
        409,
        "You have {limit} webhooks, the most a user may have: delete one before adding another.",
    )
    TOO_MANY_TOKENS = (
        409,
        "You have {limit} API tokens, the most a user may have: revoke one before making another.",
    )
    DELIVERY_IN_FLIGHT = (409, "The delivery is being sent right now; look again in a moment.")
    CHUNK_TOO_LARGE = (413, "The chunk is larger than the limit of {limit} bytes.")
    FILE_TOO_LARGE = (413, "The file is larger than the limit of {limit} bytes.")
    BODY_TOO_LARGE = (413, "The request body is larger than the limit of {limit} bytes.")
    PATCH_TOO_LARGE = (413, "The request has more bytes than the {left} the upload has left.")
    TUS_VERSION = (412, "This server speaks tus 1.0.0 only (Tus-Resumable: 1.0.0).")
    TUS_CONTENT_TYPE = (415, "A PATCH body must be sent as application/offset+octet-stream.")
    INVALID_FIELD = (422, "{what}")
    CHECKSUM_MISMATCH = (
        422,
        "The chunk's SHA-256 is {actual}, not the chunk_sha256 sent ({expected}).",
    )
    EMPTY_CHUNK = (422, "The chunk is empty.")
    EMPTY_FILE = (422, "The file is empty: a CSV file has at least a line.")
    # The storage's own rules on parts (S3: their sizes and count); {why} is its words.
    PART_REFUSED = (422, "The part cannot be stored: {why}.")
    TOO_MANY_PARTS = (
        422,
        "total_chunks is {total}, more than this server's storage takes in one file ({limit}). "
        "Send the file in larger chunks.",
    )
    # tus's own status for a body whose Upload-Checksum does not match.
    CHECKSUM_MISMATCH_TUS = (
        460,
        "The body's {algorithm} is not the Upload-Checksum sent; none of it was kept.",
    )
    NOT_CSV = (422, "This does not look like a CSV file: {why}")
    MALFORMED_FORM = (422, "The request body is not valid multipart/form-data: {why}")
    # 423, not 409: a client must retry it (the holder may be a request cut off unseen).
    CHUNK_BUSY = (
        423,
        "Chunk {index} is being sent by another request; try again shortly.",
        {"Retry-After": "5"},
    )
    TOO_MANY_UPLOADS = (
        429,
        "Too many uploads at once for this user; try again shortly.",
        {"Retry-After": "2"},
    )
    # The same words whether or not the user exists; Retry-After says how long to wait.
    SIGNIN_THROTTLED = (429, "Too many failed sign-ins; try again later.")
    STORAGE_UNAVAILABLE = (
        503,
        "The server's storage did not answer as it should; send the chunk again shortly.",
    )
    NOT_READY = (503, "Chute is not ready: no answer from the {parts}.")
    STORAGE_FULL = (507, "The server's storage is full; the chunk was discarded, send it later.")
    # The user's own limit (CHUTE_USER_QUOTA_BYTES or an admin's override), not the disk's.
    QUOTA_EXCEEDED = (
        507,
        "This upload would pass your storage quota: it needs {need} more, and you use "
        "{used} of your {quota}. Nothing of it was kept; delete jobs to free room, or ask "
        "an admin for a larger quota.",
        # For clients: a 507 that sending again will not cure (STORAGE_FULL may pass).
        {"Chute-Quota": "exceeded"},
    )

    @property
    def status(self) -> int:
        return int(self.value[0])

    @property
    def message(self) -> str:
        return str(self.value[1])

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.value[2]) if len(self.value) > 2 else {}


class ChuteError(Exception):
    """An error meant for the client: its text is safe to show."""

    def __init__(self, problem: Problem, *, retry_after: int | None = None, **details: Any) -> None:
        self.problem = problem
        self.detail = problem.message.format(**details) if details else problem.message
        # The answer's headers: the problem's own, and a Retry-After of this instance.
        self.headers = problem.headers
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)
        super().__init__(self.detail)

    @property
    def status(self) -> int:
        return self.problem.status

    def response(self) -> JSONResponse:
        """The answer the client gets: `{"detail": ...}`, the status and the headers."""
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)


def invalid(what: str) -> ChuteError:
    """A 422 for a missing or malformed field, with `what` saying which and why."""
    return ChuteError(Problem.INVALID_FIELD, what=what)


def plain_words(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> str:
    """pydantic's list of errors as one sentence: `name: String should have ...`."""
    parts = []
    for error in errors:
        path = [prefix] if prefix else []
        path += [str(p) for p in error.get("loc", ()) if p != "body"]
        parts.append(f"{'.'.join(path) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request is not valid."
