"""The configuration that rebuilds a model; saved beside its weights."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ACTIVATIONS = ("relu", "relu6", "relu_decay", "tanh", "elu")


def check_depth(v: int) -> int:
    """ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if (v - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {v}")
    return v


class ModelConfig(BaseModel):
    """Architecture of a CIFAR-style ResNet.

    ``depth`` = 6n + 2 (20, 32, 44, 56, 110, ...); ``width`` is K17's width
    multiplier rho; ``relu_decay_beta`` is used when ``activation == "relu_decay"``.
    """

    model_config = ConfigDict(extra="forbid")

    arch: Literal["resnet"] = "resnet"
    depth: int = Field(20, ge=8)
    width: float = Field(1.0, gt=0)
    activation: Literal["relu", "relu6", "relu_decay", "tanh", "elu"] = "relu"
    relu_decay_beta: float = Field(0.1, gt=0)
    in_channels: int = Field(3, ge=1)
    input_size: int = Field(32, ge=4)
    num_classes: int = Field(10, ge=2)
    normalize: Literal["per_pixel_mean", "none"] = "per_pixel_mean"
    dataset: str | None = None  # the dataset it was trained on, when known

    _depth = field_validator("depth")(check_depth)
