"""Every attack option's type and range, checked before any work.

Each registered attack declares a :class:`OptionSpec` for every keyword option of its
function (``generator`` aside, which is how the random ones are seeded):
:func:`cascade_adv.attacks.register` refuses an attack with an option that has none.
:func:`check_options` checks a mapping of options against them: the command line when
``--version NAME:KEY=VALUE`` is parsed, :func:`cascade_adv.attacks.run`,
:func:`cascade_adv.evaluation.audit` and :func:`cascade_adv.evaluation.evaluate_whitebox`
before their first forward pass, with one line naming the option and its range.

The bounds are generous but finite, so that no single call asks for more work than a
machine does in a day without saying so: at most :data:`MAX_STEPS` gradient steps,
:data:`MAX_RESTARTS` restarts, :data:`MAX_QUERIES` queries and :data:`MAX_TARGETS`
target classes (at most the model's classes - 1, checked once the model is known).
A whole-number option takes an integer or an integral float (``5.0`` counts as ``5``,
as the command line reads ``steps=5.0``), never a boolean, NaN, an infinity or a
fraction; a number option takes any finite int or float in its range; a flag takes
``True`` or ``False`` only (``true`` / ``false`` on the command line).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cascade_adv.errors import AttackError, echo

#: Most gradient steps of one iterative attack run.
MAX_STEPS = 10_000
#: Most restarts of one attack.
MAX_RESTARTS = 100
#: Most queries of one score-based attack run.
MAX_QUERIES = 100_000
#: Most target classes of a targeted attack (ImageNet's 1000 classes - 1).
MAX_TARGETS = 999


@dataclass(frozen=True)
class OptionSpec:
    """One option's type (``"int"``: a whole number, ``"float"``: a number, ``"bool"``)
    and range ``[low, high]`` (``(low, high]`` with ``open_low``); ``default``: what
    leaving it out (or ``None``) means, where ``None`` is accepted."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    default: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float", "bool"):
            raise ValueError(f"option kind must be int, float or bool, got {self.kind!r}")

    def describe(self) -> str:
        """The accepted values in words, e.g. ``a whole number in [1, 10000]``."""
        if self.kind == "bool":
            text = "true or false"
        else:
            what = "a whole number" if self.kind == "int" else "a number"
            text = f"{what} in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        return text + (f" (left out: {self.default})" if self.default else "")

    def convert(self, value: Any) -> Any:
        """``value`` as this option takes it (``5.0`` -> ``5`` for a whole number, an
        integer stays one); ``TypeError`` / ``ValueError`` if it is not one of
        :meth:`describe`'s values."""
        if value is None and self.default:
            return None
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError
        number = float(value)  # OverflowError for an int beyond a float: out of range too
        if not math.isfinite(number):
            raise ValueError
        if isinstance(value, numbers.Integral):
            number = int(value)  # a whole number stays one (alpha=8 keeps its label)
        elif self.kind == "int":
            if not number.is_integer():
                raise ValueError
            number = int(number)
        too_low = number <= self.low if self.open_low else number < self.low
        if too_low or number > self.high:
            raise ValueError
        return number


def _check_names(name: str, options: Mapping[str, Any], allowed: list[str]) -> None:
    for key in options:
        if key not in allowed:
            seeded = " (its random numbers are seeded by seed=)" if key == "generator" else ""
            raise AttackError(f"attack {name!r} has no option {key!r}{seeded}; its options "
                              f"are: {', '.join(allowed) or 'none'}")


def check_options(spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of the attack ``spec`` (an :class:`~cascade_adv.attacks.AttackSpec`)
    checked before any work: every name must be one of its keyword options
    (``generator`` aside) and every value in its :class:`OptionSpec`'s range.  Returns
    them converted (``steps=5.0`` -> ``5``).  Raises :class:`AttackError` (a
    ``ValueError``), one line naming the option and its range.  An attack built outside
    the registry without specs has its options' names checked only."""
    if not isinstance(options, Mapping):
        raise AttackError(f"options of attack {spec.name!r} must be a mapping, got "
                          f"{type(options).__name__}")
    _check_names(spec.name, options, [p for p in spec.options if p != "generator"])
    out = dict(options)
    for key, value in options.items():
        limit = (spec.limits or {}).get(key)
        if limit is None:
            continue
        try:
            out[key] = limit.convert(value)
        except (TypeError, ValueError, OverflowError):
            raise AttackError(f"attack {spec.name} option {key}={echo(value, 40)} is not "
                              f"allowed: {key} takes {limit.describe()}") from None
    return out


def check_specs(name: str, keyword_options: tuple[str, ...],
                limits: Mapping[str, OptionSpec]) -> None:
    """Every keyword option of the attack ``name`` (``generator`` aside) has an
    :class:`OptionSpec` in ``limits``, and ``limits`` names no other: ``ValueError``
    otherwise (when the attack is registered)."""
    wanted = {p for p in keyword_options if p != "generator"}
    if set(limits) != wanted:
        missing, extra = sorted(wanted - set(limits)), sorted(set(limits) - wanted)
        raise ValueError(f"attack {name!r}: every option needs an OptionSpec (missing: "
                         f"{', '.join(missing) or 'none'}; not options: "
                         f"{', '.join(extra) or 'none'})")


#: K17's iterative step count when ``steps`` is left out.
K17_STEPS = "K17's floor(min(eps + 4, 1.25 eps)) steps"
STEPS = OptionSpec("int", 1, MAX_STEPS)
K17_STEPS_OPTION = OptionSpec("int", 1, MAX_STEPS, default=K17_STEPS)
RESTARTS = OptionSpec("int", 1, MAX_RESTARTS)
#: A step size in pixel units: more than the largest ball (255) means nothing.
ALPHA = OptionSpec("float", 0, 255, open_low=True)
PGD_ALPHA = OptionSpec("float", 0, 255, open_low=True, default="2.5 eps / steps pixel units")
#: APGD's fraction of the steps since a checkpoint that must raise the loss.
RHO = OptionSpec("float", 0, 1, open_low=True)
TARGETS = OptionSpec("int", 1, MAX_TARGETS, default="min(9, classes - 1) targets")
QUERIES = OptionSpec("int", 1, MAX_QUERIES)
#: Square's initial fraction of the pixels a window covers.
P_INIT = OptionSpec("float", 0, 1, open_low=True)
FLAG = OptionSpec("bool")
