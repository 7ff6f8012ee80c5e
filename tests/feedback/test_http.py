"""HTTP tests of every route of the feedback app, with their refusals.

Each test runs twice: on SQLite and on PostgreSQL (see conftest.db_url).
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from rlhfkit.feedback import service as svc
from rlhfkit.feedback.db import Assignment, Label, Response, Task, User

from .conftest import PAIRWISE_TASK, PASSWORD, RANKING_TASK, RATING_TASK, Client, add_user, import_tasks

GET_ROUTES = [
    "/", "/tasks", "/next", "/api/next", "/tasks/{tid}", "/api/tasks/{tid}", "/tasks/{tid}/gold", "/onboarding", "/me",
    "/chat", "/chat/{tid}", "/admin", "/admin/dashboard.json", "/admin/tasks", "/admin/users", "/admin/export",
    "/openapi.json", "/docs", "/admin/loop", "/admin/loop.json",
]
POST_ROUTES = [
    "/logout", "/tasks/{tid}", "/tasks/{tid}/skip", "/onboarding/start", "/chat", "/admin/settings", "/admin/import",
    "/admin/sample", "/admin/users", "/next", "/api/next",
]
PUBLIC = {("GET", "/login"), ("POST", "/login")}
ADMIN_ONLY_GET = ["/admin", "/admin/dashboard.json", "/admin/tasks", "/admin/users", "/admin/export", "/openapi.json", "/docs",
                  "/admin/loop", "/admin/loop.json"]
ADMIN_ONLY_POST = ["/admin/settings", "/admin/import", "/admin/sample", "/admin/users"]


def counts(engine) -> tuple[int, int]:
    with Session(engine) as s:
        return (s.scalar(sa.select(sa.func.count()).select_from(Label)), s.scalar(sa.select(sa.func.count()).select_from(Assignment).where(Assignment.status != "pending")))


def _task(client: Client, tid: int) -> dict:
    r = client.get(f"/api/tasks/{tid}")
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- access


def _served_routes(app):
    """Every route the app serves. Since FastAPI 0.137 ``include_router`` leaves one lazy node per
    router in ``app.routes``; ``iter_route_contexts`` (0.137.2+) expands them, older versions
    flattened the routers themselves."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def test_route_tables_cover_every_route(app):
    have = set()
    for r in _served_routes(app):
        for m in getattr(r, "methods", None) or []:
            if m != "HEAD":
                have.add((m, r.path.replace("{task_id}", "{tid}")))
    listed = {("GET", p) for p in GET_ROUTES} | {("POST", p) for p in POST_ROUTES} | PUBLIC
    assert have == listed, f"routes not covered by the access tests: {have - listed}; stale: {listed - have}"


def test_anonymous_is_refused_everywhere_but_login(app, engine):
    (tid,) = import_tasks(engine, [RATING_TASK])
    anon = Client(app)
    for path in GET_ROUTES:
        p = path.format(tid=tid)
        r = anon.get(p)
        if p.startswith("/api/") or p == "/openapi.json":
            assert r.status_code == 401, (p, r.status_code)
        else:
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), (p, r.status_code)
        r = anon.get(p, headers={"accept": "application/json"})
        assert r.status_code == 401, p
    for path in POST_ROUTES:
        r = anon.post(path.format(tid=tid), {"x": "1"})  # with a valid anonymous CSRF token
        assert r.status_code == 401, (path, r.status_code)
    assert anon.get("/login").status_code == 200
    assert anon.get("/static/app.css").status_code == 200
    assert counts(engine) == (0, 0)


def test_annotators_are_refused_admin_routes(app, engine):
    add_user(engine, "ann")
    c = Client(app, "ann")
    for p in ADMIN_ONLY_GET:
        r = c.get(p)
        assert r.status_code == 403, (p, r.status_code)
        assert "admins only" in r.text
    for p in ADMIN_ONLY_POST:
        assert c.post(p, {"username": "x", "password": "yyyy", "overlap": "3"}).status_code == 403, p
    with Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(User)) == 1
        assert svc.get_settings(s)["overlap"] == svc.DEFAULT_SETTINGS["overlap"]


