"""Robustness audit: attacks in sequence on the images still classified correctly, and
the per-image worst case (the protocol of AutoAttack, Croce & Hein 2020).

>>> result = audit(model, x, y, [16, 32], version="quick")
>>> result.worst_case            # {16.0: 91.2, 32.0: 63.5}: % of images no attack flipped
>>> print(result.to_markdown())  # per eps: clean, each attack's cumulative accuracy, worst

The attacks of a version run one after another.  Each runs only on the images that are
still classified correctly at that eps after the attacks before it; an image counts as
robust at an eps only if no attack flips it, so the result is the per-image worst case
over the attacks (docs/design.md, "Robustness audit").

Two layers, so that other evaluations can share the first:

* the attack x epsilon engine (:mod:`cascade_adv.evaluation.engine`):
  :func:`~cascade_adv.evaluation.engine.attack_rows`, given a model, a batch of images
  with one eps per row, an attack and the rows to run, returns each row's outcome
  (adversarial image, logits, still correct?) and how far any image left its eps ball,
  all on the device, with fusion an argument;
* :func:`audit`, the sequencing on top of it: for every batch, all epsilons stacked in
  one pass per attack (the engine's :func:`~cascade_adv.evaluation.engine.stack`, as in
  :func:`~cascade_adv.evaluation.evaluate_whitebox`), only the still-robust rows, and
  one device -> host read-back per attack x batch (plus one for the clean pass).

Progress is saved after every attack x batch when the audit writes to a results store
(a state file next to it, written atomically, checked field by field before a rerun
takes it over: :mod:`cascade_adv.evaluation.progress`); a rerun of the same audit skips
the work already done and gives the same result as an uninterrupted run, because every
attack x batch draws its random numbers from its own seed.  docs/results-schema.md lists
the rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cascade_adv import attacks as attack_registry
from cascade_adv.attacks.options import check_options as check_attack_options
from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.errors import (
    AttackError,
    CascadeAdvWarning,
    InvalidArgument,
    ModelFault,
    UnknownAttackError,
    echo,
)
from cascade_adv.evaluation.diagnostics import check_options, check_twin, diagnose
from cascade_adv.evaluation.engine import (
    BALL_TOLERANCE,
    attack_rows,
    check_audit_eps,
    check_inputs,
    nonfinite_rows,
    predict,
    read_back,
    seeded_generator,
    stack,
)
from cascade_adv.evaluation.outcome import (
    FLAGGED,
    AttackAccuracy,
    AuditAttack,
    AuditResult,
    Diagnostic,
)
from cascade_adv.evaluation.progress import (
    STATE_FORMAT,
    Plan,
    Progress,
    remove_progress,
    state_path,
)
from cascade_adv.models.fuse import auto_layout
from cascade_adv.models.layout import BATCH as LAYOUT_BATCH
from cascade_adv.results.store import ResultsStore, check_store_path, store_rows
from cascade_adv.speed import resolve_speed

#: The audit's versions: attack names with their options, in the order they run.
#: ``standard`` is AutoAttack's (APGD-CE, APGD-T with 9 targets, FAB-T with 9 targets,
#: Square with 5000 queries, its p schedule not rescaled to the budget, as AutoAttack
#: runs it); ``quick`` is meant for a CPU (no FAB-T, fewer targets and queries).  ``targets`` is lowered to the model's
#: number of classes - 1 where that is smaller.
VERSIONS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "standard": (("apgd_ce", {"steps": 100}),
                 ("apgd_t", {"targets": 9, "steps": 100}),
                 ("fab_t", {"targets": 9, "steps": 100}),
                 ("square", {"queries": 5000, "rescale": False})),
    "quick": (("apgd_ce", {"steps": 100}),
              ("apgd_t", {"targets": 3, "steps": 100}),
              ("square", {"queries": 1000, "rescale": False})),
}
__all__ = [
    "STATE_FORMAT",
    "VERSIONS",
    "AttackAccuracy",
    "AuditAttack",
    "AuditRecord",
    "AuditResult",
    "AuditRun",
    "Workers",
    "audit",
    "check_audit_eps",
    "check_inputs",
    "check_targets",
    "resolve_version",
    "state_path",
]


# --- what runs ------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _parse_list(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``"apgd_ce,apgd_t:targets=3:steps=50"`` -> ``[(name, options), ...]``."""
    items = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, *pairs = part.split(":")
        options: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise AttackError(f"attack option {pair!r} of {part!r} is not KEY=VALUE; "
                                  "write e.g. apgd_t:targets=3")
            options[key.strip()] = _parse_value(value.strip())
        items.append((name.strip(), options))
    return items


