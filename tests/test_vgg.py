"""The VGG layer table, truncation, FLOP count, receptive field and the torch module."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from styleengine.model.network import VGGFeatures
from styleengine.model.vgg import (
    gflop,
    layer_names,
    layer_table,
    receptive_field,
    resolve,
    truncated,
)
from styleengine.engine.steps import build_network

STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]

# torchvision's `features` Sequential, written out independently of the code:
# conv indices and pool indices (vgg19: cfg "E", vgg16: cfg "D")
TV_CONVS = {
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
TV_POOLS = {"vgg19": [4, 9, 18, 27, 36], "vgg16": [4, 9, 16, 23, 30]}
CONVS_PER_BLOCK = {"vgg19": [2, 2, 4, 4, 4], "vgg16": [2, 2, 3, 3, 3]}
CHANNELS = [64, 128, 256, 512, 512]


@pytest.mark.parametrize("model,n_conv", [("vgg19", 16), ("vgg16", 13)])
def test_layer_counts(model, n_conv):
    table = layer_table(model)
    kinds = [layer.kind for layer in table]
    assert kinds.count("conv") == n_conv
    assert kinds.count("relu") == n_conv
    assert kinds.count("pool") == 5
    assert len(table) == 2 * n_conv + 5
    assert [layer.index for layer in table] == list(range(len(table)))


@pytest.mark.parametrize("model", ["vgg19", "vgg16"])
def test_names_and_torchvision_indices(model):
    table = layer_table(model)
    want_names = []
    for block, n in enumerate(CONVS_PER_BLOCK[model], start=1):
        for c in range(1, n + 1):
            want_names += [f"conv{block}_{c}", f"relu{block}_{c}"]
        want_names.append(f"pool{block}")
    assert layer_names(model) == want_names
    assert [layer.index for layer in table if layer.kind == "conv"] == TV_CONVS[model]
    assert [layer.index for layer in table if layer.kind == "pool"] == TV_POOLS[model]
    for layer in table:  # every relu directly follows its conv
        if layer.kind == "relu":
            prev = table[layer.index - 1]
            assert prev.kind == "conv" and prev.name == layer.name.replace("relu", "conv")


@pytest.mark.parametrize("name,index", [("conv1_1", 0), ("relu1_1", 1), ("pool1", 4), ("conv2_1", 5),
                                        ("conv3_1", 10), ("pool3", 18), ("conv4_1", 19), ("relu4_1", 20),
                                        ("conv4_2", 21), ("relu4_2", 22), ("conv4_3", 23), ("pool4", 27),
                                        ("conv5_1", 28), ("relu5_1", 29), ("conv5_4", 34), ("pool5", 36)])
def test_vgg19_known_indices(name, index):
    # neural-style / the PyTorch tutorial: style at features 0, 5, 10, 19, 28; content conv4_2 = 21
    (layer,) = resolve("vgg19", [name])
    assert layer.index == index


@pytest.mark.parametrize("name,index", [("conv4_1", 17), ("relu4_2", 20), ("conv4_3", 21), ("conv5_1", 24),
                                        ("relu5_1", 25), ("conv5_3", 28), ("pool5", 30)])
def test_vgg16_known_indices(name, index):
    (layer,) = resolve("vgg16", [name])
    assert layer.index == index


@pytest.mark.parametrize("model", ["vgg19", "vgg16"])
def test_channels_and_strides(model):
    for layer in layer_table(model):
        block = int(layer.name[4])  # conv3_2, relu3_2, pool3
        if layer.kind == "pool":
            assert layer.in_channels == layer.out_channels == CHANNELS[block - 1]
            assert layer.stride == 2**block
        else:
            assert layer.out_channels == CHANNELS[block - 1]
            assert layer.stride == 2 ** (block - 1)
    assert resolve(model, ["conv1_1"])[0].in_channels == 3
    assert resolve(model, ["conv2_1"])[0].in_channels == 64
    assert resolve(model, ["conv5_1"])[0].in_channels == 512


def test_unknown_layer_and_model_are_named():
    with pytest.raises(ValueError, match="conv6_1"):
        resolve("vgg19", ["relu1_1", "conv6_1"])
    with pytest.raises(ValueError, match="conv5_4"):
        resolve("vgg16", ["conv5_4"])
    with pytest.raises(ValueError, match="vgg11"):
        layer_table("vgg11")


@pytest.mark.parametrize("model,names,last", [
    ("vgg19", ["relu4_2"] + STYLE, "relu5_1"),
    ("vgg19", ["relu4_2"], "relu4_2"),
    ("vgg19", ["conv5_1", "relu1_1"], "conv5_1"),
    ("vgg19", ["pool2"], "pool2"),
    ("vgg16", ["relu4_2"] + STYLE, "relu5_1"),
])
def test_truncation_after_deepest(model, names, last):
    cut = truncated(model, names)
    assert cut[-1].name == last
    assert [layer.name for layer in cut] == layer_names(model)[: len(cut)]
    net = VGGFeatures(model, names)
    assert len(net.features) == len(cut)
    deepest_conv = max(layer.index for layer in cut if layer.kind == "conv")
    assert f"features.{deepest_conv}.weight" in net.state_dict()
    assert not any(int(k.split(".")[1]) > cut[-1].index for k in net.state_dict())


def test_default_loss_network_stops_at_relu5_1(vgg19_random):
    net = build_network(vgg19_random, ["relu4_2"] + STYLE, "avg")
    assert len(net.features) == 30  # indices 0..29
    assert "features.28.weight" in net.state_dict() and "features.30.weight" not in net.state_dict()
    assert all(not p.requires_grad for p in net.parameters())


# --- FLOP count (METHOD.md: forward 189 GFLOP at 512, 757 at 1024, VGG19 to conv5_1)


def _conv_gflop_by_hand(model: str, last: str, h: int, w: int) -> float:
    total = 0.0
    for layer in truncated(model, [last]):
        if layer.kind == "pool":
            h, w = h // 2, w // 2
        elif layer.kind == "conv":
            total += 2 * 9 * layer.in_channels * layer.out_channels * h * w
    return total / 1e9


@pytest.mark.parametrize("size,want", [(512, 189.3), (1024, 757.4)])
def test_gflop_forward_matches_method(size, want):
    g = gflop("vgg19", ["relu4_2"], STYLE, size, size)
    assert g["forward"] == pytest.approx(want, abs=0.05)
    assert g["backward"] == g["forward"]
    assert gflop("vgg19", [], ["conv5_1"], size, size)["forward"] == pytest.approx(want, abs=0.05)


def test_gflop_gram_term_and_total():
    g = gflop("vgg19", ["relu4_2"], STYLE, 512, 512)
    # G = F F^T and (G - A) F: 2 C^2 M each per style layer
    want_gram = sum(4 * c * c * m for c, m in [(64, 512**2), (128, 256**2), (256, 128**2), (512, 64**2),
                                               (512, 32**2)]) / 1e9
    assert g["gram"] == pytest.approx(want_gram, rel=1e-12)
    assert g["total"] == pytest.approx(2 * g["forward"] + g["gram"], rel=1e-12)
    # METHOD.md says "about 406" (Gram ~7%); this count gives 397 (Gram ~4.8%)
    assert g["total"] == pytest.approx(406, rel=0.05)
    assert gflop("vgg19", ["relu4_2"], STYLE, 1024, 1024)["total"] == pytest.approx(1620, rel=0.05)


def test_gflop_linear_in_pixels_and_odd_sizes():
    g512 = gflop("vgg19", ["relu4_2"], STYLE, 512, 512)
    g1024 = gflop("vgg19", ["relu4_2"], STYLE, 1024, 1024)
    assert g1024["forward"] == pytest.approx(4 * g512["forward"], rel=1e-12)
    assert g1024["total"] == pytest.approx(4 * g512["total"], rel=1e-12)
    for h, w in [(33, 47), (100, 75), (511, 513)]:
        assert gflop("vgg19", [], ["conv5_1"], h, w)["forward"] == pytest.approx(
            _conv_gflop_by_hand("vgg19", "conv5_1", h, w), rel=1e-12)


# --- receptive field (METHOD / issue 5: relu5_1 sees 156 px)


@pytest.mark.parametrize("model,name,rf", [("vgg19", "conv1_1", 3), ("vgg19", "relu1_2", 5), ("vgg19", "pool1", 6),
                                           ("vgg19", "conv2_1", 10), ("vgg19", "relu5_1", 156),
                                           ("vgg19", "conv5_1", 156), ("vgg16", "relu5_1", 132)])
def test_receptive_field(model, name, rf):
    assert receptive_field(model, name) == rf


def test_receptive_field_matches_gradient_support():
    """The input gradient of one relu5_1 unit is non-zero on exactly 156 x 156 pixels."""
    net = VGGFeatures("vgg19", ["relu5_1"], "avg")
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, nn.Conv2d):  # positive weights and bias: every ReLU passes
                m.weight.fill_(1.0 / (9 * m.in_channels))
                m.bias.fill_(0.1)
    size = 176  # 11 positions at relu5_1; take one in the middle
    x = torch.rand(1, 3, size, size, requires_grad=True)
    out = net(x, ["relu5_1"])["relu5_1"]
    assert out.shape[-2:] == (11, 11)
    (grad,) = torch.autograd.grad(out[0, 0, 5, 5], x)
    nz = grad[0].abs().sum(0) > 0
    rows, cols = nz.any(1).nonzero().flatten(), nz.any(0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 156
    assert cols.max() - cols.min() + 1 == 156


# --- the torch module


def test_pooling_modules():
    assert all(not isinstance(m, nn.MaxPool2d) for m in VGGFeatures("vgg19", ["pool4"], "avg").features)
    avg = [m for m in VGGFeatures("vgg19", ["pool4"], "avg").features if isinstance(m, nn.AvgPool2d)]
    mx = [m for m in VGGFeatures("vgg19", ["pool4"], "max").features if isinstance(m, nn.MaxPool2d)]
    assert len(avg) == 4 and len(mx) == 4
    assert VGGFeatures("vgg19", ["pool4"]).pooling == "avg"  # the paper's choice is the default
    with pytest.raises(ValueError, match="median"):
        VGGFeatures("vgg19", ["pool4"], "median")  # type: ignore[arg-type]


def _reference_forward(state, model, x, pooling, upto_index):
    """torchvision's forward, written with F.* and hard-coded indices."""
    outs = {}
    for i in range(upto_index + 1):
        if i in TV_CONVS[model]:
            x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1)
        elif i in TV_POOLS[model]:
            x = F.avg_pool2d(x, 2, 2) if pooling == "avg" else F.max_pool2d(x, 2, 2)
        else:
            x = F.relu(x)
        outs[i] = x
    return outs


