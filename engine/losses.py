"""The Gatys loss: content, Gram style, total variation, and their targets.

Formulas follow Gatys et al. (CVPR 2016):
  L_content = 1/2 sum (F - P)^2
  E_l       = 1/(4 N_l^2 M_l^2) sum (G^l - A^l)^2,  G = F F^T (unnormalised)
  L         = alpha * c_l * L_content + beta * sum_l w_l E_l + tv_weight * t * L_tv
with c_l and t the weighting's factors (content_scales, tv_scale; t also holds
TV_UNIT, which puts 0.1 .. 10 on the useful scale): 1 in the paper's
weighting, where the content and TV terms are sums over positions and
grow with the pixel count while E_l does not (the same beta weighs 16x less at
2048 px than at 512); 1/(N_l M_l) and 1/(3 H W) in the size-invariant one (the
default), where each term is a mean over positions and channels, like E_l, so
alpha, beta and the TV weight mean the same at every size.
This module is the one definition of each term. The torch step (total_loss),
the tiled step and TorchStep.tile_step (the style terms from the whole
image's Grams, gram_style; its gradient with a given G - A,
style_grad_surrogate; tv_loss_and_grad) call these functions. The ONNX
graphs (export/onnx_step.py) cannot call torch: they write each term again,
and tests/test_loss_terms.py checks every implementation, term by term,
against these functions run in float64 (tests/test_losses.py checks these
against numpy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch

from styleengine.choices import FLOAT32_MAX
from styleengine.errors import ConfigError
from styleengine.engine.loss_config import CONTENT_LAYERS, STYLE_LAYERS, TV_UNIT, LossConfig

__all__ = ["CONTENT_LAYERS", "STYLE_LAYERS", "TV_UNIT", "LossConfig"]

@dataclass
class Targets:
    """Content features P^l (1, C, h, w) and style Grams A^l (C, C), fp32. With spatial masks (Gatys et al.
    2017) no grams: the output's regions (R, H, W) and per style layer each region's guided Gram mean (R, C, C)."""

    content: dict[str, torch.Tensor] = field(default_factory=dict)
    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: torch.Tensor | None = None
    region_grams: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Targets":
        return Targets({k: v.to(device) for k, v in self.content.items()},
                       {k: v.to(device) for k, v in self.grams.items()},
                       self.masks.to(device) if self.masks is not None else None,
                       {k: v.to(device) for k, v in self.region_grams.items()})


def content_scales(config: LossConfig, targets: Targets) -> dict[str, float]:
    """c_l per content layer: 1 (paper) or 1 / (N_l M_l) of its target P^l (invariant: a mean); with
    normalize_weights also divided by P^l's largest side (neural-style-pt's)."""
    scales = {n: 1.0 if config.weighting == "paper" else 1.0 / targets.content[n].numel()
              for n in config.content_layers}
    if config.normalize_weights:
        scales = {n: c / max(targets.content[n].shape) for n, c in scales.items()}
    return scales


def content_coeffs(config: LossConfig, targets: Targets) -> dict[str, float]:
    """alpha * c_l per content layer: what each layer's 1/2 sum (F - P)^2 is multiplied by."""
    return {n: config.content_weight * c for n, c in content_scales(config, targets).items()}


def tv_scale(config: LossConfig, height: int, width: int) -> float:
    """t: TV_UNIT (paper) or TV_UNIT / (3 H W) (invariant: the squared differences' mean per pixel and channel)."""
    return TV_UNIT if config.weighting == "paper" else TV_UNIT / (3 * height * width)


def tv_coefficient(config: LossConfig, height: int, width: int) -> float:
    """The TV term's weight at this size as float32 holds it: inf past its range, so every step's loss is then not
    finite, as the untiled one's float32 product is (the tiled and graph steps raised an overflow traceback)."""
    value = config.tv_weight * tv_scale(config, height, width)
    return value if value <= FLOAT32_MAX else math.inf


