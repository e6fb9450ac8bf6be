from tests.conftest import Client
from tests.factories import csv_bytes, sha256, split


def test_upload_in_order_assembles_the_file_and_runs_the_job(client: Client) -> None:
    data = csv_bytes(50_000)
    chunks = split(data, 256 * 1024)
    job_id = client.new_job()
    answers = [client.send_chunk(job_id, i, len(chunks), c) for i, c in enumerate(chunks)]
    assert [a.status_code for a in answers] == [200] * len(chunks)
    assert answers[-1].json()["message"] == "Data uploaded successfully and job started"
    assert {a.json()["message"] for a in answers[:-1]} == {"Data chunk uploaded successfully"}
    assert [a.json()["complete"] for a in answers] == [False] * (len(chunks) - 1) + [True]
    job = client.wait_for(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded"
    assert client.stored(job_id) == (len(data), sha256(data))
    assert job["result"]["rows"] == 50_000
