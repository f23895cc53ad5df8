"""How long each step of a recipe will take here: a short measured calibration.

For every architecture and image shape a recipe trains, one forward + backward pass
of a batch of 128 is timed on the run's device (after a warm-up); a step's estimate
is its count of such passes times that time:

* training: one pass per iteration still to run (an interrupted step resumes at its
  newest checkpoint), plus the attack on k of the m images (``k/m`` of a pass per
  gradient step: one for the one-step methods, R+FGSM, R+Step-LL and FGSM with a random
  start, ``steps`` for PGD) and, in ``append`` mode, the k extra images (``k/m`` more);
  with the overfitting monitor on, its PGD and forwards on its images, spread over its
  interval (:func:`iteration_passes`);
* white-box evaluation: per attack and epsilon, one pass per attack iteration over the
  test images (iter_* use min(eps + 4, 1.25 eps) iterations, K17 section 2.1), plus
  the clean forward (:func:`attack_passes`);
* the robustness audit (``--audit``, :func:`audit_passes`): per epsilon, its attacks
  (APGD-CE steps x restarts passes, targeted APGD targets x steps x restarts, FAB-T
  the same plus a forward per step, Square its queries as forward passes, a third of a
  pass each), plus the clean forward and
  the gradient-masking diagnostics (:func:`diagnostic_passes`). The cascade, in which
  each attack runs only on the images the attacks before it left correct, is
  approximated once the model's white-box rows are in the cache: the first attack
  runs on the images correct clean, the later ones on the share the strongest of the
  paper's attacks left correct at that eps (the audit's first attack is at least as
  strong, so this is still an upper bound); a model of seed J >= 1 whose rows have not
  run yet takes those of seed 0 of its chain. Without any rows every attack counts
  on every image: an upper bound, close for a robust model and several times too high
  for one the first attack breaks. The seconds per pass of the audits the cache has
  finished are kept apart from the other evaluations';
* crafting: the same for the attacked training images; transfer: crafting on each
  source plus a forward of every target; analyses: a few passes per epsilon on 128
  images.

Measured times come first: given the cache folder, every training run in it (finished
or not) gives its seconds per iteration from ``metrics.jsonl`` and every finished
evaluation step its seconds per pass, so a step is estimated from a step of the same
model (and, for training, the same kind of iteration) that ran here, an evaluation
from a pass of the model's training where no evaluation of it has finished (a
training pass costs about what an attack pass does); the timed pass is the fallback
for models the cache has not run yet, and other load on the machine inflates it.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade_adv.io import read_json_lines

BATCH = 128
_SHAPES = {"mnist": (1, 28, 10), "digits": (1, 8, 10), "cifar10": (3, 32, 10),
           "imagenet": (3, 299, 1000)}


#: A forward pass costs about a third of a forward + backward pass.
FORWARD = 1 / 3


def attack_passes(attack: str, eps: float, options: Mapping[str, Any] | None = None,
                  classes: int = 10) -> float:
    """Forward + backward passes ``attack`` (with keyword ``options``, else its
    defaults) costs per image at ``eps``: one for one-step and random attacks; for
    iterative ones ``steps`` (K17's ``min(eps + 4, 1.25 eps)`` where it has none) times
    ``restarts``, and for a targeted one (``targets``, APGD-T) times its target classes
    (default ``min(9, classes - 1)``), each step with its ``step_forwards`` (FAB-T's one); for query
    attacks (Square) ``queries`` forward passes, :data:`FORWARD` of a pass each."""
    import inspect

    from cascade_adv import attacks
    from cascade_adv.attacks.apgd import target_count

    spec = attacks.get(attack)
    params = inspect.signature(spec.fn).parameters
    opt = {k: v.default for k, v in params.items() if v.kind == v.KEYWORD_ONLY}
    opt.update(options or {})
    if spec.kind == "query":
        return opt.get("queries", 1) * FORWARD
    if spec.kind != "iterative":
        return 1
    steps = opt.get("steps") or max(1, int(attacks.iterative_steps(eps)))
    runs = opt.get("restarts", 1)
    if "targets" in params:
        runs *= target_count(opt["targets"], classes)
    return steps * runs * (1 + spec.step_forwards * FORWARD)


#: What the cache's white-box rows say of a model (:func:`survival`): the share of
#: images correct clean, and per eps the lowest share an attack left correct.
Survival = tuple[float, Mapping[float, float]]


def diagnostic_passes(images: int, eps: Sequence[float], version: str, classes: int = 10,
                      robust: float | None = None) -> float:
    """Passes of 128 images the audit's gradient-masking diagnostics cost (``diagnose``
    with its defaults, :mod:`cascade_adv.evaluation.diagnostics`), approximately: on
    ``sample`` of the ``images``, the forward checks, one input gradient, and per eps
    step_fgsm, iter_fgsm and the two noises, each followed by two forwards (iter_fgsm
    also at ``LARGE_EPS``); on up to ``robust_sample`` of the ``robust`` (image, eps)
    rows the audit leaves (default: all, an upper bound) the version's first iterative
    attack again with twice its steps and one more restart (``stronger_options``)."""
    import inspect

    from cascade_adv.evaluation import diagnose
    from cascade_adv.evaluation.audit import resolve_version
    from cascade_adv.evaluation.diagnostics import LARGE_EPS, base_attack, stronger_options

    d = {k: v.default for k, v in inspect.signature(diagnose).parameters.items()}
    then = 2 * FORWARD                                     # the attack's and the check's
    checks = d["runs"] * FORWARD + 1 + FORWARD             # forwards, a gradient, clean
    per_eps = (1 + then) + (d["steps"] + then) + 2 * then  # step_fgsm, iter_fgsm, noises
    large = len(LARGE_EPS) * (d["steps"] + then)
    passes = min(d["sample"], images) / BATCH * (checks + len(eps) * per_eps + large)
    _, attacks = resolve_version(version, classes)
    base = base_attack(attacks)
    if base is not None:
        rows = images * len(eps) if robust is None else robust
        again = attack_passes(base.name, max(eps), stronger_options(base, max(eps)), classes)
        passes += min(d["robust_sample"], rows) / BATCH * again
    return passes


def audit_passes(images: int, eps: Sequence[float], version: str, classes: int = 10,
                 survival: Survival | None = None) -> float:
    """Passes of 128 images an audit of ``version`` on ``images`` images at every
    ``eps`` costs with its diagnostics: with ``survival`` (:func:`survival`) the first
    attack on the share correct clean, the others on the share left correct at that eps
    (an eps it lacks: the lowest share at a smaller eps, else the clean share); without,
    every attack on every image."""
    from cascade_adv.evaluation.audit import resolve_version

    clean, lowest = survival if survival is not None else (1.0, {})
    _, attacks = resolve_version(version, classes)
    per_image, robust = FORWARD, 0.0
    for e in eps:
        # an eps the white-box rows lack: at most what a smaller eps left (accuracy
        # falls with eps), else the clean share
        left = min([v for k, v in lowest.items() if k <= float(e)], default=clean)
        cost = [attack_passes(a.name, e, a.options, classes) for a in attacks]
        per_image += clean * cost[0] + left * sum(cost[1:])
        robust += left * images
    return (images / BATCH * per_image
            + diagnostic_passes(images, eps, version, classes,
                                None if survival is None else robust))


def survival(records) -> dict[str, Survival]:
    """Per model (its training step's name), what the finished white-box steps among
    ``records`` measured (top-1, the paper's attacks): the share of images correct
    clean and, per eps, the lowest share an attack left correct."""
    from cascade_adv.results.tables import CLEAN, WHITEBOX

    out: dict[str, tuple[float, dict[float, float]]] = {}
    for rec in records:
        if rec.step.kind != "whitebox" or rec.status != "cached" or not rec.outputs:
            continue
        try:
            rows = json.loads(Path(rec.outputs["rows"]).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        clean, lowest = out.setdefault(rec.step.params["model"], (1.0, {}))
        for r in rows:
            if r.get("metric") != "top1" or r.get("source") != WHITEBOX:
                continue
            share = float(r["value"]) / 100
            if r["attack"] == CLEAN:
                clean = share
            else:
                e = float(r["eps"])
                lowest[e] = min(lowest.get(e, 1.0), share)
        out[rec.step.params["model"]] = (clean, lowest)
    return out


def _survival_of(model: str, survived: Mapping[str, Survival]) -> Survival | None:
    """What ``model``'s white-box rows left, else (its rows not yet run) those of seed 0
    of its chain: seeds of one recipe land within a few points of each other, where the
    bound of every attack on every image is several times too high."""
    from cascade_adv.reporting.reproduction import without_seed

    return survived.get(model) or survived.get(without_seed(model))


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


def iteration_passes(cfg) -> float:
    """Passes of 128 images one training iteration of ``cfg`` costs (timed-pass model):
    the step, the crafting of the adversarial rows (:func:`_crafting`), the k extra
    rows of ``append`` mode and the overfitting monitor's measurement divided by its
    interval."""
    adv, m, passes = cfg.adversarial, cfg.optim.batch_size, 1.0
    if adv.mode != "none":
        passes += _crafting(cfg) / m + (adv.k / m if adv.mode == "append" else 0)
    if cfg.monitor.every is not None:
        passes += monitor_passes(cfg) / cfg.monitor.every
    return passes


def _crafting(cfg) -> int:
    """Image passes crafting one iteration's k adversarial rows costs: each source's
    rows times its method's gradient passes (``steps`` for PGD, else one:
    :func:`~cascade_adv.training.methods.crafting_passes`; a saved source counts as one
    pass, as a one-step attack)."""
    from cascade_adv.training.methods import crafting_passes

    adv = cfg.adversarial
    options = adv.method_options()
    return sum(s.count * crafting_passes(s.method, options) for s in adv.resolved_sources())


def crafting_per_iteration(cfg) -> float:
    """Passes of 128 images crafting one iteration's adversarial rows costs
    (:func:`_crafting` over the batch of m): k / m for a one-step method, ``steps`` k / m
    for PGD; 0 without adversarial training."""
    if cfg.adversarial.mode == "none":
        return 0.0
    return _crafting(cfg) / cfg.optim.batch_size


def monitor_passes(cfg) -> float:
    """Passes of 128 images one measurement of the overfitting monitor costs: PGD's
    ``monitor.steps`` gradient passes and two forwards (clean and adversarial) on each
    of its ``monitor.images``."""
    mon = cfg.monitor
    return mon.images / BATCH * (mon.steps + 2 * FORWARD)


def _iteration_kind(cfg) -> tuple:
    """What makes iterations of two runs of one model cost the same."""
    adv, mon = cfg.adversarial, cfg.monitor
    kind = (cfg.optim.batch_size,) + (() if adv.mode == "none" else (adv.mode, adv.k))
    if adv.mode != "none" and _crafting(cfg) != adv.k:  # PGD: more than a pass per row
        kind += (("craft", _crafting(cfg)),)
    if mon.every is not None:
        kind += (("monitor", mon.every, mon.images, mon.steps),)
    return kind


def _passes(rec, cfgs: dict[str, Any], survived: Mapping[str, Survival] | None = None
            ) -> tuple[tuple | None, float]:
    s = rec.step
    p = s.params
    if s.kind == "train":
        cfg = cfgs[s.name]
        start = _resumes_at(rec)
        if p.get("init") and cfg.init_mode == "continue":
            start = max(start, cfgs[p["init"]].optim.iterations)
        return _model_key(cfg), max(0, cfg.optim.iterations - start) * iteration_passes(cfg)
    if s.kind == "report":
        return None, 0.0
    model = p.get("model") or p["sources"][0]
    key = _model_key(cfgs[model])
    n = p.get("test_images") or (10000 if cfgs[model].data.dataset != "digits" else 360)
    if s.kind == "whitebox":
        its = sum(attack_passes(a, e) for a in p["attacks"] for e in p["eps"])
        return key, n / BATCH * (its + FORWARD)
    if s.kind == "audit":
        return key, audit_passes(n, p["eps"], p["version"], key[-1],
                                 _survival_of(p["model"], survived or {}))
    if s.kind == "craft":
        n = p.get("images") or 50000
        return key, n / BATCH * sum(attack_passes(p["attack"], e) for e in p["eps"])
    if s.kind == "transfer":
        its = sum(attack_passes(a, e) for a in p["attacks"] for e in p["eps"])
        fwd = len(p["targets"]) * len(p["attacks"]) * len(p["eps"]) * FORWARD
        return key, n / BATCH * (len(p["sources"]) * its + fwd)
    return key, 128 / BATCH * len(p["eps"]) * 4


def _bucket(rec) -> str:
    """Which measured rate an evaluation step gives and takes: an audit's passes are an
    upper bound (the cascade ignored), so its seconds per pass are kept apart."""
    return "audit" if rec.step.kind == "audit" else "eval"


def seconds_per_iteration(run: str | Path) -> float | None:
    """The median seconds per iteration of the training run in folder ``run``, from the
    intervals between its ``metrics.jsonl`` lines (a resumed run restarts its clock:
    the interval across a restart is skipped); ``None`` before two lines."""
    points = _metric_points(run)
    rates = [(t1 - t0) / (i1 - i0) for (i0, t0), (i1, t1) in itertools.pairwise(points)
             if i1 > i0 and t1 > t0]
    return statistics.median(rates) if rates else None


def _metric_points(run: str | Path) -> list[tuple[int, float]]:
    """``(iteration, seconds)`` of every readable line of the run's ``metrics.jsonl``."""
    points = []
    for m in read_json_lines(Path(run) / "metrics.jsonl"):
        try:
            points.append((int(m["iteration"]), float(m["seconds"])))
        except (ValueError, KeyError, TypeError):
            continue
    return points


def training_seconds(run: str | Path) -> float | None:
    """The wall time of the training run in folder ``run``: the seconds of its logged
    iterations (``metrics.jsonl``), each leg's clock summed. A resumed process restarts
    the clock; its leg starts at the iteration ``legs.jsonl`` records (else where the
    seconds fall below the line before). The time between a leg's last line and its
    interruption is not in the file and not counted. ``None`` without a line."""
    from cascade_adv.training.provenance import read_legs

    points = _metric_points(run)
    if not points:
        return None
    starts = sorted({leg["iteration"] for leg in read_legs(run)})
    if starts:   # a leg's lines: the iterations after its start, up to the next start
        legs: dict[int | None, float] = {}
        for it, t in points:
            leg = max((s for s in starts if s < it), default=None)
            legs[leg] = max(legs.get(leg, 0.0), t)
        return sum(legs.values())
    total, last = 0.0, None
    for _, t in points:
        total += t if last is None or t < last else t - last
        last = t
    return total


def measured(out: str | Path | None, records=(), cfgs: dict[str, Any] | None = None,
             survived: Mapping[str, Survival] | None = None) -> dict[tuple, float]:
    """Seconds measured in the cache ``out``: per training iteration by
    ``("train", model key, iteration kind)``, per pass by ``("train", model key)``,
    ``("eval", model key)`` and ``("audit", model key)`` (the finished evaluation and
    audit steps among ``records``, whose training configs ``cfgs`` holds by step name,
    :func:`_configs`; an audit's passes from ``survived``, :func:`survival`)."""
    from cascade_adv.errors import CascadeAdvError
    from cascade_adv.training import load_config

    found: dict[tuple, list[float]] = {}
    for cfg_file in sorted(Path(out).glob("steps/*/run/config.yaml")) if out else ():
        rate = seconds_per_iteration(cfg_file.parent)
        try:
            cfg = load_config(cfg_file)
        except (CascadeAdvError, OSError, KeyError):
            continue
        if rate is None or cfg.data.dataset not in _SHAPES:
            continue
        key = _model_key(cfg)
        found.setdefault(("train", key, _iteration_kind(cfg)), []).append(rate)
        found.setdefault(("train", key), []).append(rate / iteration_passes(cfg))
    for rec in records if cfgs is not None else ():
        if rec.status == "cached" and rec.step.kind not in ("train", "report") and rec.seconds:
            key, passes = _passes(rec, cfgs, survived)
            if key is not None and passes > 0:
                found.setdefault((_bucket(rec), key), []).append(rec.seconds / passes)
    return {k: statistics.median(v) for k, v in found.items()}


def estimate(records, rt, timing: dict[tuple, float] | None = None, quick: bool = False,
             out: str | Path | None = None) -> dict[tuple, float]:
    """Fill ``record.estimate`` (seconds on ``rt.device``) for every step, from the
    times measured in the cache ``out`` where it has run the same model (see the
    module's docstring; ``record.measured`` says which), else from a timed pass; returns
    the calibration (seconds per pass of 128 images, by model), which ``timing`` may
    already hold from an earlier call."""
    import torch

    from cascade_adv.training import resolve_device

    device = resolve_device(rt.device)
    before = torch.get_num_threads()
    if rt.threads:
        torch.set_num_threads(rt.threads)     # time each step as it will run
    try:
        cfgs, survived = _configs(records, rt.configs), survival(records)
        return _estimate(records, cfgs, device, {} if timing is None else timing, quick,
                         measured(out, records, cfgs, survived), survived)
    finally:
        torch.set_num_threads(before)


def _configs(records, configs: str) -> dict[str, Any]:
    """The resolved config of every training step among ``records``."""
    from cascade_adv.training import load_config

    return {rec.step.name: load_config(Path(configs) / rec.step.params["config"],
                                       rec.step.params["overrides"])
            for rec in records if rec.step.kind == "train"}


def _estimate(records, cfgs: dict[str, Any], device, timing, quick, seen: dict[tuple, float],
              survived: Mapping[str, Survival]) -> dict[tuple, float]:
    for rec in records:
        key, passes = _passes(rec, cfgs, survived)
        rec.measured = False
        if key is None:
            rec.estimate = 0.0
            continue
        if rec.step.kind == "train":
            cfg = cfgs[rec.step.name]
            exact = seen.get(("train", key, _iteration_kind(cfg)))
            rate = exact / iteration_passes(cfg) if exact else seen.get(("train", key))
        else:  # a pass of this model's audit / evaluation, else of its training
            rate = next((seen[k] for k in ((_bucket(rec), key), ("eval", key),
                                           ("train", key)) if k in seen), None)
        rec.measured = rate is not None
        if rate is None:
            if key not in timing:
                timing[key] = calibrate(key, device, quick)
            rate = timing[key]
        rec.estimate = passes * rate
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