def _unknown(name: str) -> UnknownAttackError:
    return UnknownAttackError(
        f"unknown attack or version {name!r}; give a version ({', '.join(VERSIONS)}) or "
        f"attacks from: {', '.join(attack_registry.names())}")


def _audit_attack(item: Any) -> AuditAttack:
    """A version list item (name, ``AttackSpec`` or ``(either, options)``) -> attack."""
    target, options = item if isinstance(item, tuple) and len(item) == 2 else (item, {})
    if isinstance(target, AttackSpec):
        spec = target
    elif isinstance(target, str):
        try:
            spec = attack_registry.get(target)
        except UnknownAttackError:
            raise _unknown(target) from None
    else:
        raise AttackError(f"an audit attack is a name, an AttackSpec or (either, options), "
                          f"got {item!r}")
    return AuditAttack(spec, check_attack_options(spec, options))


def resolve_version(version: str | Sequence[Any] = "standard",
                    num_classes: int | None = None) -> tuple[str, list[AuditAttack]]:
    """``(label, attacks)`` of an audit version: ``"standard"``, ``"quick"``, a
    comma-separated list (``"apgd_ce,square:queries=1000"``) or a sequence of attack
    names, ``AttackSpec`` objects or ``(name or spec, options)`` pairs.

    ``label`` is the version's name, or the list as text (each attack's
    :attr:`AuditAttack.label`).  With ``num_classes``, ``targets`` options are checked
    (:func:`check_targets`; a version's own are lowered to ``num_classes - 1``).
    Raises :class:`~cascade_adv.errors.UnknownAttackError` (a ``KeyError`` and a
    ``ValueError``) for a name that is neither a version nor an attack, and
    :class:`~cascade_adv.errors.AttackError` for bad options or a repeated attack.
    """
    named = isinstance(version, str) and version.strip() in VERSIONS
    if named:
        items: Sequence[Any] = VERSIONS[version.strip()]
    elif isinstance(version, str):
        items = _parse_list(version)
    else:
        items = list(version)
    attacks = [_audit_attack(item) for item in items]
    if not attacks:
        raise AttackError(f"the audit version {version!r} names no attack; give standard, "
                          "quick or a list of attacks, e.g. apgd_ce,square")
    seen: set[str] = set()
    for a in attacks:
        if a.name in seen:
            raise AttackError(f"attack {a.name!r} is listed twice in the audit; list each "
                              "attack once")
        seen.add(a.name)
    if num_classes is not None:
        attacks = check_targets(attacks, num_classes, lower=named)
    label = version.strip() if named else ",".join(a.label for a in attacks)
    return label, attacks


def check_targets(attacks: Sequence[AuditAttack], num_classes: int, *,
                  lower: bool = False) -> list[AuditAttack]:
    """A targeted attack's ``targets`` (number of target classes) must be at most the
    ``num_classes - 1`` classes other than the true one: :class:`AttackError` otherwise,
    or, with ``lower``, lowered to it (a version's default)."""
    out = []
    for a in attacks:
        t = a.options.get("targets")  # registered attacks: a whole number >= 1 by now
        if isinstance(t, int) and t > num_classes - 1:
            if not lower or num_classes < 2:
                raise AttackError(
                    f"{a.name} targets={t} asks for more target classes than the model has "
                    f"({num_classes} classes, so at most {max(num_classes - 1, 0)} targets); "
                    f"give targets={max(num_classes - 1, 1)} or fewer")
            a = AuditAttack(a.spec, {**a.options, "targets": num_classes - 1})
        out.append(a)
    return out


