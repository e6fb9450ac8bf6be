"""What a worker does with a job id taken from the queue.

A run holds a *claim*: a fresh token written by the conditional `queued -> running`
update. Every later write of the run (heartbeat, progress, result) is conditional on
that claim, so a run that lost its job (cancelled, deleted, or handed to another worker
by the sweeper after missed heartbeats) changes nothing and stops at its next heartbeat.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from chute.config import Settings
from chute.db.jobs import input_key, job_prefix, transition
from chute.db.models import Job, JobStatus, Upload, utcnow
from chute.jobs.isolation import UNEXPECTED, run_isolated
from chute.jobs.kinds import JobCancelled, JobFailed, Kind
from chute.metrics import job_run_ended
from chute.storage import LocalPaths, PlacedPart
from chute.upload.core import Source, parts_for_assembly, sources_for_assembly
from chute.webhooks.events import job_changed

if TYPE_CHECKING:
    from chute.runtime import Runtime

log = logging.getLogger(__name__)

UNREADABLE = "The job could not read its uploaded file."


@dataclass(frozen=True)
class Claim:
    job_id: int
    token: str
    user_id: int
    kind: str
    params: dict[str, Any]
    storage_id: str
    # The upload's recorded parts, in file order, for the storage to assemble.
    parts: list[PlacedPart]
    # A tus final upload's partial uploads, joined end to end instead (`Storage.concatenate`).
    sources: list[Source]
    t0: float = field(default_factory=time.monotonic)


def run_job(rt: Runtime, job_id: int) -> None:
    """Claim the job (`queued -> running`, once), run its kind, store what it made."""
    claim = _claim(rt, job_id)
    if claim is None:
        return  # claimed by another worker, cancelled or deleted
    scratch = scratch_root(rt.settings) / f"{job_id}-{claim.token}"
    for stale in scratch.parent.glob(f"{job_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an earlier run that died
    (scratch / "outputs").mkdir(parents=True)
    heartbeat = Heartbeat(rt, claim)
    heartbeat.start()
    try:
        _run(rt, claim, heartbeat, scratch)
    finally:
        heartbeat.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def scratch_root(settings: Settings) -> Path:
    """Where runs keep their scratch folders, one per run, named `{job id}-{claim}`."""
    return settings.data_dir.resolve() / "scratch"


def _run(rt: Runtime, claim: Claim, heartbeat: Heartbeat, scratch: Path) -> None:
    kind = rt.kinds.get(claim.kind)
    if kind is None:
        _finish(rt, claim, JobStatus.FAILED, error=f"This server has no job kind {claim.kind!r}.")
        return
    try:
        input_path = _input(rt, claim, scratch)
    except Exception:
        log.exception("job %s: assembling its upload failed", claim.job_id)
        _finish(rt, claim, JobStatus.FAILED, error=UNREADABLE)
        return
    try:
        result = _call(rt, kind, input_path, claim, heartbeat.report, scratch)
        outputs = _store_outputs(rt, claim, scratch / "outputs")
    except JobCancelled:
        log.info("job %s: stopped, it is no longer this worker's", claim.job_id)
        _clean_up_lost(rt, claim)
        return
    except JobFailed as exc:
        _finish(rt, claim, JobStatus.FAILED, error=str(exc))
        return
    except Exception:
        log.exception("job %s failed", claim.job_id)
        _finish(rt, claim, JobStatus.FAILED, error=UNEXPECTED)
        return
    if not _finish(rt, claim, JobStatus.SUCCEEDED, result=result, outputs=outputs, progress=100.0):
        _clean_up_lost(rt, claim)


def _claim(rt: Runtime, job_id: int) -> Claim | None:
    token = secrets.token_hex(16)
    with rt.sessions() as session:
        now = utcnow()
        claimed = transition(
            session,
            job_id,
            [JobStatus.QUEUED],
            JobStatus.RUNNING,
            claim=token,
            heartbeat_at=now,
            started_at=now,
            progress=0.0,
            attempts=Job.attempts + 1,
            input_key=input_key(job_id),
        )
        if not claimed:
            session.rollback()
            return None
        job = session.get(Job, job_id)
        upload = session.get(Upload, job_id)
        assert job is not None and upload is not None, "a queued job has a complete upload"
        claim = Claim(
            job_id=job_id,
            token=token,
            user_id=job.user_id,
            kind=job.kind,
            params=dict(job.params),
            storage_id=upload.storage_id,
            parts=parts_for_assembly(session, job_id),
            sources=sources_for_assembly(upload),
        )
        session.commit()
    log.info("job %s: running (%s)", job_id, claim.kind, extra=_fields(claim, "running"))
    return claim


def _input(rt: Runtime, claim: Claim, scratch: Path) -> Path:
    """The uploaded file as a local path, its parts first assembled (idempotent)."""
    key = input_key(claim.job_id)
    if claim.sources:
        for source in claim.sources:
            rt.storage.complete(source.storage_id, source.key, source.parts)
        rt.storage.concatenate(claim.storage_id, key, [source.key for source in claim.sources])
    else:
        rt.storage.complete(claim.storage_id, key, claim.parts)
    if isinstance(rt.storage, LocalPaths):
        return rt.storage.path(key)
    local = scratch / "input.csv"
    with rt.storage.open(key) as src, local.open("wb") as dst:
        shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    return local


def _call(
    rt: Runtime,
    kind: Kind,
    input_path: Path,
    claim: Claim,
    progress: Any,
    scratch: Path,
) -> dict[str, Any]:
    extras: dict[str, Any] = {
        "outputs": scratch / "outputs",
        "scratch": scratch,
        "settings": rt.settings,
    }
    kwargs = {name: value for name, value in extras.items() if name in kind.extras}
    return run_isolated(kind.name, input_path, claim.params, kwargs, progress)


def _store_outputs(rt: Runtime, claim: Claim, folder: Path) -> dict[str, Any]:
    # Keys carry the claim, so a run that lost its job never overwrites the winner's files.
    outputs = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            key = f"{job_prefix(claim.job_id)}{claim.token}/{path.name}"
            size = path.stat().st_size
            rt.storage.put_file(key, path)
            outputs[path.name] = {"key": key, "size": size}
    return outputs


def _finish(rt: Runtime, claim: Claim, to: JobStatus, **values: Any) -> bool:
    """End the run as `to`, if the job is still this run's; True if it was."""
    with rt.sessions() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == claim.job_id,
                Job.status == JobStatus.RUNNING,
                Job.claim == claim.token,
            )
            .values(
                status=to,
                claim=None,
                heartbeat_at=None,
                finished_at=utcnow(),
                updated_at=utcnow(),
                **values,
            )
        )
        done = bool(result.rowcount)  # type: ignore[attr-defined]
        if done:
            job_changed(session, claim.job_id, to)
        session.commit()
    if done:
        elapsed = time.monotonic() - claim.t0
        job_run_ended(claim.kind, to.value, elapsed)
        seconds = round(elapsed, 3)
        extra = {**_fields(claim, to.value), "seconds": seconds}
        log.info("job %s: %s after %.2f s", claim.job_id, to.value, seconds, extra=extra)
    return done


