"""The input gradient: torch autograd against central finite differences in float64,
and the fp32 / bf16 TorchStep against the float64 gradient."""
from __future__ import annotations

import pytest
import torch

from styleengine.engine.loss_config import TV_UNIT  # the weights below in the old units
from styleengine.engine.losses import LossConfig, Targets, total_loss
from styleengine.engine.steps import TorchStep, build_network, preprocess_params
from styleengine.model.weights import Weights

H, W = 20, 24  # non-square; 20x24 -> 10x12 -> 5x6 -> 2x3 -> 1x1: odd after pooling
N_PIXELS = 20
FD_STEP = 1e-5
# every term contributes at the test image: content ~ 14, style ~ 39, tv ~ 23
CONFIG = LossConfig(content_weight=10.0, style_weight=1e5, tv_weight=0.05 / TV_UNIT, weighting="paper")


def loss64(config: LossConfig, feats: dict[str, torch.Tensor], targets: Targets, image: torch.Tensor) -> torch.Tensor:
    """The paper's loss per batch item (B,), written out in float64 with no dtype
    casts (the formulas themselves are checked against numpy in test_losses.py)."""
    total = image.new_zeros(image.shape[0])
    for n in config.content_layers:
        total = total + config.content_weight * 0.5 * (feats[n] - targets.content[n]).pow(2).sum((1, 2, 3))
    for n, wl in zip(config.style_layers, config.layer_weights()):
        f = feats[n]
        c, m = f.shape[1], f.shape[2] * f.shape[3]
        flat = f.reshape(f.shape[0], c, m)  # (B, C, M)
        g = flat @ flat.transpose(1, 2)  # (B, C, C)
        total = total + config.style_weight * wl * (g - targets.grams[n]).pow(2).sum((1, 2)) / (4.0 * c**2 * m**2)
    dy = image[:, :, 1:] - image[:, :, :-1]
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    return total + config.tv_weight * TV_UNIT * (dy.pow(2).sum((1, 2, 3)) + dx.pow(2).sum((1, 2, 3)))


class Float64Problem:
    """The step's computation replicated in float64: preprocessing by the
    weights' convention, the truncated VGG, the loss."""

    def __init__(self, weights: Weights, config: LossConfig, pooling: str, content, style):
        self.config = config
        self.net = build_network(weights, config.layers, pooling).double()
        scale, shift, self.perm = preprocess_params(weights.convention, torch.device("cpu"))
        self.scale, self.shift = scale.double(), shift.double()
        with torch.no_grad():
            fc, fs = self.features(content), self.features(style)
        grams = {}
        for n in config.style_layers:
            flat = fs[n].reshape(fs[n].shape[1], -1)
            grams[n] = flat @ flat.T
        self.targets = Targets({n: fc[n] for n in config.content_layers}, grams)

    def features(self, image):
        return self.net((image * self.scale + self.shift)[:, self.perm], self.config.layers)

    def loss(self, image, loss_fn=loss64):
        return loss_fn(self.config, self.features(image), self.targets, image)

    def grad(self, image, loss_fn=loss64):
        x = image.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(x, loss_fn).sum(), x)
        return g

    def targets32(self) -> Targets:
        return Targets({k: v.float() for k, v in self.targets.content.items()},
                       {k: v.float() for k, v in self.targets.grams.items()})


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(123)
    return [torch.rand(1, 3, H, W, generator=gen, dtype=torch.float64) for _ in range(3)]  # content, style, x


@pytest.fixture(scope="module", params=["avg", "max"])
def problem(request, random_weights, images):
    content, style, _ = images
    return Float64Problem(random_weights("vgg19", 0), CONFIG, request.param, content, style)


