"""ResultTable: the papers' Markdown layout, CSV / JSON round trips, row checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_adv.errors import CascadeAdvError
from cascade_adv.reporting import ROW_KEYS, ResultTable


def row(model: str, attack: str, eps: float, value: float, metric: str = "top1",
        source: str = "whitebox") -> dict:
    return {"model": model, "model_hash": "h-" + model, "dataset": "mnist", "split": "test",
            "attack": attack, "eps": eps, "source": source, "metric": metric, "value": value,
            "n": 10000}


def n18_table1() -> ResultTable:
    """Two lines of N18 table 1 (MNIST), attacks step_ll and iter_fgsm."""
    rows = []
    for model, values in [("baseline", [99.6, 95.7, 30.2, 86.6, 7.5]),
                          ("pivot", [99.63, 99.4, 98.8, 98.8, 96.35])]:
        rows.append(row(model, "clean", 0, values[0]))
        rows.append(row(model, "clean", 0, 100.0, metric="top5"))
        # eps given out of order: columns are sorted by eps within an attack
        rows.append(row(model, "step_ll", 32, values[2]))
        rows.append(row(model, "step_ll", 16, values[1]))
        rows.append(row(model, "iter_fgsm", 16, values[3]))
        rows.append(row(model, "iter_fgsm", 32, values[4]))
    return ResultTable(rows)


def test_markdown_layout() -> None:
    lines = n18_table1().to_markdown().splitlines()
    assert lines[0] == (
        "| model | clean | step_ll 16 | step_ll 32 | iter_fgsm 16 | iter_fgsm 32 |"
    )
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: | ---: |"
    assert lines[2] == "| baseline | 99.6 | 95.7 | 30.2 | 86.6 | 7.5 |"
    assert lines[3] == "| pivot | 99.6 | 99.4 | 98.8 | 98.8 | 96.3 |"
    assert len(lines) == 4


def test_markdown_other_metric_and_missing_cells() -> None:
    table = n18_table1()
    table.extend([row("clean_only", "clean", 0, 50.0)])
    md = table.to_markdown("top5").splitlines()
    assert md[0] == "| model | clean |"
    assert md[2:] == ["| baseline | 100.0 |", "| pivot | 100.0 |"]
    top1 = table.to_markdown().splitlines()
    assert top1[-1] == "| clean_only | 50.0 | - | - | - | - |"


def test_markdown_black_box_sources() -> None:
    table = ResultTable([row("target", "clean", 0, 90.0),
                         row("target", "step_fgsm", 16, 40.0, source="srcA"),
                         row("target", "step_fgsm", 16, 60.0, source="srcB")])
    assert table.to_markdown().splitlines()[2:] == [
        "| target | srcA | 90.0 | 40.0 |",
        "| target | srcB | 90.0 | 60.0 |",
    ]


def test_csv_json_round_trip(tmp_path: Path) -> None:
    table = n18_table1()
    table.to_csv(tmp_path / "r.csv")
    table.to_json(tmp_path / "r.json")
    assert ResultTable.from_csv(tmp_path / "r.csv") == table
    assert ResultTable.from_json(tmp_path / "r.json") == table
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == ",".join(ROW_KEYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temp files


def test_rows_are_checked_and_copied() -> None:
    table = n18_table1()
    assert len(table) == 12
    table.rows[0]["value"] = -1.0
    assert table.rows[0]["value"] == 99.6
    assert table.filter(model="pivot", attack=["clean", "step_ll"], metric="top1").value(
        "pivot", "step_ll", 32) == 98.8
    bad = row("m", "clean", 0, 1.0)
    del bad["n"]
    with pytest.raises(CascadeAdvError, match="'n'"):
        ResultTable([bad])
    with pytest.raises(CascadeAdvError, match="'colour'"):
        ResultTable([{**row("m", "clean", 0, 1.0), "colour": 1}])
    no_hash = row("m", "clean", 0, 1.0)
    del no_hash["model_hash"]
    assert ResultTable([no_hash]).rows[0]["model_hash"] == ""