def _fields(claim: Claim, status: str) -> dict[str, object]:
    """A job transition's fields in its log line (`chute.logs`)."""
    return {"user_id": claim.user_id, "job_id": claim.job_id, "kind": claim.kind, "status": status}


def _clean_up_lost(rt: Runtime, claim: Claim) -> None:
    """Remove what this run stored. If the job was cancelled or deleted meanwhile, also
    its input, which this run may have assembled after the API removed its files."""
    rt.storage.delete_prefix(f"{job_prefix(claim.job_id)}{claim.token}/")
    with rt.sessions() as session:
        job = session.get(Job, claim.job_id)
        gone = job is None or job.status == JobStatus.CANCELLED
    if gone:
        rt.storage.delete_prefix(job_prefix(claim.job_id))


class Heartbeat(threading.Thread):
    """Tells the database, every `heartbeat_interval`, that the run is alive and how far
    it is; notices when the job is no longer the run's and makes `report` raise."""

    def __init__(self, rt: Runtime, claim: Claim) -> None:
        super().__init__(name=f"chute-heartbeat-{claim.job_id}", daemon=True)
        self.rt = rt
        self.claim = claim
        self.percent = 0.0
        self.lost = threading.Event()
        self._stopping = threading.Event()

    def report(self, percent: float) -> None:
        """The progress callback given to job kinds."""
        if self.lost.is_set():
            raise JobCancelled()
        self.percent = max(0.0, min(float(percent), 100.0))

    def run(self) -> None:
        while not self._stopping.wait(self.rt.settings.heartbeat_interval):
            try:
                alive = self._beat()
            except Exception:
                # A busy or unreachable database: try again at the next beat; the sweeper
                # only takes the job after heartbeat_timeout without one.
                log.exception("job %s: heartbeat failed", self.claim.job_id)
                continue
            if not alive:
                self.lost.set()
                return

    def _beat(self) -> bool:
        with self.rt.sessions() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == self.claim.job_id,
                    Job.status == JobStatus.RUNNING,
                    Job.claim == self.claim.token,
                )
                .values(heartbeat_at=utcnow(), progress=round(self.percent, 1))
            )
            session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._stopping.set()
        self.join()
