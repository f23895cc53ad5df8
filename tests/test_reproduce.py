"""``cascade-adv reproduce``: recipes, the step cache, resume, concurrency, the comparison
with the paper and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cascade_adv.experiments.recipes import ALIASES, RECIPES, Builder, build_steps, get_recipe
from cascade_adv.experiments.reproduce import default_configs, reproduce, step_keys
from cascade_adv.io import folder_lock
from cascade_adv.reporting.reproduction import (
    check_claims,
    compare,
    render_comparison,
    summary,
)
from cascade_adv.results.published import get_table
from tests._cli import run_cli

CONFIGS = default_configs()
TINY = {"dataset": "digits", "scale": 0.01, "test_images": 32, "threads": 1}


def _events():
    seen = []
    return seen, lambda what, rec: seen.append((what, rec.step.kind, rec.step.name))


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- recipes -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_builds_from_the_repository_configs(name):
    recipe = RECIPES[name]
    for dataset in recipe.datasets:
        steps = build_steps(recipe, Builder(CONFIGS, dataset))
        names = [s.name for s in steps]
        assert len(names) == len(set(names))
        assert all(d in names for s in steps for d in s.deps)       # a closed graph
        assert any(s.kind == "train" for s in steps)
        # keys are a pure function of the configs: building again gives the same keys
        again = build_steps(recipe, Builder(CONFIGS, dataset))
        assert step_keys(steps) == step_keys(again)
    for table in recipe.tables:
        get_table(table)


def test_aliases_and_unknown_names():
    assert get_recipe("k17-figure4") is RECIPES["k17-figure1"]
    assert set(ALIASES.values()) <= set(RECIPES)
    with pytest.raises(ValueError, match="n18-table1"):
        get_recipe("n18-table99")


def test_scale_shortens_every_schedule_by_the_same_factor():
    b = Builder(CONFIGS, "mnist", scale=0.1)
    build_steps(RECIPES["n18-table1"], b)
    pre = b.steps["train/n18_mnist_pretrain-x0.1"].params["overrides"]
    row = b.steps["train/n18_mnist_pivot-x0.1"].params["overrides"]
    assert "optim.iterations=94" in pre                         # 938 x 0.1
    assert "optim.iterations=800" in row                        # 8000 x 0.1
    assert "optim.lr_milestones=[400, 600]" in row              # 4000, 6000 x 0.1
    assert b.steps["train/n18_mnist_pivot-x0.1"].deps == ("train/n18_mnist_pretrain-x0.1",)


def test_cascade_configs_depend_on_the_crafted_set_of_their_source():
    b = Builder(CONFIGS, "cifar10", scale=0.5)
    build_steps(RECIPES["n18-table5"], b)
    cascade = b.steps["train/n18_cifar10_cascade_pivot-x0.5"]
    craft = b.steps[cascade.params["saved"]]
    assert craft.kind == "craft" and craft.deps == ("train/n18_cifar10_P2-x0.5",)
    assert craft.params["eps"] == [float(e) for e in range(1, 17)]   # N18: eps 1..max_e
    assert craft.params["images"] == 25000                           # half the split


def test_k17_models_a_to_d_train_from_their_own_random_starts():
    b = Builder(CONFIGS, "cifar10")
    steps = build_steps(RECIPES["k17-table4"], b)
    trained = {s.name: s for s in steps if s.kind == "train"}
    assert sorted(trained) == [f"train/k17_cifar10_{m}" for m in "ABCD"]    # no pre-training
    assert all(s.deps == () for s in trained.values())
    seeds = {s.identity["config"].split("seed: ")[1].split()[0] for s in trained.values()}
    assert len(seeds) == 4


def test_cascade_sources_of_tables_7_and_10_share_no_initialisation_with_the_targets():
    b = Builder(CONFIGS, "cifar10")
    build_steps(RECIPES["n18-table7"], b)
    assert b.steps["train/n18_cifar10_K2C"].deps[0] == "train/n18_cifar10_pretrain2"
    assert b.steps["train/n18_cifar10_P4C"].deps[0] == "train/n18_cifar10_pretrain_resnet110_2"
    assert b.steps["train/n18_cifar10_cascade_kurakin"].deps[0] == "train/n18_cifar10_pretrain"
    # all cascade networks learn from the same saved images of P2
    assert {b.steps[n].params["saved"] for n in ("train/n18_cifar10_K2C",
            "train/n18_cifar10_P4C", "train/n18_cifar10_cascade_kurakin")} == {
        "craft/n18_cifar10_P2"}


def test_only_keeps_the_named_models_and_what_they_need():
    steps = build_steps(RECIPES["n18-table2"], Builder(CONFIGS, "cifar10"),
                        only=["baseline", "step_ll"])
    trained = sorted(s.name for s in steps if s.kind == "train")
    # the bidirectional row trains what the released pivot trains: one step for both
    assert trained == sorted(["train/n18_cifar10_pretrain", "train/n18_cifar10_baseline",
                              "train/n18_cifar10_step_ll_kurakin",
                              "train/n18_cifar10_step_ll_pivot",
                              "train/n18_cifar10_step_ll_pivot-released"])
    shared = next(s for s in steps if s.name == "train/n18_cifar10_step_ll_pivot-released")
    assert shared.params["also"] == ["n18_cifar10_step_ll_bidirection"]
    assert {"n18-table2: step_ll, Pivot", "n18-table2: step_ll, Bidirection"} <= set(
        shared.params["paper"])


# --- comparison and claims -----------------------------------------------------------------

def _paper_as_ours(table):
    """The published rows as if they were ours (model = paper label; a mean_std table's
    means as the top-1 of one network per row)."""
    if table.kind == "mean_std":
        return [dict(r, n=10000, metric="top1") for r in table.rows
                if r["metric"] == "top1_mean"]
    return [dict(r, n=10000) for r in table.rows]


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.claims])
def test_every_claim_holds_on_the_papers_own_numbers(name):
    recipe = RECIPES[name]
    for table_id in recipe.tables:
        table = get_table(table_id)
        cells = compare(_paper_as_ours(table), table, lambda m: m)
        for result in check_claims(cells, recipe.claims, table.metrics[0]):
            assert result["paper"] is True, result
            assert result["ours"] is True, result


def test_comparison_against_hand_computed_differences():
    table = get_table("n18-table1")      # Baseline: clean 99.6, step_ll 16 95.7
    ours = [{"model": "b", "model_hash": "", "dataset": "mnist", "split": "test",
             "attack": a, "eps": e, "source": "whitebox", "metric": "top1", "value": v,
             "n": 2000} for a, e, v in [("clean", 0.0, 99.0), ("step_ll", 16.0, 90.0)]]
    cells = compare(ours, table, {"b": "Baseline"}.get)
    by = {(c.row, c.attack, c.eps): c for c in cells}
    assert by["Baseline", "clean", 0.0].diff == pytest.approx(-0.6)
    assert by["Baseline", "step_ll", 16.0].diff == pytest.approx(-5.7)
    assert not by["Baseline", "clean", 0.0].off(1.5) and by["Baseline", "step_ll", 16.0].off(1.5)
    assert by["Pivot", "clean", 0.0].ours is None and by["Pivot", "clean", 0.0].paper == 99.6
    s = summary(cells, 1.5)
    # 4 rows x 9 columns: Baseline ran (7 of its cells missing), 3 rows not run
    assert (s["compared"], s["off"], s["missing"], s["rows_not_run"]) == (2, 1, 7, 3)
    html, md = render_comparison(cells, table, tolerance=1.5)
    assert "**90.0 (95.7, -5.7)**" in md and "99.0 (99.6, -0.6) |" in md
    assert html.count('class="off"') == 1 and html.count('class="ok"') == 1
    claim = check_claims(cells, RECIPES["n18-table1"].claims, "top1")[0]
    assert claim["paper"] is True and claim["ours"] is None        # our cells are missing


def _seed_cells(row: str, values: list[float]) -> list:
    from cascade_adv.reporting.reproduction import Cell

    mean = sum(values) / len(values)
    return [Cell(row, "whitebox", "step_ll", 16.0, "top1", 50.0, mean, row, 1000,
                 seeds=len(values), by_seed=tuple(enumerate(values)))]


@pytest.mark.parametrize("a, b, verdict", [
    ([97.0, 98.0, 96.0], [90.0, 91.0, 89.0], "holds"),       # a clear win
    ([80.0, 81.0, 82.0], [90.0, 91.0, 89.0], "fails"),       # a clear loss
    ([97.0, 90.0, 80.0], [90.0, 91.0, 89.0], "undecided"),   # the seeds overlap
    ([97.0], [90.0], "undecided (one seed"),                 # no spread to judge by
])
def test_a_claim_gets_one_of_three_verdicts_on_the_seed_means(a, b, verdict):
    from cascade_adv.reporting.reproduction import Claim, claim_verdict, render_claims

    claim = Claim("a above b", {"row": "a"}, {"row": "b"})
    (r,) = check_claims(_seed_cells("a", a) + _seed_cells("b", b), [claim], "top1")
    assert claim_verdict(r).startswith(verdict), claim_verdict(r)
    assert claim_verdict(r) in render_claims([r])[1]


def test_the_seed_test_is_welchs_interval_computed_by_hand():
    from cascade_adv.evaluation.stats import compare_seeds

    # means 97 and 90, sample std 1 each over 3 seeds: se = sqrt(1/3 + 1/3) = 0.8165, Welch
    # df = (2/3)^2 / (2 (1/3)^2 / 2) = 4, t(0.975, 4) = 2.7764: 7 +- 2.267
    r = compare_seeds([97.0, 98.0, 96.0], [90.0, 91.0, 89.0])
    assert r.verdict == "holds" and r.df == pytest.approx(4.0)
    assert r.interval == pytest.approx((7 - 2.2669, 7 + 2.2669), abs=1e-3)
    # unequal spreads: std 5 over 3 seeds against std 1 over 4 -> df 2.26, t 4.03
    r = compare_seeds([90.0, 95.0, 100.0], [89.0, 90.0, 91.0, 90.0])
    se = (25 / 3 + (2 / 3) / 4) ** 0.5
    df = se ** 4 / ((25 / 3) ** 2 / 2 + ((2 / 3) / 4) ** 2 / 3)
    assert r.se == pytest.approx(se) and r.df == pytest.approx(df)
    assert r.verdict == "undecided" and r.interval[0] < 0 < r.interval[1]


# --- end to end on the digits --------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "cache"
    seen, note = _events()
    result = reproduce("n18-table1", out, on_event=note, **TINY)
    return out, result, seen


@pytest.mark.slow
def test_reproduce_runs_the_recipe_and_reports_beside_the_paper(first_run):
    _out, result, seen = first_run
    kinds = [k for what, k, _ in seen if what == "done"]
    # pretrain, baseline, kurakin, both pivots; the bidirectional row is the released pivot
    assert kinds.count("train") == 5 and kinds.count("whitebox") == 4 and "report" in kinds
    report = result.report
    assert (report / "report.html").is_file() and (report / "results.db").is_file()
    comp = json.loads((report / "comparison.json").read_text())["n18-table1"]
    assert comp["summary"]["compared"] == 45       # 5 rows x 9 columns, both pivots on one
    assert len(comp["claims"]) == 3
    md = (report / "report.md").read_text()
    assert ("every schedule scaled by 0.01, the first 32 test images: a run reduced in "
            "schedule and test images") in md
    assert ("n18_mnist_pivot-released-x0.01-digits also stands for "
            "n18_mnist_bidirection-x0.01-digits") in md
    assert "n18_mnist_pivot-released-x0.01-digits" in md          # the scale in every name
    assert (report / "figures" / "n18-table1-ours-vs-paper.png").stat().st_size > 1000


@pytest.mark.slow
def test_second_run_does_no_training_and_no_evaluation(first_run):
    out, result, _ = first_run
    seen, note = _events()
    again = reproduce("n18-table1", out, on_event=note, **TINY)
    assert [(what, kind) for what, kind, _ in seen] == [("start", "report"), ("done", "report")]
    assert {r.status for r in again.records if r.step.kind != "report"} == {"cached"}
    assert again.comparison == result.comparison


@pytest.mark.slow
def test_a_changed_setting_reruns_only_what_depends_on_it(first_run):
    out, _, _ = first_run
    seen, note = _events()
    reproduce("n18-table1", out, on_event=note, **dict(TINY, test_images=16))
    assert {k for what, k, _ in seen if what == "done"} == {"whitebox", "report"}
    assert sum(k == "whitebox" for what, k, _ in seen if what == "done") == 4


@pytest.mark.slow
def test_two_jobs_give_the_same_results_as_one(first_run, tmp_path):
    _, result, _ = first_run
    two = reproduce("n18-table1", tmp_path / "cache", jobs=2, **TINY)
    assert two.comparison == result.comparison


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_same_results(first_run, tmp_path):
    _, result, _ = first_run
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "cascade_adv.cli.main", "reproduce", "n18-table1", "--out",
           str(out), "--dataset", "digits", "--scale", "0.01", "--test-images", "32",
           "--threads", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 300
    while len(list(out.glob("steps/train_*/done.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in out.glob("steps/*/done.json")}
    assert finished and not (out / "reports").exists()             # killed in the middle
    seen, note = _events()
    resumed = reproduce("n18-table1", out, on_event=note, **TINY)
    rerun = {name for what, _, name in seen if what == "start"}
    assert rerun and all(not f.startswith(n.replace("/", "_")) for f in finished
                         for n in rerun)
    assert resumed.comparison == result.comparison


@pytest.mark.slow
def test_a_diverged_training_is_named_in_the_report(first_run, tmp_path, monkeypatch):
    from cascade_adv.errors import TrainingDiverged
    from cascade_adv.experiments import reproduce as rp

    out = tmp_path / "cache"
    shutil.copytree(first_run[0], out)
    for kind in ("train", "whitebox"):      # the detached pivot, not the released one
        done = list(out.glob(f"steps/{kind}_n18_mnist_pivot-x0.01-digits-*/done.json"))
        assert done                         # (other tests may have added evaluations)
        for d in done:
            d.unlink()
    real, why = rp.execute, "training diverged: loss is nan at iteration 3 (lr 0.1)"

    def execute(step, *args):
        if step.name == "train/n18_mnist_pivot-x0.01-digits":
            raise TrainingDiverged(why)
        return real(step, *args)

    monkeypatch.setattr(rp, "execute", execute)
    result = reproduce("n18-table1", out, **TINY)
    status = {r.step.name: r.status for r in result.records}
    assert status["whitebox/n18_mnist_pivot-x0.01-digits"] == "blocked"
    md = (result.report / "report.md").read_text()
    assert "Steps that did not finish" in md
    assert f"- train/n18_mnist_pivot-x0.01-digits failed: {why}" in md
    assert ("- whitebox/n18_mnist_pivot-x0.01-digits blocked: it needs "
            "train/n18_mnist_pivot-x0.01-digits") in md
    assert "Steps that did not finish" not in (first_run[1].report / "report.md").read_text()


def _without_pivot(first_run, out: Path) -> None:
    """A copy of the first run's cache whose detached pivot has not finished."""
    shutil.copytree(first_run[0], out)
    for kind in ("train", "whitebox"):
        for d in out.glob(f"steps/{kind}_n18_mnist_pivot-x0.01-digits-*/done.json"):
            d.unlink()


