"""Issue 11: never destroy a user's files, never call a broken model "good", one line
for every bad input.  Each test is a fault case of docs/reliability.md; the CLI runs
in-process (``run``), as a user would call it, and every refusal must leave the
files as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli

from cascade_adv.errors import CascadeAdvError, TrainingDiverged, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/digits_baseline.yaml")
TINY = ["model.depth=8", "optim.iterations=12", "optim.lr_milestones=[]",
        "checkpoint.every=4", "log_every=4", "optim.batch_size=32"]


def run(*argv, cwd):
    """``cascade-adv ARGV`` in this process: (exit status, stdout, stderr)."""
    return run_cli(argv, cwd)


def assert_one_line(result, code=2, *words):
    status, _, err = result
    assert status == code, result
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def train_tiny(run_dir, *extra, **kw):
    from cascade_adv.training import load_config, train

    cfg = load_config(CONFIG, [*TINY, *extra])
    return train(cfg, run_dir, progress=False, **kw)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("reliability")
    train_tiny(work / "myrun")
    return work


# --- 1. nothing the user made is deleted -------------------------------------------------

def test_craft_into_the_model_run_folder_is_refused(work):
    before = snapshot(work)
    assert_one_line(run("craft", "--checkpoint", "myrun", "--out", "myrun", "--limit", "8",
                        "--eps", "2", "--quiet", cwd=work), 2, "--out myrun is --checkpoint",
                    "which this command reads")
    assert_one_line(run("craft", "--checkpoint", "myrun", "--out", "myrun", "--overwrite",
                        "--limit", "8", "--eps", "2", "--quiet", cwd=work), 2, "myrun")
    assert snapshot(work) == before


def test_attack_into_the_current_folder_is_refused(work, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before, work_before = snapshot(tmp_path), snapshot(work)
    for out in (".", str(tmp_path), ".."):  # '..' also holds the model: either rule refuses
        result = run("attack", "--checkpoint", work / "myrun", "--attack", "step_ll", "--eps",
                     "4", "--out", out, "--overwrite", "--limit", "8", "--quiet", cwd=tmp_path)
        assert_one_line(result, 2, "--out")
        assert "current folder" in result[2] or (out == ".." and "holds" in result[2])
    for out in ("myrun", "..", str(work)):  # the model's folder, from inside it
        assert_one_line(run("attack", "--checkpoint", "myrun", "--attack", "step_ll", "--eps",
                            "4", "--out", out, "--overwrite", "--limit", "8", "--quiet",
                            cwd=work), 2, "--out")
    assert snapshot(tmp_path) == before and snapshot(work) == work_before


def test_existing_folder_refused_unless_overwrite_and_own_set_replaced(work, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    args = ["attack", "--checkpoint", work / "myrun", "--attack", "step_ll", "--eps", "4",
            "--limit", "8", "--quiet", "--out", user]
    assert_one_line(run(*args, cwd=tmp_path), 2, "--overwrite", "not an adversarial set")
    assert (user / "thesis.tex").read_text() == "years of work"
    assert run(*args, "--overwrite", cwd=tmp_path)[0] == 0  # asked for: replaced
    assert not (user / "thesis.tex").exists() and (user / "meta.json").is_file()
    first = (user / "meta.json").read_text()
    again = run("attack", "--checkpoint", work / "myrun", "--attack", "step_fgsm", "--eps", "4",
                "--limit", "8", "--quiet", "--out", user, cwd=tmp_path)
    assert again[0] == 0, again  # its own earlier output: replaced without asking
    assert (user / "meta.json").read_text() != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_craft_keeps_the_earlier_set(work, tmp_path, monkeypatch):
    from cascade_adv import attacks
    from cascade_adv.results.advsets import load_adversarial_set

    out = tmp_path / "set"
    assert run("attack", "--checkpoint", work / "myrun", "--attack", "step_ll", "--eps", "4",
               "--limit", "8", "--quiet", "--out", out, cwd=tmp_path)[0] == 0
    before = snapshot(tmp_path)

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(attacks, "run", broken)
    with pytest.raises(RuntimeError):
        run("attack", "--checkpoint", work / "myrun", "--attack", "step_ll", "--eps", "8",
            "--limit", "8", "--quiet", "--out", out, cwd=tmp_path)
    assert snapshot(tmp_path) == before  # old set intact, no temporary folder left
    assert len(load_adversarial_set(out)) == 8


def test_report_does_not_replace_a_users_folder(work, tmp_path):
    from cascade_adv.evaluation import ResultsStore

    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "my_plot.png").write_bytes(b"precious")
    db = tmp_path / "r.db"
    assert run("eval", "--checkpoint", work / "myrun", "--attacks", "step_ll", "--eps", "4",
               "--limit", "8", "--quiet", "--results", db, cwd=tmp_path)[0] == 0
    before = snapshot(tmp_path)
    assert_one_line(run("report", "--results", db, "--out", ".", cwd=tmp_path), 2,
                    "--overwrite", "not a report folder")
    assert snapshot(tmp_path) == before
    assert run("report", "--results", db, "--out", "rep", cwd=tmp_path)[0] == 0
    assert run("report", "--results", db, "--out", "rep", cwd=tmp_path)[0] == 0  # its own
    with ResultsStore(db) as store:
        assert len(store.query())


# --- 2. numerical faults caught where they happen ---------------------------------------

def test_overflowing_step_never_becomes_a_good_checkpoint(tmp_path):
    from cascade_adv.models import load_model
    from cascade_adv.training.checkpoint import latest_checkpoint, nonfinite_state
    from cascade_adv.training.loop import clean_objective

    def poisoned(model, x, y, iteration, generator):
        loss, logits, labels = clean_objective(model, x, y, iteration, generator)
        if iteration == 5:  # a finite loss whose gradient is inf: the step overflows
            w = next(model.parameters())
            loss = loss + torch.sqrt(w - w.detach()).sum()
        return loss, logits, labels

    with pytest.raises(TrainingDiverged) as info:
        train_tiny(tmp_path / "run", "checkpoint.every=1", objective=poisoned)
    msg = str(info.value)
    assert "non-finite" in msg and "between iterations 5 and 6" in msg, msg
    last = latest_checkpoint(tmp_path / "run")
    assert last.name == "ckpt-0000005", last
    assert nonfinite_state(load_model(last)) == []
    assert not (tmp_path / "run" / "final").exists()


def test_issue_divergence_recipe_keeps_no_nonfinite_checkpoint(tmp_path):
    from cascade_adv.models import load_model
    from cascade_adv.training.checkpoint import nonfinite_state

    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
                 "optim.lr=1e30", "optim.weight_decay=1e10", "checkpoint.every=1",
                 cwd=tmp_path)
    assert_one_line(result, 2, "diverged")
    for ckpt in (tmp_path / "run").glob("checkpoints/ckpt-*"):
        assert nonfinite_state(load_model(ckpt)) == [], ckpt


@pytest.fixture(scope="module")
def nan_model(work):
    from cascade_adv.models import load_model, save_model

    model = load_model(work / "myrun")
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    save_model(model, work / "nan.safetensors")
    return work / "nan.safetensors"


def test_eval_refuses_a_model_with_nan_weights(work, nan_model, tmp_path):
    result = run("eval", "--checkpoint", nan_model, "--limit", "16", "--quiet",
                 "--results", "r.db", "--csv", "t.csv", cwd=tmp_path)
    assert_one_line(result, 2, "non-finite", "conv1.weight")
    assert list(tmp_path.iterdir()) == []  # no rows stored anywhere


def test_evaluate_whitebox_refuses_nonfinite_outputs(work, nan_model):
    from cascade_adv.data import load_dataset
    from cascade_adv.errors import ModelFault
    from cascade_adv.evaluation import evaluate_whitebox
    from cascade_adv.models import load_model

    data = load_dataset("digits", "test").subset(16)
    with pytest.raises(ModelFault, match="non-finite outputs"):
        evaluate_whitebox(load_model(nan_model), data, ["step_ll"], [4], progress=False)
    rows = evaluate_whitebox(load_model(work / "myrun"), data, ["step_ll"], [4],
                             progress=False)
    assert len(rows)


def test_eval_refuses_another_dataset(work, tmp_path):
    result = run("eval", "--checkpoint", work / "myrun", "--dataset", "mnist", "--limit", "16",
                 "--quiet", "--results", "r.db", cwd=tmp_path)
    assert_one_line(result, 2, "digits", "mnist")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_whitebox_checks_labels_against_classes(work):
    from cascade_adv.data import load_dataset
    from cascade_adv.errors import DatasetError
    from cascade_adv.evaluation import evaluate_whitebox
    from cascade_adv.models import load_model

    data = load_dataset("digits", "test").subset(16)
    data.labels[3] = 12
    with pytest.raises(DatasetError, match="labels"):
        evaluate_whitebox(load_model(work / "myrun"), data, ["step_ll"], [4], progress=False)


# --- 3. saved sets checked beyond their hash ---------------------------------------------

@pytest.fixture()
def crafted(work, tmp_path):
    out = tmp_path / "adv"
    assert run("craft", "--checkpoint", work / "myrun", "--out", out, "--eps", "2,4",
               "--limit", "96", "--quiet", cwd=tmp_path)[0] == 0
    return out


def _rehash(path: Path, **arrays):
    """Replace arrays of a set and recompute their sha256 in meta.json (a careful forger)."""
    from cascade_adv.io import file_sha256

    meta = json.loads((path / "meta.json").read_text())
    for name, arr in arrays.items():
        np.save(path / f"{name}.npy", arr, allow_pickle=arr.dtype == object)
        meta["sha256"][f"{name}.npy"] = file_sha256(path / f"{name}.npy")
    (path / "meta.json").write_text(json.dumps(meta))


def test_rehashed_set_outside_its_epsilon_balls_is_refused_by_training(work, crafted, tmp_path):
    images = np.load(crafted / "images.npy")
    _rehash(crafted, images=np.full_like(images, 255))
    result = run("train", "--config", CONFIG, "--out", "cascade", "--quiet", *TINY,
                 "adversarial.mode=append", "adversarial.k=16", "adversarial.distance=pivot",
                 f"adversarial.sources=[{{kind: saved, count: 16, paths: ['{crafted}']}}]",
                 cwd=tmp_path)
    assert_one_line(result, 2, "epsilon", "tampered")
    assert not (tmp_path / "cascade").exists()


@pytest.mark.parametrize("case", ["labels_out_of_range", "wrong_length", "float64_images",
                                  "object_array", "eps_not_listed", "bad_meta"])
def test_malformed_set_contents_are_one_line_errors(crafted, case):
    from cascade_adv.results.advsets import load_adversarial_set

    labels = np.load(crafted / "labels.npy")
    if case == "labels_out_of_range":
        labels[0] = 50
        _rehash(crafted, labels=labels)
    elif case == "wrong_length":
        _rehash(crafted, labels=labels[:-3])
    elif case == "float64_images":
        _rehash(crafted, images=np.load(crafted / "images.npy").astype(np.float64))
    elif case == "object_array":
        _rehash(crafted, labels=np.array([{"x": 1}] * len(labels), dtype=object))
    elif case == "eps_not_listed":
        eps = np.load(crafted / "eps.npy")
        eps[0] = 9.0
        _rehash(crafted, eps=eps)
    else:
        meta = json.loads((crafted / "meta.json").read_text())
        meta["count"] = "many"
        (crafted / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CascadeAdvError) as info:
        load_adversarial_set(crafted, num_classes=10)
    assert "\n" not in str(info.value)


# --- 4. one line for every user error ----------------------------------------------------

@pytest.mark.parametrize("case", [
    "train_out_impossible", "attack_out_impossible", "results_impossible", "csv_impossible",
    "csv_is_folder", "cuda_on_cpu", "config_not_text", "crop_larger_than_image",
    "empty_config", "name_outside_runs", "empty_eps", "empty_attacks", "limit_zero",
    "usage_error", "model_name_with_slash",
])
def test_user_errors_are_one_line_and_change_nothing(work, case, tmp_path):
    if case == "cuda_on_cpu" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    ckpt = work / "myrun"
    ev = ["eval", "--checkpoint", ckpt, "--limit", "8", "--quiet", "--attacks", "step_ll",
          "--eps", "4"]
    args, words = {
        "train_out_impossible": (["train", "--config", CONFIG, "--out", "notes.txt/run"],
                                 ["notes.txt"]),
        "attack_out_impossible": (["attack", "--checkpoint", ckpt, "--attack", "step_ll",
                                   "--eps", "4", "--out", "/proc/adv"], ["/proc"]),
        "results_impossible": ([*ev, "--results", "notes.txt/r.db"], ["notes.txt"]),
        "csv_impossible": ([*ev, "--results", "r.db", "--csv", "/proc/t.csv"], ["--csv"]),
        "csv_is_folder": ([*ev, "--results", "r.db", "--csv", "."], ["directory"]),
        "cuda_on_cpu": ([*ev, "--device", "cuda"], ["cuda", "cpu"]),
        "config_not_text": (["train", "--config", "bin.yaml"], ["bin.yaml", "text"]),
        "crop_larger_than_image": (["train", "--config", CONFIG, "--out", "r", *TINY,
                                    "data.crop_size=12"], ["crop_size"]),
        "empty_config": (["train", "--config", "empty.yaml"], ["is empty;"]),
        "name_outside_runs": (["train", "--config", CONFIG, "name=../../escape"], ["name"]),
        "empty_eps": ([*ev, "--eps", " , "], ["--eps", "empty"]),
        "empty_attacks": ([*ev, "--attacks", ""], ["--attacks", "empty"]),
        "limit_zero": ([*ev, "--limit", "0"], ["--limit"]),
        "usage_error": ([*ev, "--no-such-option"], ["--no-such-option"]),
        "model_name_with_slash": (["transfer", "--source", f"../x={ckpt}", "--target", ckpt],
                                  ["../x"]),
    }[case]
    before = snapshot(tmp_path)
    work_before = snapshot(work)
    assert_one_line(run(*args, cwd=tmp_path), 2, *words)
    assert snapshot(tmp_path) == before and snapshot(work) == work_before


def test_truncated_metrics_line_is_dropped_on_resume(tmp_path):
    train_tiny(tmp_path / "run", "optim.iterations=8")
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"iteration": 9, "lo')
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY, cwd=tmp_path)
    assert result[0] == 0, result
    lines = metrics.read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines] == [4, 8, 12]


def test_rerunning_a_finished_run_reports_it_is_done(work):
    result = run("train", "--config", CONFIG, "--out", "myrun", "--quiet", *TINY, cwd=work)
    assert result[0] == 0, result
    assert "already trained" in result[1] and "nan" not in result[1]


# --- 5. clean interruption ---------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_prints_resume_and_exits_conventionally(tmp_path, monkeypatch,
                                                                   sig, code):
    from cascade_adv.models import load_model
    from cascade_adv.training import loop
    from cascade_adv.training.checkpoint import latest_checkpoint

    real = loop.clean_objective

    def interrupting(model, x, y, iteration, generator):
        if iteration == 5:  # the signal arrives in the middle of iteration 5
            os.kill(os.getpid(), sig)
        return real(model, x, y, iteration, generator)

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(loop, "clean_objective", interrupting)
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY, cwd=tmp_path)
    assert_one_line(result, code, "iteration 6", "rerun the same command to resume")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous
    assert latest_checkpoint(tmp_path / "run").name == "ckpt-0000006"
    monkeypatch.setattr(loop, "clean_objective", real)
    assert run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
               cwd=tmp_path)[0] == 0
    train_tiny(tmp_path / "straight")
    a, b = load_model(tmp_path / "run"), load_model(tmp_path / "straight")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name  # the interrupted run resumed to the same weights


def test_handlers_restored_when_training_fails(tmp_path):
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingDiverged):
        train_tiny(tmp_path / "run", "optim.lr=1e30", "optim.weight_decay=1e10")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path):
    train_tiny(tmp_path / "run", "optim.iterations=8")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ckpts = tmp_path / "run" / "checkpoints"
    stale = [ckpts / f".cascade-adv.latest.{dead.pid}.abc123xy.tmp",
             ckpts / f".cascade-adv.ckpt-0000012.{dead.pid}.k2j4_5g6.tmp",
             tmp_path / "run" / f".cascade-adv.metrics.jsonl.{dead.pid}.x_y12345.tmp"]
    stale[0].write_text("ckpt-0000")
    stale[1].mkdir()
    stale[2].write_text("{")
    alive = ckpts / f".cascade-adv.latest.{os.getpid()}.zzzzzzzz.tmp"  # a running writer's
    alive.write_text("x")
    users = [ckpts / ".latest.notes.tmp", ckpts / ".ckpt-0000012.tmp",  # not ours: kept
             tmp_path / "run" / ".metrics.jsonl.v2.tmp",
             ckpts / ".cascade-adv.latest.notes.tmp",  # no pid, no random part
             ckpts / f".cascade-adv.latest.{dead.pid}.short.tmp"]  # not mkstemp's 8 chars
    for p in users:
        p.write_text("mine")
    train_tiny(tmp_path / "run")
    assert not any(p.exists() for p in stale) and alive.exists()
    assert all(p.read_text() == "mine" for p in users)
    assert TrainingInterrupted("x", 143).exit_code == 143


def test_stale_temp_cleanup_beside_out_spares_the_users_dotfiles(work, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".adv.notes.tmp").write_text("my notes")  # a user's dotfile and dot-folder
    (tmp_path / ".adv.v2.tmp").mkdir()
    (tmp_path / ".adv.v2.tmp" / "draft.txt").write_text("draft")
    stale = tmp_path / f".cascade-adv.adv.{dead.pid}.a1b2c3d4.tmp"  # a killed craft's
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"half")
    assert run("attack", "--checkpoint", work / "myrun", "--attack", "step_ll", "--eps", "4",
               "--limit", "8", "--quiet", "--out", "adv", cwd=tmp_path)[0] == 0
    assert (tmp_path / ".adv.notes.tmp").read_text() == "my notes"
    assert (tmp_path / ".adv.v2.tmp" / "draft.txt").read_text() == "draft"
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adv.notes.tmp", ".adv.v2.tmp",
                                                          "adv"]


def test_folder_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    from cascade_adv.io import remove_stale_temps, swap_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".cascade-adv.ckpt-0000010.{dead.pid}.q1w2e3r4.old.tmp"  # killed between
    aside.mkdir()
    (aside / "model.safetensors").write_text("weights")
    remove_stale_temps(tmp_path, "ckpt-*")
    assert (tmp_path / "ckpt-0000010" / "model.safetensors").read_text() == "weights"
    new = tmp_path / "new"
    new.mkdir()
    (new / "model.safetensors").write_text("newer")
    swap_dir(new, tmp_path / "ckpt-0000010")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-0000010"]
    assert (tmp_path / "ckpt-0000010" / "model.safetensors").read_text() == "newer"


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_planted_pickle_is_never_run_and_is_one_line(work, tmp_path):
    import pickle
    import shutil

    shutil.copytree(work / "myrun", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "final")
    ckpt = max((tmp_path / "run" / "checkpoints").glob("ckpt-*"))
    (ckpt / "state.pt").write_bytes(pickle.dumps(_Planted()))
    with warnings.catch_warnings(record=True) as caught:  # a warning is more stderr lines
        warnings.simplefilter("always")
        result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
                     "optim.iterations=16", cwd=tmp_path)
    assert_one_line(result, 2, "state.pt", "delete this checkpoint")
    assert not (tmp_path / "PWNED").exists()
    assert [str(w.message) for w in caught] == []


def test_source_and_target_of_one_name_must_be_one_model(work, tmp_path):
    import shutil

    shutil.copytree(work / "myrun", tmp_path / "other")
    train_tiny(tmp_path / "other", "optim.iterations=16")  # other weights
    result = run("transfer", "--source", f"A={work / 'myrun'}", "--target",
                 f"A={tmp_path / 'other'}", "--limit", "8", "--quiet", "--results", "r.db",
                 cwd=tmp_path)
    assert_one_line(result, 2, "'A'", "NAME=PATH")
    assert not (tmp_path / "r.db").exists()


def test_transfer_and_craft_refuse_nonfinite_models(work, nan_model, tmp_path):
    from cascade_adv.data import load_dataset
    from cascade_adv.errors import ModelFault
    from cascade_adv.evaluation import craft_adversarial_set, load_adversarial_set
    from cascade_adv.evaluation.blackbox import evaluate_transfer
    from cascade_adv.models import load_model

    data = load_dataset("digits", "test").subset(8)
    bad = load_model(nan_model)
    with pytest.raises(ModelFault, match="non-finite"):
        craft_adversarial_set(bad, data, tmp_path / "s", "step_ll", [4], progress=False)
    assert list(tmp_path.iterdir()) == []
    craft_adversarial_set(load_model(work / "myrun"), data, tmp_path / "s", "step_ll", [4],
                          progress=False)
    with pytest.raises(ModelFault, match="non-finite"):
        evaluate_transfer(bad, load_adversarial_set(tmp_path / "s"))


def test_ctrl_c_outside_the_training_loop_is_one_line_exit_130(work, tmp_path, monkeypatch):
    from cascade_adv import evaluation

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_whitebox", interrupted)
    result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                 "--results", "r.db", cwd=tmp_path)
    assert_one_line(result, 130, "interrupted", "rerun the same command")
    assert list(tmp_path.iterdir()) == []  # nothing partial stored


def test_foreign_sqlite_store_is_refused_before_any_work(work, tmp_path, monkeypatch):
    import sqlite3

    from cascade_adv import evaluation

    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE t (x)")
    before = snapshot(tmp_path)
    monkeypatch.setattr(evaluation, "evaluate_whitebox", None)  # any work would fail loudly
    result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                 "--results", "other.db", cwd=tmp_path)
    assert_one_line(result, 2, "not a cascade-adv results store")
    assert snapshot(tmp_path) == before


def test_run_killed_before_its_first_log_resumes_but_a_users_config_folder_is_refused(tmp_path):
    from cascade_adv.training import load_config
    from cascade_adv.training.config import dump_config

    (tmp_path / "run").mkdir()  # killed after writing config.yaml, before any metrics
    (tmp_path / "run" / "config.yaml").write_text(dump_config(load_config(CONFIG, TINY)))
    assert run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
               cwd=tmp_path)[0] == 0
    (tmp_path / "exp").mkdir()  # the user's own experiment folder and config
    (tmp_path / "exp" / "config.yaml").write_text(Path(CONFIG).read_text())
    before = snapshot(tmp_path / "exp")
    assert_one_line(run("train", "--config", "exp/config.yaml", "--out", "exp", *TINY,
                        cwd=tmp_path), 2, "--out exp holds --config exp/config.yaml")
    (tmp_path / "exp2").mkdir()
    (tmp_path / "exp2" / "plan.txt").write_text("mine")
    assert_one_line(run("train", "--config", CONFIG, "--out", "exp2", *TINY, cwd=tmp_path), 2,
                    "not a run folder")
    assert snapshot(tmp_path / "exp") == before


# --- issue 19, classes 4-7: one writer, resume, hostile YAML, numbers out of range -------

_HOLD = """\
import sys, time
from cascade_adv.io import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(tmp_path):
    train_tiny(tmp_path / "run", "optim.iterations=8")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"  # another process writes the run
        before = snapshot(tmp_path)
        result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
                     cwd=tmp_path)  # would resume the run to 12 iterations
        assert_one_line(result, 2, "run folder run", f"process {holder.pid}")
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    assert run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
               cwd=tmp_path)[0] == 0  # the lock ends with its holder


