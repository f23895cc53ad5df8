"""Models: CIFAR-style ResNet-(6n+2) and Inception v3 (K17's ImageNet model) with width
multiplier, activation choice and normalisation inside the model; saved with their config."""

from cascade_adv.models.config import ACTIVATIONS, ARCHS, ModelConfig
from cascade_adv.models.inception import InceptionV3
from cascade_adv.models.resnet import ReluDecay, ResNet
from cascade_adv.models.serialize import (
    WEIGHTS_FILE,
    build_model,
    check_model_size,
    load_model,
    read_model_config,
    read_model_init,
    resolve_weights,
    save_model,
    weights_hash,
)

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "WEIGHTS_FILE",
    "InceptionV3",
    "ModelConfig",
    "ReluDecay",
    "ResNet",
    "build_model",
    "check_model_size",
    "load_model",
    "read_model_config",
    "read_model_init",
    "resolve_weights",
    "save_model",
    "weights_hash",
]
