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

Under ``torchrun`` (``world`` > 1) every rank receives the same global batch and
keeps its share: the adversarial rows ``rank, rank + W, ...``, their twins and a
contiguous ``1/W`` of the other clean rows, with the global normaliser; see
:mod:`cascade_adv.training.distributed` for what stays exact.

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
from cascade_adv.models import ModelConfig, load_model
from cascade_adv.results.advsets import AdversarialSet, check_epsilon_ball, load_adversarial_set
from cascade_adv.training.config import AdversarialSection, SourceSection, TrainConfig
from cascade_adv.training.distributed import unwrap
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
    with attacks.trusted():  # eps drawn by the sampler: used on its device, unchecked
        return attacks.get(method).fn(model, x, y, eps, generator=generator)


def draws_random(method: str) -> bool:
    """Whether training method ``method`` draws from its generator (step_rnd,
    random_sign, ...), as its registry entry declares.  Under DDP such a method runs on
    its whole block of rows on every rank, so the draws equal a single process's."""
    return method != STEP_BOTH and attacks.get(method).stochastic


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the input of the final layer ``fc`` (the pooled features; for Inception
    v3 in training, after its dropout) from one ordinary forward pass of ``model``: taken
    by a hook on ``fc``, so a DDP-wrapped model runs its own forward (its gradients are
    averaged) and one process and N processes compute the same network."""
    net = unwrap(model)
    seen: list[torch.Tensor] = []
    handle = net.fc.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, seen[0]


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


def adversarial_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    *,
    mode: str = "append",
    method: str = "step_ll",
    max_e: float = 16.0,
    eps_sampler: str = "n18",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 of K17 (``mode="replace"``) and N18 (``mode="append"``) for one batch,
    with any ``nn.Module`` mapping [0, 1] images to logits and any batch source::

        eps_i ~ eps_sampler(max_e)                  one epsilon per adversarial example
        X_adv_i = method(model, X_i, y_i, eps_i)    i = 1..k, model in inference mode
        B' = {X_adv_1..k, X_k+1..X_m}               replace (K17): same size as x
        B' = {X_adv_1..k, X_1..X_m}                 append (N18): rows k..2k-1 are the twins

    Returns ``(x', y')``; pass them and ``k`` to :func:`~cascade_adv.training.loss.unified_loss`
    (``distance`` needs ``mode="append"``).  For N18's m = 128, k = 64, read 64 clean
    images and append; for K17's, read 128 and replace.  ``method`` is a one-step
    attack of the registry or ``step_both``; ``eps_sampler`` one of
    :data:`cascade_adv.training.epsilon.SAMPLERS`.
    """
    check_method(method)
    if mode not in ("append", "replace"):
        raise ConfigError(f"mode must be append or replace, got {mode!r}")
    if not 1 <= k <= x.shape[0]:
        raise ConfigError(f"k={k} must lie in [1, {x.shape[0]}] (the clean images given)")
    eps = sample_eps(eps_sampler, k, max_e, generator, x.device)
    x_adv = one_step_examples(method, model, x[:k], y[:k], eps, generator)
    return compose_batch(mode, x, y, x_adv, y[:k])


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
    """The per-iteration loss of adversarial training, built from the config.

    ``rank`` / ``world``: this process's share under DDP (see the module docstring);
    the loss it returns is ``world`` times its share of the global loss, so that
    DDP's average of the ranks' gradients is the single-process gradient.
    """

    #: the training loop passes the whole global batch; the objective keeps its rows
    shards_batch = True

    def __init__(self, cfg: TrainConfig, train_set: ImageDataset, model_cfg: ModelConfig,
                 device: torch.device, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
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
                                     image_shape=shape, num_classes=self.model_cfg.num_classes)
                for p in src.paths]
        for path, s in zip(src.paths, sets):
            if int(s.index.max()) >= len(self.train_set):
                raise CascadeAdvError(f"adversarial set {path} indexes image {int(s.index.max())}"
                                      f" of a {len(self.train_set)}-image training split; "
                                      "craft it from this dataset")
            # beyond the hash: every image inside its epsilon ball, labels its twin's
            check_epsilon_ball(s, self.train_set.images, self.train_set.labels, path=path)
        return _Saved(sets, np.cumsum([0] + [len(s) for s in sets]))

    def _twins(self, index: torch.Tensor) -> torch.Tensor:
        """Clean images of saved rows, prepared as at test time (center crop)."""
        images = self.train_set.images[index.to(self.train_set.images.device)]
        size = self.model_cfg.input_size
        if images.shape[-1] != size:
            images = center_crop(images, size)
        return to_float(images).to(self.device)

    def _share(self, start: int, count: int) -> slice:
        """This rank's contiguous ``1/W`` of rows ``start .. start + count - 1``."""
        per = count // self.world
        return slice(start + self.rank * per, start + (self.rank + 1) * per)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.world if self.world > 1 else loss

    def _attack(self, method: str, net: nn.Module, x, y, eps, rows: slice, mine: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """Adversarial images of this rank's rows ``mine`` of the source block ``rows``."""
        if self.world == 1:
            return one_step_examples(method, net, x[rows], y[rows], eps[rows], generator)
        a, b = rows.start, rows.stop
        h = a + (b - a) // 2  # step_both: the block's first half step_ll, the rest step_fgsm
        parts = [("step_ll", a, h), ("step_fgsm", h, b)] if method == STEP_BOTH \
            else [(method, a, b)]
        out = []
        for name, lo, hi in parts:
            sel = mine[(mine >= lo) & (mine < hi)]
            if draws_random(name):  # the whole block, as one process draws it
                whole = one_step_examples(name, net, x[lo:hi], y[lo:hi], eps[lo:hi], generator)
                out.append(whole[sel - lo])
            elif sel.numel():
                out.append(one_step_examples(name, net, x[sel], y[sel], eps[sel], generator))
        return torch.cat(out) if out else x[mine]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, iteration: int,
                 generator: torch.Generator):
        """``x, y``: the global batch (every rank gets the same one); ``model`` may be
        DDP-wrapped.  Returns the loss, the logits and labels of this rank's rows."""
        adv = self.adv
        if iteration < adv.delay:
            n = x.shape[0]
            x, y = x[self._share(0, n)], y[self._share(0, n)]
            logits = model(x)
            loss = unified_loss(logits, y, 0, distance=None, normaliser=n)
            return self._scaled(loss), logits, y
        k = adv.k
        eps = sample_eps(adv.eps_sampler, k, adv.max_e, generator, x.device)
        x, y = x.clone(), y.clone()
        net = unwrap(model)  # attacks run on the plain module, in inference mode
        mine = torch.arange(self.rank, k, self.world, device=x.device)  # my adversarial rows
        adv_images, row = [], 0
        for i, src in enumerate(self.sources):
            rows = slice(row, row + src.count)
            if src.kind == "saved":
                images, labels, _, index = self.saved[i].sample(src.count, generator)
                x[rows] = self._twins(index)  # the clean twin of each saved image
                y[rows] = labels.to(y.device)
                if self.world > 1:
                    own = mine[(mine >= rows.start) & (mine < rows.stop)] - rows.start
                    images = images[own.to(images.device)]
                adv_images.append(to_float(images.to(x.device)))
            else:
                net_i = net
                if src.kind == "static":
                    pick = int(torch.randint(0, len(self.static[i]), (1,), generator=generator))
                    net_i = self.static[i][pick]
                adv_images.append(self._attack(src.method, net_i, x, y, eps, rows, mine,
                                               generator))
            row += src.count
        x_adv = torch.cat(adv_images)
        if self.world > 1:  # my twins, then my share of the other clean rows
            others = torch.arange(x.shape[0], device=x.device)[self._share(k, x.shape[0] - k)]
            keep = torch.cat([mine, others])
            x, y = x[keep], y[keep]
        k_mine = x_adv.shape[0]
        batch_x, batch_y = compose_batch(adv.mode, x, y, x_adv, y[:k_mine])
        distance = adv.distance if adv.mode == "append" else None
        if distance is not None and adv.embedding == "features":
            logits, embeddings = logits_and_features(model, batch_x)
        else:
            embeddings, logits = None, model(batch_x)
        loss = unified_loss(logits, batch_y, k_mine, adv.lam, adv.lam2, distance, adv.norm,
                            embeddings, normaliser=(self.m - k) + adv.lam * k,
                            normalize_embedding=adv.normalize_embedding)
        return self._scaled(loss), logits, batch_y

    def divergence_hint(self) -> str:
        if self.adv.distance == "pivot_detached" and not self.adv.normalize_embedding:
            return ("the detached pivot grows the logits without bound at N18's settings "
                    "(docs/results.md): set adversarial.normalize_embedding=true, use "
                    "adversarial.distance=pivot_released (the authors' code), or lower "
                    f"adversarial.lam2 (now {self.adv.lam2:g}) or optim.lr")
        if self.adv.distance is not None:
            return (f"lower adversarial.lam2 (now {self.adv.lam2:g}; N18 section 3.4 reports "
                    "divergence for lam2 above 0.3) or optim.lr")
        return "lower optim.lr"