def test_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path):
    train_tiny(tmp_path / "run", "optim.iterations=8")
    before = snapshot(tmp_path)
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY, "optim.lr=0.05",
                 "seed=7", "optim.momentum=0.5", "optim.lr_milestones=[10]", cwd=tmp_path)
    assert_one_line(result, 2, "trained to iteration 8", "optim.lr 0.1 -> 0.05", "seed 0 -> 7",
                    "optim.momentum 0.9 -> 0.5", "optim.lr_milestones [] -> [10]")
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
                 "optim.iterations=6", cwd=tmp_path)  # below where the run is
    assert_one_line(result, 2, "optim.iterations 8 -> 6", "at least 8")
    assert snapshot(tmp_path) == before


def test_an_extended_schedule_is_recorded_and_equals_the_longer_run(tmp_path):
    from cascade_adv.models import load_model
    from cascade_adv.training import load_config

    train_tiny(tmp_path / "run", "optim.iterations=8")
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY, "log_every=2",
                 "checkpoint.every=6", "data.root=elsewhere", cwd=tmp_path)  # to 12
    assert result[0] == 0, result
    history = [json.loads(ln) for ln in (tmp_path / "run" / "history.jsonl").open()]
    assert len(history) == 1 and history[0]["iteration"] == 8
    assert history[0]["changed"] == {
        "optim.iterations": {"old": 8, "new": 12}, "log_every": {"old": 4, "new": 2},
        "checkpoint.every": {"old": 4, "new": 6}, "data.root": {"old": None, "new": "elsewhere"}}
    assert load_config(tmp_path / "run" / "config.yaml").optim.iterations == 12
    iters = [json.loads(ln)["iteration"] for ln in (tmp_path / "run" / "metrics.jsonl").open()]
    assert iters == [4, 8, 10, 12]
    train_tiny(tmp_path / "straight")
    a, b = load_model(tmp_path / "run"), load_model(tmp_path / "straight")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name  # the extension continued the same run


