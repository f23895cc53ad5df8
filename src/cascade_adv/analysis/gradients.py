"""Correlation between the gradients w.r.t. clean and adversarial images (N18 section 4.2,
figure 5).

N18 figure 5: "Averaged Pearson's correlation coefficient between the gradients w.r.t.
two images. [...] Correlation were measured by changing eps for each adversarial
image and averaged over randomly chosen 128 images from Cifar10 test-set.  Shaded
region represents +- 0.5 standard deviation of each line."

Section 4.2: "we measure correlation between gradients w.r.t. different images (i.e.
clean vs. adversarial) as a measure of error surface similarity.  We measure (1)
clean vs. "step_ll" image, (2) clean vs. "step_FGSM" image, (3) clean vs. "random
sign" added image, and (4) "step_ll" image vs. "step_FGSM" image".
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from typing import Any

import torch
from torch import nn

from cascade_adv.analysis._common import (
    METHODS,
    Setup,
    along_direction,
    base_row,
    check_logits,
    check_names,
    set_up,
)
from cascade_adv.attacks import core
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.engine import image_batches, input_gradient, seeded_generator
from cascade_adv.results.tables import CLEAN, ResultTable

#: ``source`` of the rows of :func:`gradient_correlation`.
SOURCE = "gradient_correlation"
#: N18 figure 5's four curves, named ``"A~B"``.
DEFAULT_PAIRS: tuple[str, ...] = (
    "clean~step_ll", "clean~step_fgsm", "clean~random_sign", "step_ll~step_fgsm",
)
#: Every accepted pair: two different images among clean and the methods of N18 figure 6.
VALID_PAIRS: tuple[str, ...] = tuple(f"{a}~{b}" for a, b in permutations((CLEAN, *METHODS), 2))
#: The metrics of each (pair, eps) cell, in row order.
METRICS: tuple[str, ...] = ("mean", "std")

__all__ = ["DEFAULT_PAIRS", "METRICS", "SOURCE", "VALID_PAIRS", "gradient_correlation", "pearson"]


def pearson(a, b) -> torch.Tensor:
    """Pearson's correlation coefficient of ``a[i]`` and ``b[i]`` for every row ``i``.

    ``a`` and ``b`` have the same shape ``[N, ...]``; each row is flattened, so
    ``[N, D]`` and ``[N, C, H, W]`` both work (a 1-D pair is one row and gives a 0-d
    result).  Computed in float64 as ``cov / sqrt(var_a * var_b)`` and clipped to
    [-1, 1], so ``pearson(a, a)`` is exactly 1.  A row in which either vector is
    constant (zero variance, e.g. an exactly zero gradient) has no defined
    correlation and gives NaN; so does a row with a non-finite entry.  Returns a
    float64 tensor ``[N]``.
    """
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.shape != b.shape or a.dim() == 0:
        raise CascadeAdvError(
            f"pearson needs two tensors of the same shape [N, ...], got {list(a.shape)} and "
            f"{list(b.shape)}"
        )
    single = a.dim() == 1
    a = a.detach().reshape(1 if single else a.shape[0], -1).to(torch.float64)
    b = b.detach().reshape(1 if single else b.shape[0], -1).to(device=a.device,
                                                               dtype=torch.float64)
    if a.shape[1] == 0:
        raise CascadeAdvError("pearson needs at least one value per row, got empty rows")
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    va = (ac * ac).sum(dim=1)
    vb = (bc * bc).sum(dim=1)
    r = ((ac * bc).sum(dim=1) / torch.sqrt(va * vb)).clamp(-1.0, 1.0)
    # exact test for a constant row (the float mean of equal values need not be exact)
    defined = ((a.amax(dim=1) > a.amin(dim=1)) & (b.amax(dim=1) > b.amin(dim=1))
               & (va > 0) & (vb > 0) & torch.isfinite(r))
    r = torch.where(defined, r, torch.full_like(r, float("nan")))
    return r[0] if single else r


def _loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   classes: tuple[int, bool]) -> torch.Tensor:
    """Per-example input gradient of the cross-entropy loss with the true label (the
    gradient step_FGSM uses) on the model as it is, in inference mode: the gradient of
    the summed per-example losses w.r.t. the batch, flattened ``[N, D]``."""

    def objective(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_logits(logits, x.shape[0], classes, "gradient-correlation")
        return core.loss_true(logits, labels)

    return input_gradient(model, x, y, objective, fuse=False).flatten(1)


def _correlations(model: nn.Module, names: list[str], setup: Setup, seed: int,
                  fuse: bool) -> tuple[dict[tuple[str, float], list[torch.Tensor]], torch.Tensor]:
    """Per (pair, eps), one tensor per batch of per-image correlations (NaN where
    undefined), and the number of non-finite gradient entries; all on the device."""
    split = [tuple(p.split("~")) for p in names]
    methods = [m for m in METHODS if any(m in ab for ab in split)]
    generators = {m: seeded_generator(seed, setup.device) for m in methods}
    parts: dict[tuple[str, float], list[torch.Tensor]] = {}
    bad = torch.zeros((), dtype=torch.int64, device=setup.device)
    for x, y in image_batches(model, setup.subset, setup.batch_size, setup.device):
        grads = {CLEAN: _loss_gradient(model, x, y, setup.classes)}  # [b, D]
        per_eps: dict[str, torch.Tensor] = {}  # method -> [len(adv_eps), b, D]
        for m in methods if setup.adv_eps else ():
            part = along_direction(model, m, x, y, setup.adv_eps, generators[m], fuse=fuse)
            per_eps[m] = part.per_eps(_loss_gradient(model, part.x_adv, part.y, setup.classes))
        for t in (grads[CLEAN], *per_eps.values()):
            bad += (~torch.isfinite(t)).sum()
        for pair, ab in zip(names, split):
            for e in setup.eps:  # at eps 0 both images are the clean one
                i = setup.adv_eps.index(e) if e != 0.0 else None
                ga, gb = (grads[CLEAN] if i is None or side == CLEAN else per_eps[side][i]
                          for side in ab)
                parts.setdefault((pair, e), []).append(pearson(ga, gb))
    return parts, bad


def gradient_correlation(
    model: nn.Module,
    dataset: Any,
    *,
    eps: Sequence[float] = tuple(range(17)),
    pairs: Sequence[str] = DEFAULT_PAIRS,
    n_images: int = 128,
    seed: int = 1234,
    batch_size: int = 256,
    model_name: str = "model",
    model_hash: str = "",
    fuse: bool = True,
) -> ResultTable:
    """Pearson correlation between the input gradients w.r.t. two images of each pair,
    as the adversarial images move away from the clean one (N18 figure 5).

    "Averaged Pearson's correlation coefficient between the gradients w.r.t. two
    images ... (1) clean vs step_ll image, (2) clean vs step_FGSM image, (3) clean vs
    random sign added image, (4) step_ll image vs step_FGSM image ... measured by
    changing eps for each adversarial image and averaged over randomly chosen 128
    images.  Shaded region represents +- 0.5 standard deviation."

    ``pairs`` are ``"A~B"`` with A and B two of ``clean``, ``step_ll``, ``step_fgsm``,
    ``random_sign`` (default :data:`DEFAULT_PAIRS`, the paper's four curves); both
    adversarial images of a pair use the same ``eps`` (pixel units of [0, 255]; at eps
    0 every image is the clean one and every correlation is exactly 1).  The gradient
    of an image is the input gradient of the cross-entropy loss with the **true** label
    (the gradient step_FGSM uses), on the model as it is in inference mode, per example;
    the two gradients are flattened and correlated with :func:`pearson`.  The images are
    :func:`choose_images` ``(dataset, n_images, seed)``; the adversarial ones are
    crafted against ``model`` itself (white-box) on the attack x epsilon engine
    (:mod:`cascade_adv.evaluation.engine`), all epsilons of one method in one attack
    call, on the inference network with BatchNorm folded when ``fuse``; ``random_sign``
    draws from a ``torch.Generator`` seeded with ``seed`` on the model's device (one
    random sign per image, scaled with eps).

    Returns rows with ``source="gradient_correlation"``, ``attack=pair``, ``eps``,
    ``metric`` ``mean`` and ``std`` (the **sample** standard deviation, ddof=1) over
    the images, and ``n`` = number of images used.  An image whose gradient has zero
    variance (e.g. a saturated softmax giving an exactly zero gradient) has no defined
    correlation: it is left out of that cell and ``n`` is lower; a cell with no image
    left has no rows, and one with a single image has no ``std`` row.
    """
    names = check_names(pairs, VALID_PAIRS, "pair")
    setup = set_up(model, dataset, eps, n_images, seed, batch_size)
    parts, bad = _correlations(model, names, setup, seed, fuse)
    # --- one read-back, then statistics over the images with a defined correlation -----
    cells = [(pair, e) for pair in names for e in setup.eps]
    r_all = torch.stack([torch.cat(parts[cell]) for cell in cells])
    host = torch.cat([r_all.flatten(), bad.to(r_all.dtype).view(1)]).cpu()
    if host[-1] != 0:
        raise CascadeAdvError(
            "the model produced a non-finite input gradient (NaN or inf); check its "
            "weights (a diverged training run?)"
        )
    rows = []
    common = base_row(setup.subset, model_name, model_hash, SOURCE)
    for (pair, e), r in zip(cells, host[:-1].view(len(cells), -1)):
        r = r[torch.isfinite(r)]
        n = int(r.numel())
        if n == 0:
            continue
        cell = {**common, "attack": pair, "eps": e, "n": n}
        rows.append({**cell, "metric": "mean", "value": float(r.mean())})
        if n >= 2:
            rows.append({**cell, "metric": "std", "value": float(r.std(correction=1))})
    return ResultTable(rows)
