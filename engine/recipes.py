"""Other tools' recipes in this engine's units: their numbers in, their look out (torch-free).

neural-style-pt (ProGamerGov's PyTorch port of jcjohnson's neural-style)
weighs each term differently from engine/losses.py; with its caffe VGG
(the shared VGG16's convention: BGR, 0-255, mean subtracted) the features
are on the same scale as ours, so its loss maps exactly, term by term:

  content  a * mean (F - P)^2                    = our alpha = 2a, invariant weighting (1/2 mean)
  style    b * mean (G/(N M) - A/(N M))^2 per layer = b * 4/N_l^2 * E_l: beta = 4b, w_l = 1/N_l^2
  TV       t * sum |dx| on 0-255 pixels          ~ ours at equal gradient for a typical neighbour
                                                   difference (TYPICAL_DIFFERENCE) at --size (square)

Their TV is an L1 sum and ours a squared mean, so only that one is an
approximation (their default, 1e-3, is a small term either way). The rest
of the recipe is theirs: max pooling, L-BFGS without a step cap from their
start (init randn: a flat grey, which a uniform noise start is not; it kept
its grain and put the style distance 17% off theirs at 128 px), one scale,
1000 iterations at 512 px. Their -normalize_weights is our
--normalize-weights; their -normalize_gradients is not ours (see README).
"""
from __future__ import annotations

import math
from typing import Any

from styleengine.choices import FLOAT32_MAX, FLOAT32_TINY, WEIGHTINGS, check_choice
from styleengine.engine.loss_config import STYLE_LAYERS, TV_UNIT, in_float32
from styleengine.model import vgg

NEURAL_STYLE_PT = "neural-style-pt"
RECIPES = (NEURAL_STYLE_PT,)
# the settings the recipe's weights are read in its own units for
WEIGHTS = ("content_weight", "style_weight", "tv_weight")
# a photo's mean neighbour difference |dx| in [0, 1] at a few hundred px (astronaut: 0.036 at 256 px, 0.026 at 512)
TYPICAL_DIFFERENCE = 0.04

_DEFAULTS: dict[str, dict[str, Any]] = {
    NEURAL_STYLE_PT: {
        "content_weight": 5.0, "style_weight": 100.0, "tv_weight": 1e-3,  # in its units: mapped below
        "size": 512, "iterations": 1000, "scales": 1, "pooling": "max", "init": "randn", "optimizer": "lbfgs",
        "lbfgs_max_step": 0.0, "weighting": "invariant",
    },
}


def recipe_values(name: str, given: dict[str, Any], flags: bool = True,
                  keys: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings values for recipe `name` with the `given` ones (flags named on the command line) winning; the
    recipe's weights, given or not, are in its own units and come back in ours. ConfigError for an unknown
    recipe. `flags`: errors name a setting as its flag (--tv-weight), else as a jobs file's key (tv_weight), or
    as `keys` has it (setting -> the key as typed)."""
    check_choice("recipe", name, RECIPES)
    from styleengine.errors import ConfigError

    def spelled(key: str) -> str:
        if keys and key in keys:
            return keys[key]
        return f"--{key.replace('_', '-')}" if flags else key

    for key in WEIGHTS:  # checked as typed: the mapped value would show the user a number they never wrote
        value = given.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{spelled(key)} must be a finite number >= 0 (in {name}'s units), got {value}")
    weighting = given.get("weighting")
    if weighting is not None:  # a misspelling is said as one, not as another weighting
        check_choice(spelled("weighting"), weighting, WEIGHTINGS)
    if weighting is not None and weighting != _DEFAULTS[name]["weighting"]:  # its units hold for its weighting only
        raise ConfigError(f"{spelled('weighting')} {weighting} is not {name}'s: its weights are mapped for "
                          f"{_DEFAULTS[name]['weighting']} weighting; drop {spelled('weighting')}, or the recipe")
    values = {**_DEFAULTS[name], **given}
    size = values["size"]
    # equal gradients: t * 255 per unit |dx| against tv * TV_UNIT / (3 H W) * 2 dx, at dx = TYPICAL_DIFFERENCE
    scale = {"content_weight": 2.0, "style_weight": 4.0,
             "tv_weight": 255 * 3 * size * size / (2 * TYPICAL_DIFFERENCE * TV_UNIT)}
    for key in WEIGHTS:
        typed = values[key]
        values[key] = typed * scale[key]
        if not in_float32(values[key]):  # said in the recipe's units, as typed, with the range they allow
            low, high = (_shown_bound(bound / scale[key], scale[key], up) for bound, up in ((FLOAT32_TINY, True),
                                                                                           (FLOAT32_MAX, False)))
            raise ConfigError(f"{spelled(key)} {typed:g} (in {name}'s units) is past float32 in this engine's, "
                              f"where the loss is computed: 0, or {low:g} to {high:g} at {size} px")
    if "style_layer_weights" not in given:
        layers = values.get("style_layers", STYLE_LAYERS)
        values["style_layer_weights"] = tuple(1.0 / _channels(n) ** 2 for n in layers)
    return values


def _shown_bound(bound: float, scale: float, up: bool) -> float:
    """`bound` to 3 significant figures, rounded inward (`up` for a lower bound) so that the value shown is taken."""
    step = 10.0 ** (math.floor(math.log10(bound)) - 2)
    shown = float(f"{(math.ceil if up else math.floor)(bound / step) * step:.3g}")
    while not in_float32(shown * scale):  # the float error at the edge: one step further in
        shown = float(f"{shown + (step if up else -step):.3g}")
    return shown


def _channels(name: str) -> int:
    try:
        return vgg.channels(name)
    except ValueError as e:
        from styleengine.errors import ConfigError

        raise ConfigError(str(e)) from None
