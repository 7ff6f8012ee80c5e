"""``rlhfkit <command>``. Every training command takes ``--config FILE.yaml`` and one flag per option of
its config dataclass (flags override the file); ``--help`` lists every option with its help text."""

from __future__ import annotations

import click

from rlhfkit import config as C
from rlhfkit.cli_options import config_command, quiet_libraries, run_reporting_errors
from rlhfkit.experiments.overopt import command as overopt_command
from rlhfkit.loop.config import LoopConfig


def _sft(cfg):
    from rlhfkit.train.sft import train_sft

    click.echo(f"SFT model written to {train_sft(cfg)}")


def _reward(cfg):
    import json

    from rlhfkit.train.reward import train_reward

    out = train_reward(cfg)
    ev = json.loads((out / "eval.json").read_text())
    if ev.get("eval"):
        members = ev["eval"].get("member_accuracy")
        click.echo(f"held-out pairwise accuracy {ev['eval']['eval_accuracy']:.3f} on {ev['eval']['eval_pairs']} pairs"
                   + (f" (the ensemble's mean score; members {', '.join(f'{a:.3f}' for a in members)})" if members else ""))
    if ev.get("policy_samples"):
        ps = ev["policy_samples"]
        click.echo(f"accuracy on policy samples (gold-labelled pairs) {ps['accuracy']:.3f} on {ps['pairs']} pairs"
                   + (f" (members {', '.join(f'{a:.3f}' for a in ps['members'])})" if ps.get("members") else ""))
    click.echo(f"reward {'ensemble' if cfg.ensemble > 1 else 'model'} written to {out}")


def _dpo(cfg):
    import json

    from rlhfkit.train.dpo import train_dpo

    out = train_dpo(cfg)
    ev = json.loads((out / "eval.json").read_text())
    if ev.get("eval"):
        e = ev["eval"]
        click.echo(f"held-out: accuracy {e['eval_accuracy']:.3f}, implicit reward margin {e['eval_reward_margin']:+.3f}, "
                   f"log-prob margin {e['eval_logp_margin']:+.2f} (reference {ev['reference']['eval_logp_margin']:+.2f}) "
                   f"on {e['eval_pairs']} pairs")
    click.echo(f"DPO policy written to {out}")


def _ppo(cfg):
    from rlhfkit.train.ppo import train_ppo

    click.echo(f"PPO policy written to {train_ppo(cfg)}")


def _reinforce(cfg):
    from rlhfkit.train.reinforce import train_reinforce

    click.echo(f"REINFORCE policy written to {train_reinforce(cfg)}")


def _rloo(cfg):
    from rlhfkit.train.rloo import train_rloo

    click.echo(f"RLOO policy written to {train_rloo(cfg)}")


def _grpo(cfg):
    from rlhfkit.train.grpo import train_grpo

    click.echo(f"GRPO policy written to {train_grpo(cfg)}")


def _loop(cfg):
    import sys

    from rlhfkit.loop.collect import LabelTimeout
    from rlhfkit.loop.run import run_loop

    try:
        res = run_loop(cfg, echo=click.echo)
    except LabelTimeout as e:  # a clean stop: the rounds so far are on disk, the state says "timed_out"
        click.echo(f"stopped: {e}", err=True)
        sys.exit(3)
    click.echo(f"rounds written to {cfg.out}/rounds.jsonl, figure {cfg.out}/loop.png")
    if res["baseline"] is not None:
        last, b = res["rounds"][-1], res["baseline"]
        click.echo(f"{cfg.rounds} rounds vs one round with the same budget: gold {last['gold']:+.3f} vs {b['gold']:+.3f}, "
                   f"KL {last['kl']:.2f} vs {b['kl']:.2f}")


def _best_of_n(cfg):
    import json

    from rlhfkit.train.best_of_n import run_best_of_n

    out = run_best_of_n(cfg)
    s = json.loads((out.parent / "summary.json").read_text())
    click.echo(f"best-of-{s['n']} on {s['prompts']} prompts: mean picked score {s['picked_score']:.3f}, "
               f"{100 * s['picked_ended']:.0f}% of picks ended with EOS; KL to the sampler <= {s['kl_bound']:.2f} nats")
    click.echo(f"picked responses written to {out}")


