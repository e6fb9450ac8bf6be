"""`Client`: Chute's HTTP API as typed Python calls, on one httpx connection pool.

Every call that reads, and every call that cannot do harm when repeated, is retried
on network errors, 5xx, 408, 423, 429 and 507 (see `retry.py`). Creating a job is retried
only when the request never reached the server, so a lost answer cannot make two
jobs. Any other error answer raises `ApiError` with the server's `detail`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from chute.client import sse
from chute.client.errors import ApiError, ChuteClientError, detail_of
from chute.client.models import ApiToken, Job, ServerConfig, UploadStatus
from chute.client.progress import ProgressCallback
from chute.client.retry import GaveUp, RetryPolicy
from chute.client.stall import STALL_TIMEOUT, socket_options
from chute.client.upload import UploadSummary, upload_file

DEFAULT_SERVER = "http://127.0.0.1:8000"
# Before opening a job's event stream again after it was cut off.
RECONNECT_SECONDS = 0.5
CONNECT_TIMEOUT = 10.0
# A chunk's answer comes after the server's fdatasync and commit: allow for a slow disk.
# A dead link is noticed sooner than this, by the stall watches (`stall.py`).
READ_TIMEOUT = 300.0


class Client:
    """A signed-in session with one Chute server.

    >>> chute = Client.sign_in("http://127.0.0.1:8000", "admin", "password")
    >>> job = chute.submit("sales.csv")          # create, upload, wait
    >>> job.result["rows"]

    Thread-safe: `upload` sends chunks from several threads through this client.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        zero_copy: bool = True,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        """`on_retry`, when given, hears of every failed try that will be tried again, in
        plain words; it may be called from the upload's sender threads. `zero_copy`:
        chunk bytes go from the file to the socket by sendfile where that is possible
        (`zero_copy_address`); False sends them through httpx always. `stall_timeout`:
        a request whose bytes stop moving for this many seconds, with no answer, is
        cut off and sent again (`stall.py`)."""
        if stall_timeout <= 0:
            raise ValueError("the stall timeout must be more than 0 seconds")
        self.server = server.rstrip("/")
        self.stall_timeout = stall_timeout
        self.zero_copy = zero_copy and transport is None
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if transport is None:
            transport = httpx.HTTPTransport(
                # Chunks in flight each need a connection of their own.
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                socket_options=socket_options(stall_timeout),
            )
        self.http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=httpx.Timeout(
                60.0, connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=stall_timeout
            ),
            transport=transport,
        )
        self._config: ServerConfig | None = None

    @classmethod
    def sign_in(cls, server: str, username: str, password: str, **options: Any) -> Client:
        """A client signed in with a new bearer token for `username`."""
        client = cls(server, **options)
        try:
            client.set_token(client.request_token(username, password))
        except BaseException:
            client.close()
            raise
        return client

    @classmethod
    def from_env(cls, server: str | None = None, **options: Any) -> Client:
        """A client for `server` (else CHUTE_SERVER, else the default) signed in with the
        token in CHUTE_TOKEN: an API token (`chute token create`) or a sign-in's token."""
        token = os.environ.get("CHUTE_TOKEN")
        if not token:
            raise ChuteClientError("CHUTE_TOKEN is not set: make a token with `chute token create`")
        return cls(server or os.environ.get("CHUTE_SERVER") or DEFAULT_SERVER, token, **options)

    def zero_copy_address(self) -> tuple[str, int] | None:
        """Where chunks can be sent with sendfile (`zerocopy.py`): a plain http:// server
        reached without a proxy. None: through httpx (TLS, a proxy, or turned off)."""
        url = httpx.URL(self.server)
        if not (self.zero_copy and hasattr(os, "sendfile")) or url.scheme != "http" or not url.host:
            return None
        proxies = urllib.request.getproxies()
        if ("http" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(url.host):
            # httpx reads the same environment; whether a proxy applies is its business.
            return None
        return url.host, url.port or 80

    def set_token(self, token: str) -> None:
        self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, safe_to_repeat: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One API call, retried as the module says; an error answer raises `ApiError`."""

        def may_repeat(failure: httpx.Response | httpx.TransportError) -> bool:
            # A request that may have been done is repeated only if it never left.
            return safe_to_repeat or isinstance(failure, httpx.ConnectError)

        try:
            response = self.retry.run(
                lambda: self.http.request(method, path, **kwargs),
                on_retry=lambda failure, wait: self.retrying(f"{method} {path}", failure, wait),
                may_repeat=may_repeat,
            )
        except httpx.TransportError as exc:
            raise ChuteClientError(
                f"{method} {path}: the connection failed ({exc}); "
                "the server may or may not have done it"
            ) from exc
        except GaveUp as exc:
            raise _gave_up(self.server, exc.failure) from None
        if not response.is_success:
            raise ApiError(response.status_code, detail_of(response))
        return response

    def retrying(self, what: str, failure: Exception, wait: float) -> None:
        if self.on_retry is not None:
            reason = str(failure) or type(failure).__name__
            self.on_retry(f"{what}: {reason}; trying again in {wait:.1f} s")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # --- auth and configuration -------------------------------------------------------

    def request_token(self, username: str, password: str) -> str:
        # Not repeated on an answer: a 429 means too many failed sign-ins, and sending the
        # same password again when the block ends would only make the next block longer.
        answer = self._json(
            "POST",
            "/api/auth/token",
            data={"username": username, "password": password},
            safe_to_repeat=False,
        )
        return str(answer["access_token"])

    def me(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._json("GET", "/api/auth/me")
        return answer

    # --- API tokens -------------------------------------------------------------------

    def create_api_token(self, name: str, *, expires_in_days: int | None = None) -> ApiToken:
        """A new API token for scripts; its `secret` is in this answer only. The server
        refuses this to a client signed in with an API token (403)."""
        body: dict[str, Any] = {"name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        # Not repeated on an answer lost: that could make two tokens.
        return ApiToken.of(self._json("POST", "/api/tokens", json=body, safe_to_repeat=False))

    def api_tokens(self) -> list[ApiToken]:
        """Own API tokens, oldest first, with their last use; never their secrets."""
        return [ApiToken.of(item) for item in self._json("GET", "/api/tokens")["items"]]

    def revoke_api_token(self, token_id: int) -> None:
        """The token stops working at once; `ApiError` 404 if it is not one of yours."""
        self.request("DELETE", f"/api/tokens/{token_id}", safe_to_repeat=False)

    def config(self) -> ServerConfig:
        """The server's `/api/config`, fetched once per client."""
        if self._config is None:
            self._config = ServerConfig.of(self._json("GET", "/api/config"))
        return self._config

    # --- jobs -------------------------------------------------------------------------

    def create_job(
        self, name: str, kind: str = "profile", params: dict[str, Any] | None = None
    ) -> Job:
        body = {"name": name, "kind": kind, "params": params or {}}
        return Job.of(self._json("POST", "/api/job", json=body, safe_to_repeat=False))

    def jobs(self, limit: int = 50, offset: int = 0) -> list[Job]:
        """Own jobs, newest first."""
        page = self._json("GET", "/api/job", params={"limit": limit, "offset": offset})
        return [Job.of(item) for item in page["items"]]

    def job(self, job_id: int) -> Job:
        return Job.of(self._json("GET", f"/api/job/{job_id}"))

    def cancel(self, job_id: int) -> Job:
        return Job.of(self._json("POST", f"/api/job/{job_id}/cancel"))

    def delete(self, job_id: int) -> None:
        self.request("DELETE", f"/api/job/{job_id}")

    def upload_status(self, job_id: int) -> UploadStatus:
        return UploadStatus.of(self._json("GET", f"/api/job/{job_id}/upload-data"))

    def result(self, job_id: int) -> dict[str, Any]:
        """A succeeded job's result; `ApiError` 409 while it has none."""
        answer: dict[str, Any] = self._json("GET", f"/api/job/{job_id}/result")
        return answer

    def download_parquet(self, job_id: int, target: str | os.PathLike[str]) -> Path:
        """Stream a succeeded job's data as Parquet into `target`; never held in memory."""
        path = Path(target)
        partial = path.with_name(path.name + ".part")
        with self.http.stream("GET", f"/api/job/{job_id}/result/data.parquet") as response:
            if not response.is_success:
                response.read()
                raise ApiError(response.status_code, detail_of(response))
            with partial.open("wb") as out:
                for block in response.iter_bytes(1024 * 1024):
                    out.write(block)
        partial.replace(path)
        return path

    def events(self, job_id: int) -> Iterator[Job]:
        """The job at once and at every change, until it ends (the server's event stream)."""
        for job in self._stream(job_id):
            if job is not None:
                yield job

    def _stream(self, job_id: int) -> Iterator[Job | None]:
        """Like `events`, with a None at each keep-alive (every 15 s or so)."""
        headers = {"Accept": "text/event-stream"}
        with self.http.stream("GET", f"/api/job/{job_id}/events", headers=headers) as response:
            if not response.is_success:
                response.read()
                raise ApiError(response.status_code, detail_of(response))
            for name, data in sse.events(response.iter_lines()):
                if name == "job":
                    yield Job.of(json.loads(data))
                elif name == "gone":
                    raise ApiError(404, str(json.loads(data).get("detail", "Job not found.")))
                else:
                    yield None

    def wait(
        self,
        job_id: int,
        *,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Follow the job until its status is final; `on_update` sees every change.

        It reads the server's event stream. A stream cut off (a proxy, a restart) is
        opened again after one `job` call, which rides out the server's absence with
        the usual retries.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                for job in self._stream(job_id):
                    if job is not None:
                        if on_update is not None:
                            on_update(job)
                        if job.done:
                            return job
                    if deadline is not None and time.monotonic() > deadline:
                        raise ChuteClientError(f"job {job_id} has not ended after {timeout} s")
            except httpx.TransportError:
                pass
            job = self.job(job_id)
            if job.done:
                if on_update is not None:
                    on_update(job)
                return job
            time.sleep(RECONNECT_SECONDS)

    # --- uploads ----------------------------------------------------------------------

    def upload(
        self,
        job_id: int,
        path: str | os.PathLike[str],
        *,
        chunk_size: int | None = None,
        parallel: int | None = None,
        on_progress: ProgressCallback | None = None,
        limit_rate: int | None = None,
    ) -> UploadSummary:
        """Send the file at `path` as job `job_id`'s data; only what the server lacks.

        Defaults come from the server's `/api/config`. A chunk size the server already
        fixed for this upload wins over `chunk_size`. See `chute.client.upload`.
        """
        return upload_file(
            self,
            job_id,
            Path(path),
            chunk_size=chunk_size,
            parallel=parallel,
            on_progress=on_progress,
            limit_rate=limit_rate,
        )

    def submit(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        params: dict[str, Any] | None = None,
        wait: bool = True,
        **upload_options: Any,
    ) -> Job:
        """Create a job for the file, upload it, and (by default) wait for its result."""
        job = self.create_job(name or Path(path).name, params=params)
        self.upload(job.id, path, **upload_options)
        return self.wait(job.id) if wait else self.job(job.id)


def _gave_up(server: str, failure: Exception) -> ChuteClientError:
    if isinstance(failure, ApiError):
        return failure
    return ChuteClientError(f"cannot reach {server}: {failure}")
