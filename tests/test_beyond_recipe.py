"""``reproduce beyond-n18-mnist``: N18 table 1's MNIST setting trained with R+Step-LL, FGSM
with a random start and PGD beside Kurakin's and the released Pivot. Its plan (shared
with n18-table1), its price, and a report with no paper column, the training costs
relative to Kurakin's and the claims (the embedding against Kurakin's per crafting
method; random start against the masking, under the audit)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cascade_adv.experiments import cost
from cascade_adv.experiments.recipes import (
    BEYOND_LAYOUT,
    BEYOND_ROWS,
    RECIPES,
    Builder,
    build_steps,
)
from cascade_adv.experiments.reproduce import Cache, default_configs, plan, reproduce, step_keys
from cascade_adv.experiments.steps import Runtime
from cascade_adv.reporting.reproduction import (
    CostLine,
    audit_table,
    check_claims,
    check_claims_under_audit,
    claim_verdict,
    compare,
    cost_ratios,
    gap_cells,
    render_audit,
    render_claims,
    render_comparison,
    render_costs,
)
from cascade_adv.results.published import PUBLISHED, get_table, layout
from tests._cli import run_cli

CONFIGS = default_configs()
RECIPE = RECIPES["beyond-n18-mnist"]
TINY = {"dataset": "digits", "scale": 0.01, "test_images": 32, "threads": 1}
#: An audit cheap enough for a test: every attack of the standard protocol, few steps.
CHEAP = "apgd_ce:steps=5,apgd_t:steps=5:targets=2,square:queries=20"
SHARED = ("n18_mnist_pretrain", "n18_mnist_kurakin", "n18_mnist_pivot-released")
ROW = {v: k for k, v in BEYOND_ROWS.items()}      # row label -> config (= model) name


def _steps(recipe: str, builder: Builder, **kw) -> dict:
    return {s.name: s for s in build_steps(RECIPES[recipe], builder, **kw)}


# --- the plan --------------------------------------------------------------------------------

def test_the_recipe_trains_and_evaluates_its_eight_rows():
    steps = _steps("beyond-n18-mnist", Builder(CONFIGS, "mnist"))
    trained = sorted(n for n, s in steps.items() if s.kind == "train")
    assert trained == sorted(f"train/{c}" for c in ("n18_mnist_pretrain", *BEYOND_ROWS))
    assert all(steps[f"train/{c}"].deps == ("train/n18_mnist_pretrain",) for c in BEYOND_ROWS)
    # every row at the full schedule, PGD's included: 8000 iterations, 10 PGD steps
    for c in BEYOND_ROWS:
        assert "optim.iterations=8000" in steps[f"train/{c}"].params["overrides"]
    assert "steps: 10" in steps["train/beyond_mnist_pgd_pivot"].identity["config"]
    # the paper's white-box attacks at N18 table 1's eps, for every row
    t1 = get_table("n18-table1")
    for c in BEYOND_ROWS:
        white = steps[f"whitebox/{c}"].params
        assert set(white["attacks"]) == {a for a, _ in t1.columns} - {"clean"}
        assert white["eps"] == [16.0, 32.0]
    assert not RECIPE.tables and RECIPE.whitebox_tables == ("beyond-n18-mnist",)


def test_audit_adds_eps_16_32_and_76_5_with_the_baseline_as_twin():
    steps = _steps("beyond-n18-mnist", Builder(CONFIGS, "mnist"), seeds=[0, 1], audit="quick")
    for tag in ("", "-seed1"):
        twin = f"train/n18_mnist_baseline{tag}"
        for c in BEYOND_ROWS:
            a = steps[f"audit/{c}{tag}"]
            assert a.params["eps"] == [16.0, 32.0, 76.5] and a.params["twin"] == twin
            assert a.deps == (f"train/{c}{tag}", twin)
            assert steps[f"whitebox/{c}{tag}@audit"].params["eps"] == [76.5]
    assert sum(s.kind == "audit" for s in steps.values()) == 16
    assert not any(n.startswith("whitebox/n18_mnist_baseline") for n in steps)   # a twin only


@pytest.mark.parametrize("kw", [{}, {"seeds": [0, 2]}, {"audit": "standard"}])
def test_kurakin_and_pivot_are_n18_table1s_steps(kw):
    """The same names and cache keys as n18-table1's: a cache that ran it has them."""
    for builder in (lambda: Builder(CONFIGS, "mnist"),
                    lambda: Builder(CONFIGS, "mnist", scale=0.01, test_images=32,
                                    substitute="digits")):
        ours = step_keys(list(_steps("beyond-n18-mnist", builder(), **kw).values()))
        theirs = step_keys(list(_steps("n18-table1", builder(), **kw).values()))
        shared = {n for n in ours if n.split("/", 1)[1].split("@")[0].startswith(SHARED)
                  or "n18_mnist_baseline" in n}
        assert {n.split("/")[0] for n in shared} >= {"train", "whitebox"} | (
            {"audit"} if kw.get("audit") else set())
        assert {n: ours[n] for n in shared} == {n: theirs[n] for n in shared}
        # the beyond rows are new computations
        assert not {k for n, k in ours.items() if "beyond_" in n} & set(theirs.values())


