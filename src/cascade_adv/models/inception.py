"""Inception v3 (Szegedy et al., 2016) with K17's width multiplier rho.

K17 section 4: "We adversarially trained an Inception v3 model ... on ImageNet";
section 4.3: "For each experiment we picked a scale factor rho and multiplied the
number of filters in each convolution by rho. In other words rho = 1 means
unchanged Inception v3, rho = 0.5 means Inception with half of the usual number of
filters in convolutions".

The network follows torchvision's ``Inception3`` block for block (stem, Mixed_5b-d =
InceptionA, Mixed_6a = InceptionB, Mixed_6b-e = InceptionC, Mixed_7a = InceptionD,
Mixed_7b-c = InceptionE, global average pooling, dropout, one linear layer) with the
same module names, so at rho = 1 its parameters have torchvision's names, shapes and
count (23,834,568 for 1000 classes without the auxiliary head; the tests compare with
``torchvision.models.inception_v3(aux_logits=False)`` when torchvision imports).
torchvision's module itself is not reused: its blocks hard-code their channel
counts, which rho must scale (every convolution's filters times rho, rounded, at
least 1; the concatenated widths follow), and its convolutions hard-code ReLU, while
K17 appendix C also trains an ELU variant.  So the model needs no torchvision at all.

Differences from torchvision's module, all deliberate:

- images enter in [0, 1]; the model owns its normalisation as its first layer
  (``normalize: inception`` = ``2 x - 1``, TF-slim's Inception preprocessing that K17
  used; or a per-pixel mean; or none), so attacks never see normalised tensors;
- the activation is ``ModelConfig.activation`` (ReLU by default);
- dropout before the last layer drops 20% (TF-slim's ``dropout_keep_prob=0.8``, the
  code K17 trained with; torchvision uses 50%);
- no auxiliary classifier (TF-slim trains with one at loss weight 0.4; it does not
  change the network that is evaluated);
- convolutions start from He-normal weights like the ResNet here.

The smallest input is 75x75 (it shrinks to 1x1 before Mixed_7b); K17 used 299x299.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv.models.config import ModelConfig
from cascade_adv.models.resnet import (
    batch_norm,
    init_weights,
    make_activation,
    make_normalization,
    set_mean_image,
)

#: Dropout before the last layer (TF-slim's Inception v3 keeps 80%).
DROPOUT = 0.2


class BasicConv2d(nn.Module):
    """Convolution without bias, batch normalisation (eps 0.001 unless ``cfg.bn_eps``),
    activation."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = batch_norm(cout, cfg, eps=0.001)
        self.act = make_activation(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


Width = Callable[[int], int]


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_features: int, w: Width, cfg: ModelConfig):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(64), cfg, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, w(48), cfg, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(w(48), w(64), cfg, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), cfg, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), cfg, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), cfg, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, w(pool_features), cfg, kernel_size=1)
        self.out_channels = w(64) + w(64) + w(96) + w(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int, w: Width, cfg: ModelConfig):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, w(384), cfg, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), cfg, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), cfg, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), cfg, kernel_size=3, stride=2)
        self.out_channels = w(384) + w(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``c7`` inner filters)."""

    def __init__(self, cin: int, c7: int, w: Width, cfg: ModelConfig):
        super().__init__()
        c7 = w(c7)
        self.branch1x1 = BasicConv2d(cin, w(192), cfg, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, cfg, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, cfg, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, w(192), cfg, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, cfg, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, cfg, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, cfg, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, cfg, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, w(192), cfg, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, w(192), cfg, kernel_size=1)
        self.out_channels = 4 * w(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int, w: Width, cfg: ModelConfig):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, w(192), cfg, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(w(192), w(320), cfg, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, w(192), cfg, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(w(192), w(192), cfg, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(w(192), w(192), cfg, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(w(192), w(192), cfg, kernel_size=3, stride=2)
        self.out_channels = w(320) + w(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3 / 3x1 filter banks."""

    def __init__(self, cin: int, w: Width, cfg: ModelConfig):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(320), cfg, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, w(384), cfg, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(w(384), w(384), cfg, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(w(384), w(384), cfg, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, w(448), cfg, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(448), w(384), cfg, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(w(384), w(384), cfg, kernel_size=(1, 3),
                                           padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(w(384), w(384), cfg, kernel_size=(3, 1),
                                           padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, w(192), cfg, kernel_size=1)
        self.out_channels = w(320) + 4 * w(384) + w(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionV3(nn.Module):
    """Inception v3 with width multiplier ``cfg.width`` (rho) mapping [0, 1] images to
    logits; ``cfg.arch`` must be ``"inception_v3"``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch != "inception_v3":
            raise ValueError(f"InceptionV3 needs arch inception_v3, got {cfg.arch!r}")
        self.config = cfg
        rho = cfg.width

        def w(channels: int) -> int:
            return max(1, round(channels * rho))

        self.normalize = make_normalization(cfg)
        self.Conv2d_1a_3x3 = BasicConv2d(cfg.in_channels, w(32), cfg, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(w(32), w(32), cfg, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(w(32), w(64), cfg, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(w(64), w(80), cfg, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(w(80), w(192), cfg, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        c = w(192)
        self.Mixed_5b = InceptionA(c, 32, w, cfg)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, w, cfg)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, w, cfg)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, w, cfg)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, w, cfg)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, w, cfg)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, w, cfg)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, w, cfg)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, w, cfg)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, w, cfg)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, w, cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=DROPOUT)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, cfg.num_classes)
        init_weights(self, cfg.init)

    _BODY = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
             "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
             "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

    def set_mean_image(self, mean: torch.Tensor) -> None:
        """Store the per-pixel mean image (``normalize: per_pixel_mean`` only)."""
        set_mean_image(self.normalize, mean)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before dropout and the final linear layer (2048 x rho)."""
        x = self.normalize(x)
        for name in self._BODY:
            x = getattr(self, name)(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of N18 section 3.1: the logits."""
        return self(x)