# --- resuming ----------------------------------------------------------------------------


def _tensor_digest(digest: Any, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    digest.update(f"{t.dtype}{list(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _audit_key(model: nn.Module, model_hash: str, x: torch.Tensor, y: torch.Tensor,
               settings: Mapping[str, Any]) -> str:
    """What makes two audits the same: the weights (``model_hash``, else the model's
    tensors), the images and labels, and ``settings`` (version, eps, seed, batching)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    if model_hash:
        digest.update(model_hash.encode())
    else:
        for name, t in model.state_dict().items():
            digest.update(name.encode())
            _tensor_digest(digest, t)
    _tensor_digest(digest, x)
    _tensor_digest(digest, y)
    return digest.hexdigest()


def _seed(seed: int, attack: str, batch: int) -> int:
    """The seed of one attack x batch: the same whatever ran (or was skipped) before."""
    blob = hashlib.sha256(f"{int(seed)}:{attack}:{batch}".encode()).digest()
    return int.from_bytes(blob[:8], "little") & ((1 << 63) - 1)


# --- the sequencing ----------------------------------------------------------------------


def _refuse_nonfinite(bad: int, model_name: str) -> None:
    if bad:
        raise ModelFault(
            f"model {model_name} gives non-finite outputs (inf / NaN) on {bad} images; its "
            "robustness would be meaningless, so nothing is reported: audit an earlier "
            "checkpoint or retrain it")


def _run_attack(model, xs, ys, es, flat, attack: AuditAttack, generator, max_batch: int,
                fuse: bool, model_name: str):
    """``attack`` on the stacked rows ``flat`` (host indices), ``max_batch`` rows per
    call; one read-back.  Returns (host bool correct per row, the outcomes)."""
    rows = flat.to(xs.device)
    outs = [attack_rows(model, xs, ys, es, attack.spec, rows=rows[i:i + max_batch],
                        options=attack.options, generator=generator, fuse=fuse)
            for i in range(0, len(rows), max_batch)]
    correct, excess, bad = read_back(torch.cat([o.correct for o in outs]),
                                      torch.stack([o.excess for o in outs]).amax(),
                                      torch.stack([o.nonfinite for o in outs]).sum())
    _refuse_nonfinite(bad, model_name)
    if excess > BALL_TOLERANCE:
        raise AttackError(
            f"attack {attack.name} returned images outside their eps ball or [0, 1] (by "
            f"{excess * 255:.3g} pixel units); its result would not count: fix the attack")
    return correct, outs


@dataclass
class _Run:
    """One audit's fixed inputs, shared by its batches."""

    model: nn.Module
    attacks: list[AuditAttack]
    eps: list[float]
    seed: int
    max_batch: int
    fuse: bool
    device: torch.device
    model_name: str
    adversarial: torch.Tensor | None
    #: the index of this run's first batch in the whole audit (a shard's), for the seeds
    batch_offset: int = 0


def _clean_pass(run: _Run, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    logits = predict(run.model, xb, fuse=run.fuse)
    correct, _, bad = read_back(logits.argmax(dim=1) == yb, torch.zeros((), device=xb.device),
                                 nonfinite_rows(logits))
    _refuse_nonfinite(bad, run.model_name)
    return correct


def _audit_batch(run: _Run, state: Progress, k: int, start: int, xb: torch.Tensor,
                 yb: torch.Tensor, bar) -> None:
    """The attacks not yet done on batch ``k`` (images ``start..``), each on the rows
    (eps x image, epsilon-major) still correct; the state saved after each."""
    b, n_eps = xb.shape[0], len(run.eps)
    sl = slice(start, start + b)
    if state.finished[k] == 0:
        state.clean[sl] = _clean_pass(run, xb, yb)
    robust = state.clean[sl].expand(n_eps, b) & (state.broken_by[:, sl] < 0)  # host [E, b]
    xs, ys, es = stack(xb, yb, run.eps)  # epsilon-major, one eps per row
    es = es.to(run.device)
    for a in range(state.finished[k], len(run.attacks)):
        attack = run.attacks[a]
        flat = robust.reshape(-1).nonzero().flatten()
        if len(flat):
            g = seeded_generator(_seed(run.seed, attack.name, run.batch_offset + k),
                                 run.device)
            correct, outs = _run_attack(run.model, xs, ys, es, flat, attack, g, run.max_batch,
                                        run.fuse, run.model_name)
            broken = flat[~correct]
            e_idx, i_idx = broken // b, broken % b
            state.broken_by[e_idx, start + i_idx] = a
            robust[e_idx, i_idx] = False
            if run.adversarial is not None and len(broken):
                x_adv = torch.cat([o.x_adv for o in outs])[(~correct).to(xs.device)]
                run.adversarial[e_idx, start + i_idx] = x_adv.to("cpu", run.adversarial.dtype)
        state.finished[k] = a + 1
        state.save()
        bar.update(1)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class AuditRun:
    """How an audit runs (its results do not depend on it, except ``seed`` and, within
    float32 rounding, ``fuse``, ``channels_last`` and ``compile``).

    ``batch_size`` images per batch; ``max_batch`` caps the stacked rows (images x
    epsilons) of one attack call (default ``batch_size * len(eps)``); every attack x batch
    draws from its own generator seeded by ``seed``.  ``fuse``: attacks run on the
    network with BatchNorm folded into its convolutions; ``channels_last``: that
    network's layout (``None``: the one measured faster on this machine,
    :mod:`cascade_adv.models.layout`, chosen once before any attack and used by every
    shard).  ``compile``: Square queries the model compiled with inductor's freezing
    (:mod:`cascade_adv.models.frozen`; a compile per process, worth it for Square's
    thousands of forward passes; needs a working ``torch.compile`` here, checked first).
    ``workers`` (a :class:`Workers`, or a number of local single-thread worker
    processes) splits the images into that many shards of whole batches, each audited in
    its own process (or Ray task) with the seeds of its batches in the whole audit, so
    the merged outcomes equal a one-process run's bit for bit (on the same kind of
    device and thread count); each shard keeps its own progress file and resumes from it
    (:func:`audit_shards`).  ``progress``: a tqdm bar."""

    batch_size: int = 500
    max_batch: int | None = None
    seed: int = 0
    fuse: bool = True
    channels_last: bool | None = None
    compile: bool = False
    workers: Workers | int | None = None
    progress: bool = False


@dataclass(frozen=True)
class AuditRecord:
    """What an audit is called and where it is kept.

    ``store`` (a :class:`ResultsStore` or its path): the rows of :meth:`AuditResult.table`
    are upserted there at the end, and progress is saved after every attack x batch in
    :func:`state_path` next to it, so that a rerun after an interruption skips the work
    done (``resume=False`` starts over) and gives the same result; the file is removed
    once the rows are stored (a store given by its path that cannot take them keeps
    them in a pending file, :func:`~cascade_adv.results.store.store_rows`).  A progress
    file that is not exactly what this audit would have written is discarded with one
    :class:`~cascade_adv.errors.CascadeAdvWarning` and the audit starts over; the
    progress files of the same ``model_name``, ``dataset`` and ``split`` beside the store
    that belong to an audit with other arguments, run by no live process, are removed
    (:mod:`cascade_adv.evaluation.progress`).  ``save_rows=False`` leaves storing the
    rows to the caller (who writes other files first): the store then only keeps the
    progress.  ``keep_images`` keeps the adversarial images in the result (in memory
    only: such an audit starts over).  ``model_name``, ``model_hash``, ``dataset`` and
    ``split`` name the rows."""

    store: ResultsStore | str | os.PathLike | None = None
    model_name: str = "model"
    model_hash: str = ""
    dataset: str = ""
    split: str = ""
    save_rows: bool = True
    resume: bool = True
    keep_images: bool = False


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float],
    *,
    version: str | Sequence[Any] = "standard",
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    diagnostics: bool | str | Mapping[str, Any] = "cheap",
    run: AuditRun | None = None,
    record: AuditRecord | None = None,
) -> AuditResult:
    """Audit ``model``'s robustness on images ``x`` (``[N, C, H, W]`` in [0, 1]) with
    labels ``y``: the attacks of ``version`` in sequence, each on the images still
    correct, and the per-image worst case at every ``eps`` (pixel units, in (0, 255]).

    >>> audit(model, x, y, [16, 32], version="quick")
    >>> audit(model, x, y, 32, run=AuditRun(batch_size=250, workers=2),
    ...       record=AuditRecord(store="results.db", model_name="P"))

    ``model`` is any ``nn.Module`` mapping images to logits; it is attacked in
    inference mode on its device (``x`` moves there batch by batch).  ``version``:
    ``"standard"`` (APGD-CE, APGD-T and FAB-T with 9 targets, Square with 5000 queries),
    ``"quick"`` (APGD-T with 3 targets, Square with 1000 queries), or a list (see
    :func:`resolve_version`).  ``prepare`` maps each batch of ``x`` to the model's
    inputs first (e.g. uint8 images to floats with a center crop).  ``run``
    (:class:`AuditRun`): batch sizes, seed, network, shards, progress bar; ``record``
    (:class:`AuditRecord`): names, the results store, resume.

    ``diagnostics``: ``True`` (or a mapping of
    :func:`~cascade_adv.evaluation.diagnostics.diagnose`'s options, e.g. ``{"twin":
    undefended_model, "sample": 128}``) runs the gradient-masking diagnostics on the
    audited images after the attacks, with this audit's seed, ``prepare`` and network,
    into :attr:`AuditResult.checks` (before the rows are stored, so an interruption
    there resumes after the attacks).  The default, ``"cheap"``, runs AutoAttack's
    checks on every call (``deterministic``, ``logits``: probabilities instead of logits,
    ``nonzero_gradients``: a few forward passes and one gradient of a subsample), each
    flagged one also a :class:`~cascade_adv.errors.CascadeAdvWarning` (the caller did
    not ask for them); ``False`` none.

    Raises :class:`~cascade_adv.errors.CascadeAdvError` subclasses that are also
    ``ValueError`` (unknown names also ``KeyError``) for bad input, before any work, and
    :class:`~cascade_adv.errors.ModelFault` for a model with non-finite outputs.
    """
    run, record = _check_groups(run, record)
    shard, workers, checks, label = _plan(model, x, y, eps, version, prepare, diagnostics,
                                          run, record)
    with attack_registry.layout(shard.channels_last):
        if workers.jobs > 1:
            clean, broken_by, adversarial, files = audit_shards(model, x, y, prepare, shard,
                                                                workers, run.progress)
        else:
            clean, broken_by, adversarial, files = _audit_shard(model, x, y, prepare, shard,
                                                                0, run.progress)
        result = AuditResult(label, tuple(shard.attacks), tuple(shard.eps), clean, broken_by,
                             adversarial, [], record.model_name, record.model_hash,
                             record.dataset, record.split)
        if checks is not None:
            result.checks = diagnose(model, x, y, shard.eps, audit_result=result,
                                     seed=run.seed, prepare=prepare, fuse=run.fuse, **checks)
            if checks.get("cheap"):  # not asked for: say what they found
                _warn_flagged(result.checks)
    if record.store is not None and record.save_rows:
        if isinstance(record.store, ResultsStore):
            record.store.upsert(result.table())
        else:
            store_rows(record.store, result.table())
    for path in files:  # the attacks' progress, once their rows are stored
        remove_progress(path)
    return result


