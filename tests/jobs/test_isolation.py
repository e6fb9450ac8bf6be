"""The job's own process: started ahead of the job, one job each, replaced when lost."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chute.jobs import isolation
from chute.jobs.kinds import JobFailed

PLUGINS = str(Path(__file__).parent.parent / "plugins")


@pytest.fixture(autouse=True)
def example_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Children are spawned with this process's sys.path, where the example plugin is.
    monkeypatch.setattr(sys, "path", [PLUGINS, *sys.path])
    isolation._discard_spare()
    yield
    isolation._discard_spare()


def spare_pid() -> int:
    assert isolation._spare is not None and isolation._spare.process.is_alive()
    pid = isolation._spare.process.pid
    assert pid is not None
    return pid


def run_example(tmp_path: Path, **params: object) -> tuple[dict[str, object], list[str]]:
    source = tmp_path / "input.csv"
    source.write_bytes(b"a\n1\n2\n")
    journal = tmp_path / "journal"
    journal.unlink(missing_ok=True)
    seen: list[float] = []
    result = isolation.run_isolated(
        "example", source, {"journal": str(journal), **params}, {}, seen.append
    )
    return result, journal.read_text().split("\n")


def test_the_job_runs_in_the_process_started_ahead_and_the_next_gets_a_new_one(
    tmp_path: Path,
) -> None:
    isolation.start_spare()
    ahead = spare_pid()
    result, journal = run_example(tmp_path)
    assert result == {"lines": 3}
    assert journal[0] == f"start {ahead}"
    # That process ran one job and is gone; the next job's is waiting already.
    with pytest.raises(ProcessLookupError):
        os.kill(ahead, 0)
    following = spare_pid()
    assert following != ahead
    _, journal = run_example(tmp_path)
    assert journal[0] == f"start {following}"


def test_a_waiting_process_that_died_is_replaced(tmp_path: Path) -> None:
    isolation.start_spare()
    lost = spare_pid()
    os.kill(lost, signal.SIGKILL)
    isolation._spare.process.join()  # type: ignore[union-attr]
    result, journal = run_example(tmp_path)
    assert result == {"lines": 3}
    assert journal[0].startswith("start ") and journal[0] != f"start {lost}"


def test_without_a_process_ahead_one_is_started_for_the_job(tmp_path: Path) -> None:
    assert isolation._spare is None
    result, _ = run_example(tmp_path)
    assert result == {"lines": 3}
    spare_pid()  # and one waits for the next job


def test_a_crash_fails_the_job_and_the_next_job_still_runs(tmp_path: Path) -> None:
    isolation.start_spare()
    with pytest.raises(JobFailed, match="stopped unexpectedly"):
        run_example(tmp_path, crash=True)
    result, _ = run_example(tmp_path)
    assert result == {"lines": 3}


def test_an_unknown_kind_fails_in_plain_words(tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    source.write_bytes(b"a\n")
    with pytest.raises(JobFailed, match="unexpected error"):
        isolation.run_isolated("no-such-kind", source, {}, {}, lambda _: None)
