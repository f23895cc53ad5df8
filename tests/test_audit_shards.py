"""Issue 30: one audit across processes.  The images are split into shards of whole
batches, each audited in its own worker with the seeds its batches have in a
one-process run, so the merged per-image outcomes are identical; a killed shard resumes
from its own progress file; bad worker settings are one line before any work."""

from __future__ import annotations

import importlib

import pytest
import torch
from _cli import run_cli
from torch import nn

from cascade_adv.errors import InvalidArgument
from cascade_adv.evaluation.audit import AuditRecord, AuditRun, Workers, audit

audit_mod = importlib.import_module("cascade_adv.evaluation.audit")  # the module, not audit()

VERSION = "apgd_ce:steps=5,apgd_t:steps=3:targets=2,square:queries=30"


def _task(n: int = 40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # picklable: travels to workers
    x = torch.rand(n, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every image correct clean: each attack has work
    return model, x, y


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same float kernels
    yield
    torch.set_num_threads(before)


def test_sharded_and_unsharded_audits_give_identical_per_image_outcomes(one_thread, tmp_path):
    model, x, y = _task()
    whole = audit(model, x, y, [8, 32], version=VERSION, run=AuditRun(batch_size=8, seed=3))
    sharded = audit(model, x, y, [8, 32], version=VERSION,
                    run=AuditRun(batch_size=8, seed=3, workers=Workers(jobs=2, threads=1)),
                    record=AuditRecord(store=tmp_path / "r.db", keep_images=True))
    assert torch.equal(whole.clean_correct, sharded.clean_correct)
    assert torch.equal(whole.broken_by, sharded.broken_by)
    assert 0 < int((whole.broken_by >= 0).sum()) < whole.broken_by.numel()  # not trivial
    assert sharded.adversarial.shape == (2, 40, 1, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]  # progress files removed
    # three uneven shards (5 batches): the same outcomes again
    three = audit(model, x, y, [8, 32], version=VERSION,
                  run=AuditRun(batch_size=8, seed=3, workers=3))
    assert torch.equal(whole.broken_by, three.broken_by)


def _shard(whole, store, eps=8.0):
    """What the shards of ``whole``'s audit (one eps, batches of 8, seed 0) share."""
    return audit_mod._Shard(list(whole.attacks), [eps], 0, 8, 8, True, False, "model", "", "",
                            "", store, True, False)


def test_a_shard_draws_the_seeds_of_its_batches_in_the_whole_audit(one_thread):
    """Shard 2 alone (batches 3, 4) equals those batches of the whole audit; with its
    batches numbered from 0 instead it differs (Square's random windows at eps 16: the
    test can see a seed mix-up)."""
    model, x, y = _task()
    whole = audit(model, x, y, [16], version="square:queries=8", run=AuditRun(batch_size=8))
    shard = _shard(whole, None, eps=16.0)
    _, broken, _, _ = audit_mod._audit_shard(model, x[24:], y[24:], None, shard, 3)
    assert torch.equal(broken, whole.broken_by[:, 24:])
    _, renumbered, _, _ = audit_mod._audit_shard(model, x[24:], y[24:], None, shard, 0)
    assert not torch.equal(renumbered, whole.broken_by[:, 24:])


def test_a_killed_shard_resumes_from_its_own_progress(one_thread, tmp_path, monkeypatch):
    model, x, y = _task()
    whole = audit(model, x, y, [8], version=VERSION, run=AuditRun(batch_size=8))
    shard = _shard(whole, str(tmp_path / "r.db"))
    calls = []
    real = audit_mod._run_attack

    def dies_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # the worker killed mid-shard
        return real(*args, **kwargs)

    monkeypatch.setattr(audit_mod, "_run_attack", dies_after_two)
    with pytest.raises(KeyboardInterrupt):  # batch 3 of the whole audit: 2 attacks done
        audit_mod._audit_shard(model, x[24:], y[24:], None, shard, 3)
    assert len(list(tmp_path.glob("r.db.audit-*.json"))) == 1
    calls.clear()
    monkeypatch.setattr(audit_mod, "_run_attack", lambda *a, **k: (calls.append(1),
                                                                   real(*a, **k))[1])
    _, broken, _, files = audit_mod._audit_shard(model, x[24:], y[24:], None, shard, 3)
    assert torch.equal(broken, whole.broken_by[:, 24:])
    assert len(calls) <= 4  # the third attack of batch 3 and batch 4's three, not all six
    assert files and files[0].exists()  # kept until the audit stores its rows


@pytest.mark.parametrize("workers, words", [
    (0, "jobs must be a positive integer"),
    (True, "jobs must be a positive integer"),
    (41, "more than the 40 images"),
    (Workers(jobs=2, executor="slurm"), "executor must be one of local, ray"),
    (Workers(jobs=2, threads=0), "threads must be a positive integer"),
])
def test_bad_worker_settings_are_refused_before_any_work(workers, words, monkeypatch):
    model, x, y = _task()
    monkeypatch.setattr(audit_mod, "_run_batches", lambda *a: pytest.fail("work started"))
    with pytest.raises(InvalidArgument, match=words):
        audit(model, x, y, [8], version=VERSION, run=AuditRun(workers=workers))


def test_the_cli_refuses_bad_jobs_and_a_missing_ray_in_one_line(tmp_path):
    from cascade_adv.training import load_config, train

    cfg = load_config("configs/digits_baseline.yaml", ["model.depth=8", "optim.iterations=2",
                                                       "optim.lr_milestones=[]"])
    train(cfg, tmp_path / "run", progress=False)
    base = ["audit", "--checkpoint", str(tmp_path / "run"), "--eps", "8", "--limit", "10",
            "--quiet", "--no-checks"]
    cases = [(["--jobs", "0"], "--jobs"), (["--jobs", "11"], "more than the 10 images")]
    try:
        import ray  # noqa: F401
    except ImportError:
        cases.append((["--jobs", "2", "--executor", "ray"], "pip install 'cascade-adv[ray]'"))
    for extra, words in cases:
        code, _, err = run_cli([*base, *extra], tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert words in err and "Traceback" not in err, err


def test_ray_gives_the_same_result_as_the_local_run(one_thread):
    pytest.importorskip("ray", reason="Ray is an optional extra (cascade-adv[ray])")
    model, x, y = _task()
    local = audit(model, x, y, [8], version=VERSION, run=AuditRun(batch_size=8, workers=2))
    on_ray = audit(model, x, y, [8], version=VERSION,
                   run=AuditRun(batch_size=8, workers=Workers(jobs=2, executor="ray")))
    assert torch.equal(local.broken_by, on_ray.broken_by)


def test_reproduce_shards_and_compiles_its_audit_steps_when_asked(monkeypatch, tmp_path):
    """--audit-jobs N reaches every audit step's audit() as N workers (at most the
    images); without --audit it is refused in one line."""
    from cascade_adv.experiments import steps

    seen = {}

    def fake_audit(model, x, y, eps, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    from cascade_adv import evaluation

    monkeypatch.setattr(evaluation, "audit", fake_audit)
    model, x, y = _task(12)
    monkeypatch.setattr(steps, "_model", lambda out, device: type(
        "M", (), {"model": model, "name": "m", "hash": ""})())
    monkeypatch.setattr(steps, "_split", lambda *a: type(
        "D", (), {"images": x, "labels": y, "name": "digits", "split": "test"})())
    rt = steps.Runtime(configs="configs", audit_jobs=16)
    with pytest.raises(RuntimeError, match="stop here"):
        steps.audit_step({"model": "m", "eps": [8.0], "version": "quick"}, tmp_path,
                         {"m": {}}, rt)
    assert seen["run"].workers == 12 and not seen["run"].compile  # 16 asked, 12 images
    rt = steps.Runtime(configs="configs", audit_compile=True)
    with pytest.raises(RuntimeError, match="stop here"):
        steps.audit_step({"model": "m", "eps": [8.0], "version": "quick"}, tmp_path,
                         {"m": {}}, rt)
    assert seen["run"].compile  # --audit-compile: Square on the compiled model
    for flag in (["--audit-jobs", "2"], ["--audit-compile"]):
        code, _, err = run_cli(["reproduce", "n18-table1", "--dataset", "digits", *flag,
                                "--dry-run", "--out", str(tmp_path / "c")], tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--audit" in err, err
    from cascade_adv import speed

    monkeypatch.setattr(speed, "_cpp_compiler", lambda: None)
    speed.compile_support.cache_clear()
    try:
        code, _, err = run_cli(["reproduce", "n18-table1", "--dataset", "digits", "--audit",
                                "--audit-compile", "--dry-run", "--out", str(tmp_path / "c")],
                               tmp_path)
    finally:
        speed.compile_support.cache_clear()
    assert code == 2 and "C++ compiler" in err and "drop --audit-compile" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()
