"""What the feedback app does, as functions of a database engine/session.

The web routes, the CLI and the worker are thin shells over these functions, and call them
as ``svc.<name>`` after ``from . import service as svc``. This file is that API: it gathers
the public names of the modules below, one per part of the job, so that callers need not
know which module holds what. Every function that writes opens exactly one transaction
(``write_session``), so that a submission is stored whole or not at all.

* ``common``      errors (each with its HTTP status), the text check and limit;
* ``settings``    per-database settings;
* ``users``       accounts, login, ending a user's sessions;
* ``throttle``    brute-force protection of the login (per account and per address);
* ``tasks``       tasks JSONL parsing, task creation, sampling requests;
* ``assignment``  per-annotator shuffles, batch allocation, the next task;
* ``blind``       the opaque response ids annotators see instead of global ones;
* ``labels``      answer validation and storage (the stored payload shapes are described there);
* ``onboarding``  gold questions and the onboarding attempt;
* ``chat_jobs``   an annotator's own prompts and the model workers' jobs;
* ``loop``        an iterated-RLHF loop's round tasks, labels and live state (``rlhfkit loop``).
"""

from __future__ import annotations

from .assignment import (
    allocate_batch,
    display_order,
    first_pending,
    get_assignment,
    letters,
    mark_started,
    next_assignment,
    progress,
    seen_order,
)
from .blind import blind_key, map_payload, opaque_ids
from .chat_jobs import (
    active_models,
    check_model_names,
    claim_jobs,
    create_chat_task,
    ensure_display_order,
    finish_job,
    heartbeat,
    served_models,
)
from .common import MAX_TEXT, Conflict, FeedbackError, Forbidden, Invalid, NotFound, TooMany, check_text
from .labels import (
    FLAG_KEYS,
    FLAGS,
    RATING_MAX,
    RATING_MIN,
    SubmitResult,
    payload_from_form,
    skip_task,
    submit_label,
    validate_payload,
)
from .loop import LOOP_STATE_KEY, add_round_tasks, get_loop_state, labels_in, round_preferences, set_loop_state
from .onboarding import (
    OnboardingState,
    finish_onboarding,
    gold_answer_payload,
    gold_score,
    next_onboarding,
    onboarding_state,
    start_onboarding,
)
from .settings import DEFAULT_SETTINGS, coerce_setting, get_settings, set_settings
from .tasks import ImportFileError, TaskSpec, add_tasks, parse_import_lines, request_samples
from .throttle import LoginPolicy
from .users import authenticate, create_user, end_sessions, set_password

__all__ = [
    "TooMany", "blind_key", "check_model_names", "check_text", "first_pending", "letters", "map_payload", "opaque_ids",
    "seen_order", "served_models",
    "DEFAULT_SETTINGS", "FLAGS", "FLAG_KEYS", "MAX_TEXT", "RATING_MAX", "RATING_MIN",
    "Conflict", "FeedbackError", "Forbidden", "ImportFileError", "Invalid", "LoginPolicy", "NotFound",
    "OnboardingState", "SubmitResult", "TaskSpec",
    "active_models", "add_tasks", "allocate_batch", "authenticate", "claim_jobs", "coerce_setting",
    "create_chat_task", "create_user", "display_order", "end_sessions", "ensure_display_order", "finish_job",
    "finish_onboarding", "get_assignment", "get_settings", "gold_answer_payload", "gold_score",
    "heartbeat", "mark_started", "next_assignment", "next_onboarding", "onboarding_state",
    "parse_import_lines", "payload_from_form", "progress", "request_samples",
    "set_password", "set_settings", "skip_task", "start_onboarding", "submit_label", "validate_payload",
    "LOOP_STATE_KEY", "add_round_tasks", "get_loop_state", "labels_in", "round_preferences", "set_loop_state",
]
