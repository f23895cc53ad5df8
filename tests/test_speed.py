"""The fast single-device path keeps results within noise of float32 (on CPU).

docs/performance.md: bf16 autocast, channels_last and torch.compile are switches
(:mod:`cascade_adv.speed`).  CPU autocast supports bfloat16, so the "within noise"
claims are measured here on a small trained digits model:

- white-box accuracy under float32 vs bf16: every cell within 2 points on the 360
  test digits.  The sampling noise of an accuracy p on n = 360 images is
  sqrt(p (1 - p) / n), 1.4 to 2 points for p between 0.9 and 0.8, so 2 points is
  about one standard error of the test set itself; the measured differences are
  0 to 0.3 points (one image);
- training: the same 20 iterations in bf16 and float32 start within 1e-2 relative
  (same weights and batch: only the bf16 rounding of the forward pass) and then
  stay closer than the float32 curve's own batch-to-batch fluctuation;
- channels_last: the same numbers as contiguous up to float rounding (1e-5);
- compile: checked up front; where supported, the same losses and logits as eager.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cascade_adv import attacks, speed
from cascade_adv.data import load_dataset, to_float
from cascade_adv.errors import ConfigError
from cascade_adv.evaluation import evaluate_whitebox
from cascade_adv.models import ModelConfig, build_model
from cascade_adv.speed import Speed, prepare_input, prepare_model, release_model, resolve_speed
from cascade_adv.training import load_config, train

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY = ["model.depth=8", "optim.batch_size=64", "optim.lr_milestones=[30, 40]",
        "checkpoint.every=50"]


def digits_config(*extra: str):
    return load_config(ROOT / "configs/digits_baseline.yaml", [*TINY, *extra])


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A ResNet-8 trained for 50 iterations on the bundled digits (about 97% clean)."""
    cfg = digits_config("optim.iterations=50", "log_every=50")
    return train(cfg, tmp_path_factory.mktemp("speed") / "run", progress=False).model


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


def _top1(table) -> dict:
    return {(r["attack"], r["eps"]): r["value"] for r in table if r["metric"] == "top1"}


def _logit_dtypes(model) -> tuple[list, object]:
    seen: list = []
    return seen, model.fc.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))


# --- (a) white-box evaluation: float32 vs bf16 -----------------------------------------


def test_bf16_whitebox_accuracy_within_noise_of_float32(digits_model, digits_test):
    tables = {}
    for precision in ("float32", "bf16"):
        seen, hook = _logit_dtypes(digits_model)
        try:
            tables[precision] = _top1(evaluate_whitebox(
                digits_model, digits_test, ["step_ll", "step_fgsm", "iter_fgsm"], [0, 8, 16],
                progress=False, precision=precision))
        finally:
            hook.remove()
        want = torch.float32 if precision == "float32" else torch.bfloat16
        assert seen and set(seen) == {want}, precision  # autocast really was (not) on
    f32, bf16 = tables["float32"], tables["bf16"]
    assert f32.keys() == bf16.keys() and len(f32) == 7
    diffs = {key: abs(f32[key] - bf16[key]) for key in f32}
    assert max(diffs.values()) <= 2.0, diffs
    assert f32[("clean", 0.0)] > 80  # a trained model, so the attacks have work to do


def test_bf16_attacks_give_mostly_identical_float32_images(digits_model, digits_test):
    x, y = to_float(digits_test.images), digits_test.labels
    bf16 = resolve_speed(CPU, "bf16")
    for name, min_same in (("step_ll", 0.95), ("iter_fgsm", 0.80)):
        ref = attacks.get(name).fn(digits_model, x, y, 16.0)
        with bf16.autocast():
            out = attacks.get(name).fn(digits_model, x, y, 16.0)
        assert out.dtype == torch.float32  # the input gradient flows in float32
        same = (out == ref).float().mean().item()
        # only gradient components near zero change sign under bf16 rounding
        assert min_same <= same < 1.0, (name, same)
        assert (out - x).abs().max() <= 16 / 255 + 1e-6


