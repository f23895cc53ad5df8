"""Every option of every attack has a type and a range, checked before any work: on the
command line when ``--version NAME:KEY=VALUE`` is parsed, and in Python by
``attacks.run``, ``audit`` and ``evaluate_whitebox`` (issue 29, class 6)."""

from __future__ import annotations

import math

import pytest
import torch
from _cli import run_cli
from torch import nn

from cascade_adv import attacks
from cascade_adv.attacks import options as opt
from cascade_adv.errors import AttackError
from cascade_adv.evaluation import audit
from cascade_adv.evaluation.audit import resolve_version

#: (attack, option) for every option of every registered attack
OPTIONS = [(name, key) for name in attacks.names() for key in attacks.get(name).limits]


def bad_values(spec: opt.OptionSpec) -> list:
    """Python values outside ``spec``: wrong types, non-finite, out of its range."""
    common = [True, False, "5", [1], float("nan"), float("inf"), float("-inf")]
    if spec.kind == "bool":
        return [1, 0, "true", 0.5, None]
    low = spec.low if spec.open_low else spec.low - 1
    values = common + [low, spec.high * 2 + 1, 10**400, -(10**400)]
    if spec.kind == "int":
        values += [spec.low + 0.5, spec.high + 1]
    if not spec.default:
        values.append(None)  # left out is its default; None is not a value of it
    return values


def cli_values(spec: opt.OptionSpec) -> list[str]:
    """``--version`` texts outside ``spec``."""
    if spec.kind == "bool":
        return ["1", "0", "yes", "nan"]
    low = spec.low if spec.open_low else spec.low - 1
    texts = ["nan", "inf", "-inf", "1e400", "-1e400", "abc", "true", f"{low:g}",
             f"{spec.high * 2 + 1:g}", "1e12"]
    if spec.kind == "int":
        texts += [f"{spec.low + 0.5:g}", f"{spec.high + 1:g}", "0x10"]
    return texts


def cases(values):
    return [pytest.param(name, key, v, id=f"{name}-{key}-{v!r}"[:60])
            for name, key in OPTIONS for v in values(attacks.get(name).limits[key])]


class Spy(nn.Module):
    """A 4-class linear model that records every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.lin = nn.Linear(16, 4)

    def forward(self, x):
        self.calls += 1
        return self.lin(x.flatten(1))


def test_every_option_of_every_attack_has_a_spec():
    """A registered attack's keyword options (``generator`` aside) all have an
    :class:`OptionSpec`; registering one with an option without a spec fails."""
    assert OPTIONS and {n for n, _ in OPTIONS} >= {"iter_fgsm", "pgd"}
    for name in attacks.names():
        spec = attacks.get(name)
        assert set(spec.limits) == {o for o in spec.options if o != "generator"}, name
        for key, limit in spec.limits.items():
            assert isinstance(limit, opt.OptionSpec), (name, key)

    def new_attack(model, x, y, eps, *, steps=10, extra=1, generator=None):
        return x

    with pytest.raises(ValueError, match="missing: extra"):
        attacks.register("test_unchecked", "iterative", "", options={"steps": opt.STEPS})(
            new_attack)
    assert "test_unchecked" not in attacks.names()


def test_the_bounds_are_finite_and_generous():
    """No single call asks for more than a day of work without saying so; the bounds
    hold the values the versions and the papers use."""
    limits = {(n, k): attacks.get(n).limits[k] for n, k in OPTIONS}
    for (name, key), limit in limits.items():
        if limit.kind != "bool":
            assert math.isfinite(limit.low) and math.isfinite(limit.high), (name, key)
    assert limits[("apgd_ce", "steps")].high == 10_000
    assert limits[("pgd", "restarts")].high == 100
    assert limits[("square", "queries")].high == 100_000
    assert limits[("apgd_t", "rho")].high == 1
    for version in ("standard", "quick"):
        resolve_version(version)  # every version's own options pass
    _, parsed = resolve_version("pgd:steps=10000:restarts=100:alpha=0.5,"
                                "square:queries=100000:p_init=1:rescale=false")
    assert parsed[0].options == {"steps": 10000, "restarts": 100, "alpha": 0.5}


def test_an_integral_float_counts_as_a_whole_number():
    label, parsed = resolve_version("pgd:steps=5.0,apgd_t:targets=3.0")
    assert parsed[0].options == {"steps": 5} and type(parsed[0].options["steps"]) is int
    assert label == "pgd:steps=5,apgd_t:targets=3"
    with pytest.raises(AttackError, match="steps takes a whole number"):
        resolve_version("pgd:steps=5.5")


@pytest.mark.parametrize("name,key,value", cases(cli_values))
def test_cli_refuses_a_bad_option_when_it_parses_version(tmp_path, name, key, value):
    """One line naming the option and its range, exit 2, before the model is loaded
    (the checkpoint does not exist) and with no file written."""
    code, out, err = run_cli(["audit", "--checkpoint", "missing_run", "--version",
                              f"{name}:{key}={value}", "--results", "r.db"], tmp_path)
    assert code == 2, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"option {key}=" in err and f"{key} takes" in err and "missing_run" not in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,key,value", cases(bad_values))
def test_python_refuses_a_bad_option_before_the_model_runs(name, key, value):
    """``attacks.run`` and ``audit`` raise AttackError (a ValueError) naming the option
    and its range; the model never runs."""
    model = Spy()
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    with pytest.raises(AttackError, match=f"option {key}=.*{key} takes") as info:
        attacks.run(name, model, x, y, eps=8, **{key: value})
    assert isinstance(info.value, ValueError)
    with pytest.raises(AttackError, match=f"option {key}=.*{key} takes"):
        audit(model, x, y, [8], version=[(name, {key: value})])
    assert model.calls == 0


def test_evaluate_whitebox_refuses_a_bad_option_before_any_work():
    from cascade_adv.data import ImageDataset
    from cascade_adv.evaluation import evaluate_whitebox

    model = Spy()
    data = ImageDataset(torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8),
                        torch.tensor([0, 1, 2]), "test", "test")
    with pytest.raises(AttackError, match="steps takes a whole number in \\[1, 10000\\]"):
        evaluate_whitebox(model, data, ["pgd"], [8], attack_options={"pgd": {"steps": 2.5}},
                          progress=False)
    assert model.calls == 0
