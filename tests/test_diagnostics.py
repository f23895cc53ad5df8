"""The gradient-masking diagnostics: each one flagged by a model built to trigger it, all
of them quiet on an honest small network, wired into the audit, and their bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.data import load_dataset, to_float
from cascade_adv.errors import InvalidArgument
from cascade_adv.evaluation import (
    AuditRecord,
    AuditRun,
    Diagnostic,
    audit,
    diagnose,
    format_diagnostics,
)
from cascade_adv.evaluation.diagnostics import (
    CHECKS,
    FLAGGED,
    HOLDS,
    NOT_RUN,
    _Measured,
    _sanity_checks,
)
from cascade_adv.results.tables import CLEAN


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval().requires_grad_(False)


def lattice(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the grid of multiples of 1/4 (the clean images of the lattice models)."""
    return torch.round(x * 4) / 4


@pytest.fixture(scope="module")
def digits():
    """A linear network trained on the 8x8 digits, a second one (the undefended twin),
    and 64 test images snapped to the 1/4 grid with their labels."""
    torch.manual_seed(0)
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    x, y = lattice(to_float(train_set.images)), train_set.labels
    net = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x, y)
    twin = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                 x, y)
    return net, twin, lattice(to_float(test_set.images[:64])), test_set.labels[:64]


def verdicts(checks: list[Diagnostic]) -> dict[str, str]:
    assert [c.name for c in checks] == list(CHECKS)
    return {c.name: c.verdict for c in checks}


def flagged(checks: list[Diagnostic]) -> set[str]:
    return {c.name for c in checks if c.flagged}


# --- models built to trigger one diagnostic each -------------------------------------------


