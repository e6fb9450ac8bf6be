"""CORS (DESIGN §7), in this process: preflights for listed and unlisted origins, the
headers answers expose, and cookies that stay same-origin whatever is listed.
A real browser on another origin is tests/e2e/test_cors_browser.py's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from chute.auth.service import add_user, issue_token
from chute.config import Settings
from chute.db.models import TokenKind
from tests.api.inprocess import App, TestClient, app_in_process

FRONT = "http://app.example:3000"
OTHER = "https://evil.example"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from app_in_process(
        Path(tmp_path_factory.mktemp("cors")),
        cors_origins=f" {FRONT}/ , https://Second.example:443",
    )


@pytest.fixture
def client(app: App) -> TestClient:
    return app.client()


def preflight(
    http: TestClient, path: str, origin: str, method: str, headers: str
) -> httpx.Response:
    return http.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def test_origins_are_read_as_browsers_name_them(app: App) -> None:
    assert app.settings.cors_origin_list == [FRONT, "https://second.example"]


@pytest.mark.parametrize(
    "value", ["*", "app.example", "https://app.example/path", "ftp://app.example", "https://"]
)
def test_an_origin_that_is_not_one_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="CHUTE_CORS_ORIGINS"):
        Settings(cors_origins=f"https://ok.example,{value}")


def test_preflight_of_a_chunk_upload_from_a_listed_origin(app: App) -> None:
    answer = preflight(
        app.http, "/api/job/1/upload-data", FRONT, "POST", "authorization,content-type"
    )
    assert answer.status_code == 200
    headers = answer.headers
    assert headers["access-control-allow-origin"] == FRONT
    assert "POST" in headers["access-control-allow-methods"]
    allowed = headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "access-control-allow-credentials" not in headers
    assert headers["access-control-max-age"] == "600"
    assert headers["x-content-type-options"] == "nosniff"


def test_preflight_of_a_tus_patch_from_a_listed_origin(app: App) -> None:
    wanted = "authorization,tus-resumable,upload-offset,upload-checksum,content-type"
    answer = preflight(app.http, "/api/tus/abc", FRONT, "PATCH", wanted)
    assert answer.status_code == 200
    allowed = answer.headers["access-control-allow-headers"].lower()
    for header in wanted.split(","):
        assert header in allowed


def test_preflight_from_an_unlisted_origin_is_refused(app: App) -> None:
    answer = preflight(app.http, "/api/job", OTHER, "POST", "authorization,content-type")
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers


def test_preflight_of_a_header_not_needed_is_refused(app: App) -> None:
    answer = preflight(app.http, "/api/job", FRONT, "POST", "x-something-else")
    assert answer.status_code == 400


def test_answers_name_the_listed_origin_and_expose_upload_headers(client: TestClient) -> None:
    answer = client.post("/api/job", json={"name": "cors"}, headers={"Origin": FRONT})
    assert answer.status_code == 201
    assert answer.headers["access-control-allow-origin"] == FRONT
    exposed = answer.headers["access-control-expose-headers"].lower()
    for header in (
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
        "upload-expires",
        "chute-job-id",
        "retry-after",
    ):
        assert header in exposed
    assert "access-control-allow-credentials" not in answer.headers


def test_errors_carry_cors_headers_too(app: App) -> None:
    answer = app.http.get("/api/job", headers={"Origin": FRONT})
    assert answer.status_code == 401
    assert answer.headers["access-control-allow-origin"] == FRONT
    assert answer.json() == {"detail": "Not signed in."}


def test_an_unlisted_origin_gets_no_cors_headers(client: TestClient) -> None:
    answer = client.get("/api/job", headers={"Origin": OTHER})
    assert answer.status_code == 200  # a script may call; a browser hides the answer
    assert "access-control-allow-origin" not in answer.headers


def test_tus_discovery_without_a_preflight_still_answers_tus(app: App) -> None:
    answer = app.http.options("/api/tus/", headers={"Origin": FRONT})
    assert answer.status_code == 204
    assert answer.headers["tus-version"] == "1.0.0"
    assert answer.headers["access-control-allow-origin"] == FRONT


def test_a_cookie_write_from_a_listed_origin_is_still_refused(app: App) -> None:
    with app.runtime.sessions() as session:
        user = add_user(session, "cookie-user", "pw-for-tests")
        session_token = issue_token(session, user, TokenKind.SESSION, 3600)
    http = TestClient(app.http.app, base_url="http://testserver")
    http.cookies.set("chute_session", session_token)
    answer = http.post("/api/job", json={"name": "x"}, headers={"Origin": FRONT})
    assert answer.status_code == 403
    assert answer.json() == {"detail": "Request refused: it does not come from this site."}
    # The same session from Chute's own origin writes.
    same = http.post("/api/job", json={"name": "x"}, headers={"Origin": "http://testserver"})
    assert same.status_code == 201


def test_no_cors_when_no_origin_is_listed(tmp_path: Path) -> None:
    for plain in app_in_process(tmp_path):
        answer = preflight(plain.http, "/api/job", FRONT, "POST", "authorization")
        assert "access-control-allow-origin" not in answer.headers
