"""Black-box evaluation: a target model on a saved adversarial set.

N18 section 2: "Black box attack is performed by testing accuracy on a target
network with the adversarial images crafted from a source network different from
the target network."  The images are crafted once on the source
(``craft_adversarial_set``) and every target is then evaluated on the saved set.
Three measures come out of one pass (rows with ``source`` = the source's name):

* ``top{k}`` - black-box **accuracy**, as N18 tables 4 and 7-10 report;
* ``error_top{k}`` - K17's **error rate** (appendix C): "we randomly generated
  1000 adversarial images using the source model and then classified them using
  the target model", i.e. the share of all candidates the target misclassifies;
* ``transfer_top{k}`` - K17's **transfer rate** (section 4.4): "Among 1000 images
  we picked only misclassified adversarial example for the source model (i.e.
  clean classified correctly, adversarial misclassified) and measured what
  fraction of them were misclassified by the target model."  Its ``n`` is the
  number of such images; it needs the source's ranks saved with the set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cascade_adv.attacks import inference_mode, model_device
from cascade_adv.data import to_float
from cascade_adv.errors import CascadeAdvError, InvalidArgument, ModelFault
from cascade_adv.evaluation.engine import nonfinite_rows
from cascade_adv.evaluation.whitebox import true_class_rank
from cascade_adv.results.advsets import AdversarialSet
from cascade_adv.results.tables import ResultTable


def rates_from_ranks(
    target_rank: np.ndarray,
    k: int,
    source_clean_rank: np.ndarray | None = None,
    source_adv_rank: np.ndarray | None = None,
) -> dict[str, tuple[float, int]]:
    """Accuracy, error rate and transfer rate (percent, with their ``n``) at top-``k``.

    Ranks count the classes scoring above the true one (0 = top-1 correct).  The
    transfer rate is left out when the source ranks are unknown or no image was
    classified correctly clean and wrongly adversarial by the source.
    """
    n = int(target_rank.shape[0])
    target_wrong = target_rank >= k
    wrong = int(target_wrong.sum())
    out = {f"top{k}": (100.0 * (n - wrong) / n, n), f"error_top{k}": (100.0 * wrong / n, n)}
    if source_clean_rank is not None and source_adv_rank is not None:
        candidates = (source_clean_rank < k) & (source_adv_rank >= k)
        m = int(candidates.sum())
        if m:
            out[f"transfer_top{k}"] = (100.0 * int((candidates & target_wrong).sum()) / m, m)
    return out


def check_pair(source_name: str, source: nn.Module | None, target_name: str,
               target: nn.Module) -> None:
    """Refuse a source / target pair that cannot share images: other dataset, input
    size, channels or classes (models without a cascade-adv ``config`` pass), with
    :class:`~cascade_adv.errors.InvalidArgument` (one line)."""
    a, b = getattr(source, "config", None), getattr(target, "config", None)
    if a is None or b is None:
        return
    if a.dataset and b.dataset and a.dataset != b.dataset:
        raise InvalidArgument(
            f"source {source_name} was trained on {a.dataset}, target {target_name} on "
            f"{b.dataset}; black-box pairs must share a dataset"
        )
    for field, what in (("input_size", "input size"), ("in_channels", "input channels"),
                        ("num_classes", "number of classes")):
        if getattr(a, field) != getattr(b, field):
            raise InvalidArgument(
                f"source {source_name} has {what} {getattr(a, field)}, target {target_name} "
                f"{getattr(b, field)}; black-box pairs must take the same images"
            )


def evaluate_transfer(
    model: nn.Module,
    adv: AdversarialSet,
    *,
    model_name: str = "model",
    model_hash: str = "",
    batch_size: int = 500,
    topk: Sequence[int] = (1, 5),
    eps: Sequence[float] | None = None,
) -> ResultTable:
    """Accuracy, error rate and transfer rate of ``model`` on the saved set ``adv``,
    one row per epsilon x measure x k (only the epsilons in ``eps`` when given)."""
    cfg = getattr(model, "config", None)
    shape = list(adv.images.shape[1:])
    if cfg is not None and shape != [cfg.in_channels, cfg.input_size, cfg.input_size]:
        raise CascadeAdvError(
            f"the adversarial set from {adv.meta['source']} holds {shape} images, the target "
            f"{model_name} takes {[cfg.in_channels, cfg.input_size, cfg.input_size]}; "
            "craft the set for a model of the same input size"
        )
    if cfg is not None and cfg.dataset not in (None, adv.meta["dataset"]):
        raise CascadeAdvError(
            f"target {model_name} was trained on {cfg.dataset}, the adversarial set was made "
            f"from {adv.meta['dataset']}; use a set crafted from {cfg.dataset}"
        )
    device = model_device(model)
    ranks = np.empty(len(adv), np.int64)
    n_classes = 0
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)
    with inference_mode(model), torch.no_grad():
        for start in range(0, len(adv), batch_size):
            rows = np.arange(start, min(start + batch_size, len(adv)))
            images, labels, _ = adv.select(rows)
            logits = model(to_float(images.to(device)))
            n_classes = logits.shape[1]
            nonfinite += nonfinite_rows(logits)
            ranks[rows] = true_class_rank(logits, labels.to(device)).cpu().numpy()
    if int(nonfinite):
        raise ModelFault(f"target {model_name} gives non-finite outputs (inf / NaN) on "
                         f"{int(nonfinite)} of {len(adv)} images; nothing is reported: evaluate "
                         "an earlier checkpoint or retrain it")
    wanted = None if eps is None else {float(e) for e in eps}
    rows_out = []
    for e in sorted({float(e) for e in np.unique(adv.eps)}):
        if wanted is not None and e not in wanted:
            continue
        mask = adv.eps == e
        src = [None if r is None else np.asarray(r)[mask]
               for r in (adv.source_clean_rank, adv.source_adv_rank)]
        for k in topk:
            if k != 1 and k >= n_classes:
                continue
            for metric, (value, n) in rates_from_ranks(ranks[mask], k, *src).items():
                rows_out.append({
                    "model": model_name, "model_hash": model_hash,
                    "dataset": adv.meta["dataset"], "split": adv.meta["split"],
                    "attack": adv.meta["method"], "eps": e, "source": adv.meta["source"],
                    "metric": metric, "value": value, "n": n,
                })
    return ResultTable(rows_out)
