"""Human feedback collection: the annotation web app, its CLI and model worker.

``rlhfkit feedback serve|user|import|export|worker|settings`` (see ``cli.py``); the app is
``rlhfkit.feedback.app.create_app``. Never imports torch (only the worker does, lazily).
Nothing runs on import.
"""
