"""Migrations, import parsing, export, human win-rates, the CLI; no torch in the web app."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from rlhfkit.feedback import service as svc
from rlhfkit.feedback.cli import feedback_app
from rlhfkit.feedback.db import Base, Label, make_engine, migrate
from rlhfkit.feedback.winrate import human_winrates, winrates_from_records

from .conftest import FAST_HASHER, RANKING_TASK, RATING_TASK, add_user, import_tasks

TABLES = {"users", "tasks", "responses", "assignments", "labels", "jobs", "workers", "settings", "login_throttle", "alembic_version"}


def test_fresh_db_gets_schema_and_migrating_twice_is_a_noop(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rlhfkit.feedback.db import current_revision

    engine = make_engine(db_url)
    assert set(sa.inspect(engine).get_table_names()) == set()
    migrate(engine)
    assert set(sa.inspect(engine).get_table_names()) == TABLES
    rev = current_revision(engine)
    from alembic.script import ScriptDirectory

    from rlhfkit.feedback.db import alembic_config

    assert rev == ScriptDirectory.from_config(alembic_config()).get_current_head()  # the newest migration
    add_user(engine, "ann")
    migrate(engine)  # again: nothing changes, nothing lost
    assert current_revision(engine) == rev
    assert set(sa.inspect(engine).get_table_names()) == TABLES
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM users")) == 1
        # the models and the migrations describe the same schema
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url):
    engine = make_engine(sqlite_url)
    migrate(engine)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_rating_flags_one_vocabulary_and_legacy_names(sqlite_url):
    """The form's flags are the shared vocabulary; the panel's old short names are accepted and stored
    under the shared name (labels already stored use the form's names, which did not change)."""
    from rlhfkit.rating_flags import FLAG_NAMES, FLAGS, canonical_flag

    assert svc.FLAGS == FLAGS and svc.FLAG_KEYS == FLAG_NAMES
    assert canonical_flag("sexual") == "sexual_content" and canonical_flag("violent_content") == "violent_content"
    assert canonical_flag("nonsense") is None
    engine = make_engine(sqlite_url)
    migrate(engine)
    svc.set_settings(engine, {"overlap": 1})
    u = add_user(engine, "ann")
    (rt,) = import_tasks(engine, [RATING_TASK])
    svc.allocate_batch(engine, u)
    with Session(engine) as s:
        x, y = [r.id for r in svc.get_assignment(s, u, rt).task.responses]
    with pytest.raises(svc.Invalid, match="unknown flag"):
        _label(engine, u, rt, {"ratings": [{"response_id": x, "score": 7, "flags": ["sexy"]}, {"response_id": y, "score": 2}]})
    _label(engine, u, rt, {"ratings": [{"response_id": x, "score": 7, "flags": ["violent", "sexual_content", "sexual"]},
                                       {"response_id": y, "score": 2}]})
    with Session(engine) as s:
        stored = s.scalars(sa.select(Label)).one().payload["ratings"]
    assert next(it for it in stored if it["response_id"] == x)["flags"] == ["sexual_content", "violent_content"]
    engine.dispose()


def test_web_app_and_cli_never_import_torch():
    code = (
        "import sys\n"
        "import rlhfkit.feedback, rlhfkit.feedback.app, rlhfkit.feedback.cli, rlhfkit.feedback.worker\n"
        "import rlhfkit.feedback.stats, rlhfkit.feedback.export, rlhfkit.feedback.winrate, rlhfkit.feedback.asgi\n"
        "from rlhfkit.feedback.app import create_app\n"
        "create_app('sqlite:///' + sys.argv[1])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-c", code, f"{d}/x.db"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- import parsing


def test_import_formats():
    lines = [
        json.dumps({"prompt": "p1", "responses": ["a", "b"], "sources": ["s1", "s2"], "kind": "ranking"}),
        "",
        json.dumps({"prompt": "p2", "response": "x", "source": "ppo", "sample": 0}),
        json.dumps({"prompt": "p2", "response": "y", "source": "ppo", "sample": 1}),
        json.dumps({"prompt": "p2", "response": "z", "source": "sft", "sample": 0}),
        json.dumps({"prompt": "p3"}),
    ]
    specs = svc.parse_import_lines(lines, default_kind="pairwise", reference="sft")
    assert [(s.kind, s.prompt) for s in specs] == [("ranking", "p1"), ("pairwise", "p2"), ("pairwise", "p2"), ("pairwise", "p3")]
    assert specs[0].responses == [("a", "s1", {}), ("b", "s2", {})]
    # generate output grouped by prompt, then split into method-vs-reference pairs
    assert [[r[:2] for r in s.responses] for s in specs[1:3]] == [[("x", "ppo"), ("z", "sft")], [("y", "ppo"), ("z", "sft")]]
    assert specs[1].reference_source == "sft"
    assert specs[3].responses == []  # waits for the worker


@pytest.mark.parametrize("line, msg", [
    ("{not json", "f.jsonl:1: not valid JSON"),
    ('["a"]', "f.jsonl:1: each line must be a JSON object"),
    ('{"prompt": ""}', 'f.jsonl:1: "prompt" must be a non-empty string'),
    ('{"prompt": "p", "kind": "essay", "responses": ["a"]}', 'f.jsonl:1: "kind" must be one of'),
    ('{"prompt": "p", "kind": "ranking", "responses": ["a"]}', "f.jsonl:1: a ranking task needs at least 2 responses"),
    ('{"prompt": "p", "kind": "pairwise", "responses": ["a", "b", "c"]}', "f.jsonl:1: pairwise tasks with more than 2 responses need a reference"),
    ('{"prompt": "p", "kind": "pairwise", "reference": "r", "responses": ["a", "b"]}', "no response from the reference source 'r'"),
    ('{"prompt": "p", "responses": ["a", 3]}', 'f.jsonl:1: "responses"[1] must be a string'),
    ('{"prompt": "p", "responses": ["a", "b"], "sources": ["x"]}', '"sources" must be a list as long as "responses"'),
    ('{"prompt": "p", "kind": "rating", "responses": ["a"], "gold": {"scores": [9]}}', '"gold"."scores" must be 1 integers from 1 to 7'),
    ('{"prompt": "p", "kind": "ranking", "responses": ["a", "b"], "gold": {"ranking": [[0], [0]]}}', '"gold"."ranking": ranking is not a permutation'),
    ('{"prompt": "p", "kind": "pairwise", "responses": ["a", "b"], "gold": {"winner": 2}}', '"gold"."winner" must be 0..1 or "tie"'),
])
def test_import_errors_name_file_and_line(line, msg):
    with pytest.raises(svc.ImportFileError) as e:
        svc.parse_import_lines([line], name="f.jsonl")
    assert msg in e.value.message


def test_gold_score():
    from rlhfkit.feedback.db import Response, Task

    def task(kind, n, gold):
        t = Task(id=1, kind=kind, prompt="p", gold=gold)
        t.responses = [Response(id=10 + i, position=i, text=str(i), source="s") for i in range(n)]
        return t

    t = task("rating", 3, {"scores": [7, 4, 1]})
    assert svc.gold_score(t, {"ratings": [{"response_id": 10, "score": 6}, {"response_id": 11, "score": 2}, {"response_id": 12, "score": 1}]}) == pytest.approx(2 / 3)
    t = task("ranking", 3, {"ranking": [[0], [1, 2]]})
    assert svc.gold_score(t, {"tiers": [[10], [11, 12]]}) == 1.0
    assert svc.gold_score(t, {"tiers": [[10], [11], [12]]}) == pytest.approx(2 / 3)  # broke the tie
    assert svc.gold_score(t, {"tiers": [[12, 11], [10]]}) == pytest.approx(1 / 3)
    t = task("pairwise", 2, {"winner": "tie"})
    assert svc.gold_score(t, {"winner": None}) == 1.0 and svc.gold_score(t, {"winner": 10}) == 0.0


# --------------------------------------------------------------------------- export and win-rates


def _label(engine, user, tid, body):
    return svc.submit_label(engine, user, tid, body)


def test_export_pairs_from_rankings_and_ratings(sqlite_url, tmp_path):
    from rlhfkit.feedback.export import export

    engine = make_engine(sqlite_url)
    migrate(engine)
    svc.set_settings(engine, {"overlap": 1})
    u = add_user(engine, "ann")
    rk, rt = import_tasks(engine, [
        {**RANKING_TASK, "responses": RANKING_TASK["responses"] + [{"text": "Date", "source": "ref"}]},
        {**RATING_TASK, "responses": RATING_TASK["responses"] + [{"text": "Same score", "source": "x"}]},
    ])
    # a single-response rating task of the same prompt: paired with the other ratings of ann
    (rt1,) = import_tasks(engine, [{"prompt": RATING_TASK["prompt"], "kind": "rating", "responses": [{"text": "Lonely", "source": "solo"}]}])
    svc.allocate_batch(engine, u)
    with Session(engine) as s:
        ids = {t: [r.id for r in svc.get_assignment(s, u, t).task.responses] for t in (rk, rt, rt1)}
    a, b, c, d = ids[rk]  # Apple, Banana, Car, Date
    _label(engine, u, rk, {"tiers": [[a], [b, d], [c]]})
    x, y, z = ids[rt]
    _label(engine, u, rt, {"ratings": [{"response_id": x, "score": 7}, {"response_id": y, "score": 2, "flags": ["harmful_advice"]}, {"response_id": z, "score": 2}]})
    _label(engine, u, rt1, {"ratings": [{"response_id": ids[rt1][0], "score": 5}]})
    out = tmp_path / "prefs.jsonl"
    n = export(engine, out, "prefs")
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(recs)
    ranking = {(r["chosen"], r["rejected"]) for r in recs if r["kind"] == "ranking"}
    # across tiers only: A>B, A>D, A>C, B>C, D>C; never B vs D (tied)
    assert ranking == {("Apple", "Banana"), ("Apple", "Date"), ("Apple", "Car"), ("Banana", "Car"), ("Date", "Car")}
    rating = {(r["chosen"], r["rejected"]): r["margin"] for r in recs if r["kind"] == "rating"}
    assert rating == {("A cat sat.", "Dogs run."): 5.0, ("A cat sat.", "Same score"): 5.0, ("A cat sat.", "Lonely"): 2.0,
                      ("Lonely", "Dogs run."): 3.0, ("Lonely", "Same score"): 3.0}
    r0 = next(r for r in recs if r["chosen"] == "A cat sat." and r["rejected"] == "Dogs run.")
    assert r0["annotator"] == "ann" and r0["sources"] == {"chosen": "policy_v3", "rejected": "initial_sft"}
    assert r0["flags"]["rejected"] == ["harmful_advice"] and r0["created_at"].endswith("+00:00")
    assert all(set(r) >= {"prompt", "chosen", "rejected", "annotator", "sources", "created_at"} for r in recs)
    # the lead's reader of preference data accepts it, when it is there
    from rlhfkit.data import load_preferences

    prefs = load_preferences(out)
    assert len(prefs) == len(recs)
    engine.dispose()


def test_export_writes_margin_on_every_row_or_on_none(sqlite_url, tmp_path):
    """TRL's RewardTrainer fails on a margin column with nulls: a mixed export gives every row a margin
    (0 where the label gives no strength), a rankings-only export gives none."""
    from rlhfkit.feedback.export import export

    engine = make_engine(sqlite_url)
    migrate(engine)
    svc.set_settings(engine, {"overlap": 1})
    u = add_user(engine, "ann")
    rk, rt = import_tasks(engine, [RANKING_TASK, RATING_TASK])
    svc.allocate_batch(engine, u)
    with Session(engine) as s:
        ids = {t: [r.id for r in svc.get_assignment(s, u, t).task.responses] for t in (rk, rt)}
    a, b, c = ids[rk]
    _label(engine, u, rk, {"tiers": [[a], [b], [c]]})
    only_rankings = tmp_path / "rankings.jsonl"
    export(engine, only_rankings, "prefs")
    recs = [json.loads(line) for line in only_rankings.read_text().splitlines()]
    assert len(recs) == 3 and not any("margin" in r for r in recs)
    x, y = ids[rt]
    _label(engine, u, rt, {"ratings": [{"response_id": x, "score": 6}, {"response_id": y, "score": 2}]})
    mixed = tmp_path / "mixed.jsonl"
    export(engine, mixed, "prefs")
    recs = [json.loads(line) for line in mixed.read_text().splitlines()]
    assert len(recs) == 4 and all(isinstance(r.get("margin"), float) for r in recs)
    assert sorted(r["margin"] for r in recs) == [0.0, 0.0, 0.0, 4.0]
    engine.dispose()


def test_winrates_known_values(tmp_path):
    recs = [{"method": "ppo", "reference": "sft", "outcome": o} for o in (1, 1, 0, 0.5)] + [
        {"method": "bon", "reference": "sft", "outcome": 1}]
    wr = winrates_from_records(recs)
    xs = [1, 1, 0, 0.5]
    mean = sum(xs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / 3)
    assert wr["ppo"] == {"win_rate": pytest.approx(0.625), "stderr": pytest.approx(sd / 2), "n": 4, "judgments": 4,
                         "reference": "sft"}
    assert wr["bon"]["n"] == 1 and math.isnan(wr["bon"]["stderr"])
    # a file works as well as records, and a method against two references is split
    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs + [{"method": "ppo", "reference": "init", "outcome": 0}]))
    wr2 = human_winrates(f)
    assert set(wr2) == {"ppo vs sft", "ppo vs init", "bon"}
    with pytest.raises(ValueError, match="record 1"):
        winrates_from_records([{"method": "a", "reference": "b", "outcome": 2}])


