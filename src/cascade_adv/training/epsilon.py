"""Random per-example epsilon for adversarial training (pixel units).

K17 section 3: "we recommend choosing eps randomly, independently for each
training example ... magnitudes drawn from a truncated normal distribution defined
in interval [0, 16] with underlying normal distribution N(0, 8)" -
``|tf.truncated_normal(mean=0, stddev=8)|``, which re-draws values beyond two
standard deviations.  N18 section 3.1 (and the authors' code):
``clip(|N(0, max_e / 2)|, 0, max_e)``.
"""

from __future__ import annotations

import torch

from cascade_adv.attacks.core import truncated_normal

SAMPLERS = ("n18", "k17", "fixed", "uniform")


def sample_eps(kind: str, n: int, max_e: float, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` epsilons in [0, max_e] (pixel units), float32 on ``device``.

    - ``n18``: ``clip(|N(0, max_e/2)|, 0, max_e)`` (mass max_e beyond 2 sigma);
    - ``k17``: ``|N(0, max_e/2)|`` truncated to 2 sigma (= max_e), as TensorFlow's
      ``truncated_normal``;
    - ``fixed``: ``max_e`` for every example;
    - ``uniform``: ``U(0, max_e)``.
    """
    sigma = max_e / 2.0
    if kind == "n18":
        z = torch.randn(n, generator=generator, device=device)
        return (z.abs() * sigma).clamp(0.0, max_e)
    if kind == "k17":
        ref = torch.empty(n, device=device)
        std = torch.full((n,), sigma, device=device)
        return truncated_normal((n,), std, 2 * std, ref, generator).abs()
    if kind == "fixed":
        return torch.full((n,), float(max_e), device=device)
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device) * max_e
    raise ValueError(f"eps sampler must be one of {SAMPLERS}, got {kind!r}")
