"""Accounts: create, change a password, log in, log out everywhere."""

from __future__ import annotations

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import ROLES, User, utcnow, write_session
from ..security import MIN_PASSWORD_LENGTH, dummy_verify, hash_password, verify_password
from .common import Conflict, Invalid, NotFound, check_text


def create_user(
    engine: sa.Engine, username: str, role: str, password: str, hasher: PasswordHasher | None = None
) -> User:
    username = check_user_name(username)
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    _check_password(password)
    pw_hash = hash_password(password, hasher)
    try:
        with write_session(engine) as s, s.begin():
            user = User(username=username, role=role, password_hash=pw_hash, active=True, created_at=utcnow())
            if role == "admin":
                user.onboarded_at = utcnow()  # admins do not annotate for the record
            s.add(user)
    except IntegrityError:
        raise Conflict(f"user {username!r} already exists") from None
    return user


def check_user_name(username: str) -> str:
    """The stripped name, or :class:`Invalid`: 1-64 printable characters, no spaces.

    Names appear on every page, in exports and in ``user list``: a lone surrogate (argv bytes
    that are not UTF-8) broke them all, NUL is refused by PostgreSQL, and control or bidi
    characters (ESC, U+202E) rewrite a terminal or disguise one name as another.
    """
    username = check_text(username, "user name", 1000).strip()
    if not username or len(username) > 64 or not all(c.isprintable() and not c.isspace() for c in username):
        raise Invalid(f"user name must be 1-64 printable characters without spaces, got {username!r:.80}")
    return username


def _check_password(password: str) -> None:
    # length is what makes a password hard to guess (NIST SP 800-63B); no composition rules
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password must have at least {MIN_PASSWORD_LENGTH} characters, got {len(password)}")


def set_password(engine: sa.Engine, username: str, password: str, hasher: PasswordHasher | None = None) -> None:
    """A new password; every session of the user ends (whoever had the old one is out)."""
    _check_password(password)
    username = check_user_name(username)  # no lookup with a name no database can hold
    with write_session(engine) as s, s.begin():
        user = s.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user {username!r}")
        user.password_hash = hash_password(password, hasher)
        user.session_version += 1


def end_sessions(engine: sa.Engine, user_id: int) -> None:
    """End every session of the user: cookies carry the version they were made with."""
    with write_session(engine) as s, s.begin():
        s.execute(sa.update(User).where(User.id == user_id).values(session_version=User.session_version + 1))


def authenticate(engine: sa.Engine, username: str, password: str) -> User | None:
    try:
        username = check_user_name(username)
    except Invalid:  # cannot be an account (and PostgreSQL would refuse a NUL in the query)
        dummy_verify(password)
        return None
    with Session(engine, expire_on_commit=False) as s:
        user = s.scalar(sa.select(User).where(User.username == username))
    if user is None or not user.active:
        dummy_verify(password)
        return None
    return user if verify_password(user.password_hash, password) else None
