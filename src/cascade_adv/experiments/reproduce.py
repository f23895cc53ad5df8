"""``cascade-adv reproduce``: a paper table or figure as a cached graph of steps.

A recipe (:mod:`cascade_adv.experiments.recipes`) is a list of :class:`Step`\\ s -
shared pre-training, each configuration, crafting, white-box and black-box
evaluation, analyses, with ``--audit`` the robustness audits - and a report. Every
step has a cache key: the hash of its kind, its parameters (for training, the whole
resolved config), the keys of the steps it depends on and :data:`CACHE_VERSION`.
Its outputs live in ``OUT/steps/NAME-KEY/`` and it is finished when ``done.json``
there holds that key, so

* a repeated run skips finished steps, and a changed config re-runs the steps that
  depend on it and nothing else (their keys change);
* an interrupted run resumes: training continues from its last checkpoint and an
  audit from its progress file (the step folder is the same), other steps start over;
* ``jobs > 1`` runs independent steps in worker processes; each step seeds itself,
  so the results do not depend on the order.

``OUT/cache.json`` names the dataset the cache was made for and the cache format;
an ``OUT`` holding a cache of another dataset, of another format, or files that are
not a cache is refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade_adv.data.loading import dataset_inputs
from cascade_adv.errors import InvalidArgument, echo, one_line
from cascade_adv.executors import RayExecutor, check_executor, local_pool, pool_in_use
from cascade_adv.experiments.steps import Runtime, Step, execute, read_done
from cascade_adv.io import atomic_write_text, check_disjoint, check_lock_file, check_writable_dir

#: Bumped when what a step computes changes for the same parameters; part of every key.
CACHE_VERSION = 1
#: Format of ``cache.json`` and the step folders.
CACHE_FORMAT = 1
CACHE_FILE = "cache.json"


@dataclass
class StepRecord:
    step: Step
    key: str
    folder: Path
    status: str = "todo"          # cached | todo | done | failed | blocked | not run
    seconds: float | None = None
    outputs: dict[str, Any] | None = None
    estimate: float | None = None
    measured: bool = False        # the estimate comes from steps this cache ran
    error: str = ""


def step_keys(steps: Sequence[Step]) -> dict[str, str]:
    """The cache key of every step (its dependencies first)."""
    by_name = {s.name: s for s in steps}
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            s = by_name[name]
            blob = json.dumps({"v": CACHE_VERSION, "kind": s.kind,
                               "params": s.params if s.identity is None else s.identity,
                               "deps": {d: key(d) for d in s.deps}}, sort_keys=True)
            keys[name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return keys[name]

    for s in steps:
        key(s.name)
    return keys


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("_")[:80]


class Cache:
    """The step folders under ``out`` and the manifest that says whose they are."""

    def __init__(self, out: str | Path, dataset: str):
        self.out = Path(out)
        self.dataset = dataset

    def check(self) -> None:
        """Refuse (one line, nothing written) a folder that is not this dataset's cache."""
        out = self.out
        check_writable_dir(out, "--out")
        manifest = out / CACHE_FILE
        if manifest.is_file():
            try:
                info = json.loads(manifest.read_text())
                fmt, dataset = info["format"], info["dataset"]
            except (ValueError, KeyError, TypeError):
                raise InvalidArgument(f"--out {out}: {CACHE_FILE} is damaged; give another "
                                      "--out folder") from None
            if fmt != CACHE_FORMAT:
                raise InvalidArgument(
                    f"--out {out} holds a cache of format {fmt} (written by cascade-adv "
                    f"{info.get('version', '?')}); this version reads format {CACHE_FORMAT}: "
                    "give another --out folder")
            if dataset != self.dataset:
                raise InvalidArgument(
                    f"--out {out} holds the cache of {dataset} recipes "
                    f"({', '.join(info.get('recipes', [])) or 'none'}), not {self.dataset}; "
                    "give another --out folder")
        elif out.exists() and any(out.iterdir()):
            raise InvalidArgument(f"--out {out} is not empty and holds no reproduce cache; "
                                  "give a new or empty folder")

    def open(self, recipe: str) -> None:
        from cascade_adv import __version__

        self.out.mkdir(parents=True, exist_ok=True)
        manifest = self.out / CACHE_FILE
        info = {"format": CACHE_FORMAT, "dataset": self.dataset, "version": __version__,
                "recipes": []}
        if manifest.is_file():
            info = json.loads(manifest.read_text())
        if recipe not in info["recipes"]:
            info["recipes"] = [*info["recipes"], recipe]
        atomic_write_text(manifest, json.dumps(info, indent=1))

    def folder(self, step: Step, key: str) -> Path:
        return self.out / "steps" / f"{_slug(step.name)}-{key}"


