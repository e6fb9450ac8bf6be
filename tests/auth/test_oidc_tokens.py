"""The rules a bearer JWT must pass (`chute.auth.oidc`), with keys made here by joserfc.

The keys and signatures are real; only the key source is a fixed `KeySet` instead of a
provider (tests/auth/test_oidc.py runs the whole path against a real one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import warnings
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from pydantic import ValidationError

from chute.auth.jwks import KeySet
from chute.auth.oidc import Identity, OidcVerifier, looks_like_jwt
from chute.config import Settings
from chute.errors import ChuteError

ISSUER = "https://id.example.com"
AUDIENCE = "https://chute.example.com"
NOW = 1_800_000_000

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
EC384 = ECKey.generate_key("P-384", parameters={"kid": "ec384-1"})
# Published with an `alg` of its own: it signs RS256 only.
RSA_PINNED = RSAKey.generate_key(2048, parameters={"kid": "rsa-pinned", "alg": "RS512"})
PUBLISHED = KeySet.parse(
    {"keys": [k.as_dict(private=False) for k in (RSA, EC, ED, EC384, RSA_PINNED)]}
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": NOW - 10,
        "exp": NOW + 300,
        "preferred_username": "alice",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Key = RSA, alg: str = "RS256", **header: Any) -> str:
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **header}
    with warnings.catch_warnings():  # joserfc warns that EdDSA is deprecated (RFC 9864)
        warnings.simplefilter("ignore", SecurityWarning)
        return jws.serialize_compact(
            {k: v for k, v in header.items() if v is not None},
            json.dumps(payload),
            key,
            algorithms=[alg],
        )


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature))
    )


def verifier(keys: KeySet = PUBLISHED, **options: Any) -> OidcVerifier:
    settings = {"issuer": ISSUER, "audience": AUDIENCE, "name_claim": "preferred_username"}
    settings.update(options)
    return OidcVerifier(leeway=30, keys=keys, **settings)


def refused(token: str, **options: Any) -> str:
    with pytest.raises(ChuteError) as caught:
        verifier(**options).verify(token, now=NOW)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    return caught.value.detail


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA")])
def test_a_token_signed_with_a_published_key_names_its_user(key: Key, alg: str) -> None:
    # EdDSA verifies without joserfc's deprecation warning (pytest turns it into an error).
    identity = verifier().verify(sign(claims(), key, alg), now=NOW)
    assert identity == Identity(ISSUER, "user-42", "alice")


def test_the_name_comes_from_the_configured_claim_else_the_subject() -> None:
    token = sign(claims(email="alice@example.com"))
    assert verifier(name_claim="email").verify(token, now=NOW).name == "alice@example.com"
    assert verifier(name_claim="nickname").verify(token, now=NOW).name == "user-42"
    token = sign(claims(preferred_username=["not", "a", "string"]))
    assert verifier().verify(token, now=NOW).name == "user-42"


def test_an_audience_list_that_holds_ours_is_accepted() -> None:
    token = sign(claims(aud=["https://other.example.com", AUDIENCE]))
    assert verifier().verify(token, now=NOW).subject == "user-42"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"exp": NOW - 31}, "it has expired"),
        ({"exp": None}, "it has no valid expiry"),
        ({"exp": "tomorrow"}, "it has no valid expiry"),
        ({"nbf": NOW + 31}, "it is not valid yet"),
        ({"iat": NOW + 31}, "it was issued in the future"),
        ({"iss": "https://evil.example.com"}, "it comes from another issuer"),
        ({"iss": ISSUER + "/"}, "it comes from another issuer"),
        ({"iss": None}, "it comes from another issuer"),
        ({"aud": "https://other.example.com"}, "it is meant for another audience"),
        ({"aud": ["https://other.example.com"]}, "it is meant for another audience"),
        ({"aud": None}, "it is meant for another audience"),
        ({"sub": None}, "it names no subject"),
        ({"sub": ""}, "it names no subject"),
        ({"sub": 42}, "it names no subject"),
        ({"sub": "x" * 256}, "its subject is not a string of at most 255 characters"),
    ],
)
def test_claims_that_break_a_rule_are_refused(changes: dict[str, Any], why: str) -> None:
    assert refused(sign(claims(**changes))) == f"The bearer token was refused: {why}."


def test_clock_skew_within_the_leeway_is_forgiven() -> None:
    token = sign(claims(exp=NOW - 29, nbf=NOW + 29, iat=NOW + 29))
    assert verifier().verify(token, now=NOW).subject == "user-42"


def test_an_unsigned_token_is_refused() -> None:
    token = unsigned({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims())
    assert looks_like_jwt(token)
    assert "algorithm is not accepted" in refused(token)
    assert "algorithm is not accepted" in refused(unsigned({"alg": "None"}, claims()))


def test_hmac_tokens_are_refused_even_keyed_with_a_published_key() -> None:
    # The classic forgery: HS256 keyed with the bytes of the provider's public key.
    public = RSA.as_pem(private=False)
    for secret in (public, b"secret"):
        header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
        head_and_body = unsigned(header, claims()).rsplit(".", 1)[0]
        mac = hmac.new(secret, head_and_body.encode(), hashlib.sha256).digest()
        assert "algorithm is not accepted" in refused(f"{head_and_body}.{b64(mac)}")


@pytest.mark.parametrize(
    ("header_alg", "key", "signing_alg"),
    [
        ("ES256", RSA, "RS256"),  # the header names the algorithm of another key type
        ("RS256", EC, "ES256"),
        ("EdDSA", EC, "ES256"),
        ("ES256", EC384, "ES384"),  # EC, but not P-256
        ("RS256", RSA_PINNED, "RS256"),  # the key is published for RS512 only
    ],
)
def test_an_algorithm_the_key_is_not_for_is_refused(
    header_alg: str, key: Key, signing_alg: str
) -> None:
    # Signed with the same key material, as one who held it could whatever its JWK says.
    material = {k: v for k, v in key.as_dict(private=True).items() if k != "alg"}
    token = sign(claims(), type(key).import_key(material), signing_alg)
    head = json.dumps({"alg": header_alg, "typ": "at+jwt", "kid": key.kid}).encode()
    forged = ".".join((b64(head), *token.split(".")[1:]))
    assert "not signed with a key its identity provider publishes" in refused(forged)


def test_algorithms_beyond_the_three_are_refused() -> None:
    token = sign(claims(), EC384, "ES384")
    assert "algorithm is not accepted" in refused(token)


def test_a_key_the_provider_never_published_is_refused() -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    assert "not signed with a key" in refused(sign(claims(), stranger))
    # The same key id as a published key, another key's signature.
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assert "signature does not verify" in refused(sign(claims(), impostor))


def test_a_token_changed_after_signing_is_refused() -> None:
    head, _, signature = sign(claims()).split(".")
    body = b64(json.dumps(claims(sub="admin")).encode())
    assert "signature does not verify" in refused(f"{head}.{body}.{signature}")


def test_without_a_kid_the_published_keys_of_its_type_are_tried() -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
    both = KeySet.parse({"keys": [other.as_dict(private=False), RSA.as_dict(private=False)]})
    assert verifier(both).verify(sign(claims(), kid=None), now=NOW).subject == "user-42"
    stranger = RSAKey.generate_key(2048)
    assert "signature does not verify" in refused(sign(claims(), stranger, kid=None))


def test_a_header_with_a_certificate_chain_is_taken() -> None:
    chain = [b64(secrets.token_bytes(900)) for _ in range(3)]  # the size of real certificates
    token = sign(claims(), x5c=chain, x5t=b64(secrets.token_bytes(20)))
    assert verifier().verify(token, now=NOW).subject == "user-42"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ({"typ": "dpop+jwt"}, "it is not an access token"),
        ({"typ": 7}, "it is not an access token"),
        ({"kid": 7}, "its header is not one of a plain signed token"),
        ({"crit": ["exp"], "exp": 1}, "its header is not one of a plain signed token"),
    ],
)
def test_headers_of_other_kinds_of_token_are_refused(header: dict[str, Any], why: str) -> None:
    token = sign(claims())
    head = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", **header}
    forged = ".".join((b64(json.dumps(head).encode()), *token.split(".")[1:]))
    assert refused(forged) == f"The bearer token was refused: {why}."


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",  # claims that are not JSON
        b64(b"[1, 2]") + ".e30.c2ln",  # a header that is not an object
        "x" * 20_000 + ".e30.c2ln",
        "abc.def",
        "a.b.c.d.e",
        "ab+c.de/f.g==",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert "The bearer token was refused" in refused(token)


def test_claims_that_are_not_an_object_are_refused() -> None:
    head, _, _ = sign(claims()).split(".")
    signed = jws.serialize_compact(
        {"alg": "RS256", "kid": "rsa-1"}, b"[1, 2]", RSA, algorithms=["RS256"]
    )
    assert head  # the same key signs it: only the payload is wrong
    assert refused(signed) == "The bearer token was refused: its claims are not a JSON object."


def test_chute_tokens_do_not_look_like_jwts() -> None:
    assert not any(looks_like_jwt(secrets.token_urlsafe(32)) for _ in range(200))
    assert looks_like_jwt(sign(claims()))


def test_the_key_set_keeps_only_public_signing_keys() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    n = small.public_numbers().n
    weak = {"kty": "RSA", "kid": "weak", "e": "AQAB", "n": b64(n.to_bytes(128, "big"))}
    document = {
        "keys": [
            RSA.as_dict(private=False),
            {**EC.as_dict(private=False), "kid": "for-encryption", "use": "enc"},
            ED.as_dict(private=True) | {"kid": "private"},
            weak,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "not a key",
        ]
    }
    assert sorted(KeySet.parse(document).by_kid) == ["rsa-1"]


def test_real_time_is_used_without_a_clock() -> None:
    now = int(time.time())
    token = sign(claims(iat=now, exp=now + 60))
    assert verifier().verify(token).subject == "user-42"


def test_an_issuer_needs_an_audience_and_a_safe_address() -> None:
    with pytest.raises(ValidationError, match="CHUTE_OIDC_AUDIENCE must be set"):
        Settings(oidc_issuer=ISSUER)
    with pytest.raises(ValidationError, match="CHUTE_OIDC_ISSUER must be"):
        Settings(oidc_issuer="http://id.example.com", oidc_audience=AUDIENCE)
    with pytest.raises(ValidationError, match="CHUTE_OIDC_ISSUER must be"):
        Settings(oidc_issuer="https://id.example.com/?x=1", oidc_audience=AUDIENCE)
    local = Settings(oidc_issuer="http://127.0.0.1:9000", oidc_audience=f" {AUDIENCE} ")
    assert (local.oidc_issuer, local.oidc_audience) == ("http://127.0.0.1:9000", AUDIENCE)
    assert Settings().oidc_issuer == ""
    assert Settings().oidc_name_claim == "preferred_username"