def test_openapi_and_docs_for_admins(app, engine):
    add_user(engine, "root", "admin")
    c = Client(app, "root")
    r = c.get("/openapi.json")
    assert r.status_code == 200 and "/tasks/{task_id}" in r.json()["paths"]
    r = c.get("/docs")  # a local page made from the schema (no Swagger UI from a CDN)
    assert r.status_code == 200 and "/tasks/{task_id}" in r.text


def test_every_post_needs_the_csrf_token(app, engine):
    add_user(engine, "root", "admin")
    add_user(engine, "ann")
    (tid,) = import_tasks(engine, [RATING_TASK])
    for who in ("root", "ann"):
        c = Client(app, who)
        for path in POST_ROUTES:
            p = path.format(tid=tid)
            r = c.post(p, {"winner": "tie"}, csrf=False)
            assert r.status_code == 403 and "CSRF" in r.text, (who, p, r.status_code)
            r = c.post(p, {"csrf_token": "forged"})
            assert r.status_code == 403, (who, p)
            r = c.post_json(p, {"ratings": []}, csrf=False)
            assert r.status_code == 403, (who, p)
    anon = Client(app)
    assert anon.post("/login", {"username": "root", "password": PASSWORD}, csrf=False).status_code == 403
    assert counts(engine) == (0, 0)


def test_login_logout(app, engine):
    add_user(engine, "ann")
    c = Client(app)
    r = c.post("/login", {"username": "ann", "password": "wrong"})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = c.post("/login", {"username": "nobody", "password": "x"})
    assert r.status_code == 401
    r = c.post("/login", {"username": "ann", "password": PASSWORD, "next": "/me"})
    assert r.status_code == 303 and r.headers["location"] == "/me"
    assert "rlhfkit_session" in r.headers["set-cookie"] and "httponly" in r.headers["set-cookie"].lower()
    # the session and its CSRF token are new after login
    old = c.csrf
    c.csrf = c.get("/me").text.split('name="csrf_token" value="')[1].split('"')[0]
    assert c.csrf != old
    assert c.get("/").headers["location"] == "/tasks"
    r = c.post("/login", {"username": "ann", "password": PASSWORD, "next": "//evil.example/"})  # open redirect refused
    assert r.headers["location"] == "/"
    c.csrf = c.get("/me").text.split('name="csrf_token" value="')[1].split('"')[0]
    assert c.post("/logout").status_code == 303
    assert c.get("/tasks").status_code == 303  # back to login


def test_inactive_or_deleted_user_is_logged_out(app, engine):
    u = add_user(engine, "ann")
    c = Client(app, "ann")
    assert c.get("/tasks").status_code == 200
    with Session(engine) as s, s.begin():
        s.get(User, u.id).active = False
    assert c.get("/tasks").status_code == 303


# --------------------------------------------------------------------------- task flow


