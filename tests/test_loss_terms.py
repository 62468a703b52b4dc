"""Every implementation of every loss term against one float64 reference: the one place a term is checked.

The reference is engine/losses.py itself (total_loss: content_loss,
style_layer_loss, tv_loss) run in float64 on a float64 copy of the network,
its gradient by autograd; test_reference_gradient_is_the_derivative checks
that gradient against central differences (and tests/test_losses.py checks
the functions against numpy). Each term is isolated by the loss weights:
alpha, beta with one layer's w_l, or the TV weight non-zero and every other
weight 0, so one export serves every term. The implementations:

  torch        TorchStep (autograd through total_loss)
  tiled torch  TiledStep over TorchStep (gram_style, tile_step, tv_loss_and_grad)
  tiled ort    TiledStep over OrtStep (gram_style, the ONNX tile graph)
  ort          OrtStep: the ONNX step graph (every term written by hand)
  tile torch   TorchStep.tile_step over the whole image as one core
  tile ort     OrtStep.tile_step: the ONNX tile graph, likewise

A tile step has no TV (its caller adds it) and returns only the content
value; its style value is gram_style's, which it is given. A new term:
write it in engine/losses.py and add it to TERMS.
"""
from __future__ import annotations

import pytest
import torch

from styleengine.engine.losses import LossConfig, Targets, content_coeffs, gram, gram_style, total_loss
from styleengine.engine.steps import TorchStep, build_network, preprocess_params
from styleengine.engine.tiled import TiledStep

HEIGHT, WIDTH, TILE = 45, 38, 32  # odd after pooling; 2 x 2 tiles of 32 px cores with a 16 px halo
LAYERS = {"content_layers": ("relu2_2",), "style_layers": ("relu1_1", "relu2_1", "conv3_1")}
OFF = {"content_weight": 0.0, "style_weight": 0.0, "tv_weight": 0.0}
PAPER = {"weighting": "paper"}
TERMS = {  # name: (StepResult part, the loss with only that term weighted)
    "content": ("content", LossConfig(**LAYERS, **PAPER, **{**OFF, "content_weight": 0.2})),
    **{f"style {name}": ("style", LossConfig(**LAYERS, **PAPER, **{**OFF, "style_weight": 3e5},
                                             style_layer_weights=tuple(1.5 * (n == name)
                                                                       for n in LAYERS["style_layers"])))
       for name in LAYERS["style_layers"]},
    "tv": ("tv", LossConfig(**LAYERS, **PAPER, **{**OFF, "tv_weight": 0.5})),
    # the weights balance the terms' gradients at the test image (norms 80 to 270), so each one counts
    "sum": ("loss", LossConfig(**LAYERS, **PAPER, content_weight=0.2, style_weight=3e5,
                               style_layer_weights=(1.5, 0.5, 2.0), tv_weight=0.5)),
    # the size-invariant weighting (the default): content / (N M) of relu2_2 (128 x 22 x 19), TV / (3 H W);
    # alpha and the TV weight scaled up by as much, so the sum stays balanced
    "content invariant": ("content", LossConfig(**LAYERS, **{**OFF, "content_weight": 0.2 * 128 * 22 * 19})),
    "tv invariant": ("tv", LossConfig(**LAYERS, **{**OFF, "tv_weight": 0.5 * 3 * HEIGHT * WIDTH})),
    "sum invariant": ("loss", LossConfig(**LAYERS, content_weight=0.2 * 128 * 22 * 19, style_weight=3e5,
                                         style_layer_weights=(1.5, 0.5, 2.0), tv_weight=0.5 * 3 * HEIGHT * WIDTH)),
}
VALUE_REL, GRAD_REL_L2 = 1e-5, 1e-5  # fp32 against float64: measured up to 1.4e-6 and 6.5e-7


class Reference:
    """engine/losses.py's total_loss in float64 on a float64 network: value and gradient per term."""

    def __init__(self, weights, pooling: str, content: torch.Tensor, style: torch.Tensor):
        loss = TERMS["sum"][1]
        self.net = build_network(weights, loss.layers, pooling).double()
        scale, shift, self.perm = preprocess_params(weights.convention, torch.device("cpu"))
        self.scale, self.shift, self.layers = scale.double(), shift.double(), loss.layers
        with torch.no_grad():
            fc, fs = self.features(content.double()), self.features(style.double())
        # the implementations get fp32 targets; the reference the same numbers in float64
        self.targets32 = Targets({n: fc[n].float() for n in loss.content_layers},
                                 {n: gram(fs[n]).float() for n in loss.style_layers})
        self.targets = Targets({n: t.double() for n, t in self.targets32.content.items()},
                               {n: t.double() for n, t in self.targets32.grams.items()})

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net((image * self.scale + self.shift)[:, self.perm], self.layers)

    def value(self, loss: LossConfig, part: str, image: torch.Tensor) -> torch.Tensor:
        return total_loss(loss, self.features(image), self.targets, image)[part]

    def value_and_grad(self, loss: LossConfig, part: str, image: torch.Tensor) -> tuple[float, torch.Tensor]:
        x = image.detach().double().requires_grad_(True)
        value = self.value(loss, part, x)
        (grad,) = torch.autograd.grad(value, x)
        return value.item(), grad