def _check_groups(run: Any, record: Any) -> tuple[AuditRun, AuditRecord]:
    run = AuditRun() if run is None else run
    record = AuditRecord() if record is None else record
    if not isinstance(run, AuditRun):
        raise InvalidArgument(f"run must be an AuditRun, got {echo(run)}")
    if not isinstance(record, AuditRecord):
        raise InvalidArgument(f"record must be an AuditRecord, got {echo(record)}")
    if run.channels_last is not None and not isinstance(run.channels_last, bool):
        raise InvalidArgument(f"channels_last must be True, False or None, got "
                              f"{echo(run.channels_last)}")
    if not isinstance(run.compile, bool):
        raise InvalidArgument(f"compile must be True or False, got {echo(run.compile)}")
    return run, record


def _plan(model, x, y, eps, version, prepare, diagnostics, run: AuditRun,
          record: AuditRecord) -> tuple[_Shard, Workers, dict[str, Any] | None, str]:
    """Every argument checked (one line each, before any work), the network's layout
    chosen: what each shard runs, the workers, the diagnostics' options, the label."""
    eps_values = check_audit_eps(eps)
    checks = _diagnostic_options(diagnostics)
    resolve_version(version)  # names and options, before the model runs
    batch_size = _positive(run.batch_size, "batch_size")
    max_batch = _positive(batch_size * len(eps_values) if run.max_batch is None
                          else run.max_batch, "max_batch")
    classes = check_inputs(model, x, y, prepare)
    if checks is not None:
        check_twin(checks.get("twin"), x, prepare, classes, model,
                   checks.get("twin_name", "twin"), record.model_name)
    label, attacks = resolve_version(version, classes)
    if record.store is not None and not isinstance(record.store, ResultsStore):
        check_store_path(record.store)
    workers = check_workers(run.workers, x.shape[0], batch_size)
    if run.compile:  # torch.compile works here, or one line naming the fix
        resolve_speed(attack_registry.model_device(model), compile=True)
    channels_last = run.channels_last
    if channels_last is None:
        channels_last = run.fuse and _measured_layout(model, x, prepare, batch_size,
                                                      workers)
    shard = _Shard(attacks, eps_values, int(run.seed), batch_size, max_batch, bool(run.fuse),
                   channels_last, record.model_name, record.model_hash, record.dataset,
                   record.split, _store_path(record.store),
                   record.resume and not record.keep_images, record.keep_images,
                   run.compile)
    return shard, workers, checks, label