class Wrap(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


class Probabilities(Wrap):
    def forward(self, x):
        return self.net(x).softmax(dim=1)


class Randomised(Wrap):
    """Noise on the logits at every call (from its own generator: a reproducible test of
    a non-deterministic forward pass)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        out = self.net(x)
        return out + 3.0 * torch.randn(out.shape, generator=self.g)


class Quantised(Wrap):
    """Input quantisation round(4x) / 4: an exactly zero input gradient everywhere."""

    def forward(self, x):
        return self.net(lattice(x))


class Saturated(Wrap):
    """A huge logit scale: the softmax saturates and the cross-entropy's gradient
    underflows to exactly 0."""

    def forward(self, x):
        return 1e4 * self.net(x)


class Curved(Wrap):
    """A small high-frequency ripple on the logits: the gradient changes direction within
    a pixel step (Tramer et al.'s curved loss surface)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.register_buffer("r", torch.randn(64, 10, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return self.net(x) + 0.1 * torch.sin(2000 * x.flatten(1)) @ self.r


def on_lattice(x: torch.Tensor) -> torch.Tensor:
    return (x * 4 - torch.round(x * 4)).abs().flatten(1).amax(dim=1) < 1e-5


class _ReverseOffLattice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        keep = on_lattice(x).view(-1, *[1] * (x.dim() - 1))
        return torch.where(keep, grad, -grad)


class Reversed(Wrap):
    """The input gradient is true at the clean images and reversed everywhere else: one
    step follows it, an iterative attack walks back (an obfuscated gradient)."""

    def forward(self, x):
        return self.net(_ReverseOffLattice.apply(x))


class Snapping(Wrap):
    """The network itself within 10 pixel units of the clean image, its clean prediction
    (through input quantisation, zero gradient) farther out: attacks work at small eps
    only."""

    def forward(self, x):
        far = (x - lattice(x)).abs().flatten(1).amax(dim=1) > 10 / 255
        return torch.where(far.view(-1, 1), self.net(lattice(x)), self.net(x))


class Leaky(Wrap):
    """Wrong on the clean images (its classes shifted by one), right on any perturbed one."""

    def forward(self, x):
        out = self.net(x)
        return torch.where(on_lattice(x).view(-1, 1), out.roll(1, dims=1), out)


# --- the honest network: every diagnostic quiet ---------------------------------------------


def test_an_honest_network_passes_every_diagnostic(digits):
    net, twin, x, y = digits
    result = audit(net, x, y, [8, 16], version=[("pgd", {"steps": 20}), "random_sign"],
                   diagnostics={"twin": twin, "twin_name": "undefended"})
    assert verdicts(result.checks) == dict.fromkeys(CHECKS, HOLDS), format_diagnostics(
        result.checks)
    by_name = {c.name: c for c in result.checks}
    assert by_name["chance_at_large_eps"].numbers["iter_fgsm % at eps 255"] == 0.0
    assert by_name["one_step_aligned"].numbers["mean cosine at eps 8"] > 0.9
    assert by_name["deterministic"].measured_on == "64 of 64 images"


def test_without_audit_or_twin_the_checks_that_need_them_are_not_run(digits):
    net, _, x, y = digits
    checks = diagnose(net, x, y, 16, sample=32)
    assert {c.name for c in checks if c.verdict == NOT_RUN} == {
        "gradient_free_no_stronger", "more_iterations_no_gain", "transfer_no_stronger"}
    assert all(c.verdict == HOLDS for c in checks if c.verdict != NOT_RUN)
    assert checks[0].measured_on == "32 of 64 images"


# --- each diagnostic triggered -------------------------------------------------------------


def test_probabilities_instead_of_logits_are_flagged(digits):
    net, _, x, y = digits
    checks = diagnose(Probabilities(net), x, y, 16)
    assert verdicts(checks)["logits"] == FLAGGED
    logits = next(c for c in checks if c.name == "logits")
    assert logits.numbers["% of rows that are distributions"] == 100.0


def test_a_randomised_model_is_flagged_not_crashed_on(digits):
    net, _, x, y = digits
    checks = diagnose(Randomised(net), x, y, 16)
    det = checks[0]
    assert det.name == "deterministic" and det.flagged
    assert det.numbers["max relative logit change"] > 1e-4


def test_a_randomised_model_audit_resumes_and_reports_its_check(digits, tmp_path):
    """The audit's resume key does not depend on the model's outputs: an interrupted
    audit of a randomised model resumes (batch 0 is not attacked again) and ends with its
    diagnostics, non-determinism flagged."""
    net, _, x, y = digits
    model = Randomised(net)
    calls: list[int] = []

    def flaky(crash):
        def fn(model, x, y, eps, *, generator=None):
            calls.append(len(x))
            if crash and len(calls) == 2:
                raise KeyboardInterrupt
            return x

        return AttackSpec("flaky", fn, "iterative", "identity that can crash")

    kwargs = {"run": AuditRun(batch_size=32), "record": AuditRecord(store=tmp_path / "r.db"),
              "diagnostics": {"sample": 32}}
    with pytest.raises(KeyboardInterrupt):
        audit(model, x, y, [16], version=[flaky(True)], **kwargs)
    calls.clear()
    result = audit(model, x, y, [16], version=[flaky(False)], **kwargs)
    assert calls == [len(x) // 2 - int((~result.clean_correct[32:]).sum())]  # batch 1 only
    assert verdicts(result.checks)["deterministic"] == FLAGGED
    assert not list(tmp_path.glob("r.db.audit-*.json"))


@pytest.mark.parametrize("wrapper", [Quantised, Saturated], ids=["quantised", "saturated"])
def test_exactly_zero_gradients_are_flagged(digits, wrapper):
    net, _, x, y = digits
    checks = diagnose(wrapper(net), x, y, 16)
    zero = next(c for c in checks if c.name == "nonzero_gradients")
    assert zero.flagged and zero.numbers["% of images with zero gradient"] > 50


def test_input_quantisation_does_not_reach_chance_at_large_eps(digits):
    net, _, x, y = digits
    checks = diagnose(Quantised(net), x, y, 16)
    v = verdicts(checks)
    assert v["chance_at_large_eps"] == FLAGGED
    assert v["one_step_aligned"] == NOT_RUN  # nothing moves: no direction to compare


def test_noise_and_gradient_free_attacks_stronger_than_gradients_are_flagged(digits):
    """Under input quantisation the gradient attacks do not move the images, while a
    random sign of 64 pixel units moves them across the quantisation steps."""
    net, _, x, y = digits
    model = Quantised(net)
    v = verdicts(diagnose(model, x, y, 64))
    assert v["noise_no_stronger"] == FLAGGED
    result = audit(model, x, y, [64], version=["iter_fgsm", "random_sign"], diagnostics=True)
    assert verdicts(result.checks)["gradient_free_no_stronger"] == FLAGGED
    free = next(c for c in result.checks if c.name == "gradient_free_no_stronger")
    assert free.numbers["random_sign points at eps 64"] > 0.2


def test_a_transfer_stronger_than_white_box_is_flagged(digits):
    net, twin, x, y = digits
    checks = diagnose(Quantised(net), x, y, 64, twin=twin)
    assert verdicts(checks)["transfer_no_stronger"] == FLAGGED


def test_an_unconverged_audit_is_flagged_by_more_iterations(digits):
    """A two-step PGD audit (2 pixel units a step, to a ball of 16): twice the steps and
    a second restart flip more images."""
    net, _, x, y = digits
    weak = audit(net, x, y, [16], version=[("pgd", {"steps": 2, "alpha": 2.0})],
                 diagnostics=True)
    more = next(c for c in weak.checks if c.name == "more_iterations_no_gain")
    assert more.flagged and more.numbers["steps"] == 4 and more.numbers["restarts"] == 2


def test_an_obfuscated_gradient_makes_the_iterative_attack_weaker_than_one_step(digits):
    net, _, x, y = digits
    v = verdicts(diagnose(Reversed(net), x, y, [8, 16], fuse=False))
    assert v["iterative_beats_one_step"] == FLAGGED and v["chance_at_large_eps"] == FLAGGED


def test_accuracy_rising_with_eps_is_flagged(digits):
    net, _, x, y = digits
    v = verdicts(diagnose(Snapping(net), x, y, [8, 32], fuse=False))
    assert v["accuracy_falls_with_eps"] == FLAGGED


def test_adversarial_accuracy_above_clean_is_flagged(digits):
    net, _, x, y = digits
    v = verdicts(diagnose(Leaky(net), x, y, [8], fuse=False))
    assert v["adversarial_not_above_clean"] == FLAGGED


def test_a_gain_over_clean_within_chance_is_not_label_leaking():
    """256 images, 200 correct clean.  Noise that fixes 6 and breaks 3 stands 1.2 points
    above clean, past the 1-point tolerance, but the sign test gives p = 130/512: it
    holds.  Noise that fixes 12 and breaks none (p = 1/4096) is flagged."""
    clean = torch.arange(256) < 200

    def leak_check(gained: int, lost: int) -> Diagnostic:
        noisy = clean.clone()
        noisy[200:200 + gained] = True
        noisy[:lost] = False
        m = _Measured()
        m.correct.update({(CLEAN, 0.0): clean, ("random_sign", 8.0): noisy})
        setup = SimpleNamespace(idx=torch.arange(256), tolerance=1.0, on="256 of 256 images")
        return next(c for c in _sanity_checks(setup, m, None)
                    if c.name == "adversarial_not_above_clean")

    chance = leak_check(6, 3)
    assert chance.verdict == HOLDS
    assert chance.numbers == {"cells flagged": 0, "cells above clean within chance": 1}
    leak = leak_check(12, 0)
    assert leak.flagged and leak.numbers["cells flagged"] == 1


def test_a_curved_loss_misaligns_one_step_and_multi_step(digits):
    net, _, x, y = digits
    checks = diagnose(Curved(net), x, y, [16])
    aligned = next(c for c in checks if c.name == "one_step_aligned")
    assert aligned.flagged and aligned.numbers["mean cosine at eps 16"] < 0.5


# --- output, wiring and bad input ------------------------------------------------------------


def test_format_lists_every_verdict_with_its_numbers():
    checks = [Diagnostic("logits", HOLDS, {"% of rows": 0.0}, "the outputs are logits",
                         "AutoAttack", "8 of 8 images"),
              Diagnostic("deterministic", FLAGGED, {"passes": 3}, "it is random"),
              Diagnostic("transfer_no_stronger", NOT_RUN, {}, "no twin given")]
    assert format_diagnostics(checks).splitlines() == [
        "Gradient-masking diagnostics: 1 of 2 flagged, 1 not run.",
        "- **logits**: holds (% of rows 0; 8 of 8 images). The outputs are logits. [AutoAttack]",
        "- **deterministic**: flagged (passes 3). It is random.",
        "- **transfer_no_stronger**: not run. No twin given."]
    assert format_diagnostics([]) == "No diagnostics were run."


def test_nothing_prints_and_the_audit_runs_only_the_cheap_checks_unless_asked(digits, capsys):
    net, _, x, y = digits
    names = [c.name for c in audit(net, x, y, [8], version=["step_fgsm"]).checks]
    assert names == ["deterministic", "logits", "nonzero_gradients"]  # AutoAttack's, cheap
    assert audit(net, x, y, [8], version=["step_fgsm"], diagnostics=False).checks == []
    diagnose(net, x, y, [8], sample=16)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("options,words", [
    ({"nope": 1}, "no option 'nope'"),
    ({"sample": 1}, "sample must be an integer >= 2"),
    ({"runs": 1}, "runs must be an integer >= 2"),
    ({"tolerance": -1}, "tolerance"),
    ({"cosine_threshold": 2}, "cosine_threshold"),
    ({"twin": "model.pt"}, "twin must be a torch.nn.Module"),
    ({"twin": nn.Sequential(nn.Flatten(), nn.Linear(64, 3))}, "same 10 classes"),
    ("yes", "diagnostics must be True"),
    (2, "diagnostics must be True"),
])
def test_bad_diagnostic_options_are_refused_before_any_work(digits, options, words):
    net, _, x, y = digits
    ran: list[int] = []

    def spy(model, x, y, eps, *, generator=None):
        ran.append(1)
        return x

    with pytest.raises(InvalidArgument, match=words):
        audit(net, x, y, [8], version=[AttackSpec("spy", spy, "iterative", "")],
              diagnostics=options)
    assert ran == []


def resnet(dataset: str, size: int, channels: int = 1) -> nn.Module:
    from cascade_adv.models import build_model

    return build_model({"depth": 8, "width": 0.25, "in_channels": channels,
                        "input_size": size, "num_classes": 10, "dataset": dataset}).eval()


def twin_cases(net):
    """(twin, words of the refusal) for the audited ``net`` (a digits model)."""
    import copy

    return {
        "the model itself": (net, "itself"),
        "a copy of its weights": (copy.deepcopy(net), "itself"),
        "another input size": (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
                               "cannot take the audited images"),
    }


@pytest.mark.parametrize("case", ["the model itself", "a copy of its weights",
                                  "another input size"])
def test_a_twin_that_is_the_model_or_takes_other_images_is_refused(digits, case):
    """The transfer check's twin is checked before any work, in the audit and in
    diagnose: not the audited model (same object or same weights), and it must take
    the audited images; then the same twin may be given for another model."""
    net, _, x, y = digits
    twin, words = twin_cases(net)[case]
    ran: list[int] = []

    def spy(model, x, y, eps, *, generator=None):
        ran.append(1)
        return x

    with pytest.raises(InvalidArgument, match=words):
        audit(net, x, y, [8], version=[AttackSpec("spy", spy, "iterative", "")],
              diagnostics={"twin": twin})
    with pytest.raises(InvalidArgument, match=words):
        diagnose(net, x, y, [8], twin=twin, sample=8)
    assert ran == []


def test_a_twin_of_another_dataset_is_refused_as_transfer_refuses_it():
    """Cascade-adv models carry their dataset and input size: a twin trained on another
    dataset, or of another input size, is refused as ``transfer`` refuses such a
    source (check_pair), even when its output has the right shape."""
    from cascade_adv.evaluation import check_pair

    model = resnet("digits", 8)
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    for twin, words in [(resnet("mnist", 8), "share a dataset"),
                        (resnet("digits", 16), "input size 16")]:
        with pytest.raises(InvalidArgument, match=words):
            check_pair("twin", twin, "model", model)
        with pytest.raises(InvalidArgument, match=words):
            audit(model, x, y, [8], version=["step_fgsm"], diagnostics={"twin": twin})
    audit(model, x, y, [8], version=["step_fgsm"],
          diagnostics={"twin": resnet("digits", 8), "sample": 4})  # another model: runs


def test_an_audit_result_of_other_images_or_eps_is_refused(digits):
    net, _, x, y = digits
    result = audit(net, x, y, [8], version=["step_fgsm"])
    with pytest.raises(InvalidArgument, match="audit_result is of 64 images at eps 8"):
        diagnose(net, x, y, [16], audit_result=result)
    with pytest.raises(InvalidArgument, match="give the images"):
        diagnose(net, x[:10], y[:10], [8], audit_result=result)
    with pytest.raises(ValueError, match=r"\(0, 255\]"):
        diagnose(net, x, y, [0])
