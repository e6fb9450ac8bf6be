"""Jobs: create, list (own, newest first, paginated), read, cancel, delete; ownership."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Client, Server, ServerFactory, storage_holds
from tests.factories import csv_bytes, csv_of_size

# Every test here runs over both deployments (tests/conftest.py).
pytestmark = pytest.mark.deployments


@pytest.fixture(scope="module")
def alice(server: Server) -> Client:
    return server.client()


@pytest.fixture(scope="module")
def bob(server: Server) -> Client:
    return server.client()


def create(client: Client, body: dict[str, Any]) -> httpx.Response:
    return client.http.post("/api/job", json=body)


def uploads(server: Server) -> set[str]:
    """The unfinished uploads in the server's storage."""
    return set(storage_holds(server).uploads)


def has_input(server: Server, job_id: int) -> bool:
    return f"jobs/{job_id}/input.csv" in storage_holds(server).files


def test_create_answers_201_with_the_job(alice: Client) -> None:
    before = datetime.now(UTC)
    answer = create(alice, {"name": "sales 2024", "kind": "profile", "params": {}})
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert isinstance(job["id"], int)
    assert job["name"] == "sales 2024"
    assert job["kind"] == "profile"
    assert job["status"] == "awaiting_upload"
    assert job["upload"] is None
    assert job["result"] is None
    assert job["error"] is None
    created = datetime.fromisoformat(job["created_at"])
    assert created.tzinfo is not None
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)
    # What was answered is what is stored.
    assert alice.job(job["id"]) == job


def test_create_with_defaults_and_params(alice: Client) -> None:
    plain = create(alice, {"name": "defaults"})
    assert plain.status_code == 201, plain.text
    assert plain.json()["kind"] == "profile"
    params = {"delimiter": "\t", "header": False, "encoding": "latin-1"}
    with_params = create(alice, {"name": "with params", "params": params})
    assert with_params.status_code == 201, with_params.text
    assert with_params.json()["params"] == params


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        pytest.param({"kind": "profile"}, "name", id="missing-name"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "x" * 201}, "name", id="name-too-long"),
        pytest.param({"name": "x", "kind": "mine-bitcoin"}, "kind", id="unknown-kind"),
        pytest.param({"name": "x", "params": {"colour": "red"}}, "colour", id="unknown-param"),
        pytest.param({"name": "x", "params": {"encoding": "klingon-8"}}, "encoding", id="encoding"),
        pytest.param({"name": "x", "params": {"delimiter": ";;"}}, "delimiter", id="delimiter"),
        pytest.param(
            {"name": "x", "params": {"delimiter": "\x00"}}, "delimiter", id="delimiter-nul"
        ),
        pytest.param(
            {"name": "x", "params": {"delimiter": '"'}}, "delimiter", id="delimiter-quote"
        ),
        pytest.param({"name": "x", "owner": "bob"}, "owner", id="extra-field"),
        pytest.param({"name": 5}, "name", id="name-not-a-string"),
        pytest.param([], "", id="not-an-object"),
    ],
)
def test_bad_bodies_answer_422_with_plain_words(alice: Client, body: Any, mentions: str) -> None:
    answer = alice.http.post("/api/job", json=body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str)
    assert detail
    assert mentions in detail


