"""Brute-force protection of ``POST /login``: failed logins counted per account and per address.

The ``*_failures``-th failure on a key (``user:<name>``, ``addr:<client ip>``) locks it for
``base_lock_s``; each further failure after a lock ends locks it again for twice as long, up to
``max_lock_s``. While a key is locked, logins on it answer 429 with ``Retry-After`` and the
password is not even checked (the right one too: otherwise the lock would only slow guessing
down by the cost of a hash). Failures are forgotten ``forget_after_s`` after the last one; a
successful login clears the account's count (not the address's: one valid account must not
reset an address that is guessing at others).

An account's attempt is counted as a failure *before* the password is checked and taken back
if it was right, so that a burst of concurrent guesses at one account sees its own earlier
guesses (check-then-count would let every request in flight through). An address's failures
are counted after the check: counting in advance would lock out a team behind one address
that logs in at the same moment (50 concurrent good logins in the load test); a burst of
guesses from one address can overshoot its limit by the requests in flight, and then waits
like any other. The counts live in the database so that every server process shares them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..db import LoginThrottle, as_utc, utcnow, write_session


@dataclasses.dataclass(frozen=True)
class LoginPolicy:
    account_failures: int = 5  # failures that lock an account
    address_failures: int = 20  # that lock a client address (a team behind one NAT shares one)
    base_lock_s: float = 30.0  # the first lock; doubles with each further failure
    max_lock_s: float = 900.0  # the longest lock (15 minutes)
    forget_after_s: float = 3600.0  # a key's failures are forgotten this long after the last one

    def limit(self, key: str) -> int:
        return self.account_failures if key.startswith("user:") else self.address_failures

    def lock_s(self, failures: int, limit: int) -> float | None:
        """How long ``failures`` failures lock a key with this ``limit`` (None: not locked)."""
        if failures < limit:
            return None
        return min(self.max_lock_s, self.base_lock_s * 2.0 ** (failures - limit))


def login_keys(username: str, address: str | None) -> tuple[str, ...]:
    # user names are at most 64 printable characters (users.py); longer input cannot be an
    # account. Anything unprintable cannot be one either: it is escaped so that the key can
    # be stored (PostgreSQL refuses NUL, UTF-8 a lone surrogate).
    name = username.strip()[:64]
    if not name.isprintable():
        name = ascii(name)[1:-1][:100]
    keys = [f"user:{name}"]
    if address:
        keys.append(f"addr:{address[:100]}")
    return tuple(keys)


def _row(s, key: str) -> LoginThrottle:
    """The key's row, locked for this transaction (made if missing)."""
    row = s.scalar(sa.select(LoginThrottle).where(LoginThrottle.key == key).with_for_update())
    if row is None:
        try:
            with s.begin_nested():
                row = LoginThrottle(key=key, failures=0)
                s.add(row)
        except IntegrityError:  # PostgreSQL: a concurrent attempt made it first
            row = s.scalar(sa.select(LoginThrottle).where(LoginThrottle.key == key).with_for_update())
    return row


def _count_failure(r: LoginThrottle, now: dt.datetime, policy: LoginPolicy) -> None:
    if r.last_failure_at and (now - as_utc(r.last_failure_at)).total_seconds() > policy.forget_after_s:
        r.failures = 0
    r.failures += 1
    r.last_failure_at = now
    lock = policy.lock_s(r.failures, policy.limit(r.key))
    r.locked_until = None if lock is None else now + dt.timedelta(seconds=lock)


def begin_attempt(engine: sa.Engine, keys: tuple[str, ...], policy: LoginPolicy, now: dt.datetime | None = None) -> int | None:
    """Before the password check: the seconds to wait if a key is locked (then nothing is
    counted); otherwise None, with the attempt counted as a failure of the account in advance."""
    now = now or utcnow()
    with write_session(engine) as s, s.begin():
        addr_rows = s.scalars(sa.select(LoginThrottle).where(LoginThrottle.key.in_([k for k in keys if not k.startswith("user:")]))).all()
        user_rows = [_row(s, k) for k in keys if k.startswith("user:")]
        waits = [(as_utc(r.locked_until) - now).total_seconds() for r in [*user_rows, *addr_rows]
                 if r.locked_until and as_utc(r.locked_until) > now]
        if waits:
            return max(1, math.ceil(max(waits)))
        for r in user_rows:
            _count_failure(r, now, policy)
        # rows of made-up user names would pile up: drop the forgotten ones as we go
        s.execute(sa.delete(LoginThrottle).where(
            LoginThrottle.last_failure_at < now - dt.timedelta(seconds=policy.forget_after_s),
            LoginThrottle.key.not_in(keys),
        ).execution_options(synchronize_session=False))  # no Python-side compare of SQLite's naive times
    return None


def end_attempt(engine: sa.Engine, keys: tuple[str, ...], policy: LoginPolicy, ok: bool, now: dt.datetime | None = None) -> None:
    """After the password check: a success clears the account's count; a failure counts
    against the address (the account's was counted in advance)."""
    now = now or utcnow()
    with write_session(engine) as s, s.begin():
        if ok:
            s.execute(sa.delete(LoginThrottle).where(LoginThrottle.key.in_([k for k in keys if k.startswith("user:")]))
                      .execution_options(synchronize_session=False))
            return
        for key in keys:
            if not key.startswith("user:"):
                _count_failure(_row(s, key), now, policy)