def test_rating_ranking_pairwise_flow_and_export(app, engine, tmp_path):
    add_user(engine, "ann")
    ids = import_tasks(engine, [RATING_TASK, RANKING_TASK, PAIRWISE_TASK])
    c = Client(app, "ann")
    r = c.post("/next")
    assert r.status_code == 303 and r.headers["location"] == f"/tasks/{ids[0]}"
    page = c.get(f"/tasks/{ids[0]}")
    assert page.status_code == 200 and "1 / 3" in page.text and "Gives harmful advice" in page.text
    assert "policy_v3" not in page.text and "initial_sft" not in page.text  # blind: sources never shown
    t = _task(c, ids[0])
    assert [x["name"] for x in t["responses"]] == ["A", "B"]
    # rating by HTML form
    by_text = {x["text"]: x["id"] for x in t["responses"]}
    a, b = by_text["A cat sat."], by_text["Dogs run."]
    form = {f"score_{a}": "6", f"score_{b}": "2", f"flag_{b}": "fails_instruction", f"notes_{b}": "off topic"}
    r = c.post(f"/tasks/{ids[0]}", form)
    assert r.status_code == 303 and r.headers["location"] == f"/tasks/{ids[1]}"  # the form goes on to the next task
    assert c.get("/next").headers["location"] == f"/tasks/{ids[1]}"
    assert "2 / 3" in c.get(f"/tasks/{ids[1]}").text
    # ranking with a tie, by JSON
    rk = [x["id"] for x in _task(c, ids[1])["responses"]]
    r = c.post_json(f"/tasks/{ids[1]}", {"tiers": [[rk[0]], [rk[1], rk[2]]]})
    assert r.status_code == 201 and r.json()["created"] is True
    # pairwise by form
    pw = [x["id"] for x in _task(c, ids[2])["responses"]]
    r = c.post(f"/tasks/{ids[2]}", {"winner": str(pw[0])})
    assert r.status_code == 303 and r.headers["location"] == "/tasks?all_done=1"
    assert c.post("/next").headers["location"] == "/tasks?all_done=1"
    assert "All your tasks are done" in c.get("/tasks?all_done=1").text
    assert counts(engine) == (3, 3)
    with Session(engine) as s:
        lab = s.scalar(sa.select(Label).where(Label.task_id == ids[0]))
        b_id = s.scalar(sa.select(Response.id).where(Response.text == "Dogs run."))  # labels store global ids
        assert next(it for it in lab.payload["ratings"] if it["response_id"] == b_id) == {"response_id": b_id, "score": 2, "flags": ["fails_instruction"], "notes": "off topic"}
        assert lab.duration_ms >= 0
    # admin export over HTTP matches the library's export
    add_user(engine, "root", "admin")
    adm = Client(app, "root")
    prefs = [json.loads(x) for x in adm.get("/admin/export?kind=prefs").text.splitlines()]
    assert {p["kind"] for p in prefs} == {"rating", "ranking"}
    rating_pair = next(p for p in prefs if p["kind"] == "rating")
    assert (rating_pair["chosen"], rating_pair["rejected"], rating_pair["margin"]) == ("A cat sat.", "Dogs run.", 4.0)
    assert rating_pair["annotator"] == "ann" and rating_pair["sources"] == {"chosen": "policy_v3", "rejected": "initial_sft"}
    assert len([p for p in prefs if p["kind"] == "ranking"]) == 2  # best vs each of the tied pair
    ev = [json.loads(x) for x in adm.get("/admin/export?kind=eval").text.splitlines()]
    assert len(ev) == 1 and ev[0]["method"] == "ppo" and ev[0]["reference"] == "sft"
    assert ev[0]["outcome"] == (1.0 if pw[0] == next(x["id"] for x in _task(c, ids[2])["responses"] if x["text"] == "Hello!") else 0.0)
    assert len(adm.get("/admin/export?kind=labels").text.splitlines()) == 3
    assert adm.get("/admin/export?kind=nope").status_code == 422


def test_invalid_submissions_store_nothing(app, engine):
    add_user(engine, "ann")
    rt, rk, pw = import_tasks(engine, [RATING_TASK, RANKING_TASK, PAIRWISE_TASK])
    c = Client(app, "ann")
    c.post("/next")
    a, b = (x["id"] for x in _task(c, rt)["responses"])
    bad_ratings = [
        ({"ratings": [{"response_id": a, "score": 8}, {"response_id": b, "score": 3}]}, "from 1 to 7, got 8"),
        ({"ratings": [{"response_id": a, "score": 0}, {"response_id": b, "score": 3}]}, "from 1 to 7, got 0"),
        ({"ratings": [{"response_id": a, "score": 2.5}, {"response_id": b, "score": 3}]}, "integer from 1 to 7"),
        ({"ratings": [{"response_id": a, "score": 4}]}, "missing rating"),
        ({"ratings": [{"response_id": a, "score": 4}, {"response_id": b, "score": 4, "flags": ["rude"]}]}, "unknown flag"),
        ({"ratings": [{"response_id": a, "score": 4}, {"response_id": 99999, "score": 4}]}, "not part of task"),
        ({"ranking": [[a]]}, 'needs "ratings"'),
    ]
    for body, msg in bad_ratings:
        r = c.post_json(f"/tasks/{rt}", body)
        assert r.status_code == 422 and msg in r.json()["detail"], (body, r.text)
    r = c.post(f"/tasks/{rt}", {f"score_{a}": "9", f"score_{b}": "1"})  # the HTML form says it too
    assert r.status_code == 422 and "from 1 to 7, got 9" in r.text
    ids = [x["id"] for x in _task(c, rk)["responses"]]
    for tiers, msg in [
        ([[ids[0]], [ids[1]]], "missing"),
        ([[ids[0]], [ids[0]], [ids[1], ids[2]]], "repeated"),
        ([[ids[0], ids[1], ids[2], 424242]], "unknown"),
        ([[ids[0]], [], [ids[1], ids[2]]], "empty tier"),
        ("not json", "JSON list of tiers"),
    ]:
        r = c.post_json(f"/tasks/{rk}", {"tiers": tiers})
        assert r.status_code == 422 and msg in r.json()["detail"], (tiers, r.text)
    r = c.post(f"/tasks/{rk}", {"ranking": json.dumps([[ids[0]], [ids[1]]])})
    assert r.status_code == 422 and "not a permutation" in r.text
    for body in ({}, {"winner": 123456}, {"winner": "left"}):
        assert c.post_json(f"/tasks/{pw}", body).status_code == 422, body
    # unknown task, and a body that is not JSON
    r = c.post_json("/tasks/987654", {"winner": "tie"})
    assert r.status_code == 404 and "no task 987654" in r.json()["detail"]
    assert c.get("/tasks/987654").status_code == 404
    r = c.http.post(f"/tasks/{pw}", content=b"{nope", headers={"content-type": "application/json", "x-csrf-token": c.csrf})
    assert r.status_code == 422
    assert counts(engine) == (0, 0)


