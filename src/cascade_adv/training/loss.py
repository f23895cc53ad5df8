"""The loss of N18 section 3.1 (and K17 section 3 as its special case)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``pivot`` is accepted as the paper's name for ``pivot_detached``.
DISTANCES = (None, "pivot_detached", "pivot_released", "bidirectional")
NORMS = ("l2", "l1")


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half types computed in float32; float32 and float64 kept as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def embedding_distance(e_adv: torch.Tensor, e_clean: torch.Tensor, distance: str,
                       norm: str = "l2", normalize: bool = False) -> torch.Tensor:
    """``sum_i L_dist(E_adv_i, E_i)`` over the k pairs (N18 section 3.2).

    ``norm="l2"`` is N = 2 as in the authors' code, ``0.5 * sum(diff ** 2)``;
    ``norm="l1"`` is N = 1, ``sum |diff|``.  ``distance`` says where the gradient flows:

    - ``"pivot_detached"`` (``"pivot"``): the paper's pivot (section 3.2, footnote 4):
      the clean embedding is a constant, so only the adversarial embedding moves;
    - ``"pivot_released"``: the pivot of the authors' released code (``model.py``,
      ``_get_pivot_loss``), which overwrites its non-trainable ``pivot`` variable with
      the live clean embeddings and never stops their gradient: the same loss and
      gradients as ``"bidirectional"``;
    - ``"bidirectional"``: both embeddings move.

    ``normalize=True`` divides both embeddings of each pair by the (population)
    variance of the clean one over its entries, as the released code's
    ``normalize_embedding`` option does; with the detached pivot that variance is a
    constant too.  See docs/fidelity.md.
    """
    if distance in ("pivot", "pivot_detached"):
        e_clean = e_clean.detach()
    elif distance not in ("pivot_released", "bidirectional"):
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    e_adv, e_clean = _at_least_float32(e_adv), _at_least_float32(e_clean)
    if normalize:
        var = e_clean.var(dim=1, unbiased=False, keepdim=True)
        e_adv, e_clean = e_adv / var, e_clean / var
    diff = e_adv - e_clean
    if norm == "l2":
        return 0.5 * diff.pow(2).sum()
    if norm == "l1":
        return diff.abs().sum()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def unified_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    lam: float = 0.3,
    lam2: float = 1e-4,
    distance: str | None = "pivot_detached",
    norm: str = "l2",
    embeddings: torch.Tensor | None = None,
    normaliser: float | None = None,
    normalize_embedding: bool = False,
) -> torch.Tensor:
    """N18 section 3.1::

        Loss = (sum_{i in CLEAN} L(X_i | y_i) + lam * sum_{i in ADV} L(X_adv_i | y_i))
               / ((m - k) + lam * k)
               + lam2 * sum_{i=1..k} L_dist(E_adv_i, E_i)

    ``logits`` holds the batch of m rows: rows ``0..k-1`` are the adversarial
    examples, rows ``k..2k-1`` their clean twins and the rest clean (N18's
    ``append`` layout).  The embedding E is the logits (the layer right before the
    softmax) unless ``embeddings`` (one row per batch row) gives another layer.
    ``distance=None`` gives K17's loss with no embedding term, for
    ``replace`` batches whose adversarial rows ``0..k-1`` have no twins; the other
    distances and ``normalize_embedding`` are those of :func:`embedding_distance`.
    Half-precision logits are computed in float32; float64 stays float64.

    ``normaliser`` replaces ``(m - k) + lam * k`` of these rows: under DDP each rank
    passes its share of the batch (its k adversarial rows, their twins, its clean
    rows) with the normaliser of the *global* batch, so the ranks' losses sum to the
    single-process loss (see :mod:`cascade_adv.training.distributed`).
    """
    m = logits.shape[0]
    if not 0 <= k <= m:
        raise ValueError(f"k={k} must lie in [0, m={m}]")
    ce = F.cross_entropy(_at_least_float32(logits), labels, reduction="none")
    if normaliser is None:
        normaliser = (m - k) + lam * k
    loss = (ce[k:].sum() + lam * ce[:k].sum()) / normaliser
    if distance is None or k == 0:
        return loss
    if 2 * k > m:
        raise ValueError(f"the distance term needs k={k} clean twins after the adversarial rows; "
                         f"m={m} < 2k")
    e = logits if embeddings is None else embeddings
    return loss + lam2 * embedding_distance(e[:k], e[k:2 * k], distance, norm,
                                            normalize_embedding)
