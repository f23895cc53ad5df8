"""Tidy result tables: one row per (model, attack, epsilon, source, metric).

Every evaluation (white-box tables, black-box matrices, ...) returns a
:class:`ResultTable`; the results store keeps the same rows in SQLite, and the
reports render them in the papers' layout (N18 tables 1-4, K17 tables 1-2):

>>> table.to_markdown()
| model | clean | step_ll 16 | step_ll 32 | iter_fgsm 16 | iter_fgsm 32 |
| --- | ---: | ---: | ---: | ---: | ---: |
| pivot | 99.6 | 99.4 | 98.8 | 98.8 | 96.4 |

Row keys (:data:`ROW_KEYS`): ``model``, ``model_hash``, ``dataset``, ``split``,
``attack`` (``"clean"`` for the clean accuracy, at ``eps`` 0), ``eps`` (pixel units
of [0, 255]), ``source`` (``"whitebox"`` for white-box attacks, the source model's
name for black-box ones), ``metric`` (``"top1"``, ``"top5"``), ``value`` (accuracy
in percent) and ``n`` (number of images).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from cascade_adv.errors import CascadeAdvError, echo
from cascade_adv.io import atomic_write_text

#: The keys of every row, in column order.
ROW_KEYS: tuple[str, ...] = (
    "model", "model_hash", "dataset", "split", "attack", "eps", "source", "metric", "value", "n",
)
#: The keys that identify a row (the results store's UNIQUE key).
KEY_COLUMNS: tuple[str, ...] = ("model", "dataset", "split", "attack", "eps", "source", "metric")
#: ``attack`` of the clean-accuracy rows (always at ``eps`` 0).
CLEAN = "clean"
#: ``source`` of white-box rows.
WHITEBOX = "whitebox"
#: ``source`` of a robustness audit's per-attack rows and ``attack`` of its worst-case
#: rows: ``audit:VERSION`` (:mod:`cascade_adv.evaluation.audit`); never black-box rows.
AUDIT_PREFIX = "audit:"

_STR_KEYS = ("model", "model_hash", "dataset", "split", "attack", "source", "metric")
#: The text fields that must name something (``dataset`` and ``split`` may be empty:
#: an audit of tensors given in Python has neither).
_REQUIRED_TEXT = ("model", "attack", "source", "metric")


#: Metrics whose value is a percentage (accuracy, error and transfer rates, their seed
#: mean and std, the share of attacked images still correct): 0 <= value <= 100.
_PERCENT_METRIC = re.compile(r"(top|error_top|transfer_top)\d+(_\w+)?")
#: The longest text a row's field may hold (names, attacks with their options), and the
#: longest model hash (hex digests are 64 characters).
MAX_TEXT, MAX_HASH = 1000, 128
#: The largest image count a row may state (an SQLite integer, and far beyond any set).
MAX_N = 2**31 - 1
#: The pixel-unit range of ``eps``.
MAX_EPS = 255.0


def check_text(v: Any, what: str, *, required: bool = False, limit: int = MAX_TEXT) -> str:
    """``v`` if it is text (non-empty where ``required``, at most ``limit`` characters),
    else :class:`CascadeAdvError` naming ``what`` (``"result row's 'model'"``): the one
    check of the text fields of result rows and model records."""
    if not isinstance(v, str):
        raise CascadeAdvError(f"{what} must be text, got {echo(v)}")
    if required and not v.strip():
        raise CascadeAdvError(f"{what} is empty; give a name")
    if len(v) > limit:
        raise CascadeAdvError(f"{what} has {len(v):,} characters (at most {limit:,})")
    return v


def _text(key: str, v: Any) -> str:
    if key == "model_hash" and v is None:
        return ""
    return check_text(v, f"result row's {key!r}", required=key in _REQUIRED_TEXT,
                      limit=MAX_HASH if key == "model_hash" else MAX_TEXT)


def _number(key: str, v: Any, row: Mapping[str, Any]) -> float | int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise CascadeAdvError(f"result row's {key!r} must be a number, got {echo(v)}; eps and "
                              "value are numbers, n an integer")
    x = float(v)
    if not math.isfinite(x):
        raise CascadeAdvError(f"result row's {key!r} is not finite: {echo(v)}")
    if key == "n":
        if x != int(x) or not 0 <= x <= MAX_N:
            raise CascadeAdvError(f"result row's 'n' must be a whole count in 0..{MAX_N}, got "
                                  f"{echo(v)}")
        return int(x)
    if key == "eps" and not 0 <= x <= MAX_EPS:
        raise CascadeAdvError(f"result row's 'eps' must lie in [0, {MAX_EPS:g}] (pixel units), "
                              f"got {echo(v)}")
    if (key == "value" and isinstance(row.get("metric"), str)
            and _PERCENT_METRIC.fullmatch(row["metric"]) and not 0 <= x <= 100):
        raise CascadeAdvError(f"result row's 'value' of metric {row['metric']!r} is a "
                              f"percentage, so in [0, 100], got {echo(v)}")
    return x


def normalize_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Check one row's keys, types and ranges; return a new dict in :data:`ROW_KEYS` order.

    ``model_hash`` may be left out (empty string); any other missing or unknown key, text
    that is not a string (or is empty where a name is needed, or longer than
    :data:`MAX_TEXT`), a number that is a boolean, text or not finite, an ``eps`` outside
    [0, 255], a percentage outside [0, 100] or an ``n`` that is not a whole count raise
    :class:`CascadeAdvError` naming the field.  Freshly computed rows and rows read back
    (pending files, JSON, CSV after :func:`parse_csv_row`) pass the same checks.
    """
    if not isinstance(row, Mapping):
        raise CascadeAdvError(f"a result row must be a mapping with keys {ROW_KEYS}, got "
                              f"{echo(row)}")
    unknown = sorted(set(row) - set(ROW_KEYS), key=str)
    if unknown:
        raise CascadeAdvError(
            f"result row has unknown key {echo(unknown[0])}; the keys are: {', '.join(ROW_KEYS)}"
        )
    missing = [k for k in ROW_KEYS if k not in row and k != "model_hash"]
    if missing:
        raise CascadeAdvError(
            f"result row lacks key {missing[0]!r}; the keys are: {', '.join(ROW_KEYS)}"
        )
    return {k: _text(k, row.get(k)) if k in _STR_KEYS else _number(k, row[k], row)
            for k in ROW_KEYS}


