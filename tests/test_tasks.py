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


# ---------------------------------------------------------------------------- a task outside the package

TOY_TASK = '''
import numpy as np

from rlhfkit.tasks import TaskSpec

CALLS = []


class LongerIsBetter:
    """A toy judge: more words win (enough to show the pipeline asks this task's judge)."""

    def __init__(self, task, model, seed):
        self.task, self.model, self.seed = task, model, seed

    def gold_reward(self, prompts, responses):
        CALLS.append(("gold_reward", list(prompts)))
        return np.array([float(len(r.split())) for r in responses])

    def rank(self, prompts, responses, *, flip_prob, rng):
        CALLS.append(("rank", list(prompts)))
        return [sorted(range(len(g)), key=lambda j: -len(g[j].split())) for g in responses]

    def compare(self, prompts, responses_a, responses_b, *, noise=False):
        CALLS.append(("compare", list(prompts)))
        a, b = self.gold_reward(prompts, responses_a), self.gold_reward(prompts, responses_b)
        return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))

    def agreement_report(self, prompts, responses_a, responses_b, rng=None):
        return {"n_items": len(prompts)}


def make_judge(task, model, bf16, seed):
    return LongerIsBetter(task, model, seed)


TASK = TaskSpec(instruction="Say more about:", make_judge=make_judge,
                reward_functions={"words": lambda prompts, responses: [len(r.split()) for r in responses]})
'''


def _toy_task(root: Path, module: str = "task.py", references: bool = True) -> Path:
    root.mkdir(parents=True)
    for split in SPLITS:
        rows = [{"prompt": f"{split} topic {i}"} for i in range(8)]
        if split == "sft":
            rows = [{**r, "completion": f"a few words on {r['prompt']}"} for r in rows]
        if references and split == "eval":
            rows = [{**r, "reference": f"the reference answer {i}"} for i, r in enumerate(rows)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / module).write_text(TOY_TASK, encoding="utf-8")
    return root


def test_task_folder_outside_the_package_loads(tmp_path):
    t = load_task(str(_toy_task(tmp_path / "toy")))
    assert t.name == "toy" and t.root == tmp_path / "toy" and set(t.splits) == set(SPLITS)
    assert t.prompts("eval")[:2] == ["eval topic 0", "eval topic 1"] and t.splits["sft"][0]["completion"]
    assert t.format_prompt(" eval topic 0 ") == "Say more about:\n\neval topic 0"
    assert t.references == {"eval": [f"the reference answer {i}" for i in range(8)]}
    assert t.reward_functions["words"](["p"], ["one two three"]) == [3]
    judge = t.make_judge("tiny", False, 7)
    assert judge.task is t and judge.model == "tiny" and judge.seed == 7
    assert "toy" not in available_tasks()  # only the package's folders are listed
    # an __init__.py defines it as well; relative paths are folders
    t2 = load_task(str(_toy_task(tmp_path / "pkg", module="__init__.py", references=False)))
    assert t2.name == "pkg" and t2.references is None


def test_movie_reviews_defines_its_judge_and_nothing_else(task):
    from rlhfkit.annotators import Panel
    from rlhfkit.tasks import Judge

    assert task.references is None and task.reward_functions == {}
    judge = task.make_judge("tiny", False, 0)  # the initial model loads on first fluency call only
    assert isinstance(judge, Panel) and isinstance(judge, Judge)


def test_task_folder_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="task folder .* does not exist"):
        load_task(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="task.py or __init__.py"):
        load_task(str(tmp_path / "empty"))
    root = _toy_task(tmp_path / "notask")
    (root / "task.py").write_text("INSTRUCTION = 'no spec'\n", encoding="utf-8")
    with pytest.raises(ValueError, match="defines no TASK"):
        load_task(str(root))
    root = _toy_task(tmp_path / "nosplit")
    (root / "unlabeled.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"unlabeled.jsonl: missing split file of task 'nosplit'"):
        load_task(str(root))
    root = _toy_task(tmp_path / "nojudge")
    (root / "task.py").write_text("from rlhfkit.tasks import TaskSpec\nTASK = TaskSpec(instruction='x')\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'nojudge' .* defines no judge"):
        load_task(str(root)).make_judge("tiny", False, 0)
    p = tmp_path / "eval.jsonl"
    p.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r'eval.jsonl:2: "reference" must be on every line'):
        read_split(p, with_completion=False)


def test_pipeline_uses_the_tasks_judge(tmp_path):
    """The eval stage on a task folder outside the package: its toy judge (more words win) scores
    every sample and decides every comparison, on the raw prompts, not the chat framing."""
    import shutil
    import sys

    from rlhfkit.models import tiny_dir
    from rlhfkit.pipeline.config import PipelineConfig, preset_overrides
    from rlhfkit.pipeline.stages import Context, run_pipeline

    root = _toy_task(tmp_path / "toy")
    run = tmp_path / "run"
    shutil.copytree(tiny_dir(), run / "sft")
    cfg = PipelineConfig(**{**preset_overrides("smoke"), "task": str(root), "out": str(run), "stages": "eval",
                            "eval_prompts": 4, "eval_samples": 1})
    ctx = Context(cfg, progress=False)
    assert type(ctx.judge).__name__ == "LongerIsBetter"
    assert ctx.gold(ctx.frame(["eval topic 0"]), ["two words"]).tolist() == [2.0]
    run_pipeline(cfg, progress=False, echo=lambda *_: None)
    calls = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == str(root / "task.py")).CALLS
    assert {name for name, _ in calls} >= {"gold_reward", "compare"}
    assert all(p.startswith("eval topic") for name, prompts in calls for p in prompts)  # openings, not framings
    for r in map(json.loads, (run / "samples" / "sft.jsonl").read_text().splitlines()):
        assert r["gold"] == len(r["response"].split())
        ref = len(r["reference_response"].split())
        assert r["outcome"] == (1.0 if r["gold"] > ref else 0.0 if r["gold"] < ref else 0.5)