def test_a_cache_that_ran_n18_table1_gives_kurakin_and_pivot_for_free(tmp_path):
    cache = Cache(tmp_path / "out", "mnist")
    for rec in plan(build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist")), cache):
        rec.folder.mkdir(parents=True)     # as a finished run leaves its step folders
        (rec.folder / "done.json").write_text(json.dumps(
            {"key": rec.key, "outputs": {}, "seconds": 1.0}))
    records = plan(build_steps(RECIPE, Builder(CONFIGS, "mnist")), cache)
    cached = sorted(r.step.name for r in records if r.status == "cached")
    assert cached == sorted(["train/n18_mnist_pretrain", "train/n18_mnist_kurakin",
                             "whitebox/n18_mnist_kurakin", "train/n18_mnist_pivot-released",
                             "whitebox/n18_mnist_pivot-released"])


# --- the price -------------------------------------------------------------------------------

def _estimates(configs: Path, monkeypatch) -> dict[str, float]:
    monkeypatch.setattr(cost, "calibrate", lambda key, device, quick=False: 1e-3)
    records = plan(build_steps(RECIPE, Builder(configs, "mnist")),
                   Cache(configs.parent / "out", "mnist"))
    cost.estimate(records, Runtime(str(configs), device="cpu"))
    return {r.step.name: r.estimate for r in records}


def test_the_pgd_rows_price_grows_with_their_steps(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    ten = _estimates(configs, monkeypatch)
    for name in ("mnist_pgd.yaml", "mnist_pgd_pivot.yaml"):
        path = configs / "beyond" / name
        path.write_text(path.read_text().replace("steps: 10 ", "steps: 20 ")
                        .replace("alpha: 0.25", "alpha: 0.125"))
    twenty = _estimates(configs, monkeypatch)
    left = (8000 - 938) * 1e-3      # the iterations after the pre-training, 1 ms a pass
    # a pass for the step, k / m = 0.5 of a pass per gradient step of the crafting, and
    # in append mode (Pivot) the k extra rows: 0.5 more
    assert ten["train/n18_mnist_kurakin"] == pytest.approx(left * 1.5)
    assert ten["train/beyond_mnist_kurakin_r_step_ll"] == pytest.approx(left * 1.5)
    # the FGSM-RS rows run the overfitting monitor every 200 iterations: PGD's 10 gradient
    # passes and two forwards (a third of a pass each) on 256 images, 2 passes of 128
    monitor = 256 / 128 * (10 + 2 / 3) / 200
    assert ten["train/beyond_mnist_kurakin_fgsm_rs"] == pytest.approx(left * (1.5 + monitor))
    assert ten["train/beyond_mnist_pgd"] == pytest.approx(left * (1 + 0.5 * 10))
    assert twenty["train/beyond_mnist_pgd"] == pytest.approx(left * (1 + 0.5 * 20))
    assert ten["train/beyond_mnist_pgd_pivot"] == pytest.approx(left * (1 + 0.5 * 10 + 0.5))
    assert twenty["train/beyond_mnist_pgd_pivot"] == pytest.approx(left * (1 + 0.5 * 20 + 0.5))
    # nothing else changes price
    assert {n: v for n, v in ten.items() if "pgd" not in n} == {
        n: v for n, v in twenty.items() if "pgd" not in n}


def test_dry_run_prices_every_step_of_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(cost, "calibrate", lambda key, device, quick=False: 1e-3)
    result = reproduce("beyond-n18-mnist", tmp_path / "c", dry_run=True, **TINY)
    est = {r.step.name.replace("-x0.01-digits", ""): r.estimate for r in result.records}
    assert len(est) == 18 and all(v > 0 for n, v in est.items() if not n.startswith("report"))
    # at 80 iterations (9 of them pre-training): PGD 6 passes an iteration, Kurakin's 1.5
    assert est["train/beyond_mnist_pgd"] == pytest.approx(71 * 6e-3)
    assert est["train/beyond_mnist_pgd"] / est["train/n18_mnist_kurakin"] == pytest.approx(4)
    assert not (tmp_path / "c").exists()           # a dry run writes nothing
    code, stdout, _ = run_cli(["reproduce", "beyond-n18-mnist", "--out", tmp_path / "c",
                               "--dataset", "digits", "--scale", "0.01", "--test-images", "32",
                               "--threads", "1", "--dry-run"], tmp_path)
    assert code == 0
    assert any(ln.startswith("todo    train/beyond_mnist_pgd-x0.01-digits ") and "~" in ln
               for ln in stdout.splitlines())
    assert "0 of 18 steps cached" in stdout


def test_cli_refuses_another_dataset_in_one_line(tmp_path):
    code, _, stderr = run_cli(["reproduce", "beyond-n18-mnist", "--dataset", "cifar10",
                               "--out", tmp_path / "c"], tmp_path)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "beyond-n18-mnist runs on mnist, not cifar10" in stderr
    assert not (tmp_path / "c").exists()


# --- the report, from rows built by hand ---------------------------------------------------------

def _rows(model: str, value, cols=None) -> list[dict]:
    return [{"model": model, "model_hash": "", "dataset": "mnist", "split": "test",
             "attack": a, "eps": float(e), "source": "whitebox", "metric": "top1",
             "value": value(a, e), "n": 1000} for a, e in (cols or BEYOND_LAYOUT.columns)]


def _model(row: str, seed: int) -> str:
    return ROW[row] + (f"-seed{seed}" if seed else "")


def _row_of(name: str) -> list[str]:
    from cascade_adv.reporting.reproduction import without_seed

    return [BEYOND_ROWS[without_seed(name)]] if without_seed(name) in BEYOND_ROWS else []


def test_the_layout_has_table1s_grid_and_no_numbers():
    t1 = get_table("n18-table1")
    assert BEYOND_LAYOUT.columns == t1.columns and BEYOND_LAYOUT.kind == "whitebox"
    assert BEYOND_LAYOUT.row_order == tuple(BEYOND_ROWS.values())
    assert not BEYOND_LAYOUT.published and not BEYOND_LAYOUT.rows
    assert "beyond-n18-mnist" not in PUBLISHED      # no config's paper key can name it
    assert all(BEYOND_LAYOUT.value(r, a, e) is None for r in BEYOND_LAYOUT.row_order
               for a, e in BEYOND_LAYOUT.columns)
    with pytest.raises(ValueError, match="hide the published table"):
        layout("n18-table1", "n18-table2", "x", ["a"])
    with pytest.raises(ValueError, match="distinct row labels"):
        layout("n18-table1", "mine", "x", ["a", "a"])


def test_ours_alone_without_a_paper_column_and_the_claims_three_ways():
    # three seeds a row; Pivot's iterative accuracy above Kurakin's with step_ll and pgd,
    # below with r_step_ll, within the noise with fgsm_rs
    pivot_gain = {"step_ll": 10.0, "r_step_ll": -10.0, "fgsm_rs": 0.0, "pgd": 5.0}
    rows = []
    for seed in range(3):
        for row in BEYOND_ROWS.values():
            method, loss = row.split(", ")
            base = 80.0 + (pivot_gain[method] if loss == "Pivot" else 0.0)
            noise = [0.0, 3.0, -3.0][seed] * (method == "fgsm_rs")
            rows += _rows(_model(row, seed), lambda a, e, b=base, n=noise, s=seed:
                          99.0 if a == "clean" else b + n + s * 0.1 * (a[0] == "i"))
    cells = compare(rows, BEYOND_LAYOUT, _row_of)
    assert all(c.paper is None and c.seeds == 3 for c in cells)
    _, md = render_comparison(cells, BEYOND_LAYOUT)
    head, _, first = md.splitlines()[:3]
    assert head == "| row | " + " | ".join(
        "clean" if a == "clean" else f"{a} {e:g}" for a, e in BEYOND_LAYOUT.columns) + " |"
    assert first.startswith("| step_ll, Kurakin's | 99.0 ± 0.0 | 80.0 ± 0.0 | 80.0 ± 0.0 |")
    assert "(" not in md and "paper" not in md    # no paper numbers, no differences
    plain = [c for c in RECIPE.claims if not c.gap]
    results = check_claims(cells, plain, "top1")
    verdicts = [claim_verdict(r).split(" ")[0] for r in results]
    assert verdicts == ["holds", "fails", "undecided", "holds"]
    assert all(r["paper"] is None for r in results)
    _, claims_md = render_claims(results, paper=False)
    assert claims_md.splitlines()[:2] == ["| claim | ours |", "|---|---|"]
    assert "| step_ll: the embedding beats Kurakin's" in claims_md


def test_the_masking_claim_compares_the_iter_fgsm_gap_seed_by_seed():
    audit = "audit:quick"
    eps = (16.0, 32.0, 76.5)
    extra = [(a, 76.5) for a in ("step_ll", "step_fgsm", "iter_ll", "iter_fgsm")]
    # iter_FGSM 90 at every eps; the audit finds step_ll Kurakin's at 40 + seed (a gap of
    # 50 - seed: masking), r_step_ll Kurakin's at 85 + seed (gap 5 - seed), fgsm_rs at
    # 40 + 2 seed (the same masking)
    worst = {"step_ll, Kurakin's": 40.0, "r_step_ll, Kurakin's": 85.0,
             "fgsm_rs, Kurakin's": 40.0}
    def value(a, e):
        return 99.0 if a == "clean" else 90.0

    rows = []
    for seed in range(3):
        for row, w in worst.items():
            m = _model(row, seed)
            rows += _rows(m, value) + _rows(m, value, extra)
            rows += _rows(m, lambda a, e, w=w, s=seed, r=row: w + s * (2 if "fgsm" in r else 1),
                          [(audit, e) for e in eps])
    wide = audit_table(BEYOND_LAYOUT, audit, eps)
    cells = compare(rows, wide, _row_of)
    gaps = {(c.row, c.eps): c for c in gap_cells(cells, "iter_fgsm", audit)}
    assert len(gaps) == 9 and gaps["step_ll, Kurakin's", 76.5].ours == pytest.approx(49.0)
    assert gaps["step_ll, Kurakin's", 76.5].by_seed == ((0, 50.0), (1, 49.0), (2, 48.0))
    results = check_claims_under_audit(cells, RECIPE.claims, "top1", BEYOND_LAYOUT, audit)
    by = {r["claim"].split(":")[0] + (" gap" if "masking" in r["claim"] else ""): r
          for r in results}
    assert claim_verdict(by["r_step_ll gap"]).startswith("holds (49.0 vs 4.0, difference +45.0")
    assert claim_verdict(by["fgsm_rs gap"]).startswith("undecided (49.0 vs 48.0")
    assert by["pgd gap"]["ours"] is None                            # no pgd row here
    assert by["r_step_ll gap"]["ours_test"]["seeds"] == (3, 3)
    # the masking claims need the audit: not judged under the paper's attacks
    h, md = render_audit([], {}, check_claims(compare(rows, BEYOND_LAYOUT, _row_of),
                                              [c for c in RECIPE.claims if not c.gap], "top1"),
                         results, paper=False)
    assert "paper (lowest" not in md and "paper (lowest" not in h
    line = next(ln for ln in md.splitlines() if ln.startswith("| r_step_ll: random start"))
    assert line.split(" | ")[1] == "-" and "holds" in line.split(" | ")[2]


def test_training_seconds_sum_the_legs(tmp_path):
    lines = [(950, 10.0), (960, 20.0), (970, 30.0), (980, 5.0), (990, 12.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": i, "seconds": t}) + "\n" for i, t in lines))
    assert cost.training_seconds(tmp_path) == pytest.approx(30.0 + 12.0)   # two clocks
    # a resumed leg whose clock had not fallen below the last line: legs.jsonl splits it
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": i, "seconds": t}) + "\n"
        for i, t in [(950, 10.0), (960, 20.0), (970, 25.0), (980, 40.0)]))
    (tmp_path / "legs.jsonl").write_text(
        json.dumps({"iteration": 938}) + "\n" + json.dumps({"iteration": 960}) + "\n")
    assert cost.training_seconds(tmp_path) == pytest.approx(20.0 + 40.0)
    assert cost.training_seconds(tmp_path / "none") is None


def test_costs_are_relative_to_kurakins():
    lines = [CostLine("step_ll, Kurakin's", "k", 1, 7062, 0.5, 1.5, 0.1, 706.2, "cpu"),
             CostLine("pgd, Kurakin's", "p", 2, 7062, 5.0, 6.0, 0.35, None, "cpu")]
    ratios = cost_ratios(lines, "step_ll, Kurakin's")
    assert ratios["pgd, Kurakin's"] == {"crafting": 10.0, "passes": 4.0,
                                        "seconds_per_iteration": pytest.approx(3.5),
                                        "wall": None}
    _, md = render_costs(lines, "step_ll, Kurakin's")
    assert "| pgd, Kurakin's (2 seeds) | 7062 | 5.00 (x10.00) | 6.00 (x4.00) | 0.350 (x3.50) " \
           "| n/a | cpu |" in md
    assert "| step_ll, Kurakin's | 7062 | 0.50 (x1.00) | 1.50 (x1.00)" in md


# --- end to end on the digits ------------------------------------------------------------------

@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("beyond") / "cache"
    result = reproduce("beyond-n18-mnist", out, only=["n18_mnist_kurakin", "pgd"],
                       audit=CHEAP, **TINY)
    return out, result


@pytest.mark.slow
def test_the_report_has_no_paper_column_and_has_the_costs_and_claims(audited_run, tmp_path):
    out, result = audited_run
    comp = result.comparison["beyond-n18-mnist"]
    assert comp["published"] is False and comp["audit"]["published"] is False
    assert all(c["paper"] is None for c in comp["cells"])
    assert comp["summary"]["measured"] == 27 and comp["summary"]["rows_not_run"] == 5
    costs = {c["row"]: c for c in comp["costs"]}
    assert sorted(costs) == ["pgd, Kurakin's", "pgd, Pivot", "step_ll, Kurakin's"]
    assert costs["pgd, Kurakin's"]["ratios"]["passes"] == pytest.approx(4.0)
    assert costs["pgd, Pivot"]["ratios"]["crafting"] == pytest.approx(10.0)
    assert costs["step_ll, Kurakin's"]["iterations"] == 71
    assert costs["pgd, Kurakin's"]["wall"] > 0 and costs["pgd, Kurakin's"]["device"]
    md = (result.report / "report.md").read_text()
    assert "## beyond-n18-mnist: ours (no published numbers)" in md
    assert "| row | clean | step_ll 16 |" in md and "| claim | ours |" in md
    assert "## Training cost relative to step_ll, Kurakin's" in md
    assert "## Under the audit: beyond-n18-mnist" in md
    assert "paper (lowest" not in md and "(paper, difference)" not in md
    assert "N18 table 1: MNIST test results" not in md    # no published rows anywhere
    assert "#### Masking gap iter_fgsm - audit worst case" in md
    masking = [r for r in comp["audit"]["claims"] if "masking" in r["claim"]]
    assert len(masking) == 3 and masking[2]["ours_test"] is not None       # pgd's
    assert len(comp["claims"]) == 4                    # the masking claims need the audit
    code, stdout, _ = run_cli(["reproduce", "beyond-n18-mnist", "--out", out, "--dataset",
                               "digits", "--scale", "0.01", "--test-images", "32", "--only",
                               "n18_mnist_kurakin,pgd", "--threads", "1", "--quiet"], tmp_path)
    assert code == 0
    assert "beyond-n18-mnist: 27 of 72 cells measured, no published numbers" in stdout
    assert "cells beside the paper's" not in stdout
