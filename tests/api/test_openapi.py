"""The OpenAPI document says what the API answers (DESIGN §2, issue 14 item 14).

The document's shape is checked in-process; then Schemathesis reads `/openapi.json` from a
live `chute serve` and sends what the document allows (and what it does not), operation by
operation and in sequences, signed in with a bearer token, failing on any 5xx and on any
answer whose status, media type or body the document does not describe. Runs are bounded
and deterministic: derandomized generation, no example database, a few examples each.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.schemas import OpenApiSchema

from chute.api import openapi
from chute.app import create_app
from chute.config import Settings
from chute.errors import Problem
from tests.conftest import Client, Server, ServerFactory
from tests.factories import csv_bytes

EVENTS = "/api/job/{job_id}/events"
RESULT = "/api/job/{job_id}/result"
OUTPUT = "/api/job/{job_id}/result/{name}"
UPLOAD = "/api/job/{job_id}/upload-data"
# Each must be exercised, or the run proves nothing about the routes that matter most.
MUST_COVER = {"POST /api/auth/token", "POST /api/job", f"POST {UPLOAD}", f"GET {EVENTS}"}
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
]
SEED = 14
# Generated cases per operation, on top of Schemathesis's coverage cases; more where a body
# carries text the server stores (at 150, a job name with NUL comes up: PostgreSQL's case).
MAX_EXAMPLES = 12
MORE_EXAMPLES = {"POST /api/job": 150, f"POST {UPLOAD}": 40}
# An answer slower than this is a hang (the SSE route streams until its job ends).
REQUEST_TIMEOUT = 10.0
# Success answers each of these must have given, or their schemas went untested (fuzzed
# chunks rarely make a valid one, so a chunk taken is also sent as a case of our own).
MUST_SUCCEED = {
    "POST /api/job": 201,
    f"POST {UPLOAD}": 200,
    f"GET {EVENTS}": 200,
    f"GET {OUTPUT}": 200,
    "DELETE /api/job/{job_id}": 204,
    "POST /api/auth/logout": 204,
}
PASSWORD = "pw-for-tests"  # the password `Server.client()` gives its users


def _document() -> dict[str, Any]:
    """The document of an app built here (nothing runs: no server, no database)."""
    with tempfile.TemporaryDirectory() as data_dir:
        return create_app(Settings(data_dir=Path(data_dir))).openapi()


# The tests below are one per operation of the document, so none can be left out.
OPERATIONS = [(m.upper(), p) for p, ops in _document()["paths"].items() for m in ops]
# Problems no API route answers.
NOT_ROUTES: set[Problem] = set()


def test_errors_are_detail_strings() -> None:
    doc = _document()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Error"]["properties"] == {"detail": {"type": "string"}}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    }, (method, path, status)


def statuses(doc: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(s) for s in doc["paths"][path][method.lower()]["responses"]}


def test_each_route_lists_what_it_answers() -> None:
    doc = _document()
    body = {400, 408, 413, 422}
    # 403 on every signed-in route: a provider's token for a user an admin disabled.
    assert statuses(doc, "POST", "/api/auth/token") == {200, 401, 403, 429} | body
    assert statuses(doc, "POST", "/api/auth/login") == {200, 401, 403, 429} | body
    assert statuses(doc, "POST", "/api/job") == {201, 401, 403} | body
    assert statuses(doc, "GET", "/api/job") == {200, 401, 403, 422}
    assert statuses(doc, "GET", "/api/job/{job_id}") == {200, 401, 403, 404, 422}
    assert statuses(doc, "DELETE", "/api/job/{job_id}") == {204, 401, 403, 404, 422}
    assert statuses(doc, "POST", UPLOAD) == {200, 401, 403, 404, 409, 423, 429, 503, 507} | body
    assert statuses(doc, "DELETE", UPLOAD) == {204, 401, 403, 404, 409, 422}
    assert statuses(doc, "GET", OUTPUT) == {200, 401, 403, 404, 409, 422}
    assert statuses(doc, "GET", "/api/users") == {200, 401, 403}
    assert statuses(doc, "POST", "/api/users") == {201, 401, 403, 409} | body
    for action in ("disable", "enable"):
        answers = {200, 401, 403, 404, 422} | ({409} if action == "disable" else set())
        assert statuses(doc, "POST", f"/api/users/{{user_id}}/{action}") == answers
    assert statuses(doc, "DELETE", "/api/users/{user_id}") == {204, 401, 403, 404, 409, 422}
    assert statuses(doc, "PATCH", "/api/users/{user_id}") == {200, 401, 403, 404, 409} | body
    assert (
        "User not found."
        in doc["paths"]["/api/users/{user_id}"]["delete"]["responses"]["404"]["description"]
    )
    assert "Only an admin" in doc["paths"]["/api/users"]["get"]["responses"]["403"]["description"]
    assert statuses(doc, "GET", "/api/config") == {200}
    for method, path in (("POST", UPLOAD), ("POST", "/api/auth/token")):
        retry = doc["paths"][path][method.lower()]["responses"]["429"]
        assert "Retry-After" in retry["headers"]
    assert "Retry-After" in doc["paths"][UPLOAD]["post"]["responses"]["423"]["headers"]


def test_upload_form_and_streamed_media_types() -> None:
    doc = _document()
    form = doc["paths"][UPLOAD]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = form["schema"]
    assert set(schema["properties"]) == {
        "file",
        "chunk_index",
        "total_chunks",
        "chunk_sha256",
        "chunk_size",
        "file_size",
    }
    assert schema["required"] == ["file", "chunk_index", "total_chunks"]
    assert schema["properties"]["file"]["format"] == "binary"
    assert "chunkIndex" in schema["properties"]["chunk_index"]["description"]
    assert "totalChunks" in schema["properties"]["total_chunks"]["description"]
    events = doc["paths"][EVENTS]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    output = doc["paths"][OUTPUT]["get"]["responses"]["200"]["content"]
    assert "application/vnd.apache.parquet" in output
    assert doc["paths"][UPLOAD]["get"]["responses"]["200"]["content"]["application/json"]


def test_the_table_names_only_routes_that_exist() -> None:
    keys = set(openapi.ROUTE_PROBLEMS) | {
        openapi.UPLOAD_DATA,
        openapi.UPLOAD_STATUS,
        openapi.EVENTS,
        openapi.OUTPUT,
    }
    assert keys <= set(OPERATIONS)


def test_every_problem_is_documented_with_its_status() -> None:
    """A Problem added to chute/errors.py must be listed for the routes that answer it
    (chute/api/openapi.py's ROUTE_PROBLEMS), else this fails."""
    doc = _document()
    listed: dict[int, str] = {}
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                listed[int(status)] = listed.get(int(status), "") + response["description"]
    for problem in set(Problem) - NOT_ROUTES:
        if openapi.words(problem) != "…":
            assert openapi.words(problem) in listed.get(problem.status, ""), problem


# The live runs. Operation by operation over both deployments (tests/conftest.py):
# PostgreSQL refuses text that SQLite takes (NUL), S3 forms that local disk takes.


@pytest.fixture(scope="module")
def fuzzer(server: Server) -> Client:
    return server.client()


@pytest.fixture(scope="module")
def logout_token(server: Server, fuzzer: Client) -> str:
    """A second token of the fuzzer's, for the logout cases: logging out revokes the token
    it is sent with. Taken before any sign-in is fuzzed (a throttle may follow)."""
    answer = httpx.post(
        f"{server.url}/api/auth/token",
        data={"username": fuzzer.username, "password": PASSWORD},
    )
    assert answer.status_code == 200, answer.text
    return f"Bearer {answer.json()['access_token']}"


@pytest.fixture(scope="module")
def reader(server: Server) -> Client:
    """The user whose finished job the result routes read. Not the fuzzer: fuzzed job ids
    land on the fuzzer's own jobs too, and may cancel or delete them."""
    return server.client()


@pytest.fixture(scope="module")
def finished_job(reader: Client) -> int:
    """A job that succeeded, so its result and its Parquet can be fetched."""
    job_id = reader.new_job("finished")
    reader.upload(job_id, csv_bytes(50))
    reader.wait_for(job_id, "succeeded")
    return job_id


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"examples": {"enabled": False}},
            "warnings": False,
        }
    )


