"""``cascade-adv quickstart``: the papers' central result on the bundled digits, in minutes.

Trains, from one shared pre-trained start (N18 section 3.3), the four models of
N18's story on scikit-learn's 8x8 digits with a ResNet-8 (the 6n+2 family with n = 1,
sized for a CPU minute; the paper recipes use ResNet-20):

- Baseline (standard training);
- Kurakin's (K17 Algorithm 1: k of m replaced by step_ll images, weighted loss);
- Pivot (N18 Algorithm 1: adversarial images appended, pivot similarity loss);
- Pivot + cascade (N18 section 6: half of the k images are saved iter_FGSM images
  crafted beforehand from the trained Pivot network);

then evaluates each white-box under step_ll, step_FGSM, iter_ll and iter_FGSM and
black-box under iter_FGSM images crafted on a separately trained (undefended)
source network, prints one table, upserts it into the results store and states
what it shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cascade_adv.data import load_dataset
from cascade_adv.evaluation import (
    craft_adversarial_set,
    evaluate_transfer,
    evaluate_whitebox,
    load_adversarial_set,
    prepare_images,
)
from cascade_adv.models import weights_hash
from cascade_adv.reporting import ResultTable
from cascade_adv.results.store import store_rows
from cascade_adv.training import load_config, train

EPS = (16.0, 32.0)         # test epsilons (pixel units), as N18 table 1 (MNIST)
MAX_E = 32.0               # training max_e, as N18 for MNIST
ATTACKS = ("step_ll", "step_fgsm", "iter_ll", "iter_fgsm")
CASCADE_EPS = (8, 16, 24, 32)

COMMON = ["data.dataset=digits", "model.depth=8", "optim.batch_size=128", "log_every=25",
          "checkpoint.every=100"]
SCHEDULE = ["optim.iterations=150", "optim.lr=0.05", "optim.lr_milestones=[100, 125]"]
ADVERSARIAL = ["adversarial.k=64", "adversarial.lam=0.3", "adversarial.lam2=1e-4",
               "adversarial.method=step_ll", f"adversarial.max_e={MAX_E}",
               "adversarial.eps_sampler=n18"]


@dataclass
class QuickstartResult:
    table: ResultTable
    summary: str
    seconds: float
    figure: Path | None = None


def _configs(out: Path) -> dict[str, list[str]]:
    pre = f"init_from={out / 'pretrain'}"
    return {
        "pretrain": COMMON + ["name=pretrain", "optim.iterations=100", "optim.lr_milestones=[]"],
        "source": COMMON + ["name=source", "seed=1", "optim.iterations=250",
                            "optim.lr_milestones=[150, 200]"],
        "baseline": COMMON + SCHEDULE + ["name=baseline", pre],
        "kurakin": COMMON + SCHEDULE + ADVERSARIAL + [
            "name=kurakin", pre, "adversarial.mode=replace", "adversarial.distance=null"],
        "pivot": COMMON + SCHEDULE + ADVERSARIAL + [
            "name=pivot", pre, "adversarial.mode=append", "adversarial.distance=pivot"],
        "pivot_cascade": COMMON + SCHEDULE + ADVERSARIAL + [
            "name=pivot_cascade", pre, "adversarial.mode=append", "adversarial.distance=pivot",
            (f"adversarial.sources=[{{kind: current, count: 32, method: step_ll}}, "
            f"{{kind: saved, count: 32, paths: ['{out / 'saved_pivot_iter_fgsm_train'}']}}]")],
    }


LABELS = {"baseline": "Baseline", "kurakin": "Kurakin's", "pivot": "Pivot",
          "pivot_cascade": "Pivot + cascade"}


def quickstart(out: str | Path = "runs/quickstart", results: str | Path | None =
               "results/results.db", progress: bool = True, device: str = "auto") -> QuickstartResult:
    """Train the four models, evaluate them, store and return the table."""
    t0 = time.perf_counter()
    out = Path(out)
    cfgs = {name: load_config(None, over + [f"device={device}"])
            for name, over in _configs(out).items()}
    models = {}
    for name in ("pretrain", "source", "baseline", "kurakin", "pivot"):
        models[name] = train(cfgs[name], out / name, progress=progress).model
    train_set = load_dataset("digits", "train")
    test_set = load_dataset("digits", "test")
    saved = out / "saved_pivot_iter_fgsm_train"
    pivot = models["pivot"]
    craft_adversarial_set(pivot, train_set, saved, "iter_fgsm", CASCADE_EPS,
                          prepare=lambda x: prepare_images(pivot, x), source_name="Pivot",
                          source_hash=weights_hash(out / "pivot"), progress=progress)
    models["pivot_cascade"] = train(cfgs["pivot_cascade"], out / "pivot_cascade",
                                    progress=progress).model
    source = models["source"]
    black = out / "source_iter_fgsm_test"
    craft_adversarial_set(source, test_set, black, "iter_fgsm", EPS,
                          prepare=lambda x: prepare_images(source, x), source_name="source",
                          source_hash=weights_hash(out / "source"), progress=progress)
    black_set = load_adversarial_set(black, dataset="digits", split="test")

    table = ResultTable()
    for name, label in LABELS.items():
        model, digest = models[name], weights_hash(out / name)
        table.extend(evaluate_whitebox(model, test_set, ATTACKS, EPS, model_name=label,
                                       model_hash=digest, progress=False))
        table.extend(evaluate_transfer(model, black_set, model_name=label, model_hash=digest))
    figure = plot_accuracy(table, out / "accuracy_vs_eps.png")
    if results is not None:  # a store that cannot be written keeps the rows in a file
        store_rows(results, table)
    return QuickstartResult(table, summarize(table), time.perf_counter() - t0, figure)


def plot_accuracy(table: ResultTable, path: Path) -> Path | None:
    """White-box accuracy vs eps of the four models, ours solid; N18 table 1's MNIST
    rows dashed for the three it has (its attacks and epsilons are the quickstart's)."""
    from cascade_adv.reporting.reproduction import Cell, compare, plot_ours_vs_paper
    from cascade_adv.results.published import get_table

    white = table.filter(source="whitebox", metric="top1")
    cells = compare(white, get_table("n18-table1"),
                    lambda m: m if m in ("Baseline", "Kurakin's", "Pivot") else None)
    cells += [Cell(r["model"], "whitebox", r["attack"], r["eps"], "top1", None, r["value"],
                   r["model"], r["n"]) for r in white if r["model"] == "Pivot + cascade"]
    return plot_ours_vs_paper(cells, path, title="quickstart (digits) vs N18 table 1 (MNIST)")


def summarize(table: ResultTable) -> str:
    """Two sentences on what the table shows, read off its numbers."""
    hi = EPS[-1]

    def v(model, attack, source=None):
        return table.value(model, attack, hi if attack != "clean" else 0.0, source=source)

    base_ll, kur_ll, piv_ll = (v(m, "step_ll") for m in ("Baseline", "Kurakin's", "Pivot"))
    piv_it, cas_it = v("Pivot", "iter_fgsm"), v("Pivot + cascade", "iter_fgsm")
    piv_bb = v("Pivot", "iter_fgsm", "source")
    cas_bb = v("Pivot + cascade", "iter_fgsm", "source")
    base_bb = v("Baseline", "iter_fgsm", "source")
    first = (f"Under the one-step step_ll attack at eps {hi:g}, adversarial training lifts accuracy "
             f"from {base_ll:.1f}% (Baseline) to {kur_ll:.1f}% (Kurakin's) and {piv_ll:.1f}% "
             "(Pivot), as in N18 table 1.")
    second = (f"Against the iterative iter_FGSM attack at eps {hi:g}, white-box accuracy is "
              f"{piv_it:.1f}% for Pivot and {cas_it:.1f}% with cascade training, and black-box "
              f"accuracy (images from a separately trained network) is {base_bb:.1f}% / "
              f"{piv_bb:.1f}% / {cas_bb:.1f}% for Baseline / Pivot / Pivot + cascade.")
    return f"{first} {second}"
