"""The webhook routes' input and answers (DESIGN §7), in this process: what each route
takes and refuses, with nothing half-stored, and another user's webhooks and deliveries
answering the same 404 as none. Deliveries to a real receiver are tests/webhooks/'s."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from chute.config import Settings
from chute.db.models import DeliveryState, WebhookDelivery, WebhookEvent, utcnow
from chute.jobs.sweeper import KEEP_WEBHOOK_EVENTS
from chute.webhooks.delivery import Policy
from chute.webhooks.events import purge_events
from chute.webhooks.service import MAX_ENDPOINTS
from tests.api.inprocess import App, TestClient, app_in_process
from tests.factories import csv_bytes

URL = "https://receiver.example/hooks"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from app_in_process(Path(tmp_path_factory.mktemp("webhooks-api")))


@pytest.fixture
def client(app: App) -> TestClient:
    return app.client()


def hooks(client: TestClient) -> list[dict[str, Any]]:
    answer = client.get("/api/webhooks")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def add(client: TestClient, **body: Any) -> dict[str, Any]:
    answer = client.post("/api/webhooks", json={"url": URL, **body})
    assert answer.status_code == 201, answer.text
    hook: dict[str, Any] = answer.json()
    return hook


def test_add_shows_the_secret_once(client: TestClient) -> None:
    hook = add(client, events=["job.succeeded", "job.failed", "job.succeeded"])
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    assert hook["events"] == ["job.succeeded", "job.failed"]
    assert hook["url"] == URL and hook["disabled_at"] is None
    [listed] = hooks(client)
    assert "secret" not in listed
    assert listed["id"] == hook["id"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "url: Field required"),
        ({"url": ""}, "url: String should have at least 1 character"),
        ({"url": "ftp://receiver.example/"}, "must start with http:// or https://"),
        ({"url": "javascript:alert(1)"}, "must start with http:// or https://"),
        ({"url": "receiver.example/hooks"}, "must start with http:// or https://"),
        ({"url": "https:///hooks"}, "has no host"),
        ({"url": "https://" + "é" * 70 + ".example/"}, "host name that is not valid"),
        ({"url": "https://user:pw@receiver.example/"}, "must not carry a user name"),
        ({"url": "https://receiver.example/a b"}, "spaces or control characters"),
        ({"url": "https://receiver.example/\x1b[2J"}, "spaces or control characters"),
        ({"url": "https://receiver.example:99999/"}, "port"),
        ({"url": "https://receiver.example/#top"}, "#fragment"),
        ({"url": "https://receiver.example/" + "a" * 2000}, "at most 2000 characters"),
        ({"url": 7}, "url: Input should be a valid string"),
        ({"url": URL, "events": []}, "events: List should have at least 1 item"),
        ({"url": URL, "events": ["job.exploded"]}, "events.0: Input should be"),
        ({"url": URL, "events": "job.failed"}, "events: Input should be a valid list"),
        ({"url": URL, "secret": "whsec_mine"}, "secret: Extra inputs are not permitted"),
        ({"url": "http://127.0.0.1:8080/hooks"}, "names an address that is not public"),
        ({"url": "http://[::1]/hooks"}, "names an address that is not public"),
        ({"url": "http://169.254.169.254/latest"}, "names an address that is not public"),
        ({"url": "http://10.1.2.3/"}, "names an address that is not public"),
    ],
)
def test_bad_webhooks_are_refused_and_nothing_is_stored(
    client: TestClient, body: dict[str, Any], words: str
) -> None:
    answer = client.post("/api/webhooks", json=body)
    assert answer.status_code == 422, answer.text
    assert words in answer.json()["detail"]
    assert hooks(client) == []


def test_a_body_that_is_not_json_is_422(client: TestClient) -> None:
    answer = client.post(
        "/api/webhooks", content=b"url=x", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], str)
    assert hooks(client) == []


def test_signed_out_is_401_on_every_route(app: App) -> None:
    for method, path in [
        ("POST", "/api/webhooks"),
        ("GET", "/api/webhooks"),
        ("DELETE", "/api/webhooks/1"),
        ("POST", "/api/webhooks/1/rotate"),
        ("GET", "/api/webhooks/deliveries"),
        ("POST", "/api/webhooks/deliveries/1/retry"),
    ]:
        answer = app.http.request(method, path, json={"url": URL})
        assert answer.status_code == 401, (method, path)
        assert answer.json() == {"detail": "Not signed in."}


def test_another_users_webhook_is_404_like_none(app: App) -> None:
    alice, bob = app.client(), app.client()
    hook = add(alice)
    for path_id in (hook["id"], 999_999, 2**63, 0, -1):
        assert bob.delete(f"/api/webhooks/{path_id}").json() == {"detail": "Webhook not found."}
        answer = bob.post(f"/api/webhooks/{path_id}/rotate")
        assert (answer.status_code, answer.json()) == (404, {"detail": "Webhook not found."})
    assert bob.delete("/api/webhooks/abc").status_code == 422
    # Alice's is untouched, secret included.
    [listed] = hooks(alice)
    assert listed["id"] == hook["id"]
    assert alice.post(f"/api/webhooks/{hook['id']}/rotate").json()["secret"] != hook["secret"]


def test_delete_removes_it(client: TestClient) -> None:
    hook = add(client)
    assert client.delete(f"/api/webhooks/{hook['id']}").status_code == 204
    assert hooks(client) == []
    assert client.delete(f"/api/webhooks/{hook['id']}").status_code == 404


def test_a_user_has_at_most_so_many(client: TestClient) -> None:
    for _ in range(MAX_ENDPOINTS):
        add(client)
    answer = client.post("/api/webhooks", json={"url": URL})
    assert answer.status_code == 409
    assert f"You have {MAX_ENDPOINTS} webhooks" in answer.json()["detail"]
    assert len(hooks(client)) == MAX_ENDPOINTS


def cancel_a_job(client: TestClient) -> int:
    job_id: int = client.post("/api/job", json={"name": "j"}).json()["id"]
    assert client.post(f"/api/job/{job_id}/cancel").status_code == 200
    return job_id


def test_an_event_makes_a_pending_delivery_per_endpoint_that_wants_it(
    client: TestClient,
) -> None:
    wants = add(client, events=["job.cancelled"])
    add(client, events=["job.succeeded"])
    everything = add(client)
    job_id = cancel_a_job(client)
    page = client.get("/api/webhooks/deliveries").json()
    assert page["total"] == 2
    assert {d["endpoint_id"] for d in page["items"]} == {wants["id"], everything["id"]}
    for delivery in page["items"]:
        assert delivery["event"] == "job.cancelled" and delivery["job_id"] == job_id
        assert delivery["state"] == "pending" and delivery["attempts"] == 0
        assert delivery["webhook_id"].startswith("msg_")
    # One event, so one webhook-id for both endpoints.
    assert len({d["webhook_id"] for d in page["items"]}) == 1
    only = client.get("/api/webhooks/deliveries", params={"endpoint_id": wants["id"]}).json()
    assert [d["endpoint_id"] for d in only["items"]] == [wants["id"]]


def test_no_endpoint_no_event_rows(app: App, client: TestClient) -> None:
    cancel_a_job(client)
    with app.runtime.sessions() as session:
        before = len(session.scalars(select(WebhookDelivery.id)).all())
    cancel_a_job(client)
    with app.runtime.sessions() as session:
        assert len(session.scalars(select(WebhookDelivery.id)).all()) == before


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"offset": -1}, "offset"),
        ({"endpoint_id": 0}, "endpoint_id"),
        ({"endpoint_id": "x"}, "endpoint_id"),
    ],
)
def test_bad_delivery_listing_is_422(
    client: TestClient, params: dict[str, Any], words: str
) -> None:
    answer = client.get("/api/webhooks/deliveries", params=params)
    assert answer.status_code == 422
    assert words in answer.json()["detail"]


def test_retry_of_another_users_delivery_is_404_like_none(app: App) -> None:
    alice, bob = app.client(), app.client()
    add(alice)
    cancel_a_job(alice)
    [delivery] = alice.get("/api/webhooks/deliveries").json()["items"]
    assert bob.get("/api/webhooks/deliveries").json()["items"] == []
    for path_id in (delivery["id"], 999_999, 2**63, 0):
        answer = bob.post(f"/api/webhooks/deliveries/{path_id}/retry")
        assert (answer.status_code, answer.json()) == (
            404,
            {"detail": "Webhook delivery not found."},
        )
    assert bob.post("/api/webhooks/deliveries/x/retry").status_code == 422
    answer = alice.post(f"/api/webhooks/deliveries/{delivery['id']}/retry")
    assert answer.status_code == 200
    assert answer.json()["webhook_id"] == delivery["webhook_id"]


def test_a_webhook_url_setting_is_checked_at_start(tmp_path: Path) -> None:
    good = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    with pytest.raises(ValueError, match="CHUTE_WEBHOOK_URL must start with http"):
        Settings(webhook_url="ftp://x.example/", webhook_secret=good)
    with pytest.raises(ValueError, match="needs CHUTE_WEBHOOK_SECRET"):
        Settings(webhook_url="https://x.example/")
    with pytest.raises(ValueError, match="CHUTE_WEBHOOK_SECRET must start with whsec_"):
        Settings(webhook_url="https://x.example/", webhook_secret="secret")
    with pytest.raises(ValueError, match="24 to 64 bytes"):
        Settings(webhook_url="https://x.example/", webhook_secret="whsec_c2hvcnQ=")
    assert Settings(webhook_url=" https://x.example/h ", webhook_secret=good).webhook_url == (
        "https://x.example/h"
    )


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = Policy.of(Settings())
    for attempts, base in [(1, 5), (2, 10), (3, 20), (4, 40)]:
        delays = [policy.backoff(attempts) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert max(delays) - min(delays) > 0.1 * base  # jitter: not all the same
    assert all(policy.backoff(n) <= 3600 for n in (12, 13, 50, 10_000))
    assert policy.backoff(50) >= 3600 * 0.8


def test_uploads_still_work_with_webhooks(client: TestClient) -> None:
    add(client, events=["upload.completed"])
    job_id = client.post("/api/job", json={"name": "j"}).json()["id"]
    data = csv_bytes(5)
    answer = client.post(
        f"/api/job/{job_id}/upload-data",
        data={"chunk_index": "0", "total_chunks": "1"},
        files={"file": ("a.csv", data, "text/csv")},
    )
    assert answer.status_code == 200, answer.text
    [delivery] = client.get("/api/webhooks/deliveries").json()["items"]
    assert delivery["event"] == "upload.completed"


def test_old_events_are_purged_once_nothing_retries_them(app: App) -> None:
    client = app.client()
    add(client)
    cancel_a_job(client)
    cancel_a_job(client)
    [newer, older] = client.get("/api/webhooks/deliveries").json()["items"]
    now = utcnow()
    with app.runtime.sessions() as session:
        session.execute(update(WebhookEvent).values(created_at=now - timedelta(days=31)))
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == older["id"])
            .values(state=DeliveryState.DELIVERED)
        )
        session.commit()
        assert purge_events(session, now - KEEP_WEBHOOK_EVENTS) >= 1
    # The delivered one is gone; the pending one stays until it is done.
    left = client.get("/api/webhooks/deliveries").json()["items"]
    assert [d["id"] for d in left] == [newer["id"]]


def test_a_delivery_being_sent_is_not_sent_again_at_once(app: App) -> None:
    client = app.client()
    add(client)
    cancel_a_job(client)
    [delivery] = client.get("/api/webhooks/deliveries").json()["items"]
    with app.runtime.sessions() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery["id"])
            .values(claim="a" * 32, claimed_at=utcnow())
        )
        session.commit()
    answer = client.post(f"/api/webhooks/deliveries/{delivery['id']}/retry")
    assert answer.status_code == 409
    assert answer.json() == {
        "detail": "The delivery is being sent right now; look again in a moment."
    }
