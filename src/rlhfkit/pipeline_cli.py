"""`rlhfkit pipeline`, `rlhfkit demo` and `rlhfkit eval`, mounted on the main CLI."""

from __future__ import annotations

from pathlib import Path

import click

from rlhfkit.cli_options import dataclass_options, quiet_libraries, run_reporting_errors
from rlhfkit.pipeline.config import PRESETS, SECTIONS, PipelineConfig, bundled_config_path, preset_overrides


def _print_result(run: Path, result: dict) -> None:
    from rich.console import Console

    from rlhfkit.eval import rich_table

    console = Console()
    t = result["timings"]
    console.print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()))
    if result.get("winrates"):
        console.print(rich_table(result["winrates"]))
        md = (run / "report.md").read_text()
        verdicts = [l for l in md.splitlines() if l.startswith("- ")]
        for v in verdicts[:8]:
            console.print(v)
        console.print(f"report: {(run / 'report.html').resolve()}")


def _run(cfg: PipelineConfig, resume: bool = False):
    from rlhfkit.pipeline.stages import run_pipeline

    result = run_pipeline(cfg, echo=click.echo, resume=resume)
    from rlhfkit.processes import Processes

    if Processes().is_main:  # several processes (accelerate launch): one table
        _print_result(Path(cfg.out), result)


def _load(config_file, preset, kw, sets=()) -> PipelineConfig:
    from rlhfkit.pipeline.config import load_pipeline_config, parse_sets

    try:
        layers = [preset_overrides(preset) if preset else {}, {k: v for k, v in kw.items() if v is not None}, parse_sets(sets)]
        return load_pipeline_config(config_file, *layers)
    except (ValueError, TypeError) as e:
        raise click.UsageError(str(e))


def _options() -> list[click.Parameter]:
    """A flag per top-level option; the methods' sections take ``--set SECTION.OPTION=VALUE``."""
    sections = ", ".join(SECTIONS)
    return [o for o in dataclass_options(PipelineConfig) if o.name not in SECTIONS] + [
        click.Option(["--set", "sets"], multiple=True, metavar="SECTION.OPTION=VALUE",
                     help=f"Set an option of a method's section ({sections}): e.g. --set ppo.steps=20 --set sft.lr=1e-4; "
                          "a section takes the options of its command (rlhfkit ppo --help). Repeatable.")]


def register(app: click.Group) -> None:
    resume_help = ("Finish a run that was killed (kill -9, out of memory, a lost machine): stages marked done in "
                   "RUN/stages/ are not rerun, an interrupted training stage goes on from its last checkpoint "
                   "(--set SECTION.save_every=N: how much work a kill can cost), the others start over with "
                   "the same seeds; the result is the one an uninterrupted run gives.")

    @click.command("pipeline", params=[click.Argument(["config_file"], required=False, type=click.Path(exists=True, dir_okay=False)),
                                       click.Option(["--resume", "resume_run"], type=click.Path(exists=True, file_okay=False), default=None,
                                                    metavar="RUN", help=resume_help + " The settings are the run's own (RUN/pipeline.yaml).")]
                   + _options())
    def pipeline(config_file, resume_run, sets, **kw):
        """Run the RLHF pipeline described by CONFIG_FILE (YAML): SFT, preferences from the simulated
        panel, reward model, PPO, best-of-n, expert iteration, evaluation. Flags override the file.
        With --resume RUN (and no CONFIG_FILE), finish the run in RUN."""
        quiet_libraries()
        if not resume_run:
            if not config_file:
                raise click.UsageError("give CONFIG_FILE, or --resume RUN to finish a run")
            run_reporting_errors(_run, _load(config_file, None, kw, sets))
            return
        saved = Path(resume_run) / "pipeline.yaml"
        if kw.get("out") not in (None, resume_run):
            raise click.UsageError(f"--out {kw['out']} with --resume {resume_run}: a resumed run stays in its own folder")
        if config_file:
            cfg = _load(config_file, None, {**kw, "out": resume_run}, sets)
        elif not saved.exists():
            raise click.UsageError(f"--resume {resume_run}: no pipeline.yaml there, not a pipeline run directory")
        else:
            from rlhfkit.pipeline.config import parse_sets
            from rlhfkit.pipeline.resume import resumable_config

            try:
                cfg = resumable_config(saved, resume_run, [{k: v for k, v in kw.items() if v is not None}, parse_sets(sets)])
            except (ValueError, TypeError) as e:
                raise click.UsageError(str(e))
        run_reporting_errors(_run, cfg, True)

    @click.command("demo", params=[click.Option(["--preset"], type=click.Choice(list(PRESETS)), default="demo", show_default=True,
                                                help="demo: SmolLM2-135M (about 13-26 min on 2 cores of a Zen 5 or Zen 4 with native bf16, 49-57 min in fp32 on AVX2 EPYCs without (before the 2-epoch reward model); see the README); smoke: the tiny model (< 2 min).")]
                   + [click.Option(["--resume"], is_flag=True, help=resume_help + " Give the same options as the run's first command.")]
                   + _options())
    def demo(preset, resume, sets, **kw):
        """The pipeline on the bundled config (movie-review continuation, SmolLM2-135M-Instruct), then the
        lecture's comparison table."""
        quiet_libraries()
        if preset == "smoke" and kw.get("out") is None:
            kw["out"] = "runs/smoke"
        run_reporting_errors(_run, _load(str(bundled_config_path()), preset, kw, sets), resume)

    @click.command("eval")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--human", type=click.Path(exists=True), default=None,
                  help="Human judgments (`rlhfkit feedback export --kind eval`, or the feedback database URL) for a human win-rate column.")
    @click.option("--eval-prompts", type=int, default=None, help="Number of eval prompts (default: the run's setting).")
    @click.option("--eval-samples", type=click.IntRange(min=1), default=None,
                  help="Answers per eval prompt for every sampled method (default: the run's setting).")
    def eval_cmd(run_dir, human, eval_prompts, eval_samples):
        """Evaluate every method found in RUN_DIR against the initial model: simulated win-rate with its
        standard error, gold and proxy reward, KL to SFT, length; writes winrates.json, samples/, report.md/html."""
        quiet_libraries()
        from rlhfkit.pipeline.config import load_pipeline_config

        saved = Path(run_dir) / "pipeline.yaml"
        try:  # the run's own settings; its sections' wired paths are wired again for RUN_DIR
            cfg = load_pipeline_config(saved if saved.exists() else None,
                                       {k: v for k, v in dict(out=run_dir, stages="eval", human=human, eval_prompts=eval_prompts,
                                                                  eval_samples=eval_samples).items() if v is not None},
                                       allow_wired=True)
        except (ValueError, TypeError) as e:
            raise click.UsageError(f"{saved}: {e}")
        run_reporting_errors(_run, cfg)

    app.add_command(pipeline)
    app.add_command(demo)
    app.add_command(eval_cmd)
