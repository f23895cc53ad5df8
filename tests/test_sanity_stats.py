"""Evaluation sanity checks (evaluation/sanity.py) and multi-seed statistics
(evaluation/stats.py, N18 table 3), on tiny hand-made tables."""

from __future__ import annotations

import math
import random

import pytest

from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.sanity import CHECKS, SanityWarning, check_results, format_warnings
from cascade_adv.evaluation.stats import (
    aggregate_seeds,
    format_mean_std,
    mean_std,
    paired_gain_p_value,
)
from cascade_adv.results.tables import ResultTable


def row(model: str, attack: str, eps: float, value: float, *, source: str = "whitebox",
        metric: str = "top1", dataset: str = "cifar10", split: str = "test",
        n: int = 1000) -> dict:
    return {"model": model, "model_hash": "h", "dataset": dataset, "split": split,
            "attack": attack, "eps": eps, "source": source, "metric": metric, "value": value,
            "n": n}


def healthy_rows(model: str = "A") -> list[dict]:
    """A plausible evaluation: no check should fire."""
    return [
        row(model, "clean", 0, 90.0),
        # one-step accuracy may rise with eps (N18 table 1): not a warning
        row(model, "step_fgsm", 16, 50.0), row(model, "step_fgsm", 32, 55.0),
        row(model, "step_ll", 16, 60.0), row(model, "step_ll", 32, 70.0),
        row(model, "iter_fgsm", 16, 30.0), row(model, "iter_fgsm", 32, 10.0),
        row(model, "iter_ll", 16, 40.0), row(model, "iter_ll", 32, 20.0),
        row(model, "pgd", 16, 29.0), row(model, "pgd", 32, 9.0),
        row(model, "random_sign", 16, 89.5),
        # transferred attacks weaker than white-box ones
        row(model, "iter_fgsm", 16, 60.0, source="B"),
        row(model, "step_ll", 16, 75.0, source="B"),
        # other families with values that would fire if they were not ignored
        row(model, "iter_fgsm", 16, 99.0, source="B", metric="error_top1"),
        row(model, "iter_fgsm", 16, 1.0, source="B", metric="transfer_top1"),
        row(model, "step_ll", 16, 5.0, source="softmax_argument", metric="true_mean"),
        row(model, "clean~step_ll", 16, 0.5, source="gradient_correlation", metric="mean"),
    ]


def checks_of(warnings: list[SanityWarning]) -> list[tuple]:
    return [(w.check, w.model, w.attack, w.eps, w.source) for w in warnings]


# --- sanity checks -----------------------------------------------------------------------


def test_healthy_table_has_no_warnings() -> None:
    table = ResultTable(healthy_rows())
    assert check_results(table) == []
    assert format_warnings(check_results(table)) == "No sanity warnings."
    assert format_warnings([]) == "No sanity warnings."


def test_iterative_weaker_than_one_step_fires_beyond_tolerance_only() -> None:
    rows = [
        row("A", "clean", 0, 90.0),
        row("A", "step_fgsm", 8, 50.0), row("A", "iter_fgsm", 8, 52.0),  # +2.0: fires
        row("A", "step_fgsm", 16, 40.0), row("A", "iter_fgsm", 16, 40.5),  # +0.5: noise
        row("A", "pgd", 16, 41.0),  # exactly +1.0 = tolerance: not flagged
        row("A", "pgd", 8, 60.0),  # +10.0 over step_fgsm 8: fires
        # targeted iter_ll is not compared with step_ll (N18 table 1 has it weaker)
        row("A", "step_ll", 8, 70.0), row("A", "iter_ll", 8, 75.0),
    ]
    warnings = [w for w in check_results(ResultTable(rows))
                if w.check == "iterative_weaker_than_one_step"]
    assert checks_of(warnings) == [
        ("iterative_weaker_than_one_step", "A", "iter_fgsm", 8.0, "whitebox"),
        ("iterative_weaker_than_one_step", "A", "pgd", 8.0, "whitebox"),
    ]
    w = warnings[0]
    assert (w.dataset, w.split) == ("cifar10", "test")
    assert "52.0%" in w.message and "50.0%" in w.message and "2.0 points" in w.message
    assert "step_fgsm" in w.message and "eps 8" in w.message
    assert "gradient masking" in w.meaning
    assert "60.0%" in warnings[1].message and "10.0 points" in warnings[1].message
    # a larger tolerance silences both
    assert not [w for w in check_results(ResultTable(rows), tolerance=10.0)
                if w.check == "iterative_weaker_than_one_step"]
    # tolerance 0 also flags the +0.5 and the +1.0
    strict = [w for w in check_results(ResultTable(rows), tolerance=0.0)
              if w.check == "iterative_weaker_than_one_step"]
    assert [(w.attack, w.eps) for w in strict] == [
        ("iter_fgsm", 8.0), ("iter_fgsm", 16.0), ("pgd", 8.0), ("pgd", 16.0)]


