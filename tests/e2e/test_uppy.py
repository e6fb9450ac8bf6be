"""Uppy's Dashboard with its Tus plugin (npm, pinned; served from node_modules, no CDN) in
Chromium, uploading into Chute's tus endpoint (DESIGN §6) as a user signed in on Chute's page;
the job's profile then shows on Chute's own job page.

The Uppy page is no part of Chute: Playwright serves it (`page.route`) under a path of Chute's
origin, as an application that embeds Uppy beside Chute would, so its tus requests are
same-origin and carry the user's session cookie.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from playwright.sync_api import Page, Request, Route, expect

from tests.conftest import ROOT, Server
from tests.e2e.conftest import CSV_ROWS, People, write_csv
from tests.factories import sha256

UPPY_DIST = ROOT / "node_modules" / "uppy" / "dist"
# Uppy's PATCH size: each PATCH spans several of the server's 64 KiB parts.
TUS_CHUNK = 256 * 1024

# Uppy set up as its documentation shows, pointed at Chute. Uppy sends the file's name as
# the tus metadata `name` and `filename`, so Chute makes a profile job named after the file.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Uppy into Chute</title>
<link rel="stylesheet" href="uppy.min.css">
</head>
<body>
<div id="uppy"></div>
<script type="module">
import { Dashboard, Tus, Uppy } from "./uppy.min.mjs";

const uppy = new Uppy({ restrictions: { maxNumberOfFiles: 1 } })
  .use(Dashboard, { inline: true, target: "#uppy" })
  .use(Tus, {
    endpoint: new URL("/api/tus/", location.href).href,
    chunkSize: TUS_CHUNK,
    onAfterResponse(req, res) {
      const jobId = res.getHeader("Chute-Job-Id");
      if (jobId) window.chuteJobId = Number(jobId);
    },
  });
uppy.on("complete", (result) => {
  window.uploaded = {
    successful: result.successful.map((file) => file.name),
    failed: result.failed.map((file) => String(file.error)),
  };
});
</script>
</body>
</html>
"""


def serve_uppy_page(page: Page, origin: str) -> str:
    """Serve the Uppy page and Uppy's built files from disk under `origin`/uppy-test/;
    the page's address."""
    base = f"{origin}/uppy-test/"
    files = {
        "index.html": (PAGE.replace("TUS_CHUNK", str(TUS_CHUNK)).encode(), "text/html"),
        "uppy.min.mjs": ((UPPY_DIST / "uppy.min.mjs").read_bytes(), "text/javascript"),
        "uppy.min.css": ((UPPY_DIST / "uppy.min.css").read_bytes(), "text/css"),
    }

    def fulfil(route: Route) -> None:
        name = route.request.url.removeprefix(base).partition("?")[0]
        if name not in files:
            route.fulfill(status=404, body="not part of the test page")
            return
        body, content_type = files[name]
        route.fulfill(status=200, body=body, content_type=f"{content_type}; charset=utf-8")

    page.route(f"{base}**", fulfil)
    return f"{base}index.html"


def pick_and_upload(page: Page, csv: Path) -> dict[str, list[str]]:
    """Choose the file in Uppy's Dashboard as a person would, press Upload, and wait for
    Uppy's verdict: the names of the files it uploaded and the errors of those it did not."""
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="browse files").click()
    chooser.value.set_files(csv)
    page.get_by_role("button", name="Upload 1 file").click()
    page.wait_for_function("window.uploaded !== undefined", timeout=90_000)
    uploaded: dict[str, list[str]] = page.evaluate("window.uploaded")
    return uploaded


def test_uppy_uploads_a_csv_whose_profile_shows_on_chutes_job_page(
    web: Server, people: People, tmp_path: Path
) -> None:
    alice = people(web)  # signed in on Chute's page: the browser holds her session cookie
    page = alice.page
    sent: list[Request] = []
    page.on("request", lambda r: sent.append(r) if "/api/tus/" in r.url else None)
    page.goto(serve_uppy_page(page, web.url))
    rows = 2 * CSV_ROWS
    csv = write_csv(tmp_path, "orders.csv", rows=rows, seed=7)
    picked = csv.read_bytes()

    assert pick_and_upload(page, csv) == {"successful": ["orders.csv"], "failed": []}
    expect(page.get_by_text("Complete", exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "uppy-complete.png", full_page=True)
    methods = [r.method for r in sent]
    assert methods.count("POST") == 1
    assert methods.count("PATCH") == math.ceil(len(picked) / TUS_CHUNK) >= 3
    # No token anywhere: the session cookie alone signed these requests.
    assert not [r for r in sent if "authorization" in r.headers]

    job_id = page.evaluate("window.chuteJobId")
    assert [job["id"] for job in alice.jobs()] == [job_id]
    job = alice.api.wait_for(job_id, "succeeded", "failed", timeout=90)
    assert (job["status"], job["name"], job["attempts"]) == ("succeeded", "orders.csv", 1)
    assert alice.api.stored(job_id) == (len(picked), sha256(picked))

    page.goto(f"{web.url}/#/job/{job_id}")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    result = page.locator("#result")
    summary = result.get_by_role("table", name="Summary")
    expect(summary).to_contain_text(re.compile(f"{rows:,}".replace(",", ",?")))
    columns = result.get_by_role("table", name="Columns")
    for name in ("id", "name", "amount"):
        expect(columns.get_by_role("cell", name=name, exact=True)).to_be_visible()
    expect(result.get_by_role("table", name="First 20 rows")).to_contain_text("name-7-0")
    page.screenshot(path=tmp_path / "job-page.png", full_page=True)
