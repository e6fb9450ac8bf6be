"""The object store's errors, as a real `chute serve` on SeaweedFS meets them: the client
gets 503 (a fault of the server, to retry) and the server's log names the store's answer."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from tests.api.test_upload import COMPLETE, assert_succeeded_with, recorded
from tests.conftest import S3_PART, ServerFactory
from tests.factories import csv_of_size, sha256, split
from tests.s3_support import SeaweedFS

UNAVAILABLE = "The server's storage did not answer as it should; send the chunk again shortly."


@pytest.mark.parametrize(
    ("bucket", "answer"),
    [
        # The store answers NoSuchBucket: the bucket does not exist.
        pytest.param("missing", "NoSuchBucket", id="missing-bucket"),
        # The store answers NoSuchUpload: the upload was begun in another bucket. That is
        # not "the upload was discarded" (409, final to a client): the database holds the
        # upload open, so the API is misconfigured, or the store lost it.
        pytest.param("other", "NoSuchUpload", id="other-bucket"),
    ],
)
def test_an_api_on_the_wrong_bucket_answers_503_and_logs_the_stores_error(
    make_server: ServerFactory, seaweedfs: SeaweedFS, s3_bucket: str, bucket: str, answer: str
) -> None:
    server = make_server(**seaweedfs.env(s3_bucket, "chute"))
    client = server.client()
    data = csv_of_size(2 * S3_PART + 1000)
    chunks = split(data, S3_PART)
    total = len(chunks)
    job_id = client.new_job()
    assert client.send_chunk(job_id, 0, total, chunks[0]).status_code == 200

    # Restarted with a CHUTE_STORAGE_URL that names another bucket.
    wrong = f"chute-missing-{uuid.uuid4().hex[:12]}"
    if bucket == "other":
        wrong = seaweedfs.new_bucket()
    server.stop()
    server.env.update(seaweedfs.env(wrong, "chute"))
    server.start(same_port=True)
    seen = len(server.log())
    try:
        for index in (1, total - 1):  # a whole part, and the last (shorter) one
            sent = client.send_chunk(job_id, index, total, chunks[index])
            assert sent.status_code == 503, sent.text
            assert sent.json()["detail"] == UNAVAILABLE
        log = server.log()[seen:]
        assert f"the S3 store answered {answer} (bucket {wrong!r})" in log, log
        if answer == "NoSuchUpload":
            assert "the database holds this upload open" in log, log
        assert recorded(client, job_id) == {0: sha256(chunks[0])}
        assert client.job(job_id)["status"] == "uploading"
    finally:
        with contextlib.suppress(Exception):
            seaweedfs.remove_bucket(wrong)

    if bucket == "missing":
        return  # (a restart costs seconds: the upload's return is shown once)
    # Back on its bucket, the upload was never lost: it completes.
    server.stop()
    server.env.update(seaweedfs.env(s3_bucket, "chute"))
    server.start(same_port=True)
    answers = [client.send_chunk(job_id, i, total, chunks[i]) for i in range(1, total)]
    assert [a.status_code for a in answers] == [200] * (total - 1), [a.text for a in answers]
    assert answers[-1].json()["message"] == COMPLETE
    assert_succeeded_with(client, job_id, data)
