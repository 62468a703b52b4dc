"""The Gatys loss pieces against a hand computation in numpy (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from styleengine.engine.loss_config import TV_UNIT  # the weights below in the old units
from styleengine.errors import ConfigError
from styleengine.engine.losses import (
    CONTENT_LAYERS,
    STYLE_LAYERS,
    LossConfig,
    Targets,
    blend_grams,
    content_loss,
    gram,
    style_layer_loss,
    total_loss,
    tv_loss,
)

RTOL = 1e-5  # torch runs fp32, numpy float64


def _rand(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float()


# --- numpy references, written from the paper's formulas with explicit loops


def np_gram(f: np.ndarray) -> np.ndarray:
    """f: (1, C, H, W) -> G_ij = sum_k F_ik F_jk."""
    c = f.shape[1]
    flat = f[0].reshape(c, -1)
    g = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            g[i, j] = sum(flat[i, k] * flat[j, k] for k in range(flat.shape[1]))
    return g


def np_content(f: np.ndarray, p: np.ndarray) -> float:
    return 0.5 * float(np.sum((f - p) ** 2))


def np_style(f: np.ndarray, a: np.ndarray) -> float:
    n, m = f.shape[1], f.shape[2] * f.shape[3]
    return float(np.sum((np_gram(f) - a) ** 2)) / (4.0 * n**2 * m**2)


def np_tv(img: np.ndarray) -> float:
    total = 0.0
    _, c, h, w = img.shape
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                if y + 1 < h:
                    total += (img[0, ch, y + 1, x] - img[0, ch, y, x]) ** 2
                if x + 1 < w:
                    total += (img[0, ch, y, x + 1] - img[0, ch, y, x]) ** 2
    return total


# --- single terms


def test_gram_matches_numpy():
    f = _rand(1, 3, 4, 5)
    g = gram(_t(f))
    assert g.shape == (3, 3)
    np.testing.assert_allclose(g.numpy(), np_gram(f), rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(g.numpy(), g.numpy().T, rtol=0, atol=0)  # symmetric by construction


def test_gram_is_unnormalised_sum_over_positions():
    # constant features 2 over M = 20 positions: every G_ij = 20 * 2 * 2 = 80
    g = gram(torch.full((1, 3, 4, 5), 2.0))
    assert torch.equal(g, torch.full((3, 3), 80.0))


def test_gram_accumulates_in_fp32_for_bf16_features():
    f = _rand(1, 4, 4, 5, seed=3)
    g = gram(_t(f).bfloat16())
    assert g.dtype == torch.float32
    np.testing.assert_allclose(g.numpy(), np_gram(_t(f).bfloat16().double().numpy()), rtol=1e-5, atol=1e-4)


def test_content_loss_matches_numpy():
    f, p = _rand(1, 3, 4, 5, seed=1), _rand(1, 3, 4, 5, seed=2)
    got = content_loss(_t(f), _t(p)).item()
    assert got == pytest.approx(np_content(f, p), rel=RTOL)


def test_content_loss_is_half_squared_error():
    f = torch.zeros(1, 3, 4, 5)
    p = torch.zeros(1, 3, 4, 5)
    p[0, 1, 2, 3] = 3.0
    assert content_loss(f, p).item() == 4.5  # 1/2 * 3^2, exactly


def test_style_layer_loss_matches_numpy():
    f = _rand(1, 3, 4, 5, seed=4)
    a = np_gram(_rand(1, 3, 4, 5, seed=5))
    got = style_layer_loss(_t(f), _t(a)).item()
    assert got == pytest.approx(np_style(f, a), rel=RTOL)


@pytest.mark.parametrize("channels,height,width", [(3, 4, 5), (2, 3, 1), (5, 2, 7)])
def test_style_normalisation_is_exactly_the_papers(channels, height, width):
    # F = 1 everywhere, A = 0: G_ij = M, sum (G - A)^2 = N^2 M^2, so
    # E = N^2 M^2 / (4 N^2 M^2) = 1/4 exactly, for any N and M. Any other
    # normalisation (1/(NM), 1/(4 N^2 M), mean instead of sum) gives another number.
    f = torch.ones(1, channels, height, width)
    a = torch.zeros(channels, channels)
    assert style_layer_loss(f, a).item() == 0.25


def test_style_normalisation_scales_with_n_and_m():
    # one channel, M = 6 positions of value 1: G = M. Target 0: E = M^2 / (4 M^2) = 1/4;
    # target M/2: E = (M/2)^2 / (4 M^2) = 1/16. Two channels, G = M everywhere, target M off
    # the diagonal and 0 on it: G - A = M I, so E = 2 M^2 / (4 * 2^2 * M^2) = 1/8.
    m = 6
    f1 = torch.ones(1, 1, 2, 3)
    assert style_layer_loss(f1, torch.zeros(1, 1)).item() == 1 / 4
    assert style_layer_loss(f1, torch.full((1, 1), m / 2)).item() == 1 / 16
    f2 = torch.ones(1, 2, 2, 3)
    a2 = torch.tensor([[0.0, m], [m, 0.0]])  # only the diagonal differs by M
    assert style_layer_loss(f2, a2).item() == 1 / 8


def test_tv_loss_matches_numpy():
    img = np.random.default_rng(6).random((1, 3, 4, 5))
    assert tv_loss(_t(img)).item() == pytest.approx(np_tv(img), rel=RTOL)


def test_tv_loss_of_constant_image_is_zero_and_of_a_step_counts_edges():
    assert tv_loss(torch.full((1, 3, 4, 5), 0.3)).item() == 0.0
    img = torch.zeros(1, 1, 3, 4)
    img[..., 2:] = 1.0  # a vertical edge: 3 rows x one horizontal difference of 1
    assert tv_loss(img).item() == 3.0


# --- the weighted sum


def test_default_config_is_the_papers():
    cfg = LossConfig()
    assert cfg.content_layers == CONTENT_LAYERS == ("relu4_2",)
    assert cfg.style_layers == STYLE_LAYERS == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert cfg.layer_weights() == pytest.approx((0.2,) * 5, rel=0, abs=1e-15)
    assert cfg.tv_weight == 0.0
    cfg.validate("vgg19")
    cfg.validate("vgg16")


def _total_fixture(seed=10):
    """Features at three layers of different shapes, targets and an image."""
    rng = np.random.default_rng(seed)
    feats = {"relu1_1": rng.standard_normal((1, 3, 4, 5)),
             "relu2_1": rng.standard_normal((1, 4, 2, 3)),
             "relu4_2": rng.standard_normal((1, 2, 3, 3))}
    content_t = {"relu4_2": rng.standard_normal((1, 2, 3, 3))}
    grams = {"relu1_1": np_gram(rng.standard_normal((1, 3, 4, 5))),
             "relu2_1": np_gram(rng.standard_normal((1, 4, 2, 3)))}
    image = rng.random((1, 3, 4, 5))
    return feats, content_t, grams, image


@pytest.mark.parametrize("weighting", ["paper", "invariant"])
def test_total_loss_matches_numpy(weighting):
    """The paper's sums; the size-invariant weighting divides the content term by the content layer's
    N M (its target's element count) and TV by 3 H W, and leaves the style term as the paper has it."""
    feats, content_t, grams, image = _total_fixture()
    cfg = LossConfig(content_layers=("relu4_2",), style_layers=("relu1_1", "relu2_1"), weighting=weighting,
                     style_layer_weights=(0.3, 1.7), content_weight=0.7, style_weight=3.0, tv_weight=0.2 / TV_UNIT)
    cfg.validate("vgg19")
    targets = Targets({k: _t(v) for k, v in content_t.items()}, {k: _t(v) for k, v in grams.items()})
    terms = total_loss(cfg, {k: _t(v) for k, v in feats.items()}, targets, _t(image))

    paper = weighting == "paper"
    want_content = (0.7 * np_content(feats["relu4_2"], content_t["relu4_2"])
                    / (1 if paper else content_t["relu4_2"].size))
    want_style = 3.0 * (0.3 * np_style(feats["relu1_1"], grams["relu1_1"])
                        + 1.7 * np_style(feats["relu2_1"], grams["relu2_1"]))
    want_tv = 0.2 * np_tv(image) / (1 if paper else image.size)
    assert terms["content"].item() == pytest.approx(want_content, rel=RTOL)
    assert terms["style"].item() == pytest.approx(want_style, rel=RTOL)
    assert terms["tv"].item() == pytest.approx(want_tv, rel=RTOL)
    assert terms["loss"].item() == pytest.approx(want_content + want_style + want_tv, rel=RTOL)


def test_total_loss_default_layer_weights_are_uniform():
    feats, content_t, grams, image = _total_fixture(seed=11)
    cfg = LossConfig(style_layers=("relu1_1", "relu2_1"), content_weight=0.0, style_weight=1.0)
    targets = Targets({k: _t(v) for k, v in content_t.items()}, {k: _t(v) for k, v in grams.items()})
    terms = total_loss(cfg, {k: _t(v) for k, v in feats.items()}, targets, _t(image))
    want = 0.5 * np_style(feats["relu1_1"], grams["relu1_1"]) + 0.5 * np_style(feats["relu2_1"], grams["relu2_1"])
    assert terms["style"].item() == pytest.approx(want, rel=RTOL)
    assert terms["content"].item() == 0.0
    assert terms["tv"].item() == 0.0


def test_total_loss_texture_has_no_content_term():
    feats, _, grams, image = _total_fixture(seed=12)
    cfg = LossConfig(content_layers=(), style_layers=("relu1_1",), style_weight=2.0)
    cfg.validate("vgg19")
    terms = total_loss(cfg, {"relu1_1": _t(feats["relu1_1"])}, Targets({}, {"relu1_1": _t(grams["relu1_1"])}),
                       _t(image))
    assert terms["content"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(2.0 * np_style(feats["relu1_1"], grams["relu1_1"]), rel=RTOL)


def test_layers_property_dedupes_content_first():
    cfg = LossConfig(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    assert cfg.layers == ["relu2_1", "relu1_1"]


def test_loss_terms_keep_float64():
    f = torch.from_numpy(_rand(1, 3, 4, 5, seed=20))
    p = torch.from_numpy(_rand(1, 3, 4, 5, seed=21))
    assert gram(f).dtype == torch.float64
    assert content_loss(f, p).dtype == torch.float64
    assert content_loss(f, p).item() == pytest.approx(np_content(f.numpy(), p.numpy()), rel=1e-14)


# --- several style images


def test_blend_grams_weighted_mean_with_size_factor():
    rng = np.random.default_rng(30)
    g1 = {"relu1_1": rng.standard_normal((3, 3)), "relu2_1": rng.standard_normal((4, 4))}
    g2 = {"relu1_1": rng.standard_normal((3, 3)), "relu2_1": rng.standard_normal((4, 4))}
    positions, target = [100, 400], 200
    out = blend_grams([{k: _t(v) for k, v in g1.items()}, {k: _t(v) for k, v in g2.items()}],
                      positions, target, [1.0, 3.0])
    for name in g1:
        want = g1[name] * 0.25 * (200 / 100) + g2[name] * 0.75 * (200 / 400)
        np.testing.assert_allclose(out[name].numpy(), want, rtol=RTOL, atol=1e-6)


def test_blend_grams_single_style_same_size_is_identity():
    g = {"relu1_1": _t(_rand(3, 3, seed=31))}
    out = blend_grams([g], [20], 20)
    torch.testing.assert_close(out["relu1_1"], g["relu1_1"], rtol=1e-6, atol=0)


def test_blend_grams_equal_weights_by_default():
    a, b = torch.ones(2, 2), torch.full((2, 2), 3.0)
    out = blend_grams([{"x": a}, {"x": b}], [10, 10], 10)
    torch.testing.assert_close(out["x"], torch.full((2, 2), 2.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("blend,match", [([1.0], "1 --style-blend weights for 2"),
                                         ([1.0, -1.0], ">= 0"),
                                         ([0.0, 0.0], "not all zero"),
                                         ([1.0, float("nan")], ">= 0")])
def test_blend_grams_rejects_bad_weights(blend, match):
    g = {"x": torch.ones(2, 2)}
    with pytest.raises(ConfigError, match=match):
        blend_grams([g, g], [4, 4], 4, blend)


# --- LossConfig validation


@pytest.mark.parametrize("field,name", [("content_layers", "conv6_1"), ("style_layers", "relu4_9"),
                                        ("style_layers", "pool7")])
def test_unknown_layer_is_config_error_naming_it(field, name):
    cfg = LossConfig(**{field: ("relu1_1", name)})
    with pytest.raises(ConfigError, match=name) as info:
        cfg.validate("vgg19")
    assert "\n" not in str(info.value)


def test_vgg19_only_layer_is_unknown_for_vgg16():
    cfg = LossConfig(style_layers=("relu1_1", "relu5_4"))
    cfg.validate("vgg19")
    with pytest.raises(ConfigError, match="relu5_4"):
        cfg.validate("vgg16")


def test_weights_count_mismatch():
    cfg = LossConfig(style_layer_weights=(0.5, 0.5))
    with pytest.raises(ConfigError, match="2 style layer weights for 5 style layers"):
        cfg.validate("vgg19")


def test_no_layers_at_all():
    with pytest.raises(ConfigError, match="at least one"):
        LossConfig(content_layers=(), style_layers=()).validate("vgg19")


@pytest.mark.parametrize("field", ["content_weight", "style_weight", "tv_weight"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_term_weights(field, value):
    with pytest.raises(ConfigError, match=field.replace("_", " ")):
        LossConfig(**{field: value}).validate("vgg19")


@pytest.mark.parametrize("field", ["content_weight", "style_weight", "tv_weight"])
def test_zero_term_weights_are_valid(field):
    LossConfig(**{field: 0.0}).validate("vgg19")


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_bad_style_layer_weights(bad):
    with pytest.raises(ConfigError):
        LossConfig(style_layer_weights=(0.2, 0.2, bad, 0.2, 0.2)).validate("vgg19")


def test_math_sanity_of_reference():
    # guard the numpy reference itself: a 1x1 map with value v against target 0
    f = np.full((1, 1, 1, 1), 3.0)
    assert np_gram(f)[0, 0] == 9.0
    assert math.isclose(np_style(f, np.zeros((1, 1))), 81 / 4)


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_style_term_gradient_matches_float64_autograd(eager, dtype):
    """_StyleTerm's one-product gradient, taken in the backward or (eager) in the forward, against autograd
    through the plain formula in float64; the target need not be symmetric (a blend of Grams is)."""
    gen = torch.Generator().manual_seed(5)
    f = torch.rand(1, 6, 5, 7, generator=gen)
    target = torch.rand(6, 6, generator=gen) * 30
    weight = torch.rand((), generator=gen) + 0.5
    x = f.to(dtype).requires_grad_(True)
    loss = weight * style_layer_loss(x, target, eager_grad=eager)
    loss.backward()
    x64 = x.detach().double().requires_grad_(True)
    f64 = x64.reshape(6, -1)
    ref = weight.double() * ((f64 @ f64.T - target.double()).pow(2).sum() / (4.0 * 6**2 * 35**2))
    ref.backward()
    assert x.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert abs(loss.item() - ref.item()) <= tol * abs(ref.item())
    assert (x.grad.double() - x64.grad).norm() <= tol * x64.grad.norm()


def test_eager_style_gradient_is_taken_once():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss = style_layer_loss(x, torch.eye(3), eager_grad=True)
    torch.autograd.grad(loss, x, retain_graph=True)
    with pytest.raises(RuntimeError, match="taken once"):
        torch.autograd.grad(loss, x)


def test_style_term_with_a_float64_target_runs_in_float64():
    x = torch.rand(1, 3, 4, 5, requires_grad=True)
    target = torch.eye(3, dtype=torch.float64)
    loss = style_layer_loss(x, target)
    assert loss.dtype == torch.float64
    loss.backward()
    f = x.detach().double().reshape(3, -1)
    expected = ((f @ f.T - target) @ f * (1.0 / (3**2 * 20**2))).reshape(x.shape)
    assert x.grad.dtype == torch.float32 and torch.allclose(x.grad.double(), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("eager", [False, True])
def test_style_term_gradient_is_not_differentiated_again(eager):
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    (g,) = torch.autograd.grad(style_layer_loss(x, torch.eye(3), eager_grad=eager), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()
