"""A real browser (Debian's Chromium, headless, driven by Playwright) uses the app as people do.

An annotator logs in, passes onboarding (gold questions), rates, ranks (keyboard and drag
and drop, with a tie) and compares; an admin looks at the dashboard; the export trains a
reward model with ``rlhfkit reward --model tiny``. Screenshots of each page go to
docs/screenshots/ (used by docs/feedback.md) when RLHFKIT_SCREENSHOTS=1.

Skipped when /usr/bin/chromium is absent, unless RLHFKIT_REQUIRE_BROWSER=1 (CI), which
makes it fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from rlhfkit.feedback import service as svc
from rlhfkit.feedback.db import Label, make_engine, migrate

from .conftest import PASSWORD, add_user, import_tasks

CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# Screenshots refresh docs/screenshots/ only when asked (RLHFKIT_SCREENSHOTS=1), so that a test run
# leaves the work tree clean; otherwise they go to a temporary folder and are still taken (and checked).
SHOTS = (Path(__file__).resolve().parents[2] / "docs" / "screenshots" if os.environ.get("RLHFKIT_SCREENSHOTS") == "1"
         else Path(os.environ.get("TMPDIR", "/tmp")) / "rlhfkit-screenshots")

GOLD = [
    {"prompt": "What is 12 x 12?", "kind": "pairwise", "responses": ["144.", "124, roughly."], "gold": {"winner": 0}},
    {"prompt": "Give a one-line tip for sleeping better.", "kind": "ranking",
     "responses": ["Keep a regular bedtime, even on weekends.", "Drink coffee late at night.", "Sleep is for the weak."],
     "gold": {"ranking": [[0], [1, 2]]}},
]
REAL = [
    {"prompt": "Summarize the following news article:\n\nA team of researchers studied the vocalization patterns of parrots and found that they mimic human speech and produce whistles, squawks and other sounds.",
     "kind": "rating", "responses": [
         {"text": "Researchers found that parrots imitate human speech and make many other kinds of sounds, like whistles and squawks.", "source": "ppo"},
         {"text": "Parrots are birds. Birds fly. Buy our bird food today!", "source": "sft"}]},
    {"prompt": "Write a haiku about autumn.", "kind": "ranking", "responses": [
        {"text": "Red leaves drift and fall\nthe cold wind hums through bare trees\nsummer's last goodbye", "source": "ppo"},
        {"text": "Autumn is a season that comes after summer.", "source": "sft"},
        {"text": "leaves leaves leaves leaves leaves", "source": "init"},
        {"text": "Crisp air, amber light\nsquirrels bury their treasure\nthe year exhales slow", "source": "reference"}]},
    {"prompt": "How do I reset a forgotten e-mail password?", "kind": "pairwise", "reference": "sft", "responses": [
        {"text": "Use the 'Forgot password' link on the sign-in page; the provider sends a reset link to your recovery address or phone.", "source": "ppo"},
        {"text": "You cannot.", "source": "sft"}]},
]


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        if os.environ.get("RLHFKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (run scripts/ci_feedback_setup.sh)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(tmp_path):
    from rlhfkit.feedback.loadtest import _free_port

    db = f"sqlite:///{tmp_path / 'browser.db'}"
    engine = make_engine(db)
    migrate(engine)
    add_user(engine, "alice", onboarded=False)
    add_user(engine, "admin", "admin")
    svc.set_settings(engine, {"overlap": 1, "gold_threshold": 0.7})
    import_tasks(engine, GOLD)
    import_tasks(engine, REAL)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "rlhfkit.feedback.asgi:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=dict(os.environ, RLHFKIT_FEEDBACK_DB=db), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    import httpx

    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield base, engine, tmp_path
    proc.terminate()
    proc.wait(timeout=10)
    engine.dispose()


def _second_annotator(engine) -> None:
    from rlhfkit.feedback.db import Task

    bob = add_user(engine, "bob")
    svc.set_settings(engine, {"overlap": 2})
    assert svc.allocate_batch(engine, bob) == 3
    with Session(engine) as s:
        tasks = s.scalars(sa.select(Task).where(Task.is_gold.is_(False)).order_by(Task.id)).all()
        by_text = {t.kind: {r.text.split()[0]: r.id for r in t.responses} for t in tasks}
        ids = {t.kind: t.id for t in tasks}
    rt, rk, pw = by_text["rating"], by_text["ranking"], by_text["pairwise"]
    svc.submit_label(engine, bob, ids["rating"], {"ratings": [{"response_id": rt["Researchers"], "score": 7}, {"response_id": rt["Parrots"], "score": 2}]})
    svc.submit_label(engine, bob, ids["ranking"], {"tiers": [[rk["Crisp"]], [rk["Red"]], [rk["Autumn"]], [rk["leaves"]]]})
    svc.submit_label(engine, bob, ids["pairwise"], {"winner": pw["Use"]})


def _rlhfkit_reward(prefs: Path, out: Path) -> subprocess.CompletedProcess:
    """Train a tiny reward model on the export: the lead's `rlhfkit reward` when its CLI is
    there, else the same trainer through its Python entry point."""
    exe = Path(sys.executable).parent / "rlhfkit"
    probe = subprocess.run([str(exe), "reward", "--help"], capture_output=True, text=True) if exe.exists() else None
    if probe is not None and probe.returncode == 0:
        cmd = [str(exe), "reward", "--model", "tiny", "--data", str(prefs), "--out", str(out), "--max-steps", "2"]
    else:
        code = ("import sys; from rlhfkit.config import RewardConfig; from rlhfkit.train.reward import train_reward; "
                "train_reward(RewardConfig(model='tiny', data=sys.argv[1], out=sys.argv[2], max_steps=2, eval_fraction=0.0), progress=False)")
        cmd = [sys.executable, "-c", code, str(prefs), str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.browser
def test_annotator_journey_in_chromium(server):
    pw = _browser_or_skip()
    base, engine, tmp = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        page.set_default_timeout(10_000)
        shot = lambda name, full=False: page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)  # noqa: E731

        # anonymous -> login page
        page.goto(f"{base}/tasks")
        assert "/login" in page.url
        shot("login")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        assert "Wrong user name or password" in page.inner_text(".error")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/tasks")
        assert "gold questions" in page.inner_text("main")

        # onboarding: two gold questions, answered right (one by keyboard, one by keys in ranking)
        page.click("text=Start onboarding")
        page.wait_for_url(f"{base}/onboarding")
        shot("onboarding")
        page.click("#start")
        for i, _ in enumerate(GOLD):
            if i:
                page.click("#next")
            page.wait_for_selector("#task-form")
            kind = page.get_attribute("#task-form", "data-kind")
            prompt = page.inner_text(".prompt .text")
            if kind == "pairwise":
                a_text = page.inner_text(".pair-grid .response:nth-child(1) .text")
                page.keyboard.press("a" if a_text.startswith("144") else "b")
                page.keyboard.press("Enter")
            else:
                assert "sleeping" in prompt
                cards = page.query_selector_all(".pool .rcard")
                for c in cards:
                    text = c.inner_text()
                    c.click()
                    page.keyboard.press("1" if "regular bedtime" in text else "2")
                page.click("#submit")
            page.wait_for_url("**/gold")
        assert page.is_visible("#passed")
        shot("gold_feedback")
        page.click("#next")

        # a rating task: keyboard 1-7, one flag, notes
        page.wait_for_selector('#task-form[data-kind="rating"]')
        assert page.inner_text("#progress") == "1 / 3"
        cards = page.query_selector_all(".response")
        for c in cards:
            good = "imitate" in c.inner_text()
            c.click()
            page.keyboard.press("6" if good else "2")
            if not good:
                c.query_selector('input[value="inappropriate_for_assistant"]').check()
                c.query_selector("textarea").fill("An advert, not a summary.")
        time.sleep(1.1)  # let the visible timer tick once for the screenshot
        shot("rating", full=True)
        page.keyboard.press("Escape")
        page.click("#submit")

        # a ranking task: keyboard for three, drag and drop for one, a tie in rank 2
        page.wait_for_selector('#task-form[data-kind="ranking"]')
        assert page.inner_text("#progress") == "2 / 3"
        assert page.is_disabled("#submit")  # nothing ranked yet
        want = {"Red leaves": "1", "Crisp air": "2", "Autumn is": "2", "leaves leaves": "4"}
        drag_card = None
        for c in page.query_selector_all(".pool .rcard"):
            text = c.inner_text()
            key = next(v for k, v in want.items() if k in text)
            if "Autumn is" in text:
                drag_card = c
                continue
            c.click()
            page.keyboard.press(key)
        shot("ranking_partial", full=True)
        rid = drag_card.get_attribute("data-rid")
        page.drag_and_drop(f'.rcard[data-rid="{rid}"]', '.tier .drop[data-tier="1"]')
        assert page.is_enabled("#submit")
        shot("ranking", full=True)
        tiers = json.loads(page.input_value("#ranking-input"))
        assert [len(t) for t in tiers] == [1, 2, 1]
        page.click("#submit")

        # a blind pairwise comparison
        page.wait_for_selector('#task-form[data-kind="pairwise"]')
        assert page.inner_text("#progress") == "3 / 3"
        body = page.inner_text("main")
        assert "ppo" not in body and "sft" not in body
        shot("pairwise")
        left = page.inner_text(".pair-grid .response:nth-child(1) .text")
        page.keyboard.press("a" if "Forgot password" in left else "b")
        page.keyboard.press("Enter")
        page.wait_for_url("**/tasks?all_done=1")
        shot("tasks")
        # a second annotator labels the same tasks (outside the browser), so that the
        # dashboard has agreement figures to show
        _second_annotator(engine)

        page.goto(f"{base}/me")
        assert "50%" in page.inner_text("main")  # with bob, on ratings
        shot("my_agreement")
        # someone else's (here: nonexistent) task is refused with a clear message
        page.goto(f"{base}/tasks/99999")
        assert "no task 99999" in page.inner_text(".error")

        # the admin's view
        admin = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        admin.goto(f"{base}/login")
        admin.fill("input[name=username]", "admin")
        admin.fill("input[name=password]", PASSWORD)
        admin.click("button[type=submit]")
        admin.wait_for_url(f"{base}/admin")
        assert admin.inner_text("#labels-total") == "6"
        assert admin.inner_text("#agreement").count("—") < 8  # figures, not blanks
        admin.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
        admin.goto(f"{base}/admin/tasks")
        admin.screenshot(path=str(SHOTS / "admin_tasks.png"))
        browser.close()

    # what the browser stored
    with Session(engine) as s:
        labels = {lab.kind: lab.payload for lab in s.scalars(sa.select(Label).where(Label.user_id == 1))}
    assert len(labels) == 3
    rating = {it["score"]: it for it in labels["rating"]["ratings"]}
    assert set(rating) == {6, 2} and rating[2]["flags"] == ["inappropriate_for_assistant"] and rating[2]["notes"] == "An advert, not a summary."
    assert [len(t) for t in labels["ranking"]["tiers"]] == [1, 2, 1]

    # the export trains a reward model
    from rlhfkit.feedback.export import export

    prefs = tmp / "prefs.jsonl"
    export(engine, prefs, "prefs")
    recs = [json.loads(line) for line in prefs.read_text().splitlines()]
    assert len([r for r in recs if r["annotator"] == "alice"]) == 1 + 5  # rating: 1 pair; ranking 1|2|1 tiers: 2 + 1 + 2
    r = _rlhfkit_reward(prefs, tmp / "rm")
    assert r.returncode == 0, r.stderr[-3000:]
    assert any((tmp / "rm").iterdir())
