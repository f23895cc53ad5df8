"""Model-level analyses of N18 section 4 / appendix A: softmax argument (figures 4, 6) and
gradient correlation (figure 5), checked against hand/numpy computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from cascade_adv.analysis import (
    DEFAULT_PAIRS,
    choose_images,
    gradient_correlation,
    pearson,
    softmax_argument,
)
from cascade_adv.data import ImageDataset, load_dataset
from cascade_adv.errors import CascadeAdvError
from cascade_adv.models import build_model

# --- a hand-built linear model on 1x2x2 images, 3 classes -------------------------------

# Row 1 is minus row 0 and row 2 is zero: for label 0 or 1 the CE gradient is a negative
# multiple of the true row, so step_FGSM lowers the true logit by exactly
# eps / 255 * ||w_true||_1 (no clipping for mid-range pixels).
W = np.array([[1.0, -2.0, 0.5, 3.0], [-1.0, 2.0, -0.5, -3.0], [0.0, 0.0, 0.0, 0.0]])
B = np.array([0.1, -0.2, 0.3])
PIXELS = np.array([[100, 120, 140, 160], [90, 150, 110, 130], [130, 100, 160, 120],
                   [120, 140, 100, 150]], dtype=np.uint8)
LABELS = np.array([0, 1, 0, 1])


def linear_model(w=W, b=B) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(w.shape[1], w.shape[0]))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(w, dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(b, dtype=torch.float32))
    return model


def toy_dataset(pixels=PIXELS, labels=LABELS, classes=("a", "b", "c")) -> ImageDataset:
    images = torch.tensor(pixels, dtype=torch.uint8).view(len(pixels), 1, 2, 2)
    return ImageDataset(images, torch.tensor(labels), "toy", "test", list(classes))


def values(table, **filters):
    return {(r["attack"], r["eps"], r["metric"]): r["value"] for r in table.filter(**filters)}


def np_logits(x, w=W, b=B):
    return x.reshape(len(x), -1) @ w.T + b


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce_grad(x, y, w=W, b=B):
    """d CE / dx = W^T (softmax(Wx + b) - onehot(y)), per image."""
    p = np_softmax(np_logits(x, w, b))
    p[np.arange(len(y)), y] -= 1.0
    return p @ w


# --- pearson -------------------------------------------------------------------------------


def test_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 7))
    b = 0.3 * a + rng.normal(size=(5, 7))
    r = pearson(torch.tensor(a), torch.tensor(b))
    assert r.dtype == torch.float64 and r.shape == (5,)
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-12, atol=1e-12)
    # [N, C, H, W] rows are flattened; a 1-D pair is one row
    r4 = pearson(torch.tensor(a[:4, :6]).view(4, 1, 2, 3), torch.tensor(b[:4, :6]).view(4, 1, 2, 3))
    np.testing.assert_allclose(r4.numpy(), [np.corrcoef(a[i, :6], b[i, :6])[0, 1]
                                            for i in range(4)], rtol=1e-12)
    assert pearson(torch.tensor(a[0]), torch.tensor(b[0])).item() == pytest.approx(expected[0])


def test_pearson_perfect_and_undefined():
    a = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.5, 0.5, 0.5, 0.5], [3.0, -1.0, 2.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]])
    r = pearson(a, 2.5 * a + 1.0)
    assert r[0].item() == pytest.approx(1.0, abs=1e-15)
    assert r[2].item() == pytest.approx(1.0, abs=1e-15)
    assert math.isnan(r[1].item()) and math.isnan(r[3].item())  # zero variance: undefined
    assert pearson(a, -a)[0].item() == pytest.approx(-1.0, abs=1e-15)
    assert pearson(a, a)[0].item() == 1.0  # exactly
    # a constant row whose float mean is inexact (0.1 * 3 / 3 != 0.1) is still undefined
    assert math.isnan(pearson(torch.full((1, 3), 0.1, dtype=torch.float64),
                              torch.tensor([[1.0, 2.0, 3.0]])).item())
    with pytest.raises(CascadeAdvError, match="same shape"):
        pearson(torch.zeros(2, 3), torch.zeros(3, 2))


# --- choose_images ----------------------------------------------------------------------------


def test_choose_images_fixed_subset():
    ds = load_dataset("digits", "test")
    a = choose_images(ds, 16, seed=7)
    b = choose_images(ds, 16, seed=7)
    assert len(a) == 16 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (a.name, a.split, a.classes) == (ds.name, ds.split, ds.classes)
    assert not torch.equal(a.images, choose_images(ds, 16, seed=8).images)
    # without replacement, labels follow their images, a smaller subset is in the larger one
    flat = ds.images.flatten(1)
    idx = [int((flat == img).all(dim=1).nonzero()[0]) for img in a.images.flatten(1)]
    assert len(set(idx)) == 16 and torch.equal(ds.labels[idx], a.labels)
    big = {tuple(v.tolist()) for v in choose_images(ds, 64, seed=7).images.flatten(1)}
    assert all(tuple(v.tolist()) in big for v in a.images.flatten(1))
    # more images asked than there are: all of them
    small = toy_dataset()
    whole = choose_images(small, 128, seed=7)
    assert torch.equal(whole.images, small.images) and torch.equal(whole.labels, small.labels)


def test_choose_images_rejects_bad_input():
    with pytest.raises(CascadeAdvError, match="n_images"):
        choose_images(toy_dataset(), 1, 0)
    with pytest.raises(CascadeAdvError, match="empty"):
        choose_images(ImageDataset(torch.zeros(0, 1, 2, 2, dtype=torch.uint8),
                                   torch.zeros(0, dtype=torch.int64), "e", "test"), 8, 0)
    with pytest.raises(CascadeAdvError, match="ImageDataset"):
        choose_images(torch.zeros(3, 1, 2, 2), 8, 0)


# --- softmax argument ---------------------------------------------------------------------------


def test_softmax_argument_clean_values_by_hand():
    table = softmax_argument(linear_model(), toy_dataset(), eps=(0, 4, 8), model_name="lin")
    x = PIXELS.astype(np.float64) / 255.0
    z = np_logits(x)
    true = z[np.arange(4), LABELS]
    false = (z.sum(axis=1) - true) / 2
    got = values(table, eps=0.0)
    for method in ("step_ll", "step_fgsm", "random_sign"):  # eps 0 is the clean image
        assert got[(method, 0.0, "true_mean")] == pytest.approx(true.mean(), abs=1e-5)
        assert got[(method, 0.0, "true_std")] == pytest.approx(true.std(ddof=1), abs=1e-5)
        assert got[(method, 0.0, "false_mean")] == pytest.approx(false.mean(), abs=1e-5)
        assert got[(method, 0.0, "false_std")] == pytest.approx(false.std(ddof=1), abs=1e-5)
    # exactly the rows asked for, in order
    assert [(r["attack"], r["eps"], r["metric"]) for r in table] == [
        (m, e, k) for m in ("step_ll", "step_fgsm", "random_sign") for e in (0.0, 4.0, 8.0)
        for k in ("true_mean", "true_std", "false_mean", "false_std")]
    assert {(r["source"], r["model"], r["dataset"], r["split"], r["n"]) for r in table} == {
        ("softmax_argument", "lin", "toy", "test", 4)}


def test_softmax_argument_fgsm_lowers_true_logit():
    table = softmax_argument(linear_model(), toy_dataset(), methods="step_fgsm",
                             eps=(0, 2, 4, 8, 16))
    got = values(table)
    drop = np.abs(W[0]).sum() / 255.0  # per pixel-unit of eps, for both labels (see W)
    base = got[("step_fgsm", 0.0, "true_mean")]
    for e in (2.0, 4.0, 8.0, 16.0):
        assert got[("step_fgsm", e, "true_mean")] == pytest.approx(base - e * drop, abs=1e-5)
        assert got[("step_fgsm", e, "true_std")] == pytest.approx(
            got[("step_fgsm", 0.0, "true_std")], abs=1e-5)
    means = [got[("step_fgsm", e, "true_mean")] for e in (0.0, 2.0, 4.0, 8.0, 16.0)]
    assert means == sorted(means, reverse=True)
    assert {r["attack"] for r in table} == {"step_fgsm"}


def test_softmax_argument_batches_and_seed_do_not_change_results():
    model, ds = linear_model(), toy_dataset()
    one = softmax_argument(model, ds, eps=(0, 8), batch_size=256)
    split = softmax_argument(model, ds, eps=(0, 8), batch_size=3)
    a, b = values(one, attack=["step_ll", "step_fgsm"]), values(split, attack=["step_ll",
                                                                               "step_fgsm"])
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)
    assert one == softmax_argument(model, ds, eps=(0, 8), batch_size=256)  # seeded: repeatable


# --- gradient correlation -----------------------------------------------------------------------


def test_gradient_correlation_linear_model_against_numpy():
    w = np.array([[1.0, -2.0, 0.5, 3.0], [0.5, 1.0, -1.5, 0.2], [-0.3, 0.4, 2.0, -1.0]])
    b = np.array([0.1, -0.2, 0.3])
    labels = np.array([0, 1, 2, 0])
    model, ds = linear_model(w, b), toy_dataset(labels=labels)
    table = gradient_correlation(model, ds, eps=(0, 8, 16), model_name="lin")
    got = values(table)
    for pair in DEFAULT_PAIRS:  # eps 0: both images are the clean one
        assert got[(pair, 0.0, "mean")] == 1.0 and got[(pair, 0.0, "std")] == 0.0
    x = PIXELS.astype(np.float64) / 255.0
    g0 = np_ce_grad(x, labels, w, b)
    for e in (8.0, 16.0):
        x_adv = np.clip(x + e / 255.0 * np.sign(g0), 0.0, 1.0)  # step_FGSM
        g1 = np_ce_grad(x_adv, labels, w, b)
        r = np.array([np.corrcoef(g0[i], g1[i])[0, 1] for i in range(4)])
        assert got[("clean~step_fgsm", e, "mean")] == pytest.approx(r.mean(), abs=1e-5)
        assert got[("clean~step_fgsm", e, "std")] == pytest.approx(r.std(ddof=1), abs=1e-5)
    assert [(r["attack"], r["eps"], r["metric"]) for r in table] == [
        (p, e, k) for p in DEFAULT_PAIRS for e in (0.0, 8.0, 16.0) for k in ("mean", "std")]
    assert {(r["source"], r["n"], r["model"]) for r in table} == {("gradient_correlation", 4,
                                                                   "lin")}


def test_gradient_correlation_leaves_out_zero_gradients():
    # image 0 is bright and saturates class 0 (softmax exactly one-hot in float32, so its
    # gradient is exactly zero); the other images have a defined correlation
    w = np.array([[1000.0, 2000.0, 3000.0, 4000.0], [1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    b = np.zeros(3)
    pixels = np.array([[200, 200, 200, 200], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    labels = np.array([0, 1, 2])
    ds = toy_dataset(pixels, labels)
    table = gradient_correlation(linear_model(w, b), ds, eps=(0, 4),
                                 pairs=["clean~step_fgsm"])
    assert {r["n"] for r in table} == {2}
    assert values(table)[("clean~step_fgsm", 0.0, "mean")] == 1.0
    # with one image left a cell has a mean but no std; with none, no rows
    one = gradient_correlation(linear_model(w, b), toy_dataset(pixels[:2], labels[:2]),
                               eps=(0,), pairs="clean~step_ll")
    assert [(r["metric"], r["n"]) for r in one] == [("mean", 1)]
    none = gradient_correlation(linear_model(np.zeros((3, 4)), b), ds, eps=(0, 4))
    assert len(none) == 0


# --- bad input ------------------------------------------------------------------------------


class _TupleModel(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3], x


@pytest.mark.parametrize("analysis", [softmax_argument, gradient_correlation])
@pytest.mark.parametrize("model", [nn.Conv2d(1, 3, 1), _TupleModel(), linear_model()[:1],
                                   nn.Sequential(nn.Flatten(), nn.Linear(4, 2))],
                         ids=["4d", "tuple", "features", "too-few-columns"])
def test_non_logit_output_is_rejected(analysis, model):
    with pytest.raises(CascadeAdvError, match=r"needs the logits \[N, classes\]"):
        analysis(model, toy_dataset(), eps=(0, 4))


def test_bad_arguments_are_rejected():
    model, ds = linear_model(), toy_dataset()
    with pytest.raises(CascadeAdvError, match="step_ll, step_fgsm, random_sign"):
        softmax_argument(model, ds, methods=("step_ll", "iter_foo"))
    with pytest.raises(CascadeAdvError, match="clean~step_ll"):
        gradient_correlation(model, ds, pairs=("clean~iter_foo",))
    for fn in (softmax_argument, gradient_correlation):
        with pytest.raises(CascadeAdvError, match="n_images"):
            fn(model, ds, n_images=1)
        with pytest.raises(CascadeAdvError, match=r"\[0, 255\]"):
            fn(model, ds, eps=(0, 300))
        with pytest.raises(CascadeAdvError, match="eps is empty"):
            fn(model, ds, eps=())
        with pytest.raises(CascadeAdvError, match="empty"):
            fn(model, ImageDataset(torch.zeros(0, 1, 2, 2, dtype=torch.uint8),
                                   torch.zeros(0, dtype=torch.int64), "e", "test"))
        with pytest.raises(CascadeAdvError, match="batch_size"):
            fn(model, ds, batch_size=0)


# --- a tiny ResNet on real digits -----------------------------------------------------------


def test_tiny_resnet_on_digits_gives_finite_rows():
    torch.manual_seed(0)
    model = build_model({"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 8,
                         "num_classes": 10})
    ds = load_dataset("digits", "test")
    model.train()
    soft = softmax_argument(model, ds, n_images=16, eps=(0, 4, 8), model_name="tiny",
                            model_hash="abc")
    grad = gradient_correlation(model, ds, n_images=16, eps=(0, 4, 8), model_name="tiny",
                                model_hash="abc")
    assert model.training  # inference mode only during the analyses
    assert len(soft) == 3 * 3 * 4 and len(grad) == 4 * 3 * 2
    for r in [*soft, *grad]:
        assert math.isfinite(r["value"]) and r["n"] == 16
        assert (r["model"], r["model_hash"], r["dataset"], r["split"]) == ("tiny", "abc",
                                                                           "digits", "test")
    for r in grad:
        assert -1.0 <= r["value"] <= 1.0 or r["metric"] == "std"
    # the same images and seed give the same numbers
    assert soft == softmax_argument(model, ds, n_images=16, eps=(0, 4, 8), model_name="tiny",
                                    model_hash="abc")


def test_random_sign_is_one_direction_scaled_with_eps():
    """N18 figs. 4-6 follow one random sign vector per image as epsilon grows."""
    from cascade_adv.analysis._common import along_direction

    x = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    out = along_direction(torch.nn.Identity(), "random_sign", x, y, [4.0, 8.0], g).x_adv
    d4, d8 = out[:3] - x, out[3:] - x
    assert torch.allclose(d8, 2 * d4, atol=1e-6)
    assert torch.allclose(d4.abs(), torch.full_like(d4, 4 / 255), atol=1e-6)
