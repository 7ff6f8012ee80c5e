"""Which precision to compute in, chosen by the machine.

bf16 autocast is ~2.5x faster than fp32 on a CPU with AVX-512 BF16 or AMX, and ~100x *slower* on one
without (an AVX2-only Zen 3 ran a 1024^3 bf16 matmul at 0.9 GFLOP/s against 153 in fp32: oneDNN emulates
it). So ``auto`` -- the default of every command -- means bf16 only where the device computes it natively:
on a CPU, oneDNN's own capability check; on CUDA, ``torch.cuda.is_bf16_supported()``.
"""

from __future__ import annotations

import sys
import warnings

import torch

CHOICES = ("auto", "no", "bf16", "fp16")

# the choice is said once per process, not once per stage or trainer
_announced: set[str] = set()


def native_bf16(device: torch.device | str | None = None) -> bool:
    """True when ``device`` (default: CUDA if present, else CPU) computes bf16 matmuls natively."""
    device = torch.device(device) if device is not None else default_compute_device()
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:  # a torch build without oneDNN: no fast bf16 path
            return False
    return False


def default_compute_device() -> torch.device:
    from rlhfkit.models import default_device

    return default_device()


def _device_words(device: torch.device) -> str:
    return "this GPU" if device.type == "cuda" else "this CPU"


def resolve(requested: str | bool | None, device: torch.device | str | None = None, announce: bool = True) -> str:
    """``auto`` / ``no`` / ``bf16`` / ``fp16`` (also True/False/None for the pipeline's ``bf16`` flag) ->
    ``"bf16"``, ``"fp16"`` or ``"no"``. ``auto`` takes bf16 only where it is native; an explicit bf16 on a
    device without it is honoured with a warning."""
    device = torch.device(device) if device is not None else default_compute_device()
    req = _normalise(requested)
    native = native_bf16(device)
    if req == "auto":
        chosen = "bf16" if native else "no"
        why = f"{_device_words(device)} {'has' if native else 'has no'} native bf16"
    else:
        chosen = req
        why = "asked for"
        if req == "bf16" and not native:
            warnings.warn(f"bf16 was asked for, but {_device_words(device)} has no native bf16 (no AVX-512 BF16/AMX): "
                          "it will run many times slower than fp32; use --mixed-precision auto (or no)", stacklevel=2)
            why = f"asked for; {_device_words(device)} has no native bf16, expect it to be very slow"
    if announce and req == "auto":  # an explicit choice needs no announcement (the pipeline passes its own down)
        line = f"precision: {'fp32' if chosen == 'no' else chosen} ({why})"
        if line not in _announced:
            _announced.add(line)
            print(line, file=sys.stderr)
    return chosen


def resolve_bf16(requested: str | bool | None, device: torch.device | str | None = None, announce: bool = True) -> bool:
    """The pipeline's and sampling commands' on/off form of ``resolve``."""
    return resolve(requested, device, announce) == "bf16"


def _normalise(requested) -> str:
    if requested is None:
        return "auto"
    if requested is True:
        return "bf16"
    if requested is False:
        return "no"
    text = str(requested).strip().lower()
    aliases = {"auto": "auto", "": "auto", "none": "auto", "no": "no", "fp32": "no", "false": "no", "off": "no",
               "bf16": "bf16", "true": "bf16", "on": "bf16", "fp16": "fp16"}
    if text not in aliases:
        raise ValueError(f"precision {requested!r}: use one of {', '.join(CHOICES)}")
    return aliases[text]