def test_repeated_submission_is_idempotent(app, engine):
    add_user(engine, "ann")
    (tid,) = import_tasks(engine, [RANKING_TASK])
    c = Client(app, "ann")
    c.post("/next")
    ids = [x["id"] for x in _task(c, tid)["responses"]]
    body = {"tiers": [[ids[2]], [ids[0]], [ids[1]]]}
    r1 = c.post_json(f"/tasks/{tid}", body)
    r2 = c.post_json(f"/tasks/{tid}", body)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert r1.json()["label_id"] == r2.json()["label_id"] and r2.json()["created"] is False
    r3 = c.post(f"/tasks/{tid}", {"ranking": json.dumps(body["tiers"])})  # same answer by form: fine too
    assert r3.status_code == 303
    r4 = c.post_json(f"/tasks/{tid}", {"tiers": [[ids[0]], [ids[1]], [ids[2]]]})
    assert r4.status_code == 409 and "different answer" in r4.json()["detail"]
    assert counts(engine) == (1, 1)
    assert c.post(f"/tasks/{tid}/skip").status_code == 409  # answered: cannot skip


def test_annotators_cannot_read_or_write_others_assignments(app, engine):
    add_user(engine, "ann")
    add_user(engine, "eve")
    svc.set_settings(engine, {"overlap": 1})
    (tid,) = import_tasks(engine, [PAIRWISE_TASK])
    ann, eve = Client(app, "ann"), Client(app, "eve")
    assert ann.post("/next").headers["location"] == f"/tasks/{tid}"
    assert eve.post("/next").headers["location"] == "/tasks?all_done=1"  # overlap 1: ann has it
    for p in (f"/tasks/{tid}", f"/api/tasks/{tid}", f"/tasks/{tid}/gold", f"/chat/{tid}"):
        r = eve.get(p)
        assert r.status_code == 403 and "not assigned to you" in r.text, p
    assert eve.post_json(f"/tasks/{tid}", {"winner": "tie"}).status_code == 403
    assert eve.post(f"/tasks/{tid}", {"winner": "tie"}).status_code == 403
    assert eve.post(f"/tasks/{tid}/skip").status_code == 403
    assert counts(engine) == (0, 0)
    assert ann.post_json(f"/tasks/{tid}", {"winner": "tie"}).status_code == 201
    assert "About the same" in ann.get(f"/tasks/{tid}").text  # still readable by its owner


