"""Winograd (NNPACK) 3x3 convolutions of the torch step: the layer against float64, the choice of
algorithm, the whole step against float64 (random and, where shared, real VGG16 weights)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from styleengine.engine.steps import TorchStep, make_targets
from styleengine.engine.stylise import Settings
from styleengine.engine.winograd import MIN_POSITIONS, WinogradConv3x3, resolve_conv, use_winograd, winograd_available
from styleengine.errors import ConfigError

needs_nnpack = pytest.mark.skipif(not winograd_available(), reason="no NNPACK in this torch build / on this CPU")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def conv_pair(cin: int, cout: int, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    conv.requires_grad_(False)
    return conv


@needs_nnpack
@pytest.mark.parametrize("shape", [(1, 3, 33, 40), (1, 64, 45, 37), (2, 16, 36, 36), (1, 32, 7, 5)])
def test_layer_and_its_input_gradient_against_float64(shape):
    n, cin, h, w = shape
    conv = conv_pair(cin, 24)
    layer = WinogradConv3x3(conv, min_positions=0)  # NNPACK at every size, the 7x5 map included
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen)
    g = torch.randn(n, 24, h, w, generator=gen)
    x64 = x.double().requires_grad_(True)
    y64 = torch.conv2d(x64, conv.weight.double(), conv.bias.double(), padding=1)
    (gx64,) = torch.autograd.grad(y64, x64, g.double())
    xw = x.clone().requires_grad_(True)
    y = layer(xw)
    (gx,) = torch.autograd.grad(y, xw, g)
    assert y.shape == y64.shape and gx.shape == x.shape
    assert rel(y, y64) < 2e-5 and rel(gx, gx64) < 2e-5  # ~4e-6 seen; oneDNN's direct: ~2e-7


@needs_nnpack
def test_small_maps_and_other_dtypes_run_the_direct_convolution():
    conv = conv_pair(8, 8)
    layer = WinogradConv3x3(conv)
    small = torch.randn(1, 8, 16, 16)  # 256 < MIN_POSITIONS
    assert small.shape[2] * small.shape[3] < MIN_POSITIONS
    assert torch.equal(layer(small), conv(small))
    large = torch.randn(1, 8, 40, 40)
    assert not torch.equal(layer(large), conv(large))  # NNPACK's rounding differs
    assert rel(layer(large), conv(large)) < 2e-5
    as64 = large.double()
    assert torch.equal(layer.double()(as64), conv.double()(as64))


def test_only_3x3_same_convolutions_are_replaced():
    with pytest.raises(ValueError, match="cannot replace"):
        WinogradConv3x3(nn.Conv2d(4, 4, 3, padding=0))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    assert use_winograd(net) == 2
    assert all(isinstance(net[i], WinogradConv3x3) for i in (0, 2))


def test_resolve_conv():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_conv("direct", cpu, torch.float32) == "direct"
    assert resolve_conv("auto", cpu, torch.bfloat16) == "direct"
    assert resolve_conv("auto", cuda, torch.float32) == "direct"
    assert resolve_conv("auto", cpu, torch.float32) == ("winograd" if winograd_available() else "direct")
    with pytest.raises(ConfigError, match="runs fp32"):
        resolve_conv("winograd", cpu, torch.bfloat16)
    with pytest.raises(ConfigError, match="unknown conv"):
        resolve_conv("fft", cpu, torch.float32)


def test_settings_refuse_winograd_where_it_cannot_run():
    for changes in ({"backend": "tensorrt"}, {"precision": "bf16"}, {"backend": "torch", "device": "cuda"},
                    {"backend": "ort", "precision": "fp16"}):
        with pytest.raises(ConfigError, match="--conv winograd"):
            Settings(conv="winograd", **changes).validate()
    Settings(conv="winograd", backend="ort").validate()  # the graph's own Winograd
    with pytest.raises(ConfigError, match="unknown conv"):
        Settings(conv="fft").validate()


def step_against_float64(weights, loss, content, style, image, force: bool) -> tuple[float, float]:
    """(relative gradient error of the Winograd step, of the direct step) against a float64 step."""
    ref = TorchStep(weights, loss, conv="direct")
    ref.net, ref.dtype = ref.net.double(), torch.float64
    ref.scale, ref.shift = ref.scale.double(), ref.shift.double()
    ref.set_targets(make_targets(ref, loss, content.double(), [style.double()]))
    g64 = ref(image.double()).grad
    errors = []
    for conv in ("winograd", "direct"):
        step = TorchStep(weights, loss, conv=conv)
        assert step.conv == conv
        if force:
            for m in step.net.modules():
                if isinstance(m, WinogradConv3x3):
                    m.min_positions = 0
        step.set_targets(make_targets(step, loss, content, [style]))
        errors.append(rel(step(image).grad, g64))
    return errors[0], errors[1]


@needs_nnpack
def test_step_against_float64_random_weights(vgg19_random, make_image):
    from styleengine.engine.losses import LossConfig

    loss = LossConfig(weighting="paper", style_weight=1e5, tv_weight=0.05)
    content, style, image = make_image(40, 48, 1), make_image(40, 48, 2), make_image(40, 48, 3)
    wino, direct = step_against_float64(vgg19_random, loss, content, style, image, force=True)
    assert direct < 1e-5 and wino < 1e-3, (wino, direct)


@needs_nnpack
def test_step_against_float64_shared_vgg16(vgg16_imagenet, shared_vgg16_file):
    """Real features, a photo and a painting: the error a user's run has (5e-5 measured at 96x128)."""
    import skimage.data

    from styleengine.engine.images import load_image, resize_tensor, to_tensor
    from styleengine.engine.losses import LossConfig

    painting = shared_vgg16_file.parents[1] / "images" / "starry_night.jpg"
    if not painting.is_file():
        pytest.skip(f"the shared painting {painting} is missing")
    content = resize_tensor(to_tensor(skimage.data.astronaut() / 255.0).float(), 48, 64)
    style = resize_tensor(to_tensor(load_image(painting)).float(), 48, 64)
    wino, direct = step_against_float64(vgg16_imagenet, LossConfig(), content, style, content.clone(), force=True)
    assert direct < 1e-5 and wino < 3e-4, (wino, direct)


