"""The feedback app probed from outside (issue 13, section 3): each test is a request that
misbehaved before (500, a leak, a stuck task, state changed by a GET) and the answer it gets now.

Each test runs on SQLite and PostgreSQL (see conftest.db_url) unless it is about SQLite itself.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import sqlalchemy as sa
from sqlalchemy.orm import Session

from rlhfkit.feedback import export as exp
from rlhfkit.feedback import service as svc
from rlhfkit.feedback.db import Assignment, Job, Label, Response, Task, Worker, write_session

from .conftest import PAIRWISE_TASK, RANKING_TASK, RATING_TASK, Client, add_user, import_tasks


def _n(engine, table) -> int:
    with Session(engine) as s:
        return s.scalar(sa.select(sa.func.count()).select_from(table))


def _rids(engine, tid: int) -> dict[str, int]:
    """text -> global response id (what annotators must never see)."""
    with Session(engine) as s:
        return {r.text: r.id for r in s.scalars(sa.select(Response).where(Response.task_id == tid))}


# --------------------------------------------------------------------------- 3. blind ids


def test_annotators_see_opaque_per_task_ids_in_random_order(app, engine):
    add_user(engine, "ann")
    add_user(engine, "bob")
    svc.set_settings(engine, {"batch_size": 20})
    tids = import_tasks(engine, [{**PAIRWISE_TASK, "prompt": f"Say hello {i}."} for i in range(20)])
    ann, bob = Client(app, "ann"), Client(app, "bob")
    assert ann.post("/next").status_code == 303 and bob.post("/next").status_code == 303
    method_first = 0
    for tid in tids:
        rids = _rids(engine, tid)
        seen = ann.get(f"/api/tasks/{tid}").json()["responses"]
        assert seen == ann.get(f"/api/tasks/{tid}").json()["responses"]  # stable for this annotator
        ids = [x["id"] for x in seen]
        assert not {str(i) for i in ids} & {str(i) for i in rids.values()}, "a global response id is shown"
        assert not set(ids) & {x["id"] for x in bob.get(f"/api/tasks/{tid}").json()["responses"]}  # per annotator
        html = ann.get(f"/tasks/{tid}").text
        for rid in rids.values():
            assert f'value="{rid}"' not in html and f'data-rid="{rid}"' not in html
        method_first += seen[0]["text"] == "Hello!"
    assert 0 < method_first < len(tids)  # the method's response is not always on one side
    # the opaque ids are what a submission names; the global ids are refused
    tid = tids[0]
    seen = {x["text"]: x["id"] for x in ann.get(f"/api/tasks/{tid}").json()["responses"]}
    r = ann.post_json(f"/tasks/{tid}", {"winner": _rids(engine, tid)["Hello!"]})
    assert r.status_code == 422 and "not part of task" in r.json()["detail"]
    assert ann.post_json(f"/tasks/{tid}", {"winner": seen["Hello!"]}).status_code == 201
    with Session(engine) as s:
        assert s.scalar(sa.select(Label.payload).where(Label.task_id == tid))["winner"] == _rids(engine, tid)["Hello!"]
    assert ann.get(f"/api/tasks/{tid}").json()["label"]["winner"] == seen["Hello!"]  # given back opaque


def test_error_messages_name_responses_by_their_letters(app, engine):
    add_user(engine, "ann")
    (rk,) = import_tasks(engine, [RANKING_TASK])
    c = Client(app, "ann")
    c.post("/next")
    ids = [x["id"] for x in c.get(f"/api/tasks/{rk}").json()["responses"]]
    r = c.post_json(f"/tasks/{rk}", {"tiers": [[ids[0]], [ids[0]], [ids[1], ids[2]]]})
    assert r.status_code == 422 and "repeated" in r.json()["detail"]
    for rid in _rids(engine, rk).values():
        assert f"[{rid}" not in r.json()["detail"] and f" {rid}]" not in r.json()["detail"]


# --------------------------------------------------------------------------- 4. text on the way in


def test_lone_surrogate_and_nul_in_notes_are_refused(app, engine):
    add_user(engine, "ann")
    add_user(engine, "root", "admin")
    (rt,) = import_tasks(engine, [RATING_TASK])
    c = Client(app, "ann")
    c.post("/next")
    a, b = (x["id"] for x in c.get(f"/api/tasks/{rt}").json()["responses"])
    for bad in ("\ud83d", "ok\x00"):
        body = json.dumps({"ratings": [{"response_id": a, "score": 5, "notes": bad}, {"response_id": b, "score": 3}]})
        r = c.http.post(f"/tasks/{rt}", content=body, headers={"content-type": "application/json", "x-csrf-token": c.csrf})
        assert r.status_code == 422, r.text
        assert "notes" in r.json()["detail"]
    assert _n(engine, Label) == 0
    assert c.get(f"/api/tasks/{rt}").status_code == 200
    assert Client(app, "root").get("/admin/export?kind=labels").status_code == 200


def test_export_of_an_old_bad_note_is_valid_json_and_a_failed_export_leaves_no_tmp(sqlite_url, tmp_path, monkeypatch):
    from rlhfkit.feedback.db import make_engine, migrate

    engine = make_engine(sqlite_url)
    migrate(engine)
    u = add_user(engine, "ann")
    (rt,) = import_tasks(engine, [RATING_TASK])
    svc.next_assignment(engine, u)
    rids = sorted(_rids(engine, rt).values())
    svc.submit_label(engine, u, rt, {"ratings": [{"response_id": i, "score": 4} for i in rids]})
    with write_session(engine) as s, s.begin():  # a note stored by an older version
        lab = s.scalar(sa.select(Label))
        lab.payload = {"ratings": [{**it, "notes": "\ud83d"} for it in lab.payload["ratings"]]}
    out = tmp_path / "labels.jsonl"
    assert exp.export(engine, out, "labels") == 1
    assert json.loads(out.read_text(encoding="utf-8"))["payload"]["ratings"][0]["notes"] == "\ud83d"

    def boom(_engine):
        yield {"ok": 1}
        raise RuntimeError("database went away")

    monkeypatch.setattr(exp, "label_records", boom)
    try:
        exp.export(engine, tmp_path / "again.jsonl", "labels")
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    assert not (tmp_path / "again.jsonl").exists()
    engine.dispose()


# --------------------------------------------------------------------------- 6. bad input is 422


def test_bad_values_are_422_not_500(app, engine):
    add_user(engine, "ann")
    add_user(engine, "root", "admin")
    rt, pw = import_tasks(engine, [RATING_TASK, PAIRWISE_TASK])
    c = Client(app, "ann")
    c.post("/next")
    a, b = (x["id"] for x in c.get(f"/api/tasks/{rt}").json()["responses"])
    for score in ("²", "--5", "9" * 5000, "١"):
        r = c.post_json(f"/tasks/{rt}", {"ratings": [{"response_id": a, "score": score}, {"response_id": b, "score": 3}]})
        assert r.status_code == 422, (score[:10], r.status_code)
        r = c.post(f"/tasks/{rt}", {f"score_{a}": score, f"score_{b}": "3"})
        assert r.status_code == 422, (score[:10], r.status_code)
    raw = '{"ratings": [{"response_id": "%s", "score": %s}, {"response_id": "%s", "score": 3}]}' % (a, "9" * 5000, b)
    r = c.http.post(f"/tasks/{rt}", content=raw, headers={"content-type": "application/json", "x-csrf-token": c.csrf})
    assert r.status_code == 422
    deep = "[" * 200_000 + "]" * 200_000
    r = c.http.post(f"/tasks/{pw}", content=deep, headers={"content-type": "application/json", "x-csrf-token": c.csrf})
    assert r.status_code == 422
    r = c.post_json(f"/tasks/{pw}", {"winner": json.loads(deep[:200] + deep[-200:])})
    assert r.status_code == 422
    for path in ("/tasks/99999999999999999999", "/api/tasks/99999999999999999999", "/chat/99999999999999999999",
                 "/tasks/2147483648", "/tasks/99999999999999999999/gold"):
        assert c.get(path).status_code in (404, 422), path
    assert c.post_json("/tasks/99999999999999999999", {"winner": "tie"}).status_code in (404, 422)
    assert c.post("/tasks/99999999999999999999/skip").status_code in (404, 422)
    adm = Client(app, "root")
    for tid in ("abc", "99999999999999999999", "1e3"):
        r = adm.post("/admin/sample", {"models": "tiny", "task_id": tid})
        assert r.status_code in (404, 422), (tid, r.status_code)
    assert _n(engine, Label) == 0 and _n(engine, Job) == 0


# --------------------------------------------------------------------------- 7. body size


def test_request_body_limit_before_parsing_and_before_csrf(db_url, monkeypatch):
    from rlhfkit.feedback.app import create_app

    monkeypatch.setenv("RLHFKIT_FEEDBACK_MAX_BODY", "100000")
    app = create_app(db_url)
    try:
        engine = app.state.engine
        add_user(engine, "ann")
        (pw,) = import_tasks(engine, [PAIRWISE_TASK])
        anon = Client(app)
        big = b"x" * 200_000
        r = anon.http.post("/login", content=big, headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413  # not the CSRF 403: refused before anything reads it
        c = Client(app, "ann")
        c.post("/next")
        body = json.dumps({"winner": "tie", "pad": "x" * 200_000})
        r = c.http.post(f"/tasks/{pw}", content=body, headers={"content-type": "application/json", "x-csrf-token": c.csrf})
        assert r.status_code == 413
        chunks = (b"y" * 10_000 for _ in range(30))  # no content-length: counted as it arrives
        r = c.http.post(f"/tasks/{pw}", content=chunks, headers={"content-type": "application/json", "x-csrf-token": c.csrf})
        assert r.status_code == 413
        assert _n(engine, Label) == 0
        assert c.post_json(f"/tasks/{pw}", {"winner": "tie"}).status_code == 201  # a normal request still passes
    finally:
        app.state.engine.dispose()


# --------------------------------------------------------------------------- 8. model jobs


def test_chat_jobs_are_limited_and_model_names_checked(app, engine):
    add_user(engine, "ann")
    svc.heartbeat(engine, "w1", ["tiny", "tiny-2"])
    svc.set_settings(engine, {"max_pending_jobs": 4})
    c = Client(app, "ann")
    form = {"prompt": "hi", "num_samples": "2"}
    r = c.http.post("/chat", data={**form, "csrf_token": c.csrf, "model": ["tiny"] * 200})
    assert r.status_code == 422 and "model" in r.text
    r = c.http.post("/chat", data={**form, "csrf_token": c.csrf, "model": ["x" * 100_000]})
    assert r.status_code == 422
    assert c.post("/chat", {**form, "model": "not-served"}).status_code == 422
    assert _n(engine, Job) == 0 and _n(engine, Task) == 0
    for _ in range(2):
        assert c.http.post("/chat", data={**form, "csrf_token": c.csrf, "model": ["tiny", "tiny-2"]}).status_code == 303
    r = c.post("/chat", {**form, "model": "tiny"})
    assert r.status_code == 429 and "pending" in r.text  # 4 jobs waiting: the limit
    assert _n(engine, Job) == 4


def test_chat_page_offers_only_models_a_chat_may_ask_for(app, engine):
    """Before: with no worker registered the page showed a free-text model field (value "tiny")
    whose every submission got 422; a worker that had stopped made the page show that field
    too, although its models were still accepted."""
    add_user(engine, "ann")
    c = Client(app, "ann")
    page = c.get("/chat").text
    assert 'name="model"' not in page and 'action="/chat"' not in page  # nothing to submit
    assert "No model can answer yet" in page and "rlhfkit feedback worker --model" in page
    svc.heartbeat(engine, "w1", ["tiny"])
    page = c.get("/chat").text
    assert '<input type="checkbox" name="model" value="tiny" checked>' in page
    assert page.count('name="model"') == 1  # no free-text field next to it
    assert "not running right now" not in page
    with write_session(engine) as s, s.begin():  # the worker stopped 10 minutes ago
        w = s.get(Worker, "w1")
        w.heartbeat_at = w.heartbeat_at - dt.timedelta(minutes=10)
    page = c.get("/chat").text
    assert 'type="checkbox" name="model" value="tiny"' in page and "not running right now" in page
    assert c.post("/chat", {"prompt": "hi", "model": "tiny", "num_samples": "2"}).status_code == 303


# --------------------------------------------------------------------------- 9. re-sampling


def test_resampling_an_assigned_task_is_refused_and_no_task_gets_stuck(app, engine):
    add_user(engine, "ann")
    add_user(engine, "root", "admin")
    rt, rk = import_tasks(engine, [RATING_TASK, RANKING_TASK])
    c = Client(app, "ann")
    c.post("/next")
    c.get(f"/api/tasks/{rt}")
    r = Client(app, "root").post("/admin/sample", {"models": "tiny", "task_id": str(rt)})
    assert r.status_code == 409 and "assigned" in r.text
    assert _n(engine, Job) == 0
    # a response added to an assigned task anyway (an older version did): the annotator sees it
    with write_session(engine) as s, s.begin():
        s.add(Response(task_id=rk, position=3, text="Date", source="late"))
    seen = c.get(f"/api/tasks/{rk}").json()["responses"]
    assert sorted(x["text"] for x in seen) == ["Apple", "Banana", "Car", "Date"]
    assert c.post_json(f"/tasks/{rk}", {"tiers": [[x["id"] for x in seen]]}).status_code == 201


# --------------------------------------------------------------------------- 10. locked database


def test_locked_database_answers_503_with_retry_after(sqlite_url, monkeypatch):
    from rlhfkit.feedback.app import create_app

    monkeypatch.setenv("RLHFKIT_FEEDBACK_BUSY_TIMEOUT", "0.2")
    app = create_app(sqlite_url)
    try:
        engine = app.state.engine
        add_user(engine, "ann")
        (pw,) = import_tasks(engine, [PAIRWISE_TASK])
        c = Client(app, "ann")
        c.post("/next")
        seen = c.get(f"/api/tasks/{pw}").json()["responses"]
        holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            r = c.post_json(f"/tasks/{pw}", {"winner": seen[0]["id"]})
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"]
            r = c.post(f"/tasks/{pw}", {"winner": seen[0]["id"]}, headers={"accept": "text/html"})
            assert r.status_code == 503 and "retry-after" in r.headers
        finally:
            holder.rollback()
            holder.close()
        assert _n(engine, Label) == 0
        assert c.post_json(f"/tasks/{pw}", {"winner": seen[0]["id"]}).status_code == 201  # the retry is stored once
        assert _n(engine, Label) == 1
    finally:
        app.state.engine.dispose()


# --------------------------------------------------------------------------- 12. GET is safe


def test_get_next_is_idempotent_and_post_hands_out_work(app, engine):
    add_user(engine, "ann")
    svc.set_settings(engine, {"batch_size": 2})
    t1, t2, t3 = import_tasks(engine, [PAIRWISE_TASK] * 3)
    c = Client(app, "ann")
    assert c.get("/api/next").json() == {"task_id": None}
    assert c.get("/next").headers["location"] == "/tasks"
    assert _n(engine, Assignment) == 0  # a GET handed out nothing
    assert "Continue labelling" in c.get("/tasks").text and 'action="/next"' in c.get("/tasks").text
    assert c.post_json("/api/next", {}).json() == {"task_id": t1}
    assert _n(engine, Assignment) == 2
    assert c.get("/api/next").json() == {"task_id": t1} and c.get("/next").headers["location"] == f"/tasks/{t1}"
    assert c.post_json("/api/next", {}).json() == {"task_id": t1}  # the pending one first: nothing new
    assert _n(engine, Assignment) == 2
    seen = c.get(f"/api/tasks/{t1}").json()["responses"]
    r = c.post(f"/tasks/{t1}", {"winner": seen[0]["id"]})  # the form's POST hands out the next one itself
    assert r.status_code == 303 and r.headers["location"] == f"/tasks/{t2}"
    assert c.post(f"/tasks/{t2}/skip").headers["location"] == f"/tasks/{t3}"
    assert _n(engine, Assignment) == 3