@pytest.mark.slow
def test_report_only_reports_the_finished_steps_and_runs_no_other(first_run, tmp_path,
                                                                  monkeypatch):
    from cascade_adv.experiments import reproduce as rp

    out = tmp_path / "cache"
    _without_pivot(first_run, out)

    def execute(step, *args):
        raise AssertionError(f"--report-only ran {step.name}")

    monkeypatch.setattr(rp, "execute", execute)
    running = next(out.glob("steps/train_n18_mnist_pivot-x0.01-digits-*"))
    with folder_lock(running):          # as another reproduce of the cache would
        result = reproduce("n18-table1", out, report_only=True, device="cuda:7", **TINY)
    status = {r.step.name: r.status for r in result.records}
    waiting = ["train/n18_mnist_pivot-x0.01-digits", "whitebox/n18_mnist_pivot-x0.01-digits"]
    assert sorted(n for n, s in status.items() if s == "not run") == waiting
    assert not list(out.glob("steps/*pivot-x0.01-digits-*/done.json"))
    md = (result.report / "report.md").read_text()
    assert "A partial report (--report-only): 2 of 9 steps not run yet" in md
    assert "### Steps not run yet" in md or "## Steps not run yet" in md
    assert f"- {waiting[0]}: running now (process {os.getpid()})" in md
    assert f"- {waiting[1]}\n" in md
    # the finished models' cells as in the full run; the detached pivot's are missing
    def cells(comparison, leave=""):
        return sorted((c["row"], c["attack"], c["eps"], c["model"], c["ours"])
                      for c in comparison["n18-table1"]["cells"] if c["model"] != leave)

    detached = "n18_mnist_pivot-x0.01-digits"
    assert cells(result.comparison) == cells(first_run[1].comparison, leave=detached)
    assert cells(result.comparison) != cells(first_run[1].comparison)