def _expert_iteration(cfg):
    from rlhfkit.train.expert_iteration import run_expert_iteration

    click.echo(f"expert-iteration policy written to {run_expert_iteration(cfg)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rlhfkit")
def app():
    """rlhfkit: collect human feedback, train reward models, optimise policies (PPO, best-of-n, expert
    iteration, SFT) and compare them by win-rate -- on a laptop CPU or on GPUs."""


app.add_command(config_command(C.SFTConfig, _sft, "sft", "Supervised fine-tuning on demonstrations (loss on response tokens only)."))
app.add_command(config_command(C.RewardConfig, _reward, "reward", "Train a Bradley-Terry reward model on preference pairs and rankings."))
app.add_command(config_command(C.DPOConfig, _dpo, "dpo", "Direct preference optimisation of a policy on preference pairs and rankings against a frozen reference (no reward model, no sampling)."))
app.add_command(config_command(C.PPOConfig, _ppo, "ppo", "Optimise a policy against a reward with PPO and a per-token KL penalty."))
app.add_command(config_command(C.ReinforceConfig, _reinforce, "reinforce",
                               "REINFORCE with a baseline (none, constant, moving average, batch mean, leave-one-out), "
                               "optional KL penalty and MLE interpolation on reference pairs."))
app.add_command(config_command(C.RLOOConfig, _rloo, "rloo",
                               "RLOO: REINFORCE with the leave-one-out baseline over K samples per prompt and the "
                               "per-token KL penalty inside the reward (on by default)."))
app.add_command(config_command(C.GRPOConfig, _grpo, "grpo",
                               "GRPO: group-normalised advantages over K samples per prompt, PPO's clipped ratio, "
                               "a k3 KL term in the loss, no value network."))
app.add_command(config_command(C.BestOfNConfig, _best_of_n, "best-of-n",
                               "Sample n responses per prompt and keep the one the reward scores highest (no training)."))
app.add_command(config_command(C.ExpertIterationConfig, _expert_iteration, "expert-iteration",
                               "Best-of-n on fresh prompts, SFT on the winners, repeated for a number of rounds."))
app.add_command(config_command(LoopConfig, _loop, "loop",
                               "Iterated RLHF: each round ranks samples of the current policy (simulated judge, or people "
                               "in the feedback app with --feedback-db), retrains the reward model from SFT on old + new "
                               "preferences and trains the policy against it; rounds.jsonl and loop.png per round."))
app.add_command(overopt_command())


@app.command("reward-eval")
@click.option("--reward-model", required=True, help="A reward model folder, or an ensemble folder (`rlhfkit reward --ensemble K`).")
@click.option("--data", default=None, help="Preference JSONL (pairs and/or rankings) to measure accuracy on, e.g. held-out pairs.")
@click.option("--samples", default=None, help="Policy samples JSONL, {prompt, responses: [...]} (or candidates: [...]) or {prompt, response} lines: every pair of a prompt's samples is labelled by --gold.")
@click.option("--gold", default=None, help="The gold reward that labels the samples' pairs: 'TASK:METRIC', 'module:function', or 'samples': the \"gold\" each sample carries (a pipeline run's samples/*.jsonl, an overopt study's candidates.jsonl).")
@click.option("--reward-std-penalty", type=float, default=0.0, show_default=True, help="An ensemble's lambda: the score is mean - lambda * std over its members.")
@click.option("--out", default=None, help="Also write the figures to this JSON file.")
def reward_eval_cmd(reward_model, data, samples, gold, reward_std_penalty, out):
    """Pairwise accuracy of a reward model or ensemble (per member and of the ensemble) on preference pairs
    and on pairs of policy samples labelled by a gold reward (the distribution shift PPO brings)."""
    quiet_libraries()

    def run():
        import json
        from pathlib import Path

        from rlhfkit.train.reward_ensemble import describe, reward_eval

        res = reward_eval(reward_model, data, samples, gold, reward_std_penalty)
        for key, name in (("pairs", "preference pairs"), ("policy_samples", "policy samples (gold-labelled)")):
            if key in res:
                click.echo(describe(name, res[key]))
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=2) + "\n")

    run_reporting_errors(run)



