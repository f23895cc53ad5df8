"""A trained run as the commands, the sweeps and the recipes load it: its weights (checked
finite), name, weights hash, initialisation and config, and the evaluation split it
was made for; and its record in the results store."""

from __future__ import annotations

from pathlib import Path

from cascade_adv.data import load_dataset
from cascade_adv.data.imagefolder import DEFAULT_IMAGE_SIZE
from cascade_adv.errors import CascadeAdvError, DatasetError, InvalidArgument, ModelFault
from cascade_adv.models import (
    load_model,
    read_model_config,
    read_model_init,
    resolve_weights,
    weights_hash,
)
from cascade_adv.training.checkpoint import nonfinite_state
from cascade_adv.training.config import load_config
from cascade_adv.training.loop import init_id, resolve_device


def model_init(weights: Path, run_cfg) -> str:
    """The model's initialisation id: from its metadata, else from its run's config
    (``run_cfg``, :func:`run_config`)."""
    init = read_model_init(weights)
    if init:
        return init
    if run_cfg is None:
        return ""
    return init_id(run_cfg.init_from, run_cfg.seed, read_model_config(weights))


class LoadedModel:
    """A model given as ``NAME=PATH`` or ``PATH`` (on the command line; ``NAME`` becomes
    part of file names, so it is checked), or as ``PATH`` with a ``name`` the caller
    owns (a recipe's ``experiment/variant``), with what the store records about it."""

    def __init__(self, spec: str, device, *, name: str | None = None):
        if name is None:
            name, path = split_spec(spec)
            check_name(name, "model name")
        else:
            path = spec
        self.weights = resolve_weights(path)
        self.name = name or model_label(self.weights)
        self.model = load_model(self.weights, map_location=device)
        check_finite_model(self.model, self.weights)
        self.hash = weights_hash(self.weights)
        self.run_config = run_config(self.weights)
        self.init = model_init(self.weights, self.run_config)

    @property
    def dataset(self) -> str:
        cfg_name = self.model.config.dataset
        return cfg_name or (self.run_config.data.dataset if self.run_config else "")

    @property
    def paper(self) -> list[str]:
        """The published rows its run's config names (``"TABLE: LABEL"``)."""
        return list(self.run_config.paper) if self.run_config else []

    def record(self, experiment: str = "", params: dict | None = None) -> dict:
        """Its record for the results store (keyword arguments of
        :meth:`~cascade_adv.results.store.ResultsStore.register_model`), with the paper
        rows its config names (which the reports read) unless ``params`` gives its own
        ``paper``."""
        params = {**({"paper": self.paper} if self.paper else {}), **(params or {})}
        return {"name": self.name, "model_hash": self.hash, "dataset": self.dataset,
                    "init": self.init, "experiment": experiment, "params": params}

    def register(self, store, experiment: str = "", params: dict | None = None) -> None:
        """Record it in the results store (:meth:`record`)."""
        store.register_model(**self.record(experiment, params))


