"""``reproduce NAME --audit``: the audit steps, their cost, the report's "Under the audit"
section (the table, the diagnostics, the claims judged again) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_adv.errors import InvalidArgument
from cascade_adv.experiments import cost
from cascade_adv.experiments.recipes import RECIPES, Builder, build_steps
from cascade_adv.experiments.reproduce import default_configs, reproduce, step_keys
from cascade_adv.reporting.reproduction import (
    NOT_TESTABLE,
    Claim,
    audit_lines,
    audit_summary,
    audit_table,
    check_claims,
    check_claims_under_audit,
    claim_verdict,
    compare,
)
from cascade_adv.results.published import get_table
from tests._cli import run_cli

CONFIGS = default_configs()
TINY = {"dataset": "digits", "scale": 0.01, "test_images": 32, "threads": 1,
        "only": ["baseline"]}
#: An audit cheap enough for a test: every attack of the standard protocol, few steps.
CHEAP = "apgd_ce:steps=5,apgd_t:steps=5:targets=2,square:queries=20"
ONE, ITER = ("step_ll", "step_fgsm"), ("iter_ll", "iter_fgsm")


def _events():
    seen = []
    return seen, lambda what, rec: seen.append((what, rec.step.kind, rec.step.name))


# --- the steps -----------------------------------------------------------------------------

def test_audit_adds_one_step_per_model_of_the_whitebox_table():
    steps = {s.name: s for s in build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"),
                                            audit="standard")}
    audits = {n: s for n, s in steps.items() if s.kind == "audit"}
    # the released pivot stands for the Bidirection row too: four models, four audits
    assert sorted(audits) == sorted(f"audit/n18_mnist_{m}" for m in
                                    ("baseline", "kurakin", "pivot-released", "pivot"))
    base = audits["audit/n18_mnist_baseline"]
    assert base.deps == ("train/n18_mnist_baseline",)
    assert base.params == {"model": "train/n18_mnist_baseline", "version": "standard",
                           "eps": [16.0, 32.0, 76.5], "test_images": None}
    # the paper's attacks at the eps the table lacks (0.3 x 255), for ours beside the audit
    extra = steps["whitebox/n18_mnist_baseline@audit"]
    assert extra.params["eps"] == [76.5] and extra.deps == ("train/n18_mnist_baseline",)
    assert set(extra.params["attacks"]) == {"step_ll", "step_fgsm", "iter_ll", "iter_fgsm"}
    # a table without audit_eps adds no white-box step
    t2 = build_steps(RECIPES["n18-table2"], Builder(CONFIGS, "cifar10"), only=["baseline"],
                     audit="quick")
    assert [s.params["eps"] for s in t2 if s.kind == "audit"] == [[2.0, 4.0, 8.0, 16.0]]
    assert not any(s.name.endswith("@audit") for s in t2)


def test_audit_keys_and_seeds():
    recipe = RECIPES["n18-table1"]
    plain = step_keys(build_steps(recipe, Builder(CONFIGS, "mnist")))
    audited = step_keys(build_steps(recipe, Builder(CONFIGS, "mnist"), audit="standard"))
    # adding --audit keeps every other step's key: it trains and evaluates nothing again
    assert plain.items() <= audited.items()
    quick = step_keys(build_steps(recipe, Builder(CONFIGS, "mnist"), audit="quick"))
    fewer = step_keys(build_steps(recipe, Builder(CONFIGS, "mnist", test_images=500),
                                  audit="standard"))
    name = "audit/n18_mnist_baseline"
    assert len({audited[name], quick[name], fewer[name]}) == 3     # version, test images
    # keyed by the model's training: another schedule is another audit
    scaled = step_keys(build_steps(recipe, Builder(CONFIGS, "mnist", scale=0.5),
                                   audit="standard"))
    assert scaled["audit/n18_mnist_baseline-x0.5"] != audited[name]
    # each seed's model gets its own audit, after its own training
    seeds = {s.name: s for s in build_steps(recipe, Builder(CONFIGS, "mnist"), seeds=[0, 1],
                                            audit="standard")}
    assert seeds["audit/n18_mnist_baseline-seed1"].deps == ("train/n18_mnist_baseline-seed1",)
    assert sum(s.kind == "audit" for s in seeds.values()) == 8


def test_the_defended_models_are_audited_with_the_undefended_twin_of_their_seed():
    steps = {s.name: s for s in build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"),
                                            seeds=[0, 1], audit="quick")}
    for tag in ("", "-seed1"):
        twin = f"train/n18_mnist_baseline{tag}"
        for m in ("kurakin", "pivot-released", "pivot"):
            a = steps[f"audit/n18_mnist_{m}{tag}"]
            assert a.params["twin"] == twin and a.deps == (f"train/n18_mnist_{m}{tag}", twin)
        base = steps[f"audit/n18_mnist_baseline{tag}"]           # not its own twin
        assert "twin" not in base.params and base.deps == (twin,)
    # --only keeps a defended model's audit (its twin trains as a dependency)
    only = {s.name for s in build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"),
                                        only=["kurakin"], audit="quick")}
    assert {"audit/n18_mnist_kurakin", "train/n18_mnist_baseline"} <= only
    assert "audit/n18_mnist_baseline" not in only


@pytest.mark.slow
def test_a_defended_models_audit_runs_the_transfer_from_its_twin(tmp_path):
    result = reproduce("n18-table1", tmp_path / "c", audit=CHEAP,
                       **dict(TINY, only=["kurakin"]))
    (folder,) = (tmp_path / "c" / "steps").glob("audit_n18_mnist_kurakin-*")
    checks = {c["name"]: c for c in json.loads((folder / "checks.json").read_text())}
    transfer = checks["transfer_no_stronger"]
    assert transfer["verdict"] in ("holds", "flagged"), transfer      # not "not run"
    assert result.report is not None


def test_audit_needs_a_whitebox_table():
    for name in ("n18-table4", "n18-figure4", "k17-table4", "k17-figure3"):
        with pytest.raises(InvalidArgument, match=f"{name} has none.*n18-table1"):
            build_steps(RECIPES[name], Builder(CONFIGS, RECIPES[name].datasets[0]),
                        audit="standard")
    with pytest.raises(KeyError, match="unknown attack or version 'fast'"):
        build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"), audit="fast")
    with pytest.raises(ValueError, match="standard or quick"):
        build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"), audit=True)


def test_an_interrupted_audit_keeps_its_progress(tmp_path, monkeypatch):
    from cascade_adv.experiments import steps
    from cascade_adv.experiments.steps import Runtime, Step, execute

    seen = []
    monkeypatch.setitem(steps.RUNNERS, "audit", lambda p, folder, deps, rt: seen.append(
        sorted(f.name for f in folder.iterdir() if f.name != ".lock")) or {})
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "audit.db.audit-0123456789abcdef.json").write_text("{}")   # its progress
    execute(Step("audit/m", "audit", {}), "k", str(folder), {}, Runtime(str(CONFIGS)))
    assert seen == [["audit.db.audit-0123456789abcdef.json"]]


# --- the cost ------------------------------------------------------------------------------

def test_the_strong_attacks_are_priced_by_their_passes():
    ap = cost.attack_passes
    assert ap("apgd_ce", 16) == 100 and ap("apgd_ce", 16, {"restarts": 3}) == 300
    assert ap("apgd_t", 8) == 9 * 100                           # min(9, 10 - 1) targets
    assert ap("apgd_t", 8, {"targets": 3, "steps": 50}) == 150
    assert ap("apgd_t", 8, classes=4) == 3 * 100                # 4 classes: 3 targets
    assert ap("square", 16) == pytest.approx(5000 / 3)          # forward passes only
    assert ap("square", 16, {"queries": 1000}) == pytest.approx(1000 / 3)
    # K17's attacks as before: min(eps + 4, 1.25 eps) steps; one-step attacks one pass
    assert ap("iter_fgsm", 16) == 20 and ap("iter_ll", 76.5) == 80 and ap("step_ll", 16) == 1
    assert ap("pgd", 8, {"restarts": 2}) == 2 * 10


def test_an_audit_step_is_priced_by_hand():
    from cascade_adv.training import load_config

    b = Builder(CONFIGS, "mnist", test_images=2000)
    steps = {s.name: s for s in build_steps(RECIPES["n18-table1"], b, only=["baseline"],
                                            audit="standard")}
    cfgs = {n: load_config(CONFIGS / s.params["config"], s.params["overrides"])
            for n, s in steps.items() if s.kind == "train"}
    from cascade_adv.experiments.reproduce import StepRecord

    _, passes = cost._passes(StepRecord(steps["audit/n18_mnist_baseline"], "", None), cfgs)
    # per image: the clean forward, then at each of the 3 eps APGD-CE (100), APGD-T
    # (9 targets x 100), FAB-T (9 targets x 100 steps, each a pass and a forward) and
    # Square (5000 forwards, a third of a pass each)
    attacks = 2000 / 128 * (1 / 3 + 3 * (100 + 900 + 900 * 4 / 3 + 5000 / 3))
    # the diagnostics on 256 images: 3 forwards + a gradient + the clean forward, per eps
    # step_fgsm (1), iter_fgsm (20), two noises, each with two forwards, iter_fgsm (20
    # + 2 forwards) at eps 128 and 255; APGD-CE with 200 steps and 2 restarts on 128 rows
    sample = 256 / 128 * ((1 + 1 + 1 / 3) + 3 * ((1 + 2 / 3) + (20 + 2 / 3) + 2 * 2 / 3)
                          + 2 * (20 + 2 / 3))
    assert passes == pytest.approx(attacks + sample + 128 / 128 * 400)


def test_the_cascade_is_approximated_from_the_cached_whitebox_rows(tmp_path):
    from cascade_adv.experiments.reproduce import StepRecord
    from cascade_adv.experiments.steps import Step

    rows = [{"attack": a, "eps": e, "source": "whitebox", "metric": m, "value": v}
            for a, e, m, v in [("clean", 0.0, "top1", 50.0), ("step_ll", 16.0, "top1", 40.0),
                               ("iter_fgsm", 16.0, "top1", 20.0), ("iter_fgsm", 16.0, "top5",
                                                                   5.0)]]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    white = StepRecord(Step("whitebox/m", "whitebox", {"model": "train/m"}), "", tmp_path,
                       status="cached", outputs={"rows": str(tmp_path / "rows.json")})
    survived = cost.survival([white, StepRecord(Step("whitebox/n", "whitebox",
                                                     {"model": "train/n"}), "", tmp_path)])
    assert survived == {"train/m": (0.5, {16.0: 0.2})}      # cached steps only, top-1
    # quick at eps 16 on 1280 images: APGD-CE on the half correct clean, APGD-T (3
    # targets) and Square (1000 forwards) on the fifth the paper's attacks left
    attacks = 1280 / 128 * (1 / 3 + 0.5 * 100 + 0.2 * (300 + 1000 / 3))
    # the diagnostics on 256 images, then APGD-CE (200 steps, 2 restarts) on the 128 of
    # the 256 robust rows; with 64 robust rows, on 64
    sample = 256 / 128 * ((1 + 1 + 1 / 3) + (1 + 2 / 3) + (20 + 2 / 3) + 4 / 3
                          + 2 * (20 + 2 / 3))
    assert cost.audit_passes(1280, [16], "quick", 10, survived["train/m"]) == pytest.approx(
        attacks + sample + 400)
    assert cost.diagnostic_passes(1280, [16], "quick", 10, robust=64) == pytest.approx(
        sample + 200)
    # an eps the rows lack: above 16, at most the fifth left at 16; below, the clean half
    per_eps = {e: cost.audit_passes(1280, [e], "quick", 10, survived["train/m"])
               - cost.diagnostic_passes(1280, [e], "quick", 10, 1280 * left)
               for e, left in ((76.5, 0.2), (8.0, 0.5))}
    assert per_eps[76.5] == pytest.approx(1280 / 128 * (1 / 3 + 0.5 * 100
                                                        + 0.2 * (300 + 1000 / 3)))
    assert per_eps[8.0] == pytest.approx(1280 / 128 * (1 / 3 + 0.5 * 100
                                                       + 0.5 * (300 + 1000 / 3)))



def test_a_later_seed_is_priced_from_seed_0_until_its_own_rows_run():
    from cascade_adv.experiments.reproduce import StepRecord
    from cascade_adv.experiments.steps import Step
    from cascade_adv.training import load_config

    train = next(s for s in build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"),
                                        only=["baseline"]) if s.kind == "train")
    cfg = load_config(CONFIGS / train.params["config"], train.params["overrides"])
    survived = {"train/m": (0.5, {16.0: 0.2}), "train/n-seed1": (1.0, {16.0: 0.9})}

    def passes(model):
        step = Step(f"audit/{model}", "audit", {"model": f"train/{model}", "eps": [16.0],
                                                "version": "quick", "test_images": 1280})
        return cost._passes(StepRecord(step, "", None), {f"train/{model}": cfg}, survived)[1]

    own = cost.audit_passes(1280, [16.0], "quick", 10, survived["train/m"])
    assert passes("m-seed2") == pytest.approx(own)           # seed 0's rows
    assert passes("n-seed1") == pytest.approx(               # its own rows first
        cost.audit_passes(1280, [16.0], "quick", 10, survived["train/n-seed1"]))
    assert passes("o-seed1") == pytest.approx(cost.audit_passes(1280, [16.0], "quick", 10))


# --- the report, from cells built by hand ----------------------------------------------------

def _rows(model, values, attack_eps=None):
    table = get_table("n18-table1")
    cols = attack_eps or table.columns
    return [{"model": model, "model_hash": "", "dataset": "mnist", "split": "test",
             "attack": a, "eps": float(e), "source": "whitebox", "metric": "top1",
             "value": values(a, e), "n": 1000} for a, e in cols]


def _audit_rows(model, worst):
    return _rows(model, lambda a, e: worst[e], [("audit:quick", e) for e in worst])


MAP = {"k": "Kurakin's", "p": "Pivot", "k-seed1": "Kurakin's"}.get


def _cells(rows, eps=(16.0, 32.0)):
    table = get_table("n18-table1")
    return table, compare(rows, audit_table(table, "audit:quick", eps), MAP)


def test_a_claim_between_models_flips_when_the_audit_says_so():
    # under the paper's attacks Pivot (97) stays above Kurakin's (95); the audit finds
    # Pivot's robustness mostly false (40) and Kurakin's less so (60)
    rows = (_rows("k", lambda a, e: 99.0 if a == "clean" else 95.0)
            + _rows("p", lambda a, e: 99.0 if a == "clean" else 97.0)
            + _audit_rows("k", {16.0: 60.0, 32.0: 60.0})
            + _audit_rows("p", {16.0: 40.0, 32.0: 40.0}))
    table, cells = _cells(rows)
    claim = [c for c in RECIPES["n18-table1"].claims if c.text.startswith("Pivot above")]
    plain = compare(rows, table, MAP)
    (before,) = check_claims(plain, claim, "top1")
    (after,) = check_claims_under_audit(cells, claim, "top1", table, "audit:quick")
    assert before["ours"] is True and before["ours_means"] == (97.0, 95.0)
    assert after["testable"] and after["ours"] is False and after["ours_means"] == (40.0, 60.0)
    assert claim_verdict(after) == "undecided (one seed; 40.0 vs 60.0)"
    # and the other way round: a claim that fails on the paper's attacks holds under it
    (k_above_p,) = check_claims_under_audit(
        cells, [Claim("K above P", {"row": "Kurakin's", "attack": ITER},
                      {"row": "Pivot", "attack": ITER})], "top1", table, "audit:quick")
    assert k_above_p["ours"] is True and k_above_p["ours_means"] == (60.0, 40.0)


def test_the_audited_claim_is_judged_on_the_seeds_of_each_row():
    """Three seeds a row: the audit's worst case of each seed enters the seed test."""
    names = {f"{m}{t}": row for m, row in (("k", "Kurakin's"), ("p", "Pivot"))
             for t in ("", "-seed1", "-seed2")}
    rows = []
    for i, t in enumerate(("", "-seed1", "-seed2")):
        rows += _rows(f"k{t}", lambda a, e: 99.0 if a == "clean" else 95.0)
        rows += _rows(f"p{t}", lambda a, e: 99.0 if a == "clean" else 97.0)
        rows += _audit_rows(f"k{t}", {16.0: 60.0 + i, 32.0: 60.0 + i})
        rows += _audit_rows(f"p{t}", {16.0: 40.0 + i, 32.0: 40.0 + i})
    table = get_table("n18-table1")
    cells = compare(rows, audit_table(table, "audit:quick", (16.0, 32.0)), names.get)
    claim = [c for c in RECIPES["n18-table1"].claims if c.text.startswith("Pivot above")]
    (after,) = check_claims_under_audit(cells, claim, "top1", table, "audit:quick")
    assert claim_verdict(after).startswith("fails (41.0 vs 61.0, difference -20.0"), (
        claim_verdict(after))
    assert after["ours_test"]["seeds"] == (3, 3)


