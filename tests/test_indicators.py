"""The indicators of attack failure (Pintor et al. 2022): each one fires on a model or an
attack built to trigger it and stays quiet on an honest linear network; the per-step
trace leaves the attacks unchanged; bad input; the ``analyze indicators`` command."""

from __future__ import annotations

import math
import sqlite3

import pytest
import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.attacks import apgd, core
from cascade_adv.errors import AttackError, InvalidArgument, UnknownAttackError
from cascade_adv.evaluation import IndicatorResult, attack_failure_indicators
from cascade_adv.evaluation.indicators import (
    INDICATORS,
    SOURCE,
    _paths,
    _Recorder,
    _traced_spec,
    check_attacks,
    incomplete_optimisation,
    non_converging,
    silent_success,
)

ALL = ("iter_fgsm", "iter_ll", ("apgd_ce", {"steps": 12}),
       ("apgd_dlr", {"steps": 12}), ("apgd_t", {"steps": 12, "targets": 2}))


def linear(dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0
           ) -> nn.Module:
    """An honest linear network on 1x4x4 images (weights times ``scale``)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net.eval().requires_grad_(False)


def images(net: nn.Module, n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and, as labels, the network's own predictions (all correct clean)."""
    dtype = next(net.parameters()).dtype
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x, net(x).argmax(dim=1)


def shares(result: IndicatorResult) -> dict[tuple[str, float, str], float | None]:
    return {(a, e, name): result.share(a, e, name)
            for a in result.attacks for e in result.eps for name in INDICATORS}


# --- the honest network ------------------------------------------------------------------------


def test_an_honest_linear_network_fires_no_indicator():
    """Every attack, a small and a large eps, in float64, with a surrogate that is the same
    classifier with doubled weights (same predictions everywhere): every indicator runs
    and fires on no image; one row per (attack, eps, indicator)."""
    net = linear(torch.float64)
    x, y = images(net)
    result = attack_failure_indicators(net, x, y, [8, 64], attacks=ALL,
                                       surrogate=linear(torch.float64, scale=2.0),
                                       model_name="lin", dataset="toy")
    assert result.n == 16 and result.not_run == {}
    assert set(shares(result).values()) == {0.0}
    rows = result.table().rows
    assert len(rows) == 5 * 2 * len(INDICATORS)
    assert {r["source"] for r in rows} == {SOURCE} and {r["n"] for r in rows} == {16}
    assert {r["metric"] for r in rows} == set(INDICATORS)
    assert {r["attack"] for r in rows} == {"iter_fgsm", "iter_ll", "apgd_ce:steps=12",
                                           "apgd_dlr:steps=12", "apgd_t:steps=12:targets=2"}
    hits = result.fired[("iter_fgsm", 8.0, "silent_success")]
    assert hits.dtype == torch.bool and hits.shape == (16,) and hits.device.type == "cpu"


def test_images_misclassified_clean_are_not_measured():
    net = linear()
    x, y = images(net, n=8)
    y[[1, 5]] = (y[[1, 5]] + 1) % 10
    result = attack_failure_indicators(net, x, y, 16, attacks=["iter_fgsm"])
    assert result.images.tolist() == [0, 2, 3, 4, 6, 7] and result.n == 6
    assert {r["n"] for r in result.table()} == {6}
    none = attack_failure_indicators(net, x, (y + 1) % 10, 16, attacks=["iter_fgsm"])
    assert none.n == 0 and none.fired == {} and len(none.table()) == 0
    assert set(none.not_run) == set(INDICATORS)
    assert all("none of the 8 images" in why for why in none.not_run.values())


def test_no_surrogate_reports_transfer_failure_as_not_run():
    net = linear()
    x, y = images(net, n=4)
    result = attack_failure_indicators(net, x, y, 16, attacks=["iter_fgsm"])
    assert list(result.not_run) == ["transfer_failure"]
    assert "no surrogate" in result.not_run["transfer_failure"]
    assert result.share("iter_fgsm", 16, "transfer_failure") is None
    assert "transfer_failure" not in {r["metric"] for r in result.table()}
    text = result.to_markdown()
    assert "| transfer_failure | not run |" in text and "transfer_failure not run: no" in text


# --- the loss-path indicators on hand-made paths -----------------------------------------------


