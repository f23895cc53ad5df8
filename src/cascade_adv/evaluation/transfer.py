"""Black-box transfer matrices: every source x every target, for attacks x epsilons.

N18 tables 4 and 7-10 (accuracy of a target under images crafted on a source);
K17 tables 4 and 6 and figures 2 and 5 (transfer rate and error rate).  Each
source attacks the test images once per attack (all epsilons in one saved set);
every target is then evaluated on that set, the source itself included (the
diagonal: its white-box accuracy on the same images).

>>> table = transfer_matrix({"B2": b2, "K2": k2}, {"B1": b1, "K1": k1}, test_set,
...                         ["step_fgsm", "iter_fgsm"], [16])

Saved sets can be kept in ``sets_dir`` and are reused when they were made by the
same weights (hash), attack, epsilons and images; otherwise they are crafted
again.  Which pairs share an initialisation is a property of the models, kept in
the results store (:meth:`~cascade_adv.evaluation.ResultsStore.register_model`),
so the tables can separate the two cases as N18 appendix B does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from cascade_adv import attacks as attack_registry
from cascade_adv.data import ImageDataset
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.advset import craft_adversarial_set
from cascade_adv.evaluation.blackbox import check_pair, evaluate_transfer
from cascade_adv.evaluation.whitebox import prepare_images
from cascade_adv.results.advsets import AdversarialSet, check_epsilon_ball, load_adversarial_set
from cascade_adv.results.tables import ResultTable


def _reusable(path: Path, source_hash: str, attack: str, eps: list[float],
              dataset: ImageDataset) -> AdversarialSet | None:
    if not source_hash or not (path / "meta.json").is_file():
        return None
    try:
        adv = load_adversarial_set(path, dataset=dataset.name, split=dataset.split)
    except CascadeAdvError:
        return None
    try:  # a set edited in place (hash recomputed) is crafted again
        check_epsilon_ball(adv, dataset.images, dataset.labels, path=path)
    except CascadeAdvError:
        return None
    meta = adv.meta
    same = (meta.get("source_hash") == source_hash and meta.get("method") == attack
            and meta.get("source") == path.name.rsplit("-", 1)[0]
            and [float(e) for e in meta["eps"]] == eps
            and meta["count"] == len(dataset) * len(eps)
            and adv.source_adv_rank is not None)
    return adv if same else None


def transfer_matrix(
    sources: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    dataset: ImageDataset,
    attacks: Sequence[str],
    eps: Sequence[float],
    *,
    hashes: Mapping[str, str] | None = None,
    sets_dir: str | os.PathLike | None = None,
    batch_size: int = 500,
    topk: Sequence[int] = (1, 5),
    seed: int = 0,
    progress: bool = True,
) -> ResultTable:
    """Black-box rows (accuracy, error rate, transfer rate) for every source -> target.

    ``sources`` and ``targets`` map names to models (the same model may appear in
    both).  ``hashes`` maps names to weights hashes, recorded in the rows and used
    to reuse saved sets in ``sets_dir``.  Every pair is checked before any work
    starts: source and target must take the same images.
    """
    if not sources or not targets:
        raise CascadeAdvError("give at least one source and one target model")
    names = list(attacks)
    for name in names:
        attack_registry.get(name)
    eps_values = [e for e in attack_registry.validate_eps(list(eps)) if e != 0.0]
    if not eps_values:
        raise CascadeAdvError("give at least one non-zero epsilon, e.g. --eps 16")
    if len(dataset) == 0:
        raise CascadeAdvError("the test images are empty; check --limit")
    for s_name, s_model in sources.items():
        for t_name, t_model in targets.items():
            check_pair(s_name, s_model, t_name, t_model)
    hashes = dict(hashes or {})

    table = ResultTable()
    with tempfile.TemporaryDirectory(prefix="cascade-adv-transfer-") as scratch:
        root = Path(sets_dir) if sets_dir is not None else Path(scratch)
        for s_name, s_model in sources.items():
            for attack in names:
                path = root / f"{s_name}-{attack}"
                adv = _reusable(path, hashes.get(s_name, ""), attack, eps_values, dataset)
                if adv is None:
                    device = next(s_model.parameters()).device
                    craft_adversarial_set(
                        s_model, dataset.to(device), path, attack, eps_values,
                        prepare=lambda u, m=s_model: prepare_images(m, u),
                        batch_size=batch_size, source_name=s_name,
                        source_hash=hashes.get(s_name, ""), seed=seed, progress=progress,
                    )
                    adv = load_adversarial_set(path, dataset=dataset.name, split=dataset.split)
                for t_name, t_model in targets.items():
                    table.extend(evaluate_transfer(
                        t_model, adv, model_name=t_name, model_hash=hashes.get(t_name, ""),
                        batch_size=batch_size, topk=topk,
                    ))
                del adv  # release the memory map before the scratch folder goes
    return table
