"""How long each step of a recipe will take here: a short measured calibration.

For every architecture and image shape a recipe trains, one forward + backward pass
of a batch of 128 is timed on the run's device (after a warm-up); a step's estimate
is its count of such passes times that time:

* training: one pass per iteration still to run (an interrupted step resumes at its
  newest checkpoint), plus the one-step attack on k of the m images (``k/m`` of a
  pass) and, in ``append`` mode, the k extra images (``k/m`` more);
* white-box evaluation: per attack and epsilon, one pass per attack iteration over the
  test images (iter_* use min(eps + 4, 1.25 eps) iterations, K17 section 2.1), plus
  the clean forward;
* crafting: the same for the attacked training images; transfer: crafting on each
  source plus a forward of every target; analyses: a few passes per epsilon on 128
  images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

BATCH = 128
_SHAPES = {"mnist": (1, 28, 10), "digits": (1, 8, 10), "cifar10": (3, 32, 10),
           "imagenet": (3, 299, 1000)}


def _iterations(attack: str, eps: float) -> int:
    """Gradient passes of ``attack`` at ``eps``: K17's count for iterative attacks."""
    from cascade_adv import attacks

    if attacks.get(attack).kind != "iterative":
        return 1
    return max(1, int(attacks.iterative_steps(eps)))


def _model_key(cfg) -> tuple:
    c, size, classes = _SHAPES[cfg.data.dataset]
    return (cfg.model.arch, cfg.model.depth, cfg.model.width, c,
            cfg.data.crop_size or (cfg.data.image_size or size), classes)


def calibrate(key: tuple, device, quick: bool = False) -> float:
    """Seconds of one forward + backward pass of 128 images of the model ``key``, from
    the best of two timed passes after a warm-up (``quick``: one pass of a smaller
    batch, for listing every recipe)."""
    import torch

    from cascade_adv.models import ModelConfig, build_model

    arch, depth, width, c, size, classes = key
    model = build_model(ModelConfig(arch=arch, depth=depth, width=width, in_channels=c,
                                    input_size=size, num_classes=classes)).to(device)
    batch = (2 if quick else 16) if arch == "inception_v3" else (32 if quick else BATCH)
    x = torch.rand(batch, c, size, size, device=device, requires_grad=True)
    times = []
    for _ in range(2 if quick else 3):
        t = time.perf_counter()
        model(x).logsumexp(1).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times[1:]) * BATCH / batch


def _resumes_at(rec) -> int:
    """The iteration an interrupted training step resumes from (its newest checkpoint,
    ``run/checkpoints/ckpt-ITERATION``), else 0."""
    if rec.folder is None:
        return 0
    its = [int(p.name.split("-")[1]) for p in (Path(rec.folder) / "run" / "checkpoints").glob(
        "ckpt-*") if p.name.split("-")[1].isdigit()]
    return max(its, default=0)


def _passes(rec, cfgs: dict[str, Any]) -> tuple[tuple | None, float]:
    s = rec.step
    p = s.params
    if s.kind == "train":
        cfg = cfgs[s.name]
        start = _resumes_at(rec)
        if p.get("init") and cfg.init_mode == "continue":
            start = max(start, cfgs[p["init"]].optim.iterations)
        adv = cfg.adversarial
        per_it = 1.0
        if adv.mode != "none":
            per_it += adv.k / cfg.optim.batch_size * (2 if adv.mode == "append" else 1)
        return _model_key(cfg), max(0, cfg.optim.iterations - start) * per_it
    if s.kind == "report":
        return None, 0.0
    model = p.get("model") or p["sources"][0]
    key = _model_key(cfgs[model])
    n = p.get("test_images") or (10000 if cfgs[model].data.dataset != "digits" else 360)
    if s.kind == "whitebox":
        its = sum(_iterations(a, e) for a in p["attacks"] for e in p["eps"])
        return key, n / BATCH * (its + 1 / 3)
    if s.kind == "craft":
        n = p.get("images") or 50000
        return key, n / BATCH * sum(_iterations(p["attack"], e) for e in p["eps"])
    if s.kind == "transfer":
        its = sum(_iterations(a, e) for a in p["attacks"] for e in p["eps"])
        fwd = len(p["targets"]) * len(p["attacks"]) * len(p["eps"]) / 3
        return key, n / BATCH * (len(p["sources"]) * its + fwd)
    return key, 128 / BATCH * len(p["eps"]) * 4


def estimate(records, rt, timing: dict[tuple, float] | None = None, quick: bool = False
             ) -> dict[tuple, float]:
    """Fill ``record.estimate`` (seconds on ``rt.device``) for every step; returns the
    calibration (seconds per pass of 128 images, by model), which ``timing`` may
    already hold from an earlier call."""
    import torch

    from cascade_adv.training import resolve_device

    device = resolve_device(rt.device)
    before = torch.get_num_threads()
    if rt.threads:
        torch.set_num_threads(rt.threads)     # time each step as it will run
    try:
        return _estimate(records, rt, device, {} if timing is None else timing, quick)
    finally:
        torch.set_num_threads(before)


def _estimate(records, rt, device, timing, quick) -> dict[tuple, float]:
    from cascade_adv.training import load_config

    cfgs = {rec.step.name: load_config(f"{rt.configs}/{rec.step.params['config']}",
                                       rec.step.params["overrides"])
            for rec in records if rec.step.kind == "train"}
    for rec in records:
        key, passes = _passes(rec, cfgs)
        if key is None:
            rec.estimate = 0.0
            continue
        if key not in timing:
            timing[key] = calibrate(key, device, quick)
        rec.estimate = passes * timing[key]
    return timing


def wall_time(records, jobs: int) -> float:
    """Seconds until the last unfinished step ends when ``jobs`` run at once, each step
    starting as soon as its dependencies are done and a slot is free (list scheduling
    in the records' order, as :func:`~cascade_adv.experiments.reproduce.run_steps`)."""
    import heapq

    end: dict[str, float] = {r.step.name: 0.0 for r in records if r.status == "cached"}
    todo = [r for r in records if r.step.name not in end]
    slots = [0.0] * max(1, jobs)
    while todo:
        rec = next((r for r in todo if all(d in end for d in r.step.deps)), None)
        if rec is None:
            break
        todo.remove(rec)
        free = heapq.heappop(slots)
        start = max([free, *(end[d] for d in rec.step.deps)])
        end[rec.step.name] = start + (rec.estimate or 0.0)
        heapq.heappush(slots, end[rec.step.name])
    return max(end.values(), default=0.0)
