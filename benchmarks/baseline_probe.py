#!/usr/bin/env python
"""How sensitive an undefended network's one-step robustness is to details of its end
state: an experiment behind docs/fidelity.md ("The N18 MNIST Baseline").

    python benchmarks/baseline_probe.py --run RUN [--run RUN ...] --limit 2000 \\
        --data-root DATA [--json FILE]

For every training run (its ``final`` weights and every checkpoint it kept) it measures
the top-1 accuracy of the first ``--limit`` test images under step_ll and step_FGSM at
eps 16 and 32 (the one-step cells of N18 table 1), for:

* ``as trained``: the weights and BatchNorm running statistics as saved;
* ``bn recomputed``: the same weights with the BatchNorm statistics recomputed as the
  exact mean over ``--bn-batches`` training batches of 128 (instead of the running
  average with decay 0.999 that training leaves), the "inference-mode statistics at the
  end of the schedule" candidate;
* ``logits / T``: the attacks' cross-entropy computed on the logits divided by T (the
  prediction is unchanged): how much these one-step numbers depend on the logit scale
  (a softmax that saturates weakens one-step gradient attacks).

It reports numbers only; nothing is trained or written but ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

from cascade_adv.data import iterate_batches, load_dataset
from cascade_adv.evaluation import evaluate_whitebox, prepare_images
from cascade_adv.training.runs import LoadedModel

ATTACKS = ("step_ll", "step_fgsm")
EPS = (16.0, 32.0)


class Tempered(nn.Module):
    """``model``'s logits divided by ``t``: the same predictions, a softer (t > 1) or
    sharper (t < 1) softmax for the attacks' loss."""

    def __init__(self, model: nn.Module, t: float):
        super().__init__()
        self.model, self.t = model, t
        self.config = getattr(model, "config", None)

    def forward(self, x):
        return self.model(x) / self.t


def recompute_bn(model: nn.Module, train, batches: int) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are the exact mean over the first
    ``batches`` training batches (cumulative average: momentum None)."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i, (xb, _) in enumerate(iterate_batches(train, 128)):
            if i == batches:
                break
            model(prepare_images(model, xb))
    model.eval()
    return model


def accuracies(model: nn.Module, test) -> dict[str, float]:
    rows = evaluate_whitebox(model, test, ATTACKS, (0.0, *EPS), topk=(1,), progress=False)
    return {f"{r['attack']} {r['eps']:g}": round(r["value"], 2) for r in rows}


def _tensors(path: Path) -> dict[str, bytes]:
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


def weights_of(run: Path) -> list[Path]:
    """Every checkpoint ``run`` kept, and its final weights unless they equal the last."""
    found = sorted((run / "checkpoints").glob("ckpt-*/model.safetensors"))
    final = run / "final" / "model.safetensors"
    same = found and final.is_file() and _tensors(found[-1]) == _tensors(final)
    return found + ([] if same or not final.is_file() else [final])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="a training run folder")
    p.add_argument("--limit", type=int, default=2000, help="the first N test images")
    p.add_argument("--bn-batches", type=int, default=100)
    p.add_argument("--temperatures", default="0.25,4")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    temps = [float(t) for t in a.temperatures.split(",") if t]
    torch.manual_seed(0)
    test = load_dataset("mnist", "test", a.data_root).subset(slice(0, a.limit))
    train = load_dataset("mnist", "train", a.data_root)
    out = []
    for run in map(Path, a.run):
        for w in weights_of(run):
            m = LoadedModel(str(w), "cpu").model.eval()
            label = f"{run.parent.name}/{w.parent.name}"
            variants = {"as trained": m, "bn recomputed": recompute_bn(m, train, a.bn_batches)}
            variants.update({f"logits / {t:g}": Tempered(m, t) for t in temps})
            for name, model in variants.items():
                row = {"weights": label, "variant": name, **accuracies(model, test)}
                out.append(row)
                print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"limit": a.limit, "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
