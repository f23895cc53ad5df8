"""The robustness audit: closed-form worst case of a linear model, per-image aggregation,
resume after an interruption, the engine's checks and the up-front validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from cascade_adv import attacks as attack_registry
from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.errors import AttackError, ModelFault
from cascade_adv.evaluation import AuditRecord, AuditRun, ResultsStore, attack_rows, audit
from cascade_adv.evaluation.audit import (
    AuditAttack,
    check_audit_eps,
    check_targets,
    resolve_version,
    state_path,
)

HAVE_APGD = all(n in attack_registry.names() for n in ("apgd_ce", "apgd_t", "square"))


# --- a linear model: the L-inf worst case in closed form -----------------------------------


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def closed_form_margin(model: Linear, x: torch.Tensor, y: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """min over j != y and over the eps ball within [0, 1] of the margin
    ``(w_y - w_j) . x' + (b_y - b_j)``, attained at ``x'_p = clip(x_p - eps sign(d_p))``
    with ``d = w_y - w_j``: the image can be flipped iff it is negative."""
    w, b, x = model.w.detach().double(), model.b.detach().double(), x.flatten(1).double()
    d = w[y][:, None, :] - w[None, :, :]  # [N, C, P]
    worst = (x[:, None, :] - eps / 255 * d.sign()).clamp(0, 1)
    margin = (d * worst).sum(-1) + (b[y][:, None] - b[None, :])
    margin[torch.arange(len(y)), y] = float("inf")
    return margin.min(dim=1).values


def linear_case(classes: int, dtype: torch.dtype, eps: list[float]):
    g = torch.Generator().manual_seed(classes)
    model = Linear(torch.randn(classes, 16, generator=g, dtype=dtype),
                   0.5 * torch.randn(classes, generator=g, dtype=dtype))
    x = torch.rand(300, 1, 4, 4, generator=g, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:10] = (y[:10] + 1) % classes  # ten images wrong before any attack
    margins = torch.stack([closed_form_margin(model, x, y, e) for e in eps])
    keep = (margins.abs() > 1e-3).all(dim=0)  # no image on the decision boundary
    return model, x[keep], y[keep], margins[:, keep]


CASES = [
    # two classes: PGD's cross-entropy ascent moves every pixel along -sign(w_y - w_j)
    pytest.param(2, torch.float64, [("pgd", {"restarts": 2, "steps": 20}), "iter_fgsm"],
                 id="pgd-2-classes-float64"),
    pytest.param(10, torch.float32, "quick", id="quick-10-classes",
                 marks=pytest.mark.skipif(not HAVE_APGD, reason="APGD / Square not built")),
]


@pytest.mark.parametrize("classes,dtype,version", CASES)
def test_linear_model_worst_case_is_the_closed_form(classes, dtype, version):
    eps = [4.0, 16.0, 48.0]
    model, x, y, margins = linear_case(classes, dtype, eps)
    assert 0 < int((margins < 0).sum()) < margins.numel()  # both outcomes occur
    result = audit(model, x, y, eps, version=version, run=AuditRun(batch_size=128),
                   record=AuditRecord(keep_images=True))
    clean = (model(x).argmax(1) == y)
    assert torch.equal(result.clean_correct, clean) and not clean.all()
    for i, e in enumerate(eps):
        expected = clean & (margins[i] >= 0)
        assert torch.equal(result.robust(e), expected), e
        assert result.worst_case[e] == pytest.approx(100.0 * float(expected.double().mean()))
        adv = result.adversarial[i]
        assert adv.dtype == dtype
        assert float((adv - x).abs().max()) <= e / 255 + 1e-6  # in its eps ball
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0  # and in [0, 1]
        broken = clean & ~expected
        with torch.no_grad():  # the kept images are the ones that flip the prediction
            assert torch.equal(model(adv).argmax(1)[broken] != y[broken], torch.ones_like(
                y[broken], dtype=torch.bool))


# --- per-image aggregation with attacks that break known images -----------------------------


class Switch(nn.Module):
    """Channel 0 holds the image index (k / 255); logits are one-hot on ``label[k]``
    while channel 1 stays at its clean 0.5, on ``label[k] + 1`` once it moves."""

    def __init__(self, labels: torch.Tensor, classes: int = 4) -> None:
        super().__init__()
        self.register_buffer("labels", labels.clone())
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = (x[:, 0, 0, 0] * 255).round().long()
        moved = (x[:, 1, 0, 0] - 0.5).abs() > 1e-4
        cls = (self.labels[k] + moved.long()) % self.classes
        return nn.functional.one_hot(cls, self.classes).to(x.dtype)


def breaker(name: str, targets: set[int], min_eps: float, calls: list) -> AttackSpec:
    """An attack that moves channel 1 of the images in ``targets`` by eps (when eps >=
    ``min_eps``) and records the (image, eps) rows it is called on."""

    def fn(model, x, y, eps, *, generator=None):
        k = (x[:, 0, 0, 0] * 255).round().long()
        calls.append(sorted(zip(k.tolist(), eps.tolist())))
        hit = torch.tensor([int(i) in targets for i in k]) & (eps >= min_eps)
        out = x.clone()
        out[hit, 1] += (eps[hit] / 255).to(x.dtype).view(-1, 1, 1)
        return out

    return AttackSpec(name, fn, "iterative", "test attack")


def switch_case(n: int = 10):
    x = torch.full((n, 2, 1, 1), 0.5)
    x[:, 0, 0, 0] = torch.arange(n) / 255
    labels = torch.arange(n) % 4
    y = labels.clone()
    y[9] = (y[9] + 2) % 4  # image 9 is wrong without attack
    return Switch(labels), x, y


def test_worst_case_is_the_union_of_the_attacks_per_image():
    model, x, y = switch_case()
    calls_a, calls_b = [], []
    a = breaker("a", {0, 1, 2, 9}, 16.0, calls_a)  # at eps 16 only
    b = breaker("b", {2, 3, 4}, 8.0, calls_b)  # at both
    result = audit(model, x, y, [8, 16], version=[a, b], run=AuditRun(batch_size=10))
    assert result.clean_accuracy == 90.0
    robust = {e: set(result.robust(e).nonzero().flatten().tolist()) for e in (8.0, 16.0)}
    assert robust == {8.0: {0, 1, 5, 6, 7, 8}, 16.0: {5, 6, 7, 8}}
    assert result.worst_case == {8.0: 60.0, 16.0: 40.0}
    assert result.broken_by_names(16) == ["a", "a", "a", "b", "b"] + [None] * 5
    assert result.broken_by_names(8) == [None, None, "b", "b", "b"] + [None] * 5
    # one call each (both epsilons stacked); a never sees image 9, b never sees what a broke
    every = [(i, e) for e in (8.0, 16.0) for i in range(9)]
    assert calls_a == [sorted(every)]
    assert calls_b == [sorted(set(every) - {(0, 16.0), (1, 16.0), (2, 16.0)})]
    acc = {(r.attack, r.eps): (r.attacked, r.survived) for r in result.per_attack}
    assert acc == {("a", 8.0): (9, 9), ("a", 16.0): (9, 6), ("b", 8.0): (9, 6),
                   ("b", 16.0): (6, 4)}
    rows = {(r["attack"], r["eps"], r["source"], r["metric"]): (r["value"], r["n"])
            for r in result.table()}
    version = "audit:a,b"
    assert rows[("clean", 0.0, version, "top1")] == (90.0, 10)
    assert rows[("b", 16.0, version, "top1")] == (40.0, 10)  # cumulative
    assert rows[("b", 16.0, version, "top1_attacked")] == pytest.approx((400 / 6, 6))
    assert rows[("a", 16.0, version, "top1_attacked")] == pytest.approx((600 / 9, 9))
    assert rows[(version, 8.0, "whitebox", "top1")] == (60.0, 10)  # the worst case
    assert result.to_markdown().splitlines()[2:] == ["| 8 | 90.0 | 90.0 | 60.0 | 60.0 |",
                                                     "| 16 | 90.0 | 60.0 | 40.0 | 40.0 |"]
    assert [c.name for c in result.checks] == ["deterministic", "logits", "nonzero_gradients"]


def test_max_batch_splits_the_stacked_rows_without_changing_the_result():
    model, x, y = switch_case()
    calls: list = []
    whole = audit(model, x, y, [8, 16], version=[breaker("a", {1, 3}, 8, calls)])
    split = audit(model, x, y, [8, 16], version=[breaker("a", {1, 3}, 8, calls)],
                  run=AuditRun(max_batch=7))
    assert [len(c) for c in calls] == [18, 7, 7, 4]
    assert torch.equal(whole.broken_by, split.broken_by)


# --- resume ------------------------------------------------------------------------------


def flaky(crash_at: int | None, calls: list) -> AttackSpec:
    """random_sign that raises on call number ``crash_at`` (a simulated crash)."""

    def fn(model, x, y, eps, *, generator=None):
        calls.append(len(x))
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt
        return attack_registry.get("random_sign").fn(model, x, y, eps, generator=generator)

    return AttackSpec("flaky", fn, "random", "random_sign that can crash", True)


def tiny_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10))
    x = torch.rand(30, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path):
    model, x, y = tiny_net()
    run = AuditRun(batch_size=8, seed=3)
    calls: list = []
    version = [flaky(None, calls), ("pgd", {"steps": 3})]
    whole = audit(model, x, y, [32, 64], version=version, run=run,
                  record=AuditRecord(store=tmp_path / "a.db", model_name="tiny"))
    assert len(calls) == 4  # four batches
    assert 0 < whole.worst_case[64.0] < whole.worst_case[32.0] < 100.0

    store = tmp_path / "b.db"
    calls.clear()
    crashing = [flaky(2, calls), ("pgd", {"steps": 3})]
    with pytest.raises(KeyboardInterrupt):  # on batch 1, after both attacks of batch 0
        audit(model, x, y, [32, 64], version=crashing, run=run,
              record=AuditRecord(store=store, model_name="tiny"))
    saved = list(tmp_path.glob("b.db.audit-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["finished"] == [2, 0, 0, 0]
    calls.clear()
    resumed = audit(model, x, y, [32, 64], version=version, run=run,
                    record=AuditRecord(store=store, model_name="tiny"))
    assert len(calls) == 3  # batch 0 was not attacked again
    assert torch.equal(resumed.broken_by, whole.broken_by)
    assert torch.equal(resumed.clean_correct, whole.clean_correct)
    assert not list(tmp_path.glob("b.db.audit-*.json"))  # removed once the rows are stored
    with ResultsStore(tmp_path / "a.db") as a, ResultsStore(store) as b:
        assert a.query() == b.query() and len(a) == 1 + 2 * 2 * 2 + 2


def test_saved_progress_of_another_audit_is_not_taken_over(tmp_path):
    model, x, y = tiny_net()
    calls: list = []
    store = tmp_path / "r.db"
    with pytest.raises(KeyboardInterrupt):
        audit(model, x, y, [32], version=[flaky(3, calls)], run=AuditRun(batch_size=8),
              record=AuditRecord(store=store))
    calls.clear()
    # another seed: another audit, which starts from the first batch
    audit(model, x, y, [32], version=[flaky(None, calls)], run=AuditRun(batch_size=8, seed=1),
          record=AuditRecord(store=store))
    assert len(calls) == 4


# --- progress files that are damaged, inconsistent or not files ---------------------------


VERSION = [("pgd", {"steps": 3}), ("iter_fgsm", {"steps": 2})]
RESUME = {"version": VERSION, "run": AuditRun(batch_size=8, seed=3),
          "record": AuditRecord(model_name="tiny")}


def _stored(path):
    """RESUME's audit kept in the store at ``path``."""
    return {**RESUME, "record": AuditRecord(store=path, model_name="tiny")}


