"""Upload a file with the web page, as a person does, and report how it went.

Run by tests/net inside the client's network namespace (`ip netns exec`), so that
Chromium's traffic crosses the test link; a Playwright browser cannot be moved into a
namespace from the test process. It signs in, picks the file on the jobs page, creates
the job and waits until the job page says the job succeeded or failed, or shows an upload
error, or `timeout` seconds have passed, or the file STOP exists (the test gave up).

Prints JSON lines on stdout: `{"job": id}` once the upload has started, then one last
line `{"status": ..., "error": ..., "states": [[seconds, text], ...], "page_errors": [...],
"stopped": bool}` where `states` lists every text the upload's status line showed
("Trying again in ..." is a retry), with the seconds since the upload started.

    python browser_upload.py URL USER PASSWORD FILE TIMEOUT STOP
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
POLL = 0.2  # seconds between two looks at the page


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def sign_in(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Jobs", exact=True).wait_for()


def start_upload(page: Page, path: Path) -> int:
    view = page.locator("#view-jobs")
    view.get_by_label("CSV file").set_input_files(path)
    expect(page.locator("#new-job-file-check")).to_contain_text("columns:")
    view.get_by_role("button", name="Create job and upload").click()
    expect(page).to_have_url(re.compile(r"#/job/\d+$"))
    match = re.search(r"#/job/(\d+)$", page.url)
    assert match is not None, page.url
    return int(match.group(1))


def follow(page: Page, timeout: float, stop: Path) -> dict[str, object]:
    """Watch the job page until the job ends or the upload fails; what it showed."""
    started = time.monotonic()
    states: list[tuple[float, str]] = []
    status = error = ""
    while time.monotonic() - started < timeout and not stop.exists():
        status = page.locator("#job-status").inner_text().strip()
        error = page.locator("#upload-error").inner_text().strip()
        state = page.locator("#upload-state").inner_text().strip()
        if not states or states[-1][1] != state:
            states.append((round(time.monotonic() - started, 1), state))
        if error or status in ("succeeded", "failed"):
            break
        page.wait_for_timeout(POLL * 1000)
    return {"status": status, "error": error, "states": states, "stopped": stop.exists()}


def main() -> int:
    url, user, password, file, timeout, stop = sys.argv[1:7]
    page_errors: list[str] = []
    with sync_playwright() as pw:
        # The page hashes chunks with crypto.subtle, which exists only in a secure context:
        # https, or http on loopback. The test link is plain http on 169.254.x.x.
        secure = f"--unsafely-treat-insecure-origin-as-secure={url}"
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[secure])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.set_default_timeout(30_000)
            sign_in(page, url, user, password)
            say(job=start_upload(page, Path(file)))
            say(**follow(page, float(timeout), Path(stop)), page_errors=page_errors)
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
