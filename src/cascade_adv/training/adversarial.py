"""Adversarial training: Algorithm 1 of K17 and of N18 as one batch-composition step.

Per iteration (after ``delay`` clean-only iterations):

1. the sampler reads m clean images (``replace``) or m - k (``append``), augmented;
2. each of the k adversarial slots gets an epsilon from the configured sampler and
   an adversarial image from its source: a one-step attack on the network being
   trained (in inference mode), a saved set crafted by another network (cascade),
   or a one-step attack on a fixed network (ensemble);
3. :func:`compose_batch` builds ``B'``: ``replace`` puts the k adversarial images
   in place of the first k clean ones (K17), ``append`` puts them in front of the
   m - k clean images, so rows k..2k-1 are their clean twins (N18);
4. the loss is :func:`~cascade_adv.training.loss.unified_loss`.

Saved (cascade) images are used as stored: no random crop (N18 section 6); their
clean twins are the matching training images prepared as at test time (center
crop), so the similarity loss pairs each saved image with its own clean image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.data import ImageDataset, center_crop, to_float
from cascade_adv.errors import CascadeAdvError, ConfigError
from cascade_adv.evaluation.advset import AdversarialSet, load_adversarial_set
from cascade_adv.models import ModelConfig, load_model
from cascade_adv.training.config import AdversarialSection, SourceSection, TrainConfig
from cascade_adv.training.epsilon import sample_eps
from cascade_adv.training.loss import unified_loss

#: Training methods beyond the registry's one-step attacks.
STEP_BOTH = "step_both"


def check_method(method: str) -> None:
    """A training method must be a one-step attack of the registry or ``step_both``."""
    if method == STEP_BOTH:
        return
    valid = [STEP_BOTH, *attacks.names("one_step"), *attacks.names("random")]
    if method not in valid:
        raise ConfigError(f"unknown adversarial training method {method!r}; choose one of: "
                          f"{', '.join(valid)}")


def one_step_examples(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Adversarial images of ``x`` by ``method`` with per-example ``eps`` (pixels).

    ``step_both`` (N18 section 3.3): the first half step_ll, the second step_FGSM.
    """
    if method == STEP_BOTH:
        h = x.shape[0] // 2
        return torch.cat([
            one_step_examples("step_ll", model, x[:h], y[:h], eps[:h], generator),
            one_step_examples("step_fgsm", model, x[h:], y[h:], eps[h:], generator),
        ])
    return attacks.get(method).fn(model, x, y, eps, generator=generator)