_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 10)}]\n"
                for i in range(6))  # 10^6 values once its aliases are expanded


@pytest.mark.parametrize("case", [
    "override_unclosed", "override_undefined_alias", "override_python_tag", "override_tab",
    "override_800kb", "file_20000_deep", "file_alias_bomb", "file_self_alias", "file_python_tag",
    "file_tabs", "run_config_bomb", "metadata_deep_json",
])
def test_hostile_yaml_is_one_short_line_and_changes_nothing(work, case, tmp_path):
    from safetensors.torch import load_file, save_file

    from cascade_adv.models.serialize import _read_metadata

    files = {"deep.yaml": "seed: " + "[" * 20000 + "]" * 20000 + "\n",
             "bomb.yaml": _BOMB.replace("l5: ", "paper: "),
             "self.yaml": "optim:\n  lr_milestones: &m [1, *m]\n",
             "tag.yaml": "seed: !!python/object/apply:os.system ['echo owned']\n",
             "tabs.yaml": "optim:\n\tlr: 0.1\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "bombrun").mkdir()  # a run folder whose recorded config is a bomb
    weights = work / "myrun" / "final" / "model.safetensors"
    (tmp_path / "bombrun" / "model.safetensors").write_bytes(weights.read_bytes())
    (tmp_path / "bombrun" / "config.yaml").write_text(_BOMB.replace("l5: ", "paper: "))
    meta = {**_read_metadata(weights), "config": "[" * 50000 + "]" * 50000}
    save_file(load_file(weights), tmp_path / "deepmeta.safetensors", metadata=meta)
    tr = ["train", "--config", CONFIG, "--out", "r", *TINY]
    ev = ["eval", "--limit", "8", "--quiet", "--attacks", "step_ll", "--eps", "4"]
    args, words = {
        "override_unclosed": ([*tr, "optim.lr=[0.1"], ["optim.lr=[0.1", "not valid YAML"]),
        "override_undefined_alias": ([*tr, "name=*foo"], ["undefined alias"]),
        "override_python_tag": ([*tr, "seed=!!python/object/apply:os.system [x]"], ["tag"]),
        "override_tab": ([*tr, "optim.lr=\t0.1"], ["'\\t'"]),
        "override_800kb": ([*tr, "optim.lr=" + "x" * 800_000], ["optim.lr", "characters"]),
        "file_20000_deep": (["train", "--config", "deep.yaml"], ["limit of 32 levels"]),
        "file_alias_bomb": (["train", "--config", "bomb.yaml"], ["limit of 100,000 values"]),
        "file_self_alias": (["train", "--config", "self.yaml"], ["contains itself"]),
        "file_python_tag": (["train", "--config", "tag.yaml"], ["tag.yaml", "tag"]),
        "file_tabs": (["train", "--config", "tabs.yaml"], ["line 2"]),
        "run_config_bomb": ([*ev, "--checkpoint", "bombrun"], ["limit of 100,000 values"]),
        "metadata_deep_json": ([*ev, "--checkpoint", "deepmeta.safetensors"],
                               ["limit of 32 levels"]),
    }[case]
    before = snapshot(tmp_path)
    result = run(*args, cwd=tmp_path)
    assert_one_line(result, 2, *words)
    assert len(result[2]) < 2100  # no echoed document (errors.MAX_LINE)
    assert snapshot(tmp_path) == before


def _with_model_config(weights: Path, out: Path, **change) -> Path:
    from safetensors.torch import load_file, save_file

    from cascade_adv.models.serialize import _read_metadata

    meta = _read_metadata(weights)
    meta["config"] = json.dumps({**json.loads(meta["config"]), **change})
    save_file(load_file(weights), out, metadata=meta)
    return out


@pytest.mark.parametrize("case", [
    "width_inf", "width_absurd", "depth_absurd", "too_many_parameters", "crop_absurd",
    "seed_past_2_64", "seed_negative", "metadata_width_absurd", "metadata_too_many_parameters",
    "eval_seed_past_2_64",
])
def test_numbers_outside_what_can_be_built_are_refused_with_the_limit(work, case, tmp_path):
    weights = work / "myrun" / "final" / "model.safetensors"
    _with_model_config(weights, tmp_path / "wide.safetensors", width=1e4)
    _with_model_config(weights, tmp_path / "big.safetensors", width=40.0, depth=56)
    tr = ["train", "--config", CONFIG, "--out", "r", "--quiet", *TINY]
    ev = ["eval", "--limit", "8", "--quiet", "--attacks", "step_ll", "--eps", "4"]
    args, words = {
        "width_inf": ([*tr, "model.width=.inf"], ["model.width", "finite"]),
        "width_absurd": ([*tr, "model.width=1e6"], ["model.width", "64"]),
        "depth_absurd": ([*tr, "model.depth=60000002"], ["model.depth", "1202"]),
        # ResNet-56 at width 40: 1.36 billion parameters, 5.4 GB before any tensor is read
        "too_many_parameters": ([*tr, "model.depth=56", "model.width=40"],
                                ["1,356,951,809", "limit of 1,000,000,000", "model.width"]),
        "crop_absurd": ([*tr, "data.crop_size=100000"], ["data.crop_size", "1024"]),
        "seed_past_2_64": ([*tr, f"seed={2**64}"], ["seed", "0..2^64-1"]),
        "seed_negative": ([*tr, "seed=-1"], ["seed", "0..2^64-1"]),
        "metadata_width_absurd": ([*ev, "--checkpoint", "wide.safetensors"], ["width", "64"]),
        "metadata_too_many_parameters": ([*ev, "--checkpoint", "big.safetensors"],
                                         ["big.safetensors", "limit of 1,000,000,000"]),
        "eval_seed_past_2_64": ([*ev, "--checkpoint", weights, "--seed", str(2**64)],
                                ["--seed", "18446744073709551615"]),
    }[case]
    before = snapshot(tmp_path)
    assert_one_line(run(*args, cwd=tmp_path), 2, *words)
    assert snapshot(tmp_path) == before


# --- issue 19, class 1: an output is never an input or another output ---------------------

@pytest.fixture(scope="module")
def store_db(work):
    """A results store with one model's rows (in the module's work folder)."""
    assert run("eval", "--checkpoint", "myrun", "--attacks", "step_ll", "--eps", "4",
               "--limit", "8", "--quiet", "--results", "store.db", cwd=work)[0] == 0
    return work / "store.db"


def _collision_cases(work):
    ckpt = work / "myrun"
    ev = ["eval", "--checkpoint", ckpt, "--limit", "8", "--quiet", "--attacks", "step_ll",
          "--eps", "4"]
    sweep = ["--config", CONFIG, "--limit", "8", "--attacks", "step_ll", "--eps", "4",
             "--quiet", *TINY]
    return {  # argv, the words the one line must hold (both paths)
        "csv_is_the_store": ([*ev, "--results", "r.db", "--csv", "r.db"],
                             ["--csv r.db is --results r.db"]),
        "json_is_the_checkpoint": ([*ev, "--results", "r.db", "--json",
                                    ckpt / "final/model.safetensors"],
                                   ["--json", "is --checkpoint"]),
        "csv_inside_the_run_folder": ([*ev, "--results", "r.db", "--csv", ckpt / "t.csv"],
                                      ["--csv", "lies inside --checkpoint"]),
        "csv_is_json": ([*ev, "--results", "r.db", "--csv", "t.csv", "--json", "./t.csv"],
                        ["--csv t.csv is --json t.csv", "writes"]),
        "csv_through_a_link_into_the_run": ([*ev, "--results", "r.db", "--csv",
                                             "runlink/final/model.safetensors"],
                                            ["runlink", "->", "is --checkpoint"]),
        "attack_out_is_a_link_to_the_run": (["attack", "--checkpoint", ckpt, "--attack",
                                             "step_ll", "--eps", "4", "--limit", "8",
                                             "--overwrite", "--out", "runlink"],
                                            ["--out runlink", "is --checkpoint"]),
        "craft_out_holds_the_dataset": (["craft", "--checkpoint", ckpt, "--dataset", "mnist",
                                         "--data-root", "data", "--limit", "8", "--eps", "2",
                                         "--overwrite", "--out", "data"],
                                        ["--out data holds the dataset folder data/mnist"]),
        "craft_out_holds_dataset_files": (["craft", "--checkpoint", ckpt, "--dataset", "mnist",
                                           "--data-root", "flat", "--limit", "8", "--eps", "2",
                                           "--overwrite", "--out", "flat"],
                                          ["--out flat holds a dataset file flat/t10k-images"]),
        "craft_out_inside_the_run": (["craft", "--checkpoint", ckpt, "--limit", "8", "--eps",
                                      "2", "--out", ckpt / "adv"],
                                     ["--out", "lies inside --checkpoint"]),
        "transfer_sets_hold_a_model": (["transfer", "--source", f"A={ckpt}", "--target",
                                        f"B={ckpt}", "--limit", "8", "--results", "r.db",
                                        "--sets", work],
                                       ["--sets", "holds --source"]),
        "figure_inside_the_run": (["analyze", "gradcorr", "--model", ckpt, "--eps", "0,4",
                                   "--images", "4", "--limit", "8", "--results", "r.db",
                                   "--figure", ckpt / "g.png"], ["--figure", "lies inside"]),
        "figure_dir_inside_sets": (["analyze", "transfer-eps", "--source", f"A={ckpt}",
                                    "--target", f"B={ckpt}", "--limit", "8", "--results", "r.db",
                                    "--sets", "out", "--figure-dir", "out/figs"],
                                   ["--figure-dir out/figs", "lies inside --sets out"]),
        "sweep_figure_is_the_store": (["analyze", "lambda2", *sweep[:-len(TINY)], "--values",
                                       "0", "--results", "r.db", "--figure", "r.db", *TINY],
                                      ["--figure r.db is --results r.db"]),
        "sweep_out_holds_the_store": (["analyze", "seeds", *sweep[:-len(TINY)], "--seeds", "1,2",
                                       "--results", "runs/r.db", "--out", "runs", *TINY],
                                      ["--out runs holds --results runs/r.db"]),
        "train_out_inside_init_from": (["train", "--config", CONFIG, "--out", ckpt / "sub",
                                        *TINY, f"init_from={ckpt}"],
                                       ["--out", "lies inside init_from"]),
        "report_figures_hold_the_store": (["report", "--results", "rep/figures/s.db", "--out",
                                           "rep", "--overwrite"],
                                          ["--out rep/figures holds --results"]),
        "quickstart_out_holds_the_store": (["quickstart", "--out", "qs", "--results",
                                            "qs/r.db"], ["--out qs holds --results qs/r.db"]),
        "reproduce_out_holds_the_configs": (["reproduce", "n18-table1", "--dataset", "digits",
                                             "--out", ".", "--configs", "configs"],
                                            ["--out . holds --configs configs"]),
        "import_into_its_own_file": (["store", "import", "pending.jsonl", "--results",
                                      "pending.jsonl"], ["--results pending.jsonl is FILE"]),
    }


@pytest.mark.parametrize("case", list(_collision_cases(Path("w"))))
def test_an_output_that_is_an_input_or_another_output_is_refused(work, store_db, tmp_path,
                                                                   case, monkeypatch):
    from cascade_adv import evaluation

    (tmp_path / "runlink").symlink_to(work / "myrun")
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "data" / "mnist" / "train-images-idx3-ubyte").write_bytes(b"mine")
    (tmp_path / "flat").mkdir()  # the IDX files directly in the data root
    (tmp_path / "flat" / "t10k-images-idx3-ubyte.gz").write_bytes(b"mine")
    (tmp_path / "rep" / "figures").mkdir(parents=True)
    shutil.copyfile(store_db, tmp_path / "rep" / "figures" / "s.db")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("seed: 1\n")
    (tmp_path / "pending.jsonl").write_text('{"format": "cascade-adv/pending-rows/1"}\n')
    monkeypatch.setattr(evaluation, "evaluate_whitebox", None)  # any work would fail loudly
    argv, words = _collision_cases(work)[case]
    before, work_before = snapshot(tmp_path), snapshot(work)
    assert_one_line(run(*argv, cwd=tmp_path), 2, *words, "--overwrite does not apply")
    assert snapshot(tmp_path) == before and snapshot(work) == work_before