def plan(steps: Sequence[Step], cache: Cache) -> list[StepRecord]:
    """Every step with its key, folder and whether it is already finished (never the
    report, which is rebuilt from the cached rows).  The folder of a step to run whose
    ``.lock`` is not a lock file (a symlink, a folder...) is refused here, before any
    work (:func:`~cascade_adv.io.check_lock_file`)."""
    keys = step_keys(steps)
    records = []
    for s in steps:
        folder = cache.folder(s, keys[s.name])
        # the report is rebuilt every time (seconds): it follows the report code and
        # --tolerance without touching any cached rows
        done = None if s.kind == "report" else read_done(folder, keys[s.name])
        rec = StepRecord(s, keys[s.name], folder)
        if done is not None:
            rec.status, rec.outputs, rec.seconds = "cached", done["outputs"], done["seconds"]
        elif s.kind != "report":
            check_lock_file(folder, "step folder")
        records.append(rec)
    return records


Event = Callable[[str, StepRecord], None]

#: The status of a step that ``reproduce(report_only=True)`` leaves for a later run.
NOT_RUN = "not run"


def run_steps(records: list[StepRecord], rt: Runtime, *, jobs: int = 1,
              report: Callable[[StepRecord, dict[str, dict]], dict] | None = None,
              on_event: Event | None = None, executor: Any = None) -> None:
    """Run every unfinished step once its dependencies are done; ``jobs`` at a time,
    each time the first ready one in the records' order (so with one job a seed's chain,
    its evaluation included, ends before the next seed's starts).

    A step that fails (e.g. a diverging training run) is recorded as ``failed`` with
    its one-line error; the steps that need it are ``blocked``, the others go on, and
    ``report`` steps (run in this process) still run with what finished, so the
    report shows the missing cells. An interrupt (Ctrl-C, SIGTERM of training) stops
    everything; finished steps stay cached. ``executor`` (anything with
    ``submit(fn, *args) -> Future`` and ``shutdown()``, e.g. :class:`RayExecutor`)
    replaces the local worker processes.
    """
    by_name = {r.step.name: r for r in records}
    pending = [r for r in records if r.status not in ("cached", NOT_RUN)]
    note = on_event or (lambda what, rec: None)
    running: dict[Future, StepRecord] = {}
    pool = executor if executor is not None else (local_pool(jobs) if jobs > 1 else None)
    settled = ("cached", "done", "failed", "blocked", NOT_RUN)

    def state(rec: StepRecord) -> str:
        """ready | wait | blocked"""
        deps = [by_name[d].status for d in rec.step.deps]
        if rec.step.kind == "report":
            return "ready" if all(d in settled for d in deps) else "wait"
        if any(d in ("failed", "blocked") for d in deps):
            return "blocked"
        return "ready" if all(d in ("cached", "done") for d in deps) else "wait"

    with pool_in_use(pool) if pool is not None else nullcontext():
        while pending or running:
            for rec in list(pending):
                if state(rec) == "blocked":
                    pending.remove(rec)
                    rec.status = "blocked"
                    note("blocked", rec)
            ready = [r for r in pending if state(r) == "ready"]
            if not ready and not running:
                if pending:
                    raise RuntimeError(f"steps with unmet dependencies: "
                                       f"{[r.step.name for r in pending]}")
                break
            for rec in ready:
                if pool is not None and len(running) >= jobs:
                    break
                pending.remove(rec)
                deps = {d: by_name[d].outputs for d in rec.step.deps}
                note("start", rec)
                rec.seconds = time.perf_counter()
                if rec.step.kind == "report" or pool is None:
                    try:
                        rec.outputs = (report(rec, deps) if rec.step.kind == "report"
                                       else execute(rec.step, rec.key, str(rec.folder), deps,
                                                    rt))
                    except Exception as exc:
                        _failed(rec, exc, note)
                        if rec.step.kind == "report" or _interrupt(exc):
                            raise
                        break
                    _finished(rec, note)
                    # one step at a time here: the next is the first ready one in the
                    # records' order, so a chain's evaluation comes before the next chain
                    break
                else:
                    running[pool.submit(execute, rec.step, rec.key, str(rec.folder), deps,
                                        rt)] = rec
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    rec = running.pop(fut)
                    try:
                        rec.outputs = fut.result()
                    except Exception as exc:
                        _failed(rec, exc, note)
                        if _interrupt(exc):
                            raise
                        continue
                    _finished(rec, note)


