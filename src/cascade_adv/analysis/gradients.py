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

from cascade_adv import attacks
from cascade_adv.analysis._common import (
    METHODS,
    along_direction,
    base_row,
    batches,
    check_int,
    check_logits,
    check_names,
    choose_images,
    expected_classes,
    seeded_generator,
)
from cascade_adv.attacks import core
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.whitebox import prepare_images
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
    gradient step_FGSM uses), in inference mode: the gradient of the summed
    per-example losses w.r.t. the batch."""

    def objective(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_logits(logits, x.shape[0], classes, "gradient-correlation")
        return core.loss_true(logits, labels)

    with attacks.inference_mode(model):
        grad, _ = core.input_gradient(model, x, y, objective)
    return grad.flatten(1)


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
    (the gradient step_FGSM uses), in inference mode, per example; the two gradients
    are flattened and correlated with :func:`pearson`.  The images are
    :func:`choose_images` ``(dataset, n_images, seed)``; the adversarial ones are
    crafted against ``model`` itself (white-box), all epsilons of one method in one
    attack call; ``random_sign`` draws from a ``torch.Generator`` seeded with ``seed``
    on the model's device (each epsilon gets its own random sign).

    Returns rows with ``source="gradient_correlation"``, ``attack=pair``, ``eps``,
    ``metric`` ``mean`` and ``std`` (the **sample** standard deviation, ddof=1) over
    the images, and ``n`` = number of images used.  An image whose gradient has zero
    variance (e.g. a saturated softmax giving an exactly zero gradient) has no defined
    correlation: it is left out of that cell and ``n`` is lower; a cell with no image
    left has no rows, and one with a single image has no ``std`` row.
    """
    names = check_names(pairs, VALID_PAIRS, "pair")
    eps_values = attacks.validate_eps(eps, required=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    subset = choose_images(dataset, n_images, seed)
    classes = expected_classes(dataset)
    device = attacks.model_device(model)
    prepare_images(model, subset.images[:1])  # shape / channel check before any work
    split = [tuple(p.split("~")) for p in names]
    methods = [m for m in METHODS if any(m in ab for ab in split)]
    adv_eps = [e for e in eps_values if e != 0.0]
    generators = {m: seeded_generator(seed, device) for m in methods}

    # per (pair, eps): per-image correlations (NaN where undefined), one tensor per batch
    parts: dict[tuple[str, float], list[torch.Tensor]] = {}
    for start, end in batches(len(subset), batch_size):
        x = prepare_images(model, subset.images[start:end].to(device))
        y = subset.labels[start:end].to(device)
        b = x.shape[0]
        clean = _loss_gradient(model, x, y, classes)  # [b, D]
        grads: dict[str, torch.Tensor] = {}  # method -> [len(adv_eps) * b, D], eps-major
        if adv_eps:
            ys = y.repeat(len(adv_eps))
            for m in methods:
                x_adv = along_direction(model, m, x, y, adv_eps, generators[m])
                grads[m] = _loss_gradient(model, x_adv, ys, classes)
        if not all(bool(torch.isfinite(t).all()) for t in (clean, *grads.values())):
            raise CascadeAdvError(
                "the model produced a non-finite input gradient (NaN or inf); check its "
                "weights (a diverged training run?)"
            )
        for pair, (a, bname) in zip(names, split):
            for e in eps_values:
                if e == 0.0:  # both images are the clean one
                    ga = gb = clean
                else:
                    i = adv_eps.index(e)
                    ga = clean if a == CLEAN else grads[a][i * b:(i + 1) * b]
                    gb = clean if bname == CLEAN else grads[bname][i * b:(i + 1) * b]
                parts.setdefault((pair, e), []).append(pearson(ga, gb))

    # --- statistics over the images with a defined correlation -------------------------
    rows = []
    common = base_row(subset, model_name, model_hash, SOURCE)
    for pair in names:
        for e in eps_values:
            r = torch.cat(parts[(pair, e)])
            r = r[torch.isfinite(r)].cpu()
            n = int(r.numel())
            if n == 0:
                continue
            cell = {**common, "attack": pair, "eps": e, "n": n}
            rows.append({**cell, "metric": "mean", "value": float(r.mean())})
            if n >= 2:
                rows.append({**cell, "metric": "std", "value": float(r.std(correction=1))})
    return ResultTable(rows)