def test_the_loss_path_indicators_on_hand_made_paths():
    """Thresholds at work: incomplete optimisation (last 10 % of the steps, at least one,
    gain above 0.05 of the range), non-converging (last 20 %, at least two, moves against
    the net direction above 0.1 of the range), flat paths, silent success."""
    rising = torch.arange(11.0)[None]                      # 10 steps, still rising
    done = torch.tensor([[0.0, 5, 10, 10, 10, 10, 10, 10, 10, 10, 10]])
    assert incomplete_optimisation(rising).tolist() == [True]
    assert incomplete_optimisation(done).tolist() == [False]
    near = torch.tensor([[0.0, 0.96, 1.0], [0.0, 0.94, 1.0]])  # 2 steps: the last one
    assert incomplete_optimisation(near).tolist() == [False, True]
    flat = torch.tensor([[5.0, 5, 5, 5], [1.0, 1 + 1e-9, 1, 1 + 1e-9]], dtype=torch.float64)
    assert incomplete_optimisation(flat).tolist() == [False, False]
    assert non_converging(flat).tolist() == [False, False]
    swing = torch.tensor([[0.0, 1, 0, 1, 0], [0.0, 1, 2, 3, 4], [0.0, 10, 9.5, 10, 10],
                          [0.0, 10, 10, 9, 10], [0.0, 10, 10, 8.9, 10]])
    # against the trend over the last 2 steps: 1 (range 1), 0, 0, 1 (= 0.1 * 10), 1.1
    assert non_converging(swing).tolist() == [True, False, False, False, True]
    assert incomplete_optimisation(torch.tensor([[0.0]])).tolist() == [False]  # no step
    reached = torch.tensor([[False, True, False], [False, False, False], [True, True, True]])
    assert silent_success(reached, torch.tensor([False, False, True])).tolist() == [
        True, False, False]


# --- models built to trigger one indicator each ------------------------------------------------


class Swing(nn.Module):
    """Two classes on a 1-pixel image: logits ``(0, A sin(w x + phi) + b0)``, the phase
    set so that iter_fgsm with ``alpha`` pixels from ``x0`` goes forth and back between
    ``x0`` (``sin = -0.59``) and ``x0 + alpha / 255`` (``sin = 0.81``) forever: with
    ``b0 = 0`` the image is misclassified at every odd iterate, with ``b0 = -8`` never."""

    def __init__(self, x0: float = 0.5, alpha: float = 1.0, amplitude: float = 4.0,
                 b0: float = 0.0) -> None:
        super().__init__()
        self.w = 0.9 * math.pi * 255 / alpha
        self.phi = -0.2 * math.pi - self.w * x0
        self.amplitude, self.b0 = amplitude, b0

    def forward(self, x):
        f = self.amplitude * torch.sin(self.w * x.flatten(1)[:, :1] + self.phi) + self.b0
        return torch.cat([torch.zeros_like(f), f], dim=1)


def swing_images(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 1, 1), 0.5, dtype=torch.float64), torch.zeros(n, dtype=torch.int64)


@pytest.mark.parametrize("steps,silent", [(4, True), (3, False)])
def test_silent_success_fires_when_the_prediction_flips_back(steps, silent):
    """iter_fgsm on :class:`Swing`: iterates x0, x0 + d, x0, x0 + d, ... (every odd one
    misclassified).  After 4 steps it returns x0 (correct): a silent success; after 3 it
    returns x0 + d (misclassified): the attack succeeded, nothing to flag."""
    x, y = swing_images()
    result = attack_failure_indicators(Swing(), x, y, 8, attacks=[("iter_fgsm",
                                                                   {"steps": steps})])
    assert result.fired[("iter_fgsm:steps=" + str(steps), 8.0, "silent_success")].tolist() \
        == [silent] * 4


def test_non_converging_fires_on_a_loss_that_swings_and_never_settles():
    """:class:`Swing` with ``b0 = -8``: the iterates swing as above, always classified
    correctly; the loss alternates between two values forever: non-converging on every
    image, while the best loss (reached at step 1) no longer rises (not incomplete) and
    nothing was ever adversarial (no silent success)."""
    x, y = swing_images()
    result = attack_failure_indicators(Swing(b0=-8.0), x, y, 8,
                                       attacks=[("iter_fgsm", {"steps": 10})])
    cell = ("iter_fgsm:steps=10", 8.0)
    assert result.share(*cell, "non_converging") == 100.0
    assert result.share(*cell, "incomplete_optimisation") == 0.0
    assert result.share(*cell, "silent_success") == 0.0