# --- class 3: a symlinked output is followed -----------------------------------------------

def test_symlinked_out_replaces_the_linked_set_and_keeps_the_link(work, tmp_path):
    from cascade_adv.results.advsets import load_adversarial_set

    sets = tmp_path / "sets"
    args = ["attack", "--checkpoint", work / "myrun", "--limit", "8", "--quiet"]
    assert run(*args, "--attack", "step_ll", "--eps", "4", "--out", sets / "v1",
               cwd=tmp_path)[0] == 0
    (tmp_path / "current").symlink_to(sets / "v1")  # a link to an earlier set
    result = run(*args, "--attack", "step_fgsm", "--eps", "8", "--out", "current",
                 cwd=tmp_path)
    assert result[0] == 0, result
    assert (tmp_path / "current").is_symlink()
    assert os.readlink(tmp_path / "current") == str(sets / "v1")
    assert load_adversarial_set(tmp_path / "current").meta["method"] == "step_fgsm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "sets"]  # no .old.tmp
    assert [p.name for p in sets.iterdir()] == ["v1"]


def test_symlinked_file_output_is_replaced_at_its_target(work, tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.csv").write_text("old\n")
    (tmp_path / "t.csv").symlink_to(tmp_path / "tables" / "t.csv")
    result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                 "--attacks", "step_ll", "--eps", "4", "--results", "r.db", "--csv", "t.csv",
                 cwd=tmp_path)
    assert result[0] == 0, result
    assert (tmp_path / "t.csv").is_symlink()
    assert (tmp_path / "tables" / "t.csv").read_text().startswith("model,")
    assert [p.name for p in (tmp_path / "tables").iterdir()] == ["t.csv"]


