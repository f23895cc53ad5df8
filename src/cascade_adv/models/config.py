"""The configuration that rebuilds a model; saved beside its weights."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ACTIVATIONS = ("relu", "relu6", "relu_decay", "tanh", "elu")
#: Architectures :func:`cascade_adv.models.build_model` can build.
ARCHS = ("resnet", "inception_v3")
#: The smallest input Inception v3 accepts: 75x75 shrinks to 1x1 before Mixed_7b.
INCEPTION_MIN_SIZE = 75


def check_depth(v: int) -> int:
    """ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if (v - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {v}")
    return v


class ModelConfig(BaseModel):
    """Architecture of a CIFAR-style ResNet (``arch: resnet``, the default, also for
    checkpoints written before ``arch`` had other values) or of Inception v3
    (``arch: inception_v3``, K17's ImageNet model).

    ``depth`` = 6n + 2 (20, 32, 44, 56, 110, ...) applies to the ResNet only;
    ``width`` is K17's width multiplier rho (section 4.3: the number of filters of
    every convolution times rho); ``relu_decay_beta`` is used when
    ``activation == "relu_decay"``.  ``normalize`` is the model's first operation on
    its [0, 1] input: ``per_pixel_mean`` (N18's CIFAR-10), ``inception`` (``2 x - 1``,
    the [-1, 1] scaling of TF-slim's Inception preprocessing that K17 trained with) or
    ``none``.
    """

    model_config = ConfigDict(extra="forbid")

    arch: Literal["resnet", "inception_v3"] = "resnet"
    depth: int = Field(20, ge=8)
    width: float = Field(1.0, gt=0)
    activation: Literal["relu", "relu6", "relu_decay", "tanh", "elu"] = "relu"
    relu_decay_beta: float = Field(0.1, gt=0)
    in_channels: int = Field(3, ge=1)
    input_size: int = Field(32, ge=4)
    num_classes: int = Field(10, ge=2)
    normalize: Literal["per_pixel_mean", "none", "inception"] = "per_pixel_mean"
    dataset: str | None = None  # the dataset it was trained on, when known

    _depth = field_validator("depth")(check_depth)

    @model_validator(mode="after")
    def _input_fits(self) -> ModelConfig:
        if self.arch == "inception_v3" and self.input_size < INCEPTION_MIN_SIZE:
            raise ValueError(
                f"Inception v3 needs inputs of at least {INCEPTION_MIN_SIZE}x"
                f"{INCEPTION_MIN_SIZE}, got input_size {self.input_size}; raise the image size"
            )
        return self