def _interrupt(exc: BaseException) -> bool:
    from cascade_adv.errors import TrainingInterrupted

    return isinstance(exc, TrainingInterrupted)


def _failed(rec: StepRecord, exc: BaseException, note: Event) -> None:
    rec.seconds = time.perf_counter() - rec.seconds
    rec.status = "failed"
    rec.error = one_line(exc) or type(exc).__name__
    note("failed", rec)


def _finished(rec: StepRecord, note: Event) -> None:
    rec.seconds = time.perf_counter() - rec.seconds
    rec.status = "done"
    note("done", rec)


# --- the command ------------------------------------------------------------------------------

@dataclass
class ReproduceResult:
    recipe: str
    records: list[StepRecord]
    report: Path | None = None
    comparison: dict[str, Any] | None = None
    seconds: float = 0.0


def default_configs() -> Path:
    """The repository's ``configs/`` (beside ``src/``), else ``./configs``."""
    here = Path(__file__).resolve().parents[3] / "configs"
    return here if here.is_dir() else Path("configs")


#: The most seeds ``--seeds`` takes (a count or a list): every seed trains the whole
#: chain of every configuration again.
MAX_SEEDS = 100
#: The largest seed ``--seeds`` lists: seed J >= 1 is drawn from ``SeedSequence((seed,
#: J))`` (:func:`~cascade_adv.experiments.recipes.chain_seed`) and names the models
#: (``-seedJ``); 2^31 - 1 keeps it a 32-bit signed integer everywhere.
MAX_SEED_INDEX = 2**31 - 1
#: The bounds of ``--seeds``, as the help and the errors state them.
SEEDS_BOUNDS = f"at most {MAX_SEEDS} seeds, each 0 .. {MAX_SEED_INDEX} (2^31 - 1)"
#: The longest list of seeds a report folder's name spells out (:func:`_seeds_label`).
MAX_LABEL_SEEDS = 60


