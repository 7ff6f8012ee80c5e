"""rlhfkit loop: iterated RLHF with the simulated judge and with the feedback app, on tests/toy.py's good/bad
words: a tiny model taught to write mostly 'bad' (one word in four 'good'), and as the gold either the share of
'good' (the app tests) or a count of 'good' peaked at 2, which the policy overshoots (the learning test)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from toy import WORDS, write_jsonl

# Two or more 'good' among the SFT model's answers is rare (~1 in 7, 3 or more ~1 in 7 of those), so the round-1
# reward model, trained on SFT samples, learns "more 'good' is better"; the round-1 policy chases that past 2,
# where the gold turns down: on its samples the round-1 reward model is wrong (below chance), and the round-2
# reward model, trained on that policy's labelled samples too, learns the turn. A real distribution shift.
PEAKED_TASK_PY = """from rlhfkit.tasks import TaskSpec
from rlhfkit.tasks.judge import RewardJudge


def peaked(prompts, responses):
    return [-abs(sum(w == 'good' for w in r.split()) - 2) for r in responses]


TASK = TaskSpec(instruction='Say words.', make_judge=lambda task, model, bf16, seed: RewardJudge(peaked, "count of 'good' peaked at 2"))
"""

TASK_PY = """from rlhfkit.tasks import TaskSpec
from rlhfkit.tasks.judge import RewardJudge


def good(prompts, responses):
    return [sum(w == 'good' for w in r.split()) / max(len(r.split()), 1) for r in responses]


TASK = TaskSpec(instruction='Say words.', make_judge=lambda task, model, bf16, seed: RewardJudge(good, 'share of good'))
"""


def good_bad_task(root: Path, task_py: str = TASK_PY) -> Path:
    """The toy as a task folder: 'Say words i.' prompts in every split, the judge ``task_py``'s (the share of 'good')."""
    import random

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    write_jsonl(root / "sft.jsonl", [{"prompt": f"Say words {i}.", "completion": " ".join(rng.choice(WORDS) for _ in range(8))}
                                     for i in range(16)])
    for split, n in (("preference", 64), ("unlabeled", 64), ("eval", 16)):
        write_jsonl(root / f"{split}.jsonl", [{"prompt": f"Say words {split} {i}."} for i in range(n)])
    (root / "task.py").write_text(task_py)
    return root


@pytest.fixture(scope="module")
def mostly_bad_sft(tmp_path_factory) -> Path:
    """The tiny model taught to write 8 words, each 'good' with probability 1/4 (as tests/toy.py's, otherwise)."""
    import random

    from rlhfkit.config import SFTConfig
    from rlhfkit.train.sft import train_sft

    d = tmp_path_factory.mktemp("mostly_bad_sft")
    rng = random.Random(0)
    rows = [{"prompt": f"Say words {i}.", "completion": " ".join("good" if rng.random() < 0.25 else "bad" for _ in range(8))}
            for i in range(64)]
    return train_sft(SFTConfig(model="tiny", data=str(write_jsonl(d / "sft.jsonl", rows)), out=str(d / "run"), max_steps=40,
                               batch_size=16, lr=1e-2, mixed_precision="no"), progress=False)  # the same toy on every CPU


def toy_pipeline(tmp_path: Path, task_py: str = TASK_PY, **sections) -> Path:
    """A pipeline config for the toy: the tiny model, short answers, no label noise, RLOO as in test_grpo."""
    cfg = {"model": "tiny", "task": str(good_bad_task(tmp_path / "goodbad", task_py)), "bf16": False, "max_new_tokens": 8,
           "system_prompt": None, "gen_batch_size": 64, "pref_k": 4, "flip_prob": 0.0,
           "reward": {"epochs": 4.0, "lr": 3e-4, "batch_size": 4, "eval_fraction": 0.0},
           "rloo": {"steps": 6, "batch_size": 4, "samples_per_prompt": 4, "lr": 2e-3, "kl_coef": 0.1}, **sections}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def loop_cfg(tmp_path, sft, **kw):
    from rlhfkit.loop import LoopConfig

    # toy_pipeline only when no config is given: it rewrites tmp_path's task folder and pipeline.yaml
    config = kw.pop("pipeline_config", None) or str(toy_pipeline(tmp_path))
    base = dict(out=str(tmp_path / "loop"), pipeline_config=config, pipeline_preset="", sft=str(sft),
                rounds=2, method="rloo", prefs_per_round=16, eval_prompts=8, eval_samples=4)
    return LoopConfig(**{**base, **kw})


