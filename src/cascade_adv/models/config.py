"""The configuration that rebuilds a model; saved beside its weights."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ACTIVATIONS = ("relu", "relu6", "relu_decay", "tanh", "elu")
#: Architectures :func:`cascade_adv.models.build_model` can build.
ARCHS = ("resnet", "inception_v3")
#: The smallest input Inception v3 accepts: 75x75 shrinks to 1x1 before Mixed_7b.
INCEPTION_MIN_SIZE = 75

# What :func:`cascade_adv.models.build_model` builds (docs/reliability.md, class 7): ranges
# that keep every size a finite integer, then a limit on the model's size, estimated
# before any memory is allocated (:func:`cascade_adv.models.check_model_size`).
#: The deepest ResNet: He et al.'s deepest CIFAR network, ResNet-1202 (n = 200).
MAX_DEPTH = 1202
#: The largest width multiplier (K17 section 4.3 goes up to rho = 2).
MAX_WIDTH = 64.0
#: The largest input side in pixels (K17's Inception v3 takes 299).
MAX_INPUT_SIZE = 1024
#: The most input channels and classes.
MAX_IN_CHANNELS = 64
MAX_CLASSES = 100_000
#: The most parameters and buffer elements of one model: 4 GB as float32 (ResNet-110 has
#: 1.7 million, K17's Inception v3 24 million).
MAX_PARAMETERS = 1_000_000_000


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

    ``shortcut`` (ResNet only) is how a block that changes shape adds its input: ``A``
    (He et al.'s CIFAR ResNet and the N18 authors' code: 2x2 average pool with stride
    2, new channels zero-padded, no parameters) or ``B`` (1x1 convolution +
    BatchNorm).  Checkpoints written before this option existed are ``B``
    (:func:`cascade_adv.models.serialize.read_model_config` upgrades them).
    ``bn_momentum`` / ``bn_eps`` set every BatchNorm layer (PyTorch's convention:
    momentum is the weight of the new batch); ``None`` keeps the architecture's own
    (ResNet: PyTorch's 0.1 / 1e-5; Inception v3: 0.1 / 1e-3).  TensorFlow's
    ``batch_norm`` defaults, which the N18 authors trained with, are decay 0.999 and
    epsilon 1e-3, i.e. ``bn_momentum: 0.001, bn_eps: 0.001`` (docs/fidelity.md).

    ``init`` is how convolution and linear weights start (:func:`init_weights`):
    ``kaiming`` (Kaiming normal, fan-out, for convolutions; PyTorch's default for the
    linear layer) or ``xavier`` (Glorot uniform for every convolution and linear
    weight, zero biases: ``tf.contrib.layers.xavier_initializer()`` of the N18
    authors' code, docs/fidelity.md).  It only matters when a model is built fresh.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    arch: Literal["resnet", "inception_v3"] = "resnet"
    depth: int = Field(20, ge=8, le=MAX_DEPTH)
    width: float = Field(1.0, gt=0, le=MAX_WIDTH)
    activation: Literal["relu", "relu6", "relu_decay", "tanh", "elu"] = "relu"
    relu_decay_beta: float = Field(0.1, gt=0)
    in_channels: int = Field(3, ge=1, le=MAX_IN_CHANNELS)
    input_size: int = Field(32, ge=4, le=MAX_INPUT_SIZE)
    num_classes: int = Field(10, ge=2, le=MAX_CLASSES)
    normalize: Literal["per_pixel_mean", "none", "inception"] = "per_pixel_mean"
    shortcut: Literal["A", "B"] | None = None
    bn_momentum: float | None = Field(None, gt=0, le=1)
    bn_eps: float | None = Field(None, gt=0)
    init: Literal["kaiming", "xavier"] = "kaiming"
    dataset: str | None = None  # the dataset it was trained on, when known

    _depth = field_validator("depth")(check_depth)

    @model_validator(mode="after")
    def _input_fits(self) -> ModelConfig:
        if self.arch == "resnet" and self.shortcut is None:
            self.shortcut = "A"
        if self.arch != "resnet" and self.shortcut is not None:
            raise ValueError(f"shortcut applies to arch resnet only, not {self.arch}; remove it")
        if self.arch == "inception_v3" and self.input_size < INCEPTION_MIN_SIZE:
            raise ValueError(
                f"Inception v3 needs inputs of at least {INCEPTION_MIN_SIZE}x"
                f"{INCEPTION_MIN_SIZE}, got input_size {self.input_size}; raise the image size"
            )
        return self
