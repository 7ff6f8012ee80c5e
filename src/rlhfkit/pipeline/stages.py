"""The lecture's pipeline, one function per stage. Each stage reads the files the earlier stages wrote
in the run directory and writes its own, so any stage can run alone:

  sft/                 SFT model (initial model fine-tuned on demonstrations)
  prefs/rankings.jsonl K samples per preference prompt from the SFT model, ranked by the panel
  reward/              reward model (Bradley-Terry, initialised from SFT, normalised on SFT samples)
  ppo/                 PPO policy (KL penalty to SFT), metrics.jsonl
  best_of_n/           n SFT samples per eval prompt, reranked by the reward model
  expert_iteration/    round-1 ... round-R: best-of-n winners -> SFT, repeated
  samples/, winrates.json, report.md, report.html   the evaluation
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import PPOConfig, RewardConfig, SFTConfig
from rlhfkit.data import write_jsonl
from rlhfkit.pipeline.config import PipelineConfig
from rlhfkit.pipeline.seeds import stream_seed


class Context:
    """What the stages share: config, run dir, the task, and lazily the task's judge."""

    def __init__(self, cfg: PipelineConfig, progress: bool = True):
        from rlhfkit.precision import resolve_bf16
        from rlhfkit.tasks import load_task

        # one precision decision for every stage (auto: bf16 only where the device computes it natively)
        cfg = dataclasses.replace(cfg, bf16=resolve_bf16(cfg.bf16))
        self.cfg, self.progress = cfg, progress
        self.run = Path(cfg.out)
        self.run.mkdir(parents=True, exist_ok=True)
        self.task = load_task(cfg.task)
        self._judge = None
        self._opening: dict[str, str] = {}

    # prompts: the policy sees the task's framing of an opening; the judge judges the opening itself
    def frame(self, openings: list[str]) -> list[str]:
        out = []
        for o in openings:
            p = self.task.format_prompt(o)
            self._opening[p] = o
            out.append(p)
        return out

    def openings_of(self, prompts: list[str]) -> list[str]:
        return [self._opening.get(p, p) for p in prompts]

    def split(self, name: str, n: int | None = None, start: int = 0) -> list[str]:
        rows = self.task.prompts(name)
        return rows[start : start + n] if n else rows[start:]

    @property
    def judge(self):
        """The task's judge (``rlhfkit.tasks.Judge``), built on first use: it may load the initial model
        (the movie-review panel scores fluency under it)."""
        if self._judge is None:
            self._judge = self.task.make_judge(self.cfg.model, self.cfg.bf16, self.cfg.seed)
        return self._judge

    def gold(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.as_tensor(self.judge.gold_reward(self.openings_of(prompts), responses), dtype=torch.float32)

    @property
    def mp(self) -> str:
        return "bf16" if self.cfg.bf16 else "no"


def _gen_cfg(ctx: Context, temperature: float):
    from rlhfkit.rollout import GenerationConfig

    c = ctx.cfg
    return GenerationConfig(max_new_tokens=c.max_new_tokens, temperature=temperature, batch_size=c.gen_batch_size,
                            system_prompt=c.system_prompt)


def sample(ctx: Context, model_path, prompts: list[str], n: int, temperature: float, seed: int, label: str, lm=None):
    """n responses per prompt (grouped: prompt i's are rows i*n .. i*n+n-1). Returns the Rollout."""
    from rlhfkit.models import load_frozen_lm, load_tokenizer
    from rlhfkit.rollout import generate
    from rlhfkit.train.common import progress_bar

    tok = load_tokenizer(model_path)
    lm = lm if lm is not None else load_frozen_lm(model_path, ctx.cfg.bf16)
    expanded = [p for p in prompts for _ in range(n)]
    with progress_bar(len(expanded), label, disable=not ctx.progress) as bar:
        task = bar.add_task(label, total=len(expanded), info="")
        ro = generate(lm, tok, expanded, _gen_cfg(ctx, temperature), seed=seed, bf16=ctx.cfg.bf16,
                      progress=lambda k: bar.update(task, advance=k))
    return ro


# ---------------------------------------------------------------------------------------------- stages


def stage_sft(ctx: Context) -> Path:
    from rlhfkit.train.sft import train_sft

    c = ctx.cfg
    demos = ctx.task.splits["sft"][: c.sft_examples]
    data = write_jsonl(ctx.run / "data" / "sft.jsonl",
                       [{"prompt": ctx.task.format_prompt(d["prompt"]), "completion": d["completion"]} for d in demos])
    return train_sft(SFTConfig(model=c.model, data=str(data), out=str(ctx.run / "sft"), epochs=c.sft_epochs, lr=c.sft_lr,
                               batch_size=c.sft_batch_size, mixed_precision=ctx.mp, system_prompt=c.system_prompt,
                               seed=c.seed), progress=ctx.progress)


def stage_preferences(ctx: Context) -> Path:
    """K responses per preference prompt, drawn from the models in ``pref_sources`` (the lecture: outputs
    from the current and the initial model give diversity and hard negatives), shuffled, and each set
    ranked by one simulated annotator with label noise (AlpacaFarm)."""
    c = ctx.cfg
    openings = ctx.split("preference", c.pref_prompts)
    prompts = ctx.frame(openings)
    sources = [s.strip() for s in c.pref_sources.split(",") if s.strip()]
    paths = {"sft": ctx.run / "sft", "initial": c.model}
    unknown = [s for s in sources if s not in paths]
    if unknown:
        raise ValueError(f"pref_sources: unknown source(s) {unknown}; use sft and/or initial")
    counts = [c.pref_k // len(sources) + (1 if i < c.pref_k % len(sources) else 0) for i in range(len(sources))]
    drawn = {}
    for src, k in zip(sources, counts):
        if k:
            # each source its own stream: with one seed the SFT and initial models' answers share their draws
            ro = sample(ctx, paths[src], prompts, k, c.temperature, stream_seed(c.seed, f"preferences:{src}"),
                        f"sampling {k} per preference prompt from {src}")
            drawn[src] = [ro.responses[i * k : (i + 1) * k] for i in range(len(prompts))]
    rng = np.random.default_rng(c.seed + 2)
    groups, group_sources = [], []
    for i in range(len(prompts)):
        items = [(r, src) for src in drawn for r in drawn[src][i]]
        order = rng.permutation(len(items))  # the position of a response says nothing about its source
        groups.append([items[j][0] for j in order])
        group_sources.append([items[j][1] for j in order])
    same_draws = copy.deepcopy(rng)  # the same annotators and Gumbel noise, without the label noise
    rankings = ctx.judge.rank(openings, groups, flip_prob=c.flip_prob, rng=rng)
    rows = [{"prompt": p, "responses": g, "ranking": r, "sources": s, "annotator": "simulated-panel",
             "flip_prob": c.flip_prob} for p, g, r, s in zip(prompts, groups, rankings, group_sources)]
    out = write_jsonl(ctx.run / "prefs" / "rankings.jsonl", rows)
    # the panel's agreement on pairs of these samples (first two responses of each prompt)
    report = ctx.judge.agreement_report(openings, [g[0] for g in groups], [g[1] for g in groups], rng=np.random.default_rng(c.seed + 3))
    clean = ctx.judge.rank(openings, groups, flip_prob=0.0, rng=same_draws)
    report["label_noise"] = label_noise_report(ctx.judge, openings, groups, rankings, clean, c.flip_prob)
    (ctx.run / "prefs" / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def label_noise_report(panel, openings: list[str], groups: list[list[str]], rankings, clean, flip_prob: float) -> dict:
    """What the label noise did to the rankings, measured on their pairs:
    pairwise_flip_rate (+ stderr, over rankings: the pairs of one ranking flip together): share of pairs
    ordered differently from the same annotator's ranking without label noise (expected: flip_prob);
    disagreement_with_gold: share of pairs ordered differently from the noise-free panel-mean utility
    (label noise + annotator temperature + the annotator's own taste); pairs of identical texts skipped."""
    from rlhfkit.annotators.panel import pairwise_disagreement

    flips = pairwise_disagreement(rankings, clean)
    per = np.asarray(flips["per_ranking"])
    se = float(per.std(ddof=1) / math.sqrt(per.size)) if per.size > 1 else None
    gold_u = panel.gold_reward([o for o, g in zip(openings, groups) for _ in g], [r for g in groups for r in g])
    agree = total = 0
    start = 0
    for g, r in zip(groups, rankings):
        u, pos = gold_u[start : start + len(g)], {item: j for j, item in enumerate(r)}
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                if g[a] != g[b] and u[a] != u[b]:
                    total += 1
                    agree += (pos[a] < pos[b]) == (u[a] > u[b])
        start += len(g)
    return {"flip_prob": flip_prob, "pairwise_flip_rate": flips["rate"], "stderr": se, "pairs": flips["pairs"],
            "disagreement_with_gold": 1.0 - agree / total if total else None, "gold_pairs": total}


def stage_reward(ctx: Context) -> Path:
    """Bradley-Terry on the rankings, normalised on the SFT model's samples among them (the policy PPO
    starts from, so that its samples score mean 0 at the start), not on every ranked response."""
    from rlhfkit.train.reward import train_reward

    c = ctx.cfg
    rankings = ctx.run / "prefs" / "rankings.jsonl"
    reference = sft_reference(rankings, ctx.run / "data" / "reward_reference.jsonl")
    return train_reward(RewardConfig(model=str(ctx.run / "sft"), data=str(rankings), reference=reference,
                                     out=str(ctx.run / "reward"), epochs=c.rm_epochs, lr=c.rm_lr, batch_size=c.rm_batch_size,
                                     train_top_layers=c.rm_train_top_layers, mixed_precision=ctx.mp,
                                     system_prompt=c.system_prompt, chat_template=getattr(c, "chat_template", "auto"),
                                     seed=c.seed), progress=ctx.progress)


def sft_reference(rankings: Path, out: Path) -> str | None:
    """Write the ranked responses whose source is "sft" as {prompt, response} rows to ``out``; None (the
    trainer then normalises on every response) when the rankings record no SFT sources."""
    rows = [{"prompt": r["prompt"], "response": x} for r in _read_rows(rankings)
            for x, src in zip(r["responses"], r.get("sources") or []) if src == "sft"]
    return str(write_jsonl(out, rows)) if rows else None


def reward_scorer(ctx: Context):
    """The reward model as the pipeline uses it: its saved system prompt and token limits, and centred
    (SFT samples score mean 0), so the reported proxy reads as "better or worse than SFT"."""
    from rlhfkit.scoring import RewardScorer

    return RewardScorer.load(ctx.run / "reward", batch_size=64, bf16=ctx.cfg.bf16, center=True)


def stage_ppo(ctx: Context) -> Path:
    from rlhfkit.train.ppo import train_ppo

    c = ctx.cfg
    prompts = ctx.frame(ctx.split("unlabeled"))
    data = write_jsonl(ctx.run / "data" / "unlabeled.jsonl", [{"prompt": p} for p in prompts])
    cfg = PPOConfig(model=str(ctx.run / "sft"), reward_model=str(ctx.run / "reward"), prompts=str(data), out=str(ctx.run / "ppo"),
                    steps=c.ppo_steps, batch_size=c.ppo_batch_size, minibatch_size=c.ppo_minibatch_size, ppo_epochs=c.ppo_epochs,
                    lr=c.ppo_lr, lora_r=c.ppo_lora_r, init_kl_coef=c.ppo_kl_coef, adaptive_kl=c.ppo_adaptive_kl,
                    kl_target=c.ppo_kl_target, max_kl=c.ppo_max_kl, target_kl=c.ppo_target_kl, vf_coef=c.ppo_vf_coef,
                    missing_eos_penalty=c.ppo_missing_eos_penalty, whiten_rewards=c.ppo_whiten_rewards,
                    max_new_tokens=c.max_new_tokens, temperature=c.temperature, mixed_precision=ctx.mp,
                    system_prompt=c.system_prompt, seed=c.seed)
    return train_ppo(cfg, gold_fn=ctx.gold if c.ppo_log_gold else None, progress=ctx.progress)


def best_of_n(ctx: Context, model_path, prompts: list[str], n: int, seed: int, label: str, scorer=None, lm=None):
    """n samples per prompt, the reward model's favourite kept. Returns (best responses, all rows).

    The reward model scores every candidate as finished (an EOS appended); a candidate cut off at
    max_new_tokens loses ``ppo_missing_eos_penalty``, as it would in PPO, so selection and optimisation
    follow one rule. Rows keep the reward model's scores, the ended flags and the penalised scores."""
    ro = sample(ctx, model_path, prompts, n, ctx.cfg.eval_temperature, seed, label, lm=lm)
    scorer = scorer or reward_scorer(ctx)
    scores = scorer([p for p in prompts for _ in range(n)], ro.responses).cpu().view(len(prompts), n)
    ended = ro.ended.view(len(prompts), n).cpu()
    penalised = scores - ctx.cfg.ppo_missing_eos_penalty * (~ended).float()
    best = penalised.argmax(1).tolist()
    picked = [ro.responses[i * n + b] for i, b in enumerate(best)]
    rows = [{"prompt": p, "candidates": ro.responses[i * n : (i + 1) * n], "scores": scores[i].tolist(),
             "ended": ended[i].tolist(), "penalised_scores": penalised[i].tolist(), "best": best[i]}
            for i, p in enumerate(prompts)]
    return picked, rows


def stage_best_of_n(ctx: Context) -> Path:
    c = ctx.cfg
    prompts = ctx.frame(ctx.split("eval", min(c.bon_prompts or c.eval_prompts, c.eval_prompts)))
    # its own stream: with the seed of the SFT or reference answers its candidates would copy their draws
    picked, rows = best_of_n(ctx, ctx.run / "sft", prompts, c.bon_n, stream_seed(c.seed, "eval:best_of_n"),
                             f"best-of-{c.bon_n}: sampling")
    write_jsonl(ctx.run / "best_of_n" / "candidates.jsonl", rows)
    return write_jsonl(ctx.run / "best_of_n" / "responses.jsonl", [{"prompt": p, "response": r} for p, r in zip(prompts, picked)])


def expert_demonstrations(prompts: list[str], picked: list[str], rows: list[dict]) -> list[dict]:
    """The SFT data of an expert-iteration round: each prompt's best-of-n winner exactly as it was sampled.
    A winner cut off at max_new_tokens is marked ``"finished": false``, so SFT learns its tokens but no
    EOS after them (an EOS there would teach the policy to stop mid-sentence)."""
    out = []
    for p, x, row in zip(prompts, picked, rows):
        out.append({"prompt": p, "completion": x} if row["ended"][row["best"]] else {"prompt": p, "completion": x, "finished": False})
    return out


def stage_expert_iteration(ctx: Context) -> Path:
    """Best-of-n on fresh prompts, SFT on the winners, repeated (each round starts from the last)."""
    from rlhfkit.train.sft import train_sft

    c = ctx.cfg
    model = ctx.run / "sft"
    scorer = reward_scorer(ctx)
    summary = []
    for r in range(1, c.ei_rounds + 1):
        prompts = ctx.frame(ctx.split("unlabeled", c.ei_prompts, start=(r - 1) * c.ei_prompts))
        picked, rows = best_of_n(ctx, model, prompts, c.ei_n, stream_seed(c.seed, f"expert_iteration:{r}"),
                                 f"expert iteration {r}: best-of-{c.ei_n}", scorer)
        out = ctx.run / "expert_iteration" / f"round-{r}"
        demos = expert_demonstrations(prompts, picked, rows)
        data = write_jsonl(out.parent / f"round-{r}.jsonl", demos)
        summary.append({"round": r, "prompts": len(prompts), "finished_winners": sum(d.get("finished", True) for d in demos),
                        "winner_score": float(np.mean([row["penalised_scores"][row["best"]] for row in rows]))})
        model = train_sft(SFTConfig(model=str(model), data=str(data), out=str(out), epochs=c.ei_epochs, lr=c.ei_lr,
                                    warmup_steps=c.ei_warmup_steps, batch_size=c.sft_batch_size, mixed_precision=ctx.mp,
                                    system_prompt=c.system_prompt, seed=c.seed + r), progress=ctx.progress)
    (ctx.run / "expert_iteration" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return model


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def reference_logprobs(model, rollouts: list, temperature: float, bf16: bool, batch_prompts: int = 16) -> list[torch.Tensor]:
    """log pi(y | x) under ``model`` of each rollout's responses ((B,) per rollout). The rollouts answer
    the same prompts in the same order, so each batch holds a few prompts with every rollout's answer to
    them, and each prompt runs once for all of them."""
    from rlhfkit import ops
    from rlhfkit.forward import autocast_context, forward_response, pad_to

    if not rollouts:
        return []
    if any(not torch.equal(ro.prompt_ids, rollouts[0].prompt_ids) for ro in rollouts[1:]):  # other tokenizers
        return [reference_logprobs(model, [ro], temperature, bf16, batch_prompts)[0] for ro in rollouts]
    B, k = len(rollouts[0]), len(rollouts)
    T = max(ro.response_ids.shape[1] for ro in rollouts)
    r_ids = torch.stack([pad_to(ro.response_ids, T, 0, False) for ro in rollouts], 1).flatten(0, 1)  # (B*k, T)
    r_mask = torch.stack([pad_to(ro.response_mask, T, 0, False) for ro in rollouts], 1).flatten(0, 1)
    p_ids = rollouts[0].prompt_ids.repeat_interleave(k, 0)
    p_mask = rollouts[0].prompt_mask.repeat_interleave(k, 0)
    out = []
    for i in range(0, B * k, batch_prompts * k):
        sl = slice(i, i + batch_prompts * k)
        with autocast_context(p_ids.device, bf16):
            lp = forward_response(model, p_ids[sl], p_mask[sl], r_ids[sl], r_mask[sl], temperature=temperature,
                                  share_prompts=True)["logprobs"].float()
        out.append(ops.sequence_logprobs(lp, r_mask[sl]))
    return list(torch.cat(out).view(B, k).unbind(1))


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def method_models(ctx: Context) -> dict[str, Path | str]:
    c = ctx.cfg
    found: dict[str, Path | str] = {"initial": c.model}
    for name, path in (("sft", ctx.run / "sft"), ("ppo", ctx.run / "ppo"),
                       ("expert_iteration", ctx.run / "expert_iteration" / f"round-{c.ei_rounds}")):
        if (path / "config.json").exists():
            found[name] = path
    return found


def stage_eval(ctx: Context) -> dict:
    """Every method answers the eval prompts ``eval_samples`` times; the panel (no label noise) compares
    answer j with the initial model's answer j on the same prompt (best-of-n answers the first
    bon_prompts prompts once, and that answer meets each of the reference's answers). Each method, and
    best-of-n's candidates, sample from their own random stream (``seeds.stream_seed``), so a method's
    answer and the reference's are independent draws paired only by prompt. The initial model is the
    reference: its row is its answers against themselves, 50% by definition (marked so, no SE), not a
    second independent draw (that would cost one more sampling pass and, since a noise-free comparison
    is antisymmetric, only show around a known 50% the sampling noise every SE already reports). KL to SFT is
    estimated on the method's own samples at the eval temperature: mean of log pi_M(y|x) -
    log pi_SFT(y|x); for best-of-n, the analytic log n - (n-1)/n."""
    from rlhfkit.eval import build_winrates, write_report
    from rlhfkit.models import load_frozen_lm

    c = ctx.cfg
    openings = ctx.split("eval", c.eval_prompts)
    prompts = ctx.frame(openings)
    models = method_models(ctx)
    scorer = reward_scorer(ctx) if (ctx.run / "reward" / "config.json").exists() else None
    sft_lm = load_frozen_lm(models["sft"], c.bf16) if "sft" in models else None
    n = max(1, c.eval_samples)
    responses: dict[str, list[str]] = {}
    kls: dict[str, list[float]] = {}
    where: dict[str, list[tuple[int, int]]] = {}  # method -> (prompt index, sample index) of each row
    sampled = {}
    for name, path in models.items():
        lm = sft_lm if name == "sft" else load_frozen_lm(path, c.bf16)
        # each method its own stream (pipeline/seeds.py): with one seed, answer j of two methods would share
        # their random draws, and a model identical to the reference would repeat its answers token for token
        sampled[name] = sample(ctx, path, prompts, n, c.eval_temperature, stream_seed(c.seed, f"eval:{name}"),
                               f"eval: {name} ({n} per prompt)", lm=lm)
        responses[name] = sampled[name].responses
        where[name] = [(i, j) for i in range(len(prompts)) for j in range(n)]
    # KL to SFT on each method's own samples: log pi_M(y|x) was recorded while sampling (at the eval
    # temperature); log pi_SFT(y|x) comes from one pass per prompt over all methods' answers. (In bf16 a
    # full pass and the token-by-token sampler differ by ~0.1 nat per sequence: noise next to the KLs here.)
    others = [m for m in sampled if m != "sft"]
    if sft_lm is not None and others:
        for name, lp_sft in zip(others, reference_logprobs(sft_lm, [sampled[m] for m in others], c.eval_temperature, c.bf16)):
            ro = sampled[name]
            kls[name] = ((ro.logprobs * ro.response_mask).sum(1) - lp_sft).tolist()
    for name in responses:
        kls.setdefault(name, [0.0] * len(responses[name]))
    bon_rows = _read_rows(ctx.run / "best_of_n" / "candidates.jsonl")
    if bon_rows and [r["prompt"] for r in bon_rows] == prompts[: len(bon_rows)]:
        # best-of-n answers the first bon_prompts eval prompts once (16 samples each are its cost); its answer
        # is judged against each of the reference's answers to the prompt, as the sampled methods' answers are
        responses["best_of_n"] = [r["candidates"][r["best"]] for r in bon_rows for _ in range(n)]
        where["best_of_n"] = [(i, j) for i in range(len(bon_rows)) for j in range(n)]
        k = len(bon_rows[0]["candidates"])
        kls["best_of_n"] = [math.log(k) - (k - 1) / k] * len(where["best_of_n"])
    reference = dict(zip(where["initial"], responses["initial"]))
    samples_dir = ctx.run / "samples"
    # score every method's answers in one pass, grouped by prompt (each prompt then runs once per model):
    # the panel's fluency feature under the initial model (remembered for the comparisons) and the proxy
    flat = sorted(((m, r) for m in responses for r in range(len(responses[m]))), key=lambda t: where[t[0]][t[1]][0])
    flat_r = [responses[m][r] for m, r in flat]
    flat_i = [where[m][r][0] for m, r in flat]
    gold_flat = np.asarray(ctx.judge.gold_reward([openings[i] for i in flat_i], flat_r))
    proxy_flat = scorer([prompts[i] for i in flat_i], flat_r).tolist() if scorer is not None else [None] * len(flat)
    position = {t: j for j, t in enumerate(flat)}
    for name, resp in responses.items():
        at = [position[(name, r)] for r in range(len(resp))]
        opening = [openings[i] for i, _ in where[name]]
        ref = [reference[ij] for ij in where[name]]
        outcome = ctx.judge.compare(opening, resp, ref, noise=False)
        write_jsonl(samples_dir / f"{name}.jsonl", [
            {"prompt": o, "sample": ij[1], "response": r, "gold": float(gold_flat[j]), "proxy": proxy_flat[j], "kl": float(k),
             "length": len(r.split()), "outcome": float(w), "reference_response": rr}
            for o, ij, r, j, k, w, rr in zip(opening, where[name], resp, at, kls[name], outcome, ref)])
    human = None
    if c.human:
        from rlhfkit.feedback.winrate import human_winrates

        human = {k: v for k, v in human_winrates(c.human).items() if k in responses}
    for stale in ("winrates.json",):
        (ctx.run / stale).unlink(missing_ok=True)
    winrates = build_winrates(ctx.run, reference="initial", human=human)
    write_report(ctx.run)
    return winrates


STAGES = {
    "sft": stage_sft,
    "preferences": stage_preferences,
    "reward": stage_reward,
    "ppo": stage_ppo,
    "best_of_n": stage_best_of_n,
    "expert_iteration": stage_expert_iteration,
    "eval": stage_eval,
}


def run_pipeline(cfg: PipelineConfig, progress: bool = True, echo=print) -> dict:
    """Run the stages named in ``cfg.stages``; returns the win-rate table and writes timings.json."""
    from rlhfkit.config import save_config

    ctx = Context(cfg, progress)
    save_config(ctx.cfg, ctx.run / "pipeline.yaml")  # with the precision actually used
    names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    timings_path = ctx.run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    result = None
    t_all = time.perf_counter()
    for name in names:
        echo(f"== {name}")
        t = time.perf_counter()
        result = STAGES[name](ctx)
        timings[name] = round(time.perf_counter() - t, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        echo(f"   {name} done in {timings[name]:.0f} s")
        if name == "preferences":
            a = json.loads((ctx.run / "prefs" / "agreement.json").read_text())
            echo(f"   panel agreement: pairwise {a['mean_pairwise_agreement']:.3f}, Krippendorff alpha {a['krippendorff_alpha']:.3f}, "
                 f"Fleiss kappa {a['fleiss_kappa']:.3f}")
            ln = a.get("label_noise")
            if ln and ln["pairwise_flip_rate"] is not None:
                se = "" if ln["stderr"] is None else f" ± {100 * ln['stderr']:.1f}"
                gold = "" if ln["disagreement_with_gold"] is None else (
                    f"; {100 * ln['disagreement_with_gold']:.1f}% of pairs disagree with the noise-free panel gold")
                echo(f"   label noise: flip_prob {ln['flip_prob']:g} flipped {100 * ln['pairwise_flip_rate']:.1f}% of "
                     f"{ln['pairs']} pairs{se}{gold}")
        if name == "reward":
            ev = json.loads((ctx.run / "reward" / "eval.json").read_text()).get("eval", {})
            if ev:
                echo(f"   reward model held-out accuracy {ev['eval_accuracy']:.3f} on {ev['eval_pairs']} pairs")
    timings["total_this_call"] = round(time.perf_counter() - t_all, 1)
    timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    return {"timings": timings, "winrates": result if names and names[-1] == "eval" else None, "config": asdict(cfg)}