# --- class 8: the store under stress: computed rows are never thrown away -----------------

def _pending_file(err: str) -> Path:
    """The pending-rows file a one-line store failure names."""
    import re

    return Path(re.search(r"cascade-adv store import (\S+)'", err).group(1))


def test_store_locked_past_its_timeout_keeps_the_rows_and_the_csv(work, tmp_path,
                                                                   monkeypatch):
    import sqlite3

    from cascade_adv.evaluation import ResultsStore
    from cascade_adv.results import store as store_mod
    from cascade_adv.results.tables import ResultTable

    ResultsStore(tmp_path / "r.db").close()  # an existing store, then held by a writer
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT", 0.2)
    holder = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                     "--attacks", "step_ll", "--eps", "4", "--results", "r.db", "--csv",
                     "t.csv", "--json", "t.json", cwd=tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_one_line(result, 2, "r.db could not be written", "locked", "cascade-adv store import")
    table = ResultTable.from_csv(tmp_path / "t.csv")  # the CSV asked for was written first
    assert len(table) and json.loads((tmp_path / "t.json").read_text())
    pending = _pending_file(result[2])
    assert pending.parent == tmp_path and pending.name.startswith("r.db.unsaved-")
    with ResultsStore(tmp_path / "r.db") as store:
        assert len(store) == 0
    imported = run("store", "import", pending, cwd=tmp_path)
    assert imported[0] == 0, imported
    with ResultsStore(tmp_path / "r.db") as store:
        assert sorted(map(str, store.query())) == sorted(map(str, table))
        assert [m.name for m in store.models()] == ["myrun"]  # its record came along


