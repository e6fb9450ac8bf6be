"""The OpenAPI document (`/openapi.json`), made to say what the API really answers.

FastAPI writes the document from the routes' signatures, so on its own it misses what they
do not declare: the errors, raised as `ChuteError` and rendered as `{"detail": "..."}` by
one handler in `chute.app` (422 included: not FastAPI's list of validation errors); the
upload's multipart form, whose body the route streams itself; and the media types of
streamed answers (Server-Sent Events, result files). `install(app, settings)` completes
FastAPI's document from the tables below, in this one place.

Which errors a route answers is derived where a rule says it (a route that needs a
signed-in user answers 401, and 403 to a cookie-signed write from another site; a route
taking a body answers 400, 408 and 413; one with parameters or a body 422; one with a
`{job_id}` or a `{user_id}` 404), and listed in `ROUTE_PROBLEMS` where only the route's
service knows.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from chute.api.deps import SAFE_METHODS, SESSION_COOKIE, admin_user, current_user
from chute.config import Settings
from chute.errors import Problem

JsonObject = dict[str, Any]
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")

ERROR_SCHEMA: JsonObject = {
    "title": "Error",
    "description": "Every error: plain words for people; the status says what happened.",
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

RETRY_AFTER: JsonObject = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

SECURITY_SCHEMES: JsonObject = {
    "bearer": {
        "type": "oauth2",
        "description": (
            "A token from POST /api/auth/token, an API token from POST /api/tokens "
            "(`chute_...`), or an access token (JWT) of the identity provider set by "
            "CHUTE_OIDC_ISSUER, sent as `Authorization: Bearer`."
        ),
        "flows": {"password": {"tokenUrl": "/api/auth/token", "scopes": {}}},
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The browser's session from POST /api/auth/login. A write "
        "(POST, PUT, PATCH, DELETE) must come from this site (Origin or Referer), else 403.",
    },
}

# One event of the stream, as a client's parser gives it (OpenAPI before 3.2 has the media
# type's `schema` describe each event of a stream; 3.2 calls it `itemSchema`).
SSE_EVENT: JsonObject = {
    "title": "JobEvent",
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["job", "gone"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [{"$ref": "#/components/schemas/JobPublic"}, ERROR_REF],
            },
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}


@dataclass(frozen=True)
class Answer:
    """An error status that the Problem table does not hold (yet), and its words."""

    status: int
    message: str


# Statuses whose answers may say when to try again (DESIGN §2, "Hostile and broken clients").
RETRY_AFTER_STATUSES = {423, 429}

# Errors answered outside the Problem table, by the app's own handlers.
CLIENT_GONE = Answer(400, "The client went away mid-request.")
VALIDATION = Answer(422, "A parameter or a field of the body is missing or not valid.")

Entry = Problem | Answer

# What a tus request that carries bytes may answer about them (the route streams its
# body itself, so FastAPI knows of no body).
TUS_BODY: tuple[Entry, ...] = (
    CLIENT_GONE,
    Problem.BODY_IDLE,
    Problem.BODY_TOO_SLOW,
    Problem.BODY_TOO_LARGE,
    Problem.OFFSET_DIFFERS,
    Problem.UPLOAD_REPLACED,
    Problem.PATCH_TOO_LARGE,
    Problem.CHECKSUM_MISMATCH_TUS,
    Problem.NOT_CSV,
    Problem.PART_REFUSED,
    Problem.CHUNK_BUSY,
    Problem.TOO_MANY_UPLOADS,
    Problem.STORAGE_FULL,
    Problem.STORAGE_UNAVAILABLE,
    Problem.QUOTA_EXCEEDED,
)

# What only a route's service knows it answers, beyond the derived errors.
ROUTE_PROBLEMS: dict[tuple[str, str], tuple[Entry, ...]] = {
    ("GET", "/readyz"): (Problem.NOT_READY,),
    ("POST", "/api/auth/token"): (
        Problem.BAD_CREDENTIALS,
        Problem.USER_DISABLED,
        Problem.SIGNIN_THROTTLED,
    ),
    ("POST", "/api/auth/login"): (
        Problem.BAD_CREDENTIALS,
        Problem.USER_DISABLED,
        Problem.SIGNIN_THROTTLED,
    ),
    ("POST", "/api/job/{job_id}/cancel"): (Problem.JOB_NOT_CANCELLABLE,),
    ("POST", "/api/job/{job_id}/upload-data"): (
        Problem.NOT_ACCEPTING_DATA,
        Problem.UPLOAD_REPLACED,
        Problem.UPLOAD_IS_TUS,
        Problem.TOTAL_CHUNKS_DIFFERS,
        Problem.CHUNK_SIZE_DIFFERS,
        Problem.CHUNK_CONFLICT,
        Problem.FILE_SIZE_DIFFERS,
        Problem.CHUNK_BUSY,
        Problem.CHUNK_TOO_LARGE,
        Problem.FILE_TOO_LARGE,
        Problem.INVALID_FIELD,
        Problem.CHECKSUM_MISMATCH,
        Problem.EMPTY_CHUNK,
        Problem.PART_REFUSED,
        Problem.TOO_MANY_PARTS,
        Problem.NOT_CSV,
        Problem.MALFORMED_FORM,
        Problem.TOO_MANY_UPLOADS,
        Problem.STORAGE_UNAVAILABLE,
        Problem.STORAGE_FULL,
        Problem.QUOTA_EXCEEDED,
    ),
    ("DELETE", "/api/job/{job_id}/upload-data"): (Problem.UPLOAD_COMPLETE,),
    ("GET", "/api/users/{user_id}/quota"): (Problem.USER_NOT_FOUND,),
    ("PUT", "/api/users/{user_id}/quota"): (Problem.USER_NOT_FOUND, Problem.INVALID_FIELD),
    ("POST", "/api/tus/"): (
        Problem.TUS_BAD_HEADER,
        Problem.TUS_VERSION,
        Problem.TUS_CONTENT_TYPE,
        Problem.EMPTY_FILE,
        Problem.FILE_TOO_LARGE,
        Problem.JOB_NOT_FOUND,
        Problem.TUS_UPLOAD_NOT_FOUND,
        Problem.NOT_ACCEPTING_DATA,
        Problem.UPLOAD_EXISTS,
        Problem.PARTIAL_UNFINISHED,
        Problem.INVALID_FIELD,
        *TUS_BODY,
    ),
    ("HEAD", "/api/tus/{tus_id}"): (Problem.TUS_VERSION, Problem.TUS_UPLOAD_NOT_FOUND),
    ("PATCH", "/api/tus/{tus_id}"): (
        Problem.TUS_BAD_HEADER,
        Problem.TUS_VERSION,
        Problem.TUS_CONTENT_TYPE,
        Problem.TUS_UPLOAD_NOT_FOUND,
        Problem.NOT_ACCEPTING_DATA,
        *TUS_BODY,
    ),
    ("DELETE", "/api/tus/{tus_id}"): (
        Problem.TUS_VERSION,
        Problem.TUS_UPLOAD_NOT_FOUND,
        Problem.UPLOAD_COMPLETE,
    ),
    ("GET", "/api/job/{job_id}/result"): (Problem.NO_RESULT,),
    ("GET", "/api/job/{job_id}/result/{name}"): (Problem.NO_RESULT, Problem.OUTPUT_NOT_FOUND),
    ("POST", "/api/tokens"): (
        Problem.TOKEN_FROM_TOKEN,
        Problem.TOO_MANY_TOKENS,
        Problem.INVALID_FIELD,
    ),
    ("DELETE", "/api/tokens/{token_id}"): (Problem.TOKEN_NOT_FOUND,),
    ("POST", "/api/users"): (Problem.USER_EXISTS, Problem.INVALID_FIELD),
    ("PATCH", "/api/users/{user_id}"): (Problem.USER_IS_YOU, Problem.LAST_ADMIN),
    ("POST", "/api/users/{user_id}/disable"): (Problem.USER_IS_YOU, Problem.LAST_ADMIN),
    ("DELETE", "/api/users/{user_id}"): (Problem.USER_IS_YOU, Problem.LAST_ADMIN),
    ("POST", "/api/webhooks"): (Problem.TOO_MANY_WEBHOOKS, Problem.INVALID_FIELD),
    ("POST", "/api/webhooks/{endpoint_id}/rotate"): (Problem.WEBHOOK_NOT_FOUND,),
    ("DELETE", "/api/webhooks/{endpoint_id}"): (Problem.WEBHOOK_NOT_FOUND,),
    ("POST", "/api/webhooks/deliveries/{delivery_id}/retry"): (
        Problem.DELIVERY_NOT_FOUND,
        Problem.DELIVERY_IN_FLIGHT,
    ),
}
# The route that reads its body itself (FastAPI never sees the form); `_upload_body`.
UPLOAD_DATA = ("POST", "/api/job/{job_id}/upload-data")
UPLOAD_STATUS = ("GET", "/api/job/{job_id}/upload-data")
# Routes whose 200 is not JSON; `_success_media`.
EVENTS = ("GET", "/api/job/{job_id}/events")
OUTPUT = ("GET", "/api/job/{job_id}/result/{name}")


class UploadChunk(BaseModel):
    index: int
    size: int
    sha256: str


class UploadStatus(BaseModel):
    """What `GET /api/job/{job_id}/upload-data` answers (`upload.core.upload_status`
    builds it as a dict; the Schemathesis test holds the two together)."""

    job_id: int
    state: Literal["empty", "partial", "complete"]
    # "chunks" or "tus" once the upload shows; null while empty.
    protocol: Literal["chunks", "tus"] | None
    total_chunks: int | None
    chunk_size: int | None
    file_size: int | None
    bytes_received: int
    chunks: list[UploadChunk]
    # Only while the upload is unfinished.
    expires_at: datetime | None = None


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the completed document at `app.openapi_url`; built on first request."""
    generate = app.openapi
    made: list[JsonObject] = []  # FastAPI's document, then the completed one

    def openapi() -> JsonObject:
        # FastAPI caches its document and makes a new one if routes are added: follow it.
        base = generate()
        if not made or made[0] is not base:
            made[:] = [base, complete(copy.deepcopy(base), app, settings)]
        return made[1]

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: JsonObject, app: FastAPI, settings: Settings) -> JsonObject:
    """FastAPI's document `doc`, completed in place from the tables above."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    schemas.update(_model_schemas(UploadStatus, UploadChunk))
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, methods, dependant in _api_routes(app):
        for method in sorted(methods):
            key = (method, path)
            operation = doc["paths"][path][method.lower()]
            if key == UPLOAD_DATA:
                operation["requestBody"] = _upload_body(settings)
            signed_in = _needs(dependant, current_user)
            if signed_in:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            responses = operation["responses"]
            responses.pop("422", None)
            admin = _needs(dependant, admin_user)
            for status, entries in _errors(key, signed_in, admin, operation).items():
                responses[str(status)] = _error_response(status, entries)
            _success_media(key, responses)
    return doc


def _api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], Dependant]]:
    """Each documented route's path, methods and dependencies, as FastAPI documents them
    (routes of included routers with their prefix)."""
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            assert context.path_format is not None and context.methods is not None
            yield context.path_format, context.methods, context.dependant


def _needs(dependant: Dependant, dependency: Callable[..., Any]) -> bool:
    return any(sub.call is dependency or _needs(sub, dependency) for sub in dependant.dependencies)


def _errors(
    key: tuple[str, str], signed_in: bool, admin: bool, operation: JsonObject
) -> dict[int, list[Entry]]:
    method, path = key
    entries: list[Entry] = []
    has_body = "requestBody" in operation
    if has_body:
        entries += [CLIENT_GONE, Problem.BODY_IDLE, Problem.BODY_TOO_SLOW, Problem.BODY_TOO_LARGE]
    if signed_in:
        # BAD_TOKEN: a bearer JWT of the identity provider (CHUTE_OIDC_ISSUER) refused.
        # USER_DISABLED: a provider's token for a user an admin disabled.
        # API_TOKEN_REFUSED: a bearer `chute_...` token that is not live (chute.auth.tokens).
        entries += [
            Problem.NOT_AUTHENTICATED,
            Problem.BAD_TOKEN,
            Problem.API_TOKEN_REFUSED,
            Problem.USER_DISABLED,
        ]
        if method not in SAFE_METHODS:
            entries.append(Problem.FOREIGN_ORIGIN)
    if admin:
        entries.append(Problem.ADMIN_ONLY)
    if "{job_id}" in path:
        entries.append(Problem.JOB_NOT_FOUND)
    if "{user_id}" in path:
        entries.append(Problem.USER_NOT_FOUND)
    if has_body or operation.get("parameters"):
        entries.append(VALIDATION)
    entries += ROUTE_PROBLEMS.get(key, ())
    by_status: dict[int, list[Entry]] = {}
    for entry in entries:
        by_status.setdefault(entry.status, []).append(entry)
    return dict(sorted(by_status.items()))


def words(entry: Entry) -> str:
    """An error's message as the document shows it: "…" for what each answer fills in."""
    return _PLACEHOLDER.sub("…", entry.message)