def interrupted(tmp_path, monkeypatch) -> tuple[dict, Path]:
    """An audit of four batches interrupted in its third (two attacks, eps 32 and 64):
    its progress file, parsed, and its path."""
    import importlib

    audit_module = importlib.import_module("cascade_adv.evaluation.audit")
    model, x, y = tiny_net()
    run_attack = audit_module._run_attack
    calls: list = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return run_attack(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(audit_module, "_run_attack", crash)
        with pytest.raises(KeyboardInterrupt):
            audit(model, x, y, [32, 64], **_stored(tmp_path / "r.db"))
    (path,) = tmp_path.glob("r.db.audit-*.json")
    saved = json.loads(path.read_text())
    assert saved["finished"] == [2, 2, 0, 0]
    return saved, path


def resign(saved: dict) -> dict:
    """``saved`` with its checksum recomputed: an edit (or a writer's bug) that the
    checksum cannot tell, so that the field checks must."""
    from cascade_adv.evaluation.progress import digest

    return {**saved, "digest": digest(saved)}


def first(saved: dict, value: int, row: int = 0) -> int:
    """The first image of eps row ``row`` whose breaking attack is ``value``."""
    return saved["broken_by"][row].index(value)


#: name -> edit of a parsed progress file (re-signed unless said otherwise), and a word
#: of the warning
CORRUPTIONS = {
    "broken_by out of range": (lambda s: s["broken_by"][0].__setitem__(first(s, 0), 5),
                               "attack indices"),
    "broken_by below -1": (lambda s: s["broken_by"][1].__setitem__(0, -2), "attack indices"),
    "finished beyond the attacks": (lambda s: s["finished"].__setitem__(1, 3),
                                    "finished attacks"),
    "a finished batch beyond the data": (lambda s: s["finished"].append(2),
                                         "finished attacks"),
    "a batch started after an unfinished one": (lambda s: s["finished"].__setitem__(3, 1),
                                                "after the unfinished batch"),
    "broken by an attack not run on its batch": (  # batch 2: only attack 0 done
        lambda s: (s["finished"].__setitem__(2, 1), s["clean"].__setitem__(20, 1),
                   s["broken_by"][0].__setitem__(20, 1)), "had not run on its batch"),
    "broken although wrong clean": (
        lambda s: s["clean"].__setitem__(first(s, 0), 0), "wrong clean"),
    "clean results of a batch not started": (lambda s: s["clean"].__setitem__(25, 1),
                                             "had not started"),
    "clean flag of 2": (lambda s: s["clean"].__setitem__(0, 2), "flags"),
    "clean flag as text": (lambda s: s["clean"].__setitem__(0, "1"), "flags"),
    "float attack index": (lambda s: s["broken_by"][0].__setitem__(0, -1.0),
                           "attack indices"),
    "boolean finished count": (lambda s: s["finished"].__setitem__(0, True),
                               "finished attacks"),
    "a short clean list": (lambda s: s["clean"].pop(), "flags"),
    "another image count": (lambda s: s.__setitem__("n", 31), "records n"),
    "other epsilons": (lambda s: s.__setitem__("eps", [32.0]), "records eps"),
    "other attacks": (lambda s: s["attacks"].reverse(), "records attacks"),
    "another audit's key": (lambda s: s.__setitem__("key", "0" * 64), "another audit"),
    "an older layout": (lambda s: s.__setitem__("layout", 1), "another version"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS) + ["unsigned edit", "not JSON",
                                                      "cut short", "a folder"])
def test_a_damaged_progress_file_is_discarded_with_one_warning(tmp_path, monkeypatch, name):
    """Every kind of damage: the rerun says so in one warning naming the file, starts
    over, and gives exactly the numbers of a fresh audit; a folder at the path is left
    as it is (the audit keeps its progress in memory)."""
    from cascade_adv.errors import CascadeAdvWarning

    model, x, y = tiny_net()
    fresh = audit(model, x, y, [32, 64], **RESUME)
    saved, path = interrupted(tmp_path, monkeypatch)
    if name in CORRUPTIONS:
        CORRUPTIONS[name][0](saved)
        path.write_text(json.dumps(resign(saved)))
        word = CORRUPTIONS[name][1]
    elif name == "unsigned edit":  # an outcome changed, the checksum not
        saved["broken_by"][0][first(saved, 0)] = -1
        path.write_text(json.dumps(saved))
        word = "checksum"
    elif name in ("not JSON", "cut short"):
        text = json.dumps(saved)
        path.write_text("\x00\xff garbage" if name == "not JSON" else text[:len(text) // 2])
        word = "not valid JSON"
    else:
        path.unlink()
        (path / "inside").mkdir(parents=True)
        word = "is a folder"
    with pytest.warns(CascadeAdvWarning) as record:
        again = audit(model, x, y, [32, 64], **_stored(tmp_path / "r.db"))
    messages = [str(w.message) for w in record if issubclass(w.category, CascadeAdvWarning)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert str(path) in messages[0] and word in messages[0], messages[0]
    assert torch.equal(again.clean_correct, fresh.clean_correct)
    assert torch.equal(again.broken_by, fresh.broken_by)
    assert again.table().rows == fresh.table().rows
    assert (path / "inside").is_dir() if name == "a folder" else not path.exists()


def test_a_valid_progress_file_is_taken_over_without_a_word(tmp_path, monkeypatch, recwarn):
    model, x, y = tiny_net()
    fresh = audit(model, x, y, [32, 64], **RESUME)
    saved, path = interrupted(tmp_path, monkeypatch)
    path.write_text(json.dumps(resign(saved), indent=1))  # the same content, re-spaced
    again = audit(model, x, y, [32, 64], **_stored(tmp_path / "r.db"))
    assert not [w for w in recwarn if "progress" in str(w.message)]
    assert torch.equal(again.broken_by, fresh.broken_by)


def test_a_progress_file_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from cascade_adv.errors import CascadeAdvError
    from cascade_adv.evaluation import progress

    def refuse(path, text):
        raise IsADirectoryError(21, "Is a directory", str(path))

    monkeypatch.setattr(progress, "atomic_write_text", refuse)
    model, x, y = tiny_net()
    with pytest.raises(CascadeAdvError, match=r"cannot write the audit progress file .*"
                                              r"r\.db\.audit-.*move away"):
        audit(model, x, y, [32], **_stored(tmp_path / "r.db"))


def test_superseded_progress_files_are_removed(tmp_path, monkeypatch):
    """An audit of the same model, data split and store with other arguments removes the
    progress of the earlier one (which it supersedes), unless that one's writer is
    still running; another model's progress stays; a finished audit leaves none."""
    saved, path = interrupted(tmp_path, monkeypatch)
    other = path.with_name("r.db.audit-0123456789abcdef.json")
    other.write_text(json.dumps(resign({**saved, "key": "1" * 64,
                                        "owner": {**saved["owner"], "model": "other"}})))
    live = path.with_name("r.db.audit-fedcba9876543210.json")
    live.write_text(json.dumps(resign({**saved, "key": "2" * 64,
                                       "writer": {**saved["writer"], "pid": os.getppid()}})))
    model, x, y = tiny_net()
    audit(model, x, y, [32], **_stored(tmp_path / "r.db"))  # eps changed
    assert not path.exists() and other.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.glob("r.db.audit-*")) == sorted([other.name,
                                                                            live.name])


def test_state_path_is_beside_the_store(tmp_path):
    assert state_path(tmp_path / "results.db", "ab" * 32) == \
        tmp_path / f"results.db.audit-{'ab' * 8}.json"


# --- the engine's checks -----------------------------------------------------------------


def test_engine_runs_only_the_given_rows_with_their_eps():
    model, x, y = switch_case()
    calls: list = []
    eps = torch.tensor([8.0] * 5 + [16.0] * 5, dtype=torch.float64)
    out = attack_rows(model, x, y, eps, breaker("a", {1, 6, 7}, 16.0, calls),
                      rows=torch.tensor([1, 6, 8]))
    assert calls == [[(1, 8.0), (6, 16.0), (8, 16.0)]]
    assert out.correct.tolist() == [True, False, True] and float(out.excess) == 0.0
    assert out.logits.shape == (3, 4) and out.x_adv.shape == (3, 2, 1, 1)


def test_an_attack_that_leaves_the_eps_ball_is_refused():
    model, x, y = switch_case()

    def too_far(model, x, y, eps, *, generator=None):
        out = x.clone()
        out[:, 1] += (2 * eps / 255).view(-1, 1, 1).to(x.dtype)
        return out

    with pytest.raises(AttackError, match="outside their eps ball"):
        audit(model, x, y, [8], version=[AttackSpec("far", too_far, "iterative", "")])


def test_a_model_with_nonfinite_outputs_is_refused():
    model, x, y = switch_case()

    class Broken(nn.Module):
        def forward(self, x):
            out = model(x)
            return torch.where(x[:, 1, 0, 0].view(-1, 1) > 0.5, float("nan"), out)

    with pytest.raises(ModelFault, match="non-finite"):
        audit(Broken(), x, y, [8], version=[breaker("a", {1}, 8.0, [])])


def test_nothing_prints_unless_asked(capsys):
    model, x, y = switch_case()
    audit(model, x, y, [8], version=[breaker("a", {1}, 8.0, [])])
    assert capsys.readouterr() == ("", "")


# --- validation before any work ------------------------------------------------------------


@pytest.mark.parametrize("eps", [0, [16, 0], 300, -1, float("nan"), [], torch.tensor(0.0)])
def test_eps_outside_0_255_is_refused(eps):
    with pytest.raises(ValueError, match=r"\(0, 255\]|empty"):
        check_audit_eps(eps)


def test_bad_versions_are_refused_before_the_model_runs():
    ran = []

    class Spy(nn.Module):
        def forward(self, x):
            ran.append(1)
            return x.flatten(1)

    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    for version, error in [("nope", KeyError), (["pgd", "nope"], KeyError),
                           ("pgd,pgd", ValueError), ([], ValueError),
                           ("pgd:nope=1", ValueError), ("pgd:restarts", ValueError)]:
        with pytest.raises(error) as info:
            audit(Spy(), x, y, [8], version=version)
        assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError):
        audit(Spy(), x, y, [0], version="pgd")
    assert ran == []


def targeted() -> AttackSpec:
    def fn(model, x, y, eps, *, targets=9, generator=None):
        return x

    return AttackSpec("tgt", fn, "iterative", "a targeted test attack")


def test_more_targets_than_other_classes_is_refused_and_a_version_lowers_them():
    ok = check_targets([AuditAttack(targeted(), {"targets": 3})], 4)
    assert ok[0].options == {"targets": 3}
    with pytest.raises(ValueError, match="at most 3 targets"):
        check_targets([AuditAttack(targeted(), {"targets": 4})], 4)
    lowered = check_targets([AuditAttack(targeted(), {"targets": 9})], 4, lower=True)
    assert lowered[0].options == {"targets": 3}
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="more target classes"):  # the model has 4 classes
        audit(nn.Flatten(), x, y, [8], version=[(targeted(), {"targets": 4})])


def test_version_labels():
    label, attacks = resolve_version("pgd:steps=5:restarts=2, iter_ll")
    assert label == "pgd:restarts=2:steps=5,iter_ll"
    assert [(a.name, dict(a.options)) for a in attacks] == [
        ("pgd", {"steps": 5, "restarts": 2}), ("iter_ll", {})]
    if HAVE_APGD:
        label, attacks = resolve_version("quick", num_classes=3)
        assert label == "quick" and attacks[1].options["targets"] == 2


def test_audit_rows_are_not_black_box_rows_in_checks_and_reports(tmp_path):
    """The per-attack rows' ``source`` (``audit:VERSION``) names no source model: the
    sanity checks and the report must not read them as a transfer attack."""
    from cascade_adv.evaluation import check_results
    from cascade_adv.reporting.report import build_report

    model, x, y = switch_case()
    result = audit(model, x, y, [8, 16], version=[breaker("a", {0, 1, 2, 9}, 16.0, [])],
                   record=AuditRecord(model_name="m"))
    white = {**result.table().rows[0], "attack": "a", "eps": 16.0, "source": "whitebox",
             "value": 100.0}  # white-box "a" weaker than the audit's cumulative 60 %
    with ResultsStore(tmp_path / "r.db") as store:
        store.upsert([*result.table(), white])
        assert check_results(store.query()) == []
        build_report(store, tmp_path / "rep")
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "Black-box" not in page and "audit:a" in page


@pytest.mark.parametrize("version,names,options", [
    ("standard", ("apgd_ce", "apgd_t", "fab_t", "square"),
     [{"steps": 100}, {"targets": 3, "steps": 100}, {"targets": 3, "steps": 100},
      {"queries": 5000, "rescale": False}]),
    ("quick", ("apgd_ce", "apgd_t", "square"),
     [{"steps": 100}, {"targets": 3, "steps": 100}, {"queries": 1000, "rescale": False}]),
])
def test_versions_run_their_attacks_in_order_with_their_options(monkeypatch, version, names,
                                                                options):
    """The versions' attacks (recorders standing in for APGD-CE, APGD-T, FAB-T and
    Square: AutoAttack's standard ensemble), in order, each with its options; a 4-class
    model lowers standard's 9 targets to 3."""
    from cascade_adv.attacks import registry

    seen: list = []

    def recorder(name):
        def fn(model, x, y, eps, *, steps=100, restarts=1, targets=9, queries=5000,
               p_init=0.8, rescale=True, generator=None):
            given = {"steps": steps, "targets": targets, "queries": queries,
                     "rescale": rescale}
            seen.append((name, {k: given[k] for k in options[len(seen)]}))
            return x

        return AttackSpec(name, fn, "iterative", "stand-in")

    for name in ("apgd_ce", "apgd_t", "fab_t", "square"):
        monkeypatch.setitem(registry._REGISTRY, name, recorder(name))
    model, x, y = switch_case()
    result = audit(model, x, y, [8], version=version)
    assert seen == list(zip(names, options, strict=True))
    assert result.version == version and result.source == f"audit:{version}"


def test_audit_flags_a_softmax_output_model_with_default_arguments():
    """AutoAttack's cheap checks run on every call: a model returning probabilities gets
    its worst case with the ``logits`` check flagged and one warning, and no expensive
    diagnostic runs unless asked."""
    import warnings as _warnings

    from cascade_adv.errors import CascadeAdvWarning

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10),
                                torch.nn.Softmax(dim=1))
    x = torch.rand(24, 1, 8, 8)
    y = model(x).argmax(1).detach()
    with _warnings.catch_warnings(record=True) as seen:
        _warnings.simplefilter("always")
        result = audit(model, x, y, [8], version="apgd_ce:steps=3")
    verdicts = {c.name: c.verdict for c in result.checks}
    assert verdicts == {"deterministic": "holds", "logits": "flagged",
                        "nonzero_gradients": "holds"}
    flagged = [w for w in seen if issubclass(w.category, CascadeAdvWarning)]
    assert len(flagged) == 1 and "logits" in str(flagged[0].message)
    plain = torch.nn.Sequential(*list(model)[:2])  # the same network's logits: quiet
    with _warnings.catch_warnings(record=True) as seen:
        _warnings.simplefilter("always")
        result = audit(plain, x, y, [8], version="apgd_ce:steps=3")
    assert all(c.verdict == "holds" for c in result.checks) and not [
        w for w in seen if issubclass(w.category, CascadeAdvWarning)]
    assert audit(plain, x, y, [8], version="apgd_ce:steps=3", diagnostics=False).checks == []
