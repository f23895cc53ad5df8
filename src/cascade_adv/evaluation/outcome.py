"""What an audit ran and what it found: :class:`AuditAttack` (an attack with its
options), :class:`AttackAccuracy` (one attack at one eps), :class:`AuditResult` (per
eps and image, the attack that flipped it) and :class:`Diagnostic` (one gradient-masking
check's verdict).  Its own module, below both the audit
(:mod:`cascade_adv.evaluation.audit`), which produces it, and the diagnostics
(:mod:`cascade_adv.evaluation.diagnostics`), which read it, so that neither imports the
other's module for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.errors import InvalidArgument, UnknownAttackError
from cascade_adv.results.tables import AUDIT_PREFIX, CLEAN, WHITEBOX, ResultTable

#: The verdicts of a gradient-masking diagnostic.
HOLDS, FLAGGED, NOT_RUN = "holds", "flagged", "not run"


@dataclass(frozen=True)
class AuditAttack:
    """One attack of an audit: its registry entry and its keyword options."""

    spec: AttackSpec
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        """``name`` or ``name:key=value:...`` (options sorted): how a list of attacks
        is written on the command line, and its part of the version label."""
        return ":".join([self.name] + [f"{k}={v}" for k, v in sorted(self.options.items())])


# --- the result --------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackAccuracy:
    """One attack at one eps within an audit: it ran on ``attacked`` images (those still
    correct after the attacks before it) and left ``survived`` of them correct.
    ``alone``: ``100 * survived / attacked`` (``None`` when it ran on no image);
    ``cumulative``: % of all ``n`` images still correct after it and the ones before."""

    attack: str
    eps: float
    attacked: int
    survived: int
    n: int

    @property
    def alone(self) -> float | None:
        return 100.0 * self.survived / self.attacked if self.attacked else None

    @property
    def cumulative(self) -> float:
        return 100.0 * self.survived / self.n


@dataclass
class AuditResult:
    """What :func:`audit` found.

    ``clean_correct`` (bool ``[N]``): images classified correctly without attack.
    ``broken_by`` (int64 ``[len(eps), N]``): for each eps and image, the index in
    ``attacks`` of the attack that flipped it, ``-1`` where none did (a robust image, or
    one already wrong clean).  ``adversarial`` (``[len(eps), N, C, H, W]``, only with
    ``keep_images``): the image that flipped each broken one, the clean image elsewhere.
    ``checks``: the gradient-masking diagnostics
    (:func:`~cascade_adv.evaluation.diagnostics.diagnose`) when the audit ran them.  The model / dataset
    fields label the rows of :meth:`table`.
    """

    version: str
    attacks: tuple[AuditAttack, ...]
    eps: tuple[float, ...]
    clean_correct: torch.Tensor
    broken_by: torch.Tensor
    adversarial: torch.Tensor | None = None
    checks: list[Diagnostic] = field(default_factory=list)
    model: str = "model"
    model_hash: str = ""
    dataset: str = ""
    split: str = ""

    @property
    def n(self) -> int:
        return int(self.clean_correct.shape[0])

    @property
    def source(self) -> str:
        """``source`` of the audit's per-attack rows, and ``attack`` of its worst-case
        rows: ``audit:VERSION``."""
        return AUDIT_PREFIX + self.version

    @property
    def clean_accuracy(self) -> float:
        return 100.0 * int(self.clean_correct.sum()) / self.n

    def _row(self, eps: float) -> int:
        try:
            return self.eps.index(float(eps))
        except ValueError:
            raise InvalidArgument(f"the audit did not run at eps {eps:g}; its epsilons are "
                                  f"{', '.join(f'{e:g}' for e in self.eps)}") from None

    def robust(self, eps: float) -> torch.Tensor:
        """Bool ``[N]``: correct clean and flipped by no attack at ``eps``."""
        return self.clean_correct & (self.broken_by[self._row(eps)] < 0)

    def broken_by_names(self, eps: float) -> list[str | None]:
        """Per image, the name of the attack that flipped it at ``eps`` (``None``: none)."""
        return [self.attacks[i].name if i >= 0 else None
                for i in self.broken_by[self._row(eps)].tolist()]

    @property
    def worst_case(self) -> dict[float, float]:
        """Per eps, the robust accuracy (%): images no attack flipped."""
        return {e: 100.0 * int(self.robust(e).sum()) / self.n for e in self.eps}

    def accuracy(self, attack: str, eps: float) -> AttackAccuracy:
        """How ``attack`` did at ``eps`` (see :class:`AttackAccuracy`)."""
        index = next((i for i, a in enumerate(self.attacks) if a.name == attack), None)
        if index is None:
            raise UnknownAttackError(f"attack {attack!r} is not part of this audit; its "
                                     f"attacks are: {', '.join(a.name for a in self.attacks)}")
        by = self.broken_by[self._row(eps)]
        alive = self.clean_correct & ((by < 0) | (by >= index))
        return AttackAccuracy(attack, float(eps), int(alive.sum()),
                              int((alive & (by != index)).sum()), self.n)

    @property
    def per_attack(self) -> list[AttackAccuracy]:
        """:meth:`accuracy` of every attack at every eps, attack-major, in run order."""
        return [self.accuracy(a.name, e) for a in self.attacks for e in self.eps]

    def table(self) -> ResultTable:
        """The rows the results store keeps (docs/results-schema.md, "Robustness audit"):
        the clean accuracy, each attack's ``top1`` (cumulative) and ``top1_attacked``
        (on the images it ran on) under ``source="audit:VERSION"``, and the worst case as
        a white-box row of attack ``audit:VERSION``."""
        common = {"model": self.model, "model_hash": self.model_hash,
                  "dataset": self.dataset, "split": self.split}
        rows = [{**common, "attack": CLEAN, "eps": 0.0, "source": self.source,
                 "metric": "top1", "value": self.clean_accuracy, "n": self.n}]
        for acc in self.per_attack:
            rows.append({**common, "attack": acc.attack, "eps": acc.eps, "source": self.source,
                         "metric": "top1", "value": acc.cumulative, "n": self.n})
            if acc.alone is not None:
                rows.append({**common, "attack": acc.attack, "eps": acc.eps,
                             "source": self.source, "metric": "top1_attacked",
                             "value": acc.alone, "n": acc.attacked})
        for e, value in self.worst_case.items():
            rows.append({**common, "attack": self.source, "eps": e, "source": WHITEBOX,
                         "metric": "top1", "value": value, "n": self.n})
        return ResultTable(rows)

    def to_markdown(self) -> str:
        """One line per eps: the clean accuracy, each attack's cumulative accuracy (%)
        in run order, and the worst case."""
        names = [a.name for a in self.attacks]
        lines = ["| eps | clean | " + " | ".join(names) + " | worst case |",
                 "| ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: |"]
        worst = self.worst_case
        for e in self.eps:
            cells = [f"{self.accuracy(name, e).cumulative:.1f}" for name in names]
            lines.append(f"| {e:g} | {self.clean_accuracy:.1f} | " + " | ".join(cells)
                         + f" | {worst[e]:.1f} |")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic: ``name`` (one of :data:`CHECKS`), ``verdict`` (``"holds"``,
    ``"flagged"`` or ``"not run"``), the ``numbers`` it rests on, one sentence on what it
    ``meaning`` (for ``not run``: why), its ``origin`` and what it was measured on
    (``measured_on``, e.g. ``"256 of 1000 images"``)."""

    name: str
    verdict: str
    numbers: Mapping[str, float] = field(default_factory=dict)
    meaning: str = ""
    origin: str = ""
    measured_on: str = ""

    @property
    def flagged(self) -> bool:
        return self.verdict == FLAGGED

    def to_line(self) -> str:
        """``- **name**: verdict (numbers; measured on). meaning [origin]``."""
        nums = ", ".join(f"{k} {_num(v)}" for k, v in self.numbers.items())
        where = "; ".join(p for p in (nums, self.measured_on) if p)
        meaning = self.meaning[:1].upper() + self.meaning[1:]
        return (f"- **{self.name}**: {self.verdict}" + (f" ({where})" if where else "")
                + f". {meaning}." + (f" [{self.origin}]" if self.origin else ""))


def _num(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"


def _num(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"
