"""What one step of a reproduction recipe does: train, craft, evaluate, audit, analyse.

Each function takes the step's parameters (JSON values, part of its cache key), the
step's folder, the outputs of the steps it depends on and the run's
:class:`Runtime`, and returns its own outputs (JSON values). They are plain
functions so that a worker process can run them (``--jobs``); the report step is in
:mod:`cascade_adv.experiments.reproduce`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cascade_adv.io import LOCK_FILE, atomic_write_text, folder_lock


@dataclass(frozen=True)
class Step:
    """One node of a recipe's graph: ``kind`` (a key of :data:`RUNNERS`, or ``report``),
    JSON ``params`` and the names of the steps it needs."""

    name: str
    kind: str
    params: dict[str, Any] = field(hash=False)
    deps: tuple[str, ...] = ()
    #: what the cache key hashes instead of ``params`` (training: the resolved config
    #: without its paths)
    identity: Any = None


@dataclass(frozen=True)
class Runtime:
    """Where and how steps run; none of it is part of a step's cache key."""

    configs: str
    data_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = False
    #: shards of each audit step, each in a single-thread worker (``--audit-jobs``)
    audit_jobs: int = 1
    #: Square on the compiled model in the audit steps (``--audit-compile``)
    audit_compile: bool = False


def _device(rt: Runtime):
    from cascade_adv.training import resolve_device

    return resolve_device(rt.device)


def _model(out: dict[str, Any], device):
    """The trained model of a train step's outputs, loaded and checked finite."""
    from cascade_adv.training.runs import LoadedModel

    return LoadedModel(out["weights"], device, name=out["name"])


def _split(models: list, rt: Runtime, limit: int | None, device, split: str = "test"):
    """The first ``limit`` images of the split the models were trained for, checked
    against them (:func:`cascade_adv.training.runs.load_split`)."""
    from cascade_adv.training.runs import load_split

    return load_split(models, None, rt.data_dir, split, limit, device)


def _write_rows(folder: Path, rows) -> dict[str, Any]:
    atomic_write_text(folder / "rows.json", json.dumps(list(rows), indent=0))
    return {"rows": str(folder / "rows.json")}


def train_step(p: dict, folder: Path, deps: dict[str, dict], rt: Runtime) -> dict:
    """Train (or resume) one configuration into ``folder/run``."""
    from cascade_adv.models import WEIGHTS_FILE
    from cascade_adv.training import load_config, train

    overrides = list(p["overrides"])
    if p.get("init"):
        overrides.append(f"init_from={Path(deps[p['init']]['run'])}")
    if p.get("saved"):
        sources = [dict(s) for s in p["sources"]]
        for s in sources:
            if s["kind"] == "saved":
                s["paths"] = [deps[p["saved"]]["set"]]
        overrides.append(f"adversarial.sources={json.dumps(sources)}")
    if rt.data_dir:
        overrides.append(f"data.root={rt.data_dir}")
    cfg = load_config(Path(rt.configs) / p["config"], overrides)
    run = folder / "run"
    train(cfg, run, resume=True, progress=rt.progress)
    m = _model({"weights": str(run / "final" / WEIGHTS_FILE), "name": cfg.name}, "cpu")
    return {"run": str(run), "weights": str(m.weights), "name": m.name, "hash": m.hash,
            "dataset": m.dataset, "init": m.init, "experiment": p.get("experiment", ""),
            "params": p.get("params", {})}


def craft_step(p: dict, folder: Path, deps: dict[str, dict], rt: Runtime) -> dict:
    """Save adversarial images of the training split (cascade training, N18 section 6)."""
    from cascade_adv.evaluation import craft_adversarial_set, prepare_images

    device = _device(rt)
    src = _model(deps[p["model"]], device)
    data = _split([src], rt, p.get("images"), device, split="train")
    path = craft_adversarial_set(
        src.model, data, folder / "set", p["attack"], p["eps"],
        prepare=lambda x: prepare_images(src.model, x), source_name=src.name,
        source_hash=src.hash, progress=rt.progress, overwrite=True)
    return {"set": str(path)}


def whitebox_step(p: dict, folder: Path, deps: dict[str, dict], rt: Runtime) -> dict:
    """White-box accuracy of one model (N18 tables 1, 2, 5, 6; K17 tables 1-3, 5, 7)."""
    from cascade_adv.evaluation import evaluate_whitebox

    device = _device(rt)
    m = _model(deps[p["model"]], device)
    rows = evaluate_whitebox(m.model, _split([m], rt, p.get("test_images"), device),
                             p["attacks"], p["eps"], model_name=m.name, model_hash=m.hash,
                             progress=rt.progress)
    return _write_rows(folder, rows)


def transfer_step(p: dict, folder: Path, deps: dict[str, dict], rt: Runtime) -> dict:
    """Black-box rows for every source -> target pair (N18 tables 4, 7-10; K17 4, 6)."""
    from cascade_adv.evaluation import transfer_matrix

    device = _device(rt)
    models = {n: _model(deps[n], device) for n in dict.fromkeys([*p["sources"], *p["targets"]])}
    data = _split(list(models.values()), rt, p.get("test_images"), device)
    rows = transfer_matrix({models[s].name: models[s].model for s in p["sources"]},
                           {models[t].name: models[t].model for t in p["targets"]}, data,
                           p["attacks"], p["eps"], hashes={m.name: m.hash for m in models.values()},
                           sets_dir=folder / "sets", progress=rt.progress)
    return _write_rows(folder, rows)


