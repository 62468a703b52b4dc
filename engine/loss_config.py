"""Which layers enter the loss and how its terms are weighted (torch-free: settings are checked without torch).

The terms themselves are defined once, in engine/losses.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from styleengine.choices import FLOAT32_MAX, FLOAT32_TINY, WEIGHTINGS, check_choice
from styleengine.errors import ConfigError, SettingError
from styleengine.model import vgg

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)
# the TV term's unit: a mean of squared [0, 1] pixel differences (~1e-2) is ~1e5x smaller than the content and
# style terms' gradients on caffe-scale features (shared VGG16, astronaut x The Starry Night at 192 px: content
# 335, style 6222, TV at weight 1 without it 9.4e-4 in gradient norm), so --tv-weight 0.1 .. 10 are the visible ones
TV_UNIT = 1e5


def in_float32(value: float) -> bool:
    """Whether a weight is 0 or a normal float32: 1e39 is inf in the float32 loss, 1e-50 is 0."""
    return not (value > FLOAT32_MAX or 0 < value < FLOAT32_TINY)


def check_float32(name: str, value: float, setting: str | None = None) -> None:
    """ConfigError for a loss weight float32 cannot hold (in_float32); a SettingError of `setting` if given."""
    if not in_float32(value):
        problem = (f"{value:g} is past float32, where the loss is computed (0, or {FLOAT32_TINY:.3g} to "
                   f"{FLOAT32_MAX:.3g})")
        raise SettingError(setting, name, problem) if setting else ConfigError(f"{name} {problem}")


@dataclass(frozen=True)
class LossConfig:
    """Which layers enter the loss and how the terms are weighted."""

    # the paper's conv4_2 means its ReLU output; a conv name uses the pre-ReLU map
    content_layers: tuple[str, ...] = CONTENT_LAYERS
    style_layers: tuple[str, ...] = STYLE_LAYERS
    # w_l per style layer; None is the paper's 1/len(style_layers) each
    style_layer_weights: tuple[float, ...] | None = None
    content_weight: float = 1.0  # alpha
    # beta: alpha/beta = 100 in the size-invariant weighting, tuned with the shared VGG16 (caffe convention:
    # BGR, 0-255) on astronaut x The Starry Night, content init, 150 L-BFGS iterations at 256 px: 1e-2 strongly
    # stylised with the face readable (style distance 0.18, content 0.75), 3e-2 heavier (0.14, 0.88), the face
    # half gone. Weights whose features are on another scale (torchvision's [0, 1] input) need another beta:
    # content is quadratic and style quartic in the features
    style_weight: float = 1e-2
    # squared-difference total variation on the [0, 1] RGB image, in units of TV_UNIT (not in the
    # paper; the usual remedy for its low-level noise)
    tv_weight: float = 0.0
    weighting: str = "invariant"  # "invariant" or "paper" (the module docstring)
    # neural-style's -normalize_gradients: each term's gradient at its layer divided by its L1 norm, times its
    # weight (alpha, beta w_l); the loss's value is unchanged, so the gradient is no longer the loss's
    normalize_gradients: bool = False
    # neural-style-pt's -normalize_weights: each layer's weight divided by its channel count (style: C_l; content:
    # the largest side of P^l, its channels unless the map is wider), as Gatys' NeuralImageSynthesis does
    normalize_weights: bool = False

    def layer_weights(self) -> tuple[float, ...]:
        """w_l per style layer (normalize_weights: divided by the layer's channels)."""
        if self.style_layer_weights is None:
            weights = tuple(1.0 / len(self.style_layers) for _ in self.style_layers)
        else:
            weights = self.style_layer_weights
        if not self.normalize_weights or len(weights) != len(self.style_layers):
            return weights
        return tuple(w / vgg.channels(n) for w, n in zip(weights, self.style_layers))

    def validate(self, model: str) -> None:
        check_choice("weighting", self.weighting, WEIGHTINGS)
        try:
            vgg.resolve(model, list(self.content_layers) + list(self.style_layers))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not self.content_layers and not self.style_layers:
            raise ConfigError("the loss needs at least one content or style layer")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.layer_weights()):
            raise ConfigError(f"style layer weights must be finite numbers >= 0, got {list(self.layer_weights())}")
        for field, name, value in (("content_weight", "content weight", self.content_weight),
                                   ("style_weight", "style weight", self.style_weight),
                                   ("tv_weight", "tv weight", self.tv_weight)):
            check_float32(name, value, field)
        given = self.style_layer_weights or self.layer_weights()
        for was, weight, layer in zip(given, self.layer_weights(), self.style_layers):
            check_float32("style layer weight", was, "style_layer_weights")
            if weight != was and not in_float32(weight):  # the value given, then what the division made of it
                raise SettingError("style_layer_weights", "style layer weight",
                                   f"{was:g} divided by {layer}'s {vgg.channels(layer)} channels (--normalize-weights) "
                                   f"is {weight:g}, past float32, where the loss is computed (0, or "
                                   f"{FLOAT32_TINY:.3g} to {FLOAT32_MAX:.3g})")
        if len(self.layer_weights()) != len(self.style_layers):
            raise ConfigError(
                f"{len(self.layer_weights())} style layer weights for {len(self.style_layers)} style layers"
            )
        for field, name, value in (("content_weight", "content weight", self.content_weight),
                                   ("style_weight", "style weight", self.style_weight),
                                   ("tv_weight", "tv weight", self.tv_weight)):
            if not (value >= 0 and value != float("inf")):
                raise SettingError(field, name, f"must be a finite number >= 0, got {value}")

    def idle(self, *, texture: bool = False) -> str:
        """Why no term moves the image, one reason a term ('' when one does): a zero weight, or no layer (or only
        zero layer weights) for it to read. A texture has no content term to name."""
        content = ("content weight 0" if self.content_weight == 0 else "" if self.content_layers
                   else "no content layer")
        style = ("style weight 0" if self.style_weight == 0 else "no style layer" if not self.style_layers
                 else "" if any(w > 0 for w in self.layer_weights()) else "style layer weights all 0")
        tv = "tv weight 0" if self.tv_weight == 0 else ""
        reasons = (style, tv) if texture else (content, style, tv)
        return ", ".join(reasons) if all(reasons) else ""

    @property
    def layers(self) -> list[str]:
        """Every layer the loss reads, content first, without repeats."""
        return list(dict.fromkeys(self.content_layers + self.style_layers))
