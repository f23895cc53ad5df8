"""Analyses that train a family of networks from one config and compare them.

* lambda2 sweep - N18 section 3.4, figure 3: "We train networks with "step_ll,
  Pivot" and various lambda2s to study effects of the weight of the distance
  measure in the loss function."
* model capacity - K17 section 4.3, figures 1 and 4: "For each chosen rho we
  trained two independent models: one with adversarial training and another
  without", robustness measured as "the ratio of accuracy on adversarial images
  to accuracy on clean images".
* activation functions - K17 appendix D, table 7: adversarial training on step_ll
  with relu, relu6, ReluDecay_beta (beta 0.001, 0.01, 0.1) and tanh.
* label leaking - K17 section 4.2, table 3: train with FGSM and with step_ll and
  evaluate each with its own method; "accuracy on adversarial images becomes much
  higher than the accuracy on clean images" flags leaking.
* multiple seeds - N18 section 3.5, table 3: N networks of one configuration,
  mean +- std of every cell.

Every variant is an ordinary training run (``out/NAME``, resumable: finished runs
are not trained again) followed by a white-box evaluation; rows go to the results
store and every model is registered with its experiment and parameters, so the
figures and the report can be rebuilt from the store alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_adv import attacks as attack_registry
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.whitebox import evaluate_whitebox
from cascade_adv.results.store import ResultsStore
from cascade_adv.results.tables import CLEAN, ResultTable
from cascade_adv.training import load_config, resolve_device, train
from cascade_adv.training.runs import LoadedModel, load_split


@dataclass(frozen=True)
class Variant:
    """One network of an experiment: its run name, config overrides and parameters."""

    name: str
    overrides: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


def lambda2_variants(values: Sequence[float]) -> list[Variant]:
    """N18 figure 3: one Pivot network per lambda2."""
    return [Variant(f"lam2={v:g}", (f"adversarial.lam2={v!r}",), {"lam2": float(v)})
            for v in _numbers(values, "lambda2", minimum=0.0)]


def capacity_variants(widths: Sequence[float]) -> list[Variant]:
    """K17 figure 1: for each width multiplier rho, one network without and one with
    adversarial training (the config's adversarial settings)."""
    out = []
    for rho in _numbers(widths, "width", minimum=0.0, strict=True):
        out.append(Variant(f"rho={rho:g}-clean", (f"model.width={rho!r}", "adversarial.mode=none"),
                           {"width": rho, "adversarial": False}))
        out.append(Variant(f"rho={rho:g}-adv", (f"model.width={rho!r}",),
                           {"width": rho, "adversarial": True}))
    return out


#: K17 table 7's activations, as ``name`` or ``relu_decay:beta``.
K17_ACTIVATIONS = ("relu", "relu6", "relu_decay:0.001", "relu_decay:0.01", "relu_decay:0.1",
                   "tanh")


def activation_variants(activations: Sequence[str] = K17_ACTIVATIONS) -> list[Variant]:
    """K17 table 7: one adversarially trained network per activation function."""
    from cascade_adv.models import ACTIVATIONS

    out = []
    for spec in activations:
        name, _, beta = spec.partition(":")
        if name not in ACTIVATIONS:
            raise CascadeAdvError(f"unknown activation {name!r}; choose from "
                                  f"{', '.join(ACTIVATIONS)} (relu_decay:BETA for ReluDecay)")
        overrides = [f"model.activation={name}"]
        if beta:
            (b,) = _numbers([beta], "relu_decay beta", minimum=0.0, strict=True)
            overrides.append(f"model.relu_decay_beta={b!r}")
        out.append(Variant(f"act={spec}", tuple(overrides), {"activation": spec}))
    return out


def label_leaking_variants(methods: Sequence[str] = ("step_fgsm", "step_ll")) -> list[Variant]:
    """K17 table 3: one network adversarially trained with each one-step method."""
    from cascade_adv.training.adversarial import check_method

    out = []
    for m in methods:
        check_method(m)
        out.append(Variant(f"train={m}", (f"adversarial.method={m}",), {"train_method": m}))
    return out


def seed_variants(seeds: Sequence[int], shared_init: bool = True) -> list[Variant]:
    """N18 table 3: one network per seed.  With ``shared_init`` every network starts
    from the config's ``init_from`` (only the batch order and epsilons differ);
    without it each starts from its own random initialisation (``init_from=null``)."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise CascadeAdvError(f"give at least two different seeds, got {seeds}")
    extra = () if shared_init else ("init_from=null",)
    return [Variant(f"seed={s}", (f"seed={s}",) + extra, {"seed": s, "shared_init": shared_init})
            for s in seeds]


def _numbers(values: Sequence[Any], what: str, minimum: float, strict: bool = False
             ) -> list[float]:
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise CascadeAdvError(f"{what} values must be numbers, got {v!r}") from None
        if not math.isfinite(x) or x < minimum or (strict and x == minimum):
            raise CascadeAdvError(f"{what} must be {'>' if strict else '>='} {minimum:g}, "
                                  f"got {v!r}")
        out.append(x)
    if not out:
        raise CascadeAdvError(f"give at least one {what} value")
    return out


def run_variants(
    config: str | os.PathLike,
    variants: Sequence[Variant],
    out: str | os.PathLike,
    store: ResultsStore,
    *,
    experiment: str,
    overrides: Sequence[str] = (),
    attacks: Sequence[str] = ("step_ll", "step_fgsm", "iter_ll", "iter_fgsm"),
    eps: Sequence[float] = (16,),
    limit: int | None = None,
    batch_size: int = 500,
    progress: bool = True,
) -> ResultTable:
    """Train (or resume) every variant of ``config`` under ``out/NAME``, evaluate it
    white-box on the test split and record rows and models in ``store``.

    Model names are ``EXPERIMENT/NAME`` so that experiments never collide.  Every
    config is validated before the first network trains.
    """
    out = Path(out)
    cfgs = [load_config(config, [*overrides, *v.overrides, f"name={experiment}/{v.name}"])
            for v in variants]
    table = ResultTable()
    for variant, cfg in zip(variants, cfgs):
        run_dir = out / variant.name
        train(cfg, run_dir, resume=True, progress=progress)
        # the trained run as every command loads it: weights checked, hash, init, split
        run = LoadedModel(str(run_dir / "final"), resolve_device(cfg.device), name=cfg.name)
        test = load_split([run], cfg.data.dataset, cfg.data.root, "test", limit,
                          attack_registry.model_device(run.model))
        rows = evaluate_whitebox(run.model, test, attacks, eps, batch_size=batch_size,
                                 model_name=run.name, model_hash=run.hash, progress=progress)
        # a variant is not the published row its base config names (another lambda2,
        # width, ...): no paper rows, its experiment places it in the report
        # one transaction; a store that cannot be written keeps them in a pending file
        store.save(rows, [run.record(experiment, {**variant.params, "paper": []})])
        table.extend(rows)
    return table


def label_leaking_table(table: ResultTable, trained_with: dict[str, str],
                        metric: str = "top1") -> list[dict[str, Any]]:
    """K17 table 3: for each network, clean accuracy and accuracy on adversarial
    images of the method it was trained with, per epsilon; ``leak`` is True where the
    adversarial accuracy exceeds the clean one."""
    out = []
    for model, method in trained_with.items():
        clean = table.value(model, CLEAN, 0.0, metric)
        for r in table.filter(model=model, attack=method, metric=metric, source="whitebox"):
            out.append({"model": model, "method": method, "eps": r["eps"], "clean": clean,
                        "adversarial": r["value"],
                        "leak": clean is not None and r["value"] > clean})
    return sorted(out, key=lambda r: (r["model"], r["eps"]))
