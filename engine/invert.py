"""Feature inversion (Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them",
CVPR 2015): the image whose features at one layer match a picture's, from noise, under a smoothness prior.

The style transfer loss with beta = 0 (texture synthesis is alpha = 0) and one
content layer: the same step, targets and loop (engine/stylise.py). As in the
paper the feature term is normalised by the target's energy, so one weight
serves every layer: content_weight / mean(P^2) makes the content term
content_weight / 2 * ||F - P||^2 / ||P||^2. The prior is the paper's V^beta
with beta = 2 (squared differences: engine/losses.py's tv_loss, a mean per
pixel here); their alpha-norm term bounding the pixels is left out: the
result is clipped to [0, 1] at the end, as every run's is.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from styleengine.engine import images
from styleengine.engine.loop import Result
from styleengine.choices import FLOAT32_MAX, FLOAT32_TINY
from styleengine.engine.loss_config import TV_UNIT, in_float32
from styleengine.engine.stylise import Callback, Settings, build_step, stylise
from styleengine.model.weights import Weights, load_weights

# an inversion's own defaults where a style transfer's do not fit: from noise (the paper's start), the
# normalised feature term against the prior (0.5: astronaut at 128 px, conv3_1, 100 iterations: pixel RMS
# difference 0.054; 5 gave 0.086)
INIT, FEATURE_WEIGHT, TV_WEIGHT = "noise", 1.0, 0.5


def inversion_settings(settings: Settings, layer: str) -> Settings:
    """`settings` as an inversion of `layer`: its content layer alone, no style term, nothing per style."""
    return dataclasses.replace(settings, content_layers=(layer,), style_layers=(), style_layer_weights=None,
                               style_weight=0.0, style_blend=None, preserve_colors=False)


def feature_energy(weights: Weights, settings: Settings, image: np.ndarray) -> float:
    """mean(P^2) of `image`'s features at the settings' content layer, at the first scale's size."""
    size = settings.scale_plan()[0][0]
    with build_step(settings, weights, settings.loss_config()) as step:
        (features,) = step.features(images.to_tensor(images.resize(image, size)),
                                    list(settings.content_layers)).values()
    return float(torch.mean(features.double() ** 2))


def invert(image: np.ndarray, layer: str, settings: Settings, *, callback: Callback | None = None,
           weights: Weights | None = None) -> tuple[np.ndarray, Result, Settings]:
    """Reconstruct `image` (an (H, W, 3) array in [0, 1]) from its features at `layer`.

    settings.content_weight is the feature term's weight relative to the
    target's energy, settings.tv_weight the prior's. Returns the image, the
    loop's Result (its distances: the relative feature error at `layer`) and
    the settings it ran with (the content weight divided by mean(P^2)).
    """
    settings = inversion_settings(settings, layer)
    settings.validate()
    if not in_float32(settings.tv_weight / TV_UNIT):  # it said "tv weight 1.2e-43", a value no one gave
        from styleengine.errors import SettingError

        raise SettingError("tv_weight", "tv weight", f"{settings.tv_weight:g} is past float32 on an inversion's "
                           f"scale, where it is divided by {TV_UNIT:g}: 0, or {FLOAT32_TINY * TV_UNIT:.3g} to "
                           f"{FLOAT32_MAX:.3g}")
    resolved = settings.resolved()
    if weights is None:
        weights = load_weights(settings.model, settings.weights, seed=settings.seed, convention=settings.convention,
                               strict=not settings.non_strict)
    energy = feature_energy(weights, resolved, image)
    if not energy > 0:  # a layer dead for this picture: nothing to reconstruct from
        from styleengine.errors import ConfigError

        raise ConfigError(f"the features of {layer} are all zero for this image; choose a shallower layer")
    scaled = settings.content_weight / energy
    if not in_float32(scaled) or scaled == 0:  # it said "content weight 1.49e-41", a value no one gave
        from styleengine.errors import SettingError  # the command's --feature-weight (the API's content_weight)

        raise SettingError("feature_weight", "feature weight", f"{settings.content_weight:g} over {layer}'s feature "
                           f"energy for this image ({energy:.3g}) is past float32, where the loss is computed: choose "
                           f"one from {max(FLOAT32_TINY, FLOAT32_TINY * energy):.3g} to {FLOAT32_MAX * energy:.3g}")
    # the prior's weight is on the normalised feature term's scale, not the style transfer's TV_UNIT
    run = dataclasses.replace(resolved, content_weight=scaled,
                              tv_weight=settings.tv_weight / TV_UNIT)
    out, result = stylise(image, [], run, callback=callback, weights=weights)
    return out, result, run