@pytest.mark.parametrize("damage", ["foreign_schema", "damaged_pages", "missing_column"])
def test_damaged_or_foreign_store_is_refused_before_any_work(work, store_db, tmp_path,
                                                              monkeypatch, damage):
    import sqlite3

    from cascade_adv import evaluation

    db = tmp_path / "r.db"
    if damage == "foreign_schema":  # another program's database with a schema version
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE results (x)")
            con.execute("PRAGMA user_version = 2")
    elif damage == "missing_column":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE results (model, value)")
            con.execute("CREATE TABLE models (name)")
            con.execute("PRAGMA user_version = 2")
    else:  # a real store whose data pages were overwritten
        shutil.copyfile(store_db, db)
        data = bytearray(db.read_bytes())
        page = int.from_bytes(data[16:18], "big")
        data[page + 8:] = b"\xff" * (len(data) - page - 8)
        db.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    monkeypatch.setattr(evaluation, "evaluate_whitebox", None)  # any work would fail loudly
    result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                 "--results", "r.db", "--csv", "t.csv", cwd=tmp_path)
    assert_one_line(result, 2, "r.db")
    assert "cascade-adv results store" in result[2] or "damaged" in result[2] \
        or "malformed" in result[2], result[2]
    assert snapshot(tmp_path) == before