def test_two_rounds_with_the_simulated_judge(tmp_path, mostly_bad_sft):
    from rlhfkit.loop import run_loop

    # 8 samples per eval prompt: ~160 gold-labelled pairs (4 gave ~38), so that one or two pairs do not decide
    peaked = toy_pipeline(tmp_path / "peaked", PEAKED_TASK_PY)
    res = run_loop(loop_cfg(tmp_path, mostly_bad_sft, pipeline_config=str(peaked), eval_samples=8), progress=False, echo=print)
    out = tmp_path / "loop"
    rows = [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(res["rounds"]))
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["preferences_trained_on"] == 16 and rows[2]["preferences_trained_on"] == 32  # old + new
    for r in rows[1:]:
        assert {"gold", "proxy", "kl", "rm_accuracy", "rm_accuracy_on_previous_policy"} <= set(r)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # SFT against itself
    # the refreshed reward model, trained on the first policy's labelled samples too, orders that policy's fresh
    # samples (the eval prompts: never labelled) much better than the reward model the policy was trained against,
    # which, having seen few answers past the gold's peak, ranks them the wrong way round
    print("round 1 RM on pi_1's samples", rows[1]["rm_accuracy"], "round 2 RM on them", rows[2]["rm_accuracy_on_previous_policy"],
          "pairs", rows[1]["rm_pairs"])
    assert rows[1]["rm_accuracy"] < 0.5
    assert rows[2]["rm_accuracy_on_previous_policy"] > rows[1]["rm_accuracy"] + 0.2
    assert (out / "loop.png").stat().st_size > 0
    state = json.loads((out / "loop_state.json").read_text())
    assert state["status"] == "done" and state["round"] == 2 and len(state["curves"]) == 3


