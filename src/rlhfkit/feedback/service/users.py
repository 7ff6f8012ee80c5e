"""Accounts: create, change a password, log in."""

from __future__ import annotations

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import ROLES, User, utcnow, write_session
from ..security import dummy_verify, hash_password, verify_password
from .common import Conflict, Invalid, NotFound


def create_user(
    engine: sa.Engine, username: str, role: str, password: str, hasher: PasswordHasher | None = None
) -> User:
    username = username.strip()
    if not username or len(username) > 64 or any(c.isspace() for c in username):
        raise Invalid(f"user name must be 1-64 characters without spaces, got {username!r}")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if len(password) < 4:
        raise Invalid("password must have at least 4 characters")
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


def set_password(engine: sa.Engine, username: str, password: str, hasher: PasswordHasher | None = None) -> None:
    if len(password) < 4:
        raise Invalid("password must have at least 4 characters")
    with write_session(engine) as s, s.begin():
        user = s.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user {username!r}")
        user.password_hash = hash_password(password, hasher)


def authenticate(engine: sa.Engine, username: str, password: str) -> User | None:
    with Session(engine, expire_on_commit=False) as s:
        user = s.scalar(sa.select(User).where(User.username == username.strip()))
    if user is None or not user.active:
        dummy_verify(password)
        return None
    return user if verify_password(user.password_hash, password) else None
