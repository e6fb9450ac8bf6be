"""What a worker does with a job id taken from the queue."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from chute.db.models import Job, JobStatus, Upload, utcnow
from chute.jobs.service import input_key, transition
from chute.upload.service import staged_parts

if TYPE_CHECKING:
    from chute.runtime import Runtime

log = logging.getLogger(__name__)
READ_BLOCK = 4 * 1024 * 1024


def run_job(rt: Runtime, job_id: int) -> None:
    """Claim the job (`queued -> running`, once), assemble its input, run it, store the result."""
    with rt.sessions() as session:
        if not transition(
            session, job_id, [JobStatus.QUEUED], JobStatus.RUNNING, started_at=utcnow()
        ):
            session.rollback()
            return  # claimed by another worker, cancelled or deleted
        job = session.get(Job, job_id)
        upload = session.get(Upload, job_id)
        assert job is not None and upload is not None, "a queued job has a complete upload"
        job.attempts += 1
        session.commit()
        try:
            key = input_key(job_id)
            rt.storage.complete(
                upload.storage_id,
                key,
                upload.bytes_received,
                upload.chunk_size or upload.bytes_received,
                staged_parts(session, job_id),
            )
            session.rollback()  # end the read transaction before the long work
            result = _file_digest(rt, key)
        except Exception:
            log.exception("job %s failed", job_id)
            transition(
                session,
                job_id,
                [JobStatus.RUNNING],
                JobStatus.FAILED,
                error="The job could not read its uploaded file.",
                finished_at=utcnow(),
            )
            session.commit()
            return
        transition(
            session,
            job_id,
            [JobStatus.RUNNING],
            JobStatus.SUCCEEDED,
            result=result,
            input_key=key,
            finished_at=utcnow(),
        )
        session.commit()


def _file_digest(rt: Runtime, key: str) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    with rt.storage.open(key) as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}
