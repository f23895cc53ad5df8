"""Training methods with a random start (R+FGSM, R+Step-LL, FGSM with a random start,
PGD), the catastrophic-overfitting monitor and their cost, on tiny models and digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _cli import run_cli

from cascade_adv.training import load_config, train
from cascade_adv.training.adversarial import adversarial_batch, draws_random, one_step_examples
from cascade_adv.training.epsilon import sample_eps
from cascade_adv.training.methods import MethodOptions
from cascade_adv.training.monitor import describe_monitor

METHODS = ("r_fgsm", "r_step_ll", "fgsm_rs", "pgd")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits_baseline.yaml")
TINY = ["model.depth=8", "model.width=0.5", "optim.iterations=4", "optim.lr_milestones=[]",
        "checkpoint.every=2", "log_every=2", "optim.batch_size=32"]


def linear_model(classes=3, pixels=16, zero=False, dtype=torch.float64):
    """logits = W x + b: the input gradient of the cross-entropy is ``(p - e_y) W``.
    Large weights: the prediction, hence the gradient's sign and the least-likely
    class, changes inside the eps ball, so where each step is taken matters."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(pixels, classes)).to(dtype)
    with torch.no_grad():
        model[1].weight.normal_(0, 20.0)
        model[1].bias.normal_(0, 5.0)
    if zero:  # constant logits: a zero gradient, so the result is the random start
        torch.nn.init.zeros_(model[1].weight)
    return model


def ce_grad(model, x, labels):
    """The closed form of d CE(W x + b, labels) / dx, by image."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    return ((p - F.one_hot(labels, w.shape[0]).to(p.dtype)) @ w).view_as(x)


def clip_ball(v, x, e):
    """Into the L-inf ball of radius e (per image) around x, and into [0, 1]."""
    return torch.minimum(torch.maximum(v, (x - e).clamp(min=0)), (x + e).clamp(max=1))


def by_hand(method, model, x, y, eps, g, alpha=None, steps=10, random_start=True):
    """Each method's definition (module docstring of training/methods.py), step by step."""
    e = (eps / 255).view(-1, 1, 1, 1)
    if method in ("r_fgsm", "r_step_ll"):
        a = (0.5 if alpha is None else alpha) * e
        start = (x + a * torch.randn(x.shape, dtype=x.dtype, generator=g).sign()).clamp(0, 1)
        if method == "r_fgsm":
            step = ce_grad(model, start, y).sign()
        else:  # toward the least-likely class of the prediction at the random point
            y_ll = model(start).argmin(1)
            step = -ce_grad(model, start, y_ll).sign()
        return clip_ball(start + (e - a) * step, x, e)
    steps = 1 if method == "fgsm_rs" else steps
    a = ((1.25 if method == "fgsm_rs" else 2.5 / steps) if alpha is None else alpha) * e
    cur = x.clone()
    if random_start:
        cur = clip_ball(x + (2 * torch.rand(x.shape, dtype=x.dtype, generator=g) - 1) * e, x, e)
    for _ in range(steps):
        cur = clip_ball(cur + a * ce_grad(model, cur, y).sign(), x, e)
    return cur


def batch(n=6, pixels=16, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, pixels // 4, generator=g, dtype=dtype)
    x[0] = 0.0  # at the bounds of the image range: clipping matters
    x[1] = 1.0
    return x, torch.randint(0, 3, (n,), generator=g)


# --- the methods: their definitions, balls and random starts ---------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("options", [MethodOptions(), MethodOptions(steps=3),
                                     MethodOptions(alpha=0.3, steps=3)])
