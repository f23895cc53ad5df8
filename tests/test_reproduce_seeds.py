"""``reproduce --seeds`` and one training step per training computation."""

from __future__ import annotations

import shutil

import pytest

from cascade_adv.errors import InvalidArgument
from cascade_adv.experiments.recipes import RECIPES, Builder, build_steps, chain_seed
from cascade_adv.experiments.reproduce import default_configs, reproduce, seed_indices, step_keys
from cascade_adv.reporting.reproduction import Cell, compare, render_comparison, summary
from cascade_adv.results.published import get_table
from tests._cli import run_cli

CONFIGS = default_configs()
TINY = {"dataset": "digits", "scale": 0.01, "test_images": 32, "threads": 1}


def _trained(recipe: str, dataset: str, seeds=(0,), configs=CONFIGS) -> dict[str, str]:
    steps = build_steps(RECIPES[recipe], Builder(configs, dataset), seeds=seeds)
    keys = step_keys(steps)
    return {s.name: keys[s.name] for s in steps if s.kind == "train"}


# --- seeds ---------------------------------------------------------------------------------

def test_seed_counts_and_lists():
    assert seed_indices(1) == [0] and seed_indices(3) == [0, 1, 2]
    assert seed_indices([0, 4, 2]) == [0, 4, 2]
    for bad, words in [(0, "at least 1"), (-2, "at least 1"), ([1, 2, 1], "seed 1 twice"),
                       ([], "integers"), ([-1], "integers")]:
        with pytest.raises(InvalidArgument, match=words):
            seed_indices(bad)


def test_every_seed_reseeds_the_whole_chain_pre_training_included():
    one = build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"), seeds=[0, 1, 2])
    by = {s.name: s for s in one}
    seeds = {}
    for j, tag in enumerate(["", "-seed1", "-seed2"]):
        pre, base = by[f"train/n18_mnist_pretrain{tag}"], by[f"train/n18_mnist_baseline{tag}"]
        assert base.deps == (pre.name,)                   # each seed's own pre-training
        over = [o for o in base.params["overrides"] + pre.params["overrides"]
                if o.startswith("seed=")]
        assert over == ([] if j == 0 else [f"seed={chain_seed(0, j)}"] * 2)
        seeds[j] = chain_seed(0, j)
        assert f"whitebox/n18_mnist_baseline{tag}" in by
    assert len(set(seeds.values())) == 3                   # independent seeds
    assert chain_seed(0, 1) != chain_seed(1, 1) and chain_seed(5, 0) == 5


def test_more_seeds_add_exactly_one_chain_per_configuration_and_keep_the_others():
    two = _trained("n18-table1", "mnist", seeds=[0, 1])
    three = _trained("n18-table1", "mnist", seeds=[0, 1, 2])
    one = _trained("n18-table1", "mnist")
    assert one.items() <= two.items() <= three.items()       # same names, same keys
    new = set(three) - set(two)
    assert new == {n + "-seed2" for n in one}                # one more of each chain


@pytest.mark.slow
def test_seeds_2_then_3_trains_exactly_one_more_chain(tmp_path):
    seen = []
    note = lambda what, rec: seen.append((what, rec.step.kind, rec.step.name))
    out = tmp_path / "cache"
    reproduce("n18-table1", out, only=["baseline"], seeds=2, on_event=note, **TINY)
    first = [n for what, k, n in seen if what == "done" and k == "train"]
    assert len(first) == 4                                   # pre-training + baseline, x 2
    seen.clear()
    result = reproduce("n18-table1", out, only=["baseline"], seeds=3, on_event=note, **TINY)
    again = sorted(n for what, k, n in seen if what == "done" and k == "train")
    assert again == ["train/n18_mnist_baseline-x0.01-digits-seed2",
                     "train/n18_mnist_pretrain-x0.01-digits-seed2"]
    # the report averages the three seeds of the Baseline row
    cells = result.comparison["n18-table1"]["cells"]
    base = [c for c in cells if c["row"] == "Baseline" and c["ours"] is not None]
    assert base and all(c["seeds"] == 3 and c["std"] is not None for c in base)
    assert "± " in (result.report / "report.md").read_text()


