"""Attacks of K17 (section 2.2, appendix A) and N18 (section 2), plus PGD.

>>> from cascade_adv import attacks
>>> attacks.names()                                     # every registered name
>>> x_adv = attacks.run("iter_fgsm", model, x, y, eps=16)

``model`` is any ``nn.Module`` mapping images in [0, 1] to logits; ``eps`` is in
pixel units of [0, 255], a number or a tensor of shape ``[N]``.
"""

from cascade_adv.attacks.core import inference_mode, iterative_steps, project, validate_eps
from cascade_adv.attacks.registry import AttackSpec, get, names, register, run

__all__ = [
    "AttackSpec",
    "get",
    "inference_mode",
    "iterative_steps",
    "names",
    "project",
    "register",
    "run",
    "validate_eps",
]
