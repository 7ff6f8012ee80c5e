"""Passwords (argon2id via argon2-cffi) and CSRF tokens.

CSRF: each browser session holds a random token (in the signed session cookie); every
state-changing request must echo it, as the hidden form field ``csrf_token`` or the
header ``X-CSRF-Token``. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MIN_PASSWORD_LENGTH = 10  # checked when a password is set (users.py), not at login


def hash_password(password: str, hasher: PasswordHasher | None = None) -> str:
    """argon2id hash of ``password`` (the library's default cost unless ``hasher`` is given)."""
    if not password:
        raise ValueError("password must not be empty")
    return (hasher or PasswordHasher()).hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; the cost parameters come from the hash itself."""
    try:
        return PasswordHasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# A hash of nothing anyone can type: verifying against it when the user does not exist
# costs the same time as a real check, so response times do not reveal user names.
_DUMMY_HASH = None


def dummy_verify(password: str) -> None:
    global _DUMMY_HASH  # a cache, not state: computed once, never changes meaning
    if _DUMMY_HASH is None:
        _DUMMY_HASH = PasswordHasher().hash(secrets.token_hex(16))
    verify_password(_DUMMY_HASH, password)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