def test_seeds_for_trains_the_extra_seeds_of_the_named_models_only():
    plain = _trained("n18-table1", "mnist")
    steps = build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"), seeds=[0, 1, 2],
                        seeds_for=["baseline"], audit="quick")
    keys = step_keys(steps)
    names = {s.name for s in steps}
    trained = {n: keys[n] for n in names if n.startswith("train/")}
    assert plain.items() <= trained.items()                  # every row's first seed, as is
    assert set(trained) - set(plain) == {f"train/n18_mnist_{m}-seed{j}" for j in (1, 2)
                                         for m in ("pretrain", "baseline")}
    for j in (1, 2):                   # the Baseline's extra seeds are evaluated and audited
        assert {f"whitebox/n18_mnist_baseline-seed{j}",
                f"audit/n18_mnist_baseline-seed{j}"} <= names
    assert not [n for n in names if "seed" in n and "baseline" not in n and "pretrain" not in n]
    # the same steps as --seeds 3 restricted to them: nothing is keyed differently
    every = step_keys(build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"),
                                  seeds=[0, 1, 2], audit="quick"))
    assert all(every[n] == k for n, k in keys.items())
    # one name may be given as a string, as a list of one
    again = build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"), seeds=[0, 1, 2],
                        seeds_for="baseline", audit="quick", only="baseline")
    assert {s.name for s in again} == {n for n in names if "baseline" in n or "pretrain" in n}


def test_seeds_for_names_the_seeds_in_the_report(tmp_path):
    from cascade_adv.experiments.report import _seed_words

    result = reproduce("n18-table1", tmp_path / "c", dry_run=True, seeds=3,
                       seeds_for=["baseline"], **TINY)
    assert result.records[-1].step.name == "report/n18-table1-x0.01-digits-n32-seeds3-for-baseline"
    assert result.records[-1].step.params["seeds_for"] == ["baseline"]
    assert _seed_words([0, 1, 2], ["baseline"]) == (
        "3 seeds of the configurations whose name contains baseline, one of every other")
    assert _seed_words([0, 1], []) == "2 seeds of every configuration"
    one = reproduce("n18-table1", tmp_path / "c", dry_run=True, **TINY)
    assert one.records[-1].step.name == "report/n18-table1-x0.01-digits-n32"


def test_seeds_are_averaged_and_their_spread_widens_the_tolerance():
    table = get_table("n18-table1")

    def row(model, value):
        return {"model": model, "source": "whitebox", "attack": "step_ll", "eps": 16.0,
                "metric": "top1", "value": value, "n": 2000}

    ours = [row("b", 90.0), row("b-seed1", 94.0), row("b-seed2", 98.0)]
    cells = [c for c in compare(ours, table, {"b": "Baseline", "b-seed1": "Baseline",
                                              "b-seed2": "Baseline"}.get)
             if c.ours is not None]
    (c,) = cells
    assert (c.model, c.ours, c.std, c.seeds) == ("b", 94.0, 4.0, 3)     # sample std
    # paper 95.7: |94 - 95.7| = 1.7 > 1.5 but <= 2 std = 8: reproduced within the spread
    assert c.paper == 95.7 and not c.off(1.5)
    assert Cell("Baseline", "whitebox", "step_ll", 16.0, "top1", 95.7, 94.0).off(1.5)
    assert summary(cells, 1.5)["off"] == 0
    assert "94.0 ± 4.0 (95.7, -1.7)" in render_comparison(cells, table)[1]