def test_a_claim_that_contrasts_attacks_on_one_model_is_not_testable():
    rows = (_rows("k", lambda a, e: {"clean": 99.0, "step_ll": 90.0, "step_fgsm": 88.0}.get(
        a, 70.0)) + _audit_rows("k", {16.0: 50.0, 32.0: 30.0}))
    table, cells = _cells(rows)
    claims = [Claim("one-step above iterative", {"row": "Kurakin's", "attack": ONE},
                    {"row": "Kurakin's", "attack": ITER}),
              # clean against attacked stays a claim about the model (K17 table 2's kind)
              Claim("clean above iter_fgsm", {"row": "Kurakin's", "attack": "clean"},
                    {"row": "Kurakin's", "attack": "iter_fgsm"})]
    assert check_claims(compare(rows, table, MAP), claims, "top1")[0]["ours"] is True
    contrast, clean = check_claims_under_audit(cells, claims, "top1", table, "audit:quick")
    assert contrast["testable"] is False and contrast["ours"] is None
    assert claim_verdict(contrast) == NOT_TESTABLE
    assert clean["testable"] and clean["ours"] is True and clean["ours_means"] == (99.0, 40.0)


def test_audit_lines_name_the_lowest_cells_and_average_the_seeds():
    values = {"clean": 99.0, "step_ll": 91.0, "step_fgsm": 89.0, "iter_ll": 93.0,
              "iter_fgsm": 90.0}
    extra = [(a, 76.5) for a in ("step_ll", "step_fgsm", "iter_ll", "iter_fgsm")]
    rows = (_rows("k", lambda a, e: values[a] - (e == 32.0) * 10)
            + _rows("k", lambda a, e: values[a] - 50, extra)
            + _audit_rows("k", {16.0: 80.0, 32.0: 60.0, 76.5: 10.0})
            + _audit_rows("k-seed1", {16.0: 84.0, 32.0: 60.0, 76.5: 10.0}))
    table, cells = _cells(rows, (16.0, 32.0, 76.5))
    lines = {ln.eps: ln for ln in audit_lines(cells, table, "audit:quick", (16, 32, 76.5))}
    assert sorted(lines) == [16.0, 32.0, 76.5] and {ln.row for ln in lines.values()} == {
        "Kurakin's"}
    # N18 table 1, Kurakin's: lowest at eps 16 is iter_FGSM 98.2, at 32 iter_FGSM 87.9
    assert (lines[16.0].paper, lines[16.0].paper_attack) == (98.2, "iter_fgsm")
    assert (lines[32.0].paper, lines[32.0].paper_attack) == (87.9, "iter_fgsm")
    assert (lines[16.0].ours, lines[16.0].ours_attack) == (89.0, "step_fgsm")
    assert (lines[32.0].ours, lines[32.0].ours_attack) == (79.0, "step_fgsm")
    assert lines[16.0].audit == 82.0 and lines[16.0].seeds == 2            # seed mean
    assert lines[16.0].audit_std == pytest.approx(2 ** 0.5 * 2)            # sample std
    assert lines[16.0].gap == pytest.approx(89.0 - 82.0)
    # 0.3 x 255: no paper column; ours from the paper's attacks run there
    assert lines[76.5].paper is None and (lines[76.5].ours, lines[76.5].ours_attack) == (
        39.0, "step_fgsm")
    assert lines[76.5].gap == pytest.approx(29.0)


