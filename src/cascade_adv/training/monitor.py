"""Catastrophic-overfitting monitor (config section ``monitor``; off by default).

One-step adversarial training can collapse within a few iterations: accuracy under
the one-step attack it trains on stays high while accuracy under PGD falls to near
zero (Wong et al. 2020, "catastrophic overfitting").  Every ``monitor.every``
iterations :class:`OverfitMonitor` measures, on a fixed batch of ``monitor.images``
training images picked once from the run's seed:

* PGD accuracy: the ``pgd`` training method (:mod:`cascade_adv.training.methods`,
  the primitive the registry's ``pgd`` attack runs), ``monitor.steps`` steps of
  2.5 eps / steps from a uniform random start at ``monitor.eps`` pixels;
* clean accuracy of the same images;

with the model in inference mode (BatchNorm statistics untouched) and a generator of
its own, seeded from the run's seed and the iteration, so that switching the monitor
on changes neither the training generator's draws nor the weights.  A *collapse* is a
PGD accuracy more than ``monitor.drop`` points below its best while the clean
accuracy stays within ``monitor.clean_hold`` points of its best; the loop reports the
first measurement of each collapse (one line, when progress is shown) and logs it.
The weights of the best PGD accuracy are kept in ``best_pgd/`` (early stopping), and
the monitor's state travels in the checkpoints, so a resumed run keeps its best.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.data import ImageDataset, center_crop, to_float
from cascade_adv.errors import ConfigError
from cascade_adv.io import read_json_lines
from cascade_adv.models import ModelConfig
from cascade_adv.training.checkpoint import BEST_PGD, write_model_folder
from cascade_adv.training.config import TrainConfig
from cascade_adv.training.methods import METHODS, MethodOptions

#: Images per forward / attack pass of a measurement.
CHUNK = 128
#: What ``best_pgd/`` holds beside the weights: the measurement that put them there.
MONITOR_FILE = "monitor.json"


@dataclass
class Reading:
    """One measurement: accuracies in percent, and what the monitor made of it."""

    iteration: int
    pgd: float
    clean: float
    best: bool = False  # a new best PGD accuracy: its weights go to ``best_pgd/``
    collapse: bool = False  # the first measurement of a collapse

    def metrics(self) -> dict:
        """The fields it adds to the iteration's ``metrics.jsonl`` line."""
        out = {"monitor_pgd_acc": self.pgd, "monitor_clean_acc": self.clean}
        return {**out, "monitor_collapse": True} if self.collapse else out