def test_full_disk_under_the_store_is_one_line_and_keeps_the_rows(work, tmp_path,
                                                                  monkeypatch):
    import sqlite3

    from cascade_adv.evaluation import ResultsStore
    from cascade_adv.results import store as store_mod

    ResultsStore(tmp_path / "r.db").close()  # an existing store, with no room to grow
    real_connect = sqlite3.connect

    def full(*a, **k):  # SQLite's own "database or disk is full" (SQLITE_FULL), after
        con = real_connect(*a, **k)  # which SQLite has rolled the transaction back itself
        con.execute("PRAGMA max_page_count = 1")  # (clamped to the store's current size)
        return con

    monkeypatch.setattr(store_mod.sqlite3, "connect", full)
    result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                 "--attacks", "step_ll,step_fgsm", "--eps", "1,2,3,4,5,6,7,8,9,10,11,12",
                 "--results", "r.db", "--csv", "t.csv", cwd=tmp_path)
    assert_one_line(result, 2, "disk is full", "cascade-adv store import")
    assert "cannot rollback" not in result[2]
    monkeypatch.setattr(store_mod.sqlite3, "connect", real_connect)
    with ResultsStore(tmp_path / "r.db") as store:
        assert len(store) == 0
    assert run("store", "import", _pending_file(result[2]), cwd=tmp_path)[0] == 0
    with ResultsStore(tmp_path / "r.db") as store:
        assert len(store) == len((tmp_path / "t.csv").read_text().splitlines()) - 1


def test_malformed_pending_file_is_one_line_and_imports_nothing(tmp_path):
    from cascade_adv.evaluation import ResultsStore

    ResultsStore(tmp_path / "r.db").close()
    header = json.dumps({"format": "cascade-adv/pending-rows/1", "store": "r.db"})
    for text in ("not json\n", '{"format": "other"}\n', header + '\n{"row": {"model": 1}}\n',
                 header + '\n{"pickle": "x"}\n'):
        (tmp_path / "p.jsonl").write_text(text)
        before = snapshot(tmp_path)
        assert_one_line(run("store", "import", "p.jsonl", cwd=tmp_path), 2, "p.jsonl")
        assert snapshot(tmp_path) == before


# --- class 9: a full disk or a read-only folder: one line, what was complete stays ---------

def _enospc(path="x"):
    import errno

    return OSError(errno.ENOSPC, "No space left on device", str(path))


def _disk_with(monkeypatch, folder: Path, free: int):
    """``shutil.disk_usage`` reports ``free`` bytes for paths under ``folder``."""
    import collections

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")

    def fake(path):
        if Path(path).resolve() == folder.resolve() or folder.resolve() in \
                Path(path).resolve().parents:
            return usage(1 << 30, (1 << 30) - free, free)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", fake)


