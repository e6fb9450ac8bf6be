"""Webhook deliveries from a real `chute serve` and its worker to a real receiver on
loopback that verifies every signature (DESIGN §7): retries with the same webhook-id,
timeouts, a worker killed mid-delivery, secret rotation, 410, the deployment's own URL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Client, Deployment, Server, ServerFactory, serving
from tests.factories import csv_bytes, csv_of_size
from tests.webhooks.receiver import HANG, Receiver, receiving

# Retries within a second or so, so the tests run in seconds, not minutes.
FAST = {
    "CHUTE_WEBHOOK_RETRY_BASE": "0.2",
    "CHUTE_WEBHOOK_CONNECT_TIMEOUT": "1",
    "CHUTE_WEBHOOK_TIMEOUT": "1",
    "CHUTE_SWEEP_INTERVAL": "0.5",
    "CHUTE_REQUEUE_AFTER": "1",
}
# The receiver is on loopback: users' webhooks may go there only when the operator says so.
LOOPBACK = {**FAST, "CHUTE_WEBHOOK_ALLOW_PRIVATE": "true"}
ALL_EVENTS = {"upload.completed", "job.running", "job.succeeded"}


pytestmark = pytest.mark.deployments


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, deployment: Deployment) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("chute-hooks"), deployment, **LOOPBACK) as srv:
        yield srv


def add_webhook(client: Client, receiver: Receiver, **body: Any) -> dict[str, Any]:
    answer = client.http.post("/api/webhooks", json={"url": receiver.url, **body})
    assert answer.status_code == 201, answer.text
    hook: dict[str, Any] = answer.json()
    assert hook["secret"].startswith("whsec_")
    receiver.secrets.append(hook["secret"])
    return hook


def run_job(client: Client, rows: int = 50) -> int:
    job_id = client.new_job()
    client.upload(job_id, csv_bytes(rows))
    client.wait_for(job_id, "succeeded")
    return job_id


def deliveries(client: Client) -> list[dict[str, Any]]:
    answer = client.http.get("/api/webhooks/deliveries")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def settled(client: Client, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The user's deliveries, once there are `count` and none is pending."""
    deadline = time.monotonic() + timeout
    while True:
        items = deliveries(client)
        if len(items) >= count and all(d["state"] != "pending" for d in items):
            return items
        assert time.monotonic() < deadline, items
        time.sleep(0.1)


def test_500_three_times_then_200_delivers_once_with_one_id(server: Server) -> None:
    client = server.client()
    with receiving(script=lambda n: 500 if n < 3 else 200) as receiver:
        add_webhook(client, receiver, events=["job.succeeded"])
        job_id = run_job(client)
        [delivery] = settled(client, 1)
        got = receiver.received
    assert delivery["state"] == "delivered"
    assert (delivery["attempts"], delivery["last_status"]) == (4, 200)
    assert delivery["event"] == "job.succeeded" and delivery["job_id"] == job_id
    assert [r.answered for r in got] == [500, 500, 500, 200]
    assert {r.webhook_id for r in got} == {delivery["webhook_id"]}
    assert all(r.verified_with for r in got)
    payload = got[-1].payload
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["job"]["id"] == job_id
    assert payload["data"]["job"]["status"] == "succeeded"
    assert payload["data"]["user"]["username"] == client.username
    # The retries came back off: each later than the one before, by a growing gap.
    times = [int(r.timestamp) for r in got]
    assert times == sorted(times)


def test_every_event_of_a_job_in_order(server: Server) -> None:
    client = server.client()
    with receiving() as receiver:
        add_webhook(client, receiver)
        job_id = run_job(client)
        settled(client, 3)
        types = [r.payload["type"] for r in receiver.received]
    assert sorted(types) == sorted(ALL_EVENTS)
    completed = next(
        r.payload for r in receiver.received if r.payload["type"] == "upload.completed"
    )
    assert completed["data"]["upload"]["bytes"] == len(csv_bytes(50))
    assert completed["data"]["job"]["id"] == job_id
    assert len({r.webhook_id for r in receiver.received}) == 3


