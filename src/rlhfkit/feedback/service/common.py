"""What every part of the service shares: its errors, each with the HTTP status the web
app answers with, and the check and limit on submitted text."""

from __future__ import annotations

MAX_TEXT = 100_000  # characters in a prompt, response or note


class FeedbackError(Exception):
    """An error with an HTTP status and a message meant for the person who caused it."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(FeedbackError):
    status_code = 404


class Forbidden(FeedbackError):
    status_code = 403


class Invalid(FeedbackError):
    status_code = 422


class Conflict(FeedbackError):
    status_code = 409


class TooMany(FeedbackError):
    """A per-user limit reached (e.g. model jobs waiting): try again once some are done."""

    status_code = 429


def show(value: object, limit: int = 40) -> str:
    """A short repr of a submitted value for an error message (a 5000-digit int has no repr)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"an integer of more than {limit} digits"
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(value: str, what: str, max_len: int = MAX_TEXT) -> str:
    """``value`` if it is text that every database and export can hold; :class:`Invalid` otherwise.

    A lone surrogate (JSON ``"\\ud83d"``) cannot be encoded as UTF-8, so a stored one broke every
    later page and export that showed it; PostgreSQL refuses NUL in text columns.
    """
    if not isinstance(value, str):
        raise Invalid(f"{what} must be text, got {type(value).__name__}")
    if len(value) > max_len:
        raise Invalid(f"{what} is longer than {max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{what} is not valid text (a lone UTF-16 surrogate)") from None
    if "\x00" in value:
        raise Invalid(f"{what} contains a NUL character")
    return value
