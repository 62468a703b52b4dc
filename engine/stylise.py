"""One stylisation run: settings -> weights, step, targets, init, loop, colour.

No printing, no argument parsing, no output paths: the caller (the CLI, a
notebook, a test) gets each iteration through `callback` and the final
image as an array.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from styleengine.engine import images
from styleengine.choices import (BACKENDS, CONV_ALGOS, DEVICES, LBFGS_HISTORY, MODELS, OPTIMIZERS, POOLINGS,
                                 PRECISIONS, PROVIDERS, check_choice)
from styleengine.engine import capability
from styleengine.engine.backends import make_step
from styleengine.errors import ConfigError
from styleengine.engine.loop import Record, Result, optimise_batch
from styleengine.engine.losses import LossConfig
from styleengine.engine.quality import distances
from styleengine.engine.steps import Step, make_targets, resolve_device
from styleengine.engine.tiled import TiledStep, tile_for_budget
from styleengine.model.weights import Convention, Weights, convention_name, load_weights

# the loop keeps 16 bytes of loss terms an iteration on the device; past this a run is a typo, not a plan
MAX_ITERATIONS = 1_000_000
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy take alike
TEXTURE_INIT = "noise"  # texture synthesis starts from white noise, as in the paper
_LOSS = LossConfig()  # the loss defaults live in LossConfig; Settings reads them from there

# callback(record, current): `current()` returns the image so far as an
# (H, W, 3) array, finished as the final one will be (colours preserved)
Callback = Callable[[Record, Callable[[], np.ndarray]], None]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a run needs besides the images; each default is written here once."""

    size: int = 512  # long side of the output in px (the paper's ~512x512)
    # optimiser iterations (L-BFGS: one loss-and-gradient evaluation each); coarse to fine, see scale_plan
    iterations: int = 300
    optimizer: str = "lbfgs"  # "lbfgs" (the paper's) or "adam"
    lr: float | None = None  # step size; None is the optimiser's default (L-BFGS 1, Adam 0.02)
    # L-BFGS curvature pairs (two image-sized vectors each: 100 cost 10 GB at 2048x2048).
    # None: LBFGS_HISTORY, fewer where that would pass a quarter of the memory (lbfgs_history())
    lbfgs_history: int | None = None
    # L-BFGS moves no pixel (in [0, 1]) more than this per iteration; 0: never capped (torch's LBFGS exactly).
    # Not in the paper or the popular loops: without it, VGG16 at 512 px, the loss jumped 55x at iteration 4
    # and 13x at 7 (moves of 2.4 and 1.1); with 0.25 it fell smoothly, 42% lower at iteration 20 and 8% at 40,
    # both distances slightly lower at 40 (0.1 was slower: each early step clipped)
    lbfgs_max_step: float = 0.25
    # the paper starts from white noise; content init reaches a readable result
    # in far fewer iterations, which matters on a CPU (its Fig. 6 compares both)
    init: str = "content"  # "noise" (seeded), "content", "style" or a path to an image
    seed: int = 0  # seeds the noise init and random weights (a local torch.Generator)
    model: str = "vgg19"  # "vgg19" (the paper's) or "vgg16"
    weights: str = "imagenet"  # "imagenet", "random" (tests, timing) or a .safetensors/.pth path
    # overrides the weights' input convention (channel order, range, mean, std)
    convention: Convention | None = None
    non_strict: bool = False  # a weights file's unknown keys under features. are ignored (listed), not refused
    pooling: str = "avg"  # "avg" (the paper's) or "max"
    content_layers: tuple[str, ...] = _LOSS.content_layers  # layers whose features P^l are matched
    style_layers: tuple[str, ...] = _LOSS.style_layers  # layers whose Gram matrices A^l are matched
    style_layer_weights: tuple[float, ...] | None = _LOSS.style_layer_weights  # w_l; None: 1/len each
    content_weight: float = _LOSS.content_weight  # alpha
    style_weight: float = _LOSS.style_weight  # beta
    tv_weight: float = _LOSS.tv_weight  # total-variation weight (not in the paper)
    # "invariant": the terms' balance does not depend on the pixel count; "paper": Gatys et al.'s sums
    weighting: str = _LOSS.weighting
    style_blend: tuple[float, ...] | None = None  # one weight per style image; None: equal
    # style images are resized to the output's long side times this before
    # their Grams are taken (the paper: 1, same size as the content)
    style_scale: float = 1.0
    preserve_colors: bool = False  # keep the content's chroma, take only luminance from the run
    # "torch", "ort" or "tensorrt": who computes loss and gradient; "auto": torch or ort, the faster here
    # (measured: engine/autotune.py)
    backend: str = "auto"
    # ONNX Runtime execution provider (cpu, cuda, tensorrt); "auto" follows the device (capability.place)
    provider: str = "auto"
    device: str = "auto"  # where the step runs: "cpu", "cuda" or "auto" (cuda when present), every backend
    # "auto": the fastest precision measured here that keeps the look (engine/autotune.py); or "fp32",
    # "bf16" (torch), "fp16" (graph backends on a GPU), "tf32" (tensorrt); engine/capability.py says what runs where
    precision: str = "auto"
    # convolutions: "direct" (oneDNN/cuDNN/ORT's), "winograd" (fp32: torch on the CPU via NNPACK, engine/winograd.py;
    # ort: F(4x4, 3x3) in the graph, export/winograd.py) or "auto" (measured, like the precision)
    conv: str = "auto"
    save_every: int = 0  # the caller saves every N iterations (0: never); the engine only reports
    # style and content distances (engine/quality.py) in the record of every N-th iteration (0: never; a
    # forward pass each); the result always has the final image's
    distance_every: int = 0
    # coarse-to-fine (not in the paper): scales grow by about sqrt(2) up to `size`, each starting from the
    # previous result upsampled (bicubic, antialiased), style targets recomputed at each scale.
    # None: 1 scale up to AUTO_SCALES_ABOVE px, above that enough to start between 512 and 724 px
    scales: int | None = None
    start_size: int | None = None  # long side of the first scale; None: from `scales`
    iters_per_scale: int | None = None  # iterations at every scale but the last; None: halving (scale_plan)
    # exact tiling (engine/tiled.py): core size in px, a multiple of 16; None: untiled unless mem_budget_gib
    tile: int | None = None
    mem_budget_gib: float | None = None  # pick the tile for this budget (tiled.tile_for_budget's formula)

    def resolved(self) -> "Settings":
        """These settings with every `auto` (backend, device, provider, precision, conv) made concrete for this
        machine: measured once and kept (engine/autotune.py), explicit settings as given."""
        from styleengine.engine.autotune import choose

        return choose(self).settings

    def scale_plan(self) -> list[tuple[int, int]]:
        """(long side, iterations) per scale, coarse to fine.

        iters_per_scale set: that many at every scale but the last, `iterations` at the last. Else the
        first scale does `iterations` and each finer one half as many as the one before (at least
        MIN_SCALE_ITERS): a ~sqrt(2) step doubles the pixels, so every scale costs about the same time
        and most iterations run where they are cheap (a 2048 px run: 300, 150, 75, 38 at 724 .. 2048 px,
        a quarter of the time of 300 at each)."""
        sizes = scale_sizes(self.size, self.scales, self.start_size)
        if self.iters_per_scale is not None:
            return [(s, self.iters_per_scale) for s in sizes[:-1]] + [(sizes[-1], self.iterations)]
        floor = min(self.iterations, MIN_SCALE_ITERS)
        return [(s, max(floor, math.ceil(self.iterations / 2**i))) for i, s in enumerate(sizes)]

    def loss_config(self, *, texture: bool = False) -> LossConfig:
        """The LossConfig of these settings; texture synthesis drops the content term (alpha = 0)."""
        return LossConfig(
            content_layers=() if texture else self.content_layers,
            style_layers=self.style_layers,
            style_layer_weights=self.style_layer_weights,
            content_weight=0.0 if texture else self.content_weight,
            style_weight=self.style_weight,
            tv_weight=self.tv_weight,
            weighting=self.weighting,
        )

    def validate(self, *, texture: bool = False) -> None:
        """Raise ConfigError for any setting that cannot work, before any long work starts."""
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("model", self.model, MODELS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("backend", self.backend, ("auto",) + BACKENDS)
        check_choice("provider", self.provider, ("auto",) + PROVIDERS)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, ("auto",) + PRECISIONS)
        check_choice("conv", self.conv, CONV_ALGOS)
        capability.check_settings(self.backend, self.device, self.provider, self.precision, self.conv)
        if self.size < images.MIN_SIDE:
            raise ConfigError(f"size must be at least {images.MIN_SIDE} px, got {self.size}")
        for name, value in (("iterations", self.iterations), ("iterations per scale", self.iters_per_scale)):
            if value is not None and value > MAX_ITERATIONS:
                raise ConfigError(f"{name} must be at most {MAX_ITERATIONS}, got {value}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be at least 0 and at most {MAX_SEED} (2**63 - 1), got {self.seed}")
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be a finite number > 0, got {self.lr}")
        if not (self.style_scale > 0 and math.isfinite(self.style_scale)):
            raise ConfigError(f"style scale must be a finite number > 0, got {self.style_scale}")
        if self.save_every < 0:
            raise ConfigError(f"save-every must be >= 0, got {self.save_every}")
        if not (self.lbfgs_max_step >= 0 and math.isfinite(self.lbfgs_max_step)):
            raise ConfigError(f"L-BFGS max step must be a finite number >= 0 (0: no cap), got {self.lbfgs_max_step}")
        if self.distance_every < 0:
            raise ConfigError(f"distance-every must be >= 0, got {self.distance_every}")
        if self.lbfgs_history is not None and self.lbfgs_history < 1:
            raise ConfigError(f"L-BFGS history must be >= 1, got {self.lbfgs_history}")
        if self.iters_per_scale is not None and self.iters_per_scale < 0:
            raise ConfigError(f"iterations per scale must be >= 0, got {self.iters_per_scale}")
        if self.tile is not None and (self.tile <= 0 or self.tile % 16):
            raise ConfigError(f"tile size must be a positive multiple of 16 px, got {self.tile}")
        if self.mem_budget_gib is not None and not (self.mem_budget_gib > 0 and math.isfinite(self.mem_budget_gib)):
            raise ConfigError(f"memory budget must be a finite number of GiB > 0, got {self.mem_budget_gib}")
        scale_sizes(self.size, self.scales, self.start_size)  # raises ConfigError for impossible scales
        for name, values in (("style layer weight", self.style_layer_weights), ("style blend weight", self.style_blend)):
            for v in values or ():
                if not (v >= 0 and math.isfinite(v)):
                    raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
        if self.style_blend is not None and not sum(self.style_blend) > 0:
            raise ConfigError("style blend weights must not all be zero (they are normalised to sum to 1)")
        if self.backend == "tensorrt" and self.tile is not None:
            raise ConfigError("the tensorrt backend cannot tile; use --backend ort or torch for --tile")
        if self.convention is not None:
            self.convention.validate()
        self.loss_config(texture=texture).validate(self.model)