def test_overlap_and_batches(app, engine):
    for n in ("a1", "a2", "a3"):
        add_user(engine, n)
    svc.set_settings(engine, {"overlap": 2, "batch_size": 2})
    t1, t2, t3 = import_tasks(engine, [PAIRWISE_TASK] * 3)
    cs = [Client(app, n) for n in ("a1", "a2", "a3")]
    for c in cs:
        c.post("/next")

    def per_task():
        with Session(engine) as s:
            return dict(s.execute(sa.select(Assignment.task_id, sa.func.count()).where(Assignment.slot.is_not(None)).group_by(Assignment.task_id)).all())

    # partly assigned tasks are filled first (overlap 2): a1, a2 get t1, t2; a3 gets t3
    assert per_task() == {t1: 2, t2: 2, t3: 1}
    assert cs[2].get("/api/next").json()["task_id"] == t3
    # a skip frees the slot for somebody else
    assert cs[0].post(f"/tasks/{t1}/skip").status_code == 303
    assert cs[0].post(f"/tasks/{t1}/skip").status_code == 303  # repeated skip: idempotent
    assert cs[0].post_json(f"/tasks/{t1}", {"winner": "tie"}).status_code == 409
    assert per_task() == {t1: 1, t2: 2, t3: 1}
    assert cs[2].post_json(f"/tasks/{t3}", {"winner": "tie"}).status_code == 201
    assert cs[2].post("/api/next").json()["task_id"] == t1  # the freed slot
    assert per_task() == {t1: 2, t2: 2, t3: 1}
    assert cs[0].get("/api/next").json()["task_id"] == t2
    assert cs[0].post_json(f"/tasks/{t2}", {"winner": "tie"}).status_code == 201
    assert cs[0].post("/api/next").json()["task_id"] == t3  # never t1 again: it was skipped
    assert counts(engine) == (2, 3)


def test_progress_timer_and_skip_shown(app, engine):
    add_user(engine, "ann")
    ids = import_tasks(engine, [PAIRWISE_TASK] * 11)
    c = Client(app, "ann")
    c.post("/next")
    for tid in ids[:2]:
        assert c.post(f"/tasks/{tid}/skip").status_code == 303
    html = c.get(f"/tasks/{ids[2]}").text
    assert "3 / 10" in html  # batch of 10 assigned; two skipped
    assert 'id="timer"' in html and 'id="skip"' in html and "<kbd>a</kbd>" in html


# --------------------------------------------------------------------------- onboarding


GOLD = [
    {"prompt": "2+2?", "kind": "pairwise", "responses": ["4", "5"], "gold": {"winner": 0}},
    {"prompt": "Capital of France?", "kind": "rating", "responses": ["Paris", "Rome"], "gold": {"scores": [7, 1]}},
]


def test_onboarding_gates_real_work(app, engine):
    add_user(engine, "new", onboarded=False)
    golds = import_tasks(engine, GOLD)
    (real,) = import_tasks(engine, [PAIRWISE_TASK])
    c = Client(app, "new")
    assert c.get("/next").headers["location"] == "/onboarding"
    assert c.get("/api/next").status_code == 403
    assert "Start onboarding" in c.get("/onboarding").text
    assert c.post("/onboarding/start").headers["location"] == "/next"
    # attempt 1: answer both wrong
    loc = c.get("/next").headers["location"]
    assert loc in (f"/tasks/{golds[0]}", f"/tasks/{golds[1]}")
    for tid in golds:
        t = _task(c, tid)
        by_text = {x["text"]: x["id"] for x in t["responses"]}
        if t["kind"] == "pairwise":
            body = {"winner": by_text["5"]}
        else:
            body = {"ratings": [{"response_id": by_text["Paris"], "score": 1}, {"response_id": by_text["Rome"], "score": 7}]}
        r = c.post(f"/tasks/{tid}", {"ranking": ""} if False else {})  # form without an answer
        assert r.status_code == 422
        assert c.post_json(f"/tasks/{tid}", body).status_code == 201
        page = c.get(f"/tasks/{tid}/gold")
        assert page.status_code == 200 and "agrees 0%" in page.text
    st = svc.onboarding_state(engine, _user(engine, "new"))
    assert st.score == 0.0 and not st.passed
    assert c.get("/next").headers["location"] == "/onboarding"
    assert "Try again" in c.get("/onboarding").text
    assert c.get(f"/tasks/{real}").status_code == 403
    # attempt 2: right answers
    assert c.post("/onboarding/start").status_code == 303
    for tid in golds:
        t = _task(c, tid)
        by_text = {x["text"]: x["id"] for x in t["responses"]}
        body = {"winner": by_text["4"]} if t["kind"] == "pairwise" else {"ratings": [{"response_id": by_text["Paris"], "score": 6}, {"response_id": by_text["Rome"], "score": 2}]}
        assert c.post_json(f"/tasks/{tid}", body).status_code == 201
    page = c.get(f"/tasks/{golds[-1]}/gold")
    assert "Onboarding passed" in page.text
    assert c.post("/next").headers["location"] == f"/tasks/{real}"
    assert c.post("/onboarding/start").status_code == 409
    me = c.get("/me")
    assert me.status_code == 200 and "100%" in me.text
    assert c.get(f"/tasks/{real}/gold").status_code == 404  # not a gold question