# --- end to end on the digits --------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro-audit") / "cache"
    reproduce("n18-table1", out, **TINY)
    return out


@pytest.fixture(scope="module")
def audited_run(plain_run):
    seen, note = _events()
    result = reproduce("n18-table1", plain_run, audit=CHEAP, on_event=note, **TINY)
    return plain_run, result, seen


@pytest.mark.slow
def test_adding_audit_to_a_finished_run_trains_nothing(audited_run):
    _, result, seen = audited_run
    done = sorted((k, n) for what, k, n in seen if what == "done")
    assert done == [("audit", "audit/n18_mnist_baseline-x0.01-digits"),
                    ("report", "report/n18-table1-x0.01-digits-n32-only-baseline"),
                    ("whitebox", "whitebox/n18_mnist_baseline-x0.01-digits@audit")]
    assert {r.status for r in result.records if r.step.kind == "train"} == {"cached"}


@pytest.mark.slow
def test_the_audit_rows_and_verdicts_reach_the_report(audited_run):
    from cascade_adv.results.store import ResultsStore

    out, result, _ = audited_run
    folder = next((out / "steps").glob("audit_n18_mnist_baseline-*"))
    rows = json.loads((folder / "rows.json").read_text())
    checks = json.loads((folder / "checks.json").read_text())
    assert [c["name"] for c in checks][:2] == ["deterministic", "logits"] and len(checks) == 12
    worst = {r["eps"]: r["value"] for r in rows if r["attack"].startswith("audit:")}
    assert sorted(worst) == [16.0, 32.0, 76.5]
    # the "Under the audit" table holds the audit's rows and ours under the paper's attacks
    section = result.comparison["n18-table1"]["audit"]
    lines = {ln["eps"]: ln for ln in section["lines"] if ln["row"] == "Baseline"}
    assert {e: ln["audit"] for e, ln in lines.items()} == worst
    white = {(r["attack"], r["eps"]): r["value"]   # the white-box step and its @audit one
             for p in (out / "steps").glob("whitebox_n18_mnist_baseline-*")
             for r in json.loads((p / "rows.json").read_text())
             if r["attack"] != "clean" and r["metric"] == "top1"}
    assert {e for _, e in white} == {16.0, 32.0, 76.5}
    for e, ln in lines.items():
        assert ln["ours"] == min(v for (_, ee), v in white.items() if ee == e)
        assert white[ln["ours_attack"], e] == ln["ours"]
        assert ln["gap"] == pytest.approx(ln["ours"] - ln["audit"])
    assert lines[16.0]["paper"] == 86.6 and lines[76.5]["paper"] is None
    # the clean accuracy the @audit step measures again is one measurement, not two seeds
    clean = [c for c in result.comparison["n18-table1"]["cells"]
             if c["row"] == "Baseline" and c["attack"] == "clean"]
    assert clean[0]["seeds"] == 1 and clean[0]["std"] is None
    # the verdicts: in comparison.json, report.md and the printed summary
    model = "n18_mnist_baseline-x0.01-digits"
    assert section["checks"] == {model: checks}
    md = (result.report / "report.md").read_text()
    assert "## Under the audit: N18 table 1" in md and "#### Claims under the audit" in md
    flagged = sum(c["verdict"] == "flagged" for c in checks)
    assert f"- **{model}**: " in md and f"{flagged} flagged" in md
    assert f"| Baseline | 16 | 86.6 (iter_fgsm) | {lines[16.0]['ours']:.1f} (" in md
    printed = "\n".join(audit_summary(section))
    assert f"Baseline, eps 32: 7.5 (iter_fgsm) / {lines[32.0]['ours']:.1f}" in printed
    assert f"diagnostics of {model}: " in printed
    # the rows are in the report's results store, as the white-box ones
    store = ResultsStore(result.report / "results.db")
    try:
        kept = [r for r in store.query(model=model) if r["attack"].startswith("audit:")]
    finally:
        store.close()
    assert {r["eps"]: r["value"] for r in kept} == worst


