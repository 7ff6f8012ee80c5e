"""Small experiments that show a point of the lecture in measured numbers: ``rlhfkit experiment NAME``.

Each is a config dataclass with presets ("full": the measured run the README reports; "smoke": the tiny
model in well under 2 minutes, used by the tests) and a function that writes ``results.json`` and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from rlhfkit.cli_options import dataclass_options, quiet_libraries, run_reporting_errors


def _mt():
    from rlhfkit.experiments import mt_bleu

    return mt_bleu.MTExperimentConfig, mt_bleu.PRESETS, mt_bleu.run_mt_experiment


def _dialogue():
    from rlhfkit.experiments import dialogue

    return dialogue.DialogueExperimentConfig, dialogue.PRESETS, dialogue.run_dialogue_experiment


EXPERIMENTS = {
    "mt-bleu": (_mt, "MLE, then REINFORCE with a sentence-BLEU reward without baseline, with a baseline, and with "
                     "baseline + MLE interpolation, on the toy translation task; test BLEU/chrF, gradient variance, dev curve."),
    "dialogue": (_dialogue, "MLE on the dialogue task, then REINFORCE against Li et al.'s combined reward (dullness, "
                            "repetition, coherence); each term's mean before and after, and the turns side by side."),
}


def _command(name: str, load, help_text: str) -> click.Command:
    cls, presets, run = load()

    def callback(preset, **kw):
        quiet_libraries()
        values = {**presets[preset], **{k: v for k, v in kw.items() if v is not None}}
        values.setdefault("out", f"runs/{name.replace('-', '_')}" + ("" if preset == "full" else f"_{preset}"))
        cfg = cls(**values)
        results = run_reporting_errors(run, cfg)
        click.echo(json.dumps({k: v for k, v in results.items() if k not in ("settings", "dev_bleu", "samples")}, indent=2))
        click.echo(f"results written to {Path(cfg.out) / 'results.json'}")

    params = [click.Option(["--preset"], type=click.Choice(list(presets)), default="full", show_default=True,
                           help="full: the measured run; smoke: the tiny model, well under 2 minutes.")]
    return click.Command(name, params=params + dataclass_options(cls), callback=callback, help=help_text)


def register(app: click.Group) -> None:
    """Mount ``rlhfkit experiment`` with one subcommand per experiment."""

    @app.group("experiment")
    def experiment():
        """Small experiments that show a point of the lecture in measured numbers (results.json + plots)."""

    for name, (load, help_text) in EXPERIMENTS.items():
        experiment.add_command(_command(name, load, help_text))
