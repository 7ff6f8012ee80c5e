"""The web app's routes, one ``APIRouter`` per audience; ``app.create_app`` includes them in
this order: ``auth`` (login, logout), ``annotate`` (task pages and their JSON API, onboarding),
``chat`` (an annotator's own prompts), ``admin`` (dashboard, import, users, export, API schema).
What they share (the current user, CSRF, the engine, page rendering) is in ``deps``."""
