"""How stylised a picture is: its style and content distances, comparable across sizes.

Losses are not: their magnitudes depend on the weighting, the weights and
the sizes. The distances are relative and per position, so a 128 px and a
2048 px result of the same pair can be compared, and so can two weightings:

  style distance of layer l    |G_l / M_l - A_l / M'_l|_F / |A_l / M'_l|_F
  content distance of layer l  |F_l - P_l|_2 / |P_l|_2

with G the output's Gram over its M positions and A the style's over its M'
(the targets already hold A scaled to the output's positions,
losses.blend_grams, so this is |G - A| / |A| of the step's targets). The
style distance of a run is the mean over its style layers (unweighted: the
measure does not move with --style-layer-weights), likewise the content
distance over its content layers (None for a texture). With spatial masks
a layer's style distance is each region's |G_r - A_r| / |A_r| of guided Gram
means (losses.guided_gram), averaged weighing each region by its mass, as the
loss weighs them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from styleengine.engine.losses import LossConfig, Targets, guided_gram


@dataclass(frozen=True)
class Distances:
    style: float | None  # mean over the style layers
    content: float | None  # mean over the content layers
    style_layers: dict[str, float]
    content_layers: dict[str, float]

    def to_json(self) -> dict:
        return {"style_distance": self.style, "content_distance": self.content,
                "style_layers": self.style_layers, "content_layers": self.content_layers}


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    ref_norm = float(ref.double().norm())
    return float(diff.double().norm()) / ref_norm if ref_norm > 0 else float("inf")


def _mean(values: dict[str, float]) -> float | None:
    return sum(values.values()) / len(values) if values else None


def _region_distance(features: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> float:
    parts = [(guided_gram(features, mask), target) for mask, target in zip(masks, targets)]
    total = sum(float(mass) for (_, mass), _ in parts)
    return sum(float(mass) * _rel(mean - target, target) for (mean, mass), target in parts) / total


@torch.no_grad()
def distances(step, image: torch.Tensor, targets: Targets, config: LossConfig) -> Distances:
    """The distances of `image` (1, 3, H, W) from `targets`, with the step's own network (any Step: a tiled
    step takes its Grams tile by tile). The targets must be those of the image's size."""
    style: dict[str, float] = {}
    if config.style_layers and targets.masks is not None:
        feats = step.features(image, list(config.style_layers))
        for n in config.style_layers:
            style[n] = _region_distance(feats[n], targets.masks.to(feats[n].device),
                                        targets.region_grams[n].to(feats[n].device))
    elif config.style_layers:
        grams = step.grams(image, list(config.style_layers))
        for n in config.style_layers:
            target = targets.grams[n].to(grams[n].device)
            style[n] = _rel(grams[n].float() - target, target)
    content: dict[str, float] = {}
    if config.content_layers and targets.content:
        feats = step.features(image, list(config.content_layers))
        for n in config.content_layers:
            target = targets.content[n].to(feats[n].device)
            content[n] = _rel(feats[n].float() - target, target)
    return Distances(_mean(style), _mean(content), style, content)
