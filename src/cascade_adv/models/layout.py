"""The memory layout of the attack network, measured once per machine and model shape.

The attacks run on the model's inference network (:mod:`cascade_adv.models.fuse`), whose
folded convolution weights and input can be stored NHWC (``channels_last``) or NCHW
(contiguous).  On a CUDA GPU NHWC is the tensor cores' layout and always used.  On a CPU
the faster one depends on the CPU, the thread count, the model and the image shape
(docs/performance.md, "The attack network's layout"), so :func:`preferred_layout` times
one forward + input-gradient pass of each, the way cuDNN's benchmark mode picks a
convolution algorithm, and keeps the answer: in memory for the process and in a small
JSON file (:func:`cache_path`) for later processes on the same machine.  The values of
both layouts agree up to float32 rounding (``tests/test_layout.py``).

An explicit choice (``attacks.layout(True | False)``, ``cascade-adv audit / eval
--channels-last true|false``, ``speed.channels_last`` in a training config) pins it and
measures nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv.io import atomic_write_text, processor_name

#: A measured layout must be this much faster to replace contiguous (noise margin).
MARGIN = 0.05
#: Interleaved timing rounds per layout (after one warm-up pass each).
ROUNDS = 5
#: Images of the timed batch, at most.
BATCH = 128
#: A contiguous pass faster than this (seconds) is kept without timing the other layout:
#: timing noise would decide, and the audit's time is not spent there.
MIN_PASS = 0.02
_FILE = "layout.json"
_KNOWN: dict[str, bool] = {}


def cache_path() -> Path:
    """The file that keeps the measured choices: ``$XDG_CACHE_HOME/cascade-adv/layout.json``
    (``~/.cache/cascade-adv/layout.json`` without it).  Delete it to measure again."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "cascade-adv" / _FILE


def layout_key(model: nn.Module, sample: torch.Tensor) -> str:
    """What the choice depends on: the CPU, torch's version and thread count, the model's
    architecture (module types and parameter shapes, not values) and the image shape."""
    arch = [(type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
            for m in model.modules()]
    text = json.dumps([processor_name(), torch.__version__, torch.get_num_threads(), repr(arch),
                       list(sample.shape[1:]), str(sample.dtype)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read_cache() -> dict[str, bool]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, bool)}


def _write_cache(key: str, choice: bool) -> None:
    with contextlib.suppress(OSError):  # a read-only home: measure again next process
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**_read_cache(), key: choice}, indent=1,
                                           sort_keys=True))


def _pass_seconds(net: nn.Module, x: torch.Tensor) -> float:
    """One forward + input-gradient pass of ``net`` on ``x`` (what an attack step costs)."""
    start = time.perf_counter()
    xg = x.detach().requires_grad_(True)
    out = net(xg)
    target = torch.zeros(out.shape[0], dtype=torch.long, device=x.device)
    torch.autograd.grad(F.cross_entropy(out.float(), target), xg)
    return time.perf_counter() - start


def measure_layout(contiguous: nn.Module, channels_last: nn.Module,
                   sample: torch.Tensor) -> dict[bool, float]:
    """The fastest of :data:`ROUNDS` passes of each of the two networks on ``sample`` (at
    most :data:`BATCH` images), keyed by ``channels_last``: one warm-up each, then the
    rounds alternating which goes first, so slow drifts of the machine hit both alike.
    The minimum, not the median: another process on the cores only ever adds time (a
    choice measured beside two other processes by the median came out wrong, 20 % slower;
    docs/performance.md)."""
    x = sample[:BATCH]
    nets = {False: contiguous, True: channels_last}
    times: dict[bool, list[float]] = {False: [], True: []}
    for net in nets.values():
        _pass_seconds(net, x)
    for r in range(ROUNDS):
        for cl in ((False, True) if r % 2 == 0 else (True, False)):
            times[cl].append(_pass_seconds(nets[cl], x))
    return {cl: min(t) for cl, t in times.items()}


def preferred_layout(model: nn.Module, sample: torch.Tensor | None, build) -> bool:
    """Whether the attack network of ``model`` should be NHWC for inputs like ``sample``:
    on CUDA yes; on another accelerator no; on a CPU the measured faster layout
    (:func:`measure_layout` of ``build(False)`` and ``build(True)``, channels_last only
    when :data:`MARGIN` faster), cached per :func:`layout_key`.  Without a 4-D
    ``sample`` there is nothing to measure: contiguous."""
    device = sample.device if sample is not None else torch.device("cpu")
    if device.type == "cuda":
        return True
    if device.type != "cpu" or sample is None or sample.dim() != 4 or sample.shape[0] == 0:
        return False
    key = layout_key(model, sample)
    if key not in _KNOWN:
        stored = _read_cache().get(key)
        if stored is None:
            stored = _measure(build, sample[:BATCH])
            _write_cache(key, stored)
        _KNOWN[key] = stored
    return _KNOWN[key]


def _measure(build, x: torch.Tensor) -> bool:
    """channels_last when it is :data:`MARGIN` faster than contiguous; contiguous for a
    network whose pass takes under :data:`MIN_PASS` (nothing to gain, noise would pick)."""
    with torch.inference_mode(False), torch.enable_grad():
        contiguous = build(False)
        _pass_seconds(contiguous, x)  # warm-up
        if _pass_seconds(contiguous, x) < MIN_PASS:
            return False
        t = measure_layout(contiguous, build(True), x)
    return t[True] < (1 - MARGIN) * t[False]


def forget_layouts() -> None:
    """Drop the choices this process knows (the file stays): the next attack measures
    or reads the file again."""
    _KNOWN.clear()