# --- (b) training: float32 vs bf16 -------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["adversarial.mode=append", "adversarial.k=16",
                                        "adversarial.distance=pivot"]],
                         ids=["clean", "pivot_step_ll"])
def test_bf16_training_losses_close_to_float32(tmp_path, extra):
    curves = {}
    for precision in ("float32", "bf16"):
        cfg = digits_config("optim.iterations=20", "log_every=1", *extra,
                            f"speed.precision={precision}")
        train(cfg, tmp_path / precision, progress=False)
        lines = (tmp_path / precision / "metrics.jsonl").read_text().splitlines()
        curves[precision] = torch.tensor([json.loads(ln)["loss"] for ln in lines])
    f32, bf16 = curves["float32"], curves["bf16"]
    assert f32.shape == bf16.shape == (20,) and torch.isfinite(bf16).all()
    # iteration 0: same weights, same batch, same attacks: only bf16 rounding
    assert abs(bf16[0] - f32[0]) / f32[0] < 1e-2
    # later the SGD trajectories drift apart, but less than the float32 curve's own
    # batch-to-batch fluctuation (std of successive differences, last 10 iterations)
    noise = f32[-10:].diff().std().item()
    gap = (bf16 - f32).abs().max().item()
    assert gap < 0.1 and gap < noise, (gap, noise)
    assert bf16[-5:].mean() < 0.6 * bf16[:5].mean()  # and it learns


# --- (c) channels_last ------------------------------------------------------------------


def _rgb_model(channels: int = 3, size: int = 16) -> torch.nn.Module:
    # Option B, the model this test was written for.  With one thread, torch 2.13's CPU
    # channels_last training backward gives input gradients that differ from the
    # contiguous path by up to 5 % for some weights (seen for option A with seed 0 and
    # option B with seed 1; two threads agree to 1e-8): docs/performance.md.  The speed
    # option is off on CPU by default for that reason too.
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="resnet", depth=8, in_channels=channels,
                                   input_size=size, num_classes=10, normalize="none",
                                   shortcut="B"))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last_matches_contiguous(mode):
    ref = _rgb_model()
    fast = prepare_model(copy.deepcopy(ref), Speed(CPU, channels_last=True))
    conv = fast.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    grads = []
    nhwc = prepare_input(x.clone(), Speed(CPU, channels_last=True))
    for net, inp in ((ref, x.clone()), (fast, nhwc)):
        net.train(mode == "train")
        inp.requires_grad_(True)
        logits = net(inp)
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), inp.grad, [p.grad for p in net.parameters()]))
    (la, ga, wa), (lb, gb, wb) = grads
    assert torch.allclose(la, lb, atol=1e-5)
    assert torch.allclose(ga, gb, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(wa, wb))
    release_model(fast)
    assert all(p.is_contiguous() for p in fast.parameters())


def test_channels_last_training_and_eval_match_default(tmp_path, digits_model, digits_test):
    runs = {}
    for cl in ("false", "true"):
        cfg = digits_config("optim.iterations=4", "log_every=1", f"speed.channels_last={cl}",
                            "speed.precision=float32")
        runs[cl] = train(cfg, tmp_path / cl, progress=False)
    sa, sb = runs["false"].model.state_dict(), runs["true"].model.state_dict()
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5) for k in sa)
    assert all(p.is_contiguous() for p in runs["true"].model.parameters())  # released
    a = _top1(evaluate_whitebox(digits_model, digits_test, ["step_ll"], [0, 16],
                                progress=False))
    b = _top1(evaluate_whitebox(digits_model, digits_test, ["step_ll"], [0, 16],
                                progress=False, channels_last=True))
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 0.5 for k in a)
    assert all(p.is_contiguous() for p in digits_model.parameters())  # restored


# --- (d) torch.compile ------------------------------------------------------------------


