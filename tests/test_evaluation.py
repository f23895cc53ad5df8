"""White-box evaluation: counting, batching across epsilons, center crop, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cascade_adv.data import ImageDataset
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation import count_correct, evaluate_whitebox, prepare_images
from cascade_adv.models import build_model

# --- a model with hand-set logits ------------------------------------------------------

#: Clean logits of four examples over 7 classes, and their labels.
TABLE = torch.tensor([
    [5.0, 4.5, 3.0, 2.0, 1.0, 0.5, 0.2],    # y=0: top-1; class 0 falls by 100 eps/255
    [3.0, 1.0, 4.0, 0.0, -1.0, -2.0, -3.0],  # y=2: top-1 until class 0 passes 4
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0],     # y=6: last, never in the top 5
    [0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0],    # y=3: third, then fourth
])
LABELS = torch.tensor([0, 2, 6, 3])


class TableModel(nn.Module):
    """Logits ``TABLE[index] + 100 * (v - 128/255) * onehot(0)``.

    Channel 0 holds the example index (rounding: zero gradient, so attacks leave it
    alone); channel 1 holds ``v`` (128 when clean).  Any attack on the true label
    moves ``v`` down by eps/255 for label 0 and up for the others, so the class-0
    logit changes by -+100 eps/255 (eps 2: 0.78, eps 16: 6.27).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", TABLE.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (x[:, 0, 0, 0] * 255).round().long()
        shift = 100.0 * (x[:, 1, 0, 0] * 255 - 128) / 255
        logits = self.table[index].clone()
        logits[:, 0] = logits[:, 0] + shift
        return logits


