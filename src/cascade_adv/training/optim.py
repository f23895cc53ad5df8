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
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cascade_adv.training.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` over ``params`` (the learning rate is set per
    iteration by the training loop from ``optim.lr`` and its milestones)."""
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.rmsprop_alpha, eps=o.rmsprop_eps,
                                   momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