def _measured_layout(model: nn.Module, x: torch.Tensor,
                     prepare: Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int,
                     workers: Workers) -> bool:
    """The attack network's layout for this audit's batches, measured (or read from the
    machine's cache) with the thread count the attacks will run with."""
    sample = x[:min(batch_size, LAYOUT_BATCH)].to(attack_registry.model_device(model))
    sample = prepare(sample) if prepare is not None else sample
    threads = torch.get_num_threads()
    if workers.jobs > 1 and workers.threads:
        torch.set_num_threads(workers.threads)
    try:
        with attack_registry.inference_mode(model):
            return auto_layout(model, sample)
    finally:
        torch.set_num_threads(threads)


def _store_path(store: ResultsStore | str | os.PathLike | None) -> str | None:
    """Where progress files go: beside the store (none without one or in memory)."""
    path = None if store is None else (
        store.path if isinstance(store, ResultsStore) else str(store))
    return None if path in (None, ":memory:") else path


def _open_progress(store_path: str | None, plan: Plan, resume: bool) -> Progress:
    """The audit's progress, kept beside the store at ``store_path`` (in memory without
    one), taken over from there when valid (``resume``); the progress files there of the
    same owner (model, dataset, split and first batch) whose audit had other arguments
    are removed."""
    state = Progress(None if store_path is None else state_path(store_path, plan.key), plan,
                     resume)
    state.remove_superseded()
    return state