def wide_margin() -> nn.Module:
    """A float64 linear network whose class 0 leads by about 8 logits (no attack within
    eps 64 moves a logit by more than 2) and whose loss rises at every step towards the
    corner of the ball."""
    net = linear(torch.float64)
    with torch.no_grad():
        net[1].bias.zero_()
        net[1].bias[0] = 8.0
    return net


def test_incomplete_optimisation_fires_when_the_steps_run_out():
    """On :func:`wide_margin`, 5 steps of 0.5 pixels at eps 64 end far inside the ball
    with the loss still rising (the last step gains about 1/5 of the range): incomplete
    everywhere; 10 steps of 2 pixels at eps 8 reach the corner by step 4 and stay."""
    net = wide_margin()
    x, _ = images(net)
    y = torch.zeros(16, dtype=torch.int64)
    assert bool((net(x).argmax(1) == 0).all())
    short = ("iter_fgsm", {"steps": 5, "alpha": 0.5})
    long = ("iter_fgsm", {"steps": 10, "alpha": 2.0})
    result = attack_failure_indicators(net, x, y, 64, attacks=[short])
    assert result.share("iter_fgsm:alpha=0.5:steps=5", 64, "incomplete_optimisation") == 100.0
    result = attack_failure_indicators(net, x, y, 8, attacks=[long])
    assert result.share("iter_fgsm:alpha=2.0:steps=10", 8, "incomplete_optimisation") == 0.0


