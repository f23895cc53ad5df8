"""Validated training configuration (YAML file + ``key=value`` overrides).

Unknown keys and wrong types are rejected with one line that names the key and
lists the valid choices (see :func:`load_config`).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cascade_adv.data.imagefolder import DEFAULT_IMAGE_SIZE as INCEPTION_DEFAULT_SIZE
from cascade_adv.errors import ConfigError, echo
from cascade_adv.models.config import (
    INCEPTION_MIN_SIZE,
    MAX_DEPTH,
    MAX_INPUT_SIZE,
    MAX_WIDTH,
    check_depth,
)
from cascade_adv.speed import SpeedConfig
from cascade_adv.textdata import load_yaml
from cascade_adv.training.methods import MAX_STEPS, MethodOptions, option_problem

#: The largest seed: torch's generators take 64 bits.
MAX_SEED = 2**64 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSection(_Strict):
    """Which dataset, where its files are, and the training-time augmentation.

    N18 section 3.3: MNIST without augmentation; CIFAR-10 random 24x24 crop and
    horizontal flip for training, center crop for testing.  ``imagenet`` reads
    ``root/imagenet/{train,val}/<class>/`` (K17), resized and center-cropped to
    ``image_size`` (default 299, Inception v3's input; see
    :mod:`cascade_adv.data.imagefolder`).
    """

    dataset: Literal["digits", "mnist", "cifar10", "imagenet"] = "digits"
    root: str | None = None
    image_size: int | None = Field(None, ge=8, le=MAX_INPUT_SIZE)
    crop_size: int | None = Field(None, ge=4, le=MAX_INPUT_SIZE)
    flip: bool = False
    download: bool = False


class ModelSection(_Strict):
    """Architecture; channels, input size and classes come from the dataset.

    ``arch``: ``resnet`` (N18; ``depth`` = 6n + 2) or ``inception_v3`` (K17's ImageNet
    model; ``depth`` is ignored, ``width`` is rho of K17 section 4.3).
    ``normalize: auto`` subtracts the per-pixel mean for CIFAR-10 (N18 section 3.3),
    scales to [-1, 1] for ImageNet (``inception``, the preprocessing K17's Inception
    v3 was trained with) and does nothing for MNIST / digits.
    """

    arch: Literal["resnet", "inception_v3"] = "resnet"
    depth: int = Field(20, ge=8, le=MAX_DEPTH)
    width: float = Field(1.0, gt=0, le=MAX_WIDTH)
    activation: Literal["relu", "relu6", "relu_decay", "tanh", "elu"] = "relu"
    relu_decay_beta: float = Field(0.1, gt=0)
    normalize: Literal["auto", "per_pixel_mean", "none", "inception"] = "auto"
    #: ResNet only: ``A`` (zero-padding, no parameters; the default) or ``B`` (1x1 conv)
    shortcut: Literal["A", "B"] | None = None
    #: every BatchNorm layer; ``null``: the architecture's own (TF's: 0.001 and 0.001)
    bn_momentum: float | None = Field(None, gt=0, le=1)
    bn_eps: float | None = Field(None, gt=0)
    #: weights at the start: ``kaiming`` (fan-out normal convolutions; the default) or
    #: ``xavier`` (Glorot uniform weights, zero biases: the N18 authors' code)
    init: Literal["kaiming", "xavier"] = "kaiming"

    _depth = field_validator("depth")(check_depth)


class OptimSection(_Strict):
    """SGD recipe of N18 section 3.3: momentum 0.9, weight decay 1e-4, batch 128,
    learning rate 0.1 divided by 10 at each milestone (by iteration).

    ``name: rmsprop`` is K17's optimizer ("RMSProp optimizer with learning rate 0.045",
    section 4); ``rmsprop_alpha`` (decay), ``rmsprop_eps`` and ``momentum`` default to
    the TF-slim Inception recipe K17 builds on (0.9, 1.0, 0.9); see
    :func:`cascade_adv.training.optim.make_optimizer`.
    """

    name: Literal["sgd", "rmsprop"] = "sgd"
    iterations: int = Field(8000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    lr_milestones: list[int] = [4000, 6000]
    lr_gamma: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    rmsprop_alpha: float = Field(0.9, gt=0, lt=1)
    rmsprop_eps: float = Field(1.0, gt=0)
    #: which parameters ``weight_decay`` applies to: ``all`` (PyTorch's habit) or
    #: ``weights`` (convolution and linear weights only: no biases, no BatchNorm
    #: scale / shift; the N18 authors' code)
    weight_decay_scope: Literal["all", "weights"] = "all"


class CheckpointSection(_Strict):
    every: int = Field(1000, ge=1)
    keep: int = Field(2, ge=1)


class DistributedSection(_Strict):
    """Several GPUs or machines (``torchrun``; see :mod:`cascade_adv.training.distributed`).

    ``backend``: ``auto`` (``nccl`` on CUDA, ``gloo`` on CPU), ``gloo`` or ``nccl``
    (CUDA only).  ``sync_batchnorm``: BatchNorm statistics over the global batch
    instead of each rank's rows, which makes a step equal a single process's up to
    float rounding, at the cost of one all-reduce per BatchNorm layer.  Ignored
    when not launched by ``torchrun``.
    """

    backend: Literal["auto", "gloo", "nccl"] = "auto"
    sync_batchnorm: bool = False


class SourceSection(_Strict):
    """Where ``count`` of the k adversarial examples of each batch come from.

    - ``current``: a one-step attack (``method``) on the network being trained;
    - ``saved``: images crafted beforehand (``cascade-adv craft``) by other networks,
      ``paths`` naming one or more saved sets (N18 section 6, cascade training;
      several sets mix sources, as N18's conclusion recommends);
    - ``static``: a one-step attack on a fixed network chosen at random each
      iteration from the checkpoints in ``paths`` (ensemble adversarial training,
      Tramer et al.).
    """

    kind: Literal["current", "saved", "static"] = "current"
    count: int = Field(64, ge=1)
    method: str = "step_ll"
    paths: list[str] = []


class AdversarialSection(_Strict):
    """Algorithm 1 of K17 (``mode: replace``) and of N18 (``mode: append``).

    m = ``optim.batch_size``, k = ``k``; the loss is N18 section 3.1's with
    ``lam``, ``lam2``, ``distance`` and ``norm``.  ``distance``: ``pivot_detached``
    (N18 section 3.2's pivot: the clean embedding is a constant; ``pivot`` is the same),
    ``pivot_released`` (the N18 authors' code: gradient through both embeddings, the
    same loss as ``bidirectional``), ``bidirectional`` or null (K17's loss).
    ``normalize_embedding`` divides both embeddings of a pair by the variance of the
    clean one (the authors' code's ``normalize_embedding`` option); see
    :func:`cascade_adv.training.loss.embedding_distance` and docs/fidelity.md.
    Each adversarial example gets its own epsilon from ``eps_sampler`` with
    ``max_e`` (pixel units).  ``delay`` clean-only iterations come first (K17).

    ``alpha`` (a fraction of each example's epsilon), ``steps`` and ``random_start``
    configure the methods with a random start (:mod:`cascade_adv.training.methods`:
    ``r_fgsm``, ``r_step_ll``, ``fgsm_rs``, ``pgd``); unset, each method's default.  A
    key that none of the config's methods reads is refused.
    """

    mode: Literal["none", "replace", "append"] = "none"
    k: int = Field(64, ge=1)
    lam: float = Field(0.3, ge=0)
    lam2: float = Field(1e-4, ge=0)
    distance: Literal["pivot_detached", "pivot_released", "bidirectional", "pivot"] | None = None
    norm: Literal["l2", "l1"] = "l2"
    normalize_embedding: bool = False
    embedding: Literal["logits", "features"] = "logits"
    method: str = "step_ll"
    max_e: float = Field(16.0, gt=0, le=255)
    eps_sampler: Literal["n18", "k17", "fixed", "uniform"] = "n18"
    delay: int = Field(0, ge=0)
    sources: list[SourceSection] | None = None
    alpha: float | None = None
    steps: int | None = None
    random_start: bool | None = None

    @field_validator("alpha", mode="before")
    @classmethod
    def _finite_alpha(cls, v: Any) -> Any:
        return _finite(v, "a fraction of each example's eps, e.g. 0.5")

    @field_validator("steps")
    @classmethod
    def _steps_range(cls, v: int | None) -> int | None:
        return _steps(v, "PGD's gradient steps per image")

    @field_validator("distance")
    @classmethod
    def _pivot_is_detached(cls, v: str | None) -> str | None:
        return "pivot_detached" if v == "pivot" else v

    def resolved_sources(self) -> list[SourceSection]:
        """``sources``, or all k from ``method`` on the current network."""
        return self.sources or [SourceSection(kind="current", count=self.k, method=self.method)]

    def method_options(self) -> MethodOptions:
        """``alpha``, ``steps`` and ``random_start`` for the training methods."""
        return MethodOptions(self.alpha, self.steps, self.random_start)

    def attack_methods(self) -> list[str]:
        """The training methods of the sources that attack a network (not ``saved``)."""
        return [s.method for s in self.resolved_sources() if s.kind != "saved"]


class MonitorSection(_Strict):
    """Catastrophic-overfitting monitor (off unless ``every`` is set): every ``every``
    iterations, PGD accuracy (``steps`` steps of 2.5 eps / steps from a uniform random
    start, at ``eps`` pixels, default ``adversarial.max_e``) and clean accuracy of a
    fixed, seeded batch of ``images`` training images, in inference mode, with its own
    generator; logged in ``metrics.jsonl``.  A collapse - PGD accuracy more than
    ``drop`` points below its best while clean accuracy stays within ``clean_hold``
    points of its best - is reported, and the weights of the best PGD accuracy are
    kept in ``best_pgd/`` (early stopping, Wong et al. 2020).  See
    :mod:`cascade_adv.training.monitor`.
    """

    every: int | None = None
    images: int = Field(256, ge=1, le=100_000)
    steps: int = 10
    eps: float | None = Field(None, gt=0, le=255)
    drop: float = Field(30.0, gt=0, le=100)
    clean_hold: float = Field(5.0, ge=0, le=100)

    @field_validator("every")
    @classmethod
    def _every_range(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1 (iterations between measurements), got {v}; "
                             "use e.g. monitor.every=100, or remove monitor.every to turn the "
                             "monitor off")
        return v

    @field_validator("steps")
    @classmethod
    def _steps_range(cls, v: int) -> int:
        return _steps(v, "the monitor's PGD steps")


def _finite(v: Any, what: str) -> Any:
    """A non-finite number refused with the fix (before pydantic's generic message)."""
    try:
        number = float(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) \
            else None
    except ValueError:
        return v  # not a number: pydantic names the type
    if number is not None and not math.isfinite(number):
        raise ValueError(f"must be a finite number ({what}), got {echo(v)}")
    return v


def _steps(v: int | None, what: str) -> int | None:
    if v is not None and not 1 <= v <= MAX_STEPS:
        raise ValueError(f"must lie in 1..{MAX_STEPS} ({what}), got {v}; use e.g. 10")
    return v


class TrainConfig(_Strict):
    """A full training run: ``cascade-adv train --config FILE [key=value ...]``."""

    name: str = "run"
    seed: int = 0
    init_from: str | None = None  # start from another run's weights (N18: shared pre-training)
    #: ``weights``: start from init_from's weights and BatchNorm statistics at iteration 0
    #: with a fresh optimizer; ``continue``: also its iteration count and optimizer state,
    #: so pre-training and this run are one schedule (the N18 authors' code).  Without
    #: init_from (e.g. ``init_from=null`` on a paper config) it has no effect.
    init_mode: Literal["weights", "continue"] = "weights"
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    checkpoint: CheckpointSection = CheckpointSection()
    adversarial: AdversarialSection = AdversarialSection()
    monitor: MonitorSection = MonitorSection()
    distributed: DistributedSection = DistributedSection()
    #: precision auto|float32|bf16, channels_last auto|true|false, compile false|true
    #: (see :mod:`cascade_adv.speed`; the defaults are float32 on CPU, bf16 on CUDA)
    speed: SpeedConfig = SpeedConfig()
    #: the published rows this run reproduces, as ``"TABLE: LABEL"`` (``n18-table2:
    #: Baseline``; for black-box tables the label the paper gives the network, ``B1``)
    paper: list[str] = []

    @field_validator("paper")
    @classmethod
    def _published_rows(cls, rows: list[str]) -> list[str]:
        from cascade_adv.results.published import PUBLISHED, split_paper_entry

        for entry in rows:
            table, label = split_paper_entry(entry) or ("", "")
            if table not in PUBLISHED:
                raise ValueError(f"{echo(entry)} is not 'TABLE: ROW' with TABLE one of "
                                 f"{', '.join(PUBLISHED)}")
            t = PUBLISHED[table]
            if label not in (*t.row_order, *t.sources):
                raise ValueError(f"{table} has no row {echo(label)}; its rows are "
                                 f"{', '.join(dict.fromkeys((*t.row_order, *t.sources)))}")
        return rows

    def paper_row(self, table: str) -> str | None:
        """The label of ``table``'s row this run reproduces, if it names one."""
        from cascade_adv.results.published import paper_row

        return paper_row(self.paper, table)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, seed: int) -> int:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"must be in the range 0..2^64-1 (0..{MAX_SEED}), got "
                             f"{echo(seed)}; pick a seed in that range")
        return seed

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # the run folder is runs/<name>: it must stay inside runs/
        parts = name.replace("\\", "/").split("/")
        if not name.strip() or name.startswith(("/", "~")) or "\0" in name \
                or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"name {echo(name)} must be a relative name inside runs/ (no '..', "
                             "no leading '/'); use e.g. name=my_run")
        return name

    @model_validator(mode="after")
    def _image_sizes(self) -> TrainConfig:
        if self.data.image_size is not None and self.data.dataset != "imagenet":
            raise ValueError(f"data.image_size applies to the imagenet dataset only, not "
                             f"{self.data.dataset}; remove it")
        if self.model.arch == "inception_v3":
            size = self.data.crop_size or self.data.image_size
            if self.data.dataset == "imagenet" and size is None:
                size = INCEPTION_DEFAULT_SIZE
            if size is None or size < INCEPTION_MIN_SIZE:
                got = f"got {size}x{size}" if size else f"{self.data.dataset} images are smaller"
                raise ValueError(
                    f"model.arch inception_v3 needs inputs of at least {INCEPTION_MIN_SIZE}x"
                    f"{INCEPTION_MIN_SIZE} ({got}); use data.dataset imagenet with "
                    f"data.image_size >= {INCEPTION_MIN_SIZE}"
                )
        return self

    @model_validator(mode="after")
    def _architecture_options(self) -> TrainConfig:
        if self.model.arch != "resnet" and self.model.shortcut is not None:
            raise ValueError(f"model.shortcut applies to model.arch resnet only, not "
                             f"{self.model.arch}; remove it")
        return self

    @model_validator(mode="after")
    def _monitor_keys(self) -> TrainConfig:
        # values, not the keys given: a recorded config.yaml writes every key
        mon, fields = self.monitor, MonitorSection.model_fields
        unused = [k for k in fields if k != "every" and getattr(mon, k) != fields[k].default]
        if mon.every is None and unused:
            raise ValueError(f"monitor.{unused[0]} has no effect while the monitor is off; set "
                             "monitor.every (e.g. 100) or remove it")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        ms = self.optim.lr_milestones
        if any(b <= a for a, b in itertools.pairwise(ms)):
            raise ValueError(f"optim.lr_milestones must be increasing, got {ms}")
        adv, m = self.adversarial, self.optim.batch_size
        options = adv.method_options()
        if adv.mode == "none" and options != MethodOptions():
            key = next(k for k in ("alpha", "steps", "random_start") if getattr(adv, k) is not None)
            raise ValueError(f"adversarial.{key} configures adversarial training, which "
                             "adversarial.mode none turns off; remove it or set adversarial.mode")
        problem = option_problem(adv.attack_methods(), options)
        if problem:
            raise ValueError(problem)
        if adv.mode == "none":
            return self
        if adv.mode == "append" and 2 * adv.k > m:
            raise ValueError(f"adversarial.k={adv.k} > m/2 with mode append (m = optim.batch_size"
                             f" = {m}): N18 Algorithm 1 requires k <= m/2; lower k")
        if adv.mode == "replace" and adv.k > m:
            raise ValueError(f"adversarial.k={adv.k} > m = optim.batch_size = {m}; lower k")
        if adv.mode == "replace" and adv.distance is not None:
            raise ValueError("adversarial.distance needs clean twins in the batch: use mode "
                             "append, or distance null for K17's replace mode")
        total = sum(s.count for s in adv.resolved_sources())
        if total != adv.k:
            raise ValueError(f"adversarial.sources counts add up to {total}, not k={adv.k}; "
                             "make them sum to k")
        for src in adv.resolved_sources():
            if src.kind in ("saved", "static") and not src.paths:
                raise ValueError(f"adversarial source of kind {src.kind} needs paths")
        return self


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {echo(dotted)}: {echo(part)} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """``["optim.lr=0.05", "data.dataset=mnist"]`` -> nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {echo(item)} is not key=value; write e.g. optim.lr=0.05")
        value = load_yaml(raw, f"override {echo(item)}", "quote or fix the value, e.g. "
                          "name=my_run optim.lr=0.05 optim.lr_milestones=[100,200]") \
            if raw.strip() else None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _section_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys at ``loc`` (a pydantic error location) of ``model``."""
    node: Any = model
    for part in loc[:-1]:
        field = node.model_fields.get(part) if isinstance(node, type) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        node = field.annotation
    return list(node.model_fields)


def format_validation_error(exc: ValidationError, model: type[BaseModel], where: str) -> str:
    """The first problem of a pydantic error, as one line naming key and fix."""
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _section_fields(model, err["loc"])
        return f"{where}: unknown key {echo(key)}; valid keys here: {', '.join(valid)}"
    msg = err["msg"]
    if err["type"] == "value_error":
        prefix = "" if not loc else f"{key}: "
        return f"{where}: {prefix}{msg.removeprefix('Value error, ')}"
    if err["type"] == "literal_error":
        msg = msg.replace("Input should be", "must be one of")
    return f"{where}: {key}: {msg} (got {echo(err.get('input'))})"


def read_yaml_tree(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A config file as a dict; ``extends: other.yaml`` (relative to the file) is
    read first and this file's entries are merged over it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML file (see configs/)")
    if path.resolve() in _seen:
        raise ConfigError(f"config {path} extends itself in a cycle; fix its 'extends' entry")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        why = "is not a UTF-8 text file" if isinstance(exc, UnicodeDecodeError) else \
            f"cannot be read ({exc.strerror or type(exc).__name__})"
        raise ConfigError(f"config {path} {why}; pass a YAML config (see configs/)") from None
    if not text.strip() or all(ln.lstrip().startswith("#") or not ln.strip()
                               for ln in text.splitlines()):
        raise ConfigError(f"config {path} is empty; copy one from configs/ "
                          "(e.g. configs/digits_baseline.yaml)")
    tree = load_yaml(text, str(path))
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    parent = tree.pop("extends", None)
    if parent is not None:
        base = read_yaml_tree(path.parent / str(parent), _seen + (path.resolve(),))
        tree = _merge(base, tree)
    return tree


def load_config(path: str | os.PathLike | None = None, overrides=(), model=TrainConfig):
    """Read a YAML config (following ``extends``), apply ``key=value`` overrides and
    validate it."""
    tree = read_yaml_tree(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    tree = _merge(tree, parse_overrides(list(overrides)))
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, where)) from None


#: Config entries that do not change what a run computes: its name and the paper rows it
#: names, logging and checkpoint cadence (resuming is exact), where the data lies.
NOT_COMPUTED = {"name": True, "paper": True, "log_every": True, "checkpoint": True,
                "data": {"root": True, "download": True}}
#: Loss options that compute the same thing (docs/fidelity.md): the released code's
#: pivot is the bidirectional loss, with the same values and gradients.
SAME_DISTANCE = {"pivot_released": "bidirectional"}
#: Adversarial options whose unset value computes what configs without them did.
ADDED_ADVERSARIAL = ("alpha", "steps", "random_start")


def training_identity(cfg: TrainConfig) -> dict:
    """What a run computes, as plain data: the resolved config without
    :data:`NOT_COMPUTED` and with equivalent loss options written one way. Two configs
    with equal identities train bit-identical weights (on one device), so a cache can
    key training by it instead of by the config's name."""
    tree = cfg.model_dump(mode="json", exclude=NOT_COMPUTED)
    adv = tree["adversarial"]
    adv["distance"] = SAME_DISTANCE.get(adv["distance"], adv["distance"])
    # options added later, left out while unset: the runs cached before they existed
    # keep their keys
    for key in ADDED_ADVERSARIAL:
        if adv[key] is None:
            del adv[key]
    if cfg.monitor.every is None:
        del tree["monitor"]
    return tree


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
