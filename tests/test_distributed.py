"""DDP under torchrun: two gloo processes on CPU against one process, rank-0-only writes,
resume, sharded evaluation, and the one-line errors raised before any work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cascade_adv.cli.main import main
from cascade_adv.data import load_dataset
from cascade_adv.errors import ConfigError
from cascade_adv.models import build_model
from cascade_adv.training import load_config, model_config_for, train
from cascade_adv.training.adversarial import AdversarialObjective
from cascade_adv.training.distributed import check_batch_split, resolve_backend
from cascade_adv.training.loop import Sampler

# N18's layout at a tiny scale: m = 32, k = 16 adversarial rows with their twins, pivot
# loss (lam2 large enough to matter), a ResNet-8 of width 1/4.  sync_batchnorm makes the
# BatchNorm statistics global, so the two-process run must equal the one-process run.
CONFIG = """\
name: ddp
seed: 0
device: cpu
log_every: 1
data: {dataset: digits}
model: {depth: 8, width: 0.25}
optim: {iterations: 3, batch_size: 32, lr: 0.1, lr_milestones: [100]}
checkpoint: {every: 1, keep: 5}
adversarial: {mode: append, k: 16, method: step_both, distance: pivot, lam2: 0.01}
distributed: {backend: gloo, sync_batchnorm: true}
"""

# Runs inside each torchrun process: resumes the run with the library, records every
# file each rank writes, then evaluates the trained model sharded and unsharded.
DRIVER = """\
import json, os, sys
import torch.distributed as dist
from cascade_adv.training import load_config, loop
from cascade_adv.data import load_dataset
from cascade_adv.evaluation import evaluate_whitebox

rank = int(os.environ["RANK"])
log = open(f"writes-{rank}.txt", "w")

def spy(name, fn):
    def wrapped(*args, **kwargs):
        log.write(f"{name}\\n")
        log.flush()
        return fn(*args, **kwargs)
    return wrapped

for name in ("save_checkpoint", "save_model", "atomic_write_text"):
    setattr(loop, name, spy(name, getattr(loop, name)))
loop._Metrics.write = spy("metrics", loop._Metrics.write)

dist.init_process_group("gloo")  # train() joins an existing group and leaves it open
cfg = load_config(sys.argv[1], sys.argv[3:])
result = loop.train(cfg, sys.argv[2], progress=False)
test = load_dataset("digits", "test")
kwargs = dict(attacks=["step_ll", "iter_fgsm"], eps=[8, 16], batch_size=100, progress=False)
sharded = evaluate_whitebox(result.model, test, **kwargs).rows
whole = evaluate_whitebox(result.model, test, distributed=False, **kwargs).rows
if rank == 0:
    with open("eval.json", "w") as fh:
        json.dump({"sharded": sharded, "whole": whole, "resumed_from": result.resumed_from}, fh)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *args]
    result = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    """Run 2 iterations under torchrun (the CLI), resume to 3 under torchrun (the
    library), and compare the weights with 3 iterations in one process."""
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(CONFIG)
    (tmp_path / "driver.py").write_text(DRIVER)
    first = _torchrun(tmp_path, "-m", "cascade_adv.cli.main", "train", "--config",
                      str(cfg_path), "--out", "ddp", "--quiet", "optim.iterations=2")
    assert first.stdout.count("trained ddp: 2 iterations") == 1  # rank 0 reports
    _torchrun(tmp_path, "driver.py", str(cfg_path), "ddp")

    single = train(load_config(cfg_path), tmp_path / "single", progress=False)
    assert single.iterations == 3

    # Same global batch, epsilons, normaliser and (synced) BatchNorm statistics: the only
    # differences are float summation orders (per-rank sums, all-reduce, BatchNorm
    # statistics in float64 then float32).  Measured max |diff| ~2.4e-7 on weights of
    # magnitude <= 1.2 after 3 steps at lr 0.1; atol 1e-5 leaves a 40x margin and is far
    # below the ~0.16 difference of per-rank BatchNorm (sync_batchnorm false).
    ours = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    ref = load_file(tmp_path / "single" / "final" / "model.safetensors")
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        if value.is_floating_point():
            assert torch.allclose(ours[key], value, rtol=0, atol=1e-5), key
        else:
            assert torch.equal(ours[key], value), key  # num_batches_tracked
    moved = max((ours[k] - v).abs().max().item() for k, v in ref.items()
                if v.is_floating_point())
    assert moved < 1e-5
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "ddp" / "metrics.jsonl").open()]
    ref_losses = [json.loads(ln)["loss"] for ln in (tmp_path / "single" / "metrics.jsonl").open()]
    assert losses == pytest.approx(ref_losses, abs=1e-5)  # one line per iteration: no duplicates

    # resume under torchrun: the second launch started from the checkpoint at 2
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["resumed_from"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").glob("ckpt-*")) == [
        "ckpt-0000001", "ckpt-0000002", "ckpt-0000003"]

    # only rank 0 wrote files (config, metrics, checkpoint, final weights)
    assert (tmp_path / "writes-1.txt").read_text() == ""
    written = (tmp_path / "writes-0.txt").read_text().split()
    assert {"atomic_write_text", "metrics", "save_checkpoint", "save_model"} <= set(written)

    # sharded white-box evaluation: the counts of the whole test set, as one process
    assert report["sharded"] == report["whole"]
    assert {r["n"] for r in report["sharded"]} == {len(load_dataset("digits", "test"))}


