"""Settings of one database (overlap, batch size, onboarding threshold, seed).

The key that signs session cookies is not kept here: see ``rlhfkit/feedback/secretkey.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..db import Setting, write_session
from .common import Invalid

DEFAULT_SETTINGS: dict[str, Any] = {
    "overlap": 2,  # annotators per task, for agreement
    "batch_size": 10,  # tasks handed to an annotator at a time
    "gold_threshold": 0.7,  # mean gold score needed to pass onboarding
    "seed": 0,  # seeds the per-annotator shuffles of responses
    "max_pending_jobs": 16,  # model jobs (chat prompts x models) one user may have waiting
}
# what each setting accepts: (type, minimum, maximum)
_SETTING_RANGES: dict[str, tuple[type, float, float]] = {
    "overlap": (int, 1, 50),
    "batch_size": (int, 1, 1000),
    "gold_threshold": (float, 0.0, 1.0),
    "seed": (int, 0, 2**31 - 1),
    "max_pending_jobs": (int, 1, 1000),
}


def get_settings(s: Session) -> dict[str, Any]:
    out = dict(DEFAULT_SETTINGS)
    for row in s.scalars(sa.select(Setting).where(Setting.key.in_(list(DEFAULT_SETTINGS)))):
        out[row.key] = row.value
    return out


def coerce_setting(key: str, value: Any) -> Any:
    """Validate one setting; raises :class:`Invalid` naming the key."""
    if key not in _SETTING_RANGES:
        raise Invalid(f"unknown setting {key!r} (known: {', '.join(_SETTING_RANGES)})")
    typ, lo, hi = _SETTING_RANGES[key]
    try:
        v = typ(value)
        if typ is int and str(value).strip() not in (str(v), f"{v}.0") and not isinstance(value, int):
            raise ValueError
    except (TypeError, ValueError):
        raise Invalid(f"setting {key!r} must be {typ.__name__}, got {value!r}") from None
    if not lo <= v <= hi:
        raise Invalid(f"setting {key!r} must be between {lo} and {hi}, got {v}")
    return v


def set_settings(engine: sa.Engine, values: Mapping[str, Any]) -> dict[str, Any]:
    clean = {k: coerce_setting(k, v) for k, v in values.items()}
    with write_session(engine) as s, s.begin():
        for k, v in clean.items():
            row = s.get(Setting, k)
            if row is None:
                s.add(Setting(key=k, value=v))
            else:
                row.value = v
    with Session(engine) as s:
        return get_settings(s)
