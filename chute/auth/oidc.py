"""Bearer JWTs from the host application's OpenID Connect provider (DESIGN §7).

Why joserfc: maintained, typed, EdDSA (OKP) keys and JWKS built in, and Chute picks the key.

What a token must be, checked in this order (any failure: `Problem.BAD_TOKEN`, a 401
whose words say which rule failed and nothing of the token or of Chute's internals):
- a JWS in compact form whose header names RS256, ES256 or EdDSA (never `none` nor an
  HMAC, which would let anyone who knows a public key sign), no critical extension, and
  a `typ`, if any, of a JWT or an access token;
- signed by a key the issuer publishes (`chute.auth.jwks`) whose type and curve are the
  algorithm's, and whose own `alg`, if it names one, is the header's;
- with `iss` the configured issuer, the configured audience among `aud`, an `exp` not
  past, no `nbf` or `iat` in the future (both within the leeway), and a `sub`.
The user it names is (issuer, `sub`); the name is `name_claim`'s value, else `sub`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from joserfc import jws
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from chute.auth.jwks import KeySource
from chute.errors import ChuteError, Problem

# Algorithm: the key type it needs, and the curves it takes (None: RSA, 2048 bits and up
# as `chute.auth.jwks` keeps them).
ALGORITHMS: dict[str, tuple[type[RSAKey | ECKey | OKPKey], frozenset[str] | None]] = {
    "RS256": (RSAKey, None),
    "ES256": (ECKey, frozenset({"P-256"})),
    "EdDSA": (OKPKey, frozenset({"Ed25519", "Ed448"})),
}
TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
MAX_TOKEN_CHARS = 16 * 1024
MAX_SUBJECT_CHARS = 255
# Three base64url segments; the last may be empty, so an unsigned token is judged (and
# refused) here rather than taken for one of Chute's own tokens.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

_CLAIM_WORDS = {
    "iss": "it comes from another issuer",
    "aud": "it is meant for another audience",
    "exp": "it has no valid expiry",
    "nbf": "it is not valid yet",
    "iat": "it was issued in the future",
    "sub": "it names no subject",
}


def looks_like_jwt(value: str) -> bool:
    """Whether a bearer value is shaped as a JWT (Chute's own tokens never are)."""
    return _JWT_SHAPE.fullmatch(value) is not None


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for."""

    issuer: str
    subject: str
    # From the token's name claim, else the subject: a user's name when first seen.
    name: str


class _Registry(JWSRegistry):
    """The three algorithms, and nothing else whatever a header says.

    joserfc warns that EdDSA is deprecated by RFC 9864 (in favour of naming the curve, as
    `Ed25519`); providers still sign with `EdDSA`, and `_usable` checks the curve itself.
    """

    # joserfc's 512-byte cap on the header would refuse providers that put a certificate
    # chain (`x5c`) in it; the token as a whole is capped at MAX_TOKEN_CHARS.
    max_header_length = 8 * 1024

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in ALGORITHMS:
            raise JoseError(f"algorithm {name!r} is not accepted")
        return self.algorithms[name]


_REGISTRY = _Registry(algorithms=list(ALGORITHMS), strict_check_header=False)


def _refused(why: str) -> ChuteError:
    return ChuteError(Problem.BAD_TOKEN, why=why)


def _usable(key: Key, alg: str) -> bool:
    key_type, curves = ALGORITHMS[alg]
    if not isinstance(key, key_type):
        return False
    if curves is not None and not (isinstance(key, ECKey | OKPKey) and key.curve_name in curves):
        return False
    return key.alg is None or key.alg == alg


class OidcVerifier:
    """Verifies bearer JWTs of one issuer for one audience; raises `ChuteError` when not."""

    def __init__(
        self, *, issuer: str, audience: str, name_claim: str, leeway: int, keys: KeySource
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.name_claim = name_claim
        self.leeway = leeway
        self.keys = keys

    def close(self) -> None:
        self.keys.close()

    def verify(self, token: str, *, now: int | None = None) -> Identity:
        """The identity a token speaks for; `now` (seconds since the epoch) for tests."""
        if len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
            raise _refused("it is not a well-formed token")
        try:
            signed = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
        except (JoseError, ValueError):
            raise _refused("it is not a well-formed token") from None
        header = signed.headers()
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _refused("its algorithm is not accepted (RS256, ES256 and EdDSA are)")
        if "crit" in header or "b64" in header or not isinstance(kid, str | None):
            raise _refused("its header is not one of a plain signed token")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES):
            raise _refused("it is not an access token")
        candidates = [key for key in self.keys.find(kid) if _usable(key, alg)]
        if not candidates:
            raise _refused("it is not signed with a key its identity provider publishes")
        if not any(_verifies(signed, key) for key in candidates):
            raise _refused("its signature does not verify")
        return self._identity(signed.payload, now)

    def _identity(self, payload: bytes | None, now: int | None) -> Identity:
        try:
            claims = json.loads(payload or b"")
        except ValueError:
            raise _refused("its claims are not JSON") from None
        if not isinstance(claims, dict):
            raise _refused("its claims are not a JSON object")
        rules = JWTClaimsRegistry(
            now=now,
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            rules.validate(claims)
        except ExpiredTokenError:
            raise _refused("it has expired") from None
        except ClaimError as exc:
            # A missing claim's error names them all, sorted: the first is reported.
            first = exc.claim.split(",")[0]
            raise _refused(_CLAIM_WORDS.get(first, f"its {first} claim is not valid")) from None
        subject = claims["sub"]
        if not isinstance(subject, str) or len(subject) > MAX_SUBJECT_CHARS:
            raise _refused("its subject is not a string of at most 255 characters")
        name = claims.get(self.name_claim)
        return Identity(self.issuer, subject, name if isinstance(name, str) else subject)


def _verifies(signed: jws.CompactSignature, key: Key) -> bool:
    try:
        return jws.validate_compact(signed, key, registry=_REGISTRY)
    except JoseError:
        return False