_DEFAULTS = Settings()


HISTORY_SHARE = 0.25  # of the memory budget (or of the memory available) that L-BFGS's history may take
MIN_AUTO_HISTORY = 3  # below this L-BFGS is little better than gradient descent; kept even if over the share


def lbfgs_pair_bytes(height: int, width: int) -> int:
    """Memory of one L-BFGS curvature pair: two fp32 vectors the size of a (3, H, W) image."""
    return 2 * 3 * height * width * 4


def available_memory(settings: Settings) -> int:
    """Bytes free now where the run's tensors live: the GPU's for a CUDA device or a GPU provider
    (their steps keep the image, gradient and L-BFGS history there too), else the host's."""
    from styleengine.engine.autotune import choose

    if choose(settings, tune=False).settings.device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def lbfgs_history(settings: Settings, height: int, width: int) -> int:
    """The L-BFGS history for an image of height x width: the setting, or LBFGS_HISTORY capped so the
    pairs (2 * 3 * H * W fp32 values each) stay within HISTORY_SHARE of the memory budget
    (settings.mem_budget_gib, else the memory available now)."""
    if settings.lbfgs_history is not None:
        return settings.lbfgs_history
    if settings.mem_budget_gib is not None:
        budget = settings.mem_budget_gib * 2**30
    else:
        budget = available_memory(settings)
    return max(MIN_AUTO_HISTORY, min(LBFGS_HISTORY, int(HISTORY_SHARE * budget // lbfgs_pair_bytes(height, width))))


MIN_SCALE_ITERS = 10  # the fewest iterations the halving schedule gives a scale (scale_plan)
AUTO_SCALES_ABOVE = 1024  # sizes above this run coarse-to-fine unless `scales` says otherwise
AUTO_START = 512 * math.sqrt(2)  # an automatic first scale lies in (512, 724] px


def scale_sizes(size: int, scales: int | None = None, start_size: int | None = None) -> list[int]:
    """Long sides of a coarse-to-fine run, growing by about sqrt(2) and ending at `size`.

    scales and start_size both None: [size] up to AUTO_SCALES_ABOVE, else
    from the first size in (512, 724] (2048 -> 724, 1024, 1448, 2048).
    scales only: `scales` sizes, each sqrt(2) times the one before.
    start_size only: from start_size, as many ~sqrt(2) steps as come closest.
    Both: `scales` sizes from start_size to size, evenly spaced in log size.
    """
    if scales is not None and scales < 1:
        raise ConfigError(f"scales must be >= 1, got {scales}")
    if start_size is not None and not (images.MIN_SIDE <= start_size <= size):
        raise ConfigError(f"start size must be between {images.MIN_SIDE} and the size {size} px, got {start_size}")
    if scales is None and start_size is None:
        if size <= AUTO_SCALES_ABOVE:
            return [size]
        scales = math.ceil(2 * math.log2(size / AUTO_START) - 1e-9) + 1
    if start_size is None:
        ratio = math.sqrt(2)
    else:
        if scales is None:
            scales = round(2 * math.log2(size / start_size)) + 1
        if scales == 1:
            return [size]
        ratio = (size / start_size) ** (1 / (scales - 1))
    sizes = [round(size / ratio ** (scales - 1 - i)) for i in range(scales)]
    if sizes[0] < images.MIN_SIDE:
        raise ConfigError(f"{scales} scales up to {size} px start at {sizes[0]} px, below the minimum "
                          f"{images.MIN_SIDE} px; use fewer scales")
    return sizes


@dataclass(frozen=True)
class Prepared:
    """The images of one run at the output size, as (1, 3, H, W) tensors in [0, 1]."""

    content: torch.Tensor | None
    styles: list[torch.Tensor]
    height: int
    width: int


def style_size(settings: Settings, size: int) -> int:
    """The style images' long side at an output long side of `size`."""
    return max(images.MIN_SIDE, round(size * settings.style_scale))


def prepare(content: np.ndarray | None, styles: list[np.ndarray], settings: Settings, size: int) -> Prepared:
    """Resize the content to `size` on its long side and each style to size * style_scale.

    A texture (no content) takes the first style image's aspect ratio.
    """
    if not styles and (content is None or settings.style_layers):
        raise ConfigError("at least one style image is needed")
    ref = content if content is not None else styles[0]
    height, width = images.long_side_shape(ref.shape[0], ref.shape[1], size)
    content_t = images.to_tensor(images.resize(content, size)) if content is not None else None
    style_ts = [images.to_tensor(images.resize(s, style_size(settings, size))) for s in styles]
    return Prepared(content_t, style_ts, height, width)


def make_init(settings: Settings, prepared: Prepared, init_image: np.ndarray | None = None) -> torch.Tensor:
    """The starting image (1, 3, H, W): seeded noise, the content, the first style, or a given image."""
    shape = (1, 3, prepared.height, prepared.width)
    if settings.init == "noise":
        gen = torch.Generator().manual_seed(settings.seed)  # local: never touches torch's global RNG
        return torch.rand(shape, generator=gen)  # uniform white noise in [0, 1]
    if settings.init == "content":
        if prepared.content is None:
            raise ConfigError("init 'content' needs a content image")
        return prepared.content.clone()
    if settings.init == "style":
        return images.resize_tensor(prepared.styles[0], prepared.height, prepared.width).clone()
    if init_image is None:
        init_image = images.load_image(settings.init)
    return images.resize_tensor(images.to_tensor(init_image), prepared.height, prepared.width).clone()


def tile_for_scale(settings: Settings, loss: LossConfig, height: int, width: int) -> int | None:
    """The tile core for one scale: settings.tile, else from the memory budget (what L-BFGS's history
    takes counted against it); None: untiled (no tile or budget asked for, or the untiled step fits)."""
    if settings.tile is not None or settings.mem_budget_gib is None:
        return settings.tile
    history = lbfgs_history(settings, height, width) if settings.optimizer == "lbfgs" else 0
    return tile_for_budget(settings.mem_budget_gib, settings.model, loss, height, width,
                           other_bytes=history * lbfgs_pair_bytes(height, width))


def check_available(settings: Settings) -> None:
    """UnavailableError now rather than after an export: the torch device, the ONNX Runtime provider
    (the checks create_session makes once the graphs exist) or TensorRT."""
    if settings.backend == "torch":
        resolve_device(settings.device)
    elif settings.backend == "tensorrt":
        from styleengine.engine.trt_step import _import_tensorrt

        _import_tensorrt()
    else:
        from styleengine.engine.ort_step import check_provider

        check_provider(settings.provider)


def _check_sides(label: str, shape: tuple[int, int], long_side: int, what: str, knob: str) -> None:
    """ConfigError if `shape` (height, width) resized to `long_side` has a side under the network's minimum;
    `knob` names the setting that would give the long side it needs ("--size", ...)."""
    height, width = images.long_side_shape(shape[0], shape[1], long_side)
    if min(height, width) >= images.MIN_SIDE:
        return
    needed = math.ceil(images.MIN_SIDE * max(shape) / min(shape))
    raise ConfigError(f"{label} ({shape[1]}x{shape[0]} px) would be {width}x{height} px at {what}; both sides must "
                      f"be at least {images.MIN_SIDE} px, so it needs a long side of {needed} px ({knob} {needed}): "
                      f"crop the image or use a larger size")


def _gib(value: float) -> str:
    return f"{math.floor(value * 10) / 10:g}"


def _suggested_budget(free_gib: float) -> str:
    return _gib(0.9 * free_gib)  # a margin under what is free now


def _check_memory(settings: Settings, loss: LossConfig, height: int, width: int, available: int,
                  history: int) -> None:
    """ConfigError unless a height x width image's step fits `available` bytes as the settings run it
    (untiled, or with settings.tile), by tile_for_budget's estimate with `history` L-BFGS pairs."""
    free = available / 2**30
    try:
        fits = tile_for_budget(free, settings.model, loss, height, width,
                               other_bytes=history * lbfgs_pair_bytes(height, width))
    except ConfigError:
        raise ConfigError(f"a {width}x{height} image needs more than the {_gib(free)} GiB of memory available, "
                          f"even tiled (the image, its gradient, the targets and {history} L-BFGS pairs alone); "
                          f"use a smaller --size") from None
    if fits is None or (settings.tile is not None and settings.tile <= fits):
        return
    if settings.backend == "tensorrt":
        raise ConfigError(f"a {width}x{height} image needs more than the {_gib(free)} GiB of memory available "
                          f"untiled, and the tensorrt backend cannot tile; use --backend ort with "
                          f"--mem-budget {_suggested_budget(free)}")
    if settings.tile is not None:
        raise ConfigError(f"--tile {settings.tile} at {width}x{height} needs more than the {_gib(free)} GiB of "
                          f"memory available; use --tile {fits} or less, or --mem-budget {_suggested_budget(free)}")
    raise ConfigError(f"a {width}x{height} image needs more than the {_gib(free)} GiB of memory available "
                      f"untiled; add --mem-budget {_suggested_budget(free)} (tiles chosen per scale) or --tile {fits}")


def check_run(settings: Settings, content_shape: tuple[int, int] | None, style_shapes: list[tuple[int, int]], *,
              content_label: str = "the content image", style_labels: list[str] | None = None) -> None:
    """Everything the settings and the images' (height, width) decide, before any work; ConfigError or
    UnavailableError. content_shape None: a texture. At every scale: each image resized has both sides
    >= MIN_SIDE (a 2000x40 image at 64 px would be 64x1), and the run fits the memory: with a memory
    budget, a tile exists for it; else the step, as run, fits the memory available now (by tile_for_budget's
    estimate with L-BFGS's history); the style blend has one weight per style; the device or provider exists."""
    from styleengine.engine.autotune import choose

    texture = content_shape is None
    settings.validate(texture=texture)
    settings = choose(settings, tune=False).settings  # where it runs; the trial (if any) comes after these checks
    if not style_shapes and settings.style_layers:  # no style layers (inversion, beta = 0): no style image
        raise ConfigError("at least one style image is needed")
    if settings.style_blend is not None and len(settings.style_blend) != len(style_shapes):
        raise ConfigError(f"{len(settings.style_blend)} style blend weights for {len(style_shapes)} style images")
    check_available(settings)
    labels = style_labels or [f"style image {i + 1}" for i in range(len(style_shapes))]
    ref = content_shape if content_shape is not None else style_shapes[0]
    loss = settings.loss_config(texture=texture)
    sizes = [size for size, _ in settings.scale_plan()]
    for size in sizes:  # the smallest scale first: there a side is likeliest to vanish
        side = style_size(settings, size)
        knob = "--size" if size == sizes[-1] else "--start-size"  # an earlier scale's long side
        _check_sides(content_label if content_shape is not None else labels[0], ref, size, f"{size} px", knob)
        for label, shape in zip(labels, style_shapes):
            _check_sides(label, shape, side, f"the style size {side} px (size x style scale)",
                         "--size x --style-scale")
    available = available_memory(settings) if settings.mem_budget_gib is None else None
    for size in reversed(sizes):  # the largest first: its error is the one to act on
        height, width = images.long_side_shape(ref[0], ref[1], size)
        style_side = style_size(settings, size)
        if available is None:  # ConfigError if the budget is too small
            if tile_for_scale(settings, loss, height, width) is not None and settings.backend == "tensorrt":
                raise ConfigError(f"a {width}x{height} image needs a tile within --mem-budget "
                                  f"{settings.mem_budget_gib:g}, and the tensorrt backend cannot tile; "
                                  f"use --backend ort")
            continue
        history = lbfgs_history(settings, height, width) if settings.optimizer == "lbfgs" else 0
        _check_memory(settings, loss, height, width, available, history)
        for shape in style_shapes:  # the style targets' forward pass, at the style size
            _check_memory(settings, loss, *images.long_side_shape(shape[0], shape[1], style_side), available, 0)


def optimise_at_size(step: Step, loss: LossConfig, settings: Settings, prepared: list[Prepared],
                     inits: list[torch.Tensor], callback: Callable[[Record, torch.Tensor], None] | None, *,
                     blends: list[tuple[float, ...] | None], targets_step: Step | None = None,
                     offset: int = 0, measure: bool = True, last_use: bool = False) -> list[Result]:
    """Targets at this size, the loop from the inits, then (measure) the distances of each result: one Result
    per picture.

    One scale of a run; a coarse-to-fine run calls this per size (growing
    by sqrt(2)), each init the previous result upsampled. targets_step: the
    step that computes the targets and distances (default `step`); a
    TiledStep takes the style Grams tile by tile. Several pictures (one size)
    run as one batch. Records of every settings.distance_every-th iteration
    (counted across scales) carry the distances of the image after it.
    last_use: the step runs no more after this loop, so it hands back its
    buffers (Step.trim) before the distances' features are computed (an ORT
    step's session held the loop's arena beside the features session: +260 MB
    at 384 px).
    """
    targets_step = targets_step or step
    targets = [make_targets(targets_step, loss, p.content, p.styles, list(blend) if blend else None,
                            output_positions=p.height * p.width) for p, blend in zip(prepared, blends)]
    step.set_targets(targets[0] if len(targets) == 1 else targets)
    wanted = [every for every in (settings.save_every, settings.distance_every) if every]
    # --save-every and --distance-every count iterations across scales: the loop reads exactly those
    read_at = (lambda i: any((offset + i) % every == 0 for every in wanted)) if wanted else None
    with_distances: dict[tuple[int, int], Record] = {}  # (image, iteration) -> its record with the distances
    if settings.distance_every:
        inner, every = callback, settings.distance_every

        def callback(record: Record, image: torch.Tensor) -> None:
            if (offset + record.iteration) % every == 0:
                d = distances(targets_step, image, targets[record.index], loss)
                record = with_distances[record.index, record.iteration] = dataclasses.replace(record, distances=d)
            if inner is not None:
                inner(record, image)

    results = optimise_batch(step, torch.cat(inits), iterations=settings.iterations, optimizer=settings.optimizer,
                             lr=settings.lr, callback=callback,
                             history=lbfgs_history(settings, prepared[0].height, prepared[0].width),
                             max_step=settings.lbfgs_max_step or None, read_at=read_at)
    if with_distances:  # the loop keeps its own records: these replace them
        results = [dataclasses.replace(r, records=[with_distances.get((rec.index, rec.iteration), rec)
                                                   for rec in r.records]) for r in results]
    if not measure:  # a coarse scale of a run: its result is the next scale's start, not the answer
        return results
    if last_use:
        step.trim()
    measured: list[Result] = []
    for result, target in zip(results, targets):
        if result.stopped == "interrupted" or (measured and measured[-1].stopped == "interrupted"):
            measured.append(dataclasses.replace(result, stopped="interrupted"))  # the user wants out
            continue
        try:
            measured.append(dataclasses.replace(result, distances=distances(targets_step, result.image, target, loss)))
        except KeyboardInterrupt:  # during the measurement: the loop's contract, its image is the result
            measured.append(dataclasses.replace(result, stopped="interrupted"))
    return measured


def build_step(settings: Settings, weights: Weights, loss: LossConfig) -> Step:
    """The step these (resolved) settings ask for, built with `loss`'s layers."""
    with torch.random.fork_rng(devices=[]):  # building nn.Conv2d layers draws from torch's global generator
        return make_step(settings.backend, weights, loss, pooling=settings.pooling,  # type: ignore[arg-type]
                         device=settings.device, precision=settings.precision, provider=settings.provider,
                         conv=settings.conv)


def load_run_weights(settings: Settings, convention: dict | None = None) -> Weights:
    """The weights the settings name; `convention`: fields of the input convention that flags override."""
    weights = load_weights(settings.model, settings.weights, seed=settings.seed, strict=not settings.non_strict)
    if convention:
        weights = dataclasses.replace(weights, convention=dataclasses.replace(weights.convention, **convention),
                                      convention_source=f"from flags (over its {convention_name(weights.convention)} "
                                                        f"{weights.convention_source})")
    return weights


@dataclass(frozen=True)
class Picture:
    """One picture of stylise_batch: arrays from images.load_image and its own settings."""

    content: np.ndarray | None  # None: a texture
    styles: list[np.ndarray]
    settings: Settings
    init_image: np.ndarray | None = None  # the image for an init path, if the caller has loaded it


# what may differ between the pictures of one batch: each picture's own targets and start
PER_PICTURE = ("init", "style_blend", "style_scale", "preserve_colors", "save_every")


def batch_key(settings: Settings) -> Settings:
    """Settings with the per-picture fields cleared: pictures whose keys are equal (and whose outputs have
    one shape) can be optimised together. The seed is per picture unless it seeds random weights."""
    cleared = {name: getattr(_DEFAULTS, name) for name in PER_PICTURE}
    if settings.weights != "random":
        cleared["seed"] = _DEFAULTS.seed
    return dataclasses.replace(settings, **cleared)


def stylise(content: np.ndarray | None, styles: list[np.ndarray], settings: Settings = Settings(), *,
            callback: Callback | None = None, weights: Weights | None = None,
            init_image: np.ndarray | None = None, step: Step | None = None) -> tuple[np.ndarray, Result]:
    """Stylise `content` with `styles` (arrays from images.load_image); content None synthesises a texture.

    weights: already loaded, and then the caller's to keep; None: loaded from
    settings.weights and let go once the step is built, so the loop holds
    none beside it (an ORT step has its own in its session, a torch step the
    layers it uses). init_image:
    the image for an init path, if the caller has loaded it already. step:
    a step built for these settings' backend, device, precision, model,
    weights, pooling and layers and kept warm by the caller, who closes it
    (engine/batch.py's Warm); the loss weights are set on it here. None:
    built here and closed at the end.
    Returns the final (H, W, 3) array and the loop's Result (records, why
    it stopped); after a non-finite loss the array is the last finite image.
    """
    return stylise_batch([Picture(content, styles, settings, init_image)], callback=callback, weights=weights,
                         step=step)[0]


def stylise_batch(pictures: list[Picture], *, callback: Callback | None = None, weights: Weights | None = None,
                  step: Step | None = None) -> list[tuple[np.ndarray, Result]]:
    """stylise() for several pictures optimised together, as one batch through one step: (array, Result)
    each, in order; the records of picture i carry index i.

    More than one picture needs equal batch_key()s, one output shape, one scale, no tile and the torch
    backend (ValueError otherwise: the caller groups them, engine/batch.py); one picture is stylise().
    """
    fixed = []
    for picture in pictures:
        if picture.content is None:
            # texture synthesis: alpha = 0, no content layers, white noise unless another init is asked for
            picture = dataclasses.replace(picture, settings=dataclasses.replace(
                picture.settings, preserve_colors=False,
                init=TEXTURE_INIT if picture.settings.init == "content" else picture.settings.init))
        check_run(picture.settings, picture.content.shape[:2] if picture.content is not None else None,
                  [s.shape[:2] for s in picture.styles])
        fixed.append(dataclasses.replace(picture, settings=picture.settings.resolved()))
    pictures = fixed
    settings = pictures[0].settings
    texture = pictures[0].content is None
    if len(pictures) > 1 and (len({batch_key(p.settings) for p in pictures}) > 1
                              or any((p.content is None) != texture for p in pictures)):
        raise ValueError("the pictures of one batch must share every setting but " + ", ".join(PER_PICTURE))
    if len(pictures) > 1 and (settings.backend != "torch" or len(settings.scale_plan()) > 1):
        raise ValueError("batches run on the torch backend at one scale")
    loaded = weights is None  # then nothing but the step needs them: let them go once it is built
    if weights is None:
        weights = load_weights(settings.model, settings.weights, seed=settings.seed, convention=settings.convention,
                               strict=not settings.non_strict)
    elif weights.model != settings.model:
        raise ConfigError(f"weights are for {weights.model}, settings ask for {settings.model}")
    loss = settings.loss_config(texture=texture)
    plan = settings.scale_plan()
    prepared = [prepare(p.content, p.styles, p.settings, plan[0][0]) for p in pictures]
    if len({(q.height, q.width) for q in prepared}) > 1:
        raise ValueError(f"the pictures of one batch must have one output shape, got "
                         f"{sorted({(q.height, q.width) for q in prepared})}")
    inits = [make_init(p.settings, q, p.init_image) for p, q in zip(pictures, prepared)]
    # per scale: each content at this scale's size (colour preservation) and the iterations done before it
    scale: dict = {"content": [images.to_array(q.content) if q.content is not None else None for q in prepared],
                   "offset": 0}

    def finish(index: int, image: torch.Tensor) -> np.ndarray:
        out = np.clip(images.to_array(image), 0.0, 1.0)
        if pictures[index].settings.preserve_colors and scale["content"][index] is not None:
            out = images.preserve_colors(out, scale["content"][index])
        return out

    loop_callback = None
    if callback is not None:
        def loop_callback(record: Record, image: torch.Tensor) -> None:
            # iterations count across scales; the record's height/width say which scale it is
            callback(dataclasses.replace(record, iteration=record.iteration + scale["offset"]),
                     lambda: finish(record.index, image))

    owned = step is None
    if step is None:
        step = build_step(settings, weights, loss)
    else:
        step.set_loss(loss)
    if loaded:  # an ORT step has its own copy in its session, a torch one the tensors its layers use
        del weights
    records: list[list[Record]] = [[] for _ in pictures]
    results: list[Result] = []  # the last finished scale's
    blends = [p.settings.style_blend for p in pictures]
    try:
        for index, (size, iterations) in enumerate(plan):
            try:
                if index:  # one picture (checked above)
                    prepared = [prepare(pictures[0].content, pictures[0].styles, settings, size)]
                    inits = [images.resize_tensor(results[0].image.detach().cpu(), prepared[0].height,
                                                  prepared[0].width)]
                    scale["content"] = [images.to_array(prepared[0].content)
                                        if prepared[0].content is not None else None]
                scale["offset"] = len(records[0])
                tile = tile_for_scale(settings, loss, prepared[0].height, prepared[0].width)
                if tile is not None and len(pictures) > 1:
                    raise ValueError("a tiled step runs one picture at a time")
                tiled = TiledStep(step, loss, settings.model, tile=tile) if tile is not None else None
                parts = optimise_at_size(tiled or step, loss, dataclasses.replace(settings, iterations=iterations),
                                         prepared, inits, loop_callback, blends=blends, targets_step=tiled,
                                         offset=scale["offset"], measure=index == len(plan) - 1,
                                         last_use=owned and index == len(plan) - 1)
            except KeyboardInterrupt:
                # between scales (the next scale's targets): the loop's contract, the last scale's image
                if not index:
                    raise
                results = [Result(r.image, len(rec), "interrupted", rec, r.distances)
                           for r, rec in zip(results, records)]
                break
            for part, rec in zip(parts, records):
                rec += [dataclasses.replace(r, iteration=r.iteration + scale["offset"]) for r in part.records]
            results = [Result(part.image, len(rec), part.stopped, rec, part.distances)
                       for part, rec in zip(parts, records)]
            if any(part.stopped is not None for part in parts):
                break
    finally:
        if owned:
            step.close()
    return [(finish(i, r.image), r) for i, r in enumerate(results)]
