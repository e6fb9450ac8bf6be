"""The signing keys of the host application's OpenID Connect provider, fetched and cached.

Contract (`KeySource`): `find(kid)` gives the public keys a token's key id may name, from
what the provider publishes, or none. It never raises: a provider that cannot be reached
or answers nonsense leaves the keys fetched before in use (tokens signed with them keep
working), and logs why.

When the keys are fetched:
- on the first token, then again once they are `max_age` seconds old (the discovery
  document with them, so a moved `jwks_uri` is followed);
- sooner when a token names a key id the cached set lacks: a provider that rotated its
  keys is picked up without a restart;
- but never twice within `min_interval` seconds, whatever tokens arrive: random key ids
  from an attacker cost the provider one fetch per interval and each request nothing.

A fetch has a time limit as a whole and a size limit on each answer, follows no redirect,
and asks for no compression (so the size limit is the size read).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, Key, OKPKey, RSAKey

log = logging.getLogger(__name__)

# Discovery documents and key sets are a few KiB; far more is not a provider's answer.
MAX_ANSWER_BYTES = 256 * 1024
# Seconds one fetch (connecting, waiting, reading) may take in all.
FETCH_TIMEOUT = 5.0
MAX_KEYS = 100
# RSA keys shorter than this are not trusted to sign anything.
MIN_RSA_BITS = 2048


class KeySource(Protocol):
    def find(self, kid: str | None) -> Sequence[Key]:
        """The keys a token with this key id (None: no `kid`) may be signed with."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class KeySet:
    """Public signing keys by key id; keys published without one are `unnamed`."""

    by_kid: Mapping[str, Key] = field(default_factory=dict)
    unnamed: tuple[Key, ...] = ()

    def close(self) -> None:
        """Nothing to release: a fixed set is also a `KeySource` (for tests)."""

    def find(self, kid: str | None) -> Sequence[Key]:
        if kid is None:
            return (*self.by_kid.values(), *self.unnamed)
        key = self.by_kid.get(kid)
        return (key,) if key is not None else ()

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> KeySet:
        """The usable keys of a JWKS document: public signing keys of the types tokens
        may use. Others (encryption keys, unknown types, private parts) are left out."""
        items = document.get("keys")
        if not isinstance(items, list):
            raise FetchError("the key set has no list of keys")
        by_kid: dict[str, Key] = {}
        unnamed: list[Key] = []
        for item in items[:MAX_KEYS]:
            key = _public_signing_key(item)
            if key is None:
                continue
            kid = item.get("kid")
            if isinstance(kid, str) and kid:
                by_kid.setdefault(kid, key)
            else:
                unnamed.append(key)
        return cls(by_kid, tuple(unnamed))


def _public_signing_key(item: object) -> Key | None:
    if not isinstance(item, dict) or item.get("use", "sig") != "sig":
        return None
    if item.get("kty") not in ("RSA", "EC", "OKP") or "d" in item:
        return None
    try:
        if item["kty"] == "RSA" and _modulus_bits(item["n"]) < MIN_RSA_BITS:
            return None
        key = JWKRegistry.import_key(item)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    return key if isinstance(key, RSAKey | ECKey | OKPKey) else None


def _modulus_bits(n: object) -> int:
    if not isinstance(n, str):
        raise TypeError("n is not a string")
    raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    return int.from_bytes(raw, "big").bit_length()


class FetchError(Exception):
    """The provider could not be reached, or did not answer as the protocol says."""


class ProviderKeys:
    """`KeySource` for one issuer: its discovery document and JWKS, fetched with httpx.

    Safe to share between threads; `find` blocks only while keys are fetched that the
    token needs (none are cached yet, or its key id is new), at most `timeout` seconds.
    """

    def __init__(
        self, issuer: str, *, max_age: float, min_interval: float, timeout: float = FETCH_TIMEOUT
    ) -> None:
        self.issuer = issuer
        self.max_age = max_age
        self.min_interval = min_interval
        self.timeout = timeout
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None  # made by the first fetch, under the lock
        self._keys = KeySet()
        self._fetched_at: float | None = None  # of the keys in use
        self._tried_at: float | None = None  # of the last fetch, whatever came of it
        self._jwks_uri: str | None = None

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()

    def find(self, kid: str | None) -> Sequence[Key]:
        now = time.monotonic()
        if self._fetched_at is None:
            self._refresh(asked_at=now, wait=True)
        elif now - self._fetched_at >= self.max_age:
            # Old keys still verify meanwhile: a request does not wait for another's fetch.
            self._refresh(asked_at=now, wait=False)
        found = self._keys.find(kid)
        if not found and kid is not None and self._refresh(asked_at=now, wait=True):
            found = self._keys.find(kid)
        return found

    def _refresh(self, *, asked_at: float, wait: bool) -> bool:
        """Fetch the keys unless a fetch was tried within `min_interval` or since
        `asked_at` (another request's fetch then answers this one). True if fetched."""
        taken = self._lock.acquire(timeout=2 * self.timeout) if wait else self._lock.acquire(False)
        if not taken:
            return False
        try:
            tried = self._tried_at
            now = time.monotonic()
            if tried is not None and (tried >= asked_at or now - tried < self.min_interval):
                return tried >= asked_at
            self._tried_at = now
            try:
                keys = self._fetch()
            except FetchError as exc:
                log.warning("Could not fetch the keys of %s: %s", self.issuer, exc)
                return False
            self._keys, self._fetched_at = keys, now
            return True
        finally:
            self._lock.release()

    def _fetch(self) -> KeySet:
        deadline = time.monotonic() + self.timeout
        try:
            self._jwks_uri = self._discover(deadline)
        except FetchError:
            if self._jwks_uri is None:
                raise
            log.warning("Discovery at %s failed; using its last jwks_uri", self.issuer)
        return KeySet.parse(self._get_json(self._jwks_uri, deadline))

    def _discover(self, deadline: float) -> str:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        document = self._get_json(url, deadline)
        # OpenID Connect Discovery: the document must name the issuer it was asked for.
        if document.get("issuer") != self.issuer:
            raise FetchError("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        # Keys come over https, unless the issuer itself is plain http (on loopback).
        schemes = ("https://",) if self.issuer.startswith("https:") else ("https://", "http://")
        if not isinstance(uri, str) or not uri.startswith(schemes):
            raise FetchError("the discovery document has no usable jwks_uri")
        return uri

    def _get_json(self, url: str, deadline: float) -> dict[str, Any]:
        """The JSON object at `url`, read whole by `deadline` (a `time.monotonic()`)."""
        if self._http is None:
            self._http = httpx.Client(
                follow_redirects=False,
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError(f"no time left to ask {url}")
        body = bytearray()
        try:
            with self._http.stream("GET", url, timeout=left) as answer:
                if answer.status_code != 200:
                    raise FetchError(f"{url} answered {answer.status_code}")
                declared = answer.headers.get("content-length", "0")
                if not declared.isdigit() or int(declared) > MAX_ANSWER_BYTES:
                    raise FetchError(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")
                for part in answer.iter_raw():
                    body += part
                    if len(body) > MAX_ANSWER_BYTES:
                        raise FetchError(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{url} answered too slowly")
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise FetchError(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{url} did not answer a JSON object")
        return document