def _accumulate(t: torch.Tensor) -> torch.Tensor:
    """Sums run in fp32 at least (bf16/fp16 activations are upcast; fp64 stays fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def gram(features: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (C, C), G_ij = sum_k F_ik F_jk, accumulated in fp32."""
    f = _accumulate(features.reshape(features.shape[1], -1))  # (C, M)
    return f @ f.T


class _StyleTerm(torch.autograd.Function):
    """E_l (style_from_gram_diff of D = F F^T - A) with its gradient (D + D^T) F / (2 N^2 M^2): one product
    where autograd's Gram backward takes two and adds them (215 -> 117 ms of products at 384x512).

    eager: the product is taken in the forward and kept instead of F, and the backward only scales it in
    place. For networks that keep nothing of F themselves (Winograd convolutions: the first layers'
    backward, where the step's memory peaks, then holds one relu1_1-sized map where it held two; the loop's
    peak RSS at 384x512 0.96 -> 0.91 GiB) or whose F here is an fp32 copy (bf16 features). A network that
    keeps F anyway (autograd's convolution saves its input) would hold both: there the backward takes it."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, target: torch.Tensor, eager: bool) -> torch.Tensor:
        channels, positions = features.shape[1], features.shape[2] * features.shape[3]
        f = _accumulate(features.reshape(channels, positions))  # fp32 NCHW maps: a view; else a copy
        f = f.to(torch.promote_types(f.dtype, target.dtype))  # a float64 target: the term in float64
        diff = f @ f.T - target
        ctx.coeff, ctx.eager = 0.5 / (channels**2 * positions**2), eager
        ctx.shape, ctx.dtype = features.shape, features.dtype
        if eager:
            ctx.grad = _StyleTerm.product(diff, f, features.shape).mul_(ctx.coeff)
        else:
            ctx.save_for_backward(f, diff)
        return style_from_gram_diff(diff, channels, positions)

    @staticmethod
    def product(diff: torch.Tensor, f: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """(D + D^T) F in the features' shape, a tensor of its own (not a view: autograd then adds the layer's
        other gradients into it in place instead of into a new map)."""
        out = f.new_empty(shape)
        torch.mm(diff + diff.T, f, out=out.view(f.shape))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # its gradient has no graph: differentiating it raises
    def backward(ctx, grad_output: torch.Tensor):
        if not ctx.eager:
            f, diff = ctx.saved_tensors
            grad = _StyleTerm.product(diff, f, ctx.shape).mul_(grad_output * ctx.coeff)
        else:
            grad, ctx.grad = ctx.grad, None  # scaled in place: a second backward (retain_graph) finds it gone
            if grad is None:
                raise RuntimeError("an eager style term's gradient is taken once (no retain_graph)")
            grad.mul_(grad_output)
        return grad.to(ctx.dtype), None, None


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (_accumulate(features) - target).pow(2).sum()


def style_from_gram_diff(gram_diff: torch.Tensor, channels: int, positions: int) -> torch.Tensor:
    """E_l from D = G - A, (C, C): sum D^2 / (4 N^2 M^2), M the positions G was summed over."""
    return gram_diff.pow(2).sum() / (4.0 * channels**2 * positions**2)


def style_layer_loss(features: torch.Tensor, target_gram: torch.Tensor, eager_grad: bool = False) -> torch.Tensor:
    """E_l; with autograd, its gradient by _StyleTerm (eager_grad: taken in the forward, see there)."""
    channels, positions = features.shape[1], features.shape[2] * features.shape[3]
    if torch.is_grad_enabled() and features.requires_grad and not target_gram.requires_grad:
        return _StyleTerm.apply(features, target_gram, eager_grad)
    return style_from_gram_diff(gram(features) - target_gram, channels, positions)


def layer_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(R, H, W) masks -> (R, height * width): each averaged over the pixels under a layer's position (Gatys et
    al. 2017 resize the guidance channels to each layer's size)."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(masks.unsqueeze(0), (height, width))
    return pooled.reshape(masks.shape[0], height * width)


def guided_gram(features: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The region's Gram mean and mass: (F m)(F m)^T / sum m^2 (C, C) and sum m^2, for F (1, C, h, w) and a
    mask (H, W) at the image's size (None: every position, the Gram over M)."""
    f = _accumulate(features.reshape(features.shape[1], -1))  # (C, M)
    if mask is None:
        return f @ f.T / f.shape[1], f.new_tensor(float(f.shape[1]))
    m = layer_masks(mask.unsqueeze(0).to(f), features.shape[2], features.shape[3])[0]  # (M,)
    fm = f * m
    mass = m.pow(2).sum()
    return fm @ fm.T / mass, mass


