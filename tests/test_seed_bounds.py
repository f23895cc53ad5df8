"""``reproduce --seeds`` is bounded (count and values), checked before any work, and
planning one more seed costs the same however many seeds came before."""

from __future__ import annotations

from collections import Counter

import pytest
from _cli import run_cli

import cascade_adv.training
import cascade_adv.training.config
from cascade_adv.errors import CascadeAdvError, InvalidArgument
from cascade_adv.experiments import recipes
from cascade_adv.experiments.recipes import RECIPES, Builder, build_steps
from cascade_adv.experiments.reproduce import (
    MAX_SEED_INDEX,
    MAX_SEEDS,
    _seeds_label,
    default_configs,
    reproduce,
    seed_indices,
)

CONFIGS = default_configs()
TOO_MANY = {"huge_count": "12345678901234567890123", "count": str(MAX_SEEDS + 1),
            "list": ",".join(map(str, range(MAX_SEEDS + 1))),
            "huge_value": f"0,{MAX_SEED_INDEX + 1}", "23_digit_value": "0," + "9" * 23,
            "repeated": "0,0"}


@pytest.fixture()
def no_work(monkeypatch):
    """Planning a recipe fails the test: the checks must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a recipe was planned")
    monkeypatch.setattr(recipes.Builder, "__init__", refuse)


def test_the_bounds_are_accepted():
    assert seed_indices(MAX_SEEDS) == list(range(MAX_SEEDS))
    assert seed_indices([0, MAX_SEED_INDEX]) == [0, MAX_SEED_INDEX]
    assert seed_indices(list(range(MAX_SEEDS, 0, -1))) == list(range(MAX_SEEDS, 0, -1))


@pytest.mark.parametrize("case", list(TOO_MANY))
def test_seeds_out_of_bounds_are_one_line_exit_2_before_any_work(tmp_path, no_work, case):
    code, _, err = run_cli(["reproduce", "n18-table1", "--seeds", TOO_MANY[case], "--dry-run",
                            "--dataset", "digits", "--out", str(tmp_path / "c")], tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--seeds" in err, err
    if case != "repeated":
        assert str(MAX_SEEDS) in err or str(MAX_SEED_INDEX) in err, err  # the bound stated
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("seeds", [10**22, MAX_SEEDS + 1, list(range(20_001)),
                                   [0, MAX_SEED_INDEX + 1], [0, 10**22], [3, 0, 3]])
def test_the_python_api_refuses_them_with_a_value_error_before_any_work(tmp_path, no_work,
                                                                        seeds):
    with pytest.raises(InvalidArgument) as info:
        reproduce("n18-table1", tmp_path / "c", dataset="digits", dry_run=True, seeds=seeds)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CascadeAdvError)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert not (tmp_path / "c").exists()


def test_help_states_the_bounds(tmp_path):
    code, out, _ = run_cli(["reproduce", "--help"], tmp_path)
    assert code == 0
    text = " ".join(out.split())
    assert f"At most {MAX_SEEDS} seeds, each 0 .. {MAX_SEED_INDEX}" in text


def test_a_long_seed_list_names_its_report_folder_briefly():
    longest = list(range(MAX_SEED_INDEX, MAX_SEED_INDEX - MAX_SEEDS, -1))
    label = _seeds_label(longest, ["baseline"])
    assert len(label) < 100 and label.startswith(f"-seeds{MAX_SEEDS}-h")
    assert _seeds_label(longest[::-1], []) != _seeds_label(longest, [])
    assert _seeds_label([0, 4], []) == "-seeds0+4"  # short lists as before


def _planning_calls(monkeypatch, seeds: int) -> Counter:
    """How often planning ``n18-table1`` (with its audit) for ``seeds`` seeds reads a config
    file, resolves a training identity and makes a step."""
    calls: Counter = Counter()

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(cascade_adv.training, "load_config")
    counted(cascade_adv.training.config, "training_identity")
    counted(recipes, "Step")
    try:
        build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"), seeds=list(range(seeds)),
                    audit="quick")
    finally:
        monkeypatch.undo()
    return calls


def test_planning_reads_each_config_once_and_one_more_seed_costs_the_same(monkeypatch):
    one, two, three, many, more = (_planning_calls(monkeypatch, n) for n in (1, 2, 3, 11, 12))
    assert one["load_config"] > 0
    assert one["load_config"] == two["load_config"] == more["load_config"]  # not per seed
    for name in ("training_identity", "Step"):
        step = three[name] - two[name]
        assert step > 0 and more[name] - many[name] == step, (name, three, many, more)