def test_accuracy_rises_with_eps_for_iterative_attacks_only() -> None:
    rows = [
        row("A", "clean", 0, 90.0),
        row("A", "iter_fgsm", 4, 92.5),  # +2.5 over clean: fires (and adversarial_above_clean)
        row("A", "iter_fgsm", 8, 30.0),
        row("A", "iter_fgsm", 16, 35.0),  # +5.0 over eps 8: fires
        row("A", "iter_fgsm", 32, 35.8),  # +0.8 over eps 16: noise
        row("A", "iter_ll", 2, 80.0), row("A", "iter_ll", 16, 85.0),  # +5.0: fires
        row("A", "pgd", 16, 20.0), row("A", "pgd", 8, 21.0),  # falls with eps (rows unsorted)
        # one-step accuracy rising with eps: legitimate (N18 tables), not flagged
        row("A", "step_ll", 8, 60.0), row("A", "step_ll", 16, 70.0),
        row("A", "step_fgsm", 8, 40.0), row("A", "step_fgsm", 16, 80.0),
    ]
    warnings = [w for w in check_results(ResultTable(rows))
                if w.check == "accuracy_rises_with_eps"]
    assert checks_of(warnings) == [
        ("accuracy_rises_with_eps", "A", "iter_fgsm", 4.0, "whitebox"),
        ("accuracy_rises_with_eps", "A", "iter_fgsm", 16.0, "whitebox"),
        ("accuracy_rises_with_eps", "A", "iter_ll", 16.0, "whitebox"),
    ]
    first, second = warnings[0], warnings[1]
    assert "92.5%" in first.message and "90.0%" in first.message
    assert "clean images" in first.message and "2.5 points" in first.message
    assert "35.0%" in second.message and "30.0%" in second.message
    assert "eps 16" in second.message and "eps 8" in second.message
    assert "5.0 points" in second.message
    assert "gradient masking" in second.meaning


def test_accuracy_rises_with_eps_without_clean_row() -> None:
    rows = [row("A", "iter_fgsm", 8, 30.0), row("A", "iter_fgsm", 16, 32.0)]
    warnings = check_results(ResultTable(rows))
    assert checks_of(warnings) == [("accuracy_rises_with_eps", "A", "iter_fgsm", 16.0,
                                    "whitebox")]


def test_blackbox_stronger_than_whitebox() -> None:
    rows = [
        row("A", "clean", 0, 90.0),
        row("A", "iter_fgsm", 16, 30.0),
        row("A", "step_ll", 16, 60.0),
        row("A", "iter_fgsm", 16, 25.0, source="B"),  # 5.0 below white-box: fires
        row("A", "iter_fgsm", 16, 29.5, source="C"),  # 0.5 below: noise
        row("A", "step_ll", 16, 58.0, source="C"),  # 2.0 below: fires
        row("A", "step_ll", 32, 10.0, source="C"),  # no white-box step_ll 32: skipped
        row("A", "iter_fgsm", 16, 5.0, source="B", metric="top5"),  # other metric
        row("A", "iter_fgsm", 16, 5.0, source="softmax_argument"),  # not black-box
        row("A", "iter_fgsm", 16, 5.0, source="gradient_correlation"),  # not black-box
        # B's own rows: the transferred images are evaluated on B itself too
        row("B", "clean", 0, 95.0), row("B", "iter_fgsm", 16, 40.0),
    ]
    warnings = check_results(ResultTable(rows))
    assert checks_of(warnings) == [
        ("blackbox_stronger_than_whitebox", "A", "iter_fgsm", 16.0, "B"),
        ("blackbox_stronger_than_whitebox", "A", "step_ll", 16.0, "C"),
    ]
    w = warnings[0]
    assert "25.0%" in w.message and "30.0%" in w.message and "5.0 points" in w.message
    assert "from B" in w.message
    assert "gradient masking" in w.meaning and "white-box" in w.meaning