# Names with control characters (DESIGN §2): PostgreSQL refuses NUL in text, so without the
# check a NUL is a 500 there; the others would reach terminals and pages as they are.
@pytest.mark.parametrize(
    ("name", "detail"),
    [
        pytest.param(
            "a\x00b", "must not hold control characters (character 2 is U+0000)", id="nul"
        ),
        pytest.param(
            "\x1b]0;pwned\x07", "must not hold control characters (character 1 is U+001B)", id="esc"
        ),
        pytest.param(
            "two\r\nlines", "must not hold control characters (character 4 is U+000D)", id="crlf"
        ),
        pytest.param(
            "in\u2028two", "must not hold control characters (character 3 is U+2028)", id="line-sep"
        ),
        pytest.param(
            "report\u202egpj.exe",
            "must not hold control characters (character 7 is U+202E)",
            id="bidi-override",
        ),
        pytest.param("\x85", "must not hold control characters (character 1 is U+0085)", id="c1"),
        pytest.param("x" * 201, "String should have at most 200 characters", id="201-chars"),
        pytest.param("", "String should have at least 1 character", id="empty"),
    ],
)
def test_a_name_with_control_characters_or_too_long_is_422(
    server: Server, alice: Client, name: str, detail: str
) -> None:
    before = server.sql("SELECT count(*) FROM jobs")
    answer = create(alice, {"name": name})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == f"name: {detail}"
    assert server.sql("SELECT count(*) FROM jobs") == before


def test_names_of_200_characters_with_any_printable_text_are_taken(alice: Client) -> None:
    # Emoji joined by U+200D and a soft hyphen: format characters (Cf), allowed.
    for name in ("x" * 200, "Zoë's 📈 Q3 👩\u200d💻 ventes été — ÖBB", "\u00adsoft"):
        answer = create(alice, {"name": name})
        assert answer.status_code == 201, answer.text
        assert alice.job(answer.json()["id"])["name"] == name


def test_a_body_that_is_not_json_answers_422(alice: Client) -> None:
    answer = alice.http.post(
        "/api/job", content=b"name=x", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], str)


def test_list_shows_own_jobs_newest_first_in_pages(server: Server, bob: Client) -> None:
    carol = server.client()
    ids = [carol.new_job(f"job {i}") for i in range(5)]
    bob_job = bob.new_job("bob's")

    everything = carol.http.get("/api/job")
    assert everything.status_code == 200, everything.text
    page = everything.json()
    assert page["total"] == 5
    assert [job["id"] for job in page["items"]] == ids[::-1]
    assert [job["name"] for job in page["items"]] == [f"job {i}" for i in range(4, -1, -1)]
    assert bob_job not in [job["id"] for job in page["items"]]

    pages = [
        carol.http.get("/api/job", params={"limit": 2, "offset": offset}).json()
        for offset in (0, 2, 4, 6)
    ]
    assert [[job["id"] for job in p["items"]] for p in pages] == [
        ids[4:2:-1],
        ids[2:0:-1],
        ids[:1],
        [],
    ]
    assert {p["total"] for p in pages} == {5}
    assert [(p["limit"], p["offset"]) for p in pages] == [(2, 0), (2, 2), (2, 4), (2, 6)]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "x"}])
def test_bad_pagination_answers_422(alice: Client, params: dict[str, Any]) -> None:
    answer = alice.http.get("/api/job", params=params)
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], str)


def test_another_users_job_is_the_same_404_as_none(alice: Client, bob: Client) -> None:
    job_id = alice.new_job("private")
    missing = bob.http.get("/api/job/999999999")
    assert missing.status_code == 404
    for answer in (
        bob.http.get(f"/api/job/{job_id}"),
        bob.http.post(f"/api/job/{job_id}/cancel"),
        bob.http.delete(f"/api/job/{job_id}"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json() == missing.json()
    # Bob's attempts changed nothing.
    assert alice.job(job_id)["status"] == "awaiting_upload"


def test_job_id_must_be_an_integer(alice: Client) -> None:
    answer = alice.http.get("/api/job/abc")
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], str)