def guided_style_layer_loss(features: torch.Tensor, masks: torch.Tensor, region_grams: torch.Tensor
                            ) -> torch.Tensor:
    """E_l with spatial control (Gatys et al. 2017): sum_r mass_r / M * 1/(4 N^2) sum (G_r - A_r)^2 over the
    regions r, G_r and A_r guided Gram means (guided_gram). One region of all ones is E_l exactly.
    Each region weighs its share of the picture (mass_r / M): a pixel feels the same pull in a small region
    as in a large one, and as without masks."""
    channels, positions = features.shape[1], features.shape[2] * features.shape[3]
    loss = features.new_zeros((), dtype=torch.promote_types(_accumulate(features).dtype, region_grams.dtype))
    for mask, target in zip(masks, region_grams):
        mean, mass = guided_gram(features, mask)
        loss = loss + mass / positions * (mean - target).pow(2).sum() / (4.0 * channels**2)
    return loss


def region_grams(style_features: list[dict[str, torch.Tensor]], style_masks: list[torch.Tensor | None]
                 ) -> dict[str, torch.Tensor]:
    """Each region's target per layer, (R, C, C): style r's guided Gram mean over its own mask (None: the
    whole style image)."""
    return {n: torch.stack([guided_gram(f[n], m)[0] for f, m in zip(style_features, style_masks)])
            for n in style_features[0]}


def style_term(features: torch.Tensor, targets: Targets, name: str, eager_grad: bool = False) -> torch.Tensor:
    """E_l of layer `name` against the targets: guided by their masks, if any."""
    if targets.masks is not None:
        return guided_style_layer_loss(features, targets.masks, targets.region_grams[name])
    return style_layer_loss(features, targets.grams[name], eager_grad)


def style_grad_coeff(weight: float, channels: int, positions: int) -> float:
    """c in d(weight * E_l)/dF = c (G - A) F: weight / (N^2 M^2)."""
    return weight / (channels**2 * positions**2)


