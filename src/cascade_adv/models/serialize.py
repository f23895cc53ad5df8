"""Saving and loading a model together with the config that rebuilds it.

Weights are stored with safetensors (no code runs on load); the model config is
kept as JSON in the safetensors metadata, so one file rebuilds the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from cascade_adv.errors import CheckpointError, ConfigError
from cascade_adv.io import atomic_write_bytes
from cascade_adv.models.config import MAX_PARAMETERS, ModelConfig
from cascade_adv.models.inception import InceptionV3
from cascade_adv.models.resnet import ResNet
from cascade_adv.textdata import load_json

WEIGHTS_FILE = "model.safetensors"


def _construct(cfg: ModelConfig) -> ResNet | InceptionV3:
    return InceptionV3(cfg) if cfg.arch == "inception_v3" else ResNet(cfg)


def parameter_count(cfg: ModelConfig) -> int:
    """The number of parameters and buffer elements of a model of ``cfg``, counted on
    PyTorch's ``meta`` device: shapes only, no memory (ResNet-1202 in under a second)."""
    with torch.device("meta"):
        model = _construct(cfg)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def check_model_size(cfg: ModelConfig, fix: str = "lower the width or depth") -> int:
    """:func:`parameter_count` of ``cfg``, or :class:`ConfigError` naming the limit and
    ``fix`` when it is over :data:`~cascade_adv.models.config.MAX_PARAMETERS` (checked
    before a model is built, so an absurd width is refused instead of allocated)."""
    n = parameter_count(cfg)
    if n > MAX_PARAMETERS:
        shape = f"{cfg.in_channels}x{cfg.input_size}x{cfg.input_size}"
        what = "inception_v3" if cfg.arch == "inception_v3" else f"resnet depth {cfg.depth}"
        raise ConfigError(
            f"a {what} of width {cfg.width:g} on {shape} inputs with {cfg.num_classes} classes "
            f"would hold {n:,} parameters and buffer values ({4 * n / 1e9:,.1f} GB as float32), "
            f"more than the limit of {MAX_PARAMETERS:,} ({4 * MAX_PARAMETERS / 1e9:g} GB); "
            f"{fix}")
    return n


def build_model(cfg: ModelConfig | dict) -> ResNet | InceptionV3:
    """A freshly initialised model for ``cfg``: a :class:`ResNet` or, for
    ``arch: inception_v3``, an :class:`InceptionV3`; :class:`ConfigError` for a model
    over the size limit (:func:`check_model_size`)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig(**cfg)
    check_model_size(cfg)
    return _construct(cfg)


def save_model(model: ResNet | InceptionV3, path: str | os.PathLike, *, init: str = "") -> None:
    """Write ``model``'s weights and config to ``path`` (a .safetensors file), atomically.

    ``init`` records where the weights started (see :func:`read_model_init`).
    """
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "cascade-adv/model/1", "config": model.config.model_dump_json()}
    if init:
        meta["init"] = init
    # serialized in memory first: a full disk is then an OSError of a plain write (one
    # line with the size), not a failure inside the safetensors writer
    atomic_write_bytes(path, save(state, metadata=meta))


def _read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); pass a checkpoint written by cascade-adv"
        ) from None


def read_model_init(path: str | os.PathLike) -> str:
    """Where a model's training started: the weights hash of the run it was initialised
    from (``init_from``, e.g. a shared pre-trained start), or ``seed:N`` for a model
    trained from a random initialisation with seed N; ``""`` when unknown.

    Two models share their initialisation when these are equal and not empty: the
    case that N18 tables 4 and 8 keep apart ("Models with the same number in their
    name share the same initialization").
    """
    return _read_metadata(resolve_weights(path)).get("init", "")


def _upgrade(stored: dict) -> dict:
    """A stored model config in today's form: ResNets saved before ``shortcut`` existed
    were built with option B (1x1 convolution) shortcuts."""
    if isinstance(stored, dict) and stored.get("arch", "resnet") == "resnet":
        stored.setdefault("shortcut", "B")
    return stored


def read_model_config(path: str | os.PathLike) -> ModelConfig:
    """The model config stored in a weights file."""
    path = resolve_weights(path)
    meta = _read_metadata(path)
    if "config" not in meta:
        raise CheckpointError(f"{path} holds no model config; pass a checkpoint written by cascade-adv")
    try:
        return ModelConfig(**_upgrade(load_json(meta["config"], "its model config", fix="")))
    except (ValueError, TypeError) as exc:  # textdata's ConfigError, pydantic's ValidationError
        if isinstance(exc, ValidationError):  # the field and the range it is outside of
            err = exc.errors()[0]
            first = f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}"
        else:
            first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path} holds an invalid model config ({first}); it is damaged or was not "
            "written by cascade-adv"
        ) from None


def load_model(
    path: str | os.PathLike,
    expected: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
) -> ResNet | InceptionV3:
    """Rebuild the model stored at ``path`` (file or checkpoint folder).

    If ``expected`` is given, the stored architecture must equal it; otherwise a
    :class:`CheckpointError` names the differing fields.
    """
    path = resolve_weights(path)
    cfg = read_model_config(path)
    if expected is not None and expected != cfg:
        diff = {
            k: (v, getattr(expected, k))
            for k, v in cfg.model_dump().items()
            if getattr(expected, k) != v
        }
        detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {path} is another architecture ({detail}); "
            "use the config it was trained with or another checkpoint"
        )
    try:  # before any memory is allocated
        check_model_size(cfg, fix="it is damaged or was not written by cascade-adv")
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds a model config that cannot be built: "
                              f"{exc}") from None
    model = _construct(cfg)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); it is damaged") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = " ".join(lines[:2])[:300]
        raise CheckpointError(f"checkpoint {path} does not fit its model ({detail}); it is damaged") from None
    return model.to(map_location)


def weights_hash(path: str | os.PathLike) -> str:
    """Short sha256 of a weights file's content: identifies the source of saved results.

    safetensors writes its metadata map in a random order (two saves of the same
    model gave different bytes), so the digest covers the JSON header re-serialised
    with sorted keys plus the tensor bytes: the same weights and config always give
    the same hash, any change to either gives another.  A file that is not valid
    safetensors is hashed as raw bytes.
    """
    path = resolve_weights(path)
    data = path.read_bytes()
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or 8 + n > len(data):
            raise ValueError("short file")
        header = load_json(data[8 : 8 + n], "header", max_chars=n)
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(b"safetensors\0" + canonical + b"\0" + data[8 + n :])
    except ValueError:  # not safetensors (textdata's ConfigError included)
        digest = hashlib.sha256(data)
    return digest.hexdigest()[:16]


def resolve_weights(path: str | os.PathLike) -> Path:
    """The weights file for a .safetensors path, a checkpoint folder or a run folder.

    A run folder resolves to its ``final/`` weights, or else to the checkpoint that
    ``checkpoints/latest`` names (an unfinished run).
    """
    path = Path(path)
    candidates = [path]
    if path.is_dir():
        candidates = [path / WEIGHTS_FILE, path / "final" / WEIGHTS_FILE]
        latest = path / "checkpoints" / "latest"
        if latest.is_file():
            candidates.append(latest.parent / latest.read_text().strip() / WEIGHTS_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no model weights at {path}; pass a run folder written by 'cascade-adv train', "
        "one of its checkpoint folders, or a .safetensors file"
    )
