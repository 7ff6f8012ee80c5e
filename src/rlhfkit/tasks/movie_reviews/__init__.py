"""Data files of the bundled movie-review continuation task (a package so that the JSONL
files ship inside wheels; see README.md here and ``rlhfkit.tasks.load_task``)."""
