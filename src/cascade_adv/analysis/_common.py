"""Checks and helpers shared by the model-level analyses (N18 section 4, appendix A)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.attacks import AttackSpec, core
from cascade_adv.data import ImageDataset
from cascade_adv.errors import CascadeAdvError, InvalidArgument, UnknownName
from cascade_adv.evaluation.engine import Stacked, attack_eps, prepare_images, seeded_generator

#: The test-time directions of N18 figures 4-6 ("step_ll", "step_FGSM", "random sign").
METHODS: tuple[str, ...] = ("step_ll", "step_fgsm", "random_sign")
#: Iterative attacks whose adversarial image at each eps the softmax analysis can also
#: follow (beyond N18): the papers' iter_FGSM and the audit's first attack, APGD-CE
#: (docs/design.md, "Softmax argument along the attacks' images").
ATTACK_METHODS: tuple[str, ...] = ("iter_fgsm", "apgd_ce")


def check_dataset(dataset: Any) -> None:
    """An :class:`ImageDataset`-like object with at least two images, else one-line error."""
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "labels", None)
    if (not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor)
            or images.dtype != torch.uint8 or images.dim() != 4 or labels.dim() != 1
            or labels.shape[0] != images.shape[0]):
        raise CascadeAdvError(
            "dataset must be an ImageDataset (uint8 images [N, C, H, W], int64 labels [N]); "
            "load one with cascade_adv.data.load_dataset"
        )
    n = int(images.shape[0])
    if n == 0:
        raise CascadeAdvError("the dataset is empty; analyse a dataset with images")
    if n < 2:
        raise CascadeAdvError(
            "the dataset has 1 image; the analyses report a standard deviation over the "
            "images and need at least 2"
        )
    if torch.is_floating_point(labels) or labels.dtype == torch.bool:
        raise CascadeAdvError(f"dataset labels must be integer class indices, got {labels.dtype}")
    if bool((labels < 0).any()):
        raise CascadeAdvError("dataset labels must be class indices >= 0; found a negative label")


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise CascadeAdvError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def choose_images(dataset: Any, n_images: int = 128, seed: int = 1234) -> ImageDataset:
    """A fixed random subset of ``n_images`` images of ``dataset``, so that every model is
    analysed on the same images (N18 figures 4-6: "averaged over randomly chosen 128
    images from the test-set").

    The subset is the first ``n_images`` entries of ``torch.randperm`` drawn from a CPU
    ``torch.Generator`` seeded with ``seed`` (without replacement), returned in dataset
    order; the same ``(dataset, n_images, seed)`` always gives the same images, and a
    smaller ``n_images`` gives a subset of a larger one.  A dataset with at most
    ``n_images`` images is used whole.  ``n_images`` must be at least 2 (the analyses
    report a standard deviation over the images).  Returns an :class:`ImageDataset` with
    the name, split and classes of ``dataset``, on its device.
    """
    n_images = check_int(n_images, "n_images", 2)
    seed = check_int(seed, "seed", -(2**63))
    check_dataset(dataset)
    images, labels = dataset.images, dataset.labels
    n = int(images.shape[0])
    if n > n_images:
        idx = torch.randperm(n, generator=seeded_generator(seed, "cpu"))[:n_images]
        idx = idx.sort().values.to(images.device)
        images, labels = images[idx], labels[idx]
    return ImageDataset(
        images=images,
        labels=labels.to(torch.int64),
        name=str(getattr(dataset, "name", "")),
        split=str(getattr(dataset, "split", "")),
        classes=list(getattr(dataset, "classes", []) or []),
    )


def check_names(names: Any, valid: Sequence[str], what: str) -> list[str]:
    """``names`` (a string or a sequence of strings), each in ``valid``; duplicates dropped.
    An unknown name raises :class:`~cascade_adv.errors.UnknownName` (a ``KeyError`` and a
    ``ValueError``), none at all :class:`~cascade_adv.errors.InvalidArgument`."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name not in valid:
            raise UnknownName(f"unknown {what} {name!r}; choose from: {', '.join(valid)}")
        if name not in out:
            out.append(name)
    if not out:
        raise InvalidArgument(f"no {what} given; choose from: {', '.join(valid)}")
    return out


def check_logits(out: Any, n: int, classes: tuple[int, bool], analysis: str) -> None:
    """The model output must be the logits ``[n, classes]`` (the layer before softmax,
    N18's embedding); anything else raises one line naming the fix.  ``classes`` is
    ``(k, exact)`` from :func:`expected_classes`."""
    fix = (f"the {analysis} analysis needs the logits [N, classes] (the layer before "
           "softmax): pass a classifier that returns logits")
    if not isinstance(out, torch.Tensor):
        raise CascadeAdvError(f"model output is a {type(out).__name__}, not a tensor; {fix}")
    shape = list(out.shape)
    if out.dim() != 2 or not torch.is_floating_point(out) or shape[0] != n:
        raise CascadeAdvError(f"model output has shape {shape} ({out.dtype}) for {n} images; {fix}")
    k, exact = classes
    if shape[1] != k if exact else shape[1] < k:
        need = f"the dataset has {k} classes" if exact else f"the labels need {k} columns"
        raise CascadeAdvError(f"model output has shape {shape} but {need}; {fix}")


def expected_classes(dataset: Any) -> tuple[int, bool]:
    """``(k, exact)``: the logits need exactly ``k`` columns when the dataset names its
    classes, else at least ``k`` = largest label + 1 (never fewer than 2: the analyses
    compare the true class with the false classes)."""
    labelled = int(dataset.labels.max().item()) + 1
    named = len(getattr(dataset, "classes", []) or [])
    if named and labelled > named:
        raise CascadeAdvError(
            f"dataset labels go up to {labelled - 1} but it names {named} classes; "
            "fix the dataset's labels or classes"
        )
    k = named or labelled
    if k < 2:
        raise CascadeAdvError(
            "the dataset has a single class; the analyses compare the true class with the "
            "false classes and need at least 2"
        )
    return k, bool(named)


def base_row(dataset: ImageDataset, model_name: str, model_hash: str, source: str) -> dict:
    return {
        "model": model_name,
        "model_hash": model_hash,
        "dataset": dataset.name,
        "split": dataset.split,
        "source": source,
    }


@dataclass
class Setup:
    """The checked inputs of a model-level analysis: its images (:func:`choose_images`),
    the logits' classes (:func:`expected_classes`), the model's device, the epsilons
    (all, and the non-zero ones) and the batch size."""

    subset: ImageDataset
    classes: tuple[int, bool]
    device: torch.device
    eps: list[float]
    adv_eps: list[float]
    batch_size: int


def set_up(model: nn.Module, dataset: Any, eps: Sequence[float], n_images: int, seed: int,
           batch_size: int) -> Setup:
    """Check an analysis' arguments (one-line errors, before any work) -> :class:`Setup`."""
    eps_values = attacks.validate_eps(eps, required=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    subset = choose_images(dataset, n_images, seed)
    classes = expected_classes(dataset)
    prepare_images(model, subset.images[:1])  # shape / channel check before any work
    return Setup(subset, classes, attacks.model_device(model), eps_values,
                 [e for e in eps_values if e != 0.0], batch_size)


def _one_sign(x: torch.Tensor, generator: torch.Generator | None) -> AttackSpec:
    """"random sign" along one direction: a random sign vector per image of ``x``, drawn
    now, scaled by each row's eps (the rows are ``x`` stacked epsilon-major)."""
    sign = core.random_sign_direction(x, generator)

    def fn(model, xs, ys, eps, *, generator=None):
        eps01 = core.pixel_eps(eps, xs.shape[0], xs)
        reps = xs.shape[0] // sign.shape[0]
        return core.project(xs + eps01 * sign.repeat(reps, *[1] * (xs.dim() - 1)), xs, eps01)

    return AttackSpec("random_sign", fn, "random", "X + eps s, s = sign(N(0, I)) fixed per image")


def along_direction(model: nn.Module, method: str, x: torch.Tensor, y: torch.Tensor,
                    adv_eps: Sequence[float], generator: torch.Generator | None, *,
                    fuse: bool = True, options: Mapping[str, Any] | None = None) -> Stacked:
    """``x`` moved by each epsilon of ``adv_eps`` (non-empty) along ``method``, on the
    attack x epsilon engine: ``.x_adv`` is ``[len(adv_eps) * b, ...]``, epsilon-major,
    from one attack call for all epsilons (``.y``: the labels, stacked alike).

    N18 figures 4-6 follow one direction per image as epsilon grows: the gradient
    sign for step_ll / step_FGSM (on the fused inference network when ``fuse``), and
    for "random sign" one random sign vector per image drawn once and scaled, so the
    curve is not a fresh draw at every epsilon.  For an iterative attack
    (:data:`ATTACK_METHODS`) there is no single direction: each row is the attack's own
    adversarial image at that row's eps (each eps a separate run within the one call,
    with its own step count and projection), run with ``options`` (its keyword
    options, checked by the caller) and drawing from ``generator``.
    """
    attack = _one_sign(x, generator) if method == "random_sign" else method
    (part,) = attack_eps(model, x, y, adv_eps, attack, options=options, generator=generator,
                         fuse=fuse)
    return part
