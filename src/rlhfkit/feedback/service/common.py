"""What every part of the service shares: its errors, each with the HTTP status the web
app answers with, and the limit on submitted text."""

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
