"""Chat with the model: an annotator writes a prompt, the workers sample replies from the
chosen models, and the annotator ranks them (a waiting page until the replies are in)."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from .. import service as svc
from ..db import Job, Task, User
from .deps import Engine, TaskId, annotator_user, render, wants_json

router = APIRouter()


@router.get("/chat", response_class=HTMLResponse)
def chat_page(request: Request, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    # offered: every model a chat may ask for (svc.create_chat_task accepts exactly these);
    # with none there is no form, since any name typed in would be refused
    models = svc.served_models(engine)
    running = set(svc.active_models(engine))
    return render(request, "chat.html", user=user, models=models, waiting=[m for m in models if m not in running], error=None)


@router.post("/chat")
async def chat_submit(request: Request, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    form = await request.form()
    models = [str(m) for m in form.getlist("model") if str(m)]  # checked by svc.create_chat_task
    try:
        k = int(str(form.get("num_samples", "2")))
    except ValueError:
        raise svc.Invalid("number of replies must be an integer") from None
    params = {"max_new_tokens": 64, "temperature": 1.0}
    task_id = await run_in_threadpool(svc.create_chat_task, engine, user, str(form.get("prompt", "")), models, k, params)
    if wants_json(request):
        return JSONResponse({"task_id": task_id}, status_code=201)
    return RedirectResponse(f"/chat/{task_id}", status_code=303)


@router.get("/chat/{task_id}", response_class=HTMLResponse)
def chat_wait(request: Request, task_id: TaskId, engine: Engine, user: User = Depends(annotator_user)) -> Response:
    with Session(engine) as s:
        svc.get_assignment(s, user, task_id)
        task = s.get(Task, task_id)
        jobs = s.scalars(sa.select(Job).where(Job.task_id == task_id).order_by(Job.id)).all()
    if task.status == "ready":
        return RedirectResponse(f"/tasks/{task_id}", status_code=303)
    return render(request, "chat_wait.html", user=user, task=task, jobs=jobs)