@pytest.mark.slow
def test_a_second_audited_run_does_nothing(audited_run):
    out, result, _ = audited_run
    seen, note = _events()
    again = reproduce("n18-table1", out, audit=CHEAP, on_event=note, **TINY)
    assert [(what, kind) for what, kind, _ in seen] == [("start", "report"), ("done", "report")]
    assert again.comparison == result.comparison


@pytest.mark.slow
def test_dry_run_prices_the_audit(audited_run, tmp_path):
    out, _, _ = audited_run
    code, stdout, _ = run_cli(["reproduce", "n18-table1", "--out", out, "--dataset", "digits",
                               "--scale", "0.01", "--test-images", "32", "--only", "baseline",
                               "--audit", "--audit-version", "quick", "--dry-run"], tmp_path)
    assert code == 0
    line = next(ln for ln in stdout.splitlines() if "audit/n18_mnist_baseline" in ln)
    assert line.startswith("todo ") and "~" in line       # another version: not cached
    assert "~0 s" not in line


# --- the command line ----------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["n18-table4", "--audit"], ("--audit audits the models of a white-box table and "
     "n18-table4 has none (n18-table4 is a black-box table); drop --audit, or use it with "
     "n18-table1")),
    (["n18-figure4", "--audit"], "n18-figure4 has none (it is a figure)"),
    (["n18-table1", "--audit", "--audit-version", "fast"], "'fast' is not one of"),
    (["n18-table1", "--audit-version", "quick"], ("--audit-version quick is used by the "
     "audit only; add --audit")),
])
def test_cli_bad_audit_options_one_line_exit_2(tmp_path, args, message):
    code, _, stderr = run_cli(["reproduce", *args, "--out", tmp_path / "c"], tmp_path)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not Path(tmp_path / "c").exists()


def test_cli_help_shows_the_audit():
    code, stdout, _ = run_cli(["reproduce", "--help"], Path.cwd())
    assert code == 0 and "--audit" in stdout and "--audit-version" in stdout
    assert "reproduce n18-table1 --audit --audit-version quick --dry-run" in stdout