@pytest.fixture(scope="module", params=["avg", "max"])
def pooling(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def case(random_weights, pooling):
    gen = torch.Generator().manual_seed(7)
    content, style, image = (torch.rand(1, 3, HEIGHT, WIDTH, generator=gen) for _ in range(3))
    weights = random_weights("vgg19")
    return weights, Reference(weights, pooling, content, style), image


# ---------------------------------------------------------------- implementations: (value, grad) of one part

def _ort(weights, loss, pooling):
    from styleengine.engine.backends import make_step

    return make_step("ort", weights, loss, pooling=pooling)


def _step(step, loss, targets, image, part):
    step.set_targets(targets)
    result = step(image)
    return (result.loss if part == "loss" else result.parts[part]), result.grad


def _tile_step(step, loss, targets, image, part):
    """The whole image as one core, with gram_style's D = G - A and coefficients, as a tiled step passes them."""
    feats = step.features(image, list(loss.style_layers))
    positions = {n: f.shape[2] * f.shape[3] for n, f in feats.items()}
    style, diffs, coeffs = gram_style(loss, {n: gram(f) for n, f in feats.items()}, targets, positions)
    content, grad = step.tile_step(image, (0, 0, HEIGHT, WIDTH), targets.content, diffs, coeffs,
                                   content_coeffs(loss, targets))
    return {"content": float(content), "style": float(style), "loss": float(content) + float(style)}[part], grad


IMPLEMENTATIONS = {  # name: (run, make the step from (weights, loss, pooling))
    "torch": (_step, lambda w, loss, pooling: TorchStep(w, loss, pooling=pooling)),
    "tiled torch": (_step, lambda w, loss, pooling: TiledStep(TorchStep(w, loss, pooling=pooling), loss, w.model,
                                                              tile=TILE)),
    "tiled ort": (_step, lambda w, loss, pooling: TiledStep(_ort(w, loss, pooling), loss, w.model, tile=TILE)),
    "ort": (_step, _ort),
    "tile torch": (_tile_step, lambda w, loss, pooling: TorchStep(w, loss, pooling=pooling)),
    "tile ort": (_tile_step, _ort),
}
NO_TV = {"tile torch", "tile ort"}  # TV is not local to tiles: the tiled step adds it


def _rel_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm())


PAIRS = [(term, impl) for term in TERMS for impl in IMPLEMENTATIONS  # a tile step has no TV term
         if not (impl in NO_TV and TERMS[term][1].tv_weight)]


@pytest.mark.parametrize("term,implementation", PAIRS)
def test_term_against_the_float64_reference(case, pooling, term, implementation):
    weights, reference, image = case
    part, loss = TERMS[term]
    run, make = IMPLEMENTATIONS[implementation]
    with make(weights, loss, pooling) as step:
        value, grad = run(step, loss, reference.targets32, image, part)
    want_value, want_grad = reference.value_and_grad(loss, part, image)
    assert want_value > 0 and want_grad.norm() > 0  # the term is on at this image
    assert grad.shape == image.shape
    assert value == pytest.approx(want_value, rel=VALUE_REL), (term, implementation)
    assert _rel_l2(grad, want_grad) < GRAD_REL_L2, (term, implementation)


@pytest.mark.parametrize("term", TERMS)
def test_reference_gradient_is_the_derivative(case, term):
    """The reference's gradient against central differences in float64, at a few pixels."""
    _, reference, image = case
    part, loss = TERMS[term]
    x = image.double()
    _, grad = reference.value_and_grad(loss, part, x)
    step, pixels = 1e-5, torch.randperm(x.numel(), generator=torch.Generator().manual_seed(1))[:4]
    with torch.no_grad():
        for index in pixels.tolist():
            up, down = x.clone().view(-1), x.clone().view(-1)
            up[index] += step
            down[index] -= step
            fd = ((reference.value(loss, part, up.view_as(x)) - reference.value(loss, part, down.view_as(x)))
                  / (2 * step))
            g = grad.view(-1)[index]
            assert float(abs(fd - g)) <= 1e-5 * max(float(abs(g)), 1e-3 * float(grad.abs().max())), (term, index)