def fd_errors(problem: Float64Problem, x: torch.Tensor, grad: torch.Tensor, pixels: int = N_PIXELS,
              loss_fn=loss64, seed=0) -> list[float]:
    """Central differences at `pixels` random entries, relative to the larger of
    the two derivatives (floored at 1e-3 of the largest gradient entry)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.numel(), generator=gen)[:pixels]
    batch = x.repeat(2 * pixels, 1, 1, 1).view(2 * pixels, -1)  # rows 2k: +h, 2k+1: -h
    rows = torch.arange(pixels)
    batch[2 * rows, idx] += FD_STEP
    batch[2 * rows + 1, idx] -= FD_STEP
    batch = batch.view(2 * pixels, *x.shape[1:])
    with torch.no_grad():
        if loss_fn is loss64:  # one batched forward
            values = problem.loss(batch)
        else:  # the engine's loss takes one image at a time
            values = torch.stack([problem.loss(b[None], loss_fn) for b in batch])
    fd = (values[0::2] - values[1::2]) / (2 * FD_STEP)
    g = grad.reshape(-1)[idx]
    floor = 1e-3 * grad.abs().max()
    return ((fd - g).abs() / torch.maximum(torch.maximum(fd.abs(), g.abs()), floor)).tolist()


def test_terms_all_contribute(problem, images):
    x = images[2]
    with torch.no_grad():
        assert problem.loss(x).item() == pytest.approx(problem.loss(x, total_loss_sum).item(), rel=1e-5)
        feats = problem.features(x)
        terms = total_loss(CONFIG, feats, problem.targets, x)
    for k in ("content", "style", "tv"):
        assert terms[k].item() > 0.01 * terms["loss"].item(), (k, {k: v.item() for k, v in terms.items()})


def test_autograd_matches_central_differences(problem, images):
    x = images[2]
    grad = problem.grad(x)
    errors = fd_errors(problem, x, grad)
    print(f"\nFD relative errors ({problem.net.pooling} pooling, {N_PIXELS} pixels): "
          f"max {max(errors):.2e}, median {sorted(errors)[len(errors) // 2]:.2e}")
    assert max(errors) < 1e-5, errors


def test_engine_total_loss_in_float64_matches_central_differences(problem, images):
    x = images[2]
    assert problem.loss(x, total_loss_sum).item() == pytest.approx(problem.loss(x).item(), rel=1e-12)
    grad = problem.grad(x, total_loss_sum)
    assert max(fd_errors(problem, x, grad, pixels=4, loss_fn=total_loss_sum)) < 1e-5


def total_loss_sum(config, feats, targets, image):
    return total_loss(config, feats, targets, image)["loss"]


def test_engine_total_loss_matches_reference_to_fp32(problem, images):
    """What the engine's loss does get right: the same value and gradient as the
    float64 reference to fp32 accuracy."""
    x = images[2]
    with torch.no_grad():
        ref, got = problem.loss(x).item(), problem.loss(x, total_loss_sum).item()
    assert got == pytest.approx(ref, rel=1e-5)
    g_ref, g_got = problem.grad(x), problem.grad(x, total_loss_sum)
    assert ((g_got - g_ref).norm() / g_ref.norm()).item() < 1e-4


def _step_grad(weights, pooling, precision, problem, x):
    step = TorchStep(weights, CONFIG, pooling=pooling, precision=precision)
    step.set_targets(problem.targets32())
    result = step(x.float())
    assert result.grad.dtype == torch.float32 and result.grad.shape == x.shape
    return result


# bf16 with max pooling: rounding flips which input wins a 2x2 window, which
# sends that window's gradient to another pixel; measured 0.12 relative L2
# (avg pooling: 0.024), so max pooling gets a looser bar.
BOUNDS = {("fp32", "avg"): 1e-3, ("fp32", "max"): 1e-3, ("bf16", "avg"): 5e-2, ("bf16", "max"): 0.25}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torchstep_gradient_against_float64(random_weights, problem, images, precision):
    bound = BOUNDS[precision, problem.net.pooling]
    x = images[2]
    g64 = problem.grad(x)
    result = _step_grad(random_weights("vgg19", 0), problem.net.pooling, precision, problem, x)
    rel = ((result.grad.double() - g64).norm() / g64.norm()).item()
    loss_rel = abs(result.loss - problem.loss(x).item()) / problem.loss(x).item()
    print(f"\nTorchStep {precision} vs float64 ({problem.net.pooling} pooling): gradient relative L2 {rel:.2e}, "
          f"loss relative error {loss_rel:.2e}")
    assert rel < bound
    assert loss_rel < bound
    assert sum(result.parts.values()) == pytest.approx(result.loss, rel=1e-6)


def test_torchstep_refuses_other_precisions(vgg19_random):
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16"):
        TorchStep(vgg19_random, CONFIG, precision="fp16")


def test_torchstep_needs_targets(vgg19_random, images):
    step = TorchStep(vgg19_random, LossConfig(content_layers=("relu1_1",), style_layers=()))
    with pytest.raises(RuntimeError, match="set_targets"):
        step(images[2].float())