def split_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain ``PATH`` -> ("", PATH)."""
    name, sep, path = str(spec).partition("=")
    return (name, path) if sep else ("", str(spec))


def model_inputs(spec: str | None, label: str) -> list[tuple[str, Path]]:
    """What loading the model ``spec`` (``NAME=PATH`` or ``PATH``) reads, for the output
    checks of :func:`cascade_adv.io.check_disjoint`: the path given, and when it can be
    found (else the loader names the problem later) its weights file and its run
    folder."""
    if not spec:
        return []
    path = split_spec(spec)[1]
    out = [(label, Path(path))]
    try:
        weights = resolve_weights(path)
    except CascadeAdvError:
        return out
    return out + [(label, weights), (f"the run folder of {label}", run_folder(weights))]


def data_inputs(specs, dataset: str | None, data_root: str | None) -> list[tuple[str, Path]]:
    """The dataset folder a command reads (``dataset``, else the one the models of
    ``specs`` were trained on, under ``data_root`` or their runs' data root), for the
    output checks; none for the bundled digits."""
    from cascade_adv.data.loading import dataset_inputs

    names, roots = {dataset} if dataset else set(), []
    for spec in specs:
        try:
            weights = resolve_weights(split_spec(spec)[1])
            cfg = run_config(weights)
            trained_on = read_model_config(weights).dataset or (cfg.data.dataset if cfg else "")
        except CascadeAdvError:
            continue  # the loader names the problem
        if not dataset:
            names.add(trained_on)
        if cfg is not None and cfg.data.root:
            roots.append(cfg.data.root)
    root = data_root or next(iter(roots), None)
    return [p for n in sorted(names) for p in dataset_inputs(n, root)]


def config_inputs(cfg, config_path: str | None = None) -> list[tuple[str, Path]]:
    """What training ``cfg`` reads, for the output checks: its config file, the
    ``init_from`` model, the adversarial sources' saved sets and checkpoints, and the
    dataset folder."""
    from cascade_adv.data.loading import dataset_inputs

    out = [("--config", Path(config_path))] if config_path else []
    out += model_inputs(cfg.init_from, "init_from")
    for src in cfg.adversarial.sources or ():
        for p in src.paths:
            out += ([("a saved adversarial set of the config", Path(p))] if src.kind == "saved"
                    else model_inputs(p, "an adversarial source of the config"))
    return out + dataset_inputs(cfg.data.dataset, cfg.data.root)


def check_name(name: str, what: str) -> str:
    """A name that becomes part of a file name: no folder separators, no ``..``."""
    if name and ("/" in name or "\\" in name or name in (".", "..") or "\0" in name):
        raise InvalidArgument(f"{what} {name!r} may not contain '/', '\\' or be '.' / '..'; "
                              "use a plain name such as B1")
    return name


def check_finite_model(model, weights) -> None:
    """Refuse (one line) a model whose weights or statistics hold inf / NaN."""
    bad = nonfinite_state(model)
    if bad:
        raise ModelFault(f"model {weights} holds non-finite weights ({len(bad)} tensors, first "
                         f"{bad[0]}); it is damaged: evaluate an earlier checkpoint or retrain")


def load_models(specs: tuple[str, ...], device) -> dict[str, LoadedModel]:
    """``NAME=PATH`` or ``PATH`` (named after its run folder) -> loaded models."""
    out: dict[str, LoadedModel] = {}
    for spec in specs:
        m = LoadedModel(spec, device)
        if m.name in out and out[m.name].weights != m.weights:
            raise CascadeAdvError(
                f"two models are named {m.name!r}; name them with NAME=PATH")
        out[m.name] = m
    return out


def load_split(models: list[LoadedModel], dataset: str | None, data_root: str | None,
               split: str, limit: int | None, device):
    """The evaluation images: ``dataset`` or the one every model was trained on."""
    if limit is not None and limit < 1:
        raise InvalidArgument(f"--limit must be a positive number of images, got {limit}")
    names = {m.dataset for m in models if m.dataset}
    if dataset is None:
        if len(names) > 1:
            raise CascadeAdvError(
                f"the models were trained on different datasets ({', '.join(sorted(names))}); "
                "black-box pairs must share one"
            )
        if not names:
            raise CascadeAdvError(
                f"cannot tell which dataset {', '.join(m.name for m in models)} was "
                "trained on; pass --dataset")
        dataset = names.pop()
    for m in models:  # before any data is read
        if m.dataset and dataset != m.dataset:
            raise DatasetError(f"model {m.name} was trained on {m.dataset}, not {dataset}; "
                               f"evaluate it on --dataset {m.dataset}")
    root = data_root or next((m.run_config.data.root for m in models if m.run_config), None)
    first = models[0] if models else None
    size = size_option(dataset, first.model.config, first.run_config) if first else {}
    data = load_dataset(dataset, split, root=root, **size)
    for m in models:
        check_model_data(m, data)
    return (data.subset(limit) if limit is not None else data).to(device)


def check_model_data(m: LoadedModel, data) -> None:
    """The dataset must be the one the model was made for: same dataset (when the
    model records it), channels, enough classes, images at least the model's size."""
    cfg = m.model.config
    if m.dataset and data.name != m.dataset:
        raise DatasetError(f"model {m.name} was trained on {m.dataset}, not {data.name}; "
                           f"evaluate it on --dataset {m.dataset}")
    c, h, w = data.image_shape
    if c != cfg.in_channels or h < cfg.input_size or w < cfg.input_size:
        raise DatasetError(f"{data.name} images are {c}x{h}x{w} but model {m.name} takes "
                           f"{cfg.in_channels}x{cfg.input_size}x{cfg.input_size}; use the "
                           "dataset it was trained on")
    if data.num_classes > cfg.num_classes:
        raise DatasetError(f"{data.name} has {data.num_classes} classes but model {m.name} "
                           f"predicts {cfg.num_classes}; use the dataset it was trained on")


def load_for_eval(
    checkpoint: str,
    dataset: str | None,
    data_root: str | None,
    split: str,
    device: str,
    limit: int | None,
):
    """The model (:class:`LoadedModel`) and the evaluation split it was trained for."""
    dev = resolve_device(device)
    m = LoadedModel(checkpoint, dev)
    return m, load_split([m], dataset, data_root, split, limit, dev)


def size_option(name: str, model_config, run_cfg) -> dict:
    """``{"image_size": S}`` for ImageNet folders: the size the model's run decoded its
    training images at, else the model's input size; ``{}`` for the other datasets."""
    if name != "imagenet":
        return {}
    if run_cfg is not None and run_cfg.data.dataset == "imagenet":
        return {"image_size": run_cfg.data.image_size or DEFAULT_IMAGE_SIZE}
    return {"image_size": model_config.input_size}


def run_config(weights: Path):
    """The config of the run ``weights`` belongs to (its ``config.yaml``), if any."""
    for folder in (weights.parent, weights.parent.parent, weights.parent.parent.parent):
        if (folder / "config.yaml").is_file():
            return load_config(folder / "config.yaml")
    return None


def run_folder(weights: Path) -> Path:
    """The run folder ``weights`` belong to (above ``final/`` and ``checkpoints/ckpt-N/``),
    or their own folder."""
    folder = weights.parent
    while folder.name in {"final", "checkpoints"} or folder.name.startswith("ckpt-"):
        folder = folder.parent
    return folder


def model_label(weights: Path) -> str:
    """A readable model name: the run folder's name."""
    return run_folder(weights).name