def _user(engine, name):
    with Session(engine) as s:
        return s.scalar(sa.select(User).where(User.username == name))


# --------------------------------------------------------------------------- admin


def test_admin_pages_import_settings_users(app, engine):
    add_user(engine, "root", "admin")
    c = Client(app, "root")
    assert c.get("/").headers["location"] == "/admin"
    assert c.get("/admin").status_code == 200
    lines = "\n".join(json.dumps(x) for x in [RATING_TASK, RANKING_TASK, {"prompt": "only a prompt"}])
    r = c.post("/admin/import", {"kind": "rating"}, files={"file": ("t.jsonl", lines.encode(), "application/jsonl")})
    assert r.status_code == 303
    r = c.post("/admin/import", {"kind": "rating"}, files={"file": ("bad.jsonl", b'{"prompt": "x"}\n{"prompt": 3}\n', "application/jsonl")})
    assert r.status_code == 422 and "bad.jsonl:2" in r.text
    page = c.get("/admin/tasks").text
    assert "only a prompt" in page and "waiting" in page
    assert c.post("/admin/sample", {"models": "tiny", "num_samples": "3"}).status_code == 303
    with Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Task)) == 3
        jobs = s.execute(sa.text("SELECT model, num_samples, status FROM jobs")).all()
    assert [tuple(j) for j in jobs] == [("tiny", 3, "queued")]
    assert c.post("/admin/sample", {"models": "", "num_samples": "3"}).status_code == 422
    assert c.post("/admin/settings", {"overlap": "3", "batch_size": "5", "gold_threshold": "0.8"}).status_code == 303
    assert c.post("/admin/settings", {"overlap": "0"}).status_code == 422
    assert c.post("/admin/settings", {"gold_threshold": "lots"}).status_code == 422
    with Session(engine) as s:
        assert svc.get_settings(s) | {} == {**svc.DEFAULT_SETTINGS, "overlap": 3, "batch_size": 5, "gold_threshold": 0.8}
    assert c.post("/admin/users", {"username": "newbie", "role": "annotator", "password": "pw12345678"}).status_code == 303
    assert c.post("/admin/users", {"username": "newbie", "role": "annotator", "password": "pw12345678"}).status_code == 409
    assert c.post("/admin/users", {"username": "x", "role": "king", "password": "pw12345678"}).status_code == 422
    assert "newbie" in c.get("/admin/users").text
    Client(app, "newbie", "pw12345678")  # can log in
    with Session(engine) as s:
        h = s.scalar(sa.select(User.password_hash).where(User.username == "newbie"))
    assert h.startswith("$argon2id$") and "pw12345678" not in h