def test_cancel_then_cancel_again_is_409(alice: Client) -> None:
    job_id = alice.new_job()
    answer = alice.http.post(f"/api/job/{job_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert answer.json()["id"] == job_id
    assert alice.job(job_id)["status"] == "cancelled"

    again = alice.http.post(f"/api/job/{job_id}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]


def test_cancel_discards_an_unfinished_upload(server: Server, alice: Client, chunk: int) -> None:
    job_id = alice.new_job()
    before = uploads(server)
    sent = alice.send_chunk(job_id, 0, 2, csv_of_size(chunk)[:chunk])
    assert sent.status_code == 200, sent.text
    new = uploads(server) - before
    assert len(new) == 1

    answer = alice.http.post(f"/api/job/{job_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert answer.json()["upload"] is None
    assert not new & uploads(server)
    # The cancelled job takes no more data.
    late = alice.send_chunk(job_id, 1, 2, b"1,2,3\n")
    assert late.status_code == 409


def test_a_finished_job_cannot_be_cancelled(alice: Client) -> None:
    job_id = alice.new_job()
    assert alice.send_chunk(job_id, 0, 1, csv_bytes(10)).status_code == 200
    assert alice.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    answer = alice.http.post(f"/api/job/{job_id}/cancel")
    assert answer.status_code == 409
    assert "succeeded" in answer.json()["detail"]
    assert alice.job(job_id)["status"] == "succeeded"


def test_delete_then_404(server: Server, alice: Client) -> None:
    job_id = alice.new_job()
    assert alice.send_chunk(job_id, 0, 1, csv_bytes(10)).status_code == 200
    alice.wait_for(job_id, "succeeded", "failed")
    assert has_input(server, job_id)

    answer = alice.http.delete(f"/api/job/{job_id}")
    assert answer.status_code == 204
    assert answer.content == b""
    assert not has_input(server, job_id)
    assert alice.http.get(f"/api/job/{job_id}").status_code == 404
    assert alice.http.delete(f"/api/job/{job_id}").status_code == 404
    listed = alice.http.get("/api/job", params={"limit": 200}).json()["items"]
    assert job_id not in [job["id"] for job in listed]


def test_delete_removes_an_unfinished_upload(server: Server, alice: Client, chunk: int) -> None:
    job_id = alice.new_job()
    before = uploads(server)
    assert alice.send_chunk(job_id, 0, 3, csv_of_size(chunk)[:chunk]).status_code == 200
    new = uploads(server) - before
    assert len(new) == 1
    assert alice.http.delete(f"/api/job/{job_id}").status_code == 204
    assert not new & uploads(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/job"),
        ("POST", "/api/job"),
        ("GET", "/api/job/1"),
        ("POST", "/api/job/1/cancel"),
        ("DELETE", "/api/job/1"),
        ("GET", "/api/auth/me"),
    ],
)
def test_without_auth_401(server: Server, method: str, path: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.request(method, path, json={"name": "x"} if method == "POST" else None)
    assert answer.status_code == 401, answer.text
    assert isinstance(answer.json()["detail"], str)


def test_cancel_of_a_queued_job_removes_its_uploaded_bytes(make_server: ServerFactory) -> None:
    # No worker: the job stays queued, its upload complete but not yet assembled.
    srv = make_server("--no-worker")
    owner = srv.client()
    job_id = owner.new_job()
    before = uploads(srv)
    assert owner.send_chunk(job_id, 0, 1, csv_bytes(100)).status_code == 200
    assert owner.job(job_id)["status"] == "queued"
    new = uploads(srv) - before
    assert len(new) == 1

    answer = owner.http.post(f"/api/job/{job_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    # Nothing will ever read those bytes again: they must not stay stored until a delete.
    assert not new & uploads(srv)


@pytest.mark.parametrize("job_id", ["0", "-1", str(2**63 - 1), str(2**63), "9" * 30])
def test_any_integer_that_names_no_job_is_404(alice: Client, job_id: str) -> None:
    """Ids past what the database can hold are no jobs either, not a server error."""
    missing = alice.http.get("/api/job/999999999").json()
    for answer in (
        alice.http.get(f"/api/job/{job_id}"),
        alice.http.post(f"/api/job/{job_id}/cancel"),
        alice.http.delete(f"/api/job/{job_id}"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json() == missing


def test_an_offset_past_any_database_is_422(alice: Client) -> None:
    answer = alice.http.get("/api/job", params={"offset": 2**63})
    assert answer.status_code == 422, answer.text
    assert isinstance(answer.json()["detail"], str)