def test_blackbox_prefers_the_matrix_diagonal_over_the_whitebox_table() -> None:
    rows = [
        row("A", "iter_fgsm", 16, 30.0),  # white-box table, other images
        row("A", "iter_fgsm", 16, 20.0, source="A"),  # diagonal: same images as B's row
        row("A", "iter_fgsm", 16, 25.0, source="B"),  # above the diagonal: fine
        row("A", "iter_fgsm", 16, 15.0, source="C"),  # 5.0 below the diagonal: fires
    ]
    warnings = check_results(ResultTable(rows))
    assert checks_of(warnings) == [
        ("blackbox_stronger_than_whitebox", "A", "iter_fgsm", 16.0, "C")]
    assert "20.0%" in warnings[0].message and "diagonal" in warnings[0].message
    # the diagonal itself is never a warning, even far below the white-box table
    only_diag = check_results(ResultTable(rows[:2]))
    assert only_diag == []


def test_adversarial_above_clean_label_leaking() -> None:
    rows = [
        row("A", "clean", 0, 80.0),
        row("A", "step_fgsm", 8, 80.9),  # +0.9: noise
        row("A", "step_fgsm", 16, 85.0),  # +5.0: K17 label leaking
        row("A", "step_ll", 16, 82.0),  # +2.0: N18 4.2, no true label
        row("A", "random_sign", 16, 83.0),  # +3.0: random noise should not help
        row("A", "step_fgsm", 16, 95.0, split="train"),  # no clean row for train: skipped
        row("A", "step_fgsm", 0, 99.0),  # eps 0 is not an attack
        row("A", "step_rnd", 16, 81.0),  # exactly +1.0 = tolerance: not flagged
        row("A", "clean", 0, 1.2, dataset="mnist"),
        row("A", "step_ll", 16, 2.2, dataset="mnist"),  # 2.2 - 1.2 > 1.0 in floats: noise
    ]
    warnings = check_results(ResultTable(rows))
    assert checks_of(warnings) == [
        ("adversarial_above_clean", "A", "random_sign", 16.0, "whitebox"),
        ("adversarial_above_clean", "A", "step_fgsm", 16.0, "whitebox"),
        ("adversarial_above_clean", "A", "step_ll", 16.0, "whitebox"),
    ]
    by_attack = {w.attack: w for w in warnings}
    fgsm = by_attack["step_fgsm"]
    assert "85.0%" in fgsm.message and "80.0%" in fgsm.message and "5.0 points" in fgsm.message
    assert "label leaking" in fgsm.meaning and "K17 section 4.2" in fgsm.meaning
    assert "do not use this attack" in fgsm.meaning
    ll = by_attack["step_ll"]
    assert "82.0%" in ll.message and "2.0 points" in ll.message
    assert "N18 section 4.2" in ll.meaning and "step_ll" in ll.meaning
    assert "random" in by_attack["random_sign"].meaning


def test_iterative_above_clean_points_at_masking() -> None:
    rows = [row("A", "clean", 0, 80.0), row("A", "iter_ll", 4, 83.0),
            row("A", "iter_ll", 8, 70.0)]
    warnings = check_results(ResultTable(rows))
    assert [w.check for w in warnings] == ["accuracy_rises_with_eps", "adversarial_above_clean"]
    leak = warnings[1]
    assert "N18 section 4.2" in leak.meaning and "vanishes for iterative" in leak.meaning


def test_groups_are_checked_separately_and_metric_is_selectable() -> None:
    rows = [
        row("A", "clean", 0, 90.0),
        row("A", "step_fgsm", 16, 95.0, dataset="mnist"),  # other dataset: no clean there
        row("B", "step_fgsm", 16, 95.0),  # other model: no clean there
        row("A", "clean", 0, 90.0, metric="top5"),
        row("A", "step_fgsm", 16, 95.0, metric="top5"),  # fires for top5 only
    ]
    assert check_results(ResultTable(rows)) == []
    top5 = check_results(ResultTable(rows), metric="top5")
    assert checks_of(top5) == [("adversarial_above_clean", "A", "step_fgsm", 16.0, "whitebox")]
    assert "top5" in top5[0].message