def test_cancel_and_failure_events(server: Server) -> None:
    client = server.client()
    with receiving() as receiver:
        add_webhook(client, receiver, events=["job.cancelled", "job.failed"])
        cancelled = client.new_job()
        client.send_chunk(cancelled, 0, 2, csv_bytes(10))
        assert client.http.post(f"/api/job/{cancelled}/cancel").status_code == 200
        failing = client.new_job()
        # A kind this server no longer has (as after a plugin was removed): the run fails.
        server.write_job(failing, kind="removed-plugin")
        client.upload(failing, csv_bytes(10))
        client.wait_for(failing, "failed")
        settled(client, 2)
        got = {r.payload["type"]: r.payload["data"]["job"] for r in receiver.received}
    assert set(got) == {"job.cancelled", "job.failed"}
    assert got["job.cancelled"]["id"] == cancelled
    assert got["job.failed"]["id"] == failing
    assert "removed-plugin" in got["job.failed"]["error"]


def test_410_disables_the_endpoint(server: Server) -> None:
    client = server.client()
    with receiving(script=lambda n: 410) as receiver:
        hook = add_webhook(client, receiver, events=["job.succeeded"])
        run_job(client)
        [delivery] = settled(client, 1)
        assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (
            "failed",
            1,
            410,
        )
        [listed] = client.http.get("/api/webhooks").json()["items"]
        assert listed["id"] == hook["id"] and listed["disabled_at"] is not None
        run_job(client)
        time.sleep(1)
        assert len(receiver.received) == 1  # nothing more sent to it
        assert len(deliveries(client)) == 1


def test_sending_a_delivery_again_keeps_its_webhook_id(server: Server) -> None:
    client = server.client()
    with receiving() as receiver:
        add_webhook(client, receiver, events=["job.succeeded"])
        run_job(client)
        [delivery] = settled(client, 1)
        answer = client.http.post(f"/api/webhooks/deliveries/{delivery['id']}/retry")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "pending"
        receiver.wait_for(2)
        [again] = settled(client, 1)
        got = receiver.received
    assert again["attempts"] == 2 and again["state"] == "delivered"
    assert got[0].webhook_id == got[1].webhook_id == delivery["webhook_id"]


def test_secret_rotation_keeps_working(server: Server) -> None:
    client = server.client()
    with receiving() as receiver:
        hook = add_webhook(client, receiver, events=["job.succeeded"])
        old = hook["secret"]
        run_job(client)
        receiver.wait_for(1)
        answer = client.http.post(f"/api/webhooks/{hook['id']}/rotate")
        assert answer.status_code == 200, answer.text
        new = answer.json()["secret"]
        assert new.startswith("whsec_") and new != old
        # A receiver that switched to the new secret verifies...
        receiver.secrets = [new]
        run_job(client)
        receiver.wait_for(2)
        # ...and so does one still on the old secret, during the grace period.
        receiver.secrets = [old]
        run_job(client)
        got = receiver.wait_for(3)
        settled(client, 3)
    assert [r.verified_with for r in got] == [old, new, old]
    assert all(r.answered == 200 for r in got)
    assert len(got[1].signature.split(" ")) == 2  # signed with both secrets


def test_the_deployments_own_url_gets_every_users_events(
    make_server: ServerFactory, tmp_path: Any
) -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    with receiving(secret) as receiver:
        srv = make_server(CHUTE_WEBHOOK_URL=receiver.url, CHUTE_WEBHOOK_SECRET=secret, **FAST)
        alice, bob = srv.client(), srv.client()
        run_job(alice)
        run_job(bob)
        got = receiver.wait_for(6)
        # The operator's deliveries are not a user's to see.
        assert deliveries(alice) == []
    users = {r.payload["data"]["user"]["username"] for r in got}
    assert users == {alice.username, bob.username}
    assert all(r.verified_with == secret for r in got)