@pytest.mark.parametrize("model", ["vgg19", "vgg16"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_forward_matches_reference(random_weights, make_image, model, pooling):
    w = random_weights(model, 0)
    names = ["conv1_1", "relu2_1", "pool2", "relu4_2", "relu5_1"]
    net = build_network(w, names, pooling)
    x = make_image(20, 28, seed=1)
    got = net(x, names)
    assert set(got) == set(names)
    ref = _reference_forward(w.state, model, x, pooling, max(layer.index for layer in resolve(model, names)))
    for layer in resolve(model, names):
        torch.testing.assert_close(got[layer.name], ref[layer.index], rtol=1e-5, atol=1e-5)
    # max and avg really differ
    other = build_network(w, names, "max" if pooling == "avg" else "avg")(x, names)
    assert not torch.allclose(other["pool2"], got["pool2"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("h,w", [(20, 24), (33, 47), (17, 16)])
def test_odd_sizes_floor_like_torch(vgg19_random, make_image, pooling, h, w):
    names = ["relu1_1", "pool1", "relu2_1", "pool2", "relu3_1", "pool3", "relu4_1", "pool4", "relu5_1"]
    net = build_network(vgg19_random, names, pooling)
    out = net(make_image(h, w), names)
    hh, ww = h, w
    for name in names:
        if name.startswith("pool"):
            hh, ww = hh // 2, ww // 2
        assert out[name].shape[-2:] == (hh, ww), name
        assert out[name].shape[1] == resolve("vgg19", [name])[0].out_channels
        assert torch.isfinite(out[name]).all()
    assert (out["relu3_1"] >= 0).all()


def test_relu_output_is_relu_of_conv(vgg19_random, make_image):
    net = build_network(vgg19_random, ["conv3_1", "relu3_1"], "avg")
    out = net(make_image(24, 24), ["conv3_1", "relu3_1"])
    assert (out["conv3_1"] < 0).any()
    torch.testing.assert_close(out["relu3_1"], out["conv3_1"].clamp_min(0), rtol=0, atol=0)


@pytest.mark.parametrize("precision, conv", [("fp32", "direct"), ("fp32", "auto"), ("bf16", "auto")])
def test_torch_step_runs_on_the_weights_own_tensors_and_leaves_them(random_weights, make_image, precision, conv):
    """fp32 on the CPU: the network's convolutions are the weights' tensors (no second copy); bf16 has
    its own; no step writes to them either way (Winograd's flipped kernels, the bf16 cast)."""
    from styleengine.engine.losses import LossConfig
    from styleengine.engine.steps import TorchStep, make_targets

    weights = random_weights("vgg19")
    before = {k: v.clone() for k, v in weights.state.items()}
    loss = LossConfig()
    step = TorchStep(weights, loss, precision=precision, conv=conv)
    shared = {p.data_ptr() for p in step.net.parameters()} & {v.data_ptr() for v in weights.state.values()}
    params = len(list(step.net.parameters()))
    assert len(shared) == (params if precision == "fp32" else 0)
    image = make_image(32, 48, seed=1)
    step.set_targets(make_targets(step, loss, image, [make_image(32, 32, seed=2)]))
    for _ in range(2):
        step(make_image(32, 48, seed=3))
    assert all(torch.equal(weights.state[k], v) for k, v in before.items())


def test_a_step_cannot_change_weights_given_as_parameters(random_weights):
    """Weights built from Parameters (state_dict(keep_vars=True)): the network gets its own tensor objects on
    their storage, so casting it (bf16) or freezing it leaves the caller's tensors as they were."""
    import dataclasses

    from styleengine.engine.losses import LossConfig
    from styleengine.engine.steps import TorchStep

    base = random_weights("vgg16")
    params = {k: nn.Parameter(v.clone()) for k, v in base.state.items()}
    weights = dataclasses.replace(base, state=params)
    for precision in ("bf16", "fp32"):
        TorchStep(weights, LossConfig(), precision=precision, conv="direct")
    assert all(p.dtype == torch.float32 and p.requires_grad and isinstance(p, nn.Parameter) for p in params.values())
    assert all(torch.equal(params[k], v) for k, v in base.state.items())
