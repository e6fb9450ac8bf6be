"""Text from the server on the page: set as text, never as HTML, with its control
characters shown as visible escapes; the profile's approximate distinct count says so."""

from __future__ import annotations

import json
import unicodedata

from playwright.sync_api import Route, expect

from tests.conftest import Server
from tests.e2e.conftest import People
from tests.factories import HOSTILE

HTML = '<img src=x onerror="window.pwned=1">'


def no_control_characters(text: str) -> None:
    # innerText separates table cells with tabs and lines with newlines.
    bad = sorted({hex(ord(c)) for c in text if c not in "\t\n" and unicodedata.category(c) == "Cc"})
    assert not bad, f"control characters on the page: {bad}"


def test_names_values_and_errors_are_shown_as_text(web: Server, people: People) -> None:
    alice = people(web)
    data = (
        f'id,"col{HOSTILE}{HTML}",amount\n'
        f'1,"{HOSTILE}{HTML}",2.5\n'
        "2,plain,3.5\n"
        f'3,"{HOSTILE}",4.5,"{HOSTILE}extra"\n'  # a rejected row
    ).encode()
    job_id = alice.api.new_job("hostile")
    alice.api.upload(job_id, data)
    job = alice.api.wait_for(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded", job
    result = job["result"]
    for column in result["columns"]:
        column["distinct_approximate"] = True
    web.write_job(job_id, name=f"{HOSTILE}{HTML}name", result=json.dumps(result))
    failed_id = alice.api.new_job("broken")
    web.write_job(failed_id, status="failed", error=f"{HOSTILE}{HTML}bad")

    page = alice.page
    page.goto(f"{web.url}/#/job/{job_id}")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    title = page.locator("#job-title")
    expect(title).to_contain_text(f"\\x1b]0;pwned\\x07\\x1b[2J{HTML}name")
    columns = page.locator("#result").get_by_role("table", name="Columns")
    expect(columns.get_by_role("columnheader", name="Distinct (approx.)")).to_be_visible()
    expect(columns).to_contain_text(f"col\\x1b]0;pwned\\x07\\x1b[2J{HTML}")
    expect(page.locator("#result")).to_contain_text(f"\\x1b]0;pwned\\x07\\x1b[2J{HTML}")
    no_control_characters(page.evaluate("document.body.innerText"))
    assert page.locator("img").count() == 0
    assert page.evaluate("window.pwned") is None

    page.goto(f"{web.url}/#/job/{failed_id}")
    expect(page.locator("#job-error")).to_contain_text(f"\\x1b]0;pwned\\x07\\x1b[2J{HTML}bad")
    no_control_characters(page.evaluate("document.body.innerText"))

    page.goto(f"{web.url}/#/")
    row = page.locator("#jobs-table tbody tr", has_text=f"#{job_id}")
    expect(row).to_contain_text(f"\\x1b]0;pwned\\x07\\x1b[2J{HTML}name")
    no_control_characters(page.evaluate("document.body.innerText"))
    assert page.locator("img").count() == 0


def test_the_browsers_uploader_cuts_off_a_stalled_chunk_and_sends_it_again(
    web: Server, people: People
) -> None:
    """XMLHttpRequest under the stall watch: the first chunk request gets no answer (held
    by the test, as a silent network drop would leave it); after `stallTimeout` the
    uploader aborts it and sends the chunk again, and the upload completes."""
    alice = people(web)
    job_id = alice.api.new_job("stalled")
    page = alice.page
    held: list[Route] = []

    def chunks(route: Route) -> None:
        if route.request.method == "POST" and not held:
            held.append(route)  # never answered
        else:
            route.continue_()

    page.route("**/upload-data", chunks)
    outcome = page.evaluate(
        """async (jobId) => {
            const { Uploader } = await import("/static/uploader.js");
            const file = new File(["id,name\\n1,a\\n2,b\\n"], "small.csv", { type: "text/csv" });
            const up = new Uploader(file, jobId, { stallTimeout: 1000, retry: { baseDelay: 10 } });
            const retries = [];
            up.addEventListener("retrying", (e) => retries.push(e.detail));
            const started = Date.now();
            const outcome = await up.start();
            return { outcome: outcome.outcome, retries, took: Date.now() - started };
        }""",
        job_id,
    )
    assert len(held) == 1
    assert outcome["outcome"] == "complete", outcome
    assert [(r["index"], r["status"]) for r in outcome["retries"]] == [(0, 0)]
    assert "Nothing moved for 1 s" in outcome["retries"][0]["reason"]
    assert 1000 <= outcome["took"] < 20_000
    assert alice.api.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
