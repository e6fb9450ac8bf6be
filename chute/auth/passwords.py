"""Password hashing: argon2id, the only form in which a password is kept."""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's argon2id setting (19 MiB, 2 passes, 1 lane). The library's default takes
# 64 MiB per hash, which would make each sign-in the largest allocation an API
# process ever makes, bigger than all its upload buffers together.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the user does not exist, so a wrong name costs as long as
    # a wrong password and the answer time does not tell which names exist.
    return _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """None (no such user) or "" (a user without a password): False, after as long a
    check as a wrong password takes."""
    try:
        matches = _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return matches and bool(password_hash)


def random_password() -> str:
    return secrets.token_urlsafe(18)