@pytest.mark.slow
def test_cli_report_only_says_the_report_is_partial(first_run, tmp_path):
    out = tmp_path / "cache"
    _without_pivot(first_run, out)
    code, stdout, _ = run_cli(["reproduce", "n18-table1", "--out", out, "--dataset", "digits",
                               "--scale", "0.01", "--test-images", "32", "--report-only"],
                              tmp_path)
    assert code == 0
    assert "a partial report: 2 steps not run yet (--report-only)" in stdout
    assert "report: " in stdout


@pytest.mark.parametrize("args, message", [
    (["--dry-run"], "--dry-run lists the steps and --report-only reports the finished ones"),
    ([], "holds no finished step of n18-table1-x0.01-digits-n32: nothing to report yet"),
])
def test_cli_report_only_bad_input_one_line_exit_2(tmp_path, args, message):
    code, _stdout, stderr = run_cli(["reproduce", "n18-table1", "--out", tmp_path / "c",
                                     "--dataset", "digits", "--scale", "0.01",
                                     "--test-images", "32", "--report-only", *args], tmp_path)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_ray_executor_gives_the_same_results(first_run, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'cascade-adv[ray]')")
    _, result, _ = first_run
    two = reproduce("n18-table1", tmp_path / "cache", jobs=2, executor="ray", **TINY)
    assert two.comparison == result.comparison


