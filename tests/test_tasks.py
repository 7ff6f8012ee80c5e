"""The bundled movie-review task: counts, distinctness, disjoint splits, determinism, validity."""

import importlib.util
import json
from pathlib import Path

import pytest

from rlhfkit.tasks import SPLITS, Task, available_tasks, load_task, read_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("movie_reviews")


def _build_module():
    spec = importlib.util.spec_from_file_location("build_movie_reviews", ROOT / "scripts" / "build_movie_reviews.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_task_api(task):
    assert task.name == "movie_reviews" and "movie_reviews" in available_tasks()
    assert set(task.splits) == set(SPLITS)
    for split in SPLITS:
        assert task.path(split).is_file() and task.path(split).name == f"{split}.jsonl"
    msg = task.format_prompt("  The film opens on a beach.  ")
    assert msg.startswith(task.instruction) and msg.endswith("The film opens on a beach.")
    assert "one or two sentences" in task.instruction
    with pytest.raises(KeyError):
        task.path("train")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("summaries")


def test_counts(task):
    n = {s: len(rows) for s, rows in task.splits.items()}
    assert n["sft"] >= 150 and n["eval"] >= 200 and n["preference"] >= 150 and n["unlabeled"] >= 150
    assert sum(n.values()) >= 600


def test_distinct_and_disjoint(task):
    all_prompts = [p for s in SPLITS for p in task.prompts(s)]
    assert len(all_prompts) == len(set(all_prompts))
    completions = [r["completion"] for r in task.splits["sft"]]
    assert len(completions) == len(set(completions))


def test_every_line_valid(task):
    for split in SPLITS:
        for i, line in enumerate(task.path(split).read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(line)
            expected = {"prompt", "completion"} if split == "sft" else {"prompt"}
            assert set(row) == expected, f"{split}.jsonl:{i}"
            assert 10 <= len(row["prompt"].split()) <= 40, f"{split}.jsonl:{i}"
            assert "{" not in line.replace('{"', "").replace("}\n", ""), f"{split}.jsonl:{i}: template slot"
            if split == "sft":
                assert 15 <= len(row["completion"].split()) <= 40, f"{split}.jsonl:{i}"


def test_variety(task):
    prompts = [p for s in SPLITS for p in task.prompts(s)]
    first_words = {p.split()[0] for p in prompts}
    assert len(first_words) >= 30
    # a real share of the openings leans negative, so that a positive continuation is a choice
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    scores = [sia.polarity_scores(p)["compound"] for p in prompts]
    assert sum(s < -0.05 for s in scores) / len(scores) > 0.15
    demo_scores = [sia.polarity_scores(r["completion"])["compound"] for r in task.splits["sft"]]
    assert sum(s > 0.05 for s in demo_scores) / len(demo_scores) > 0.9


def test_build_is_deterministic_and_matches_shipped_files(task):
    mod = _build_module()
    a, b = mod.build(seed=0), mod.build(seed=0)
    assert a == b
    for split in SPLITS:
        assert mod.to_jsonl(a[split]) == task.path(split).read_text(encoding="utf-8"), split
    assert mod.build(seed=1)["eval"] != a["eval"]


def test_read_split_errors_name_file_line_field(tmp_path):
    p = tmp_path / "sft.jsonl"
    p.write_text('{"prompt": "ok", "completion": "fine"}\n{"prompt": "ok"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r'sft.jsonl:2: "completion"'):
        read_split(p, with_completion=True)
    p.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sft.jsonl:1: not valid JSON"):
        read_split(p, with_completion=False)