def seed_indices(seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as the list of chain seeds to train: a count N (seeds 0 .. N-1) or the
    seeds themselves (seed 0: the configs' own; others: :func:`recipes.chain_seed`), within
    :data:`SEEDS_BOUNDS`; anything else raises :class:`InvalidArgument` (a ValueError)."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, Sequence)) or isinstance(
            seeds, str):
        raise InvalidArgument(f"--seeds must be a count or a list of seeds, got {echo(seeds)}")
    if isinstance(seeds, int):
        if not 1 <= seeds <= MAX_SEEDS:
            raise InvalidArgument(f"--seeds must be at least 1 and at most {MAX_SEEDS}, got "
                                  f"{echo(seeds)}; 3 trains seeds 0, 1 and 2 of every "
                                  "configuration")
        return list(range(seeds))
    out = list(seeds)
    if len(out) > MAX_SEEDS:
        raise InvalidArgument(f"--seeds lists {len(out)} seeds; give {SEEDS_BOUNDS}")
    if not out or any(isinstance(j, bool) or not isinstance(j, int)
                      or not 0 <= j <= MAX_SEED_INDEX for j in out):
        raise InvalidArgument(f"--seeds lists seeds as integers 0 .. {MAX_SEED_INDEX} "
                              f"(2^31 - 1), got {echo(out)}; give {SEEDS_BOUNDS}")
    dup = next((j for j, n in Counter(out).items() if n > 1), None)
    if dup is not None:
        raise InvalidArgument(f"--seeds lists seed {dup} twice; give each seed once "
                              f"(e.g. {','.join(map(str, dict.fromkeys(out)))})")
    return out


def _seeds_label(seeds: Sequence[int], seeds_for: Sequence[str]) -> str:
    """The report folder's suffix for seeds other than the configs' own (``-seeds3``,
    ``-seeds0+4``, ``-seeds3-for-baseline``), so that runs with other seeds keep their
    own report.  A list longer than :data:`MAX_LABEL_SEEDS` characters is named by its
    count and a hash (``-seeds40-h1a2b3c4d5e``): a folder name has at most 255 bytes."""
    if list(seeds) == [0]:
        return ""
    count = list(seeds) == list(range(len(seeds)))
    listed = "+".join(map(str, seeds))
    if len(listed) > MAX_LABEL_SEEDS:
        listed = f"{len(seeds)}-h{hashlib.sha256(listed.encode()).hexdigest()[:10]}"
    return ("-seeds" + (str(len(seeds)) if count else listed)
            + (f"-for-{'+'.join(seeds_for)}" if seeds_for else ""))


def _check_options(recipe, dataset: str | None, scale: float, test_images: int | None,
                   jobs: int, tolerance: float, executor: str, gpus_per_step: float
                   ) -> tuple[str, str | None]:
    if not (isinstance(scale, (int, float)) and 0 < scale <= 1):
        raise InvalidArgument(f"--scale must be in (0, 1], got {scale}; 0.1 runs a tenth "
                              "of every schedule")
    if test_images is not None and test_images < 1:
        raise InvalidArgument(f"--test-images must be positive, got {test_images}")
    if jobs < 1:
        raise InvalidArgument(f"--jobs must be at least 1, got {jobs}")
    if not 0 <= gpus_per_step <= 1:
        raise InvalidArgument(f"--gpus-per-step must be in [0, 1], got {gpus_per_step}")
    check_executor(executor)
    if not tolerance >= 0:
        raise InvalidArgument(f"--tolerance must be >= 0 points, got {tolerance}")
    dataset = dataset or recipe.datasets[0]
    if dataset == "digits" and "mnist" in recipe.datasets:
        return "mnist", "digits"   # the bundled digits in place of MNIST: quick checks
    if dataset not in recipe.datasets:
        raise InvalidArgument(f"{recipe.name} runs on {' or '.join(recipe.datasets)}, not "
                              f"{dataset}; pass --dataset {recipe.datasets[0]}")
    return dataset, None


def _check_modes(audit: str | None, audit_jobs: int, audit_compile: bool,
                 report_only: bool, dry_run: bool) -> None:
    """The options that only make sense together (the audit's) or apart."""
    if isinstance(audit_jobs, bool) or not isinstance(audit_jobs, int) or audit_jobs < 1:
        raise InvalidArgument(f"--audit-jobs must be a positive integer, got {audit_jobs!r}")
    if audit_jobs > 1 and audit is None:
        raise InvalidArgument("--audit-jobs shards the audit steps; add --audit (or drop "
                              "--audit-jobs)")
    if audit_compile and audit is None:
        raise InvalidArgument("--audit-compile is for the audit steps; add --audit (or drop "
                              "--audit-compile)")
    if report_only and dry_run:
        raise InvalidArgument("--dry-run lists the steps and --report-only reports the "
                              "finished ones; give one of them")


_LAYOUT = {"mnist": "DIR/mnist/ with the four MNIST .gz files",
           "cifar10": "DIR/cifar10/cifar-10-batches-bin/ (or cifar-10-binary.tar.gz there)",
           "digits": "nothing (bundled with scikit-learn)",
           "imagenet": "DIR/imagenet/{train,val}/<class>/<images>"}


def _load_splits(dataset: str, data_dir: str | None, download: bool = False) -> None:
    """Both splits of ``dataset`` load (raises :class:`DatasetError`); an ImageNet-style
    folder is only looked for (decoding it all would take long)."""
    from cascade_adv.data import load_dataset
    from cascade_adv.data.loading import resolve_data_root
    from cascade_adv.errors import DatasetError

    if dataset == "imagenet":
        root = resolve_data_root(data_dir) / "imagenet"
        for split in ("train", "val"):
            if not any(p.is_dir() for p in (root / split).glob("*")):
                raise DatasetError(f"no class folders in {root / split}")
        return
    for split in ("train", "test"):
        load_dataset(dataset, split, root=data_dir, download=download)


def data_available(dataset: str, data_dir: str | None) -> bool:
    from cascade_adv.errors import DatasetError

    try:
        _load_splits(dataset, data_dir)
    except DatasetError:
        return False
    return True


def _check_data(dataset: str, data_dir: str | None, download: bool) -> None:
    """One line naming the folder layout and the download option when data is absent."""
    from cascade_adv.errors import DatasetError

    try:
        _load_splits(dataset, data_dir, download)
    except DatasetError as exc:
        fetch = ("ImageNet cannot be downloaded: bring the folder" if dataset == "imagenet"
                 else "or pass --download to fetch it")
        raise InvalidArgument(
            f"{dataset} is needed and not usable under --data-dir "
            f"{data_dir or '$CASCADE_ADV_DATA or ./data'}: expected {_LAYOUT[dataset]}, "
            f"{fetch} ({one_line(exc)})") from None


def _leave_unfinished(records: list[StepRecord], out: str | Path, label: str) -> None:
    """``--report-only``: mark every unfinished step but the report :data:`NOT_RUN`;
    refuse (one line) a cache with none of the recipe's steps finished."""
    if not any(r.status == "cached" for r in records):
        raise InvalidArgument(f"--out {out} holds no finished step of {label}: nothing to "
                              "report yet; run it without --report-only first")
    for r in records:
        if r.status != "cached" and r.step.kind != "report":
            r.status = NOT_RUN


def reproduce(name: str, out: str | Path, *, data_dir: str | None = None,
              dataset: str | None = None, scale: float = 1.0, test_images: int | None = None,
              jobs: int = 1, threads: int | None = None, only: str | Sequence[str] = (),
              dry_run: bool = False, device: str = "auto", configs: str | Path | None = None,
              tolerance: float = 1.5, download: bool = False, progress: bool = False,
              seeds: int | Sequence[int] = 1, seeds_for: str | Sequence[str] = (),
              audit: str | None = None, executor: str = "local", ray_address: str | None = None,
              gpus_per_step: float = 0.0, audit_jobs: int = 1, audit_compile: bool = False,
              report_only: bool = False, on_event: Event | None = None) -> ReproduceResult:
    """Run recipe ``name`` (:mod:`cascade_adv.experiments.recipes`) with its cache in
    ``out``; returns every step's record and, unless ``dry_run``, the report folder.

    ``scale`` shortens every schedule (iterations, milestones, pre-training, delay) by
    the same factor, ``test_images`` limits evaluation; both go into the model names
    (``-x0.1``), the rows' ``n`` and the report. ``seeds`` (a count N, or the seeds)
    trains every configuration's chain with each seed (names ``-seedJ`` for J >= 1;
    cached per seed, so raising N trains only the new ones); the report gives mean ±
    std over them; with ``seeds_for`` (strings as in ``only``) only the models whose
    name contains one of them train the seeds after the first. ``audit`` (an audit
    version: ``"standard"``, AutoAttack's, or ``"quick"`` for a CPU; any version that
    :func:`~cascade_adv.evaluation.audit.resolve_version` takes) audits every model of
    the recipe's white-box tables with its diagnostics at the table's epsilons (and
    the recipe's ``audit_eps``) on the same test images, and the report adds "Under
    the audit" (a recipe without a white-box table is refused). ``dataset="digits"``
    runs an MNIST recipe on the bundled digits. Bad options, a foreign ``out`` and absent data
    raise one-line errors before anything is written. ``executor="ray"`` runs the
    steps as Ray tasks (:class:`RayExecutor`), ``jobs`` at a time. ``audit_jobs`` splits
    each audit step's images into that many shards, each audited by its own single-thread
    worker process with the outcomes of one process (:class:`~cascade_adv.evaluation.audit.Workers`).
    ``audit_compile`` runs the audit steps' Square on the compiled model
    (:class:`~cascade_adv.evaluation.audit.AuditRun`'s ``compile``; checked first).
    ``report_only`` writes the report from the steps finished so far and runs no other
    step (a long run's interim report, also while that run goes on; the data and the
    device are not needed): the others are ``"not run"`` (:data:`NOT_RUN`), listed in
    the report, and their cells and seeds are missing from it. An ``out`` with no
    finished step of the recipe is refused (one line).
    """
    from cascade_adv.experiments.cost import estimate
    from cascade_adv.experiments.recipes import Builder, build_steps, get_recipe, name_list
    from cascade_adv.speed import compile_support
    from cascade_adv.training import resolve_device

    start = time.perf_counter()
    recipe = get_recipe(name)
    base, substitute = _check_options(recipe, dataset, scale, test_images, jobs, tolerance,
                                      executor, gpus_per_step)
    seeds = seed_indices(seeds)
    _check_modes(audit, audit_jobs, audit_compile, report_only, dry_run)
    used = substitute or base
    configs = Path(configs) if configs else default_configs()
    check_disjoint([("--out", out)], [("--configs", configs),
                                      *dataset_inputs(used, data_dir)])
    builder = Builder(configs, base, scale=float(scale), test_images=test_images,
                      substitute=substitute)
    only, seeds_for = name_list(only), name_list(seeds_for)
    steps = build_steps(recipe, builder, only, seeds, audit, seeds_for)
    label = (f"{recipe.name}{builder.suffix}" + (f"-n{test_images}" if test_images else "")
             + (f"-only-{'+'.join(only)}" if only else "") + _seeds_label(seeds, seeds_for))
    steps.append(Step(f"report/{label}", "report",
                      {"recipe": recipe.name, "suffix": builder.suffix, "scale": scale,
                       "test_images": test_images, "dataset": used, "tolerance": tolerance,
                       "only": list(only), "seeds": seeds, "seeds_for": list(seeds_for),
                       "audit": audit},
                      tuple(s.name for s in steps)))
    cache = Cache(out, used)
    cache.check()
    if not report_only:      # the report reads the cache alone
        _check_data(used, data_dir, download)
        resolve_device(device)   # an unavailable device: one line before any work
        why = audit_compile and compile_support(resolve_device(device).type)
        if why:                  # torch.compile cannot work here: one line naming the fix
            raise InvalidArgument(f"--audit-compile needs torch.compile, unsupported here: "
                                  f"{why}; drop --audit-compile")
    records = plan(steps, cache)
    if report_only:
        _leave_unfinished(records, out, label)
    rt = Runtime(str(configs), data_dir, device, threads, progress, audit_jobs,
                 bool(audit_compile))
    result = ReproduceResult(recipe.name, records)
    if dry_run:
        estimate(records, rt, out=cache.out)
        return result
    pool = (RayExecutor(ray_address, gpus_per_step, cpus=threads or 1)
            if executor == "ray" and not report_only else None)
    cache.open(recipe.name)

    def report(rec: StepRecord, deps: dict[str, dict]) -> dict:
        from cascade_adv.experiments.report import write_report

        return write_report(recipe, rec, deps, by_name)

    by_name = {r.step.name: r for r in records}
    run_steps(records, rt, jobs=1 if report_only else jobs, report=report, on_event=on_event,
              executor=pool)
    final = by_name[f"report/{label}"].outputs or {}
    result.report = Path(final["folder"]) if "folder" in final else None
    result.comparison = final.get("comparison")
    result.seconds = time.perf_counter() - start
    return result
