"""The optimizer named by ``optim.name``: N18's SGD or K17's RMSProp.

- ``sgd`` (N18 section 3.3): momentum 0.9, weight decay 1e-4 (``optim.momentum``,
  ``optim.weight_decay``).
- ``rmsprop`` (K17 section 4: "Similar to Szegedy et al. (2015) we used RMSProp
  optimizer for training. We used a learning rate of 0.045"): K17 gives only the
  learning rate; the other settings are those of the TF-slim Inception v3 recipe
  K17 builds on: decay 0.9 (``optim.rmsprop_alpha``), epsilon 1.0
  (``optim.rmsprop_eps``), momentum 0.9 (``optim.momentum``), and weight decay as
  an L2 term on the gradient (``optim.weight_decay``; TF-slim used 4e-5).  It is
  ``torch.optim.RMSprop``, which differs from TensorFlow's RMSProp in two details
  that matter only early in training: TensorFlow starts the mean square at 1 (torch
  at 0) and adds epsilon inside the square root (torch outside).  With epsilon = 1
  both keep the first steps no larger than ``lr`` times the gradient.

``optim.weight_decay_scope: weights`` decays only the weights of convolution and linear
layers, as the N18 authors' code does (``variable_with_weight_decay`` in ``layers.py``
adds ``wd * l2_loss(w)`` for those weights alone, whose gradient is ``wd * w``, the
same step as the optimizers' ``weight_decay``); biases and BatchNorm scale / shift get
none.  ``all`` decays every parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from cascade_adv.training.config import TrainConfig


def decay_groups(model: nn.Module, weight_decay: float, scope: str) -> list[dict]:
    """Parameter groups: with ``scope == "weights"`` the convolution and linear weights
    with ``weight_decay`` and every other parameter without; else one group."""
    if scope == "all":
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    if scope != "weights":
        raise ValueError(f"weight_decay_scope must be all or weights, got {scope!r}")
    decayed = {id(m.weight) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` over ``model``'s parameters (the learning rate is
    set per iteration by the training loop from ``optim.lr`` and its milestones)."""
    o = cfg.optim
    groups = decay_groups(model, o.weight_decay, o.weight_decay_scope)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=o.lr, alpha=o.rmsprop_alpha, eps=o.rmsprop_eps,
                                   momentum=o.momentum)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