class OverfitMonitor:
    """The ``monitor`` section of ``cfg`` on ``train_set``: ``pick`` chooses the fixed
    images (once, here), ``draws(iteration)`` gives the PGD generator of a measurement.
    Raises :class:`ConfigError` for more images than the split holds."""

    def __init__(self, cfg: TrainConfig, train_set: ImageDataset, model_cfg: ModelConfig,
                 device: torch.device, pick: torch.Generator,
                 draws: Callable[[int], torch.Generator]):
        sec = cfg.monitor
        n = len(train_set)
        if sec.images > n:
            raise ConfigError(f"monitor.images={sec.images} is more than the {n} images of the "
                              f"{train_set.name} training split; lower monitor.images")
        self.every, self.drop, self.hold, self.draws = sec.every, sec.drop, sec.clean_hold, draws
        self.eps = float(sec.eps or cfg.adversarial.max_e)
        self.options = MethodOptions(steps=sec.steps)
        idx = torch.randperm(n, generator=pick, device=pick.device)[:sec.images]
        images = train_set.images[idx.to(train_set.images.device)]
        if images.shape[-1] != model_cfg.input_size:  # prepared as at test time
            images = center_crop(images, model_cfg.input_size)
        self.x = to_float(images).to(device)
        self.y = train_set.labels[idx.to(train_set.labels.device)].to(device)
        self.best_pgd = self.best_clean = -math.inf
        self.best_iteration, self.collapsed = 0, False

    def due(self, done: int) -> bool:
        """Whether the model after ``done`` iterations is measured."""
        return done % self.every == 0

    def measure(self, model: nn.Module, iteration: int) -> tuple[float, float]:
        """PGD and clean accuracy (percent) of the fixed images, one host read-back."""
        generator = self.draws(iteration)
        hits = torch.zeros(2, device=self.x.device)
        for start in range(0, self.x.shape[0], CHUNK):
            x, y = self.x[start:start + CHUNK], self.y[start:start + CHUNK]
            eps = torch.full((x.shape[0],), self.eps, device=x.device)
            with attacks.trusted():
                x_adv = METHODS["pgd"](model, x, y, eps, generator, self.options)
            for i, images in enumerate((x_adv, x)):
                hits[i] += (attacks.predict(model, images).argmax(1) == y).sum()
        pgd, clean = (hits * 100 / self.x.shape[0]).tolist()
        return pgd, clean

    def update(self, iteration: int, pgd: float, clean: float) -> Reading:
        """Fold one measurement into the best values: a new best, or a collapse (PGD
        ``drop`` points below its best, clean within ``clean_hold`` of its best)."""
        self.best_clean = max(self.best_clean, clean)
        collapse = pgd < self.best_pgd - self.drop and clean >= self.best_clean - self.hold
        reading = Reading(iteration, pgd, clean, best=pgd > self.best_pgd,
                          collapse=collapse and not self.collapsed)
        self.collapsed = collapse
        if reading.best:
            self.best_pgd, self.best_iteration = pgd, iteration
        return reading

    def check(self, model: nn.Module, iteration: int) -> Reading:
        """Measure the model after ``iteration`` iterations and update."""
        return self.update(iteration, *self.measure(model, iteration))

    def message(self, reading: Reading, run_dir: Path) -> str:
        """The one line that reports a collapse."""
        return (f"catastrophic overfitting at iteration {reading.iteration}: PGD accuracy "
                f"{reading.pgd:.1f} % on the monitor's images, {self.best_pgd - reading.pgd:.1f}"
                f" points below its best ({self.best_pgd:.1f} % at iteration "
                f"{self.best_iteration}), clean {reading.clean:.1f} % (best "
                f"{self.best_clean:.1f} %); the weights of iteration {self.best_iteration} "
                f"are kept in {run_dir / BEST_PGD}")

    def save_best(self, run_dir: Path, model: nn.Module, reading: Reading, init: str) -> None:
        """Write ``best_pgd/`` (weights and :data:`MONITOR_FILE`), atomically."""
        record = {"iteration": reading.iteration, "monitor_pgd_acc": reading.pgd,
                  "monitor_clean_acc": reading.clean, "eps": self.eps,
                  "steps": self.options.steps}
        write_model_folder(Path(run_dir) / BEST_PGD, model,
                           {MONITOR_FILE: (json.dumps(record, indent=1) + "\n").encode()},
                           init=init, what="the monitor's best weights")

    def state(self) -> dict:
        """Plain values for the checkpoint, so a resumed run keeps its best."""
        return {"best_pgd": self.best_pgd, "best_clean": self.best_clean,
                "best_iteration": self.best_iteration, "collapsed": self.collapsed}

    def restore(self, state: dict | None) -> None:
        if state:
            self.best_pgd, self.best_clean = float(state["best_pgd"]), float(state["best_clean"])
            self.best_iteration = int(state["best_iteration"])
            self.collapsed = bool(state["collapsed"])


def describe_monitor(run_dir: Path | str) -> str:
    """One line on the monitor's readings of a run (its ``metrics.jsonl``): the eps and
    steps of its PGD (from ``best_pgd/``), the best PGD accuracy and its iteration, the
    last reading, and the iterations of each collapse, or ``"no collapse"``.  ``""``
    when the run has no reading (the monitor off)."""
    run_dir = Path(run_dir)
    readings = [r for r in read_json_lines(run_dir / "metrics.jsonl") if "monitor_pgd_acc" in r]
    if not readings:
        return ""
    best = max(readings, key=lambda r: r["monitor_pgd_acc"])
    last = readings[-1]
    try:
        kept = json.loads((run_dir / BEST_PGD / MONITOR_FILE).read_text())
        attack = f"PGD at eps {kept['eps']:g} ({kept['steps']} steps)"
    except (OSError, ValueError, KeyError, TypeError):
        attack = "PGD"
    collapses = [str(r["iteration"]) for r in readings if r.get("monitor_collapse")]
    verdict = (f"collapse at iteration {', '.join(collapses)}; the weights of iteration "
               f"{best['iteration']} are kept in {BEST_PGD}/" if collapses else "no collapse")
    return (f"{attack}, {len(readings)} readings: best {best['monitor_pgd_acc']:.1f} % at "
            f"iteration {best['iteration']}, last {last['monitor_pgd_acc']:.1f} % at "
            f"iteration {last['iteration']} (clean {last['monitor_clean_acc']:.1f} %); "
            f"{verdict}")