# --- the command line ----------------------------------------------------------------------

@pytest.mark.slow
def test_cli_dry_run_lists_cached_steps_with_estimates(first_run, tmp_path):
    out, _, _ = first_run
    code, stdout, _ = run_cli(["reproduce", "n18-table1", "--out", out, "--dataset", "digits",
                               "--scale", "0.01", "--test-images", "32", "--dry-run"], tmp_path)
    assert code == 0
    assert "9 of 10 steps cached" in stdout                # all but the report
    code, stdout, _ = run_cli(["reproduce", "n18-figure4", "--out", out, "--dataset", "digits",
                               "--scale", "0.01", "--dry-run"], tmp_path)
    lines = stdout.splitlines()
    # figure 4 on MNIST uses table 1's models: cached, only the analyses are to run
    assert any(ln.startswith("cached  train/n18_mnist_pivot-x0.01-digits ") for ln in lines)
    assert any(ln.startswith("todo    softmax/n18_mnist_pivot-x0.01-digits ") and "~" in ln
               for ln in lines)                            # with a measured estimate
    assert "4 of 8 steps cached" in stdout                 # the four trainings


def test_cli_list_names_every_recipe(tmp_path):
    code, stdout, _ = run_cli(["reproduce", "--list"], tmp_path)
    assert code == 0
    for name in [*RECIPES, *ALIASES]:
        assert name in stdout