class Lattice(nn.Module):
    """The honest network behind ``round(4 x) / 4``: a zero input gradient everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class NaNGradient(Lattice):
    """Finite logits, NaN input gradient: ``0 * sqrt(x - x)`` adds 0 forward and
    ``0 * inf`` backward."""

    def forward(self, x):
        return self.net(x) + 0 * torch.sqrt(x - x).flatten(1).sum(dim=1, keepdim=True)


class Detached(Lattice):
    """No graph from the input to the logits at all (Pintor et al.'s interrupted graph)."""

    def forward(self, x):
        return self.net(x.detach())


@pytest.mark.parametrize("wrap", [Lattice, NaNGradient])
def test_unavailable_gradients_fires_on_zero_and_nan_gradients(wrap):
    net = wrap(linear())
    x = torch.round(images(net.net)[0] * 4) / 4  # on the lattice: both models agree
    y = net(x).argmax(dim=1)
    result = attack_failure_indicators(net, x, y, 16, attacks=["iter_fgsm", "apgd_ce"])
    assert result.n == 16
    for attack in ("iter_fgsm", "apgd_ce"):
        assert result.share(attack, 16, "unavailable_gradients") == 100.0


def test_an_interrupted_graph_fires_unavailable_gradients_and_skips_the_attacks():
    """A detached model: the attacks cannot run on it (their indicators are not run, with
    the reason), unavailable_gradients fires everywhere, unstable_predictions still runs,
    and transfer_failure runs from a differentiable surrogate."""
    x, y = images(linear())
    result = attack_failure_indicators(Detached(linear()), x, y, 16, attacks=["iter_fgsm"],
                                       surrogate=linear(scale=2.0))
    assert set(result.not_run) == {"silent_success", "incomplete_optimisation",
                                   "non_converging"}
    assert all("interrupted graph" in why for why in result.not_run.values())
    assert result.share("iter_fgsm", 16, "unavailable_gradients") == 100.0
    assert result.share("iter_fgsm", 16, "unstable_predictions") == 0.0
    assert result.share("iter_fgsm", 16, "transfer_failure") == 0.0


class Jitter(Lattice):
    """The honest network plus ``sin(1e4 x)`` high-frequency terms: noise of 1 % of eps
    (0.06 pixel at eps 16, 6 radians of phase) scrambles them."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.mix = torch.randn(16, 10, generator=torch.Generator().manual_seed(3))

    def forward(self, x):
        return self.net(x) + torch.sin(1e4 * x.flatten(1)) @ self.mix


def test_unstable_predictions_fires_on_high_frequency_logits():
    net = Jitter(linear())
    x, y = images(net)
    result = attack_failure_indicators(net, x, y, 16, attacks=["iter_fgsm"])
    assert result.share("iter_fgsm", 16, "unstable_predictions") == 100.0
    honest = attack_failure_indicators(net.net, *images(net.net), 16, attacks=["iter_fgsm"])
    assert honest.share("iter_fgsm", 16, "unstable_predictions") == 0.0


def test_transfer_failure_fires_for_a_sign_flipped_surrogate():
    """The surrogate's weights are the model's negated: raising its loss lowers the
    model's.  The indicator fires exactly on the images whose iter_fgsm point (crafted on
    the surrogate) the surrogate misclassifies and the model does not."""
    net = linear()
    flipped = linear(scale=-1.0)
    x, y = images(net)
    result = attack_failure_indicators(net, x, y, 32, attacks=["iter_fgsm"], surrogate=flipped)
    x_adv = attacks.run("iter_fgsm", flipped, x, y, 32)
    expected = (flipped(x_adv).argmax(1) != y) & (net(x_adv).argmax(1) == y)
    fired = result.fired[("iter_fgsm", 32.0, "transfer_failure")]
    assert torch.equal(fired, expected) and int(fired.sum()) == 16


# --- the trace ---------------------------------------------------------------------------------


def test_the_trace_sees_every_pass_and_changes_no_attack():
    """iterate with a per-example eps (5 and 10 steps): the trace gets the logits of each
    gradient pass, all rows for steps 0-4, then only row 1; APGD: each run's start and
    iterates with its loss and its rows; the results equal the untraced attacks."""
    net = linear()
    x, y = images(net, n=2)
    calls = []

    def trace(step, logits, loss=None, rows=None):
        calls.append((step, logits.shape[0], loss, None if rows is None else rows.tolist()))

    eps = torch.tensor([4.0, 8.0], dtype=torch.float64)
    plain = core.iterate(net, x, y, eps, core.loss_true, core.true_label)
    traced = core.iterate(net, x, y, eps, core.loss_true, core.true_label, trace=trace)
    assert torch.equal(plain, traced)
    assert [c[0] for c in calls] == list(range(10))
    assert [c[3] for c in calls] == [None] * 5 + [[1]] * 5 and calls[0][2] is None
    calls.clear()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain = apgd.apgd(net, x, y, 2, "ce", steps=3, restarts=2, generator=g1)
    traced = apgd.apgd(net, x, y, 2, "ce", steps=3, restarts=2, generator=g2, trace=trace)
    assert torch.equal(plain, traced)
    assert [c[0] for c in calls] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(c[2] is not None and c[2].shape == (2,) and c[3] == [0, 1] for c in calls)


@pytest.mark.parametrize("second_best,expected", [(3.0, [0.0, 3.0, 3.0]),
                                                   (0.8, [0.0, 1.0, 0.5])])
def test_the_path_is_that_of_the_run_whose_point_was_returned(second_best, expected):
    """A fake trace of two APGD runs over two images: image 0 is misclassified at the
    last iterate of run 0 (so run 1 attacks only image 1); image 1 keeps the run of the
    higher best loss, as :class:`~cascade_adv.attacks.core.WorstCase` does."""
    y = torch.tensor([0, 0])
    rec = _Recorder("ce", y, None)
    right, wrong = torch.tensor([[1.0, 0.0]] * 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for step, loss, logits in ((0, [0.0, 0.0], right), (1, [1.0, 1.0], right),
                               (2, [2.0, 0.5], wrong)):
        rec(step, logits, torch.tensor(loss))
    for step, loss in enumerate([0.0, second_best, second_best]):
        rec(step, right[:1], torch.tensor([loss]), rows=torch.tensor([1]))
    paths, anywhere = _paths(rec, torch.zeros(2), torch.tensor([True, False]),
                             append_final=False)
    assert paths.tolist() == [[0.0, 1.0, 2.0], expected]
    assert anywhere.tolist() == [True, False]


@pytest.mark.parametrize("name,options", [("iter_fgsm", {}), ("iter_ll", {"steps": 4}),
                                          ("apgd_dlr", {"steps": 5}),
                                          ("apgd_t", {"steps": 5, "targets": 2})])
def test_the_traced_attacks_are_the_registered_ones(name, options):
    net = linear()
    x, y = images(net, n=4)
    registered = attacks.run(name, net, x, y, 8, generator=torch.Generator().manual_seed(0),
                             **options)
    traced = _traced_spec(name, lambda *a, **k: None).fn(
        net, x, y, 8, generator=torch.Generator().manual_seed(0), **options)
    assert torch.equal(registered, traced)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,words", [
    ({"attacks": ["nope"]}, UnknownAttackError, ["nope", "iter_fgsm"]),
    ({"attacks": ["pgd"]}, InvalidArgument, ["pgd", "no per-step trace"]),
    ({"attacks": []}, InvalidArgument, ["no attack"]),
    ({"attacks": ["iter_fgsm", "iter_fgsm"]}, InvalidArgument, ["twice"]),
    ({"attacks": ["apgd_ce:steps=-1"]}, AttackError, ["steps"]),
    ({"eps": 0}, AttackError, ["(0, 255]"]),
    ({"noise_samples": 0}, InvalidArgument, ["noise_samples"]),
    ({"noise_radius": 0.0}, InvalidArgument, ["noise_radius"]),
    ({"noise_radius": float("nan")}, InvalidArgument, ["noise_radius"]),
    ({"batch_size": True}, InvalidArgument, ["batch_size"]),
    ({"surrogate": "twin"}, InvalidArgument, ["surrogate", "Module"]),
    ({"surrogate": "self"}, InvalidArgument, ["itself"]),
    ({"attacks": ["apgd_dlr"], "net": "swing"}, AttackError, ["at least 3 classes"]),
])
def test_bad_arguments_raise_one_line_value_errors(kwargs, error, words):
    net = linear()
    x, y = images(net, n=4)
    if kwargs.pop("net", None) == "swing":
        net, (x, y) = Swing(), swing_images()
    kwargs = {"eps": 8, **kwargs}
    if kwargs.get("surrogate") == "self":
        kwargs["surrogate"] = net
    with pytest.raises(error) as info:
        attack_failure_indicators(net, x, y, **kwargs)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert all(w in str(info.value) for w in words), str(info.value)
    if error is UnknownAttackError:
        assert isinstance(info.value, KeyError)


def test_check_attacks_reads_names_options_and_lists():
    got = check_attacks("iter_fgsm,apgd_t:targets=3:steps=5")
    assert [a.label for a in got] == ["iter_fgsm", "apgd_t:steps=5:targets=3"]
    assert [a.label for a in check_attacks([("apgd_ce", {"steps": 7})])] == ["apgd_ce:steps=7"]
    with pytest.raises(AttackError, match="targets"):
        check_attacks(["apgd_t:targets=12"], num_classes=10)


# --- the command -------------------------------------------------------------------------------


def test_analyze_indicators_prints_stores_and_refuses_bad_input(tmp_path):
    from _cli import run_cli

    from cascade_adv.models import build_model, save_model

    torch.manual_seed(0)
    for name in ("a", "b"):
        save_model(build_model({"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 8,
                                "num_classes": 10, "dataset": "digits"}),
                   tmp_path / f"{name}.safetensors")
    args = ["analyze", "indicators", "--model", "A=a.safetensors", "--eps", "8",
            "--attack", "iter_fgsm:steps=3", "--attack", "apgd_ce:steps=4", "--images", "32",
            "--twin", "b.safetensors", "--results", "r.db", "--quiet"]
    code, out, err = run_cli(args, tmp_path)
    assert code == 0, err
    assert "| indicator | iter_fgsm:steps=3 8 | apgd_ce:steps=4 8 |" in out
    assert "| silent_success |" in out and "| transfer_failure |" in out
    with sqlite3.connect(tmp_path / "r.db") as con:
        metrics = {r[0] for r in con.execute(
            "SELECT DISTINCT metric FROM results WHERE source = 'attack_failure'")}
        rows = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert metrics == set(INDICATORS) and rows == 2 * len(INDICATORS)
    for bad, words in ((["--attack", "pgd"], ["--attack", "pgd"]),
                       (["--twin", "a.safetensors"], ["itself"])):
        code, out, err = run_cli([*args[:4], "--results", "s.db", *bad], tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
        assert "Traceback" not in err and all(w in err for w in words), err
    assert not (tmp_path / "s.db").exists()