def test_human_winrates_cluster_by_prompt_like_the_simulated_ones():
    """Three annotators judged prompt p1: their judgments are one prompt's mean, as a method's several
    answers to one prompt are in eval.winrate (before: six independent judgments, SE per judgment)."""
    from rlhfkit.eval.winrate import summarise_method

    outcomes = {"p1": [1, 1, 1], "p2": [0], "p3": [0.5], "p4": [1]}
    recs = [{"prompt": p, "method": "ppo", "reference": "initial", "outcome": o} for p, os in outcomes.items() for o in os]
    wr = winrates_from_records(recs)["ppo"]
    means = [1, 0, 0.5, 1]
    assert wr["win_rate"] == pytest.approx(0.625) and wr["n"] == 4 and wr["judgments"] == 6
    assert wr["stderr"] == pytest.approx(np.std(means, ddof=1) / 2)
    sim = summarise_method(recs)  # the simulated win-rate's computation on the same rows: the same numbers
    assert (sim["win_rate"], sim["stderr"], sim["n"]) == (wr["win_rate"], wr["stderr"], wr["n"])


# --------------------------------------------------------------------------- CLI


def test_cli_user_import_settings_export_winrate(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    run = CliRunner().invoke
    r = run(feedback_app, ["user", "add", "boss", "--role", "admin", "--password", "pw12345678", "--db", db])
    assert r.exit_code == 0 and "added admin boss" in r.output
    r = run(feedback_app, ["user", "add", "boss", "--role", "admin", "--password", "pw12345678", "--db", db])
    assert r.exit_code == 1 and "already exists" in r.output
    r = run(feedback_app, ["user", "add", "x", "--role", "root", "--password", "pw12345678", "--db", db])
    assert r.exit_code == 1 and "role must be one of" in r.output
    run(feedback_app, ["user", "add", "ann", "--password", "pw12345678", "--db", db])
    assert "ann\tannotator" in run(feedback_app, ["user", "list", "--db", db]).output
    assert run(feedback_app, ["user", "password", "ann", "--password", "newpw99-long", "--db", db]).exit_code == 0
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "Say hello.", "response": "Hello!", "source": "ppo", "sample": 0},
        {"prompt": "Say hello.", "response": "hi", "source": "sft", "sample": 0},
        {"prompt": "Be brief."},
    ]))
    r = run(feedback_app, ["import", str(tasks), "--kind", "pairwise", "--reference", "sft", "--sample-from", "tiny", "--db", db])
    assert r.exit_code == 0 and "imported 2 tasks (2 pairwise)" in r.output and "1 wait" in r.output, r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "responses": ["a"]}\n{"prompt": 5}\n')
    r = run(feedback_app, ["import", str(bad), "--db", db])
    assert r.exit_code == 1 and "bad.jsonl:2" in r.output
    r = run(feedback_app, ["settings", "--overlap", "1", "--db", db])
    assert r.exit_code == 0 and json.loads(r.output)["overlap"] == 1
    assert run(feedback_app, ["settings", "--gold-threshold", "2", "--db", db]).exit_code == 1
    # label the pairwise task as ann, then export and compute win-rates
    engine = make_engine(db)
    with Session(engine) as s:
        from rlhfkit.feedback.db import User

        ann = s.scalar(sa.select(User).where(User.username == "ann"))
    assert svc.authenticate(engine, "ann", "newpw99-long") is not None
    svc.allocate_batch(engine, ann)
    with Session(engine) as s:
        task = svc.get_assignment(s, ann, 1).task
        ppo = next(r.id for r in task.responses if r.source == "ppo")
    svc.submit_label(engine, ann, 1, {"winner": ppo})
    out = tmp_path / "eval.jsonl"
    r = run(feedback_app, ["export", str(out), "--kind", "eval", "--db", db])
    assert r.exit_code == 0 and "wrote 1 eval records" in r.output
    rec = json.loads(out.read_text())
    assert (rec["method"], rec["reference"], rec["outcome"], rec["annotator"]) == ("ppo", "sft", 1.0, "ann")
    r = run(feedback_app, ["winrate", str(out)])
    assert json.loads(r.output)["ppo"]["win_rate"] == 1.0
    assert json.loads(run(feedback_app, ["winrate", db]).output)["ppo"]["n"] == 1
    r = run(feedback_app, ["export", str(tmp_path / "x.jsonl"), "--kind", "nope", "--db", db])
    assert r.exit_code == 1
    with Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Label)) == 1
        assert s.execute(sa.text("SELECT model, status FROM jobs")).all() == [("tiny", "queued")]
    engine.dispose()


def test_cli_module_runs():
    r = subprocess.run([sys.executable, "-m", "rlhfkit.feedback.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "serve" in r.stdout and "import" in r.stdout and "export" in r.stdout
