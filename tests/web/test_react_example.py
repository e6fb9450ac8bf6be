"""examples/react built with Vite (offline, from its installed packages) and used in
Chromium against a real `chute serve`.

The built page is served by `vite preview`, which passes /api/ on to Chute (the example's
vite.config.js): page and API share one origin, as behind an application's reverse proxy,
so no CORS is involved and the uploader's default baseUrl ("") is the one tested.

The page is built for a real OpenID Connect provider (oidc-provider, tests/auth): a person
signs in there (authorization code with PKCE, by oidc-client-ts in the page) and the page
uploads with the provider's access token, which Chute checks against the provider's keys.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.auth.provider import (
    AUDIENCE,
    Provider,
    oidc_settings,
    provider_running,
    require_provider,
)
from tests.conftest import Client, Server, free_port, serving
from tests.e2e.conftest import SMALL_CHUNK, result_input, throttle, write_csv
from tests.factories import sha256
from tests.web.conftest import REACT, run, tool

# Slow enough that the page shows progress between 0 and 100 %.
UPLOAD_BYTES_PER_SECOND = 400_000

# Every percent the page shows, in order, kept in `window.shown`.
RECORD_PROGRESS = """() => {
  window.shown = [];
  const output = document.getElementById("percent");
  new MutationObserver(() => window.shown.push(output.textContent))
    .observe(output, { childList: true, characterData: true, subtree: true });
}"""


# The example page, as the provider knows it.
PAGE_CLIENT = "react-example"


@pytest.fixture(scope="module")
def site_port() -> int:
    """The port the built page is served on, known before the provider starts: the
    provider sends people back only to the page's registered address."""
    return free_port()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, site_port: int) -> Iterator[Provider]:
    require_provider()
    page = {
        "id": PAGE_CLIENT,
        "alg": "ES256",
        "redirect_uris": [f"http://127.0.0.1:{site_port}/"],
    }
    with provider_running(tmp_path_factory.mktemp("oidc"), browser_clients=[page]) as running:
        yield running


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Path:
    out = tmp_path_factory.mktemp("react-dist")
    oidc = {
        "VITE_OIDC_ISSUER": provider.issuer,
        "VITE_OIDC_CLIENT_ID": PAGE_CLIENT,
        "VITE_OIDC_AUDIENCE": AUDIENCE,
        "VITE_OIDC_SCOPE": "openid upload",
    }
    result = run(
        tool(REACT, "vite"), "build", "--outDir", out, "--emptyOutDir", cwd=REACT, env=oidc
    )
    assert result.returncode == 0, result.stdout + result.stderr
    html = (out / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing loaded from elsewhere"
    return out


@pytest.fixture(scope="module")
def chute(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[Server]:
    with serving(
        tmp_path_factory.mktemp("chute-react"),
        CHUTE_CHUNK_SIZE=str(SMALL_CHUNK),
        **oidc_settings(provider),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def site(
    built: Path, chute: Server, site_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The built page on `vite preview`, with /api/ passed on to `chute`: its URL."""
    port = site_port
    log = tmp_path_factory.mktemp("vite") / "preview.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                tool(REACT, "vite"),
                "preview",
                "--outDir",
                built,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--strictPort",
            ],
            cwd=REACT,
            env={**os.environ, "CHUTE_URL": chute.url},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/api/config").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def page(browser: Browser, site: str) -> Iterator[Page]:
    context = browser.new_context()
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.set_default_timeout(30_000)
    tab.goto(site)
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def token_of(client: Client) -> str:
    return str(client.http.headers["Authorization"]).removeprefix("Bearer ")


def shown_job(page: Page) -> int:
    match = re.search(r"job (\d+)", page.get_by_role("status").inner_text())
    assert match, page.get_by_role("status").inner_text()
    return int(match.group(1))


def test_a_file_goes_into_a_new_job_with_progress_to_100(
    page: Page, chute: Server, tmp_path: Path
) -> None:
    client = chute.client()
    path = write_csv(tmp_path, "orders.csv")
    page.get_by_label("Access token").fill(token_of(client))
    page.get_by_label("CSV file").set_input_files(path)
    page.evaluate(RECORD_PROGRESS)
    throttle(page, UPLOAD_BYTES_PER_SECOND)
    page.get_by_role("button", name="Upload").click()

    expect(page.get_by_role("status")).to_contain_text("succeeded", timeout=60_000)
    expect(page.locator("#percent")).to_have_text("100 %")
    expect(page.get_by_label("Upload progress")).to_have_attribute("value", "100")
    shown = [int(text.removesuffix(" %")) for text in page.evaluate("window.shown")]
    assert any(0 < p < 100 for p in shown), shown
    assert shown == sorted(shown), "progress never goes back"

    job = client.job(shown_job(page))
    assert job["name"] == "orders.csv"
    assert job["status"] == "succeeded"
    data = path.read_bytes()
    assert result_input(job)["size"] == len(data)
    assert client.stored(job["id"]) == (len(data), sha256(data))


def test_an_existing_job_a_refused_token_and_a_bad_job_id(
    page: Page, chute: Server, tmp_path: Path
) -> None:
    client = chute.client()
    job_id = client.new_job("from the React page")
    path = write_csv(tmp_path, "stock.csv", rows=3000)
    page.get_by_label("Job id").fill(str(job_id))
    page.get_by_label("CSV file").set_input_files(path)

    # A token Chute does not know: the server's plain detail, nothing stored.
    page.get_by_label("Access token").fill("expired-or-forged")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_have_text("Not signed in.")
    expect(page.get_by_role("status")).to_contain_text("failed")
    assert client.job(job_id)["status"] == "awaiting_upload"
    assert client.http.get(f"/api/job/{job_id}/upload-data").json()["state"] == "empty"

    # A job id that is none: refused in the page, before any request.
    page.get_by_label("Access token").fill(token_of(client))
    page.get_by_label("Job id").fill("twelve")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_contain_text("The job must be a job's id")

    # The token callback reads the page's current token: the same job now takes the file.
    page.get_by_label("Job id").fill(str(job_id))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text(f"job {job_id}")
    expect(page.get_by_role("status")).to_contain_text("succeeded", timeout=60_000)
    expect(page.get_by_role("alert")).to_have_count(0)
    data = path.read_bytes()
    assert client.stored(job_id) == (len(data), sha256(data))


def test_a_person_signs_in_at_the_provider_and_uploads_with_its_token(
    page: Page, chute: Server, tmp_path: Path
) -> None:
    """The whole path of an application's user: the provider's sign-in, back to the page
    with a code, the code for an access token, that token on every upload request."""
    page.get_by_role("button", name="Sign in").click()
    # The provider's own (development) sign-in form: any name signs in.
    page.locator("input[name=login]").fill("erin")
    page.locator("input[name=password]").fill("any password")
    page.locator("button[type=submit]").click()
    consent = page.locator("button[type=submit]", has_text="Continue")
    if consent.count():
        consent.click()
    expect(page.get_by_text("Signed in as erin")).to_be_visible()

    path = write_csv(tmp_path, "erin.csv", rows=2000)
    page.get_by_label("CSV file").set_input_files(path)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("succeeded", timeout=60_000)
    job_id = shown_job(page)

    # The job is the provider's person's, known to Chute by the token the page kept.
    stored = page.evaluate(
        "() => Object.keys(sessionStorage).filter(k => k.startsWith('oidc.user:'))"
        ".map(k => JSON.parse(sessionStorage.getItem(k)).access_token)"
    )
    assert len(stored) == 1 and stored[0].count(".") == 2, "a JWT access token"
    with httpx.Client(
        base_url=chute.url, headers={"Authorization": f"Bearer {stored[0]}"}, timeout=30
    ) as http:
        assert http.get("/api/auth/me").json()["username"] == "erin"
        assert http.get(f"/api/job/{job_id}").json()["status"] == "succeeded"
    # Another user of Chute does not see it.
    assert chute.client().http.get(f"/api/job/{job_id}").status_code == 404
    data = path.read_bytes()
    assert chute.client().stored(job_id) == (len(data), sha256(data))