@pytest.fixture
def api_schema(server: Server) -> OpenApiSchema:
    """The live document, loaded anew for each test: Schemathesis learns from answers as it
    goes, so a shared schema would make one operation's cases depend on those run before."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=_config())
    assert isinstance(schema, OpenApiSchema)
    return schema


def _real_user(case: Any, fuzzer: Client) -> None:
    """Sign half the valid sign-in cases in as the fuzzer, so success answers are checked."""
    body = case.body
    if (
        isinstance(body, dict)
        and isinstance(body.get("password"), str)
        and "username" in body
        and case.meta.generation.mode is GenerationMode.POSITIVE
        and len(body["password"]) % 2 == 0
    ):
        body.update(username=fuzzer.username, password=PASSWORD)


def _real_job(case: Any, turn: int, user: Client, finished_job: int) -> None:
    """Point the valid cases that name a job, on even turns, at a real job of the user, so
    they reach the route's service and not only its 404: a new job (taking data), an ended
    one for the event stream (so the stream ends), the finished one for its results."""
    if turn % 2:
        return
    path = case.operation.path
    if path in (RESULT, OUTPUT):
        case.path_parameters["job_id"] = finished_job
        if path == OUTPUT and turn % 4 == 0:
            case.path_parameters["name"] = "data.parquet"
        return
    new = user.new_job("fuzzed")
    if path == EVENTS:
        assert user.http.post(f"/api/job/{new}/cancel").status_code == 200
    case.path_parameters["job_id"] = new


@pytest.mark.deployments
def test_the_important_routes_are_fuzzed(api_schema: OpenApiSchema) -> None:
    labels = {f"{method} {path}" for method, path in OPERATIONS}
    assert labels >= MUST_COVER
    assert {op.ok().label for op in api_schema.get_all_operations()} == labels


@pytest.mark.deployments
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_matches_its_document(
    method: str,
    path: str,
    api_schema: OpenApiSchema,
    fuzzer: Client,
    reader: Client,
    logout_token: str,
    finished_job: int,
) -> None:
    """Schemathesis's coverage cases (each parameter's bounds, types and missing values)
    and generated ones, valid and not, each answered as the document says. Half of those
    naming a job name a real one. Every failure is collected, then all are reported."""
    operation = api_schema[path][method]
    user = reader if path in (RESULT, OUTPUT) else fuzzer
    token = logout_token if operation.label == "POST /api/auth/logout" else None
    auth = {"Authorization": token or user.http.headers["Authorization"]}
    sent: Counter[GenerationMode] = Counter()
    answered: Counter[int] = Counter()
    naming_a_job = 0
    failures: list[str] = []
    modes = [GenerationMode.POSITIVE]
    if operation.path_parameters or operation.query or operation.body:
        modes.append(GenerationMode.NEGATIVE)

    def send(case: Any) -> None:
        nonlocal naming_a_job
        _real_user(case, fuzzer)
        valid = case.meta.generation.mode is GenerationMode.POSITIVE
        if valid and "job_id" in (case.path_parameters or {}):
            _real_job(case, naming_a_job, user, finished_job)
            naming_a_job += 1
        sent[case.meta.generation.mode] += 1
        try:
            response = case.call_and_validate(headers=auth, checks=CHECKS, timeout=REQUEST_TIMEOUT)
            answered[response.status_code] += 1
        except (FailureGroup, Exception) as exc:  # checks' failures, or no answer in time
            failures.append(f"{type(exc).__name__}: {exc}")

    coverage = api_schema.iter_coverage_cases(
        operation, generation_modes=modes, generation_config=api_schema.config.generation
    )
    for case in coverage:
        send(case)

    @hypothesis.given(st.one_of(*(operation.as_strategy(generation_mode=m) for m in modes)))
    @hypothesis.settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=MORE_EXAMPLES.get(operation.label, MAX_EXAMPLES),
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def fuzz(case: Any) -> None:
        send(case)

    fuzz()
    if operation.label == f"POST {UPLOAD}":
        # A chunk the server takes, so the 200's schema is checked too.
        case = operation.Case(
            path_parameters={"job_id": fuzzer.new_job("a valid chunk")},
            body={"chunk_index": 0, "total_chunks": 1, "file": b"id,name\n1,a\n"},
            media_type="multipart/form-data",
        )
        try:
            response = case.call_and_validate(headers=auth, checks=CHECKS, timeout=REQUEST_TIMEOUT)
            answered[response.status_code] += 1
        except (FailureGroup, Exception) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    if failures:
        pytest.fail(f"{len(failures)} failing cases:\n\n" + "\n\n".join(failures), pytrace=False)
    # A run that sent nothing, or nothing valid, proves nothing.
    assert sent[GenerationMode.POSITIVE] >= (3 if len(modes) > 1 else 1), sent
    if len(modes) > 1:
        assert sent[GenerationMode.NEGATIVE] >= 1, sent
    if operation.label in MUST_SUCCEED:
        assert answered[MUST_SUCCEED[operation.label]], answered


def test_api_sequences_match_its_document(make_server: ServerFactory) -> None:
    """Stateful: Schemathesis chains operations by the links it infers (a job created, then
    its upload, status and deletion). Each scenario starts from the same state (no job),
    on a server with no worker, so the same requests get the same answers: Hypothesis
    replays scenarios and refuses a server whose answers drift. The event stream is left
    out: on a job that is still open it streams until the job ends. One deployment: the
    sequences test the document, which is the same on both."""
    server = make_server("--no-worker")
    user = server.client()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=_config())
    machine = schema.exclude(path=EVENTS).as_state_machine()
    token = user.http.headers["Authorization"]
    answers: Counter[tuple[str, int]] = Counter()

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"Authorization": token}, "timeout": REQUEST_TIMEOUT}

        def after_call(self, response: Any, case: Any) -> None:
            answers[case.operation.label, response.status_code] += 1

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

        def teardown(self) -> None:
            for job in user.http.get("/api/job", params={"limit": 200}).json()["items"]:
                assert user.http.delete(f"/api/job/{job['id']}").status_code == 204

    Workflow.run(
        settings=hypothesis.settings(
            derandomize=True,
            database=None,
            deadline=None,
            max_examples=15,
            stateful_step_count=8,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
    )
    seen = json.dumps({f"{label} {status}": n for (label, status), n in answers.items()})
    # The scenarios' paths depend on the server's answers (ids, what a fuzzed chunk gets),
    # so which operations succeed varies from run to run; that they ran, and that every
    # answer matched the document, does not. The single-operation test above checks each
    # success answer.
    assert sum(answers.values()) >= 50, seen
    assert len({label for label, _ in answers}) >= 6, seen


def test_the_quota_routes_and_the_quotas_507_are_documented() -> None:
    doc = _document()
    assert statuses(doc, "GET", "/api/users/{user_id}/quota") == {200, 401, 403, 404, 422}
    assert statuses(doc, "PUT", "/api/users/{user_id}/quota") == {
        200, 400, 401, 403, 404, 408, 413, 422,
    }  # fmt: skip
    words = openapi.words(Problem.QUOTA_EXCEEDED)
    for method, path in (("POST", UPLOAD), ("POST", "/api/tus/"), ("PATCH", "/api/tus/{tus_id}")):
        response = doc["paths"][path][method.lower()]["responses"]["507"]
        assert words in response["description"], (method, path)
    me = doc["components"]["schemas"]["Me"]["properties"]
    assert {"quota_bytes", "used_bytes", "reserved_bytes"} <= me.keys()
