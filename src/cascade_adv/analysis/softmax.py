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

Beyond N18, the same quantity at the adversarial images of two iterative attacks
(:data:`ATTACK_METHODS`, opt-in): iter_FGSM, the papers' iterative attack, and
APGD-CE (Croce & Hein 2020), the first attack of the robustness audit.  Beside
step_ll they show what the paper's attacks see and what the audit finds on a network
that masks its gradients (docs/design.md, "Softmax argument along the attacks' images").
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.analysis._common import (
    ATTACK_METHODS,
    METHODS,
    Setup,
    along_direction,
    base_row,
    check_logits,
    check_names,
    choose_images,
    set_up,
)
from cascade_adv.errors import CascadeAdvError, InvalidArgument, UnknownName
from cascade_adv.evaluation.engine import image_batches, predict, seeded_generator
from cascade_adv.results.tables import ResultTable

#: ``source`` of the rows of :func:`softmax_argument`.
SOURCE = "softmax_argument"
#: The metrics of each (method, eps) cell, in row order.
METRICS: tuple[str, ...] = ("true_mean", "true_std", "false_mean", "false_std")
#: Every method :func:`softmax_argument` accepts: N18's three directions (the default),
#: then the iterative attacks whose adversarial images it can follow.
ALL_METHODS: tuple[str, ...] = METHODS + ATTACK_METHODS

__all__ = ["ALL_METHODS", "ATTACK_METHODS", "METHODS", "METRICS", "SOURCE",
           "check_attack_options", "choose_images", "method_label", "softmax_argument"]