@pytest.mark.parametrize("mode, method, distance, delay", [
    ("append", "step_both", "pivot", 0),
    ("append", "step_rnd", "bidirectional", 0),
    ("replace", "step_ll", None, 0),
    ("append", "step_ll", "pivot", 5),
])
def test_rank_shares_sum_to_the_single_process_loss(mode, method, distance, delay):
    """With BatchNorm in inference mode (no batch statistics), the ranks' shares of one
    global batch - their adversarial rows, twins and clean rows, the global normaliser,
    W times the share - average to the one-process loss and gradient."""
    over = ["data.dataset=digits", "model.depth=8", "model.width=0.25", "optim.batch_size=32",
            f"adversarial.mode={mode}", "adversarial.k=16", f"adversarial.method={method}",
            f"adversarial.distance={distance or 'null'}", "adversarial.lam2=0.01",
            f"adversarial.delay={delay}"]
    cfg = load_config(None, over)
    data = load_dataset("digits", "train")
    model_cfg = model_config_for(cfg, data)
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()

    def loss_and_grads(rank: int, world: int):
        objective = AdversarialObjective(cfg, data, model_cfg, torch.device("cpu"), rank, world)
        sampler = Sampler(data, cfg, torch.device("cpu"), objective.clean_per_batch)
        x, y = sampler.batch(0)
        loss, logits, _ = objective(model, x, y, 0, sampler.generator(0, 3))
        model.zero_grad()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss.detach(), grads, logits.shape[0]

    single, single_grad, rows = loss_and_grads(0, 1)
    shares = [loss_and_grads(r, 2) for r in range(2)]
    assert [s[2] for s in shares] == [rows // 2, rows // 2]
    assert (shares[0][0] + shares[1][0]) / 2 == pytest.approx(single.item(), abs=1e-6)
    assert torch.allclose((shares[0][1] + shares[1][1]) / 2, single_grad, rtol=0, atol=1e-6)


def test_world_size_must_divide_the_batch():
    cfg = load_config(None, ["optim.batch_size=32", "adversarial.mode=append", "adversarial.k=16"])
    check_batch_split(cfg, 1)
    check_batch_split(cfg, 2)
    check_batch_split(cfg, 4)
    with pytest.raises(ConfigError, match="world size 3 does not divide") as err:
        check_batch_split(cfg, 3)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="adversarial.k=12"):
        check_batch_split(load_config(None, ["optim.batch_size=32", "adversarial.mode=append",
                                             "adversarial.k=12"]), 8)
    with pytest.raises(ConfigError, match="optim.batch_size=30"):
        check_batch_split(load_config(None, ["optim.batch_size=30"]), 4)


def test_nccl_needs_cuda():
    with pytest.raises(ConfigError, match="nccl") as err:
        resolve_backend("nccl", torch.device("cpu"))
    assert "\n" not in str(err.value)
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert resolve_backend("gloo", torch.device("cpu")) == "gloo"


@pytest.mark.parametrize("world, extra, words", [
    ("3", [], ["world size 3 does not divide", "optim.batch_size=32"]),
    ("2", ["distributed.backend=nccl"], ["distributed.backend=nccl"]),
])
def test_cli_rejects_bad_torchrun_setups_before_work(tmp_path, monkeypatch, capsys, world, extra,
                                                     words):
    """As torchrun would set them; the error comes before any process group or file."""
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(CONFIG)
    for var, value in (("WORLD_SIZE", world), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet",
              *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err
    assert not (tmp_path / "run").exists()
    assert not torch.distributed.is_initialized()