def parse_csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read from CSV (every field text) with ``eps``, ``value`` and ``n`` as numbers,
    ready for :func:`normalize_row`; text that is no number raises one line."""
    out = dict(row)
    for k in ("eps", "value", "n"):
        if isinstance(out.get(k), str):
            try:
                out[k] = float(out[k])
            except ValueError:
                raise CascadeAdvError(f"result row has a non-numeric {k!r}: {echo(out[k])}; eps "
                                      "and value are numbers, n an integer") from None
    return out


def _fmt_eps(eps: float) -> str:
    return f"{eps:g}"


class ResultTable:
    """An ordered list of tidy result rows (dicts with the keys :data:`ROW_KEYS`)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self._rows: list[dict[str, Any]] = [normalize_row(r) for r in rows]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Copies of the rows, in order."""
        return [dict(r) for r in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResultTable):
            return NotImplemented
        return self._rows == other._rows

    def __repr__(self) -> str:
        models = list(dict.fromkeys(r["model"] for r in self._rows))
        return f"ResultTable({len(self)} rows, models={models})"

    def extend(self, rows: Iterable[Mapping[str, Any]] | ResultTable) -> None:
        """Append rows (validated)."""
        self._rows.extend(normalize_row(r) for r in rows)

    def filter(self, **filters: Any) -> ResultTable:
        """Rows whose columns equal the given values (a list/tuple/set means "any of")."""
        for k in filters:
            if k not in ROW_KEYS:
                raise CascadeAdvError(
                    f"cannot filter on {k!r}; the columns are: {', '.join(ROW_KEYS)}"
                )

        def keep(row: dict[str, Any]) -> bool:
            for k, v in filters.items():
                allowed = v if isinstance(v, (list, tuple, set, frozenset)) else (v,)
                if row[k] not in allowed:
                    return False
            return True

        return ResultTable(r for r in self._rows if keep(r))

    def value(self, model: str, attack: str, eps: float = 0.0, metric: str = "top1",
              source: str | None = None) -> float | None:
        """The value of the first matching row (``None`` if there is none)."""
        for r in self._rows:
            if (r["model"] == model and r["attack"] == attack and r["eps"] == float(eps)
                    and r["metric"] == metric and (source is None or r["source"] == source)):
                return r["value"]
        return None

    # --- the papers' layout -----------------------------------------------------------

    def to_markdown(self, metric: str = "top1", sources_as_columns: bool = False) -> str:
        """The papers' layout (N18 table 1): one row per model, a ``clean`` (eps 0)
        column, then columns grouped by attack, then by increasing epsilon.

        Values are accuracies in percent with one decimal; ``-`` marks a missing
        cell.  When the table holds several sources (black-box rows) or several
        dataset/splits, ``source`` / ``dataset`` columns are added to the row labels;
        with ``sources_as_columns`` black-box results get columns of their own
        (``iter_fgsm from SOURCE 16``) beside the white-box ones instead.
        """
        rows = [r for r in self._rows if r["metric"] == metric]
        if sources_as_columns:
            rows = [r if r["attack"] == CLEAN or r["source"] == WHITEBOX else
                    {**r, "attack": f"{r['attack']} from {r['source']}", "source": WHITEBOX}
                    for r in rows]
        if not rows:
            return f"(no {metric} results)\n"
        multi_data = len({(r["dataset"], r["split"]) for r in rows}) > 1
        multi_source = len({r["source"] for r in rows if r["attack"] != CLEAN}) > 1

        def data_of(r: dict[str, Any]) -> str:
            return f"{r['dataset']} {r['split']}".strip()

        # Column order: attacks in order of first appearance, eps increasing.
        attacks: dict[str, set[float]] = {}
        has_clean = False
        for r in rows:
            if r["attack"] == CLEAN:
                has_clean = True
            else:
                attacks.setdefault(r["attack"], set()).add(r["eps"])
        columns: list[tuple[str, float]] = [(CLEAN, 0.0)] if has_clean else []
        for name, eps_set in attacks.items():
            columns.extend((name, e) for e in sorted(eps_set))

        # Row labels: (model[, dataset][, source]) in order of first appearance.
        def label_of(r: dict[str, Any]) -> tuple[str, ...]:
            label = (r["model"],) + ((data_of(r),) if multi_data else ())
            return label + ((r["source"],) if multi_source else ())

        cells: dict[tuple[str, ...], dict[tuple[str, float], float]] = {}
        clean: dict[tuple[str, str], float] = {}
        for r in rows:
            if r["attack"] != CLEAN:
                cells.setdefault(label_of(r), {}).setdefault((r["attack"], r["eps"]), r["value"])
        for r in rows:
            if r["attack"] == CLEAN:
                key = (r["model"], data_of(r))
                clean.setdefault(key, r["value"])
                if not any(lab[0] == key[0] and (not multi_data or lab[1] == key[1])
                           for lab in cells):
                    cells[label_of(r)] = {}  # a model with only its clean accuracy
        the_data = data_of(rows[0])

        head = ["model"] + (["dataset"] if multi_data else []) + (["source"] if multi_source else [])
        n_label = len(head)
        head += [CLEAN if a == CLEAN else f"{a} {_fmt_eps(e)}" for a, e in columns]
        lines = [
            "| " + " | ".join(head) + " |",
            "| " + " | ".join(["---"] * n_label + ["---:"] * len(columns)) + " |",
        ]
        for label, values in cells.items():
            data = label[1] if multi_data else the_data
            texts = []
            for col in columns:
                v = clean.get((label[0], data)) if col[0] == CLEAN else values.get(col)
                texts.append("-" if v is None else f"{v:.1f}")
            lines.append("| " + " | ".join(list(label) + texts) + " |")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    # --- files ---------------------------------------------------------------------------

    def to_csv_string(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(ROW_KEYS), lineterminator="\n")
        writer.writeheader()
        for r in self._rows:
            writer.writerow({**r, "eps": repr(r["eps"]), "value": repr(r["value"])})
        return buf.getvalue()

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the rows as CSV (header :data:`ROW_KEYS`), atomically."""
        atomic_write_text(path, self.to_csv_string())

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the rows as a JSON list of objects, atomically."""
        atomic_write_text(path, json.dumps(self._rows, indent=1) + "\n")

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> ResultTable:
        """Read a table written by :meth:`to_csv`."""
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                return cls(parse_csv_row(r) for r in csv.DictReader(fh))
        except OSError as e:
            raise CascadeAdvError(f"cannot read results CSV {path}: {e.strerror}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ResultTable:
        """Read a table written by :meth:`to_json` (a list, or an object with ``rows``)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as e:
            raise CascadeAdvError(f"cannot read results JSON {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise CascadeAdvError(f"results JSON {path} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            data = data.get("rows")
        if not isinstance(data, list):
            raise CascadeAdvError(f"results JSON {path} must hold a list of row objects")
        return cls(data)
