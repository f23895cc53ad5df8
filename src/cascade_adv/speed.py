"""Speed options of one device: bf16 autocast, channels_last and ``torch.compile``.

docs/design.md, "Speed", and docs/performance.md.  Three independent switches, chosen
per run (training config section ``speed``) or per call (``evaluate_whitebox``,
``cascade-adv eval --precision ... --compile``):

- ``precision``: ``auto`` (bf16 autocast on a CUDA GPU that supports it, float32
  everywhere else), ``float32`` (force full precision, also on CUDA) or ``bf16``
  (autocast to bfloat16; allowed on CPU too, where ``torch``'s CPU autocast
  supports it).  Autocast runs convolutions and matrix products in bfloat16 and
  keeps the weights, the optimizer state, the input images, their attack
  gradients and every loss in float32 (the losses cast the logits to float);
- ``channels_last``: ``auto`` (on for CUDA when the model has 2-D convolutions),
  ``true`` or ``false``; the model's 4-D weights and the input batches are stored
  NHWC, which the GPU's tensor-core convolutions prefer.  The values are the same
  up to float rounding.  For the attacks' inference network ``auto`` is the layout
  measured faster on this machine (:mod:`cascade_adv.models.layout`) and ``true`` /
  ``false`` pin it (``attack_layout``);
- ``compile``: ``torch.compile`` of the model's forward (in place,
  :meth:`torch.nn.Module.compile`, so checkpoints keep their keys).  It is
  checked up front (:func:`compile_support`); where it cannot work the run stops
  with one line before any work, naming the fix (``speed.compile=false``).

Every option keeps the results within noise of the float32 path;
``tests/test_speed.py`` measures it on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from cascade_adv.errors import ConfigError

PRECISIONS = ("auto", "float32", "bf16")

#: How the fix is named in an error: a config key, a command-line flag or an argument.
_FIX = {
    "config": {"precision": "speed.precision=float32", "compile": "speed.compile=false"},
    "cli": {"precision": "--precision float32", "compile": "--no-compile"},
    "api": {"precision": "precision='float32'", "compile": "compile=False"},
}


def _channels_last_value(value) -> bool | str:
    """``auto``, ``true`` or ``false`` (YAML booleans and their spellings)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low == "auto":
            return "auto"
        if low in ("true", "on", "yes", "1"):
            return True
        if low in ("false", "off", "no", "0"):
            return False
    raise ValueError(f"must be auto, true or false, got {value!r}")