def test_seeds_bad_input_is_one_line_exit_2(tmp_path):
    for value, words in [("0", "at least 1"), ("1,2,1", "twice"), ("a", "integers")]:
        code, _, err = run_cli(["reproduce", "n18-table1", "--seeds", value, "--out",
                                  str(tmp_path / "c"), "--dataset", "digits"], tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--seeds" in err and words in err, err
        assert not (tmp_path / "c").exists()
    for args, words in [(["--seeds-for", "baseline"], "two or more --seeds"),
                        (["--seeds", "2", "--seeds-for", "nothing"], "matches no model")]:
        code, _, err = run_cli(["reproduce", "n18-table1", *args, "--out",
                                str(tmp_path / "c"), "--dataset", "digits"], tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--seeds-for" in err and words in err, err
        assert not (tmp_path / "c").exists()



def test_seeds_with_an_audit_need_the_recipes_undefended_twin(tmp_path):
    """k17-table1 names no undefended twin: its seeds' transfer diagnostics could not run."""
    code, _, err = run_cli(["reproduce", "k17-table1", "--seeds", "2", "--audit", "--dry-run",
                            "--out", str(tmp_path / "c"), "--dataset", "cifar10"], tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "names none" in err and "n18-table1" in err, err
    assert not (tmp_path / "c").exists()
    code, _, err = run_cli(["reproduce", "n18-table1", "--seeds", "2", "--audit",
                              "--audit-version", "quick", "--dry-run", "--out",
                              str(tmp_path / "d"), "--dataset", "digits", "--scale", "0.01"],
                             tmp_path)
    assert code == 0, err


# --- one step per training computation -------------------------------------------------------

def test_released_pivot_and_bidirection_share_one_model():
    steps = {s.name: s for s in build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"))}
    assert "train/n18_mnist_bidirection" not in steps
    shared = steps["train/n18_mnist_pivot-released"]
    assert shared.params["also"] == ["n18_mnist_bidirection"]
    assert shared.params["paper"] == ["n18-table1: Pivot", "n18-table1: Bidirection"]
    # the pre-training every row starts from is one step, not a model standing for itself
    assert steps["train/n18_mnist_pretrain"].params["also"] == []
    # the paper's detached pivot computes something else
    assert "train/n18_mnist_pivot" in steps
    # the report maps the one model to both rows
    from cascade_adv.experiments.report import row_mapper

    rows_of = row_mapper(RECIPES["n18-table1"], get_table("n18-table1"), "",
                         {"n18_mnist_pivot-released": shared.params["paper"]})
    assert rows_of("n18_mnist_pivot-released") == ["Pivot", "Bidirection"]


@pytest.fixture()
def twin_configs(tmp_path):
    """A configs folder with the Baseline's chain and a second config ``twin`` that
    extends it; a test writes the twin's differences."""
    folder = tmp_path / "configs"
    shutil.copytree(CONFIGS, folder)
    return folder


def _twin_shares(folder, body: str) -> bool:
    (folder / "n18" / "twin.yaml").write_text(
        "extends: table1_mnist_baseline.yaml\nname: twin\n" + body)
    b = Builder(folder, "mnist")
    base = b.train("n18_mnist_baseline")
    return b.train("twin") == base


@pytest.mark.parametrize("body", [
    "",                                                       # only the name differs
    "paper: ['n18-table1: Kurakin''s']\n",
    "log_every: 7\ncheckpoint:\n  every: 123\n  keep: 5\n",
    "data:\n  root: /elsewhere\n",
])
def test_configs_that_compute_the_same_share_one_training_step(twin_configs, body):
    assert _twin_shares(twin_configs, body)


@pytest.mark.parametrize("body", [
    "seed: 1\n",
    "optim:\n  lr: 0.05\n",
    "optim:\n  momentum: 0.5\n",
    "optim:\n  lr_milestones: [4000]\n",
    "model:\n  init: kaiming\n",
    "model:\n  bn_momentum: 0.1\n",
    "adversarial:\n  mode: replace\n  k: 32\n",
    "data:\n  flip: true\n",
    "init_from: runs/n18_mnist_baseline\n",                 # another start
    "init_mode: weights\n",
])
def test_configs_that_differ_in_training_do_not_share(twin_configs, body):
    assert not _twin_shares(twin_configs, body)


def test_one_job_ends_a_chain_with_its_evaluation_before_the_next_chain(monkeypatch, tmp_path):
    from cascade_adv.experiments import reproduce as rp
    from cascade_adv.experiments.steps import Runtime, Step

    order = []
    monkeypatch.setattr(rp, "execute", lambda step, key, folder, deps, rt:
                        order.append(step.name) or {})
    steps = [Step("train/a", "train", {}), Step("whitebox/a", "whitebox", {}, ("train/a",)),
             Step("train/a-seed1", "train", {}),
             Step("whitebox/a-seed1", "whitebox", {}, ("train/a-seed1",))]
    records = [rp.StepRecord(s, str(i), tmp_path / str(i)) for i, s in enumerate(steps)]
    rp.run_steps(records, Runtime(str(CONFIGS)))
    assert order == ["train/a", "whitebox/a", "train/a-seed1", "whitebox/a-seed1"]
