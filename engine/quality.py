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

from styleengine.engine.losses import LossConfig, Targets, gram, guided_gram
from styleengine.engine.steps import StepBase


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


def _grams_of_features(step: object) -> bool:
    """Whether the step's Grams are those of its features (StepBase's own): a tiled step sums them per tile."""
    return getattr(type(step), "_grams", None) is StepBase._grams


def _region_distance(features: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> float:
    parts = [(guided_gram(features, mask), target) for mask, target in zip(masks, targets)]
    total = sum(float(mass) for (_, mass), _ in parts)
    return sum(float(mass) * _rel(mean - target, target) for (mean, mass), target in parts) / total


@torch.no_grad()
def distances(step, image: torch.Tensor, targets: Targets, config: LossConfig) -> Distances:
    """The distances of `image` (1, 3, H, W) from `targets`, with the step's own network (any Step: a tiled
    step takes its Grams tile by tile). The targets must be those of the image's size."""
    content_layers = list(config.content_layers) if targets.content else []
    guided = bool(config.style_layers) and targets.masks is not None
    names = list(dict.fromkeys([*config.style_layers, *content_layers]))
    if names and (guided or _grams_of_features(step)):  # one forward pass gives both (two cost a third more)
        feats = step.features(image, names)
        grams = {} if guided else {n: gram(feats[n]) for n in config.style_layers}
    else:
        grams = step.grams(image, list(config.style_layers)) if config.style_layers else {}
        feats = step.features(image, content_layers) if content_layers else {}
    if guided:
        assert targets.masks is not None and targets.region_grams is not None  # guided: both set together
        style = {n: _region_distance(feats[n], targets.masks.to(feats[n].device),
                                     targets.region_grams[n].to(feats[n].device)) for n in config.style_layers}
    else:
        style = {n: _rel(grams[n].float() - targets.grams[n].to(grams[n].device), targets.grams[n])
                 for n in config.style_layers}
    content = {n: _rel(feats[n].float() - targets.content[n].to(feats[n].device), targets.content[n])
               for n in content_layers}
    return Distances(_mean(style), _mean(content), style, content)
