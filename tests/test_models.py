"""CIFAR-style ResNet-(6n+2) (N18 section 3.3, K17 sections 4.3 and appendix D) and
its checkpoints (safetensors with the config in the metadata)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from cascade_adv.errors import CheckpointError
from cascade_adv.models import (
    WEIGHTS_FILE,
    ModelConfig,
    ReluDecay,
    ResNet,
    build_model,
    load_model,
    read_model_config,
    save_model,
    weights_hash,
)

TINY = {"depth": 8, "in_channels": 1, "input_size": 8}


def tiny(seed=0, **overrides) -> ResNet:
    torch.manual_seed(seed)
    return build_model({**TINY, **overrides})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_params(depth: int, in_channels: int = 3, num_classes: int = 10,
                    shortcut: str = "A") -> int:
    """Hand count: 3x3 convs without bias, BN (2 per channel), shortcuts where the shape
    changes (A: none; B: 1x1 conv + BN), global pooling, one linear layer."""
    n = (depth - 2) // 6
    bn = lambda c: 2 * c
    total = in_channels * 16 * 9 + bn(16)  # stem
    cin = 16
    for cout in (16, 32, 64):
        for i in range(n):
            total += cin * cout * 9 + bn(cout) + cout * cout * 9 + bn(cout)
            if cin != cout and shortcut == "B":
                total += cin * cout + bn(cout)
            cin = cout
    return total + 64 * num_classes + num_classes


# --- architecture ------------------------------------------------------------------------------


def test_resnet20_parameter_count():
    # He et al. (2016) table 6: ResNet-20 for CIFAR-10 has 0.27M parameters (option A)
    assert expected_params(20) == 269_722
    assert n_params(build_model({"depth": 20})) == 269_722
    assert round(n_params(build_model({"depth": 20})) / 1e6, 2) == 0.27
    # option B adds two 1x1 convolutions with BatchNorm: 16*32 + 64 and 32*64 + 128
    assert expected_params(20, shortcut="B") == 272_474 == 269_722 + 576 + 2176
    assert n_params(build_model({"depth": 20, "shortcut": "B"})) == 272_474


@pytest.mark.parametrize(
    "depth,count", [(32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)]
)
def test_deeper_resnet_parameter_counts(depth, count):
    # 97216 n - 21926 for depth = 6n + 2 (3 input channels, 10 classes, option A);
    # He et al. table 6: ResNet-56 0.85M, ResNet-110 1.7M
    assert expected_params(depth) == count == 97_216 * ((depth - 2) // 6) - 21_926
    model = build_model({"depth": depth})
    assert n_params(model) == count
    assert len(model.blocks) == 3 * ((depth - 2) // 6)


def test_parameter_count_follows_channels_and_classes():
    model = build_model({"depth": 20, "in_channels": 1, "num_classes": 7})
    assert n_params(model) == expected_params(20, in_channels=1, num_classes=7)
    assert n_params(model) == 269_722 - 2 * 16 * 9 - 3 * 65


def test_option_a_shortcut_is_avg_pool_and_zero_channels():
    """He et al.'s option A (and the N18 authors' ``residual_block``): 2x2 average pool
    with stride 2, then the new channels as zeros; no parameters."""
    from cascade_adv.models.resnet import PadShortcut

    block = build_model({"depth": 20}).blocks[3]  # first block of stage 2: 16 -> 32, stride 2
    assert isinstance(block.shortcut, PadShortcut)
    assert n_params(block.shortcut) == 0 and not list(block.shortcut.buffers())
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    want = torch.zeros(1, 5, 2, 2)
    # channel 0 holds 0..15 row by row: the 2x2 windows average to 2.5, 4.5, 10.5, 12.5
    want[0, 0] = torch.tensor([[2.5, 4.5], [10.5, 12.5]])
    want[0, 1] = want[0, 0] + 16
    assert torch.equal(PadShortcut(2, 5, 2)(x), want)
    # odd sizes (MNIST's 7x7 -> 4x4, like the strided 3x3 convolution): the last window
    # averages the pixels it covers (TensorFlow's SAME average pool)
    odd = PadShortcut(1, 1, 2)(torch.arange(9.0).view(1, 1, 3, 3))
    assert torch.equal(odd, torch.tensor([[[[2.0, 3.5], [6.5, 8.0]]]]))
    assert torch.equal(PadShortcut(3, 3, 1)(x[:, :1].expand(1, 3, 4, 4)), x[:, :1].expand(1, 3, 4, 4))


def test_option_b_shortcut_is_projection():
    block = build_model({"depth": 20, "shortcut": "B"}).blocks[3]
    conv, bn = block.shortcut
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert isinstance(bn, nn.BatchNorm2d)


def test_batchnorm_options_reach_every_layer():
    tf = build_model({"depth": 20, "bn_momentum": 0.001, "bn_eps": 1e-3, "shortcut": "B"})
    bns = [m for m in tf.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 * 9 + 2  # stem, two per block, two option-B shortcuts
    assert all(m.momentum == 0.001 and m.eps == 1e-3 for m in bns)
    default = [m for m in build_model({"depth": 8}).modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 and m.eps == 1e-5 for m in default)
    # TF's decay 0.999 is PyTorch's momentum 0.001: one training step moves the running
    # mean by 0.001 of the batch mean
    net = build_model({**TINY, "bn_momentum": 0.001}).train()
    x = torch.rand(4, 1, 8, 8)
    net(x)
    batch_mean = net.conv1(x).mean((0, 2, 3))
    torch.testing.assert_close(net.bn1.running_mean, 0.001 * batch_mean)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_xavier_init_is_glorot_uniform_with_zero_biases(shortcut):
    """model.init xavier (the N18 authors' xavier_initializer): every convolution and
    linear weight uniform on +-sqrt(6 / (fan_in + fan_out)), biases zero."""
    torch.manual_seed(0)
    net = build_model({"depth": 20, "init": "xavier", "shortcut": shortcut})
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 1 + 2 * 9 + (2 if shortcut == "B" else 0) + 1
    for m in layers:
        w = m.weight.detach()
        field = w[0, 0].numel() if w.dim() == 4 else 1
        fan_in, fan_out = w.shape[1] * field, w.shape[0] * field
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max() <= bound
        # uniform on [-bound, bound]: std bound / sqrt(3), and it reaches near the bound
        assert abs(w.std().item() - bound / 3 ** 0.5) < 0.15 * bound / 3 ** 0.5
        assert w.abs().max() > 0.9 * bound
        if m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    # the 64 -> 10 layer: bound sqrt(6 / 74) = 0.2847, std 0.1644 (Kaiming's PyTorch
    # default linear layer: bound 1 / sqrt(64) = 0.125)
    assert net.fc.weight.abs().max() > 0.125
    assert net.fc.weight.abs().max() <= (6 / 74) ** 0.5


def test_kaiming_init_is_the_default_and_unchanged():
    a = build_model({"depth": 8})
    assert a.config.init == "kaiming"
    torch.manual_seed(3)
    a = build_model({"depth": 8})
    torch.manual_seed(3)
    b = build_model({"depth": 8, "init": "kaiming"})
    torch.manual_seed(3)
    c = build_model({"depth": 8, "init": "xavier"})
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                   b.state_dict().values()))
    # fan-out normal: std sqrt(2 / (9 * 16)) for a 3x3 16 -> 16 convolution
    w = a.blocks[0].conv1.weight
    assert abs(w.std().item() - (2 / (9 * 16)) ** 0.5) < 0.01
    assert not torch.equal(a.blocks[0].conv1.weight, c.blocks[0].conv1.weight)
    with pytest.raises(ValidationError, match="kaiming"):
        ModelConfig(init="glorot")


def test_shortcut_option_is_resnet_only():
    with pytest.raises(ValidationError, match="shortcut applies to arch resnet only"):
        ModelConfig(arch="inception_v3", input_size=75, shortcut="A")


def test_checkpoints_without_shortcut_load_as_option_b(tmp_path):
    """Checkpoints written before the option existed were built with 1x1 shortcuts."""
    import json

    from safetensors import safe_open

    old = build_model({**TINY, "shortcut": "B"})
    save_model(old, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    stored = json.loads(meta["config"])
    for key in ("shortcut", "bn_momentum", "bn_eps"):
        stored.pop(key)
    save_file(state, str(tmp_path / "old.safetensors"),
              metadata={**meta, "config": json.dumps(stored)})
    assert read_model_config(tmp_path / "old.safetensors").shortcut == "B"
    loaded = load_model(tmp_path / "old.safetensors")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), old.eval()(x))


@pytest.mark.parametrize("depth", [21, 19, 22, 0, 2])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValidationError):
        ModelConfig(depth=depth)
    with pytest.raises(ValidationError):
        build_model({"depth": depth})


def test_config_rejects_unknown_fields_and_bad_values():
    with pytest.raises(ValidationError):
        ModelConfig(depth=20, dropout=0.5)
    with pytest.raises(ValidationError):
        ModelConfig(activation="gelu")
    with pytest.raises(ValidationError):
        ModelConfig(width=0)
    assert ModelConfig(depth=14).depth == 14


@pytest.mark.parametrize("channels,size", [(3, 24), (1, 28), (3, 32), (1, 8)])
def test_output_shapes(channels, size):
    torch.manual_seed(0)
    model = build_model(
        {"depth": 8, "in_channels": channels, "input_size": size, "num_classes": 10}
    )
    model.eval()
    x = torch.rand(3, channels, size, size)
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
        emb = model.embedding(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert feats.shape == (3, 64)
    torch.testing.assert_close(emb, out, rtol=0, atol=0)  # N18: embedding = logits
    assert torch.isfinite(out).all()


def test_number_of_classes():
    model = tiny(num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize(
    "width,channels", [(1.0, (16, 32, 64)), (2.0, (32, 64, 128)), (0.5, (8, 16, 32))]
)
def test_width_multiplier_scales_channels(width, channels):
    model = tiny(width=width)
    assert model.conv1.out_channels == channels[0]
    assert model.blocks[0].conv1.out_channels == channels[0]
    assert model.blocks[1].conv2.out_channels == channels[1]
    assert model.blocks[2].conv2.out_channels == channels[2]
    assert model.fc.in_features == channels[2]
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_width_2_has_about_4_times_the_parameters():
    base = n_params(build_model({"depth": 20}))
    wide = n_params(build_model({"depth": 20, "width": 2}))
    assert 3.8 < wide / base < 4.0  # convs scale by rho^2, BN and fc by rho


ACT_TYPES = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "relu_decay": ReluDecay,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}
ACT_CLASSES = tuple(ACT_TYPES.values())


@pytest.mark.parametrize("activation", list(ACT_TYPES))
def test_activation_choice_is_used_everywhere(activation):
    model = tiny(activation=activation, depth=14).eval()
    acts = [m for m in model.modules() if isinstance(m, ACT_CLASSES)]
    # stem + two per basic block
    assert len(acts) == 1 + 2 * len(model.blocks) == 13
    assert all(type(m) is ACT_TYPES[activation] for m in acts)
    calls = []
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.append(mod)) for m in acts]
    with torch.no_grad():
        model(torch.rand(2, 1, 8, 8))
    for h in hooks:
        h.remove()
    assert len(calls) == len(acts) and {id(m) for m in calls} == {id(m) for m in acts}


def test_activations_change_the_function():
    """Same weights, another activation: other logits (so the choice is really applied)."""
    outs = {}
    x = torch.rand(4, 1, 8, 8)
    state = tiny(seed=3).state_dict()
    for act in ACT_TYPES:
        model = tiny(seed=3, activation=act)
        model.load_state_dict(state)
        model.eval()
        # scale the stem so that some activations exceed 6 (relu6 differs from relu)
        with torch.no_grad():
            model.conv1.weight.mul_(20)
            outs[act] = model(x)
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_relu_decay_formula():
    beta = 0.1
    act = ReluDecay(beta)
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0, 10.0, 100.0], dtype=torch.float64)
    # hand values of relu(x) / (1 + beta relu(x)^2)
    expected = torch.tensor(
        [0.0, 0.0, 0.0, 0.5 / 1.025, 2.0 / 1.4, 10.0 / 11.0, 100.0 / 1001.0], dtype=torch.float64
    )
    torch.testing.assert_close(act(x), expected, rtol=1e-12, atol=0)
    model = tiny(activation="relu_decay", relu_decay_beta=0.01)
    betas = {m.beta for m in model.modules() if isinstance(m, ReluDecay)}
    assert betas == {0.01}
    assert ReluDecay(0.01)(torch.tensor([10.0])).item() == pytest.approx(10.0 / 2.0)


def test_relu6_caps_at_6():
    model = tiny(activation="relu6")
    act = next(m for m in model.modules() if isinstance(m, nn.ReLU6))
    torch.testing.assert_close(act(torch.tensor([-1.0, 3.0, 7.0])), torch.tensor([0.0, 3.0, 6.0]))


# --- per-pixel mean normalisation -----------------------------------------------------------------


def test_per_pixel_mean_is_subtracted_first():
    model = tiny(seed=1, input_size=8)
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(1, 8, 8, generator=g)
    model.set_mean_image(mean)
    model.eval()
    plain = tiny(seed=2, normalize="none")
    state = {k: v for k, v in model.state_dict().items() if k != "normalize.mean"}
    plain.load_state_dict(state, strict=True)
    plain.eval()
    x = torch.rand(5, 1, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x - mean), rtol=0, atol=1e-6)
        assert not torch.allclose(model(x), plain(x), atol=1e-3)  # the mean matters

    seen = []
    h = model.conv1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    torch.testing.assert_close(seen[0], x - mean, rtol=0, atol=0)


def test_normalize_none_has_no_mean_buffer_in_state():
    model = tiny(normalize="none")
    assert "normalize.mean" not in model.state_dict()
    assert "normalize.mean" in tiny().state_dict()
    x = torch.rand(2, 1, 8, 8)
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    with torch.no_grad():
        model.eval()(x)
    assert torch.equal(seen[0], x)


def test_set_mean_image_center_crops():
    torch.manual_seed(0)
    model = build_model({"depth": 8, "in_channels": 3, "input_size": 24})
    mean = torch.rand(3, 32, 32)
    model.set_mean_image(mean)
    assert torch.equal(model.normalize.mean, mean[:, 4:28, 4:28])
    same = torch.rand(3, 24, 24)
    model.set_mean_image(same)
    assert torch.equal(model.normalize.mean, same)
    for bad in (
        torch.rand(1, 32, 32),
        torch.rand(3, 20, 32),
        torch.rand(3, 32, 20),
        torch.rand(32, 32),
    ):
        with pytest.raises(ValueError):
            model.set_mean_image(bad)


# --- checkpoints -----------------------------------------------------------------------------------


def trained_tiny(seed=0, **overrides) -> ResNet:
    """A tiny model with a mean image and non-default BatchNorm statistics."""
    model = tiny(seed, **overrides)
    model.set_mean_image(torch.rand(model.config.in_channels, 8, 8))
    model.train()
    with torch.no_grad():
        model(torch.rand(8, model.config.in_channels, 8, 8))
    return model.eval()


def test_save_load_round_trip(tmp_path):
    model = trained_tiny(width=0.5, activation="elu", num_classes=4)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config == model.config
    loaded.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert read_model_config(path) == model.config
    # a checkpoint folder holding model.safetensors is accepted too
    save_model(model, tmp_path / "final" / WEIGHTS_FILE)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "final").eval()(x), model(x))
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic write leaves no temporaries


def test_round_trip_without_mean(tmp_path):
    model = tiny(normalize="none").eval()
    save_model(model, tmp_path / "m.safetensors")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m.safetensors").eval()(x), model(x))


def test_load_with_other_expected_config_names_the_field(tmp_path):
    model = tiny()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    assert load_model(path, expected=ModelConfig(**TINY)).config == model.config
    other = ModelConfig(**{**TINY, "depth": 14})
    with pytest.raises(CheckpointError, match="depth") as info:
        load_model(path, expected=other)
    msg = str(info.value)
    assert "8" in msg and "14" in msg
    assert "width" not in msg and "activation" not in msg  # only the differing fields
    with pytest.raises(CheckpointError, match="activation"):
        load_model(path, expected=ModelConfig(**{**TINY, "activation": "tanh"}))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no model weights"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "empty_dir")
    with pytest.raises(CheckpointError):
        weights_hash(tmp_path / "nope.safetensors")


def test_corrupted_checkpoints_raise_checkpoint_error(tmp_path):
    model = tiny()
    good = tmp_path / "good.safetensors"
    save_model(model, good)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) - 100],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "header_flip": data[:20] + b"\x00" + data[21:],
    }
    for name, payload in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(payload)
        with pytest.raises(CheckpointError):
            load_model(p)

    def write(name, tensors, meta):
        p = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(p), metadata=meta)
        return p

    cfg_json = model.config.model_dump_json()
    with pytest.raises(CheckpointError, match="no model config"):
        load_model(write("nometa", {"a": torch.zeros(2)}, None))
    with pytest.raises(CheckpointError):
        load_model(write("badjson", {"a": torch.zeros(2)}, {"config": "{not json"}))
    with pytest.raises(CheckpointError):
        load_model(write("badschema", {"a": torch.zeros(2)}, {"config": '{"depth": 21}'}))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(write("wrongtensors", {"a": torch.zeros(2)}, {"config": cfg_json}))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(write("wrongshape", state, {"config": cfg_json}))


def test_weights_hash_is_stable_and_content_based(tmp_path):
    model = trained_tiny()
    a, b = tmp_path / "a.safetensors", tmp_path / "b" / WEIGHTS_FILE
    save_model(model, a)
    h = weights_hash(a)
    assert len(h) == 16 and int(h, 16) >= 0
    assert weights_hash(a) == h  # same file, same hash
    # same weights and config saved again (safetensors orders its metadata map at
    # random, so raw file bytes differ between saves): always the same hash
    for _ in range(10):
        save_model(model, b)
        assert weights_hash(b) == h and weights_hash(tmp_path / "b") == h
    save_model(load_model(a), tmp_path / "c.safetensors")
    assert weights_hash(tmp_path / "c.safetensors") == h  # survives a round trip
    # another weight: another hash
    changed = load_model(a)
    with torch.no_grad():
        changed.fc.bias[0] += 1e-3
    save_model(changed, tmp_path / "d.safetensors")
    assert weights_hash(tmp_path / "d.safetensors") != h
    # same weights, another config (beta is unused by relu): another hash
    other_cfg = load_model(a)
    other_cfg.config = other_cfg.config.model_copy(update={"relu_decay_beta": 0.5})
    save_model(other_cfg, tmp_path / "e.safetensors")
    assert weights_hash(tmp_path / "e.safetensors") != h
    # a file that is not safetensors is hashed as its bytes
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(b"not a checkpoint")
    assert weights_hash(raw) == hashlib.sha256(b"not a checkpoint").hexdigest()[:16]