def table_dataset() -> ImageDataset:
    images = torch.zeros(4, 2, 1, 1, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(4, dtype=torch.uint8)
    images[:, 1, 0, 0] = 128
    return ImageDataset(images, LABELS.clone(), "toy", "test", [str(i) for i in range(7)])


def as_dict(table) -> dict[tuple[str, float, str], float]:
    return {(r["attack"], r["eps"], r["metric"]): r["value"] for r in table.rows}


def test_count_correct_by_hand() -> None:
    assert count_correct(TABLE, LABELS, [1, 5]).tolist() == [2, 3]
    assert count_correct(TABLE, LABELS, [1, 2, 3]).tolist() == [2, 2, 3]
    grouped = count_correct(torch.cat([TABLE, TABLE]), torch.stack([LABELS, LABELS]), [1, 5])
    assert grouped.tolist() == [[2, 3], [2, 3]]


@pytest.mark.parametrize("attack", ["step_fgsm", "iter_fgsm"])
def test_top1_top5_by_hand(attack: str) -> None:
    table = evaluate_whitebox(TableModel(), table_dataset(), [attack], [0, 2, 16],
                              batch_size=3, progress=False, model_name="toy")
    assert as_dict(table) == {
        ("clean", 0.0, "top1"): 50.0, ("clean", 0.0, "top5"): 75.0,
        (attack, 2.0, "top1"): 25.0, (attack, 2.0, "top5"): 75.0,
        (attack, 16.0, "top1"): 0.0, (attack, 16.0, "top5"): 50.0,
    }
    row = table.rows[0]
    assert {k: row[k] for k in ("model", "dataset", "split", "source", "n")} == {
        "model": "toy", "dataset": "toy", "split": "test", "source": "whitebox", "n": 4}


def test_top5_only_with_more_than_five_classes() -> None:
    class Five(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return TABLE[(x[:, 0, 0, 0] * 255).round().long(), :5]

    ds = table_dataset()
    ds.labels = torch.tensor([0, 2, 4, 3])
    table = evaluate_whitebox(Five(), ds, [], [0], progress=False)
    assert as_dict(table) == {("clean", 0.0, "top1"): 75.0}


# --- batching across epsilons ----------------------------------------------------------


def tiny_setup(n: int = 16) -> tuple[nn.Module, ImageDataset]:
    torch.manual_seed(0)
    model = build_model({"depth": 8, "width": 0.25, "in_channels": 3, "input_size": 8,
                         "num_classes": 10, "normalize": "none"})
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        labels = model.eval()(prepare_images(model, images)).argmax(1)  # clean acc. 100 %
    model.train()
    return model, ImageDataset(images, labels, "rand", "test", [str(i) for i in range(10)])


def test_batched_eps_equals_separate() -> None:
    model, ds = tiny_setup()
    attacks, eps = ["step_fgsm", "iter_fgsm"], [0, 2, 4, 8, 16]
    together = as_dict(evaluate_whitebox(model, ds, attacks, eps, batch_size=6, progress=False))
    separate: dict = {}
    for e in eps:
        separate.update(as_dict(evaluate_whitebox(model, ds, attacks, [e], batch_size=6,
                                                  progress=False)))
    assert together == separate
    chunked = evaluate_whitebox(model, ds, attacks, eps, batch_size=6, max_batch=13,
                                progress=False)  # two epsilons per attack call
    assert as_dict(chunked) == together
    assert together[("clean", 0.0, "top1")] == 100.0
    assert together[("iter_fgsm", 16.0, "top1")] < together[("iter_fgsm", 2.0, "top1")]
    assert model.training  # modes restored


def test_random_attacks_are_seeded(monkeypatch) -> None:
    """Random attacks draw from the evaluation's own seeded generator: the same seed gives
    the same images whatever the global RNG did, another seed other images."""
    import dataclasses

    from cascade_adv.attacks import registry

    model, ds = tiny_setup(8)
    seen: list[torch.Tensor] = []
    for name in ("random_sign", "step_rnd"):
        spec = registry._REGISTRY[name]

        def spy(*args, _fn=spec.fn, **kwargs):
            out = _fn(*args, **kwargs)
            seen.append(out.detach().clone())
            return out

        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(spec, fn=spy))

    def images(seed: int, global_seed: int) -> list[torch.Tensor]:
        seen.clear()
        torch.manual_seed(global_seed)
        evaluate_whitebox(model, ds, ["random_sign", "step_rnd"], [8, 16], seed=seed,
                          progress=False)
        return list(seen)

    first, again, other = images(3, 100), images(3, 200), images(4, 100)
    assert len(first) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(not torch.equal(a, b) for a, b in zip(first, other))


# --- prepare_images --------------------------------------------------------------------


def test_prepare_images_center_crop() -> None:
    model = build_model({"depth": 8, "width": 0.25, "input_size": 24, "normalize": "none"})
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = prepare_images(model, images)
    assert out.shape == (2, 3, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out, images[:, :, 4:28, 4:28].float() / 255)
    same = images[:, :, :24, :24]
    assert torch.equal(prepare_images(model, same), same.float() / 255)
    assert torch.equal(prepare_images(nn.Identity(), images), images.float() / 255)


def test_prepare_images_rejects_bad_shapes() -> None:
    model = build_model({"depth": 8, "width": 0.25, "input_size": 24, "normalize": "none"})
    with pytest.raises(CascadeAdvError, match=r"3x20x20.*3x24x24") as info:
        prepare_images(model, torch.zeros(1, 3, 20, 20, dtype=torch.uint8))
    assert "\n" not in str(info.value)
    with pytest.raises(CascadeAdvError, match=r"1x32x32.*3x24x24"):
        prepare_images(model, torch.zeros(1, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(CascadeAdvError, match="uint8"):
        prepare_images(model, torch.zeros(1, 3, 32, 32))


# --- validation before any work --------------------------------------------------------


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not run before validation")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attacks": ["step_fgsm"], "eps": [0, 300]}, r"eps=300 is outside \[0, 255\]"),
        ({"attacks": ["step_fgsm"], "eps": [-1]}, r"eps=-1 is outside"),
        ({"attacks": ["no_such_attack"], "eps": [2]}, "unknown attack 'no_such_attack'"),
        ({"attacks": ["step_fgsm"], "eps": [2], "attack_options": {"pgd": {}}}, "pgd"),
        ({"attacks": ["pgd"], "eps": [2], "attack_options": {"pgd": {"bogus": 1}}}, "bogus"),
        ({"attacks": ["step_fgsm"], "eps": [2], "batch_size": 0}, "batch_size"),
    ],
)
def test_validation_up_front(kwargs: dict, message: str) -> None:
    with pytest.raises(CascadeAdvError, match=message) as info:
        evaluate_whitebox(Exploding(), table_dataset(), progress=False, **kwargs)
    assert "\n" not in str(info.value)
