"""Attacks of K17 (section 2.2, appendix A) and N18 (section 2), plus PGD.

>>> from cascade_adv import attacks
>>> attacks.names()                                     # every registered name
>>> x_adv = attacks.run("iter_fgsm", model, x, y, eps=16)

``model`` is any ``nn.Module`` mapping images in [0, 1] to logits; ``eps`` is in
pixel units of [0, 255], a number or a tensor of shape ``[N]``.  Gradient passes run
on the model's inference network with BatchNorm folded into the convolutions;
``with attacks.fusion(False):`` runs the model as it is, and ``with
attacks.layout(True | False):`` pins that network's memory layout (by default the one
measured faster here, :mod:`cascade_adv.models.layout`); ``with attacks.compiled():``
runs the forward-only attacks (Square) on the model compiled with inductor's freezing
(:mod:`cascade_adv.models.frozen`).  Every option of every attack
has a type and a range (:mod:`cascade_adv.attacks.options`), checked before any work.
"""

from cascade_adv.attacks.core import (
    attack_network,
    compiled,
    fusion,
    inference_mode,
    iterative_steps,
    layout,
    model_device,
    predict,
    project,
    query_network,
    trusted,
    validate_eps,
)
from cascade_adv.attacks.options import OptionSpec, check_options
from cascade_adv.attacks.registry import AttackSpec, get, names, register, run

__all__ = [
    "AttackSpec",
    "OptionSpec",
    "attack_network",
    "check_options",
    "compiled",
    "fusion",
    "get",
    "inference_mode",
    "iterative_steps",
    "layout",
    "model_device",
    "names",
    "predict",
    "project",
    "query_network",
    "register",
    "run",
    "trusted",
    "validate_eps",
]
