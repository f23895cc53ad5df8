"""Argument to the softmax vs. epsilon (N18 section 4.1, figure 4 and appendix A, figure 6).

N18 figure 4: "Argument to the softmax vs. eps in test time. [...] Arguments to the
softmax were measured by changing eps and averaged over randomly chosen 128 images
from CIFAR10 test-set.  Blue line represents true class and the red line represents
mean of the false classes.  Shaded region shows +- 1 standard deviation of each line."
Figure 6 repeats it for the "step_ll", "step_FGSM" and "random sign" methods.

Section 4.1: "We draw average value of the argument to the softmax layer for the true
class and the false classes to visualize how the adversarial training works [...]
Standard training, as expected, shows dramatic drop in the values for the true class
as we increase eps in "step_ll" directions."
"""

from __future__ import annotations

from collections.abc import Sequence
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
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.whitebox import prepare_images
from cascade_adv.results.tables import ResultTable

#: ``source`` of the rows of :func:`softmax_argument`.
SOURCE = "softmax_argument"
#: The metrics of each (method, eps) cell, in row order.
METRICS: tuple[str, ...] = ("true_mean", "true_std", "false_mean", "false_std")

__all__ = ["METHODS", "METRICS", "SOURCE", "choose_images", "softmax_argument"]


def true_and_false(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the logit of the true class and the mean logit of the false classes
    (float64 ``[N]`` each)."""
    z = logits.to(torch.float64)
    true = z.gather(1, labels.view(-1, 1)).squeeze(1)
    others = z.scatter(1, labels.view(-1, 1), 0.0).sum(dim=1)
    return true, others / (z.shape[1] - 1)


def softmax_argument(
    model: nn.Module,
    dataset: Any,
    *,
    methods: Sequence[str] = METHODS,
    eps: Sequence[float] = tuple(range(17)),
    n_images: int = 128,
    seed: int = 1234,
    batch_size: int = 256,
    model_name: str = "model",
    model_hash: str = "",
) -> ResultTable:
    """The argument to the softmax (the logits) for the true class and the false classes
    as the image moves along each test-time method's direction (N18 figures 4 and 6).

    "Arguments to the softmax were measured by changing eps and averaged over randomly
    chosen 128 images from the test-set.  Blue line represents true class and the red
    line represents mean of the false classes.  Shaded region shows +- 1 standard
    deviation."

    For each method in ``methods`` (``step_ll``, ``step_fgsm``, ``random_sign``) and
    each ``eps`` (pixel units of [0, 255]; eps 0 is the clean image), every image of
    :func:`choose_images` ``(dataset, n_images, seed)`` gives the logit of its true
    class and the mean of the logits of its false classes.  Returns rows with
    ``source="softmax_argument"``, ``attack=method``, ``eps``, ``metric`` one of
    ``true_mean``, ``true_std``, ``false_mean``, ``false_std``: the mean and the
    **sample** standard deviation (ddof=1) over the images; ``n`` = number of images.
    Rows are ordered by method, then eps as given (duplicates dropped), then metric.

    The attacks run against ``model`` itself in inference mode (white-box), with all
    epsilons of one method stacked eps-major into one call with a per-example epsilon
    tensor (``batch_size`` images per call, times the number of non-zero epsilons).
    ``random_sign`` draws from a ``torch.Generator`` seeded with ``seed`` on the model's
    device (one per method; each epsilon gets its own random sign).  The model must
    return logits ``[N, classes]``; images are prepared with
    :func:`~cascade_adv.evaluation.whitebox.prepare_images` (center crop to the
    model's input size).
    """
    analysis = "softmax-argument"
    names = check_names(methods, METHODS, "method")
    eps_values = attacks.validate_eps(eps, required=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    subset = choose_images(dataset, n_images, seed)
    classes = expected_classes(dataset)
    device = attacks.model_device(model)
    prepare_images(model, subset.images[:1])  # shape / channel check before any work
    adv_eps = [e for e in eps_values if e != 0.0]
    generators = {name: seeded_generator(seed, device) for name in names}

    # per (method, eps): list of per-image (true, false-mean) tensors, one per batch
    true_parts: dict[tuple[str, float], list[torch.Tensor]] = {}
    false_parts: dict[tuple[str, float], list[torch.Tensor]] = {}

    def keep(name: str, e: float, t: torch.Tensor, f: torch.Tensor) -> None:
        true_parts.setdefault((name, e), []).append(t)
        false_parts.setdefault((name, e), []).append(f)

    n = len(subset)
    for start, end in batches(n, batch_size):
        x = prepare_images(model, subset.images[start:end].to(device))
        y = subset.labels[start:end].to(device)
        b = x.shape[0]
        out = attacks.predict(model, x)
        check_logits(out, b, classes, analysis)
        t0, f0 = true_and_false(out, y)
        for name in names:
            if 0.0 in eps_values:
                keep(name, 0.0, t0, f0)  # eps 0: the clean image, no attack needed
            if not adv_eps:
                continue
            ys = y.repeat(len(adv_eps))
            x_adv = along_direction(model, name, x, y, adv_eps, generators[name])
            out = attacks.predict(model, x_adv)
            t, f = true_and_false(out, ys)
            for i, e in enumerate(adv_eps):
                keep(name, e, t[i * b:(i + 1) * b], f[i * b:(i + 1) * b])

    # --- statistics: one read-back -------------------------------------------------------
    cells = [(name, e) for name in names for e in eps_values]
    stats = []
    for cell in cells:
        t = torch.cat(true_parts[cell])
        f = torch.cat(false_parts[cell])
        stats.append(torch.stack([t.mean(), t.std(correction=1), f.mean(), f.std(correction=1)]))
    host = torch.stack(stats).cpu()
    if not bool(torch.isfinite(host).all()):
        raise CascadeAdvError(
            "the model produced non-finite logits (NaN or inf) on the analysed images; "
            "check its weights (a diverged training run?)"
        )
    common = {**base_row(subset, model_name, model_hash, SOURCE), "n": n}
    rows = []
    for (name, e), values in zip(cells, host.tolist()):
        for metric, value in zip(METRICS, values):
            rows.append({**common, "attack": name, "eps": e, "metric": metric, "value": value})
    return ResultTable(rows)
