"""What every ``rlhfkit`` command shares: one click option per config dataclass field, a ``--config``
command built from a dataclass, quiet library logging, and errors in the user's input printed as one
line (exit status 2) instead of a traceback. ``cli.py`` and ``pipeline_cli.py`` both build on it."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from rlhfkit.config import load_config

CLICK_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def quiet_libraries() -> None:
    """transformers' per-load progress bars drown our own; keep errors."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:
        pass


def dataclass_options(cls) -> list[click.Option]:
    """One click option per dataclass field, with the field's help text; default None = "not given", so
    that a YAML file's value is overridden only by flags actually typed."""
    params = []
    for f in dataclasses.fields(cls):
        type_name = str(f.type).replace(" | None", "").strip()
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f.metadata.get("help", "") + (f"  [default: {default}]" if default not in (None, "") else "")
        if type_name == "bool":
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=None, help=text))
        else:
            params.append(click.Option([flag, f.name], type=CLICK_TYPES.get(type_name, str), default=None, help=text))
    return params


def config_command(cls, run, name: str, help: str) -> click.Command:
    """A click command with --config and one option per dataclass field; with ``--preset NAME`` too when
    the dataclass has a ``presets`` class variable ({name: {option: value}}: defaults < --config file <
    the preset < flags, as in ``rlhfkit demo``)."""
    params = [click.Option(["--config", "config_file"], type=click.Path(exists=True, dir_okay=False),
                           help="YAML file of options; flags given on the command line override it.")]
    presets = getattr(cls, "presets", None) or {}
    if presets:
        params.append(click.Option(["--preset"], type=click.Choice(list(presets)), default=None,
                                   help="Preset values over the defaults and the --config file (flags override them); "
                                        "smoke: the tiny model in well under 2 minutes."))
    params += dataclass_options(cls)

    def callback(config_file, preset=None, **kw):
        quiet_libraries()
        try:
            given = {k: v for k, v in kw.items() if v is not None}  # None: a flag not typed
            cfg = load_config(cls, config_file, {**presets.get(preset, {}), **given})
        except (ValueError, TypeError) as e:
            raise click.UsageError(str(e))
        run_reporting_errors(run, cfg)

    return click.Command(name, params=params, callback=callback, help=help)


def run_reporting_errors(run, *args):
    """``run(*args)``; a data, file or value error (bad input, not a bug) ends the command with its message
    on stderr and exit status 2."""
    from rlhfkit.data import DataError

    try:
        return run(*args)
    except (DataError, FileNotFoundError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
