"""Adversarial training: Algorithm 1 of K17 and of N18 as one batch-composition step.

Per iteration (after ``delay`` clean-only iterations), :func:`adversarial_batch`:

1. the sampler reads m clean images (``replace``) or m - k (``append``), augmented;
   the rows of a saved (cascade) source hold images drawn from its set instead, each
   with the clean twin it was crafted from;
2. each of the k adversarial slots gets an epsilon from the configured sampler and
   an adversarial image from its source: a one-step attack (or a method with a random
   start, :mod:`cascade_adv.training.methods`: R+FGSM, R+Step-LL, FGSM with a random
   start, PGD) on the network being trained (in inference mode), the saved image
   (cascade), or such an attack on a fixed network (ensemble);
3. :func:`compose_batch` builds ``B'``: ``replace`` puts the k adversarial images
   in place of the first k clean ones (K17), ``append`` puts them in front of the
   m - k clean images, so rows k..2k-1 are their clean twins (N18);
4. the loss is :func:`~cascade_adv.training.loss.unified_loss`.

Under ``torchrun`` (``world`` > 1) every rank receives the same global batch, runs
the same algorithm (attacking only the adversarial rows it keeps) and keeps its
share of ``B'`` (:class:`~cascade_adv.training.distributed.BatchShard`): the
adversarial rows ``rank, rank + W, ...``, their twins and a contiguous ``1/W`` of the
other clean rows, with the global normaliser; see
:mod:`cascade_adv.training.distributed` for what stays exact.

Saved (cascade) images are used as stored: no random crop (N18 section 6); their
clean twins are the matching training images prepared as at test time (center
crop), so the similarity loss pairs each saved image with its own clean image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
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
from cascade_adv.training.distributed import BatchShard, unwrap
from cascade_adv.training.epsilon import sample_eps
from cascade_adv.training.loss import unified_loss
from cascade_adv.training.methods import METHODS, MethodOptions

#: Training methods beyond the registry's one-step attacks.
STEP_BOTH = "step_both"


def check_method(method: str) -> None:
    """A training method must be a one-step attack of the registry, ``step_both`` or a
    method of :data:`~cascade_adv.training.methods.METHODS`."""
    if method == STEP_BOTH or method in METHODS:
        return
    valid = [STEP_BOTH, *METHODS, *attacks.names("one_step"), *attacks.names("random")]
    if method not in valid:
        raise ConfigError(f"unknown adversarial training method {method!r}; choose one of: "
                          f"{', '.join(valid)}")


def one_step_examples(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      eps: torch.Tensor, generator: torch.Generator,
                      options: MethodOptions | None = None) -> torch.Tensor:
    """Adversarial images of ``x`` by training method ``method`` with per-example
    ``eps`` (pixels); ``options`` (alpha as a fraction of eps, steps, random start) for
    the methods of :data:`~cascade_adv.training.methods.METHODS`, ignored by the others.

    ``step_both`` (N18 section 3.3): the first half step_ll, the second step_FGSM.
    """
    if method == STEP_BOTH:
        h = x.shape[0] // 2
        return torch.cat([
            one_step_examples("step_ll", model, x[:h], y[:h], eps[:h], generator),
            one_step_examples("step_fgsm", model, x[h:], y[h:], eps[h:], generator),
        ])
    with attacks.trusted():  # eps drawn by the sampler: used on its device, unchecked
        if method in METHODS:
            return METHODS[method](model, x, y, eps, generator, options)
        return attacks.get(method).fn(model, x, y, eps, generator=generator)


def draws_random(method: str, options: MethodOptions | None = None) -> bool:
    """Whether training method ``method`` draws from its generator (step_rnd,
    random_sign, a random start...), as its registry entry or its
    :class:`~cascade_adv.training.methods.Method` declares.  Under DDP such a method
    runs on its whole block of rows on every rank, so the draws equal a single
    process's."""
    if method in METHODS:
        return METHODS[method].draws_random(options)
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


#: ``craft(model, x, y, eps, generator) -> images``: adversarial images of rows ``x``
Craft = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor,
                  "torch.Generator | None"], torch.Tensor]


