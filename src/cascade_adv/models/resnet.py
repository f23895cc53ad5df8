"""CIFAR-style ResNet-(6n+2) of He et al. (2016), as used by N18 section 3.3.

Three stages of ``n`` basic blocks with 16, 32, 64 channels (times the width
multiplier ``rho`` of K17 section 4.3), stride 2 between stages, global average
pooling and one linear layer giving the logits.  Shortcuts that change shape are
option A of He et al. by default (2x2 average pool, stride 2, zero-padded channels,
no parameters: what the N18 authors' code trains) or option B (1x1 convolution with
batch normalisation), by ``ModelConfig.shortcut``; see docs/fidelity.md.  Works for any input size (8x8
digits, 24x24 CIFAR-10 crops, 28x28 MNIST, 32x32 CIFAR-10) and any number of
channels.

Images enter as float tensors in [0, 1].  The model owns its normalisation as its
first operation: subtracting the per-pixel mean image of the training set (N18:
"subtract per-pixel mean values"; footnote 3: attacks clip in the un-normalised
image space), so attacks never see normalised tensors.  The embedding that N18's
similarity loss compares is the layer right before the softmax, i.e. the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv.models.config import ModelConfig


class ReluDecay(nn.Module):
    """ReluDecay-beta of K17 appendix D: ``relu(x) / (1 + beta * relu(x) ** 2)``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        return r / (1.0 + self.beta * r * r)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def make_activation(cfg: ModelConfig) -> nn.Module:
    """The activation named by ``cfg.activation`` (K17 table 7's choices)."""
    if cfg.activation == "relu":
        return nn.ReLU()
    if cfg.activation == "relu6":
        return nn.ReLU6()
    if cfg.activation == "relu_decay":
        return ReluDecay(cfg.relu_decay_beta)
    if cfg.activation == "tanh":
        return nn.Tanh()
    if cfg.activation == "elu":
        return nn.ELU()
    raise ValueError(f"unknown activation {cfg.activation!r}")


def batch_norm(channels: int, cfg: ModelConfig, eps: float = 1e-5) -> nn.BatchNorm2d:
    """A BatchNorm layer with ``cfg.bn_momentum`` / ``cfg.bn_eps`` where set, else
    PyTorch's momentum 0.1 and the architecture's ``eps``."""
    return nn.BatchNorm2d(
        channels,
        eps=cfg.bn_eps if cfg.bn_eps is not None else eps,
        momentum=cfg.bn_momentum if cfg.bn_momentum is not None else 0.1,
    )


class PadShortcut(nn.Module):
    """Option A shortcut of He et al. (2016): ``stride x stride`` average pool, then the
    ``cout - cin`` new channels appended as zeros.  No parameters.  The N18 authors'
    ``residual_block`` (``resnet_layers.py``): ``tf.nn.avg_pool`` with a 2x2 window and
    stride, then ``tf.pad`` of the channel axis at its end."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.extra}"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = batch_norm(cout, cfg)
        self.act1 = make_activation(cfg)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = batch_norm(cout, cfg)
        self.act2 = make_activation(cfg)
        self.shortcut: nn.Module = nn.Identity()
        if (stride != 1 or cin != cout) and cfg.shortcut == "A":
            if cout < cin:
                raise ValueError(f"option A shortcuts cannot shrink {cin} to {cout} channels; "
                                 "use shortcut B")
            self.shortcut = PadShortcut(cin, cout, stride)
        elif stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), batch_norm(cout, cfg)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PerPixelMean(nn.Module):
    """Subtracts a fixed mean image (a buffer saved with the weights); identity if None."""

    def __init__(self, channels: int, size: tuple[int, int], enabled: bool):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros(channels, *size), persistent=enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean if self.enabled else x


class InceptionScale(nn.Module):
    """``2 x - 1``: [0, 1] images to [-1, 1], the scaling of TF-slim's Inception
    preprocessing (K17's ImageNet models).  No parameters or buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0


def make_normalization(cfg: ModelConfig) -> nn.Module:
    """The model's first layer for ``cfg.normalize`` (see :class:`ModelConfig`)."""
    if cfg.normalize == "inception":
        return InceptionScale()
    return PerPixelMean(
        cfg.in_channels, (cfg.input_size, cfg.input_size), cfg.normalize == "per_pixel_mean"
    )


def set_mean_image(normalize: nn.Module, mean: torch.Tensor) -> None:
    """Copy the per-pixel mean image into a :class:`PerPixelMean` layer (center-cropped
    to its size); see :meth:`ResNet.set_mean_image`."""
    if not hasattr(normalize, "mean"):
        raise ValueError("this model does not subtract a per-pixel mean (normalize is not "
                         "per_pixel_mean)")
    c, h, w = normalize.mean.shape
    if mean.dim() != 3 or mean.shape[0] != c or mean.shape[1] < h or mean.shape[2] < w:
        raise ValueError(f"mean image of shape {tuple(mean.shape)} does not fit input {c}x{h}x{w}")
    top, left = (mean.shape[1] - h) // 2, (mean.shape[2] - w) // 2
    with torch.no_grad():
        normalize.mean.copy_(mean[:, top : top + h, left : left + w])


def init_weights(model: nn.Module, scheme: str) -> None:
    """Initialise every convolution, linear and BatchNorm layer of ``model``.

    ``kaiming``: Kaiming normal (fan-out) convolutions, linear layers as PyTorch builds
    them; ``xavier``: Glorot uniform, bound ``sqrt(6 / (fan_in + fan_out))``, for every
    convolution and linear weight and zero biases (the N18 authors' code, which uses
    ``tf.contrib.layers.xavier_initializer()``). BatchNorm starts at scale 1, shift 0.
    """
    if scheme not in ("kaiming", "xavier"):
        raise ValueError(f"unknown weight initialisation {scheme!r}; choose kaiming or xavier")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        elif scheme == "xavier":
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet(nn.Module):
    """ResNet-``depth`` (depth = 6n + 2) mapping images in [0, 1] to logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        n = (cfg.depth - 2) // 6
        widths = [max(1, round(c * cfg.width)) for c in (16, 32, 64)]
        self.normalize = make_normalization(cfg)
        self.conv1 = nn.Conv2d(cfg.in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = batch_norm(widths[0], cfg)
        self.act1 = make_activation(cfg)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, cfg))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, cfg.num_classes)
        init_weights(self, cfg.init)

    def set_mean_image(self, mean: torch.Tensor) -> None:
        """Store the per-pixel mean image ([C, H, W] in [0, 1]) used by the first layer.

        A mean image larger than the input (CIFAR-10: 32x32 mean, 24x24 crops) is
        center-cropped: exact for the center-cropped test images, and within the
        smooth variation of the mean image for random training crops.
        """
        set_mean_image(self.normalize, mean)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the final linear layer."""
        x = self.act1(self.bn1(self.conv1(self.normalize(x))))
        x = self.blocks(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of N18 section 3.1: the layer right before the softmax (logits)."""
        return self(x)