def gram_style(config: LossConfig, grams: dict[str, torch.Tensor], targets: Targets, positions: dict[str, int]
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """The weighted style term from the whole image's Grams (a tiled step sums them over tiles), with
    what its gradient needs per layer: D_l = G_l - A_l and style_grad_coeff of beta * w_l.
    positions: M_l per style layer, of the whole image."""
    style = next(iter(grams.values())).new_zeros(()) if grams else torch.zeros(())
    diffs: dict[str, torch.Tensor] = {}
    coeffs: dict[str, float] = {}
    for n, w in zip(config.style_layers, config.layer_weights()):
        channels = grams[n].shape[0]
        diffs[n] = grams[n] - targets.grams[n]
        style = style + w * style_from_gram_diff(diffs[n], channels, positions[n])
        coeffs[n] = style_grad_coeff(config.style_weight * w, channels, positions[n])
    return style * config.style_weight, diffs, coeffs


def style_grad_surrogate(features: torch.Tensor, gram_diff: torch.Tensor, coeff: float) -> torch.Tensor:
    """1/2 coeff tr(F^T D F) for F (1, C, h, w) and a D = G - A held fixed: its gradient is coeff D F (D is
    symmetric), the style term's gradient at these positions when D is the whole image's (tile_step)."""
    f = features.reshape(features.shape[1], -1)  # (C, M)
    return 0.5 * coeff * (f * (gram_diff @ f)).sum()


def tv_loss_and_grad(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared differences of vertical and horizontal neighbours, and its gradient in closed form
    (no autograd graph over the full image); fp32 at least."""
    x = _accumulate(image)
    grad = torch.zeros_like(x)
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    loss = dy.pow(2).sum()
    grad[:, :, 1:, :] += 2 * dy
    grad[:, :, :-1, :] -= 2 * dy
    del dy
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    loss = loss + dx.pow(2).sum()
    grad[:, :, :, 1:] += 2 * dx
    grad[:, :, :, :-1] -= 2 * dx
    return loss, grad


class _TotalVariation(torch.autograd.Function):
    """tv_loss_and_grad as an autograd function: the value and its closed-form gradient."""

    @staticmethod
    def forward(ctx, image: torch.Tensor) -> torch.Tensor:
        loss, grad = tv_loss_and_grad(image)
        ctx.save_for_backward(grad)
        ctx.dtype = image.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (grad,) = ctx.saved_tensors
        return (grad_output * grad).to(ctx.dtype)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """tv_loss_and_grad's value; autograd gets its closed-form gradient."""
    return _TotalVariation.apply(image)


class _NormalizeGradient(torch.autograd.Function):
    """The identity; its backward divides the gradient by its L1 norm and multiplies it by `strength`
    (neural-style's -normalize_gradients, per loss term at its layer)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        norm = grad_output.float().abs().sum() + 1e-8  # neural-style's epsilon
        return (grad_output * (ctx.strength / norm)).to(grad_output.dtype), None


def _term_input(config: LossConfig, features: torch.Tensor, strength: float) -> torch.Tensor:
    """A term's features, through _NormalizeGradient when the config normalizes gradients."""
    if not config.normalize_gradients or not features.requires_grad:
        return features
    return _NormalizeGradient.apply(features, strength)


def total_loss(config: LossConfig, features: dict[str, torch.Tensor], targets: Targets,
               image: torch.Tensor, eager_style_grad: bool = False) -> dict[str, torch.Tensor]:
    """Weighted terms {"content", "style", "tv", "loss"}; "loss" is their sum. eager_style_grad: for a
    network that keeps nothing of its features for the backward (_StyleTerm)."""
    zero = image.new_zeros(())
    content = sum((c * content_loss(_term_input(config, features[n], config.content_weight), targets.content[n])
                   for n, c in content_coeffs(config, targets).items()), zero)
    style = sum((w * style_term(_term_input(config, features[n], config.style_weight * w), targets, n,
                                eager_style_grad)
                 for n, w in zip(config.style_layers, config.layer_weights())), zero)
    tv_weight = tv_coefficient(config, image.shape[2], image.shape[3])
    terms = {"content": content, "style": config.style_weight * style,
             "tv": tv_weight * tv_loss(_accumulate(image)) if config.tv_weight else zero}
    terms["loss"] = terms["content"] + terms["style"] + terms["tv"]
    return terms


def blend_grams(grams: list[dict[str, torch.Tensor]], positions: list[int], target_positions: int,
                blend: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted mean of several style images' Grams, per layer.

    A Gram is a sum over positions, so a style image of a different size than
    the output gets its Gram scaled by M_output / M_style (per layer the ratio
    of pixel counts) before blending; the paper used equal sizes, where this
    factor is 1.
    """
    blend = blend or [1.0] * len(grams)
    if len(blend) != len(grams):
        raise ConfigError(f"{len(blend)} --style-blend weights for {len(grams)} style images")
    if any(not (w >= 0 and math.isfinite(w)) for w in blend) or max(blend) <= 0:
        raise ConfigError("--style-blend weights must be finite, >= 0 and not all zero")
    largest = max(blend)
    blend = [w / largest for w in blend]  # 1e308,1e308 summed to inf: every Gram weighted 0, silently
    total = sum(blend)
    out = {}
    for name in grams[0]:
        # cast: sum() of tensors is a tensor (its start, 0, is typed as an int)
        out[name] = cast(torch.Tensor, sum(g[name] * (w / total) * (target_positions / m)
                                           for g, w, m in zip(grams, blend, positions)))
    return out
