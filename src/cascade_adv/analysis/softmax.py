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

from cascade_adv.analysis._common import (
    METHODS,
    Setup,
    along_direction,
    base_row,
    check_logits,
    check_names,
    choose_images,
    set_up,
)
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.engine import image_batches, predict, seeded_generator
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


def _per_image(model: nn.Module, names: list[str], setup: Setup, seed: int,
               fuse: bool) -> dict[tuple[str, float], list[torch.Tensor]]:
    """Per (method, eps), one ``[b, 2]`` tensor per batch: each image's true-class logit
    and mean false-class logit (on the device)."""
    generators = {name: seeded_generator(seed, setup.device) for name in names}
    parts: dict[tuple[str, float], list[torch.Tensor]] = {}
    for x, y in image_batches(model, setup.subset, setup.batch_size, setup.device):
        out = predict(model, x, fuse=False)  # the model's own logits (also under fuse)
        check_logits(out, x.shape[0], setup.classes, "softmax-argument")
        clean = torch.stack(true_and_false(out, y), dim=1)
        for name in names:
            if 0.0 in setup.eps:
                parts.setdefault((name, 0.0), []).append(clean)  # eps 0: no attack needed
            if not setup.adv_eps:
                continue
            part = along_direction(model, name, x, y, setup.adv_eps, generators[name],
                                   fuse=fuse)
            tf = torch.stack(true_and_false(predict(model, part.x_adv, fuse=False), part.y), 1)
            for e, rows in zip(part.eps, part.per_eps(tf)):
                parts.setdefault((name, e), []).append(rows)
    return parts


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
    fuse: bool = True,
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

    The attacks run against ``model`` itself in inference mode (white-box) on the
    attack x epsilon engine (:mod:`cascade_adv.evaluation.engine`), with all epsilons
    of one method stacked eps-major into one call with a per-example epsilon tensor
    (``batch_size`` images per call, times the number of non-zero epsilons); ``fuse``:
    their gradient passes run on the inference network with BatchNorm folded into the
    convolutions (equal up to float rounding), while the logits measured are always the
    model's own.  ``random_sign`` draws from a ``torch.Generator`` seeded with ``seed``
    on the model's device (one per method; one random sign per image, scaled with eps).
    The model must return logits ``[N, classes]``; images are prepared with
    :func:`~cascade_adv.evaluation.whitebox.prepare_images` (center crop to the
    model's input size).
    """
    names = check_names(methods, METHODS, "method")
    setup = set_up(model, dataset, eps, n_images, seed, batch_size)
    parts = _per_image(model, names, setup, seed, fuse)
    # --- statistics: one read-back -------------------------------------------------------
    cells = [(name, e) for name in names for e in setup.eps]
    stats = []
    for cell in cells:
        t, f = torch.cat(parts[cell]).t().contiguous()
        stats.append(torch.stack([t.mean(), t.std(correction=1), f.mean(), f.std(correction=1)]))
    host = torch.stack(stats).cpu()
    if not bool(torch.isfinite(host).all()):
        raise CascadeAdvError(
            "the model produced non-finite logits (NaN or inf) on the analysed images; "
            "check its weights (a diverged training run?)"
        )
    common = {**base_row(setup.subset, model_name, model_hash, SOURCE), "n": len(setup.subset)}
    return ResultTable([{**common, "attack": name, "eps": e, "metric": metric, "value": value}
                        for (name, e), values in zip(cells, host.tolist())
                        for metric, value in zip(METRICS, values)])
