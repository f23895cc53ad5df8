"""The command line end to end on tiny data, and its one-line errors (exit status 2)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli

from cascade_adv import attacks
from cascade_adv.results.advsets import load_adversarial_set

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None):
    """Run ``cascade-adv ARGS`` in this process (through its entry point ``main``, so the
    one-line errors and exit codes are the console script's)."""
    code, out, err = run_cli([str(a) for a in args], cwd or os.getcwd())
    return subprocess.CompletedProcess(["cascade-adv", *args], code, out, err)


def test_console_script_exit_codes(tmp_path):
    """The installed entry point in a fresh interpreter: exit 0, and one line with exit 2
    for bad input."""
    exe = shutil.which("cascade-adv")
    cmd = [exe] if exe else [sys.executable, "-m", "cascade_adv.cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([*cmd, "attacks"], check=False, cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "iter_fgsm" in ok.stdout
    bad = subprocess.run([*cmd, "eval", "--checkpoint", "missing", "--eps", "300"],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert_user_error(bad, "--eps", "[0, 255]")


def assert_user_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    result = cli("train", "--config", str(ROOT / "configs/digits_baseline.yaml"), "--out",
                 str(work / "run"), "--quiet", "model.depth=8", "optim.iterations=30",
                 "optim.lr_milestones=[20, 25]", "checkpoint.every=10", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "trained digits_baseline" in result.stdout
    return work


def test_train_writes_run_folder(trained_run):
    run = trained_run / "run"
    for name in ("config.yaml", "metrics.jsonl", "final/model.safetensors", "checkpoints/latest"):
        assert (run / name).exists(), name


def test_eval_prints_table_and_upserts(trained_run):
    args = ["eval", "--checkpoint", str(trained_run / "run"), "--attacks", "step_ll,iter_fgsm",
            "--eps", "4,8", "--limit", "64", "--quiet", "--results", "res.db", "--csv", "t.csv",
            "--json", "t.json"]
    first = cli(*args, cwd=trained_run)
    assert first.returncode == 0, first.stderr
    header = first.stdout.splitlines()[0]
    assert "clean" in header and "step_ll 4" in header and "iter_fgsm 8" in header
    again = cli(*args, cwd=trained_run)
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(trained_run / "res.db") as con:
        rows = con.execute("SELECT attack, eps, metric FROM results").fetchall()
    assert len(rows) == len(set(rows)) == 10  # (clean + 2 attacks x 2 eps) x (top1, top5)
    assert json.loads((trained_run / "t.json").read_text())
    assert (trained_run / "t.csv").read_text().startswith("model,")


def test_attack_writes_loadable_set(trained_run):
    out = trained_run / "adv"
    result = cli("attack", "--checkpoint", str(trained_run / "run"), "--attack", "iter_fgsm",
                 "--eps", "4,8", "--limit", "20", "--quiet", "--out", str(out), cwd=trained_run)
    assert result.returncode == 0, result.stderr
    adv = load_adversarial_set(out, dataset="digits", split="test", image_shape=[1, 8, 8])
    assert len(adv) == 40 and sorted(set(adv.eps.tolist())) == [4.0, 8.0]
    assert adv.images.dtype == np.uint8


@pytest.mark.parametrize("args,words", [
    (["eval", "--checkpoint", "RUN", "--attacks", "step_lll"], ["step_lll", "step_ll"]),
    (["eval", "--checkpoint", "RUN", "--eps", "300"], ["--eps", "300", "[0, 255]"]),
    (["eval", "--checkpoint", "RUN", "--eps", "4,x"], ["--eps", "comma-separated"]),
    # the lists are checked when the command line is parsed, before anything is loaded
    (["eval", "--checkpoint", "missing_folder", "--attacks", "clean,nope"], ["--attacks", "nope"]),
    (["transfer", "--source", "missing", "--target", "missing", "--eps", ","], ["--eps", "empty"]),
    (["analyze", "softmax", "--model", "missing", "--methods", "step_ll,nope"],
     ["--methods", "nope"]),
    (["craft", "--checkpoint", "missing", "--attack", "iter_fgsm,step_ll", "--out", "x"],
     ["--attack", "iter_fgsm,step_ll"]),
    (["eval", "--checkpoint", "RUN", "--eps", "-1"], ["[0, 255]"]),
    (["train", "--config", str(ROOT / "configs/digits_baseline.yaml"), "model.init=glorot"],
     ["model.init", "kaiming", "xavier", "glorot"]),
    (["eval", "--checkpoint", "missing_folder"], ["missing_folder"]),
    (["attack", "--checkpoint", "RUN", "--attack", "nope", "--eps", "4", "--out", "x"], ["nope"]),
])
def test_bad_input_is_one_line_exit_2(trained_run, args, words):
    args = [str(trained_run / "run") if a == "RUN" else a for a in args]
    assert_user_error(cli(*args, cwd=trained_run), *words)


HAVE_APGD = all(n in attacks.names() for n in ("apgd_ce", "apgd_t", "square"))
AUDIT_VERSION = "quick" if HAVE_APGD else "pgd:restarts=2,iter_ll"


def test_audit_prints_stores_and_registers(trained_run):
    """``audit`` end to end on a tiny digits network: the table (per eps: clean, each
    attack's cumulative accuracy, worst case), the rows in the store, the model
    registered, the CSV / JSON copies, and no progress file left behind."""
    args = ["audit", "--checkpoint", str(trained_run / "run"), "--eps", "4,16", "--version",
            AUDIT_VERSION, "--limit", "24", "--quiet", "--results", "audit.db", "--csv",
            "audit.csv", "--json", "audit.json"]
    result = cli(*args, cwd=trained_run)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| eps | clean |") and lines[0].endswith("| worst case |")
    assert [line.split(" | ")[0] for line in lines[2:4]] == ["| 4", "| 16"]
    cells = [[float(v) for v in line.strip("| ").split(" | ")[1:]] for line in lines[2:4]]
    assert all(row[0] >= row[1] and row[1:] == sorted(row[1:], reverse=True) and
               row[-1] == row[-2] for row in cells)  # cumulative: never rises
    assert cells[1][-1] < cells[0][0]  # eps 16 breaks some image of this undefended net
    with sqlite3.connect(trained_run / "audit.db") as con:
        rows = con.execute("SELECT attack, eps, source, metric, value, n FROM results").fetchall()
        models = [r[0] for r in con.execute("SELECT name FROM models")]
    source = f"audit:{AUDIT_VERSION}"
    stored = {r[:4]: r[4:] for r in rows}
    assert stored[("clean", 0.0, source, "top1")] == (pytest.approx(cells[0][0], abs=0.05), 24)
    assert stored[(source, 16.0, "whitebox", "top1")] == (pytest.approx(cells[1][-1], abs=0.05),
                                                          24)
    assert models == ["run"]
    assert len(json.loads((trained_run / "audit.json").read_text())) == len(rows)
    assert (trained_run / "audit.csv").read_text().startswith("model,")
    assert not list(trained_run.glob("audit.db.audit-*.json"))


def model_variant(trained_run, out: Path, **config) -> Path:
    """A model file beside the run's: its weights nudged (another model of the same
    task), or with ``config`` changes a fresh model of that config."""
    import torch

    from cascade_adv.models import build_model, load_model, save_model

    model = load_model(trained_run / "run" / "final" / "model.safetensors")
    if config:
        model = build_model(model.config.model_copy(update=config))
    else:
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.safetensors")
    return out / "model.safetensors"


def test_audit_prints_every_diagnostic_after_its_table(trained_run, tmp_path):
    """The diagnostics' verdicts follow the table, one line each; ``--twin`` runs the
    transfer check (a nudged copy of the run as its twin), ``--no-checks`` leaves them
    out."""
    from cascade_adv.evaluation.diagnostics import CHECKS

    twin = model_variant(trained_run, tmp_path / "twin")
    args = ["audit", "--checkpoint", str(trained_run / "run"), "--eps", "16", "--version",
            "pgd:steps=5,random_sign", "--limit", "40", "--quiet", "--results", "r.db"]
    result = cli(*args, "--twin", str(twin), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("Gradient-masking")))
    assert start > 2 and lines[start - 1] == ""  # after the table
    listed = [line.split("**")[1:3] for line in lines[start + 1:]]
    assert [name for name, _ in listed] == list(CHECKS)
    assert all(rest.split(" (")[0].split(".")[0] in (": holds", ": flagged", ": not run")
               for _, rest in listed)
    assert "40 of 40 images" in result.stdout
    quiet = cli(*args, "--no-checks", cwd=tmp_path)
    assert quiet.returncode == 0 and "Gradient-masking" not in quiet.stdout


def test_audit_of_a_randomised_model_reports_it_and_exits_0(trained_run, tmp_path,
                                                            monkeypatch):
    """A model whose forward pass draws noise: the audit finishes, its determinism check
    is flagged, exit status 0, nothing on stderr."""
    import torch

    from cascade_adv.training import runs

    load = runs.load_model

    def noisy(*args, **kwargs):
        model = load(*args, **kwargs)
        last = [m for m in model.modules() if not list(m.children())][-1]
        last.register_forward_hook(lambda module, inputs, out: out + torch.randn_like(out))
        return model

    monkeypatch.setattr(runs, "load_model", noisy)
    result = cli("audit", "--checkpoint", str(trained_run / "run"), "--eps", "16", "--version",
                 "pgd:steps=2", "--limit", "20", "--quiet", "--results", "r.db", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "- **deterministic**: flagged" in result.stdout


@pytest.mark.parametrize("args,words", [
    (["--eps", "0"], ["--eps", "(0, 255]"]),
    (["--eps", "16,300"], ["--eps", "300", "(0, 255]"]),
    (["--limit", "0"], ["--limit", "0"]),
    (["--version", "strong"], ["--version", "strong", "standard, quick"]),
    (["--version", "pgd,nope"], ["--version", "nope"]),
    (["--version", "pgd:restarts"], ["--version", "KEY=VALUE"]),
    (["--version", "pgd", "--no-checks", "--twin", "missing_run"], ["--twin", "--no-checks"]),
    (["--version", "pgd", "--twin", "missing_run"], ["missing_run"]),
])
def test_audit_bad_input_is_one_line_exit_2_before_any_work(trained_run, tmp_path, args, words):
    result = cli("audit", "--checkpoint", str(trained_run / "run"), *args, "--results",
                 "r.db", cwd=tmp_path)
    assert_user_error(result, *words)
    assert not list(tmp_path.iterdir())  # no store, no progress file


@pytest.mark.parametrize("twin,words", [
    ("run", ["--twin", "itself"]),                    # the same run folder
    ("weights", ["--twin", "itself"]),                # its weights file, by another path
    ("copy", ["--twin", "itself"]),                   # a copy of its weights file
    ("mnist", ["--twin", "mnist", "share a dataset"]),  # another dataset's model
    ("size", ["--twin", "input size 16"]),            # same dataset, other input size
])
def test_audit_refuses_a_twin_that_is_the_model_or_of_another_task(
        trained_run, tmp_path_factory, tmp_path, twin, words):
    """``--twin`` is checked as ``transfer`` checks a source, and may not be the audited
    model itself: one line, exit 2, before the data is read (the data root is missing)."""
    other = tmp_path_factory.mktemp("twins")
    final = trained_run / "run" / "final" / "model.safetensors"
    if twin == "copy":
        shutil.copy(final, other / "model.safetensors")
    paths = {"run": trained_run / "run", "weights": final, "copy": other / "model.safetensors",
             "mnist": lambda: model_variant(trained_run, other, dataset="mnist"),
             "size": lambda: model_variant(trained_run, other, input_size=16)}
    path = paths[twin]() if callable(paths[twin]) else paths[twin]
    result = cli("audit", "--checkpoint", str(trained_run / "run"), "--twin", str(path),
                 "--version", "random_sign", "--results", "r.db", "--data-root",
                 str(tmp_path / "nowhere"), "--dataset", "mnist", cwd=tmp_path)
    assert_user_error(result, *words)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command,words", [
    ("audit", ["the audit skips the attack x batches it finished"]),
    ("eval", ["start it again"]),
])
def test_ctrl_c_says_what_a_rerun_does_for_that_command(trained_run, tmp_path, monkeypatch,
                                                         command, words):
    """An interrupted audit is told that a rerun resumes it (not that training does);
    a command that does not resume, that a rerun starts it again."""
    from cascade_adv import evaluation

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "audit", interrupted)
    monkeypatch.setattr(evaluation, "evaluate_whitebox", interrupted)
    extra = ["--version", "random_sign"] if command == "audit" else ["--attacks", "step_ll"]
    result = cli(command, "--checkpoint", str(trained_run / "run"), *extra, "--limit", "8",
                 "--quiet", "--results", "r.db", cwd=tmp_path)
    assert result.returncode == 130
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("interrupted; rerun"), err
    assert "training" not in err and all(w in err for w in words), err


def test_audit_refuses_more_targets_than_the_model_has_classes(trained_run, tmp_path):
    if not HAVE_APGD:
        pytest.skip("apgd_t is not built")
    result = cli("audit", "--checkpoint", str(trained_run / "run"), "--version",
                 "apgd_ce,apgd_t:targets=10", "--results", "r.db", "--dataset", "mnist",
                 "--data-root", str(tmp_path / "nowhere"), cwd=tmp_path)  # before the data
    assert_user_error(result, "targets=10", "at most 9")
    assert not list(tmp_path.iterdir())


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  learning_rate: 0.1\n")
    assert_user_error(cli("train", "--config", str(cfg), cwd=tmp_path), "learning_rate", "lr")


def test_checkpoint_of_another_architecture(trained_run):
    result = cli("train", "--config", str(ROOT / "configs/digits_baseline.yaml"), "--out",
                 str(trained_run / "run"), "--quiet", "model.depth=14", "optim.iterations=40",
                 cwd=trained_run)
    assert_user_error(result, "another config", "model.depth 8 -> 14")


def test_corrupt_dataset_files(tmp_path):
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(mnist / name, "wb") as fh:
            fh.write(b"\x00\x00\x08\x03not mnist")
    before = {p: p.read_bytes() for p in mnist.iterdir()}
    result = cli("train", "--config", str(ROOT / "configs/mnist_baseline.yaml"), "--out",
                 str(tmp_path / "run"), f"data.root={tmp_path / 'data'}", cwd=tmp_path)
    assert_user_error(result, "mnist")
    assert {p: p.read_bytes() for p in mnist.iterdir()} == before  # nothing damaged
    missing = cli("train", "--config", str(ROOT / "configs/mnist_baseline.yaml"), "--out",
                  str(tmp_path / "run2"), f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert_user_error(missing, "not found")


def test_every_command_has_help_with_examples():
    from click.testing import CliRunner

    from cascade_adv.cli.main import cli as group

    runner = CliRunner()
    commands = [[name] for name in group.commands if name != "analyze"]
    commands += [["analyze", name] for name in group.commands["analyze"].commands]
    assert len(commands) >= 16
    for command in commands:
        result = runner.invoke(group, [*command, "--help"])
        if command == ["attacks"]:
            continue  # a listing with nothing to configure
        assert result.exit_code == 0 and "Examples:" in result.output, command
    listing = cli("attacks")
    assert listing.returncode == 0 and "iter_fgsm" in listing.stdout


@pytest.fixture(scope="module")
def second_run(trained_run):
    """Another tiny digits model (different seed): a black-box partner for the first."""
    result = cli("train", "--config", str(ROOT / "configs/digits_baseline.yaml"), "--out",
                 str(trained_run / "run2"), "--quiet", "model.depth=8", "optim.iterations=20",
                 "optim.lr_milestones=[]", "seed=5", cwd=trained_run)
    assert result.returncode == 0, result.stderr
    return trained_run / "run2"


def test_transfer_analyze_and_report(trained_run, second_run):
    work, db = trained_run, "research.db"
    a, b = f"A={trained_run / 'run'}", f"B={second_run}"
    result = cli("transfer", "--source", a, "--source", b, "--target", a, "--target", b,
                 "--attacks", "step_fgsm,iter_fgsm", "--eps", "8,16", "--limit", "40", "--quiet",
                 "--results", db, "--sets", "sets", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "top1:" in result.stdout and "transfer_top1:" in result.stdout
    with sqlite3.connect(work / db) as con:
        metrics = {r[0] for r in con.execute("SELECT DISTINCT metric FROM results")}
        inits = dict(con.execute("SELECT name, init FROM models"))
    assert {"top1", "error_top1"} <= metrics
    assert inits["A"].startswith("seed:0:") and inits["B"].startswith("seed:5:")
    assert sorted(p.name for p in (work / "sets").iterdir()) == [
        "A-iter_fgsm", "A-step_fgsm", "B-iter_fgsm", "B-step_fgsm"]
    for sub in ("softmax", "gradcorr"):
        result = cli("analyze", sub, "--model", a, "--model", b, "--eps", "0,4,8", "--images",
                     "8", "--quiet", "--results", db, "--figure", f"{sub}.png", cwd=work)
        assert result.returncode == 0, result.stderr
        assert (work / f"{sub}.png").stat().st_size > 1000
    result = cli("report", "--results", db, "--out", "rep", cwd=work)
    assert result.returncode == 0, result.stderr
    page = (work / "rep" / "report.html").read_text()
    assert "Black-box accuracy" in page and "figures/n18_fig5_gradient_corr.png" in page


def test_eval_records_the_paper_rows_the_config_names_for_the_report(trained_run, tmp_path):
    """A run whose config names a published row (``paper``): ``eval`` registers the row
    with the model, and the report shows the paper's numbers under ours, by that key
    alone (the model name, ``mine``, means nothing to the report)."""
    import yaml

    run = tmp_path / "mine"
    shutil.copytree(trained_run / "run", run)
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["paper"] = ["n18-table1: Pivot"]
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    result = cli("eval", "--checkpoint", str(run), "--attacks", "step_ll", "--eps", "16",
                 "--limit", "32", "--quiet", "--results", "r.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "r.db") as con:
        (params,) = con.execute("SELECT params FROM models WHERE name = 'mine'").fetchone()
    assert json.loads(params)["paper"] == ["n18-table1: Pivot"]
    result = cli("report", "--results", "r.db", "--out", "rep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "## N18 table 1" in page and "| published: Pivot ‡ | 99.6 | 99.4 |" in page


def test_sweep_analysis_trains_registers_and_plots(tmp_path):
    result = cli("analyze", "lambda2", "--config", str(ROOT / "configs/digits_baseline.yaml"),
                 "--values", "0,0.01", "--out", "sweep", "--attacks", "step_ll", "--eps", "8",
                 "--limit", "40", "--quiet", "--results", "r.db", "--figure", "lam.png",
                 "model.depth=8", "optim.iterations=4", "optim.lr_milestones=[]",
                 "adversarial.mode=append", "adversarial.distance=pivot", "adversarial.k=32",
                 "optim.batch_size=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "lam.png").is_file()
    with sqlite3.connect(tmp_path / "r.db") as con:
        models = dict(con.execute("SELECT name, params FROM models WHERE experiment='lambda2'"))
    assert {json.loads(p)["lam2"] for p in models.values()} == {0.0, 0.01}


def test_research_commands_bad_input(trained_run, tmp_path):
    from cascade_adv.models import build_model, save_model

    other = build_model({"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 28, "num_classes": 10,
                             "dataset": "mnist"})
    save_model(other, tmp_path / "mnist.safetensors")
    run = str(trained_run / "run")
    result = cli("transfer", "--source", f"S={tmp_path / 'mnist.safetensors'}", "--target",
                 f"T={run}", "--dataset", "digits", "--results", "x.db", "--quiet", cwd=tmp_path)
    assert_user_error(result, "mnist", "digits")
    assert not (tmp_path / "x.db").exists()  # nothing written
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as con:
        con.execute("PRAGMA user_version = 99")
    assert_user_error(cli("report", "--results", str(newer), cwd=tmp_path), "newer", "schema")
    assert_user_error(cli("analyze", "lambda2", "--config",
                          str(ROOT / "configs/digits_baseline.yaml"), "--values", "-1",
                          cwd=tmp_path), "lambda2", "-1")
