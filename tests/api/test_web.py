"""The web page's files, served by the same process as the API."""

from __future__ import annotations

import httpx

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
