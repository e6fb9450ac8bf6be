"""The web page in headless Chromium against a real server: what a person does and sees.

Uploads are slowed with Chromium's network throttling (over CDP), so a test can act while
chunks are in flight: stop the server, reload the page, pause.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from playwright.sync_api import CDPSession, Page, Route, expect

from tests.conftest import Server, ServerFactory
from tests.e2e.conftest import (
    SMALL_CHUNK,
    People,
    Person,
    result_input,
    throttle,
    write_csv,
)
from tests.factories import sha256

MiB = 1024 * 1024


def chunks_of(path: Path, chunk_size: int = SMALL_CHUNK) -> int:
    return math.ceil(path.stat().st_size / chunk_size)


def chunks_done(page: Page) -> int:
    """Chunks the page reports done: it shows "chunk n of N" for the one being sent."""
    text = page.locator("#up-chunk").inner_text()
    match = re.fullmatch(r"chunk (\d+) of (\d+)", text)
    if match is None:
        return 0
    n, total = int(match.group(1)), int(match.group(2))
    return total if page.locator("#upload-bar").get_attribute("value") == "100" else n - 1


def wait_chunks_done(page: Page, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while chunks_done(page) < count:
        assert time.monotonic() < deadline, f"fewer than {count} chunks done in {timeout} s"
        page.wait_for_timeout(25)


def start_upload(person: Person, path: Path) -> int:
    """Create a job from the jobs page with a file; the page goes to the job and uploads."""
    view = person.page.locator("#view-jobs")
    view.get_by_label("CSV file").set_input_files(path)
    expect(person.page.locator("#new-job-file-check")).to_contain_text("columns:")
    view.get_by_role("button", name="Create job and upload").click()
    expect(person.page).to_have_url(re.compile(r"#/job/\d+$"))
    return person.current_job_id()


def expect_succeeded(person: Person, job_id: int, path: Path, server: Server) -> None:
    expect(person.page.locator("#job-status")).to_have_text("succeeded", timeout=90_000)
    picked = path.read_bytes()
    # Nothing lost or mixed: the file the job read is byte for byte the one picked.
    assert person.api.stored(job_id) == (len(picked), sha256(picked))
    described = result_input(person.api.job(job_id))
    assert described["size"] == len(picked)
    if "sha256" in described:
        assert described["sha256"] == sha256(picked)


def test_sign_in_upload_and_see_the_result(web: Server, people: People, tmp_path: Path) -> None:
    alice = people(web)
    page = alice.page
    expect(page.get_by_text("No jobs yet.")).to_be_visible()
    page.screenshot(path=tmp_path / "jobs-empty.png", full_page=True)
    csv = write_csv(tmp_path)
    total = chunks_of(csv)
    assert total >= 6

    throttle(page, 250_000)
    view = page.locator("#view-jobs")
    view.get_by_label("CSV file").set_input_files(csv)
    expect(page.locator("#new-job-file-check")).to_contain_text("columns: id,name,amount")
    expect(view.get_by_label("Job name")).to_have_value("sales")
    view.get_by_role("button", name="Create job and upload").click()

    expect(page.locator("#up-chunk")).to_have_text(re.compile(rf"chunk [2-9] of {total}"))
    figures = page.locator("#upload-figures")
    expect(figures).to_contain_text(re.compile(r"\d+\.\d %"))
    expect(figures).to_contain_text(re.compile(r"\d+\.\d MB/s"))
    expect(figures).to_contain_text(re.compile(r"time left: \d+"))
    live = page.locator("#upload-state")
    assert live.get_attribute("aria-live") == "polite"
    expect(live).to_contain_text("Uploading sales.csv")
    page.screenshot(path=tmp_path / "uploading.png", full_page=True)

    job_id = alice.current_job_id()
    expect_succeeded(alice, job_id, csv, web)
    result = page.locator("#result")
    expect(result.get_by_role("table", name="Summary")).to_contain_text(re.compile(r"20,?000"))
    columns = result.get_by_role("table", name="Columns")
    for name in ("id", "name", "amount"):
        expect(columns.get_by_role("cell", name=name, exact=True)).to_be_visible()
    preview = result.get_by_role("table", name="First 20 rows")
    expect(preview).to_contain_text("name-0-0")
    expect(preview.locator("tbody tr")).to_have_count(20)
    download = result.get_by_role("link", name=re.compile("Download the data as Parquet"))
    parquet = page.request.get(f"{web.url}{download.get_attribute('href')}")
    assert parquet.ok and parquet.body()[:4] == b"PAR1"
    page.screenshot(path=tmp_path / "result.png", full_page=True)
    # The page forgot the file once the upload was complete.
    assert page.evaluate("Object.keys(localStorage)") == []

    page.get_by_role("link", name="All jobs").click()
    row = page.locator("#jobs-table tbody tr", has_text=f"#{job_id}")
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text(f"{total} of {total} chunks")
    page.screenshot(path=tmp_path / "jobs.png", full_page=True)


def test_upload_survives_a_server_restart(
    make_server: ServerFactory, people: People, tmp_path: Path
) -> None:
    server = make_server(CHUTE_CHUNK_SIZE=str(SMALL_CHUNK))
    alice = people(server)
    csv = write_csv(tmp_path, rows=30_000)
    total = chunks_of(csv)
    throttle(alice.page, 150_000)
    job_id = start_upload(alice, csv)
    wait_chunks_done(alice.page, 3)

    server.stop(kill=True)
    expect(alice.page.locator("#upload-state")).to_contain_text("Trying again in")
    alice.page.screenshot(path=tmp_path / "retrying.png", full_page=True)
    server.start(same_port=True)

    expect_succeeded(alice, job_id, csv, server)
    held = alice.held(job_id)
    assert [c["index"] for c in held["chunks"]] == list(range(total))
    expect(alice.page.locator("#upload-error")).to_be_empty()


def test_reload_mid_upload_then_choose_the_same_file(
    web: Server, people: People, tmp_path: Path
) -> None:
    alice = people(web)
    page = alice.page
    page.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" while uploading
    csv = write_csv(tmp_path, "big.csv", rows=30_000, seed=3)
    total = chunks_of(csv)
    throttle(page, 150_000)
    job_id = start_upload(alice, csv)
    wait_chunks_done(page, 3)

    page.reload()
    expect(page.locator("#upload-held")).to_contain_text("Choose the same file")
    held = alice.held(job_id)
    assert held["state"] == "partial"
    missing = total - len(held["chunks"])
    assert missing > 0

    page.get_by_role("link", name="All jobs").click()
    expect(page.locator("#unfinished")).to_contain_text(
        f"big.csv ({csv.stat().st_size / 1e3:.1f} KB), job #{job_id}"
    )
    page.screenshot(path=tmp_path / "unfinished.png", full_page=True)
    sent: list[str] = []
    page.on(
        "request",
        lambda r: sent.append(r.url) if r.method == "POST" and "upload-data" in r.url else None,
    )
    view = page.locator("#view-jobs")
    view.get_by_label("CSV file").set_input_files(csv)
    expect(page.locator("#new-job-file-check")).to_contain_text(
        f"Job #{job_id} already holds part of this file"
    )
    view.get_by_role("button", name="Create job and upload").click()
    expect(page).to_have_url(re.compile(rf"#/job/{job_id}$"))

    expect_succeeded(alice, job_id, csv, web)
    assert len(sent) == missing, "only the chunks the server did not hold were sent"
    assert [job["id"] for job in alice.jobs()] == [job_id], "no second job"


def test_pause_and_resume_from_the_keyboard(web: Server, people: People, tmp_path: Path) -> None:
    alice = people(web)
    page = alice.page
    csv = write_csv(tmp_path, rows=30_000, seed=4)
    throttle(page, 150_000)
    job_id = start_upload(alice, csv)
    wait_chunks_done(page, 2)

    pause = page.get_by_role("button", name="Pause")
    pause.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#upload-state")).to_contain_text("Paused")
    resume = page.get_by_role("button", name="Resume")
    expect(resume).to_be_visible()
    page.wait_for_timeout(300)  # a request cut off by the pause has settled by now
    before = alice.held(job_id)
    page.wait_for_timeout(1000)
    after = alice.held(job_id)
    assert before["state"] == after["state"] == "partial"
    assert after["bytes_received"] == before["bytes_received"], "nothing arrives while paused"
    page.screenshot(path=tmp_path / "paused.png", full_page=True)

    resume.focus()
    page.keyboard.press("Enter")
    expect_succeeded(alice, job_id, csv, web)


def test_cancel_discards_the_servers_upload(web: Server, people: People, tmp_path: Path) -> None:
    alice = people(web)
    page = alice.page
    csv = write_csv(tmp_path, rows=30_000, seed=5)
    throttle(page, 150_000)
    job_id = start_upload(alice, csv)
    wait_chunks_done(page, 2)
    page.get_by_role("button", name="Cancel upload").click()
    expect(page.locator("#upload-state")).to_contain_text("Upload cancelled")
    held = alice.held(job_id)
    assert held["state"] == "empty" and held["chunks"] == []
    assert alice.api.job(job_id)["status"] == "awaiting_upload"
    assert page.evaluate("Object.keys(localStorage)") == []
    # The picker is back, for this file or another.
    expect(page.locator("#view-job").get_by_label("CSV file")).to_be_visible()


def test_a_non_csv_file_is_refused_before_sending(
    web: Server, people: People, tmp_path: Path
) -> None:
    alice = people(web)
    page = alice.page
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "upload-data" in r.url else None)
    view = page.locator("#view-jobs")
    check = page.locator("#new-job-file-check")

    notes = tmp_path / "notes.txt"
    notes.write_text("a,b\n1,2\n")
    view.get_by_label("CSV file").set_input_files(notes)
    expect(check).to_have_text("notes.txt is not a CSV file (its name must end in .csv).")
    view.get_by_role("button", name="Create job and upload").click()
    expect(page.locator("#new-job-error")).to_have_text("Choose a CSV file.")
    page.screenshot(path=tmp_path / "refused.png", full_page=True)

    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"id,name\n1,\x00\x01\x02\n")
    view.get_by_label("CSV file").set_input_files(binary)
    expect(check).to_contain_text("contains NUL bytes")
    assert alice.jobs() == []

    # Dropped on a job's upload panel: refused there too.
    job_id = alice.api.new_job("drop target")
    page.goto(f"{web.url}/#/job/{job_id}")
    zone = page.locator('.drop[data-drop="upload-file"]')
    zone.evaluate(
        """(zone) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array([0x50, 0x4b, 3, 4, 0, 0])], "book.csv"));
            const drop = {dataTransfer: data, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("drop", drop));
        }"""
    )
    expect(page.locator("#upload-check")).to_have_text(
        "book.csv is a ZIP archive (an .xlsx workbook is one), not a CSV file."
    )
    page.wait_for_timeout(300)
    assert sent == []
    assert alice.api.job(job_id)["status"] == "awaiting_upload"

    # A CSV dropped there is taken.
    csv = write_csv(tmp_path, rows=2_000, seed=8)
    zone.evaluate(
        """(zone, text) => {
            const data = new DataTransfer();
            data.items.add(new File([text], "dropped.csv", {type: "text/csv"}));
            const drop = {dataTransfer: data, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("drop", drop));
        }""",
        csv.read_text(),
    )
    expect_succeeded(alice, job_id, csv, web)


def test_a_user_cannot_see_another_users_job(web: Server, people: People, tmp_path: Path) -> None:
    alice = people(web)
    job_id = alice.api.new_job("alice's secret")
    bob = people(web)
    expect(bob.page.get_by_text("No jobs yet.")).to_be_visible()
    expect(bob.page.locator("body")).not_to_contain_text("alice's secret")
    bob.page.goto(f"{web.url}/#/job/{job_id}")
    expect(bob.page.locator("#job-error")).to_have_text(
        "This job does not exist, or it is not yours."
    )
    expect(bob.page.locator("#view-job")).not_to_contain_text("alice's secret")
    bob.page.screenshot(path=tmp_path / "not-yours.png", full_page=True)


def test_sign_out_forgets_unfinished_uploads(web: Server, people: People, tmp_path: Path) -> None:
    alice = people(web)
    page = alice.page
    csv = write_csv(tmp_path, rows=30_000, seed=6)
    throttle(page, 150_000)
    start_upload(alice, csv)
    wait_chunks_done(page, 1)
    assert page.evaluate("Object.keys(localStorage).length") == 1
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("Object.keys(localStorage)") == []
    page.screenshot(path=tmp_path / "signed-out.png", full_page=True)
    answer = page.request.get(f"{web.url}/api/auth/me")
    assert answer.status == 401, "the session ended on the server"


def _heap(cdp: CDPSession) -> dict[str, float]:
    """The tab's JS heap after a full garbage collection; the least of three readings."""
    readings = []
    for _ in range(3):
        cdp.send("HeapProfiler.collectGarbage")
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        usage = cdp.send("Runtime.getHeapUsage")
        readings.append(
            {
                "js_heap_used": metrics["JSHeapUsedSize"],
                # ArrayBuffer bytes live outside the JS heap: a held chunk would show here.
                "backing_store": float(usage.get("backingStorageSize", 0)),
            }
        )
    return {key: min(r[key] for r in readings) for key in readings[0]}