def test_warnings_are_in_a_deterministic_order() -> None:
    rows = [
        row("B", "clean", 0, 80.0), row("B", "step_fgsm", 16, 85.0),
        row("B", "iter_fgsm", 8, 30.0), row("B", "iter_fgsm", 16, 40.0),
        row("A", "clean", 0, 80.0), row("A", "step_fgsm", 16, 30.0),
        row("A", "iter_fgsm", 16, 40.0), row("A", "iter_fgsm", 16, 10.0, source="B"),
    ]
    expected = check_results(ResultTable(rows))
    assert [(w.model, w.check) for w in expected] == [
        ("A", "iterative_weaker_than_one_step"),
        ("A", "blackbox_stronger_than_whitebox"),
        ("B", "accuracy_rises_with_eps"),
        ("B", "adversarial_above_clean"),
    ]
    assert [CHECKS.index(w.check) for w in expected[:2]] == [0, 2]
    rng = random.Random(0)
    for _ in range(5):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        assert check_results(ResultTable(shuffled)) == expected


def test_format_warnings_markdown_bullets() -> None:
    rows = [row("A", "clean", 0, 80.0), row("A", "step_fgsm", 16, 85.0),
            row("A", "step_ll", 16, 82.0)]
    warnings = check_results(ResultTable(rows))
    text = format_warnings(warnings)
    lines = text.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("- **adversarial_above_clean**: ") for line in lines)
    assert "85.0%" in lines[0] and "label leaking" in lines[0]
    assert warnings[0].message in lines[0] and warnings[0].meaning in lines[0]


def test_sanity_warning_is_frozen_and_tolerance_validated() -> None:
    w = check_results(ResultTable([row("A", "clean", 0, 80.0),
                                   row("A", "step_fgsm", 16, 85.0)]))[0]
    with pytest.raises(AttributeError):
        w.value = 1  # type: ignore[attr-defined]
    with pytest.raises(CascadeAdvError, match="tolerance"):
        check_results(ResultTable([]), tolerance=-1)
    with pytest.raises(CascadeAdvError, match="tolerance"):
        check_results(ResultTable([]), tolerance=float("nan"))
    assert check_results(ResultTable([])) == []
    # plain rows are accepted too
    assert check_results([row("A", "clean", 0, 80.0), row("A", "step_fgsm", 16, 85.0)]) == [w]


# --- multi-seed statistics -----------------------------------------------------------------


def test_mean_std_sample_standard_deviation() -> None:
    mean, std, n = mean_std([90.6, 91.2, 90.9])
    assert abs(mean - 90.9) < 1e-9 and abs(std - 0.3) < 1e-9 and n == 3
    # ddof=1: sqrt(((1-2.5)^2 + (2-2.5)^2 + (3-2.5)^2 + (4-2.5)^2) / 3) = sqrt(5/3)
    mean, std, n = mean_std(iter([1, 2, 3, 4]))
    assert (mean, n) == (2.5, 4) and abs(std - math.sqrt(5 / 3)) < 1e-12
    assert mean_std([42.0]) == (42.0, 0.0, 1)
    with pytest.raises(CascadeAdvError, match="at least one"):
        mean_std([])
    with pytest.raises(CascadeAdvError, match="finite"):
        mean_std([1.0, float("nan")])
    with pytest.raises(CascadeAdvError, match="numbers"):
        mean_std(["x"])


def test_format_mean_std_as_n18_table_3() -> None:
    assert format_mean_std(90.9, 0.25) == "90.9 ± 0.25"
    assert format_mean_std(86.125, 0.984) == "86.1 ± 0.98"
    assert format_mean_std(16.3, 2.0) == "16.3 ± 2.00"