@app.command("generate")
@click.option("--model", required=True, help="Model: alias (smollm2-135m, tiny), .gguf file or model folder.")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(exists=True, dir_okay=False), help="Prompts JSONL.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL: {prompt, response, source, sample} per line.")
@click.option("--num-samples", default=1, show_default=True, help="Responses per prompt.")
@click.option("--max-new-tokens", default=48, show_default=True, help="Longest response.")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling.")
@click.option("--batch-size", default=32, show_default=True, help="Prompts per generation batch.")
@click.option("--system-prompt", default=None, help="System message for chat-templated prompts that have none of their own.")
@click.option("--chat-template", type=click.Choice(["auto", "never"]), default="auto", show_default=True,
              help="auto: a plain-string prompt is the user turn of the tokenizer's chat template; never: raw text (as TRL).")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast while sampling (default: auto, bf16 only where the device computes it natively).")
def generate_cmd(model, prompts_file, out, num_samples, max_new_tokens, temperature, top_p, batch_size, system_prompt,
                 chat_template, seed, bf16):
    """Sample responses for a prompts file."""
    quiet_libraries()

    def run():
        from rlhfkit.data import load_prompts, write_jsonl
        from rlhfkit.models import default_device, load_frozen_lm, load_tokenizer
        from rlhfkit.rollout import GenerationConfig, generate

        from rlhfkit.precision import resolve_bf16

        prompts = [r["prompt"] for r in load_prompts(prompts_file, chat_template)]
        use_bf16 = resolve_bf16(bf16, default_device())
        tok = load_tokenizer(model)
        lm = load_frozen_lm(model, use_bf16)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
                               system_prompt=system_prompt, chat_template=chat_template)
        expanded = [p for p in prompts for _ in range(num_samples)]
        ro = generate(lm, tok, expanded, cfg, seed=seed, bf16=use_bf16)
        rows = [{"prompt": p, "response": r, "source": str(model), "sample": i % num_samples}
                for i, (p, r) in enumerate(zip(expanded, ro.responses))]
        write_jsonl(out, rows)
        click.echo(f"{len(rows)} responses written to {out}")

    run_reporting_errors(run)


@app.group("data")
def data_group():
    """Convert data files between rlhfkit's own shapes and TRL's."""


@data_group.command("to-pairs")
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
def data_to_pairs(src, dst):
    """Preference file (pairs and/or rankings, any shape `rlhfkit reward` reads) -> TRL preference pairs:
    each ranking becomes its K(K-1)/2 pairs, pairs pass through; `margin` on every row or on none."""

    def run():
        from rlhfkit.data import load_preferences, pair_rows, write_jsonl

        prefs = load_preferences(src)
        rows = pair_rows(prefs)
        write_jsonl(dst, rows)
        click.echo(f"{len(rows)} pairs from {len({p.prompt for p in prefs})} prompts written to {dst}")

    run_reporting_errors(run)


def _mount_optional_groups() -> None:
    """Commands that live in their own wings (pipeline, eval, feedback app) mount here when present."""
    try:
        from rlhfkit.feedback.cli import feedback_app
    except ImportError:
        feedback_app = None
    if feedback_app is not None:
        # typer ships its own click, whose exceptions (--help, usage errors) our group would not handle:
        # hand the arguments over to the typer app whole.
        @click.command("feedback", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                       add_help_option=False, help=feedback_app.info.help)
        @click.pass_context
        def feedback(ctx):
            feedback_app(args=ctx.args, prog_name="rlhfkit feedback")

        app.add_command(feedback)
    try:
        from rlhfkit.pipeline_cli import register

        register(app)
    except ImportError:
        pass
    from rlhfkit.experiments import register as register_experiments

    register_experiments(app)


_mount_optional_groups()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