def _error_response(status: int, entries: list[Entry]) -> JsonObject:
    # A message that is nothing but a placeholder says nothing the status does not.
    lines = dict.fromkeys(words(entry) for entry in entries)
    lines.pop("…", None)
    response: JsonObject = {
        "description": "\n".join(f"- {line}" for line in lines),
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    if status in RETRY_AFTER_STATUSES:
        response["headers"] = RETRY_AFTER
    return response


def _success_media(key: tuple[str, str], responses: JsonObject) -> None:
    ok = responses.get("200")
    if ok is None:
        return
    if key == EVENTS:
        ok["description"] = (
            "Server-Sent Events: `event: job` with the job as JSON (as GET /api/job/{job_id} "
            "gives it) at once and on each change, until the job ends; `event: gone` with "
            '`{"detail": ...}` if it is deleted.'
        )
        ok["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    elif key == OUTPUT:
        ok["description"] = (
            "The file's bytes, as an attachment; the type follows the file's name "
            "(the profile's Parquet: application/vnd.apache.parquet)."
        )
        # Bytes: OpenAPI 3.1 gives binary content no schema.
        ok["content"] = {
            "application/vnd.apache.parquet": {},
            "application/octet-stream": {},
            "*/*": {},
        }
    elif key == UPLOAD_STATUS:
        ok["content"] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/UploadStatus"}}
        }


def _model_schemas(*models: type[BaseModel]) -> JsonObject:
    return {
        model.__name__: model.model_json_schema(ref_template="#/components/schemas/{model}")
        for model in models
    }


def _upload_body(settings: Settings) -> JsonObject:
    """upload-data's form (DESIGN §2 "Chunked upload"); the route streams it itself."""
    whole = {"type": "integer", "minimum": 0}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "title": "Chunk",
                    "type": "object",
                    "required": ["file", "chunk_index", "total_chunks"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The chunk's bytes, with the original file's name "
                            "as its filename. Send it as the last part, after the fields.",
                        },
                        "chunk_index": {
                            **whole,
                            "description": "0-based index of this chunk, below total_chunks. "
                            "Also taken as `chunkIndex`.",
                        },
                        "total_chunks": {
                            **whole,
                            "minimum": 1,
                            "maximum": settings.max_total_chunks,
                            "description": "Number of chunks of the whole file, the same in "
                            "every chunk. Also taken as `totalChunks`.",
                        },
                        "chunk_sha256": {
                            "type": "string",
                            "pattern": "^[0-9a-fA-F]{64}$",
                            "description": "The chunk's SHA-256 in hex; when sent, checked.",
                        },
                        "chunk_size": {
                            **whole,
                            "minimum": 1,
                            "maximum": settings.max_chunk_bytes,
                            "description": "The size of every chunk but the last. Without it, "
                            "the first chunk recorded that is not the last fixes it.",
                        },
                        "file_size": {
                            **whole,
                            "minimum": 1,
                            "maximum": settings.max_file_bytes,
                            "description": "The whole file's size; when sent, checked.",
                        },
                    },
                },
                "encoding": {"file": {"contentType": "text/csv, application/octet-stream"}},
            }
        },
    }