def seed_rows() -> list[dict]:
    values = {  # (attack, eps) -> per seed k0, k1, k2
        ("clean", 0): (90.6, 91.2, 90.9),  # mean 90.9, std 0.3
        ("step_ll", 4): (86.0, 87.0, 85.0),  # mean 86.0, std 1.0
        ("iter_ll", 16): (16.0, 20.0, None),  # missing for k2: dropped
    }
    rows = []
    for (attack, eps), per_seed in values.items():
        for i, v in enumerate(per_seed):
            if v is not None:
                rows.append(row(f"k{i}", attack, eps, v))
    rows += [
        row("k0", "step_ll", 4, 1.0, metric="top5"),  # other metric: ignored
        row("k0", "step_ll", 4, 1.0, source="p0"),  # black-box: ignored
        row("p0", "clean", 0, 91.0), row("p1", "clean", 0, 93.0),  # mean 92, std sqrt(2)
        row("p0", "step_ll", 4, 88.0),
        row("other", "clean", 0, 10.0),  # in no group
    ]
    return rows


def test_aggregate_seeds_mean_std_per_cell() -> None:
    table = ResultTable(seed_rows())
    out = aggregate_seeds(table, {"Kurakin's": ["k0", "k1", "k2"], "Pivot": ("p0", "p1")})
    got = [(r["model"], r["attack"], r["eps"], r["metric"], r["n"]) for r in out]
    assert got == [
        ("Kurakin's", "clean", 0.0, "top1_mean", 3),
        ("Kurakin's", "clean", 0.0, "top1_std", 3),
        ("Kurakin's", "step_ll", 4.0, "top1_mean", 3),
        ("Kurakin's", "step_ll", 4.0, "top1_std", 3),
        ("Pivot", "clean", 0.0, "top1_mean", 2),
        ("Pivot", "clean", 0.0, "top1_std", 2),
    ]
    values = [r["value"] for r in out]
    expected = [90.9, 0.3, 86.0, 1.0, 92.0, math.sqrt(2)]
    assert all(abs(v - e) < 1e-9 for v, e in zip(values, expected, strict=True))
    assert {(r["dataset"], r["split"], r["source"], r["model_hash"]) for r in out} == {
        ("cifar10", "test", "whitebox", "")}
    # renders in the papers' layout through the usual table
    md = out.to_markdown(metric="top1_mean")
    assert "| Kurakin's | 90.9 | 86.0 |" in md and "| Pivot | 92.0 | - |" in md


def test_aggregate_seeds_other_metric_and_source() -> None:
    rows = [row(m, "iter_ll", 16, v, source="S", metric="top5")
            for m, v in (("k0", 50.0), ("k1", 54.0))]
    out = aggregate_seeds(ResultTable(rows), {"K": ["k0", "k1"]}, metric="top5", source="S")
    assert [(r["metric"], r["source"], r["value"]) for r in out] == [
        ("top5_mean", "S", 52.0), ("top5_std", "S", math.sqrt(8))]


def test_aggregate_seeds_errors() -> None:
    table = ResultTable(seed_rows())
    with pytest.raises(CascadeAdvError) as e:
        aggregate_seeds(table, {"Kurakin's": ["k0", "k1", "k3"]})
    assert "'k3'" in str(e.value) and "cascade-adv eval --checkpoint" in str(e.value)
    with pytest.raises(CascadeAdvError, match="twice"):
        aggregate_seeds(table, {"K": ["k0", "k0"]})
    with pytest.raises(CascadeAdvError, match="no models"):
        aggregate_seeds(table, {"K": []})
    with pytest.raises(CascadeAdvError, match="model names"):
        aggregate_seeds(table, {"K": "k0"})
    assert len(aggregate_seeds(table, {})) == 0


def test_paired_gain_p_value_is_the_exact_one_sided_sign_test() -> None:
    """Hand-computed binomial tails with p = 1/2: P(X >= 4 | 4) = 1/16,
    P(X >= 8 | 12) = (495 + 220 + 66 + 12 + 1) / 4096, P(X >= 6 | 9) = 130 / 512."""
    assert paired_gain_p_value(4, 0) == pytest.approx(1 / 16)
    assert paired_gain_p_value(8, 4) == pytest.approx(794 / 4096)
    assert paired_gain_p_value(6, 3) == pytest.approx(130 / 512)
    assert paired_gain_p_value(0, 5) == pytest.approx(1.0)
    assert paired_gain_p_value(0, 0) == 1.0
    with pytest.raises(ValueError, match="counts >= 0"):
        paired_gain_p_value(-1, 3)

