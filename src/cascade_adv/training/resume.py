"""Resuming a run folder with the config it was trained with.

A run folder records the config of its latest session (``config.yaml``).  A resume
whose config differs in anything that changes what is computed (learning rate,
seed, momentum, schedule, architecture, data, adversarial training...) is refused
with one line naming every differing key; otherwise the weights would silently
come from two recipes while ``config.yaml`` claimed one.

Allowed, because the weights of the resumed run equal those of a run started with
the new values (docs/reliability.md, class 5):

- ``optim.iterations``, to any count not below the checkpoint's iteration: the
  learning rate depends on the milestones only, so a longer (or shorter) schedule
  continues the same run;
- ``log_every``, ``checkpoint.every``, ``checkpoint.keep``: what is logged and kept;
- ``name`` and ``paper``: labels;
- ``device``, ``speed.*``, ``distributed.backend``: where and how fast it runs (the
  same computation; bit-exact only on the same device and precision, as with
  ``device: auto`` on another machine);
- ``data.root`` and ``data.download`` for the datasets whose files are checked
  against published md5 sums (digits, mnist, cifar10): where the same files are;
- ``init_from``, when it names the same weights (same weights hash) as the ones
  the run started from: the starting run was moved.

Every allowed change is recorded in the run's ``history.jsonl`` (one JSON line per
resume that changed something: the iteration it took effect at and each key's old
and new value), and ``config.yaml`` becomes the new config.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cascade_adv.errors import ConfigError, echo
from cascade_adv.training.config import TrainConfig, load_config

#: The run's record of the changes made when it was resumed.
HISTORY_FILE = "history.jsonl"
#: Keys that may differ in any way on resume (see the module docstring).
FREE = frozenset({"log_every", "checkpoint.every", "checkpoint.keep", "name", "paper", "device",
                  "distributed.backend"})
FREE_SECTIONS = ("speed.",)
#: Datasets whose files are checked against published md5 sums: their root may move.
VERIFIED_DATASETS = frozenset({"digits", "mnist", "cifar10"})


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"dotted.key": value}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{"optim.lr": (0.1, 0.05), ...}``: every key whose resolved value differs."""
    a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _allowed(key: str, old: Any, new: Any, cfg: TrainConfig, done: int,
             same_init: bool) -> bool:
    if key in FREE or key.startswith(FREE_SECTIONS):
        return True
    if key == "optim.iterations":
        return new >= done
    if key in ("data.root", "data.download"):
        return cfg.data.dataset in VERIFIED_DATASETS
    if key == "init_from":
        return same_init
    return False


def check_resume(run_dir: Path, cfg: TrainConfig, done: int, *,
                 same_init=lambda: False) -> dict[str, tuple[Any, Any]]:
    """The changes from ``run_dir``'s recorded config to ``cfg`` for a resume from its
    checkpoint at iteration ``done``: all allowed (returned, to record), else
    :class:`ConfigError` naming each refused key as ``key old -> new``.
    ``same_init()`` tells whether ``cfg.init_from`` names the weights the run started
    from.  A run without a recorded config (written before it was recorded) has
    nothing to compare."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    changes = config_changes(load_config(path), cfg)
    refused = {k: v for k, v in changes.items()
               if not _allowed(k, *v, cfg, done, "init_from" in changes and same_init())}
    if not refused:
        return changes
    listed = ", ".join(f"{k} {echo(a, 40)} -> {echo(b, 40)}" for k, (a, b) in refused.items())
    fix = (f"optim.iterations must be at least {done}, where the run is; "
           if "optim.iterations" in refused else "")
    raise ConfigError(
        f"run folder {run_dir} was trained to iteration {done} with another config ({listed}); "
        f"{fix}resume it with its own config ({path}), or train into a new --out folder "
        "(only more iterations, logging, checkpointing, device and speed options may change "
        "on resume)")


def record_changes(run_dir: Path, iteration: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append one line for a resume at ``iteration`` that changed ``changes`` to the
    run's ``history.jsonl``."""
    if not changes:
        return
    record = {"iteration": iteration,
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "changed": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}}
    with open(Path(run_dir) / HISTORY_FILE, "a") as fh:
        fh.write(json.dumps(record) + "\n")