@pytest.mark.parametrize("args, message", [
    (["n18-table99"], "unknown recipe 'n18-table99'; the recipes are: n18-table1"),
    (["n18-table1", "--scale", "0"], "--scale must be in (0, 1]"),
    (["n18-table1", "--scale", "1.5"], "--scale must be in (0, 1]"),
    (["n18-table1", "--dataset", "cifar10"], "n18-table1 runs on mnist, not cifar10"),
])
def test_cli_bad_options_one_line_exit_2(tmp_path, args, message):
    code, _stdout, stderr = run_cli(["reproduce", *args, "--out", tmp_path / "c"], tmp_path)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_cli_absent_data_names_the_layout_and_the_download_option(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(["reproduce", "n18-table1", "--data-dir", tmp_path / "empty",
                               "--out", tmp_path / "c"], tmp_path)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "mnist/" in stderr and "--download" in stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("manifest, message", [
    ({"format": 1, "dataset": "cifar10", "recipes": ["n18-table2"]},
     "holds the cache of cifar10 recipes (n18-table2)"),
    ({"format": 99, "dataset": "mnist", "version": "9.0", "recipes": []},
     "holds a cache of format 99"),
    ("{not json", "cache.json is damaged"),
])
def test_cli_foreign_cache_is_refused_and_left_intact(tmp_path, manifest, message):
    out = tmp_path / "c"
    (out / "steps" / "x").mkdir(parents=True)
    (out / "steps" / "x" / "done.json").write_text('{"key": "k"}')
    (out / "cache.json").write_text(manifest if isinstance(manifest, str)
                                    else json.dumps(manifest))
    before = _tree(out)
    code, _, stderr = run_cli(["reproduce", "n18-table1", "--dataset", "digits", "--out", out],
                              tmp_path)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert _tree(out) == before


def test_cli_folder_that_is_not_a_cache_is_refused(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(["reproduce", "n18-table1", "--dataset", "digits", "--out", out],
                              tmp_path)
    assert code == 2 and "holds no reproduce cache" in stderr
    assert _tree(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_wall_time_schedules_the_graph_on_the_jobs():
    from cascade_adv.experiments.cost import wall_time
    from cascade_adv.experiments.reproduce import StepRecord
    from cascade_adv.experiments.steps import Step

    def rec(name, seconds, deps=(), status="todo"):
        r = StepRecord(Step(name, "train", {}, tuple(deps)), "", Path("."), status=status)
        r.estimate = seconds
        return r

    pre = rec("pre", 10)
    rows = [rec(f"r{i}", 30, ["pre"]) for i in range(3)]
    report = rec("report", 1, ["r0", "r1", "r2"])
    assert wall_time([pre, *rows, report], 1) == 10 + 90 + 1
    assert wall_time([pre, *rows, report], 2) == 10 + 60 + 1     # r0 | r1, then r2
    assert wall_time([pre, *rows, report], 3) == 10 + 30 + 1
    assert wall_time([rec("pre", 10, status="cached"), *rows, report], 3) == 31


def test_estimate_of_an_interrupted_training_counts_only_what_is_left(tmp_path):
    from cascade_adv.experiments.cost import _passes
    from cascade_adv.experiments.reproduce import StepRecord
    from cascade_adv.training import load_config

    b = Builder(CONFIGS, "mnist", scale=0.1)
    build_steps(RECIPES["n18-table1"], b)
    step = b.steps["train/n18_mnist_baseline-x0.1"]
    cfgs = {n: load_config(CONFIGS / s.params["config"], s.params["overrides"])
            for n, s in b.steps.items() if s.kind == "train"}
    rec = StepRecord(step, "", tmp_path)
    assert _passes(rec, cfgs)[1] == 800 - 94           # continues the 94 pre-training its
    (tmp_path / "run" / "checkpoints" / "ckpt-0000500").mkdir(parents=True)
    assert _passes(rec, cfgs)[1] == 800 - 500          # resumes at its checkpoint


def test_configs_name_the_rows_a_report_places_them_in():
    """Every paper config names the rows that place its model in a report built from a
    store (``eval`` / ``transfer`` register them): white-box tables, the label of the
    N18 black-box tables, or both."""
    from cascade_adv.experiments.recipes import config_index
    from cascade_adv.results.published import blackbox_label, whitebox_rows
    from cascade_adv.training import load_config

    cfgs = {name: load_config(CONFIGS / rel) for name, rel in config_index(CONFIGS).items()}
    for name, cfg in cfgs.items():
        if cfg.paper:
            assert whitebox_rows(cfg.paper) or blackbox_label(cfg.paper) is not None, name
    assert sum(bool(c.paper) for c in cfgs.values()) >= 44
    assert ("n18-table2", "step_FGSM, Pivot") in whitebox_rows(
        cfgs["n18_cifar10_step_fgsm_pivot"].paper)
    assert ("n18-table6", "step_ll, P") in whitebox_rows(
        cfgs["n18_cifar10_resnet110_step_ll_pivot"].paper)
    assert ("k17-table5", "No adversarial training") in whitebox_rows(
        cfgs["k17_cifar10_baseline"].paper)
    labels = {n: blackbox_label(c.paper) for n, c in cfgs.items()}
    assert labels["n18_cifar10_baseline"] == "B1" and labels["n18_cifar10_K2"] == "K2"
    assert labels["n18_cifar10_step_ll_pivot"] == "P1"
    assert labels["n18_cifar10_cascade_pivot"] == "P1C" and labels["n18_cifar10_P4C"] == "P4C"
    assert not whitebox_rows(cfgs["n18_cifar10_B2"].paper)  # a black-box source only


def test_paper_key_is_checked_against_the_published_tables():
    from cascade_adv.errors import ConfigError
    from cascade_adv.training import load_config

    cfg = load_config(None, ['paper=["n18-table4: B1", "n18-table2: Baseline"]'])
    assert cfg.paper_row("n18-table4") == "B1" and cfg.paper_row("n18-table1") is None
    with pytest.raises(ConfigError, match="n18-table1 has no row 'Pivo'; its rows are"):
        load_config(None, ['paper=["n18-table1: Pivo"]'])
    with pytest.raises(ConfigError, match="TABLE: ROW"):
        load_config(None, ['paper=["n18-table99: Pivot"]'])


@pytest.mark.slow
def test_figure4_draws_the_softmax_argument_along_step_ll_only(first_run):
    out, _, _ = first_run
    result = reproduce("n18-figure4", out, **dict(TINY, test_images=None))
    rows = json.loads(next((out / "steps").glob("softmax_n18_mnist_pivot-*/rows.json"))
                      .read_text())
    assert {r["attack"] for r in rows} == {"step_ll"}          # figure 6 adds the others
    assert (result.report / "figures" / "n18_fig4_softmax_argument.png").is_file()


def test_a_step_runs_once_when_two_invocations_reach_it_together(tmp_path, monkeypatch):
    import threading

    from cascade_adv.experiments import steps
    from cascade_adv.experiments.steps import Runtime, Step, execute, read_done

    calls = []

    def slow(params, folder, deps, rt):
        calls.append(folder)
        time.sleep(0.3)
        return {"rows": "r"}

    monkeypatch.setitem(steps.RUNNERS, "whitebox", slow)
    step, rt = Step("whitebox/m", "whitebox", {}), Runtime(str(CONFIGS))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        execute(step, "k1", str(tmp_path / "s"), {}, rt))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [{"rows": "r"}, {"rows": "r"}]
    assert read_done(tmp_path / "s", "k1")["outputs"] == {"rows": "r"}
    # an unfinished evaluation of another key starts over from an empty folder
    (tmp_path / "s" / "partial.npy").write_text("x")
    execute(step, "k2", str(tmp_path / "s"), {}, rt)
    assert len(calls) == 2 and not (tmp_path / "s" / "partial.npy").exists()


def test_a_claim_is_also_judged_with_each_other_model_of_a_row():
    table = get_table("n18-table1")

    def rows(model, value):
        return [{"model": model, "model_hash": "", "dataset": "mnist", "split": "test",
                 "attack": a, "eps": e, "source": "whitebox", "metric": "top1",
                 "value": value, "n": 2000} for a, e in table.columns]

    ours = rows("k", 95.0) + rows("p", 50.0) + rows("p-released", 97.0)
    cells = compare(ours, table, {"k": "Kurakin's", "p": "Pivot", "p-released": "Pivot"}.get)
    claim = [c for c in RECIPES["n18-table1"].claims if c.text.startswith("Pivot above")]
    (r,) = check_claims(cells, claim, "top1")
    assert r["ours"] is False and r["ours_means"] == (50.0, 95.0)       # the first model
    (alt,) = r["alternatives"]
    assert alt["model"] == "p-released" and alt["ours"] is True and alt["ours_means"] == (
        97.0, 95.0)
    from cascade_adv.reporting.reproduction import render_claims

    assert ("undecided (one seed; 50.0 vs 95.0); with p-released: undecided (one seed; 97.0 "
            "vs 95.0)") in render_claims([r])[1]


def test_sweep_networks_carry_the_scale_once():
    b = Builder(CONFIGS, "cifar10", scale=0.1)
    steps = build_steps(RECIPES["n18-figure3"], b)
    names = sorted(s.name for s in steps if s.kind == "train" and "lam2" in s.name)
    assert "train/n18_fig3_lambda2/lam2=0.001-x0.1" in names
    assert "train/n18_fig3_lambda2_released/lam2=0.3-x0.1" in names and len(names) == 12
    assert b.steps["train/n18_fig3_lambda2/lam2=0.001-x0.1"].params["experiment"] == (
        "n18_fig3_lambda2-x0.1")


def test_k17_table1_at_cifar10_scale_has_every_row():
    b = Builder(CONFIGS, "cifar10")
    steps = build_steps(RECIPES["k17-table1"], b)
    rows = {e.split(": ", 1)[1] for s in steps if s.kind == "train"
            for e in s.params["paper"] if e.startswith("k17-table1:")}
    assert rows == set(get_table("k17-table1").row_order)
    deeper = b.steps["train/k17_cifar10_deeper_step_ll"]
    assert deeper.deps == () and "depth: 56" in deeper.identity["config"]


def test_cli_unavailable_device_is_refused_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, _, stderr = run_cli(["reproduce", "n18-table1", "--dataset", "digits", "--device",
                               "cuda", "--out", tmp_path / "c"], tmp_path)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "cuda" in stderr.lower()
    assert not (tmp_path / "c").exists()


def test_a_tiny_scale_still_continues_past_the_pretraining():
    b = Builder(CONFIGS, "mnist", scale=0.0001)
    build_steps(RECIPES["n18-table1"], b)
    assert "optim.iterations=1" in b.steps["train/n18_mnist_pretrain-x0.0001"].params["overrides"]
    assert "optim.iterations=2" in b.steps["train/n18_mnist_pivot-x0.0001"].params["overrides"]
