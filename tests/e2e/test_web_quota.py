"""The user's storage quota on the page (DESIGN §8), in Chromium against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.api.test_quotas import admin
from tests.client_support import chunk_posts
from tests.conftest import Server, serving
from tests.e2e.conftest import SMALL_CHUNK, People
from tests.factories import csv_of_size

QUOTA = 1_000_000  # 1.00 MB, as the page writes it


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        tmp_path_factory.mktemp("chute-web-quota"),
        CHUTE_CHUNK_SIZE=str(SMALL_CHUNK),
        CHUTE_USER_QUOTA_BYTES=str(QUOTA),
    ) as srv:
        yield srv


def megabytes(n: int) -> str:
    """The page's words for `n` bytes (`formatBytes` in quota.js)."""
    units = ["bytes", "KB", "MB", "GB", "TB"]
    i, v = 0, float(n)
    while v >= 1000 and i < len(units) - 1:
        v /= 1000
        i += 1
    return f"{n} bytes" if i == 0 else f"{v:.{2 if v < 10 else 1}f} {units[i]}"


def test_the_jobs_page_shows_use_of_the_quota(web: Server, people: People, tmp_path: Path) -> None:
    alice = people(web)
    page = alice.page
    shown = page.locator("#quota")
    expect(shown).to_have_text(f"Storage: used 0 bytes of {megabytes(QUOTA)}.")

    job_id = alice.api.new_job("counted")
    data = csv_of_size(300_000)
    alice.api.upload(job_id, data)
    assert alice.api.wait_for(job_id, "succeeded", "failed")["status"] == "succeeded"
    used = alice.api.http.get("/api/auth/me").json()["used_bytes"]
    assert used > len(data)  # the job's Parquet counts too
    page.get_by_role("button", name="Refresh").click()
    expect(shown).to_have_text(f"Storage: used {megabytes(used)} of {megabytes(QUOTA)}.")

    # A file that cannot fit is refused at its first chunk, with the quota's words and
    # no retries; the page says so at once.
    path = tmp_path / "big.csv"
    path.write_bytes(csv_of_size(QUOTA - used + 1))
    view = page.locator("#view-jobs")
    view.get_by_label("CSV file").set_input_files(path)
    expect(page.locator("#new-job-file-check")).to_contain_text("columns:")
    view.get_by_role("button", name="Create job and upload").click()
    expect(page).to_have_url(re.compile(r"#/job/\d+$"))
    expect(page.locator("#upload-error")).to_contain_text(
        "would pass your storage quota", timeout=30_000
    )
    big_job = alice.current_job_id()
    assert alice.held(big_job)["bytes_received"] == 0
    assert chunk_posts(web.log(), big_job, 507) == chunk_posts(web.log(), big_job, None) == 1

    # Deleting the first job frees its bytes: the list shows the room again.
    assert alice.api.http.delete(f"/api/job/{job_id}").status_code == 204
    page.goto(f"{web.url}/#/jobs")
    expect(shown).to_have_text(f"Storage: used 0 bytes of {megabytes(QUOTA)}.")


def test_no_quota_and_a_nearly_full_one_read_as_such(web: Server, people: People) -> None:
    bob = people(web)
    boss = admin(web)
    bob_id = web.sql("SELECT id FROM users WHERE username = :n", n=bob.name)[0][0]
    assert boss.http.put(f"/api/users/{bob_id}/quota", json={"quota_bytes": 0}).status_code == 200
    page = bob.page
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#quota")).to_have_text("Storage: used 0 bytes (no quota).")

    assert boss.http.put(f"/api/users/{bob_id}/quota", json={"quota_bytes": 100}).status_code == 200
    job_id = bob.api.new_job("almost full")
    assert bob.api.send_chunk(job_id, 0, 8, b"id,name\n1,a\n", file_size=95).status_code == 200
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#quota")).to_have_text(
        "Storage: used 12 bytes of 100 bytes, and 83 bytes more kept for unfinished uploads."
    )
    expect(page.locator("#quota")).to_have_class(re.compile(r"\bfull\b"))