class SpeedConfig(BaseModel):
    """The ``speed`` section of a training config (see the module docstring).

    ``precision``: ``auto`` | ``float32`` | ``bf16``; ``channels_last``: ``auto`` |
    ``true`` | ``false``; ``compile``: ``false`` | ``true``; ``fuse``: ``true`` |
    ``false``.  Defaults are fast on a
    GPU and exactly the float32 path on CPU.
    """

    model_config = ConfigDict(extra="forbid")

    precision: Literal["auto", "float32", "bf16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False
    #: the one-step attack of adversarial training on the inference network with
    #: BatchNorm folded into the convolutions (:func:`cascade_adv.attacks.fusion`)
    fuse: bool = True

    @field_validator("channels_last", mode="before")
    @classmethod
    def _channels_last(cls, value):
        return _channels_last_value(value)


@dataclass(frozen=True)
class Speed:
    """Resolved options for one device: what :func:`autocast` and :func:`prepare_model`
    do.  ``dtype`` is the autocast dtype (``None``: plain float32)."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    #: the attack network's layout as asked (``None``: ``auto``, measured on a CPU;
    #: :func:`cascade_adv.attacks.layout`)
    attack_layout: bool | None = None

    @property
    def precision(self) -> str:
        return "float32" if self.dtype is None else "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to ``dtype`` on this device, or a no-op for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        return (f"{self.precision}, channels_last {'on' if self.channels_last else 'off'}, "
                f"compile {'on' if self.compile else 'off'}")


FLOAT32 = Speed(torch.device("cpu"))


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use for CPU code (``$CXX`` or its defaults)."""
    candidates: list[str] = []
    if os.environ.get("CXX"):
        candidates.append(os.environ["CXX"])
    with contextlib.suppress(Exception):  # an inductor without this setting: the usual names
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        candidates += [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
    candidates += ["g++", "clang++", "c++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # an older torch: let the test compile decide
        return True
    return has_triton()


@functools.cache
def compile_support(device_type: str) -> str | None:
    """``None`` when ``torch.compile`` (inductor) works on ``device_type`` here, else
    the reason it does not.  Cheap checks first (dynamo support for this Python,
    Triton for CUDA, a C++ compiler for CPU), then a tiny guarded compile; the
    answer is cached for the process."""
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # noqa: BLE001 - a broken install: report it, do not crash
        return f"torch._dynamo cannot be imported ({_first_line(exc)})"
    if not dynamo.is_dynamo_supported():
        py = ".".join(map(str, sys.version_info[:2]))
        return f"torch {torch.__version__} does not support torch.compile on Python {py}"
    if device_type == "cuda" and not _has_triton():
        return "torch.compile needs Triton for CUDA code and it is not installed"
    elif device_type == "cpu" and _cpp_compiler() is None:
        return "torch.compile needs a C++ compiler for CPU code (g++ or clang++; none found)"
    try:
        probe = torch.compile(lambda t: torch.relu(t) * 2.0 + 1.0, dynamic=False)
        out = probe(torch.ones(8, device=device_type))
        if not bool((out == 3.0).all()):
            return "a test compile gave wrong values"
    except Exception as exc:  # noqa: BLE001 - any failure means: not supported here
        return f"a test compile failed ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)[:200]


def resolve_speed(
    device: torch.device | str,
    precision: str = "auto",
    channels_last: bool | str = "auto",
    compile: bool = False,
    *,
    model: nn.Module | None = None,
    via: Literal["config", "cli", "api"] = "api",
) -> Speed:
    """Validate the options for ``device`` and resolve ``auto``; raise
    :class:`ConfigError` (one line naming the fix) for bad values or for a
    ``bf16`` / ``compile`` request this machine cannot serve.  With ``model``,
    ``channels_last: auto`` is on only if it has 2-D convolutions.  ``via`` only
    picks how the fix is spelled (config key, CLI flag or argument)."""
    device = torch.device(device)
    fix = _FIX[via]
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        cl = _channels_last_value(channels_last)
    except ValueError as exc:
        raise ConfigError(f"channels_last {exc}") from None
    if not isinstance(compile, bool):
        raise ConfigError(f"compile must be true or false, got {compile!r}")
    cuda = device.type == "cuda"
    bf16_ok = torch.amp.is_autocast_available(device.type)
    if cuda:
        bf16_ok = bf16_ok and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        dtype = torch.bfloat16 if cuda and bf16_ok else None
    elif precision == "bf16":
        if not bf16_ok:
            raise ConfigError(
                f"precision bf16 is not supported on {device} (bfloat16 autocast needs a CPU "
                f"or a CUDA GPU of compute capability 8.0+); use {fix['precision']}")
        dtype = torch.bfloat16
    else:
        dtype = None
    if compile:
        why = compile_support(device.type)
        if why is not None:
            raise ConfigError(f"compile requested where unsupported on {device}: {why}; "
                              f"use {fix['compile']}")
    asked = None if cl == "auto" else cl
    if cl == "auto":
        cl = cuda and (model is None or _has_conv2d(model))
    return Speed(device, dtype, cl, compile, asked)


def speed_from_config(cfg: SpeedConfig, device: torch.device | str) -> Speed:
    """:func:`resolve_speed` of a training config's ``speed`` section."""
    return resolve_speed(device, cfg.precision, cfg.channels_last, cfg.compile, via="config")


def autocast(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """``with autocast(device, precision):`` bf16 autocast, or a no-op for float32."""
    return resolve_speed(device, precision).autocast()


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_model(model: nn.Module, speed: Speed) -> nn.Module:
    """Apply ``speed`` to ``model`` in place and return it: channels_last weights
    (models with 2-D convolutions only) and ``torch.compile`` of its forward.
    Parameters stay the same objects (an optimizer built before keeps working)
    and the state dict keeps its keys; :func:`release_model` undoes both."""
    if speed.channels_last and _has_conv2d(model):
        model.to(memory_format=torch.channels_last)
    if speed.compile:
        model.compile()
    return model


def release_model(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_model`: eager forward, contiguous weights."""
    if getattr(model, "_compiled_call_impl", None) is not None:
        model._compiled_call_impl = None
    if any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()):
        model.to(memory_format=torch.contiguous_format)
    return model


@contextlib.contextmanager
def prepared(model: nn.Module, speed: Speed) -> Iterator[nn.Module]:
    """:func:`prepare_model` for the block, then :func:`release_model` (only what was
    applied here: a model already compiled or channels_last stays so)."""
    was_compiled = getattr(model, "_compiled_call_impl", None) is not None
    was_cl = any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters())
    speed = Speed(speed.device, speed.dtype, speed.channels_last and not was_cl,
                  speed.compile and not was_compiled)
    prepare_model(model, speed)
    try:
        yield model
    finally:
        if speed.compile:
            model._compiled_call_impl = None
        if speed.channels_last and _has_conv2d(model):
            model.to(memory_format=torch.contiguous_format)


def prepare_input(x: torch.Tensor, speed: Speed) -> torch.Tensor:
    """An image batch in the memory format of the model's weights (NHWC with
    channels_last; unchanged otherwise)."""
    if speed.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