def true_and_false(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the logit of the true class and the mean logit of the false classes
    (float64 ``[N]`` each)."""
    z = logits.to(torch.float64)
    true = z.gather(1, labels.view(-1, 1)).squeeze(1)
    others = z.scatter(1, labels.view(-1, 1), 0.0).sum(dim=1)
    return true, others / (z.shape[1] - 1)


def check_attack_options(attack_options: Any, names: Sequence[str]) -> dict[str, dict]:
    """``attack_options`` of :func:`softmax_argument` checked before any work: a mapping
    from an attack method among ``names`` (:data:`ATTACK_METHODS`) to its keyword
    options, each checked against the attack's types and ranges
    (:func:`cascade_adv.attacks.check_options`).  Returns every method of ``names``
    with its (converted) options, ``{}`` for the ones left out.  A name that is not an
    attack method raises :class:`~cascade_adv.errors.UnknownName` (a ``KeyError``); one
    not among ``names``, or a bad option, a ``ValueError`` subclass."""
    if attack_options is None:
        attack_options = {}
    if not isinstance(attack_options, Mapping):
        raise InvalidArgument("attack_options must be a mapping from a method to its options, "
                              f"e.g. {{'apgd_ce': {{'steps': 20}}}}; got "
                              f"{type(attack_options).__name__}")
    out: dict[str, dict] = {name: {} for name in names}
    for name, options in attack_options.items():
        if name not in ATTACK_METHODS:
            raise UnknownName(f"attack_options names {name!r}; only the attack methods take "
                              f"options: {', '.join(ATTACK_METHODS)}")
        if name not in names:
            raise InvalidArgument(f"attack_options gives options for {name!r}, which is not "
                                  f"among the methods ({', '.join(names)}); add it to methods "
                                  "or drop its options")
        out[name] = attacks.check_options(attacks.get(name), {} if options is None else options)
    return out


def method_label(name: str, options: Mapping[str, Any]) -> str:
    """The ``attack`` of a method's rows: ``name``, or ``name:key=value:...`` (sorted,
    the audit's label form) for the options that differ from the attack's defaults,
    so that rows of a cheaper APGD never pass for the full one."""
    if not options:
        return name
    params = inspect.signature(attacks.get(name).fn).parameters
    changed = {k: v for k, v in options.items() if k not in params or params[k].default != v}
    return ":".join([name] + [f"{k}={v}" for k, v in sorted(changed.items())])


def _per_image(model: nn.Module, names: list[str], setup: Setup, seed: int, fuse: bool,
               options: Mapping[str, Mapping[str, Any]]
               ) -> dict[tuple[str, float], list[torch.Tensor]]:
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
                                   fuse=fuse, options=options.get(name) or None)
            tf = torch.stack(true_and_false(predict(model, part.x_adv, fuse=False), part.y), 1)
            for e, rows in zip(part.eps, part.per_eps(tf)):
                parts.setdefault((name, e), []).append(rows)
    return parts


def _statistics(parts: dict[tuple[str, float], list[torch.Tensor]],
                cells: list[tuple[str, float]]) -> list[list[float]]:
    """Per cell the mean and sample std (ddof=1) of the true and the false logits, in
    :data:`METRICS` order: one read-back."""
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
    return host.tolist()


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
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> ResultTable:
    """The argument to the softmax (the logits) for the true class and the false classes
    as the image moves along each test-time method's direction (N18 figures 4 and 6).

    "Arguments to the softmax were measured by changing eps and averaged over randomly
    chosen 128 images from the test-set.  Blue line represents true class and the red
    line represents mean of the false classes.  Shaded region shows +- 1 standard
    deviation."

    For each method in ``methods`` (by default N18's ``step_ll``, ``step_fgsm``,
    ``random_sign``; also ``iter_fgsm`` and ``apgd_ce``, see below) and each ``eps``
    (pixel units of [0, 255]; eps 0 is the clean image), every image of
    :func:`choose_images` ``(dataset, n_images, seed)`` gives the logit of its true
    class and the mean of the logits of its false classes.  Returns rows with
    ``source="softmax_argument"``, ``attack`` = :func:`method_label`, ``eps``, ``metric``
    one of ``true_mean``, ``true_std``, ``false_mean``, ``false_std``: the mean and the
    **sample** standard deviation (ddof=1) over the images; ``n`` = number of images.
    Rows are ordered by method, then eps as given (duplicates dropped), then metric.

    The attacks run against ``model`` itself in inference mode (white-box) on the
    attack x epsilon engine (:mod:`cascade_adv.evaluation.engine`), with all epsilons
    of one method stacked eps-major into one call with a per-example epsilon tensor
    (``batch_size`` images per call, times the number of non-zero epsilons); ``fuse``:
    their gradient passes run on the inference network with BatchNorm folded into the
    convolutions (equal up to float rounding), while the logits measured are always the
    model's own.  Each method draws from its own ``torch.Generator`` seeded with
    ``seed`` on the model's device: ``random_sign`` one random sign per image, scaled
    with eps.  The model must return logits ``[N, classes]``; images are prepared with
    :func:`~cascade_adv.evaluation.whitebox.prepare_images` (center crop to the
    model's input size).

    **The attacks' images** (beyond N18, opt-in).  An iterative attack has no single
    direction: for ``iter_fgsm`` and ``apgd_ce`` the point measured at eps ``e`` is the
    attack's adversarial image for the eps-ball of radius ``e`` around the clean image,
    run afresh for each ``e`` (no image is reused from a smaller eps).  ``iter_fgsm``
    is K17's basic iterative method (steps of 1 pixel, ``floor(min(e + 4, 1.25 e))``
    of them, from the clean image): what the papers' iterative attack sees.  ``apgd_ce``
    is APGD on the cross-entropy (:mod:`cascade_adv.attacks.apgd`; by default 100 steps,
    1 restart, rho 0.75, from a random start drawn from the method's generator): per
    image the last misclassified iterate if it found one, else its highest-loss
    iterate, and the clean image where the model misclassifies it clean; what the
    robustness audit finds.  Its rows are reproducible for the same ``seed``, images,
    ``eps`` and ``batch_size`` (the random starts of a batch are drawn in one call).
    ``attack_options`` (e.g. ``{"apgd_ce": {"steps": 20}}``) sets those attacks'
    keyword options (:func:`check_attack_options`), to trade strength for time; options
    other than the attack's defaults are written into the rows' ``attack``
    (``apgd_ce:steps=20``).
    """
    names = check_names(methods, ALL_METHODS, "method")
    options = check_attack_options(attack_options, names)
    setup = set_up(model, dataset, eps, n_images, seed, batch_size)
    parts = _per_image(model, names, setup, seed, fuse, options)
    cells = [(name, e) for name in names for e in setup.eps]
    common = {**base_row(setup.subset, model_name, model_hash, SOURCE), "n": len(setup.subset)}
    labels = {name: method_label(name, options[name]) for name in names}
    return ResultTable([{**common, "attack": labels[name], "eps": e, "metric": metric,
                         "value": value}
                        for (name, e), values in zip(cells, _statistics(parts, cells))
                        for metric, value in zip(METRICS, values)])
