"""Fixtures several test files share (trained once per session)."""

from __future__ import annotations

import pytest

from toy import say_words_prompts, train_good_bad_sft


@pytest.fixture(scope="session")
def good_bad_sft(tmp_path_factory):
    """The tiny model taught to write random strings of 'good' and 'bad' (tests/toy.py); read-only for tests."""
    return train_good_bad_sft(tmp_path_factory.mktemp("good_bad_sft"))


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    """64 'Say words i.' prompts as JSONL."""
    return say_words_prompts(tmp_path_factory.mktemp("toy_prompts") / "prompts.jsonl")
