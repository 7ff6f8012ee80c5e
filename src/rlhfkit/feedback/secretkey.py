"""The key that signs session cookies: from the environment or an owner-only file, never the database.

Whoever holds the key can forge a cookie for any user, admins included, so it must not sit in
the database (which backups, exports and anyone who may read the labels get to see). In order:

1. ``RLHFKIT_SECRET_KEY``: the key itself (at least 32 characters), e.g. from a secret store;
   the way for several machines to share sessions;
2. ``RLHFKIT_SECRET_KEY_FILE``: a file holding it, made (0600, random) if missing;
3. otherwise a file made on first run: ``<database file>.key`` next to an SQLite database, or
   ``$XDG_CONFIG_HOME/rlhfkit/feedback-session.key`` (``~/.config/...``) for PostgreSQL.
   Every process on the machine reads the same file, so ``serve --workers N`` shares sessions.

An in-memory SQLite database gets a random key per process (it lives no longer anyway).
Deleting the key file (and restarting) logs everyone out.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from .db import is_sqlite, sqlite_path

KEY_ENV = "RLHFKIT_SECRET_KEY"
KEY_FILE_ENV = "RLHFKIT_SECRET_KEY_FILE"
MIN_KEY_LENGTH = 32
log = logging.getLogger(__name__)


def default_key_file(db_url: str) -> Path | None:
    """Where the key of ``db_url`` is kept when no environment variable says otherwise."""
    if is_sqlite(db_url):
        path = sqlite_path(db_url)
        return None if path is None else Path(f"{path}.key")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "rlhfkit" / "feedback-session.key"


def session_secret(db_url: str) -> str:
    """The cookie-signing key for the app on ``db_url`` (see the module docstring for the order)."""
    key = os.environ.get(KEY_ENV)
    if key is not None:
        if len(key.strip()) < MIN_KEY_LENGTH:
            raise ValueError(f"{KEY_ENV} must hold at least {MIN_KEY_LENGTH} characters (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        return key.strip()
    path = Path(os.environ[KEY_FILE_ENV]) if os.environ.get(KEY_FILE_ENV) else default_key_file(db_url)
    if path is None:
        return secrets.token_hex(32)
    return read_or_make_key_file(path)


def read_or_make_key_file(path: Path) -> str:
    """The key in ``path``; a new random one written there (0600) if the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            # link, not rename: it fails when another process made the file first, and then
            # everyone uses that one (never a half-written file)
            os.link(tmp, path)
            log.info("made the session key file %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (%s): made it owner-only (0600)", path, oct(mode))
        os.chmod(path, 0o600)
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"{path}: the session key must hold at least {MIN_KEY_LENGTH} characters (delete the file to make a new one)")
    return key
