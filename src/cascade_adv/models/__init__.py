"""Models: CIFAR-style ResNet-(6n+2) with width multiplier, activation choice and
per-pixel-mean normalisation inside the model; saved with their config."""

from cascade_adv.models.config import ACTIVATIONS, ModelConfig
from cascade_adv.models.resnet import ReluDecay, ResNet
from cascade_adv.models.serialize import (
    WEIGHTS_FILE,
    build_model,
    load_model,
    read_model_config,
    read_model_init,
    resolve_weights,
    save_model,
    weights_hash,
)

__all__ = [
    "ACTIVATIONS",
    "WEIGHTS_FILE",
    "ModelConfig",
    "ReluDecay",
    "ResNet",
    "build_model",
    "load_model",
    "read_model_config",
    "read_model_init",
    "resolve_weights",
    "save_model",
    "weights_hash",
]
