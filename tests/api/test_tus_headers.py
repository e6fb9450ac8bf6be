"""What the tus front door answers to its headers alone (DESIGN §6), in this process on
the in-memory storage: discovery, sign-in, and every bad header a client may send.
Streaming, drops and storage are tests/api/test_tus.py's, against real servers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.inprocess import App, TestClient, app_in_process
from tests.factories import csv_bytes

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from app_in_process(Path(tmp_path_factory.mktemp("tus-headers")))


@pytest.fixture
def client(app: App) -> TestClient:
    return app.client()


def jobs(client: TestClient) -> int:
    total: int = client.get("/api/job").json()["total"]
    return total


def test_options_says_what_this_server_speaks(app: App) -> None:
    for path in ("/api/tus/", "/api/tus"):
        answer = app.http.options(path)
        assert answer.status_code == 204
        assert answer.headers["Tus-Version"] == "1.0.0"
        assert answer.headers["Tus-Resumable"] == "1.0.0"
        assert set(answer.headers["Tus-Extension"].split(",")) == {
            "creation", "creation-with-upload", "expiration", "checksum", "termination",
            "concatenation",
        }  # fmt: skip
        assert set(answer.headers["Tus-Checksum-Algorithm"].split(",")) == {
            "sha256", "sha1", "md5",
        }  # fmt: skip
        assert int(answer.headers["Tus-Max-Size"]) == app.settings.max_file_bytes


def test_signing_in_is_needed(app: App) -> None:
    answer = app.http.post("/api/tus/", headers={**TUS, "Upload-Length": "5"})
    assert answer.status_code == 401
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert answer.json()["detail"] == "Not signed in."


def test_the_location_is_absolute_under_the_public_url(tmp_path: Path) -> None:
    for app in app_in_process(tmp_path, public_url="https://chute.example"):
        answer = app.client().post(
            "/api/tus/",
            headers={**TUS, "Upload-Length": "5", "Upload-Metadata": metadata(name="x")},
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["Location"].startswith("https://chute.example/api/tus/")


BAD_CREATIONS: list[tuple[dict[str, str], int]] = [
    ({"Upload-Length": "10"}, 400),  # no job named
    ({"Upload-Length": "-1", "Upload-Metadata": metadata(name="x")}, 400),
    ({"Upload-Length": "1e3", "Upload-Metadata": metadata(name="x")}, 400),
    ({"Upload-Length": "9" * 40, "Upload-Metadata": metadata(name="x")}, 400),
    ({"Upload-Metadata": metadata(name="x")}, 400),  # no length (no deferred length)
    ({"Upload-Length": "0", "Upload-Metadata": metadata(name="x")}, 422),
    ({"Upload-Length": "10", "Upload-Metadata": "name %%%"}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": "name " + "QUFB" * 2000}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="a\u202eb")}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="a\nb")}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="x", filename="a\x00b")}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": "name eA==,name eA=="}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": "n\tme eA=="}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(job_id="12x")}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(job_id="9" * 30)}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(job_id="999999999")}, 404),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="x", kind="nope")}, 422),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="x", params="{")}, 400),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="x", params="[1]")}, 422),
    ({"Upload-Length": str(2**62), "Upload-Metadata": metadata(name="x")}, 413),
    ({"Upload-Length": "10", "Upload-Metadata": metadata(name="x"), "Tus-Resumable": "0.2"}, 412),
    ({"Upload-Length": "10", "Upload-Concat": "sideways"}, 400),
    ({"Upload-Concat": "final;"}, 400),
    ({"Upload-Concat": "final;/api/tus/../../etc"}, 400),
]


@pytest.mark.parametrize(("headers", "status"), BAD_CREATIONS)
def test_bad_creations_get_a_clear_error_and_create_nothing(
    client: TestClient, headers: dict[str, str], status: int
) -> None:
    before = jobs(client)
    answer = client.post("/api/tus/", headers={**TUS, **headers})
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"]
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    assert jobs(client) == before


def test_a_creation_body_must_be_offset_octets(client: TestClient) -> None:
    before = jobs(client)
    answer = client.post(
        "/api/tus/",
        content=b"a,b\n",
        headers={**TUS, "Content-Type": "text/csv", "Upload-Length": "4",
                 "Upload-Metadata": metadata(name="x")},
    )  # fmt: skip
    assert answer.status_code == 415, answer.text
    assert jobs(client) == before


def test_bad_patches_get_a_clear_error_and_change_nothing(client: TestClient) -> None:
    data = csv_bytes(1000)
    answer = client.post(
        "/api/tus/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata(name="x")},
    )
    url = answer.headers["Location"]
    cases: list[tuple[dict[str, str], bytes, int]] = [
        ({"Content-Type": "text/csv"}, data, 415),
        ({"Upload-Offset": "x"}, data, 400),
        ({"Upload-Offset": "-5"}, data, 400),
        ({"Upload-Offset": "7"}, data, 409),
        ({"Tus-Resumable": "0.2.2"}, data, 412),
        ({"Upload-Checksum": "crc32 AAAA"}, data, 400),
        ({"Upload-Checksum": "sha256 !!"}, data, 400),
        ({"Upload-Checksum": "sha256 AAAA"}, data, 400),
        ({}, data + b"more", 413),
    ]
    for headers, body, status in cases:
        answer = client.patch(url, content=body, headers={**PATCH, "Upload-Offset": "0", **headers})
        assert answer.status_code == status, (headers, answer.text)
        assert answer.json()["detail"]
    for wrong in (url + "x", url[:-1] + "g", "/api/tus/" + "0" * 32):
        answer = client.patch(wrong, content=data, headers={**PATCH, "Upload-Offset": "0"})
        assert answer.status_code == 404, wrong
    answer = client.head(url, headers=TUS)
    assert answer.headers["Upload-Offset"] == "0"