def test_craft_checks_the_sets_size_against_free_space_before_attacking(work, tmp_path,
                                                                         monkeypatch):
    from cascade_adv import attacks, io

    out = tmp_path / "sets" / "adv"
    args = ["craft", "--checkpoint", work / "myrun", "--eps", "2,4", "--limit", "96",
            "--quiet", "--out", out]
    assert run(*args, cwd=tmp_path)[0] == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr(io, "MIN_FREE_BYTES", 1024)  # the floor every output folder needs
    _disk_with(monkeypatch, tmp_path / "sets", free=8192)  # above it, below the set's size
    monkeypatch.setattr(attacks, "run", None)  # no attack may start
    result = run(*args, cwd=tmp_path)
    assert_one_line(result, 2, "the adversarial set adv needs", str(tmp_path / "sets"), "free")
    assert snapshot(tmp_path) == before  # the earlier set is intact


def test_craft_meeting_a_full_disk_while_writing_is_one_line(work, tmp_path, monkeypatch):
    import numpy as np

    from cascade_adv.evaluation import advset

    out = tmp_path / "adv"
    args = ["craft", "--checkpoint", work / "myrun", "--eps", "2", "--limit", "8", "--quiet",
            "--out", out]
    assert run(*args, cwd=tmp_path)[0] == 0
    before = snapshot(tmp_path)

    def full(path, *a, **k):
        raise _enospc(path)

    monkeypatch.setattr(advset.np, "save", full)
    assert_one_line(run(*args, cwd=tmp_path), 2, "no space left in", str(tmp_path),
                    "the adversarial set adv", "needs")
    monkeypatch.setattr(advset.np, "save", np.save)
    assert snapshot(tmp_path) == before  # the earlier set intact, no temporary folder


@pytest.mark.parametrize("fault", ["ENOSPC", "EROFS"])
def test_train_on_a_full_or_read_only_disk_keeps_its_last_checkpoint(tmp_path, monkeypatch,
                                                                       fault):
    import errno

    from cascade_adv.models import load_model
    from cascade_adv.training import checkpoint
    from cascade_adv.training.checkpoint import latest_checkpoint

    real = checkpoint.save_model

    def failing(model, path, **kw):  # the second checkpoint meets the fault
        if "ckpt-0000008" in str(path):
            raise OSError(getattr(errno, fault), os.strerror(getattr(errno, fault)), str(path))
        return real(model, path, **kw)

    monkeypatch.setattr(checkpoint, "save_model", failing)
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY, cwd=tmp_path)
    words = (["no space left in", "needs", "KB"] if fault == "ENOSPC"
             else ["Read-only file system", "writable"])
    assert_one_line(result, 2, "in run/checkpoints", "checkpoint ckpt-0000008", *words)
    assert latest_checkpoint(tmp_path / "run").name == "ckpt-0000004"
    load_model(latest_checkpoint(tmp_path / "run"))  # complete and readable
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["ckpt-0000004", "latest"]  # no half-written temporary folder
    monkeypatch.setattr(checkpoint, "save_model", real)
    assert run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
               cwd=tmp_path)[0] == 0  # resumes once there is room


def test_a_write_the_library_does_not_size_is_one_line_on_a_full_disk(tmp_path, monkeypatch):
    from cascade_adv.training import loop

    def full(self, record):  # appending a metrics line meets a full disk
        raise _enospc(self.path)

    monkeypatch.setattr(loop._Metrics, "write", full)
    result = run("train", "--config", CONFIG, "--out", "run", "--quiet", *TINY, cwd=tmp_path)
    assert_one_line(result, 2, "cannot write run/metrics.jsonl", "No space left",
                    "free some space in run", "resumes from its last checkpoint")


def test_train_and_eval_refuse_a_full_folder_before_any_work(work, tmp_path, monkeypatch):
    from cascade_adv import evaluation
    from cascade_adv.training import loop

    _disk_with(monkeypatch, tmp_path, free=4096)
    monkeypatch.setattr(evaluation, "evaluate_whitebox", None)  # any work would fail loudly
    monkeypatch.setattr(loop, "setup_training", None)
    assert_one_line(run("train", "--config", CONFIG, "--out", "run", *TINY, cwd=tmp_path), 2,
                    "--out run needs 1.0 MB in .", "4.0 KB free")
    assert_one_line(run("eval", "--checkpoint", work / "myrun", "--results", "r.db", "--limit",
                        "8", cwd=tmp_path), 2, "results store r.db needs 1.0 MB")
    assert list(tmp_path.iterdir()) == []


def test_eval_whose_csv_meets_a_full_disk_still_stores_its_rows(work, tmp_path, monkeypatch):
    from cascade_adv.evaluation import ResultsStore

    (tmp_path / "tables").mkdir()
    real = Path.write_bytes

    def full_in_tables(self, data):
        if self.parent == tmp_path / "tables":
            raise _enospc(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_in_tables)
    result = run("eval", "--checkpoint", work / "myrun", "--limit", "8", "--quiet",
                 "--attacks", "step_ll", "--eps", "4", "--results", "r.db", "--csv",
                 "tables/t.csv", cwd=tmp_path)
    assert_one_line(result, 2, "no space left in tables for t.csv (needs", "B",
                    "the rows are stored in r.db")
    assert list((tmp_path / "tables").iterdir()) == []  # no temporary file left
    with ResultsStore(tmp_path / "r.db") as store:
        assert len(store)


# --- class 10: every file and folder written gets the user's umask -------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_everything_written_gets_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        train_tiny(tmp_path / "run", "optim.iterations=8")
        for argv in (["attack", "--checkpoint", "run", "--attack", "step_ll", "--eps", "4",
                      "--limit", "8", "--quiet", "--out", "adv"],
                     ["eval", "--checkpoint", "run", "--attacks", "step_ll", "--eps", "4",
                      "--limit", "8", "--quiet", "--results", "r.db", "--csv", "t.csv",
                      "--json", "t.json"],
                     ["report", "--results", "r.db", "--out", "rep"]):
            assert run(*argv, cwd=tmp_path)[0] == 0, argv
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777
             for p in tmp_path.rglob("*")}
    want = {"file": 0o666 & ~umask, "dir": 0o777 & ~umask}
    wrong = {p: oct(m) for p, m in modes.items()
             if m != want["dir" if (tmp_path / p).is_dir() else "file"]}
    assert wrong == {}, wrong
    for name in ("run/final/model.safetensors", "run/checkpoints/ckpt-0000008/state.pt",
                 "adv/images.npy", "r.db", "t.csv", "rep/report.html"):
        assert name in modes  # each kind of file was written and checked