@pytest.fixture
def no_cpp_compiler(monkeypatch):
    """This machine as one without a C++ compiler, which inductor needs for CPU code."""
    monkeypatch.setattr(speed, "_cpp_compiler", lambda: None)
    speed.compile_support.cache_clear()
    yield
    speed.compile_support.cache_clear()


def test_compile_where_unsupported_is_one_line_before_any_work(tmp_path, no_cpp_compiler,
                                                                digits_test):
    cfg = digits_config("optim.iterations=3", "speed.compile=true", "device=cpu")
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "compile requested where unsupported" in msg and "speed.compile=false" in msg
    assert "C++ compiler" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()  # nothing was written
    model = _rgb_model(1, 8)  # a digits model
    with pytest.raises(ConfigError, match="compile requested where unsupported.*compile=False"):
        evaluate_whitebox(model, digits_test, ["step_ll"], [16], compile=True, progress=False)


def test_cli_eval_compile_unsupported_exits_2_before_loading():
    # no compiler on PATH (and no $CXX): unsupported; the checkpoint is never opened
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env["PATH"] = ""
    result = subprocess.run(
        [sys.executable, "-m", "cascade_adv.cli.main", "eval", "--checkpoint", "no/such/run",
         "--device", "cpu", "--compile", "--quiet"],
        capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: compile requested where unsupported")
    assert "--no-compile" in lines[0] and "no/such/run" not in lines[0]


@pytest.mark.slow
def test_compile_matches_eager_where_supported(tmp_path):
    why = speed.compile_support("cpu")
    if why is not None:
        pytest.skip(f"torch.compile is unsupported here ({why}); the error path is tested above")
    curves, models = {}, {}
    for flag in ("false", "true"):
        cfg = digits_config("optim.iterations=3", "log_every=1", "model.width=0.5",
                            "optim.batch_size=32", f"speed.compile={flag}")
        models[flag] = train(cfg, tmp_path / flag, progress=False).model
        lines = (tmp_path / flag / "metrics.jsonl").read_text().splitlines()
        curves[flag] = torch.tensor([json.loads(ln)["loss"] for ln in lines])
    # compiled kernels sum in another order: 1e-7 relative per step, grown by SGD
    assert torch.allclose(curves["false"], curves["true"], rtol=1e-4)
    assert getattr(models["true"], "_compiled_call_impl", None) is None  # released
    eager = models["true"].train()
    compiled = prepare_model(copy.deepcopy(eager), Speed(CPU, compile=True)).train()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(eager(x), compiled(x), atol=1e-5)


# --- (e) bad values ---------------------------------------------------------------------


@pytest.mark.parametrize("override, words", [
    ("speed.precision=fp16", ["speed.precision", "bf16"]),
    ("speed.channels_last=maybe", ["speed.channels_last", "auto, true or false"]),
    ("speed.compile=perhaps", ["speed.compile"]),
    ("speed.fast=true", ["speed.fast", "precision, channels_last, compile"]),
])
def test_bad_speed_config_is_one_line(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_speed_arguments_rejected_before_work(digits_test):
    with pytest.raises(ConfigError, match="precision must be one of auto, float32, bf16"):
        resolve_speed(CPU, "half")
    with pytest.raises(ConfigError, match="channels_last must be auto, true or false"):
        resolve_speed(CPU, channels_last="sometimes")
    with pytest.raises(ConfigError, match="compile must be true or false"):
        resolve_speed(CPU, compile="yes")
    with pytest.raises(ConfigError, match="precision"):
        evaluate_whitebox(_rgb_model(1, 8), digits_test, ["step_ll"], [16], precision="fp16",
                          progress=False)


def test_auto_resolves_to_float32_on_cpu():
    s = resolve_speed(CPU)
    assert (s.dtype, s.channels_last, s.compile, s.precision) == (None, False, False, "float32")
    assert isinstance(s.autocast(), type(Speed(CPU).autocast()))  # a no-op context
    assert resolve_speed(CPU, "bf16").dtype == torch.bfloat16
