"""The web page's files, served by the same process as the API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from pathlib import Path

import httpx
import pytest

from chute.app import create_app
from chute.config import Settings
from tests.conftest import Server


def test_index_is_the_page_with_a_strict_policy(server: Server) -> None:
    answer = httpx.get(f"{server.url}/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in answer.text
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["cache-control"] == "no-cache"


def test_static_files_are_served_as_modules(server: Server) -> None:
    for name in ("uploader.js", "app.js"):
        answer = httpx.get(f"{server.url}/static/{name}")
        assert answer.status_code == 200
        assert "javascript" in answer.headers["content-type"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-cache"
    css = httpx.get(f"{server.url}/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_nothing_outside_the_web_folder(server: Server) -> None:
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js", "/app.js"):
        answer = httpx.get(f"{server.url}{path}")
        assert answer.status_code == 404, path


def test_api_routes_still_answer_json(server: Server) -> None:
    assert httpx.get(f"{server.url}/api/config").json()["chunk_size"] > 0
    missing = httpx.get(f"{server.url}/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}


def test_a_redirect_never_names_the_host_the_request_gave(server: Server) -> None:
    """Starlette's trailing-slash redirect names the Host header's host; Chute makes none."""
    for path in ("/api/job/", "/api/config/", "/docs/", "/static", "//evil.example/"):
        answer = httpx.get(f"{server.url}{path}", headers={"Host": "evil.example"})
        assert answer.status_code == 404, path
        assert "location" not in answer.headers, path
    # The path as written still answers, whatever the Host says.
    assert httpx.get(f"{server.url}/api/config", headers={"Host": "evil.example"}).is_success


def _headers_of(answer: httpx.Response, *, api: bool) -> None:
    assert answer.headers["x-content-type-options"] == "nosniff", answer.url
    if api:
        assert answer.headers["cache-control"] == "no-store", answer.url


def test_every_answer_says_nosniff_and_api_answers_no_store(server: Server) -> None:
    client = server.client()
    job = client.new_job("headers")
    api = [
        client.http.get("/api/config"),  # JSON
        client.http.get(f"/api/job/{job}"),
        httpx.get(f"{server.url}/api/auth/me"),  # 401
        client.http.get("/api/job/999999999"),  # 404
        client.http.post("/api/job", json={"name": 5}),  # 422
        httpx.get(f"{server.url}/api/nothing-here"),  # no such route
        httpx.get(f"{server.url}/static/nope.js"),  # an error outside /api
    ]
    for answer in api:
        assert answer.status_code < 300 or answer.json()["detail"], answer.url
        _headers_of(answer, api=True)
    pages = [httpx.get(f"{server.url}/"), httpx.get(f"{server.url}/static/app.js")]
    for answer in pages:
        assert answer.status_code == 200
        _headers_of(answer, api=False)
        assert answer.headers["cache-control"] == "no-cache"  # revalidated, not no-store


def test_the_event_stream_still_streams_with_the_headers(server: Server) -> None:
    client = server.client()
    job = client.new_job("stream")
    assert client.http.post(f"/api/job/{job}/cancel").status_code == 200
    with client.http.stream("GET", f"/api/job/{job}/events") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        _headers_of(answer, api=True)
        body = "".join(answer.iter_text())
    assert "event: job" in body and '"status":"cancelled"' in body


def test_a_500_carries_the_headers_too(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))

    @app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("secret detail")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get("/api/boom")

    answer = asyncio.run(call())
    assert answer.status_code == 500
    assert answer.json() == {"detail": "Internal server error."}
    _headers_of(answer, api=True)


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', html)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_load_nothing_from_elsewhere(server: Server, path: str) -> None:
    page = httpx.get(f"{server.url}{path}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assets = _assets(page.text)
    assert any(a.endswith(".js") for a in assets)
    assert "/openapi.json" in page.text
    assert all(a.startswith("/docs-assets/") for a in assets), assets
    assert "http://" not in page.text and "https://" not in page.text
    for asset in assets:
        answer = httpx.get(f"{server.url}{asset}")
        assert answer.status_code == 200, asset
        kind = answer.headers["content-type"]
        suffix = asset.rsplit(".", 1)[1]
        assert {"js": "javascript", "css": "text/css", "png": "image/png"}[suffix] in kind
        assert answer.headers["x-content-type-options"] == "nosniff"

    policy = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert all(not re.search(r"https?:|\*", value) for value in policy.values()), policy
    # Each inline script is allowed by its hash, and only those.
    inline = re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline
    }
    assert set(policy["script-src"].split()) == {"'self'", *hashes}
    assert "'unsafe-inline'" not in policy["script-src"]
