"""Black-box evaluation: accuracy of a target model on a saved adversarial set.

N18 section 2: "Black box attack is performed by testing accuracy on a target
network with the adversarial images crafted from a source network different from
the target network."  The images are crafted once on the source
(``craft_adversarial_set`` / ``cascade-adv attack``) and every target is then
evaluated on the saved set; its rows carry the source's name in ``source``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cascade_adv.attacks import inference_mode
from cascade_adv.data import to_float
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.advset import AdversarialSet
from cascade_adv.evaluation.whitebox import count_correct
from cascade_adv.reporting.tables import ResultTable


def evaluate_transfer(
    model: nn.Module,
    adv: AdversarialSet,
    *,
    model_name: str = "model",
    model_hash: str = "",
    batch_size: int = 500,
    topk: Sequence[int] = (1, 5),
) -> ResultTable:
    """Top-k accuracy of ``model`` on the saved set ``adv``, one row per epsilon."""
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
    device = next(model.parameters()).device
    n_classes = None
    eps_values = sorted({float(e) for e in np.unique(adv.eps)})
    counts = {e: None for e in eps_values}
    totals = {e: 0 for e in eps_values}
    with inference_mode(model), torch.no_grad():
        for start in range(0, len(adv), batch_size):
            rows = np.arange(start, min(start + batch_size, len(adv)))
            images, labels, eps = adv.select(rows)
            logits = model(to_float(images.to(device)))
            n_classes = logits.shape[1]
            labels = labels.to(device)
            for e in eps_values:
                mask = eps == e  # on the host: no device sync to test or count it
                n = int(mask.sum())
                if n == 0:
                    continue
                mask = mask.to(device)
                hits = count_correct(logits[mask], labels[mask], topk)
                counts[e] = hits if counts[e] is None else counts[e] + hits
                totals[e] += n
    rows_out = []
    for e in eps_values:
        for k, hits in zip(topk, counts[e].tolist()):
            if k != 1 and k >= n_classes:
                continue
            rows_out.append({
                "model": model_name, "model_hash": model_hash, "dataset": adv.meta["dataset"],
                "split": adv.meta["split"], "attack": adv.meta["method"], "eps": e,
                "source": adv.meta["source"], "metric": f"top{k}",
                "value": 100.0 * hits / totals[e], "n": totals[e],
            })
    return ResultTable(rows_out)
