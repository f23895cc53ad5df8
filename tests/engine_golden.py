"""Fixed-seed cases of the attack x epsilon engine's users, and their stored rows.

``evaluate_whitebox`` (one-step, random and iterative attacks, PGD with restarts, eps 0
among the epsilons, top-1 and top-5, a ``max_batch`` that splits the epsilons of a
batch into groups, fusion on and off), ``softmax_argument`` and
``gradient_correlation``, and a short ``audit`` (its attacks on the rows still correct,
a ``max_batch`` that splits them) run on two small models of digits:

* ``linear``: a nearest-class-mean classifier of the 8x8 digits (no BatchNorm);
* ``resnet``: a ResNet-8 (width 0.25, BatchNorm) on the digits resized to MNIST's
  1x28x28, trained for two epochs.

Their weights are stored in ``tests/data/engine_golden_models.safetensors`` and the
rows in ``tests/data/engine_golden.json`` (``tests/test_engine.py`` recomputes and
compares them).  Regenerate both only when a change of results is intended::

    PYTHONPATH=src python tests/engine_golden.py --write
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cascade_adv.analysis import gradient_correlation, softmax_argument
from cascade_adv.analysis.gradients import VALID_PAIRS
from cascade_adv.data import ImageDataset, load_dataset
from cascade_adv.evaluation import AuditRecord, AuditRun, audit, evaluate_whitebox
from cascade_adv.models import build_model

DATA = Path(__file__).resolve().parent / "data"
MODELS = DATA / "engine_golden_models.safetensors"
ROWS = DATA / "engine_golden.json"

#: Relative tolerance of the continuous values (logits, correlations): the engine keeps
#: every computation as it was, so they agree up to float32 rounding, which a backend
#: update or another CPU's kernels (AVX2 against AVX-512) reorder.  Measured between the
#: stored rows and a later machine: logits 3e-7 relative, the linear model's correlations
#: (about 0.996) 1e-6.
REL = 1e-5
#: Absolute slack, on the correlations' scale ([-1, 1]): the std of 24 near-equal
#: correlations carries their rounding (3e-6 measured on 0.0118, 3e-4 relative), and a mean
#: logit may be 0 up to rounding.  A changed attack, epsilon or pair moves them by far more.
ABS = 1e-5

RESNET = {"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 28, "num_classes": 10,
          "normalize": "none"}
#: The audit's epsilons: where its attacks flip some images but not all.
AUDIT_EPS = {"linear": [4, 12], "resnet": [0.5, 2]}
ATTACKS = ("step_fgsm", "step_ll", "step_rnd", "random_sign", "random_normal", "fast_grad_l2",
           "iter_fgsm", "iter_ll", "pgd")


def digits(split: str, size: int) -> ImageDataset:
    """The digits set, resized (bilinear) to ``size`` x ``size`` when not 8."""
    ds = load_dataset("digits", split)
    if size == 8:
        return ds
    big = F.interpolate(ds.images.float(), size=(size, size), mode="bilinear",
                        align_corners=False)
    return ImageDataset(big.round().clamp(0, 255).to(torch.uint8), ds.labels.clone(),
                        ds.name, ds.split, list(ds.classes))


def linear_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def resnet_model() -> nn.Module:
    return build_model(RESNET)


def make_models() -> dict[str, dict[str, torch.Tensor]]:
    """The two models' weights: the linear one in closed form, the ResNet trained."""
    train = digits("train", 8)
    x = train.images.flatten(1).double() / 255.0
    means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    # logits = 8 (x . m_c - |m_c|^2 / 2): the nearest class mean, scaled to a soft softmax
    linear = {"1.weight": (8.0 * means).float(),
              "1.bias": (-4.0 * (means * means).sum(1)).float()}
    torch.manual_seed(0)
    model = resnet_model()
    big = digits("train", 28)
    xs, ys = big.images.float() / 255.0, big.labels
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(ys), generator=g)
        for i in range(0, len(ys), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    model.eval()
    return {"linear": linear, "resnet": {k: v.detach().clone().contiguous()
                                         for k, v in model.state_dict().items()}}


def load_models() -> dict[str, tuple[nn.Module, ImageDataset]]:
    """``name -> (model in eval mode, its 40 test images)``."""
    flat = load_file(str(MODELS))
    out = {}
    for name, build, size in (("linear", linear_model, 8), ("resnet", resnet_model, 28)):
        model = build()
        prefix = name + "/"
        model.load_state_dict({k[len(prefix):]: v for k, v in flat.items()
                               if k.startswith(prefix)})
        model.eval()
        out[name] = (model, digits("test", size).subset(40))
    return out


def _rows(table) -> list[dict[str, Any]]:
    return [dict(r) for r in table.rows]


def cases() -> dict[str, Callable[[dict], list[dict[str, Any]]]]:
    """Case name -> function of the loaded models giving its rows."""
    out: dict[str, Callable[[dict], list[dict[str, Any]]]] = {}
    for name in ("linear", "resnet"):
        for fuse in (True, False):
            out[f"whitebox/{name}/fuse={fuse}"] = (
                lambda m, name=name, fuse=fuse: _rows(evaluate_whitebox(
                    m[name][0], m[name][1], list(ATTACKS), [0, 2, 8, 16], batch_size=16,
                    max_batch=40, topk=(1, 5), attack_options={"pgd": {"restarts": 2}},
                    seed=3, progress=False, model_name=name, fuse=fuse)))
        out[f"whitebox/{name}/top1"] = (
            lambda m, name=name: _rows(evaluate_whitebox(
                m[name][0], m[name][1], ["iter_ll", "random_sign", "step_fgsm"], [4, 0, 1],
                batch_size=12, topk=1, seed=11, progress=False, model_name=name)))
        out[f"softmax/{name}"] = (
            lambda m, name=name: _rows(softmax_argument(
                m[name][0], m[name][1], eps=(0, 1, 4, 8), n_images=24, seed=5, batch_size=10,
                model_name=name)))
        out[f"gradients/{name}"] = (
            lambda m, name=name: _rows(gradient_correlation(
                m[name][0], m[name][1], eps=(0, 1, 4, 8), n_images=24, seed=5, batch_size=10,
                pairs=VALID_PAIRS, model_name=name)))
        out[f"audit/{name}"] = (
            lambda m, name=name: _rows(audit(
                m[name][0], m[name][1].images.float() / 255.0, m[name][1].labels, AUDIT_EPS[name],
                version="apgd_ce:steps=10,apgd_t:targets=2:steps=5,square:queries=40",
                run=AuditRun(batch_size=16, max_batch=24, seed=2, channels_last=False),
                record=AuditRecord(model_name=name)).table()))
    return out


def compute() -> dict[str, list[dict[str, Any]]]:
    models = load_models()
    return {name: fn(models) for name, fn in cases().items()}


def pack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows -> ``{"common": fields equal in every row, "fields": the others, "rows": their
    values}`` (what the JSON file stores: a third of the plain rows' size)."""
    common = {k: v for k, v in rows[0].items() if all(r.get(k) == v for r in rows)}
    fields = [k for k in rows[0] if k not in common]
    return {"common": common, "fields": fields, "rows": [[r[k] for k in fields] for r in rows]}


def unpack(packed: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**packed["common"], **dict(zip(packed["fields"], values))}
            for values in packed["rows"]]


def stored() -> dict[str, list[dict[str, Any]]]:
    return {case: unpack(p) for case, p in json.loads(ROWS.read_text(encoding="utf-8")).items()}


def differences(expected: dict[str, list[dict]], got: dict[str, list[dict]]) -> list[str]:
    """What differs, one line each: white-box and audit rows (counts) exactly, the analyses' values
    within :data:`REL` relative (:data:`ABS` absolute), every other field exactly."""
    out = []
    for case in sorted(set(expected) | set(got)):
        want, have = expected.get(case), got.get(case)
        if want is None or have is None or len(want) != len(have):
            out.append(f"{case}: {len(want or [])} rows stored, {len(have or [])} computed")
            continue
        exact = case.startswith(("whitebox/", "audit/"))
        for a, b in zip(want, have):
            same_keys = {k: v for k, v in a.items() if k != "value"} == \
                        {k: v for k, v in b.items() if k != "value"}
            va, vb = a["value"], b["value"]
            close = va == vb if exact else math.isclose(va, vb, rel_tol=REL, abs_tol=ABS)
            if not same_keys or not close:
                out.append(f"{case}: stored {a}, computed {b}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="retrain the models and rewrite the stored rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.write:
        DATA.mkdir(exist_ok=True)
        weights = make_models()
        save_file({f"{m}/{k}": v for m, sd in weights.items() for k, v in sd.items()},
                  str(MODELS))
        MODELS.chmod(0o644)
        rows = compute()
        text = json.dumps({case: pack(r) for case, r in rows.items()}, sort_keys=True)
        ROWS.write_text(text.replace("]], ", "]],\n") + "\n", encoding="utf-8")
        models = load_models()
        for name, (model, ds) in models.items():
            acc = (model(ds.images.float() / 255.0).argmax(1) == ds.labels).double().mean()
            print(f"{name}: clean accuracy on its 40 images {100 * float(acc):.1f} %")
        print(f"wrote {MODELS} and {ROWS}")
    else:
        diff = differences(stored(), compute())
        print("\n".join(diff) or "all rows agree")


if __name__ == "__main__":
    main()