def _annotator(engine, name="ann"):
    from argon2 import PasswordHasher
    from feedback.conftest import PASSWORD

    from rlhfkit.feedback import service as svc
    from rlhfkit.feedback.db import User, utcnow, write_session

    u = svc.create_user(engine, name, "annotator", PASSWORD, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with write_session(engine) as s, s.begin():
        s.get(User, u.id).onboarded_at = utcnow()
    return u


def _label_in_background(engine, user, stop: threading.Event, seen: list | None = None) -> threading.Thread:
    """A person in the app: takes the next task through the service layer and ranks it by the share of 'good'
    (the tasks it is shown, in order, go to ``seen``)."""
    from sqlalchemy.orm import Session

    from rlhfkit.feedback import service as svc
    from rlhfkit.feedback.db import Task

    def work():
        while not stop.is_set():
            a = svc.next_assignment(engine, user)
            if a is None:
                time.sleep(0.05)
                continue
            with Session(engine) as s:
                task = s.get(Task, a.task_id)
                good = {r.id: sum(w == "good" for w in r.text.split()) / max(len(r.text.split()), 1) for r in task.responses}
            if seen is not None:
                seen.append(a.task_id)
            tiers = [[rid] for rid in sorted(good, key=lambda i: -good[i])]
            svc.submit_label(engine, user, a.task_id, {"tiers": tiers})

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def _app_cfg(tmp_path, sft, db, reward=None, **kw):
    (tmp_path / "cheap").mkdir()
    cheap = toy_pipeline(tmp_path / "cheap", reward={"max_steps": 2, "lr": 1e-3, "batch_size": 4, "eval_fraction": 0.0, **(reward or {})},
                         rloo={"steps": 1, "batch_size": 4, "samples_per_prompt": 2, "lr": 1e-3})
    return loop_cfg(tmp_path, sft, **{**dict(pipeline_config=str(cheap), rounds=1, prefs_per_round=4, eval_prompts=2,
                                             eval_samples=2, feedback_db=db, poll=0.05), **kw})


@pytest.fixture(scope="module")
def app_run(tmp_path_factory, mostly_bad_sft):
    """One loop run in app mode shared by the tests below: 2 rounds, a person labelling in the background, an
    ensemble of 2 reward models and active learning (round 2 labels the 4 of 8 candidate groups the round-1
    ensemble disagrees on most); smoke sizes."""
    from rlhfkit.feedback.app import create_app
    from rlhfkit.loop import run_loop

    tmp_path = tmp_path_factory.mktemp("loop_app")
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    app = create_app(db)
    engine = app.state.engine
    user, stop, seen = _annotator(engine), threading.Event(), []
    worker = _label_in_background(engine, user, stop, seen)
    try:
        res = run_loop(_app_cfg(tmp_path, mostly_bad_sft, db, reward={"ensemble": 2}, rounds=2, timeout=120.0,
                                active_learning=True, pool_factor=2), progress=False, echo=print)
    finally:
        stop.set()
        worker.join(5)
    yield {"app": app, "engine": engine, "res": res, "out": tmp_path / "loop", "seen": seen}
    engine.dispose()


def test_app_mode_creates_tasks_and_goes_on_when_the_labels_are_in(app_run):
    from rlhfkit.feedback import service as svc

    app, engine, res, out = app_run["app"], app_run["engine"], app_run["res"], app_run["out"]
    for r in (1, 2):
        new = [json.loads(l) for l in (out / f"round-{r}" / "new_preferences.jsonl").read_text().splitlines()]
        assert new and all(x["annotator"] == "ann" and x["round"] == r for x in new)  # people's pairs, not the panel's
        assert res["rounds"][r]["new_preferences"] == len(new)
    assert res["rounds"][2]["preferences_trained_on"] == res["rounds"][1]["new_preferences"] + res["rounds"][2]["new_preferences"]
    state = svc.get_loop_state(engine)
    assert state["status"] == "done" and state["round"] == 2 and len(state["curves"]) == 3
    assert state["labels"] == "feedback app"
    # the admin page shows the loop's state, to admins only
    from feedback.conftest import Client, add_user

    add_user(engine, "boss", "admin")
    admin = Client(app, "boss")
    page = admin.get("/admin/loop")
    assert page.status_code == 200 and 'http-equiv="refresh"' in page.text
    assert 'id="loop-round">2 / 2<' in page.text and 'id="loop-status">done<' in page.text and "<polyline" in page.text
    assert admin.get("/admin/loop.json").json()["state"]["curves"][2]["gold"] == pytest.approx(res["rounds"][2]["gold"])
    assert Client(app, "ann").get("/admin/loop.json").status_code == 403


def _disagreement(scorer, prompt: str, responses: list[str]) -> float:
    """The mean over the group's pairs of the std over members of the score gap, recomputed in numpy from
    each member's scores (not through rank_by_disagreement)."""
    import itertools

    import numpy as np

    s = scorer.member_scores([prompt] * len(responses), responses).double().numpy()
    return float(np.mean([np.std(s[i] - s[j]) for i, j in itertools.combinations(range(len(responses)), 2)]))


def test_active_learning_shows_the_most_disagreed_groups_first(app_run):
    """Round 2 draws 8 candidate groups from pi_1; the app gets the 4 the round-1 ensemble disagrees on most,
    most-disagreed first, and the person is shown them in that order."""
    from sqlalchemy.orm import Session

    from rlhfkit.feedback.db import Task
    from rlhfkit.scoring import EnsembleScorer

    out = app_run["out"]
    assert not (out / "round-1" / "candidates.jsonl").exists()  # round 1 has no ensemble yet: no choice made
    pool = [json.loads(l) for l in (out / "round-2" / "candidates.jsonl").read_text().splitlines()]
    assert len(pool) == 8 and sum(c["labelled"] for c in pool) == 4
    ensemble = EnsembleScorer.load(out / "round-1" / "reward", center=True)
    for c in pool:
        assert c["disagreement"] == pytest.approx(_disagreement(ensemble, c["prompt"], c["responses"]), rel=1e-4, abs=1e-6)
    ranked = sorted(pool, key=lambda c: c["rank"])
    values = [c["disagreement"] for c in ranked]
    print("round-2 candidates' disagreement, most first:", [round(v, 4) for v in values])
    assert values == sorted(values, reverse=True) and values[0] > values[-1]  # not all alike: the order means something
    assert all(c["labelled"] == (c["rank"] < 4) for c in pool)
    with Session(app_run["engine"]) as s:
        tasks = {t.id: t for t in s.query(Task).all()}
        by_round = {r: sorted(i for i, t in tasks.items() if t.meta["loop_round"] == r) for r in (1, 2)}
        created = [(tasks[i].prompt, [x.text for x in tasks[i].responses]) for i in by_round[2]]
    assert created == [(c["prompt"], c["responses"]) for c in ranked[:4]]  # the most disagreed, in that order
    shown = [i for i in app_run["seen"] if i in by_round[2]]
    assert shown == by_round[2]  # the person labelled them most-disagreed first


def test_app_mode_times_out_cleanly(tmp_path, mostly_bad_sft):
    from rlhfkit.feedback import service as svc
    from rlhfkit.feedback.db import make_engine
    from rlhfkit.loop import run_loop
    from rlhfkit.loop.collect import LabelTimeout

    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    with pytest.raises(LabelTimeout, match=r"round 1: 0 of 4 labels came in within --timeout 0.2 s"):
        run_loop(_app_cfg(tmp_path, mostly_bad_sft, db, timeout=0.2), progress=False, echo=print)
    engine = make_engine(db)
    state = svc.get_loop_state(engine)
    assert state["status"] == "timed_out" and state["labels_in"] == 0 and state["labels_needed"] == 4
    assert json.loads((tmp_path / "loop" / "loop_state.json").read_text())["status"] == "timed_out"
    assert not (tmp_path / "loop" / "round-1" / "reward").exists()  # nothing trained on missing labels
    engine.dispose()


def test_label_ahead_posts_the_next_round_before_the_policy_trains(tmp_path, mostly_bad_sft, monkeypatch):
    """With label_ahead, round 2's tasks (samples of the policy round 1 started from: SFT) are in the app before
    round 1's reward model and policy train, so people label while they do. (Without it they come from pi_1,
    after it is trained: the app_run tests.)"""
    from sqlalchemy.orm import Session

    import rlhfkit.loop.run as loop_run
    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.db import Task

    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    engine = create_app(db).state.engine

    def rounds_in_app() -> list[int]:
        with Session(engine) as s:
            return sorted({t.meta["loop_round"] for t in s.query(Task).all()})

    seen_at = {}
    real_rm, real_policy = loop_run.train_rm, loop_run.train_policy

    def train_rm(ctx, rows, reference, sft, out, progress):
        seen_at.setdefault(f"reward {out.parent.name}", rounds_in_app())
        return real_rm(ctx, rows, reference, sft, out, progress)

    def train_policy(ctx, method, init, reward_dir, out, scale, progress):
        seen_at.setdefault(f"policy {out.parent.name}", rounds_in_app())
        return real_policy(ctx, method, init, reward_dir, out, scale, progress)

    monkeypatch.setattr(loop_run, "train_rm", train_rm)
    monkeypatch.setattr(loop_run, "train_policy", train_policy)
    stop = threading.Event()
    worker = _label_in_background(engine, _annotator(engine), stop)
    try:
        res = loop_run.run_loop(_app_cfg(tmp_path, mostly_bad_sft, db, rounds=2, timeout=120.0, label_ahead=True),
                                progress=False, echo=print)
    finally:
        stop.set()
        worker.join(5)
    with Session(engine) as s:
        sources = {t.meta["loop_round"]: {r.source for r in t.responses} for t in s.query(Task).all()}
    engine.dispose()
    assert seen_at["reward round-1"] == [1, 2] and seen_at["policy round-1"] == [1, 2]
    assert [r["labels_on_policy_round"] for r in res["rounds"][1:]] == [0, 0]  # one round stale
    assert sources == {1: {"sft"}, 2: {"sft"}}