# --- shards --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workers:
    """Where an audit's image shards run: ``jobs`` shards of whole batches, each in a
    worker process with ``threads`` torch threads (``executor="local"``) or as a Ray task
    (``"ray"``, on the cluster at ``address``; ``pip install 'cascade-adv[ray]'``).  One
    thread per process, one process per core is the fast layout on a CPU
    (docs/performance.md)."""

    jobs: int = 1
    executor: str = "local"
    threads: int | None = 1
    address: str | None = None


def check_workers(workers: Workers | int | None, n_images: int, batch_size: int) -> Workers:
    """``workers`` as a :class:`Workers`, checked before any work (one line each): ``jobs``
    from 1 to the number of images, a known executor (Ray installed and its address
    answering for ``"ray"``), ``threads`` >= 1; shards are whole batches, so ``jobs`` above
    the number of batches runs as many shards as there are batches."""
    from cascade_adv.executors import check_executor

    if workers is None:
        return Workers()
    if not isinstance(workers, Workers):
        workers = Workers(jobs=workers)
    jobs = _positive(workers.jobs, "jobs")
    if jobs > n_images:
        raise InvalidArgument(f"jobs={jobs} is more than the {n_images} images to audit; use "
                              f"at most {n_images}")
    if workers.threads is not None:
        _positive(workers.threads, "threads")
    check_executor(workers.executor)
    return Workers(min(jobs, -(-n_images // batch_size)), workers.executor, workers.threads,
                   workers.address)


@dataclass(frozen=True)
class _Shard:
    """What every shard of one audit shares (picklable: it travels to the workers)."""

    attacks: list[AuditAttack]
    eps: list[float]
    seed: int
    batch_size: int
    max_batch: int
    fuse: bool
    channels_last: bool
    model_name: str
    model_hash: str
    dataset: str
    split: str
    store: str | None
    resume: bool
    keep_images: bool
    compile: bool = False

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.attacks]

    def settings(self, batch_offset: int) -> dict[str, Any]:
        """What, besides the model and images, makes two shards the same (their key)."""
        return {"version": self.labels, "eps": self.eps, "seed": self.seed,
                "batch_size": self.batch_size, "max_batch": self.max_batch,
                "fuse": self.fuse, "channels_last": self.channels_last,
                "first_batch": batch_offset, **({"compile": True} if self.compile else {})}


def _audit_shard(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None, shard: _Shard,
                 batch_offset: int, progress: bool = False):
    """The attacks on images ``x`` (batches ``batch_offset ..`` of the whole audit, with
    their seeds), with their own progress file; returns (clean, broken_by, adversarial
    images or None, the progress file to remove once the rows are stored)."""
    owner = {"model": shard.model_name, "dataset": shard.dataset, "split": shard.split,
             "first_batch": str(batch_offset)}
    plan = Plan(_audit_key(model, shard.model_hash, x, y, shard.settings(batch_offset)),
                int(x.shape[0]), shard.batch_size, shard.eps, shard.labels, owner)
    state = _open_progress(shard.store, plan, shard.resume)
    run = _Run(model, shard.attacks, shard.eps, shard.seed, shard.max_batch, shard.fuse,
               attack_registry.model_device(model), shard.model_name, None, batch_offset)
    if shard.keep_images:
        like = prepare(x[:1]) if prepare is not None else x[:1]
        run.adversarial = torch.empty((len(shard.eps), x.shape[0], *like.shape[1:]),
                                      dtype=like.dtype)
    with (attack_registry.layout(shard.channels_last),  # the same in every shard
          attack_registry.compiled(shard.compile)):
        _run_batches(run, state, x, y, prepare, shard.batch_size, progress)
    return state.clean, state.broken_by, run.adversarial, [state.path]


def audit_shards(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None, shard: _Shard,
                 workers: Workers, progress: bool = False):
    """The audit's batches in ``workers.jobs`` contiguous shards, run at once on the
    workers (:mod:`cascade_adv.executors`), merged in image order.  The model, images
    and ``prepare`` travel to each worker (pickled in memory; ``prepare`` must be a
    module-level function or a ``functools.partial`` of one)."""
    from cascade_adv.executors import RayExecutor, local_pool, pool_in_use

    n_batches = -(-int(x.shape[0]) // shard.batch_size)
    bounds = [round(i * n_batches / workers.jobs) for i in range(workers.jobs + 1)]
    pool = (RayExecutor(workers.address, cpus=workers.threads or 1, threads=workers.threads)
            if workers.executor == "ray" else local_pool(workers.jobs, workers.threads))
    with pool_in_use(pool):
        futures = []
        for first, last in itertools.pairwise(bounds):
            sl = slice(first * shard.batch_size, last * shard.batch_size)
            futures.append(pool.submit(_audit_shard, model, x[sl], y[sl], prepare, shard,
                                       first))
        parts = [f.result() for f in tqdm(futures, disable=not progress, unit="shard",
                                          desc=f"audit {shard.model_name}", leave=False)]
    clean = torch.cat([p[0] for p in parts])
    broken_by = torch.cat([p[1] for p in parts], dim=1)
    adversarial = (torch.cat([p[2] for p in parts], dim=1) if shard.keep_images else None)
    return clean, broken_by, adversarial, [f for p in parts for f in p[3]]


def _warn_flagged(checks: Sequence[Diagnostic]) -> None:
    """One :class:`~cascade_adv.errors.CascadeAdvWarning` per flagged diagnostic, so that
    a worst case of a model that, e.g., returns probabilities never passes unremarked."""
    for c in checks:
        if c.verdict == FLAGGED:
            warnings.warn(f"audit diagnostic {c.name} is flagged: {c.meaning}",
                          CascadeAdvWarning, stacklevel=3)


def _diagnostic_options(diagnostics: bool | str | Mapping[str, Any]) -> dict[str, Any] | None:
    """``audit(diagnostics=...)`` -> diagnose's options (``None``: no diagnostics),
    checked before any work."""
    if diagnostics is False or diagnostics is None:
        return None
    if diagnostics is True:
        return {}
    if diagnostics == "cheap":
        return {"cheap": True}
    if not isinstance(diagnostics, Mapping):
        raise InvalidArgument("diagnostics must be True, False, 'cheap' or a mapping of "
                              f"diagnose's options, got {echo(diagnostics)}")
    check_options(diagnostics)
    return dict(diagnostics)


def _run_batches(run: _Run, state: Progress, x: torch.Tensor, y: torch.Tensor,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int,
                 progress: bool) -> None:
    """Every batch's attacks not done yet (those of an interrupted run are skipped)."""
    n_batches, n_attacks = len(state.finished), len(run.attacks)
    bar = tqdm(total=n_batches * n_attacks, initial=sum(state.finished), disable=not progress,
               desc=f"audit {run.model_name}", unit="attack", leave=False)
    try:
        for k in range(n_batches):
            start = k * batch_size
            if state.finished[k] == n_attacks:
                continue  # done before an interruption
            xb = x[start:start + batch_size].to(run.device)
            xb = prepare(xb) if prepare is not None else xb
            if run.adversarial is not None:
                run.adversarial[:, start:start + xb.shape[0]] = xb.to("cpu",
                                                                     run.adversarial.dtype)
            yb = y[start:start + batch_size].to(run.device)
            _audit_batch(run, state, k, start, xb, yb, bar)
    finally:
        bar.close()