def adversarial_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    *,
    mode: str = "append",
    method: str | Craft = "step_ll",
    max_e: float = 16.0,
    eps_sampler: str = "n18",
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
    options: MethodOptions | None = None,
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
    attack of the registry, ``step_both``, a method with a random start
    (``r_fgsm``, ``r_step_ll``, ``fgsm_rs``, ``pgd``; ``options`` sets its alpha, steps
    and start) or a :data:`Craft` callable (``train()`` passes one that mixes the
    config's sources); ``eps_sampler`` one of
    :data:`cascade_adv.training.epsilon.SAMPLERS`; ``eps`` (k values, pixels) replaces
    the drawn epsilons.
    """
    if not callable(method):
        check_method(method)
    if mode not in ("append", "replace"):
        raise ConfigError(f"mode must be append or replace, got {mode!r}")
    if not 1 <= k <= x.shape[0]:
        raise ConfigError(f"k={k} must lie in [1, {x.shape[0]}] (the clean images given)")
    if eps is None:
        eps = sample_eps(eps_sampler, k, max_e, generator, x.device)
    elif eps.shape != (k,):
        raise ConfigError(f"eps must hold one epsilon per adversarial example, shape ({k},); "
                          f"got {tuple(eps.shape)}")
    craft = method if callable(method) else functools.partial(one_step_examples, method,
                                                              options=options)
    x_adv = craft(model, x[:k], y[:k], eps, generator)
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
    """The per-iteration loss of adversarial training, built from the config:
    :func:`adversarial_batch` with the config's sources as its ``method``, this rank's
    rows of the batch (:class:`~cascade_adv.training.distributed.BatchShard`), then
    :func:`~cascade_adv.training.loss.unified_loss`.

    ``rank`` / ``world``: this process's share under DDP (see the module docstring);
    the loss it returns is ``world`` times its share of the global loss, so that
    DDP's average of the ranks' gradients is the single-process gradient.
    """

    #: the training loop passes the whole global batch; the objective keeps its rows
    shards_batch = True

    def __init__(self, cfg: TrainConfig, train_set: ImageDataset, model_cfg: ModelConfig,
                 device: torch.device, rank: int = 0, world: int = 1):
        self.shard = BatchShard(rank, world)
        self.adv: AdversarialSection = cfg.adversarial
        self.options = self.adv.method_options()
        self.m = cfg.optim.batch_size
        self.train_set = train_set
        self.model_cfg = model_cfg
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

    def _blocks(self) -> Iterator[tuple[int, SourceSection, slice]]:
        """Each source with its block of the k adversarial rows, in config order."""
        row = 0
        for i, src in enumerate(self.sources):
            yield i, src, slice(row, row + src.count)
            row += src.count

    def _saved_rows(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """Rows of saved (cascade) sources: drawn from their sets, with the clean twin of
        each saved image, prepared as at test time (center crop), in place of the clean
        row.  Returns ``x``, ``y`` and the saved images by source."""
        images: dict[int, torch.Tensor] = {}
        if not self.saved:
            return x, y, images
        x, y = x.clone(), y.clone()
        for i, _src, rows in self._blocks():
            if i in self.saved:
                saved, labels, _, index = self.saved[i].sample(rows.stop - rows.start, generator)
                twins = self.train_set.images[index.to(self.train_set.images.device)]
                if twins.shape[-1] != self.model_cfg.input_size:
                    twins = center_crop(twins, self.model_cfg.input_size)
                x[rows], y[rows] = to_float(twins).to(x.device), labels.to(y.device)
                images[i] = to_float(saved.to(x.device))
        return x, y, images

    def _craft(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
               generator: torch.Generator, *, saved: dict[int, torch.Tensor]) -> torch.Tensor:
        """Algorithm 1's k adversarial images from the config's sources, block by block:
        a saved image, or the training method's attack on the current network or on a
        fixed one (ensemble: one of its networks drawn per iteration)."""
        out = []
        for i, src, rows in self._blocks():
            if src.kind == "saved":
                out.append(saved[i])
                continue
            if src.kind == "static":
                net = self.static[i][int(torch.randint(0, len(self.static[i]), (1,),
                                                       generator=generator))]
            h = rows.start + (rows.stop - rows.start) // 2  # step_both: step_ll, then step_fgsm
            parts = [("step_ll", slice(rows.start, h)), ("step_fgsm", slice(h, rows.stop))] \
                if src.method == STEP_BOTH else [(src.method, rows)]
            for method, part in parts:
                out.append(self._attack(method, net, x[part], y[part], eps[part], part.start,
                                        generator))
        return torch.cat(out)

    def _attack(self, method: str, net: nn.Module, x, y, eps, start: int,
                generator: torch.Generator) -> torch.Tensor:
        """Adversarial images of rows ``start ..``; under DDP only of the rows this rank
        keeps (:meth:`BatchShard.select` drops the others, left clean here).  A method
        that draws random numbers runs on all of them, so that its draws equal one
        process's."""
        if self.shard.world == 1 or draws_random(method, self.options):
            return one_step_examples(method, net, x, y, eps, generator, self.options)
        mine = self.shard.adversarial(start, start + x.shape[0], x.device)
        out = x.clone()
        if mine.numel():  # a shape, known on the host
            out[mine] = one_step_examples(method, net, x[mine], y[mine], eps[mine], generator,
                                          self.options)
        return out

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.shard.world if self.shard.world > 1 else loss

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, iteration: int,
                 generator: torch.Generator):
        """``x, y``: the global batch (every rank gets the same one); ``model`` may be
        DDP-wrapped.  Returns the loss, the logits and labels of this rank's rows."""
        adv = self.adv
        if iteration < adv.delay:  # clean-only warm-up
            n = x.shape[0]
            x, y = self.shard.clean(x, y)
            logits = model(x)
            return self._scaled(unified_loss(logits, y, 0, distance=None, normaliser=n)), \
                logits, y
        eps = sample_eps(adv.eps_sampler, adv.k, adv.max_e, generator, x.device)
        x, y, saved = self._saved_rows(x, y, generator)
        craft = functools.partial(self._craft, saved=saved)
        # attacks run on the plain module, in inference mode
        x, y = adversarial_batch(unwrap(model), x, y, adv.k, mode=adv.mode, method=craft,
                                 generator=generator, eps=eps)
        x, y, k = self.shard.select(x, y, adv.k, adv.mode)
        distance = adv.distance if adv.mode == "append" else None
        if distance is not None and adv.embedding == "features":
            logits, embeddings = logits_and_features(model, x)
        else:
            embeddings, logits = None, model(x)
        loss = unified_loss(logits, y, k, adv.lam, adv.lam2, distance, adv.norm, embeddings,
                            normaliser=(self.m - adv.k) + adv.lam * adv.k,
                            normalize_embedding=adv.normalize_embedding)
        return self._scaled(loss), logits, y

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