@needs_nnpack
@pytest.mark.parametrize("height", [40, 33])  # strips of 8 rows: a last strip of 8, and one of 1
def test_strips_of_rows_equal_one_call(height):
    from styleengine.engine.winograd import _nnpack

    conv = conv_pair(4, 6)
    x = torch.randn(2, 4, height, 9, generator=torch.Generator().manual_seed(2))
    ref = torch.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    whole = _nnpack(x, conv.weight, conv.bias, max_elements=1 << 30)
    strips = _nnpack(x, conv.weight, conv.bias, max_elements=4 * 9 * 8)  # 8 rows a call
    assert strips.shape == whole.shape == ref.shape
    assert rel(strips, ref) < 2e-5 and rel(whole, ref) < 2e-5


@needs_nnpack
@pytest.mark.parametrize("channels", [6, 1])  # 1: a strip of rows of one channel is contiguous already
@pytest.mark.parametrize("height", [40, 33, 17])  # strips of 8 rows; 17: a last strip of 1
def test_strips_in_place_overwrite_the_input_with_the_same_result(height, channels):
    """The backward's in-place strips: each strip's halo row above comes from before the strip above
    overwrote it; the result is bit for bit the out-of-place one and lives in the input's memory."""
    from styleengine.engine.winograd import _nnpack

    conv = conv_pair(channels, channels)
    x = torch.randn(1, channels, height, 9, generator=torch.Generator().manual_seed(3))
    out_of_place = _nnpack(x, conv.weight, conv.bias, max_elements=channels * 9 * 8)
    y = x.clone()
    in_place = _nnpack(y, conv.weight, conv.bias, max_elements=channels * 9 * 8, inplace=True)
    assert in_place.data_ptr() == y.data_ptr()
    assert torch.equal(in_place, out_of_place)
    # channels in != out: a new tensor, the input untouched
    wide = conv_pair(channels, 4)
    z = x.clone()
    assert torch.equal(_nnpack(z, wide.weight, None, max_elements=channels * 9 * 8, inplace=True),
                       _nnpack(x, wide.weight, None, max_elements=channels * 9 * 8)) and torch.equal(z, x)


@pytest.fixture
def small_strips(monkeypatch):
    """NNPACK calls of at most 4096 elements: every map of a tiny image runs in strips of rows."""
    from styleengine.engine import winograd

    monkeypatch.setattr(winograd._nnpack, "__defaults__", (4096, False))


@needs_nnpack
def test_gradients_that_are_views_are_not_overwritten(small_strips):
    """An expanded ones (from .sum()) reaching a convolution run in strips, or a ReLU, gets a new tensor:
    the gradients are right."""
    from styleengine.engine.winograd import MaskedReLU

    layer = WinogradConv3x3(conv_pair(4, 4), min_positions=1)
    x = torch.randn(1, 4, 40, 9, generator=torch.Generator().manual_seed(4), requires_grad=True)
    layer(x).sum().backward()
    ref = torch.nn.functional.conv_transpose2d(torch.ones(1, 4, 40, 9, dtype=torch.float64),
                                               layer.conv.weight.double(), padding=1)
    assert rel(x.grad, ref) < 2e-5
    for inplace in (False, True):
        z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(5))
        leaf = z.clone().requires_grad_(True)
        MaskedReLU(inplace)(leaf * 1.0).sum().backward()
        assert torch.equal(leaf.grad, (z > 0).float())


@needs_nnpack
def test_step_in_strips_in_place_equals_out_of_place(small_strips, monkeypatch, vgg19_random, make_image):
    """The Winograd step with its backward's strips in place gives the same gradient, bit for bit, as with
    them out of place, and is as close to the direct step as Winograd is."""
    from styleengine.engine import winograd
    from styleengine.engine.losses import LossConfig

    loss = LossConfig()
    content, style, image = make_image(32, 40, seed=1), make_image(24, 24, seed=2), make_image(32, 40, seed=3)
    grads = {}
    for mode in ("in place", "out of place", "direct"):
        if mode == "out of place":
            whole = winograd._nnpack_image
            monkeypatch.setattr(winograd, "_nnpack_image", lambda x, w, b, m, inplace=False: whole(x, w, b, m))
        step = TorchStep(vgg19_random, loss, conv="direct" if mode == "direct" else "winograd")
        for m in step.net.modules():
            if isinstance(m, WinogradConv3x3):
                m.min_positions = 0
        step.set_targets(make_targets(step, loss, content, [style]))
        grads[mode] = step(image).grad
    assert torch.equal(grads["in place"], grads["out of place"])
    assert rel(grads["in place"], grads["direct"]) < 1e-3


def test_winograd_settings_resolve_to_fp32():
    from styleengine.engine.autotune import choose
    from styleengine.engine.capability import Machine

    gpu = Machine(cuda=True, ort_providers=("cpu", "cuda"))
    assert choose(Settings(conv="winograd", backend="ort", provider="cuda"), machine=gpu,
                  tune=False).settings.precision == "fp32"
    assert Settings(conv="winograd", device="cpu").resolved().precision == "fp32"
