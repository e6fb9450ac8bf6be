"""CORS in a real browser (DESIGN §7): a page on another origin, listed in
CHUTE_CORS_ORIGINS, creates a job and uploads a CSV into a real `chute serve` with a
bearer token through fetch; a page on an origin not listed cannot, Chromium blocks it."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser

from tests.conftest import Server, free_port, serving
from tests.factories import csv_bytes

# The page's script: create a job, send the file as one chunk, wait for the job to end;
# what happened goes into <pre id="out"> as JSON, a failure as {"error": ...}.
PAGE = """<!doctype html><meta charset="utf-8"><title>front end</title><pre id="out"></pre>
<script type="module">
const out = document.getElementById("out");
const { api, token, csv } = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const auth = { Authorization: `Bearer ${token}` };
try {
  const created = await fetch(`${api}/api/job`, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({ name: "from another origin" }),
  });
  const job = await created.json();
  const form = new FormData();
  form.append("chunk_index", "0");
  form.append("total_chunks", "1");
  form.append("file", new Blob([csv], { type: "text/csv" }), "front.csv");
  const sent = await fetch(`${api}/api/job/${job.id}/upload-data`, {
    method: "POST", headers: auth, body: form,
  });
  const answer = await sent.json();
  let status = "";
  for (let i = 0; i < 300 && !["succeeded", "failed"].includes(status); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    status = (await (await fetch(`${api}/api/job/${job.id}`, { headers: auth })).json()).status;
  }
  out.textContent = JSON.stringify({ job: job.id, answer, status });
} catch (error) {
  out.textContent = JSON.stringify({ error: String(error) });
}
</script>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def page_server(port: int) -> Iterator[str]:
    """A front end's own web server on a loopback port of its own; its origin."""
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, str]]:
    with page_server(free_port()) as listed, page_server(free_port()) as unlisted:
        yield listed, unlisted


@pytest.fixture(scope="module")
def chute(tmp_path_factory: pytest.TempPathFactory, origins: tuple[str, str]) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("chute-cors"), CHUTE_CORS_ORIGINS=origins[0]) as srv:
        yield srv


def run_page(browser: Browser, origin: str, server: Server, token: str) -> dict[str, object]:
    csv = csv_bytes(200).decode()
    context = browser.new_context()
    try:
        page = context.new_page()
        params = json.dumps({"api": server.url, "token": token, "csv": csv})
        page.goto(f"{origin}/#{params}")
        page.wait_for_function("document.getElementById('out').textContent !== ''", timeout=60_000)
        result: dict[str, object] = json.loads(page.locator("#out").inner_text())
        return result
    finally:
        context.close()


def test_a_listed_origin_uploads_with_a_bearer_token(
    browser: Browser, chute: Server, origins: tuple[str, str]
) -> None:
    api = chute.client()
    token = api.http.headers["Authorization"].removeprefix("Bearer ")
    result = run_page(browser, origins[0], chute, token)
    assert "error" not in result, result
    answer = result["answer"]
    assert isinstance(answer, dict)
    assert answer["message"] == "Data uploaded successfully and job started"
    assert (answer["data_chunk_index"], answer["job_id"]) == (0, result["job"])
    assert result["status"] == "succeeded"
    assert isinstance(result["job"], int)
    job = api.job(result["job"])
    assert job["name"] == "from another origin"


def test_an_unlisted_origin_is_blocked_by_the_browser(
    browser: Browser, chute: Server, origins: tuple[str, str]
) -> None:
    api = chute.client()
    token = api.http.headers["Authorization"].removeprefix("Bearer ")
    result = run_page(browser, origins[1], chute, token)
    assert result == {"error": "TypeError: Failed to fetch"}
    # The preflight was refused, so the POST itself was never sent: no job was made.
    assert api.http.get("/api/job").json()["total"] == 0