def test_tab_memory_stays_flat_during_a_long_upload(
    make_server: ServerFactory, people: People, tmp_path: Path
) -> None:
    chunk = 4 * MiB
    server = make_server(CHUTE_CHUNK_SIZE=str(chunk), CHUTE_PARALLEL_CHUNKS="2")
    alice = people(server)
    page = alice.page
    csv = write_csv(tmp_path, "long.csv", rows=1_700_000)
    total = chunks_of(csv, chunk)
    assert total >= 10
    cdp = throttle(page, 8 * MiB)
    cdp.send("Performance.enable")
    job_id = start_upload(alice, csv)

    heap = {}
    for done in (2, 8):
        wait_chunks_done(page, done)
        heap[done] = _heap(cdp)
        if done == 2:
            # Byte-level progress: the bar moves between chunk boundaries, not only at them.
            size = csv.stat().st_size
            boundaries = [100 * min(size, k * chunk) / size for k in range(total + 1)]
            readings = []
            for _ in range(20):
                readings.append(float(page.locator("#upload-bar").get_attribute("value") or 0))
                page.wait_for_timeout(50)
            inside = [r for r in readings if min(abs(r - b) for b in boundaries) > 0.5]
            assert inside, f"the bar only moved chunk by chunk: {readings}"
    (tmp_path / "heap.json").write_text(json.dumps({"chunk_size": chunk, "heap": heap}))
    print(f"\nheap after chunk 2 and 8 of {total} ({chunk} B each): {heap}")
    margin = chunk / 4
    grown = heap[8]["js_heap_used"] - heap[2]["js_heap_used"]
    assert grown < margin, f"JS heap grew {grown:.0f} B over 6 chunks"
    held = heap[8]["backing_store"] - heap[2]["backing_store"]
    assert held < margin, f"ArrayBuffers grew {held:.0f} B over 6 chunks"
    expect_succeeded(alice, job_id, csv, server)


def test_status_falls_back_to_polling_without_events(
    web: Server, people: People, tmp_path: Path
) -> None:
    alice = people(web)
    page = alice.page
    refused: list[str] = []

    def no_events(route: Route) -> None:
        refused.append(route.request.url)
        route.fulfill(status=404, json={"detail": "Not Found"})

    page.route("**/api/job/*/events", no_events)
    csv = write_csv(tmp_path, rows=2_000, seed=7)
    job_id = start_upload(alice, csv)
    expect_succeeded(alice, job_id, csv, web)
    assert refused, "the page tried Server-Sent Events first"