def test_each_method_is_its_definition_on_a_linear_model(method, options):
    """With the generator's draws taken from a clone, each method's images equal the
    formula computed here from the closed-form gradient of a linear model (defaults:
    alpha 0.5 for r_*, 1.25 for fgsm_rs, 2.5 / steps for pgd, 10 steps)."""
    if method != "pgd":
        options = MethodOptions(alpha=options.alpha)
    model = linear_model()
    x, y = batch()
    eps = torch.tensor([16.0, 8.0, 32.0, 0.5, 12.0, 64.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    expected = by_hand(method, model, x, y, eps, g.clone_state(), options.alpha,
                       options.steps or 10)
    got = one_step_examples(method, model, x, y, eps, g, options)
    assert got.dtype == torch.float64  # float64 stays float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert not torch.equal(got, x)


def test_documented_defaults():
    """alpha as a fraction of eps: 0.5 (r_*, Tramer et al.), 1.25 (fgsm_rs, Wong et al.),
    2.5 / steps (pgd, the registry's PGD rule); PGD 10 steps; a random start."""
    from cascade_adv.training.methods import METHODS as TABLE

    none = MethodOptions()
    assert TABLE["r_fgsm"].resolve(none) == (0.5, 1, True)
    assert TABLE["r_step_ll"].resolve(none) == (0.5, 1, True)
    assert TABLE["fgsm_rs"].resolve(none) == (1.25, 1, True)
    assert TABLE["pgd"].resolve(none) == (0.25, 10, True)
    assert TABLE["pgd"].resolve(MethodOptions(steps=4)) == (2.5 / 4, 4, True)
    assert TABLE["pgd"].resolve(MethodOptions(alpha=0.1, random_start=False)) == (0.1, 10, False)


def test_pgd_without_random_start_starts_at_x_and_draws_nothing():
    model = linear_model()
    x, y = batch()
    eps = torch.full((6,), 16.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    before = g.get_state()
    options = MethodOptions(steps=4, random_start=False)
    got = one_step_examples("pgd", model, x, y, eps, g, options)
    assert torch.equal(g.get_state(), before)
    torch.testing.assert_close(got, by_hand("pgd", model, x, y, eps, None, None, 4, False),
                               rtol=0, atol=1e-12)
    assert not draws_random("pgd", options) and draws_random("pgd")
    assert all(draws_random(m) for m in METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sampler", ["n18", "k17", "fixed", "uniform"])
def test_every_image_stays_in_its_eps_ball_and_the_image_range(method, sampler):
    """Algorithm 1 with each sampler's per-example eps, on a small ResNet that the
    method sees in inference mode (its BatchNorm statistics untouched)."""
    from cascade_adv.models import build_model

    torch.manual_seed(0)
    model = build_model({"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 8,
                         "num_classes": 10, "normalize": "none"}).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.rand(24, 1, 8, 8)
    x[:4] = x[:4].round()  # pixels at 0 and 1
    y = torch.randint(0, 10, (24,))
    g = torch.Generator().manual_seed(1)
    eps = sample_eps(sampler, 12, 32, g.clone_state())  # the draws adversarial_batch makes
    xb, yb = adversarial_batch(model, x, y, 12, mode="append", method=method, max_e=32,
                               eps_sampler=sampler, generator=g,
                               options=MethodOptions(steps=3 if method == "pgd" else None))
    moved = (xb[:12] - x[:12]).abs().flatten(1).amax(1)
    assert (moved <= eps / 255 + 1e-6).all()
    assert xb.min() >= 0 and xb.max() <= 1
    assert (moved[eps > 1] > 0).all()
    assert torch.equal(xb[12:], x) and torch.equal(yb[:12], y[:12])
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


def _ks_uniform(values: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample and U(lo, hi)."""
    v = ((values.flatten().double() - lo) / (hi - lo)).sort().values
    n = v.numel()
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    return max((ecdf_hi - v).max().item(), (v - (ecdf_hi - 1 / n)).max().item())


@pytest.mark.parametrize("method", ["r_fgsm", "r_step_ll"])
def test_r_methods_start_at_exactly_plus_or_minus_alpha_eps(method):
    """A zero-gradient model leaves the random start: alpha eps sign(N(0, I)), every
    pixel exactly +-alpha eps, each sign with probability 1/2."""
    model = linear_model(pixels=400, zero=True)
    x = torch.full((500, 1, 20, 20), 0.5, dtype=torch.float64)
    y = torch.zeros(500, dtype=torch.long)
    eps = torch.full((500,), 16.0, dtype=torch.float64)
    out = one_step_examples(method, model, x, y, eps, torch.Generator().manual_seed(0),
                            MethodOptions(alpha=0.25))
    d = out - x
    assert torch.allclose(d.abs(), torch.full_like(d, 0.25 * 16 / 255), rtol=0, atol=1e-15)
    # 200 000 fair signs: the share of + has std 0.0011; 0.005 is 4.5 std
    assert (d > 0).double().mean().item() == pytest.approx(0.5, abs=0.005)
    again = one_step_examples(method, model, x, y, eps, torch.Generator().manual_seed(0),
                              MethodOptions(alpha=0.25))
    other = one_step_examples(method, model, x, y, eps, torch.Generator().manual_seed(1),
                              MethodOptions(alpha=0.25))
    assert torch.equal(out, again) and not torch.equal(out, other)


@pytest.mark.parametrize("method", ["fgsm_rs", "pgd"])
def test_uniform_start_is_uniform_in_the_ball(method):
    """A zero-gradient model leaves the uniform start U(-eps, eps) per pixel.  200 000
    draws: the mean's std is eps / sqrt(3 n) = 0.0013 eps (bound 0.01 eps), the second
    moment's std is 0.0007 eps^2 against eps^2 / 3 (bound 2 %), and the KS distance to
    U(-eps, eps) stays below 1.95 / sqrt(n), its 0.1 % critical value.  The draws are
    seeded, so the test is deterministic; the bounds say a correct sampler passes."""
    model = linear_model(pixels=400, zero=True)
    x = torch.full((500, 1, 20, 20), 0.5, dtype=torch.float64)
    y = torch.zeros(500, dtype=torch.long)
    eps = torch.full((500,), 16.0, dtype=torch.float64)
    e = 16 / 255
    out = one_step_examples(method, model, x, y, eps, torch.Generator().manual_seed(0))
    d = out - x
    assert d.abs().max() <= e + 1e-12
    assert d.mean().item() == pytest.approx(0.0, abs=0.01 * e)
    assert (d ** 2).mean().item() == pytest.approx(e ** 2 / 3, rel=0.02)
    assert _ks_uniform(d, -e, e) < 1.95 / math.sqrt(d.numel())
    again = one_step_examples(method, model, x, y, eps, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_methods_draw_from_the_generator_given_not_the_global_one():
    model = linear_model()
    x, y = batch()
    eps = torch.full((6,), 16.0, dtype=torch.float64)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    for method in METHODS:
        one_step_examples(method, model, x, y, eps, torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("mode, method, distance, extra", [
    ("append", "pgd", "pivot_released", ["adversarial.steps=2"]),
    ("append", "pgd", "bidirectional", ["adversarial.steps=2", "adversarial.random_start=false"]),
    ("replace", "r_step_ll", None, []),
    ("append", "fgsm_rs", "pivot_detached", []),
])
def test_rank_shares_sum_to_the_single_process_loss(mode, method, distance, extra):
    """Under DDP a method that draws random numbers runs on its whole block on every
    rank (the single process's draws); PGD without a random start, only on its rows."""
    from cascade_adv.data import load_dataset
    from cascade_adv.models import build_model
    from cascade_adv.training.adversarial import AdversarialObjective
    from cascade_adv.training.loop import Sampler, model_config_for

    cfg = load_config(None, ["data.dataset=digits", "model.depth=8", "model.width=0.25",
                             "optim.batch_size=32", f"adversarial.mode={mode}",
                             "adversarial.k=16", f"adversarial.method={method}",
                             f"adversarial.distance={distance or 'null'}",
                             "adversarial.lam2=0.01", *extra])
    data = load_dataset("digits", "train")
    model_cfg = model_config_for(cfg, data)
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()

    def loss_and_grads(rank, world):
        objective = AdversarialObjective(cfg, data, model_cfg, torch.device("cpu"), rank, world)
        sampler = Sampler(data, cfg, torch.device("cpu"), objective.clean_per_batch)
        x, y = sampler.batch(0)
        loss, _, _ = objective(model, x, y, 0, sampler.generator(0, 3))
        model.zero_grad()
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    single, single_grad = loss_and_grads(0, 1)
    shares = [loss_and_grads(r, 2) for r in range(2)]
    assert (shares[0][0] + shares[1][0]) / 2 == pytest.approx(single.item(), abs=1e-6)
    assert torch.allclose((shares[0][1] + shares[1][1]) / 2, single_grad, rtol=0, atol=1e-6)


def test_the_configs_options_reach_the_objective():
    """PGD of one step of alpha = 1 from x is FGSM: with the config's options the
    training objective's loss equals step_fgsm's; with PGD's defaults it does not."""
    from cascade_adv.data import load_dataset
    from cascade_adv.models import build_model
    from cascade_adv.training.adversarial import AdversarialObjective
    from cascade_adv.training.loop import Sampler, model_config_for

    data = load_dataset("digits", "train")

    def loss(*over):
        cfg = load_config(None, ["data.dataset=digits", "model.depth=8", "model.width=0.25",
                                 "optim.batch_size=32", "adversarial.mode=append",
                                 "adversarial.k=16", "adversarial.distance=bidirectional",
                                 "adversarial.eps_sampler=fixed", *over])
        model_cfg = model_config_for(cfg, data)
        torch.manual_seed(0)
        model = build_model(model_cfg).eval()
        objective = AdversarialObjective(cfg, data, model_cfg, torch.device("cpu"))
        sampler = Sampler(data, cfg, torch.device("cpu"), objective.clean_per_batch)
        x, y = sampler.batch(0)
        return objective(model, x, y, 0, sampler.generator(0, 3))[0].item()

    fgsm = loss("adversarial.method=step_fgsm")
    one_step = ["adversarial.method=pgd", "adversarial.steps=1", "adversarial.alpha=1"]
    assert loss(*one_step, "adversarial.random_start=false") == pytest.approx(fgsm, abs=1e-6)
    assert loss(*one_step) != pytest.approx(fgsm, abs=1e-6)
    assert loss("adversarial.method=pgd", "adversarial.random_start=false") != \
        pytest.approx(fgsm, abs=1e-6)


# --- bad input: one line, exit 2, before any training ----------------------------------

PGD = ["adversarial.mode=append", "adversarial.k=16", "adversarial.method=pgd"]


@pytest.mark.parametrize("override, words", [
    ([*PGD, "adversarial.steps=0"], ["adversarial.steps", "1..1000"]),
    ([*PGD, "adversarial.steps=1001"], ["adversarial.steps", "1..1000"]),
    ([*PGD, "adversarial.alpha=0"], ["adversarial.alpha=0", "> 0"]),
    ([*PGD, "adversarial.alpha=-0.5"], ["adversarial.alpha=-0.5", "> 0"]),
    ([*PGD, "adversarial.alpha=.inf"], ["adversarial.alpha", "finite", "e.g. 0.5"]),
    ([*PGD, "adversarial.alpha=.nan"], ["adversarial.alpha", "finite", "e.g. 0.5"]),
    ([*PGD[:2], "adversarial.method=r_fgsm", "adversarial.alpha=1"],
     ["adversarial.alpha=1", "(0, 1)", "r_fgsm"]),
    ([*PGD[:2], "adversarial.method=r_step_ll", "adversarial.alpha=1.5"],
     ["adversarial.alpha=1.5", "(0, 1)", "r_step_ll"]),
    ([*PGD[:2], "adversarial.method=r_fgsm", "adversarial.random_start=false"],
     ["adversarial.random_start=false", "r_fgsm"]),
    ([*PGD[:2], "adversarial.method=r_step_ll", "adversarial.random_start=false"],
     ["adversarial.random_start=false", "r_step_ll"]),
    ([*PGD[:2], "adversarial.method=fgsm_rs", "adversarial.random_start=false"],
     ["adversarial.random_start=false", "fgsm_rs"]),
    ([*PGD[:2], "adversarial.method=step_ll", "adversarial.alpha=0.5"],
     ["adversarial.alpha applies to", "not step_ll"]),
    ([*PGD[:2], "adversarial.method=fgsm_rs", "adversarial.steps=3"],
     ["adversarial.steps applies to", "pgd"]),
    (["adversarial.random_start=true"], ["adversarial.random_start", "mode none"]),
    (["monitor.every=0"], ["monitor.every", "at least 1"]),
    (["monitor.images=64"], ["monitor.images", "monitor.every"]),
    (["monitor.every=5", "monitor.steps=0"], ["monitor.steps", "1..1000"]),
    (["monitor.every=5", "monitor.images=5000"], ["monitor.images=5000", "lower"]),
])
def test_bad_method_and_monitor_options_are_one_line_exit_2(tmp_path, override, words):
    code, _, err = run_cli(["train", "--config", CONFIG, "--out", "run", "--quiet", *TINY,
                            *override], tmp_path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "run").exists()  # refused before any training


# --- end to end: each method in every mode and source ---------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained network (static source) and a small saved iter_FGSM set (cascade)."""
    from cascade_adv.data import load_dataset
    from cascade_adv.evaluation import craft_adversarial_set, prepare_images

    root = tmp_path_factory.mktemp("methods")
    run = train(load_config(CONFIG, TINY), root / "source", progress=False)
    data = load_dataset("digits", "train").subset(40)
    saved = craft_adversarial_set(run.model, data, root / "saved", "iter_fgsm", [4, 8],
                                  prepare=lambda x: prepare_images(run.model, x),
                                  source_name="source", progress=False)
    return root, saved


def _sources(kind, method, root, saved):
    if kind == "static":
        return [(f"adversarial.sources=[{{kind: static, count: 8, method: {method}, "
                 f"paths: [{root / 'source'}]}}]")]
    if kind == "saved":
        return [(f"adversarial.sources=[{{kind: saved, count: 4, paths: [{saved}]}}, "
                 f"{{kind: current, count: 4, method: {method}}}]")]
    return [f"adversarial.method={method}"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode, distance, kind", [
    ("append", "pivot_released", "current"),
    ("replace", "null", "current"),
    ("append", "bidirectional", "static"),
    ("replace", "null", "saved"),
])
def test_tiny_training_runs_with_each_method(source, tmp_path, method, mode, distance, kind):
    root, saved = source
    steps = ["adversarial.steps=2"] if method == "pgd" else []
    cfg = load_config(CONFIG, [*TINY, f"adversarial.mode={mode}", "adversarial.k=8",
                               f"adversarial.distance={distance}", "adversarial.max_e=16",
                               "adversarial.eps_sampler=uniform", *steps,
                               *_sources(kind, method, root, saved)])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.iterations == 4 and math.isfinite(result.final_loss)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


# --- the catastrophic-overfitting monitor ------------------------------------------------


def _stub(monkeypatch, readings):
    """Replace the measurement with ``readings`` (iteration -> (pgd, clean))."""
    from cascade_adv.training.monitor import OverfitMonitor

    monkeypatch.setattr(OverfitMonitor, "measure", lambda self, model, it: readings[it])


def _metrics(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


MONITOR = ["monitor.every=2", "monitor.images=32", "monitor.steps=2", "optim.iterations=12",
           "checkpoint.every=2", "checkpoint.keep=10"]


def test_monitor_reports_a_planted_collapse_and_keeps_the_best_weights(tmp_path, monkeypatch,
                                                                       capsys):
    from cascade_adv.models import load_model

    _stub(monkeypatch, {2: (40, 90), 4: (50, 95), 6: (52, 96), 8: (10, 97), 10: (8, 97),
                        12: (30, 96)})
    train(load_config(CONFIG, [*TINY, *MONITOR]), tmp_path / "run", progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "overfitting" in ln]
    assert len(lines) == 1, lines  # once per collapse, not at every low reading
    assert "catastrophic overfitting at iteration 8" in lines[0]
    assert "52.0 % at iteration 6" in lines[0] and "best_pgd" in lines[0]
    rows = {r["iteration"]: r for r in _metrics(tmp_path / "run") if "monitor_pgd_acc" in r}
    assert sorted(rows) == [2, 4, 6, 8, 10, 12]
    assert [it for it, r in rows.items() if r.get("monitor_collapse")] == [8]
    assert rows[6]["monitor_pgd_acc"] == 52 and rows[6]["monitor_clean_acc"] == 96
    best = tmp_path / "run" / "best_pgd"
    assert json.loads((best / "monitor.json").read_text())["iteration"] == 6
    weights = load_model(best).state_dict()
    at_6 = load_model(tmp_path / "run" / "checkpoints" / "ckpt-0000006").state_dict()
    assert all(torch.equal(weights[k], at_6[k]) for k in at_6)
    # the report's line (experiments/report.py, "Catastrophic-overfitting monitor")
    assert describe_monitor(tmp_path / "run") == (
        "PGD at eps 16 (2 steps), 6 readings: best 52.0 % at iteration 6, last 30.0 % at "
        "iteration 12 (clean 96.0 %); collapse at iteration 8; the weights of iteration 6 "
        "are kept in best_pgd/")


def test_monitor_stays_quiet_on_a_healthy_run(tmp_path, monkeypatch, capsys):
    # PGD accuracy falls 40 points, but clean accuracy falls with it: not a collapse
    _stub(monkeypatch, {2: (40, 90), 4: (60, 95), 6: (20, 80), 8: (25, 85), 10: (61, 95),
                        12: (62, 96)})
    train(load_config(CONFIG, [*TINY, *MONITOR]), tmp_path / "run", progress=True)
    assert "overfitting" not in capsys.readouterr().err
    assert not any(r.get("monitor_collapse") for r in _metrics(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "best_pgd" / "monitor.json").read_text())[
        "iteration"] == 12
    assert describe_monitor(tmp_path / "run").endswith(
        "best 62.0 % at iteration 12, last 62.0 % at iteration 12 (clean 96.0 %); no collapse")


def test_a_run_without_the_monitor_has_no_monitor_line(tmp_path):
    train(load_config(CONFIG, [*TINY, "optim.iterations=2"]), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    assert describe_monitor(tmp_path / "run") == "" == describe_monitor(tmp_path / "none")


def test_a_resumed_run_keeps_the_monitors_best(tmp_path, monkeypatch, capsys):
    """The best PGD accuracy of the first session travels in the checkpoint: a fall
    below it after the resume is a collapse."""
    _stub(monkeypatch, {2: (50, 95), 4: (60, 95), 6: (55, 95), 8: (25, 96), 10: (20, 96),
                        12: (22, 96)})
    over = [*TINY, *MONITOR]
    train(load_config(CONFIG, [*over, "optim.iterations=6"]), tmp_path / "run", progress=False)
    train(load_config(CONFIG, over), tmp_path / "run", progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "overfitting" in ln]
    assert len(lines) == 1 and "at iteration 8" in lines[0], lines
    assert "60.0 % at iteration 4" in lines[0]


def test_monitor_does_not_change_the_training_trajectory(tmp_path):
    """The monitor's images, PGD draws and forwards leave the weights, BatchNorm
    statistics and the training generator's stream as a run without it has them."""
    over = [*TINY, "adversarial.mode=append", "adversarial.k=8", "adversarial.method=r_fgsm",
            "adversarial.distance=pivot_released", "optim.iterations=6"]
    plain = train(load_config(CONFIG, over), tmp_path / "plain", progress=False)
    watched = train(load_config(CONFIG, [*over, "monitor.every=3", "monitor.images=40",
                                         "monitor.steps=2"]), tmp_path / "watched",
                    progress=False)
    a, b = plain.model.state_dict(), watched.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a metrics line at every log point (2, 4, 6) and every measurement (3, 6)
    rows = {r["iteration"]: r for r in _metrics(tmp_path / "watched")}
    assert sorted(rows) == [2, 3, 4, 6]
    assert [it for it, r in rows.items() if "monitor_pgd_acc" in r] == [3, 6]
    assert all(0 <= r["monitor_pgd_acc"] <= 100 for r in rows.values() if "monitor_pgd_acc" in r)
    assert {r["iteration"]: r["loss"] for r in _metrics(tmp_path / "plain")} == {
        it: r["loss"] for it, r in rows.items() if it != 3}


def test_monitor_measures_in_inference_mode_on_fixed_images(tmp_path):
    """BatchNorm statistics untouched, the model's mode restored, the same images from the
    seed, and the same measurement twice (its PGD draws come from the seed)."""
    from cascade_adv.data import load_dataset
    from cascade_adv.models import build_model
    from cascade_adv.training.loop import Sampler, model_config_for
    from cascade_adv.training.monitor import OverfitMonitor

    cfg = load_config(CONFIG, [*TINY, "monitor.every=1", "monitor.images=48", "monitor.steps=3"])
    data = load_dataset("digits", "train")
    model_cfg = model_config_for(cfg, data)
    sampler = Sampler(data, cfg, torch.device("cpu"))

    def monitor():
        return OverfitMonitor(cfg, data, model_cfg, torch.device("cpu"),
                              sampler.generator(0, 5), lambda it: sampler.generator(it, 6))

    first, second = monitor(), monitor()
    assert torch.equal(first.x, second.x) and first.x.shape[0] == 48
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pgd, clean = first.measure(model, 5)
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert (pgd, clean) == second.measure(model, 5)
    assert 0 <= pgd <= 100 and 0 <= clean <= 100


# --- cost ----------------------------------------------------------------------------


def test_pgd_training_cost_scales_with_its_steps(monkeypatch):
    from cascade_adv.experiments import cost
    from cascade_adv.experiments.reproduce import StepRecord, default_configs
    from cascade_adv.experiments.steps import Runtime, Step

    monkeypatch.setattr(cost, "calibrate", lambda key, device, quick=False: 1e-3)

    def estimate(config, *overrides):
        step = Step(f"train/{config}{overrides}", "train",
                    {"config": config, "overrides": list(overrides)})
        rec = StepRecord(step, "key", None)
        cost.estimate([rec], Runtime(str(default_configs()), device="cpu"))
        return rec.estimate

    pgd = {s: estimate("beyond/mnist_pgd.yaml", f"adversarial.steps={s}") for s in (5, 10, 20)}
    kurakin = estimate("n18/table1_mnist_kurakin.yaml")
    # 8000 iterations (no pre-training step here): 1 pass + k / m of a pass per
    # gradient step of the k = 64 of m = 128 rows
    left = 8000 * 1e-3
    assert kurakin == pytest.approx(left * (1 + 0.5))
    for s, value in pgd.items():
        assert value == pytest.approx(left * (1 + 0.5 * s))
    assert pgd[20] - pgd[10] == pytest.approx(2 * (pgd[10] - pgd[5]))
    # one gradient pass, as step_ll: R+Step-LL and FGSM with a random start
    assert estimate("beyond/mnist_kurakin_r_step_ll.yaml") == pytest.approx(kurakin)
    assert estimate("beyond/mnist_kurakin_fgsm_rs.yaml", "monitor.every=null") == \
        pytest.approx(kurakin)
    # the monitor: 256 images, 10 PGD steps and two forwards, every 100 iterations
    watched = estimate("n18/table1_mnist_kurakin.yaml", "monitor.every=100")
    assert watched == pytest.approx(left * (1.5 + 2 * (10 + 2 / 3) / 100))