def analysis_step(p: dict, folder: Path, deps: dict[str, dict], rt: Runtime) -> dict:
    """N18 figures 4 and 6 (``softmax``) and 5 (``gradcorr``) for one model."""
    from cascade_adv.analysis import gradient_correlation, softmax_argument

    fn = {"softmax": softmax_argument, "gradcorr": gradient_correlation}[p["analysis"]]
    device = _device(rt)
    m = _model(deps[p["model"]], device)
    extra = {"methods": p["methods"]} if "methods" in p else {}
    rows = fn(m.model, _split([m], rt, None, device), eps=p["eps"], model_name=m.name,
              model_hash=m.hash, **extra)
    return _write_rows(folder, rows)


#: The file of an audit step's diagnostics (:func:`audit_step`).
CHECKS_FILE = "checks.json"


def audit_step(p: dict, folder: Path, deps: dict[str, dict], rt: Runtime) -> dict:
    """The robustness audit of one model (``reproduce --audit``): ``audit()``
    (:mod:`cascade_adv.evaluation.audit`) of version ``p["version"]`` with its
    gradient-masking diagnostics at ``p["eps"]`` on the first ``p["test_images"]`` test
    images (those of the model's white-box step), with the model of ``p["twin"]`` (a
    train step) as the undefended twin of the transfer diagnostic. Writes its rows
    (``rows.json``, docs/results-schema.md, "Robustness audit") and the diagnostics (``checks.json``: one object per check with its name,
    verdict, numbers, meaning, origin and what it was measured on). The audit's
    progress is kept in the step folder after every attack x batch, so an interrupted
    step resumes where it stopped (:func:`execute` keeps the folder); with
    ``rt.audit_jobs`` > 1 the images are split into that many shards, each audited by a
    single-thread worker with the same outcomes (each shard resumes on its own);
    ``rt.audit_compile``: Square queries the compiled model (``AuditRun(compile=True)``)."""
    import functools
    from dataclasses import asdict

    from cascade_adv.evaluation import AuditRecord, AuditRun, audit, prepare_images

    device = _device(rt)
    m = _model(deps[p["model"]], device)
    twin = _model(deps[p["twin"]], device) if p.get("twin") else None
    data = _split([m], rt, p.get("test_images"), device)
    result = audit(m.model, data.images, data.labels, p["eps"], version=p["version"],
                   prepare=functools.partial(prepare_images, m.model),
                   diagnostics={"twin": twin.model, "twin_name": twin.name} if twin else True,
                   run=AuditRun(progress=rt.progress, compile=rt.audit_compile,
                                workers=min(rt.audit_jobs, len(data.labels))),
                   record=AuditRecord(store=folder / "audit.db", save_rows=False,
                                      model_name=m.name, model_hash=m.hash,
                                      dataset=data.name, split=data.split))
    atomic_write_text(folder / CHECKS_FILE,
                      json.dumps([asdict(c) for c in result.checks], indent=1))
    return {**_write_rows(folder, result.table()), "checks": str(folder / CHECKS_FILE),
            "model": m.name}


RUNNERS = {"train": train_step, "craft": craft_step, "whitebox": whitebox_step,
           "transfer": transfer_step, "analysis": analysis_step, "audit": audit_step}
#: The step kinds that resume an interrupted run from what their folder holds
#: (training from its checkpoints, the audit from its progress file); the others
#: start over from an empty folder.
RESUMES = ("train", "audit")


def read_done(folder: Path, key: str) -> dict | None:
    """``folder/done.json`` when it records the step of ``key`` as finished."""
    try:
        done = json.loads((Path(folder) / "done.json").read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("key") == key else None


def execute(step: Step, key: str, folder: str, deps: dict[str, dict], rt: Runtime) -> dict:
    """Run one step (in this process or a worker) with ``rt.threads`` torch threads and
    mark it finished (``done.json``); returns its outputs.

    Under the folder's lock: a step another invocation finished meanwhile is not run
    again; an unfinished step starts over from an empty folder, except those of
    :data:`RESUMES` (training resumes from its checkpoints, an audit from its progress).
    """
    import torch

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with folder_lock(path):
        done = read_done(path, key)
        if done is not None:
            return done["outputs"]
        if step.kind not in RESUMES:
            for child in path.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        before = torch.get_num_threads()
        if rt.threads:
            torch.set_num_threads(rt.threads)
        start = time.perf_counter()
        try:
            outputs = RUNNERS[step.kind](step.params, path, deps, rt)
        finally:
            torch.set_num_threads(before)
        atomic_write_text(path / "done.json", json.dumps(
            {"key": key, "name": step.name, "kind": step.kind,
             "seconds": time.perf_counter() - start, "outputs": outputs,
             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1))
        return outputs