def compose_batch(mode: str, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                  y_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's ``B'`` from the clean batch ``x`` and k adversarial images.

    - ``replace`` (K17): ``{X_adv_1..k, X_k+1..X_m}`` - same size as ``x``;
    - ``append`` (N18): ``{X_adv_1..k, X_1..X_m-k}`` - ``x`` grows by k rows and
      rows k..2k-1 are the clean twins of the adversarial rows.
    """
    k = x_adv.shape[0]
    if mode == "replace":
        return torch.cat([x_adv, x[k:]]), torch.cat([y_adv, y[k:]])
    if mode == "append":
        return torch.cat([x_adv, x]), torch.cat([y_adv, y])
    raise ValueError(f"mode must be replace or append, got {mode!r}")


@dataclass
class _Saved:
    sets: list[AdversarialSet]
    offsets: np.ndarray  # cumulative sizes, for sampling rows uniformly over all sets

    def sample(self, count: int, generator: torch.Generator):
        """``count`` rows drawn uniformly over all sets: (images, labels, eps, index)."""
        rows = torch.randint(0, int(self.offsets[-1]), (count,), generator=generator,
                             device=generator.device).cpu().numpy()
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        images, labels, eps, index = [], [], [], []
        for w in np.unique(which):
            local = np.sort(rows[which == w] - self.offsets[w])
            imgs, labs, es = self.sets[w].select(local)
            images.append(imgs)
            labels.append(labs)
            eps.append(es)
            index.append(torch.from_numpy(self.sets[w].index[local]))
        return torch.cat(images), torch.cat(labels), torch.cat(eps), torch.cat(index)


class AdversarialObjective:
    """The per-iteration loss of adversarial training, built from the config."""

    def __init__(self, cfg: TrainConfig, train_set: ImageDataset, model_cfg: ModelConfig,
                 device: torch.device):
        self.adv: AdversarialSection = cfg.adversarial
        self.m = cfg.optim.batch_size
        self.train_set = train_set
        self.model_cfg = model_cfg
        self.device = device
        self.sources = self.adv.resolved_sources()
        self.saved: dict[int, _Saved] = {}
        self.static: dict[int, list[nn.Module]] = {}
        for i, src in enumerate(self.sources):
            if src.kind in ("current", "static"):
                check_method(src.method)
            if src.kind == "saved":
                self.saved[i] = self._load_saved(src)
            if src.kind == "static":
                self.static[i] = [load_model(p, map_location=device).eval() for p in src.paths]
                for p, net in zip(src.paths, self.static[i]):
                    self._check_source_model(p, net.config)

    @property
    def clean_per_batch(self) -> int:
        """Clean images the sampler reads: m (replace) or m - k (append)."""
        return self.m - self.adv.k if self.adv.mode == "append" else self.m

    def _check_source_model(self, path, cfg: ModelConfig) -> None:
        mine = self.model_cfg
        if (cfg.dataset, cfg.in_channels, cfg.input_size) != (mine.dataset, mine.in_channels,
                                                                mine.input_size):
            raise CascadeAdvError(
                f"ensemble source {path} was trained on {cfg.dataset} "
                f"{cfg.in_channels}x{cfg.input_size}x{cfg.input_size}, this run on {mine.dataset} "
                f"{mine.in_channels}x{mine.input_size}x{mine.input_size}; use a matching source"
            )

    def _load_saved(self, src: SourceSection) -> _Saved:
        shape = [self.model_cfg.in_channels, self.model_cfg.input_size, self.model_cfg.input_size]
        sets = [load_adversarial_set(p, dataset=self.train_set.name, split="train",
                                     image_shape=shape) for p in src.paths]
        for path, s in zip(src.paths, sets):
            if int(s.index.max()) >= len(self.train_set):
                raise CascadeAdvError(f"adversarial set {path} indexes image {int(s.index.max())}"
                                      f" of a {len(self.train_set)}-image training split; "
                                      "craft it from this dataset")
        return _Saved(sets, np.cumsum([0] + [len(s) for s in sets]))

    def _twins(self, index: torch.Tensor) -> torch.Tensor:
        """Clean images of saved rows, prepared as at test time (center crop)."""
        images = self.train_set.images[index.to(self.train_set.images.device)]
        size = self.model_cfg.input_size
        if images.shape[-1] != size:
            images = center_crop(images, size)
        return to_float(images).to(self.device)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, iteration: int,
                 generator: torch.Generator):
        adv = self.adv
        if iteration < adv.delay:
            logits = model(x)
            return unified_loss(logits, y, 0, distance=None), logits, y
        k = adv.k
        eps = sample_eps(adv.eps_sampler, k, adv.max_e, generator, x.device)
        x, y = x.clone(), y.clone()
        adv_images, row = [], 0
        for i, src in enumerate(self.sources):
            rows = slice(row, row + src.count)
            if src.kind == "saved":
                images, labels, _, index = self.saved[i].sample(src.count, generator)
                x[rows] = self._twins(index)  # the clean twin of each saved image
                y[rows] = labels.to(y.device)
                adv_images.append(to_float(images.to(x.device)))
            else:
                net = model
                if src.kind == "static":
                    pick = int(torch.randint(0, len(self.static[i]), (1,), generator=generator))
                    net = self.static[i][pick]
                adv_images.append(one_step_examples(src.method, net, x[rows], y[rows], eps[rows],
                                                    generator))
            row += src.count
        x_adv = torch.cat(adv_images)
        batch_x, batch_y = compose_batch(adv.mode, x, y, x_adv, y[:k])
        distance = adv.distance if adv.mode == "append" else None
        if distance is not None and adv.embedding == "features":
            embeddings = model.features(batch_x)
            logits = model.fc(embeddings)
        else:
            embeddings, logits = None, model(batch_x)
        loss = unified_loss(logits, batch_y, k, adv.lam, adv.lam2, distance, adv.norm,
                            embeddings)
        return loss, logits, batch_y

    def divergence_hint(self) -> str:
        if self.adv.distance is not None:
            return (f"lower adversarial.lam2 (now {self.adv.lam2:g}; N18 section 3.4 reports "
                    "divergence for lam2 above 0.3) or optim.lr")
        return "lower optim.lr"