def test_a_hanging_receiver_times_out_is_retried_and_slows_no_job(
    make_server: ServerFactory,
) -> None:
    srv = make_server(**{**LOOPBACK, "CHUTE_WEBHOOK_TIMEOUT": "8"})
    client = srv.client()
    # Each event's first attempt hangs (8 s, then it times out); its second is answered.
    with receiving(script=lambda n: HANG if n == 0 else 200) as receiver:
        add_webhook(client, receiver)
        # More jobs than the worker has job threads (2): were deliveries sent on those
        # threads, or in the jobs' own transitions, hanging ones would hold the jobs up.
        jobs = [client.new_job() for _ in range(3)]
        start = time.monotonic()
        for job_id in jobs:
            client.upload(job_id, csv_bytes(50))
        for job_id in jobs:
            client.wait_for(job_id, "succeeded", timeout=30)
        took = time.monotonic() - start
        items = settled(client, 9, timeout=90)
    # Uploaded and run in seconds; one hanging delivery in their way would cost 8.
    assert took < 7
    for delivery in items:
        assert delivery["state"] == "delivered" and delivery["attempts"] == 2
        assert delivery["last_status"] == 200
    by_id: dict[str, list[int]] = {}
    for r in receiver.received:
        by_id.setdefault(r.webhook_id, []).append(r.answered)
    assert sorted(by_id.values()) == [[HANG, 200]] * 9


def test_a_worker_killed_mid_delivery_delivers_after_restart(make_server: ServerFactory) -> None:
    srv = make_server(**{**LOOPBACK, "CHUTE_WEBHOOK_TIMEOUT": "3"})
    client = srv.client()
    with receiving(script=lambda n: HANG if n == 0 else 200) as receiver:
        add_webhook(client, receiver, events=["job.succeeded"])
        job_id = run_job(client)
        receiver.wait_for(1)  # the worker is sending it now, and waits for an answer
        srv.stop(kill=True)
        receiver.released.set()
        srv.start(same_port=True)
        [delivery] = settled(client, 1, timeout=90)
        got = receiver.received
    assert delivery["state"] == "delivered" and delivery["job_id"] == job_id
    assert [r.answered for r in got] == [HANG, 200]
    assert got[0].webhook_id == got[1].webhook_id


def test_a_delivery_is_given_up_after_its_time(make_server: ServerFactory) -> None:
    srv = make_server(**{**LOOPBACK, "CHUTE_WEBHOOK_GIVE_UP_AFTER": "2"})
    client = srv.client()
    with receiving(script=lambda n: 503) as receiver:
        add_webhook(client, receiver, events=["job.succeeded"])
        run_job(client)
        [delivery] = settled(client, 1)
        got = receiver.received
    assert delivery["state"] == "failed" and delivery["next_attempt_at"] is None
    assert delivery["attempts"] == len(got) >= 2
    assert delivery["last_error"].startswith("The endpoint answered 503. Given up after")


def test_users_webhooks_go_to_public_addresses_only_unless_allowed(
    make_server: ServerFactory,
) -> None:
    srv = make_server(**FAST)
    client = srv.client()
    with receiving() as receiver:
        refused = client.http.post("/api/webhooks", json={"url": receiver.url})
        assert refused.status_code == 422
        assert "names an address that is not public" in refused.json()["detail"]
        # A name is checked when it is resolved: `localhost` is loopback.
        named = receiver.url.replace("127.0.0.1", "localhost")
        answer = client.http.post("/api/webhooks", json={"url": named})
        assert answer.status_code == 201, answer.text
        run_job(client)
        items = settled(client, 3)
        time.sleep(0.5)
        assert receiver.received == []
    for delivery in items:
        assert (delivery["state"], delivery["attempts"]) == ("failed", 1)
        assert "not public" in delivery["last_error"]


def test_an_expired_upload_is_told(make_server: ServerFactory) -> None:
    srv = make_server(**{**LOOPBACK, "CHUTE_UPLOAD_EXPIRY": "1"})
    client = srv.client()
    with receiving() as receiver:
        add_webhook(client, receiver, events=["upload.expired"])
        job_id = client.new_job()
        # A whole chunk of the deployment's size (on S3, every part but the last is 5 MiB).
        first = csv_of_size(2 * client.chunk)[: client.chunk]
        answer = client.send_chunk(job_id, 0, 2, first, filename="late.csv")
        assert answer.status_code == 200, answer.text
        client.wait_for(job_id, "upload_expired")
        [got] = receiver.wait_for(1)
    assert got.payload["type"] == "upload.expired"
    assert got.payload["data"]["job"]["status"] == "upload_expired"
    assert got.payload["data"]["upload"] == {
        "file_name": "late.csv",
        "protocol": "chunks",
        "bytes": len(first),
    }