def test_dashboard_agreement_figures(app, engine):
    """The dashboard's kappas/alpha equal rlhfkit.agreement's on the same label matrix."""
    from rlhfkit import agreement as ag

    names = ["r1", "r2", "r3"]
    for n in names:
        add_user(engine, n)
    svc.set_settings(engine, {"overlap": 3})
    ids = import_tasks(engine, [{"prompt": f"p{i}", "kind": "pairwise", "reference": "sft", "responses": [{"text": f"m{i}", "source": "ppo"}, {"text": f"r{i}", "source": "sft"}]} for i in range(4)])
    # choices[rater][task]: "m" method wins, "r" reference wins, "t" tie
    choices = {"r1": "mmrt", "r2": "mmrr", "r3": "mrrt"}
    for n in names:
        c = Client(app, n)
        c.post("/next")
        for i, tid in enumerate(ids):
            resp = {x["text"][0]: x["id"] for x in _task(c, tid)["responses"]}
            ch = choices[n][i]
            assert c.post_json(f"/tasks/{tid}", {"winner": "tie" if ch == "t" else resp[ch]}).status_code == 201
    add_user(engine, "root", "admin")
    d = Client(app, "root").get("/admin/dashboard.json").json()
    # value per item: 1 if the lower id (the method response, imported first) wins, -1 reference, 0 tie
    v = {"m": 1, "r": -1, "t": 0}
    data = [[v[ch] for ch in choices[n]] for n in names]
    pref = d["agreement"]["preference"]
    assert pref["alpha"] == pytest.approx(ag.krippendorff_alpha(data, level="nominal"))
    table = [[sum(data[r][j] == c for r in range(3)) for c in (-1, 0, 1)] for j in range(4)]
    assert pref["fleiss"] == pytest.approx(ag.fleiss_kappa(table))
    k12 = next(p for p in pref["cohen_pairs"] if (p["a"], p["b"]) == ("r1", "r2"))
    assert k12["kappa"] == pytest.approx(ag.cohen_kappa(data[0], data[1]))
    assert d["throughput"]["labels_total"] == 12
    ann = {a["username"]: a for a in d["annotators"]}
    # r1 vs majority of (r2, r3): items m/m -> m, m/r tie -> skip, r/r -> r, r/t tie -> skip => 2/2
    assert ann["r1"]["majority_preference"] == pytest.approx(1.0)
    assert d["time_per_task"]["pairwise"]["n"] == 12
    html = Client(app, "root").get("/admin").text
    assert "Krippendorff" in html and "Fleiss" in html and "Cohen" in html and "r3" in html
    # the annotator's own page
    me = Client(app, "r2").get("/me")
    assert me.status_code == 200 and "With the other annotators" in me.text
    from rlhfkit.feedback.winrate import human_winrates

    wr = human_winrates(engine.url.render_as_string(hide_password=False))
    outcomes = [{"m": 1, "r": 0, "t": 0.5}[ch] for n in names for ch in choices[n]]
    # the prompt is the unit (three raters judged each of the 4 prompts): every prompt has 3 judgments,
    # so the mean of prompt means is the mean of all 12
    assert wr["ppo"]["n"] == 4 and wr["ppo"]["judgments"] == 12
    assert wr["ppo"]["win_rate"] == pytest.approx(sum(outcomes) / 12)


# --------------------------------------------------------------------------- chat + worker


def test_chat_then_worker_then_rank(app, engine):
    from rlhfkit.feedback.worker import process_jobs

    add_user(engine, "ann")
    c = Client(app, "ann")
    assert "No model can answer yet" in c.get("/chat").text  # and no form: no model to ask
    svc.heartbeat(engine, "w1", ["tiny"])
    assert 'value="tiny"' in c.get("/chat").text
    assert c.post("/chat", {"prompt": "  ", "model": "tiny", "num_samples": "2"}).status_code == 422
    assert c.post("/chat", {"prompt": "hi", "model": "tiny", "num_samples": "1"}).status_code == 422  # 1 reply: nothing to rank
    r = c.post("/chat", {"prompt": "Tell me a joke", "model": "tiny", "num_samples": "3"})
    assert r.status_code == 303
    tid = int(r.headers["location"].rsplit("/", 1)[1])
    assert "The model is writing" in c.get(f"/chat/{tid}").text
    assert c.get(f"/tasks/{tid}").headers["location"] == f"/chat/{tid}"
    jobs = svc.claim_jobs(engine, ["tiny"], "w1")
    assert [j["prompt"] for j in jobs] == ["Tell me a joke"]
    assert svc.claim_jobs(engine, ["tiny"], "w2") == []  # claimed once only
    fake = lambda model, prompts, k, params, seed: [[f"{p} #{i}" for i in range(k)] for p in prompts]  # noqa: E731
    assert process_jobs(engine, jobs, fake) == 1
    assert c.get(f"/chat/{tid}").headers["location"] == f"/tasks/{tid}"
    t = _task(c, tid)
    assert sorted(x["text"] for x in t["responses"]) == ["Tell me a joke #0", "Tell me a joke #1", "Tell me a joke #2"]
    ids = [x["id"] for x in t["responses"]]
    assert c.post_json(f"/tasks/{tid}", {"tiers": [ids]}).status_code == 201  # all tied is a ranking too
    # the chat task belongs to its author alone
    add_user(engine, "eve")
    assert Client(app, "eve").get(f"/tasks/{tid}").status_code == 403
