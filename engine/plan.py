"""A plan per run: the machine probed once, then per scale the size, iterations, tile and L-BFGS history, and
what runs the step (torch-free: `styleengine run --dry-run` prints it without loading torch or weights).

`make_plan` also makes every check the settings and the images' shapes allow before any work: each side
at every scale, and the memory (what the step takes, by tiled.tile_for_budget's estimate, with the history).
The plan is what `stylise` executes: nothing in it is computed again later (the memory free at another
moment could give another history or tile).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from styleengine.choices import MIN_SIDE
from styleengine.engine.loss_config import LossConfig
from styleengine.engine.memory import (TILE_COST_FLOOR, free_memory, lbfgs_history, lbfgs_pair_bytes,
                                       least_budget_gib, tile_cost, tile_for_budget, too_small)
from styleengine.engine.schedule import long_side_shape, scale_sizes
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError, SettingError


@dataclass(frozen=True)
class Scale:
    """One scale of a run."""

    size: int  # long side, px
    height: int
    width: int
    iterations: int
    style_side: int  # the style images' long side at this scale
    tile: int | None  # core of the exact tiled step; None: untiled
    history: int  # L-BFGS curvature pairs (0: Adam)


@dataclass(frozen=True)
class Plan:
    """What a run will do, decided before it starts."""

    settings: Settings  # placed: device and provider concrete; backend, precision and conv as resolved so far
    texture: bool
    scales: tuple[Scale, ...]
    memory: int | None  # bytes free where the run's tensors live when planned; None: --mem-budget was given
    auto: str = ""  # how `auto` was (or will be) resolved, one line
    notes: tuple[str, ...] = ()  # what the user should know before the work: a tile that costs much time

    @property
    def iterations(self) -> int:
        return sum(s.iterations for s in self.scales)

    def to_json(self) -> dict[str, Any]:
        """What decides the output: recorded in the trace and hashed into a batch's manifest (free memory is
        left out: it only matters through the history and tiles it gave)."""
        s = self.settings
        return {"backend": s.backend, "device": s.device, "provider": s.provider, "precision": s.precision,
                "conv": s.conv, "scales": [asdict(scale) for scale in self.scales]}

    def lines(self) -> list[str]:
        """The plan for a person to read."""
        s = self.settings
        what = "texture" if self.texture else "stylise"
        out = [f"plan: {what} {s.model} ({s.pooling} pooling, weights {s.weights}), {self.iterations} iterations "
               f"in {len(self.scales)} scale{'s' if len(self.scales) > 1 else ''}",
               f"step: {s.backend} {s.precision} {s.conv} on the {s.device}"
               + (f" ({s.provider} provider)" if s.backend != "torch" else "")]
        if self.auto:
            out.append(f"auto: {self.auto}")
        if self.memory is not None:
            where = "GPU" if s.device.startswith("cuda") else "host"
            out.append(f"memory: {self.memory / 2**30:.1f} GiB free on the {where} now")
        else:
            out.append(f"memory: --mem-budget {s.mem_budget_gib:g} GiB")
        out += [f"warning: {note}" for note in self.notes]
        for i, scale in enumerate(self.scales):
            tile = f"tiles of {scale.tile} px" if scale.tile else "untiled"
            history = f", L-BFGS history {scale.history}" if scale.history else ""
            out.append(f"scale {i + 1}: {scale.width}x{scale.height} px, {scale.iterations} iterations, {tile}"
                       f"{history}; styles at {scale.style_side} px")
        return out


def style_size(settings: Settings, size: int) -> int:
    """The style images' long side at an output long side of `size`."""
    return max(MIN_SIDE, round(size * settings.style_scale))


class TooThin(ConfigError):
    """An image whose short side would vanish at the run's size: the long side it `needs`, and the `knob` that
    sets it (a front end without the knob says its own fix)."""

    def __init__(self, head: str, needed: int, knob: str, advice: str | None = None):
        self.head, self.needed, self.knob = head, needed, knob
        self.advice = advice or f"{knob} {needed}"  # the flags to give: that one, or with others (make_plan)
        super().__init__(f"{head} ({self.advice}): crop the image or use a larger size")

    def __reduce__(self) -> tuple:  # pickled whole (a Ray worker's error)
        return type(self), (self.head, self.needed, self.knob, self.advice)

    def renamed(self, rename: Callable[[str], str]) -> TooThin:
        """This refusal with its flags said as `rename` says them (a jobs file's keys, the API's keywords)."""
        return TooThin(self.head, self.needed, rename(self.knob), rename(self.advice))


def _advice(settings: Settings, needed: int, knob: str) -> str:
    """`knob needed`, and --scales 1 where the coarse-to-fine run it gives would start below what the images need
    (`--size 315` alone was refused again at its 128 px first scale, naming --start-size)."""
    given = f"{knob} {needed}"
    side = _size_for_style(settings, needed) if knob.endswith(" x --style-scale") else needed  # every scale's least
    if knob.startswith("--start-size") and side > settings.size:  # no first scale past the last one
        return given.replace("--start-size", "--size", 1) + " and --scales 1"
    size, start = (max(side, settings.size), settings.start_size) if knob.startswith("--size") else (settings.size,
                                                                                                       side)
    try:
        if min(scale_sizes(size, settings.scales, start)) >= side:
            return given
    except ConfigError:  # too many --scales between that start and the size
        pass
    return "--scales 1" if knob.startswith("--start-size") else given + " and --scales 1"


def needed_side(shape: tuple[int, int], long_side: int) -> int | None:
    """The long side `shape` (height, width) needs for both sides to be at least the network's minimum, or None
    where `long_side` gives that already."""
    if min(long_side_shape(shape[0], shape[1], long_side)) >= MIN_SIDE:
        return None
    needed = max(long_side, math.floor((MIN_SIDE - 0.5) * max(shape) / min(shape)))  # rounding: exact below
    while min(long_side_shape(shape[0], shape[1], needed)) < MIN_SIDE:
        needed += 1
    return needed


def _thin(label: str, shape: tuple[int, int], long_side: int, what: str, needed: int) -> str:
    height, width = long_side_shape(shape[0], shape[1], long_side)
    return (f"{label} ({shape[1]}x{shape[0]} px) would be {width}x{height} px at {what}; both sides must be at least "
            f"{MIN_SIDE} px, so it needs a long side of {needed} px")


def check_sides(label: str, shape: tuple[int, int], long_side: int, what: str, knob: str) -> None:
    """TooThin if `shape` (height, width) resized to `long_side` has a side under the network's minimum;
    `knob` names the setting that would give the long side it needs ("--size", ...)."""
    needed = needed_side(shape, long_side)
    if needed is not None:
        raise TooThin(_thin(label, shape, long_side, what, needed), needed, knob)


def _size_for_style(settings: Settings, side: int) -> int:
    """The smallest output long side whose style long side is at least `side`."""
    size = max(1, math.ceil(side / settings.style_scale) - 1)
    while style_size(settings, size) < side:
        size += 1
    return size


def _check_scale(settings: Settings, size: int, knob: str, content: tuple[str, tuple[int, int]] | None,
                 styles: list[tuple[str, tuple[int, int]]]) -> None:
    """TooThin if an image vanishes at the scale of long side `size` (set by `knob`): the content's refusal names
    the size every image needs there, so that following it is not refused again for a style."""
    side = style_size(settings, size)
    what = f"the style size {side} px ({knob[2:].replace('-', ' ')} x style scale)"
    thin = [(label, shape, needed) for label, shape in styles if (needed := needed_side(shape, side)) is not None]
    need = needed_side(content[1], size) if content is not None else None
    if need is not None:
        assert content is not None
        head = _thin(content[0], content[1], size, f"{size} px", need)
        widest = max(thin, key=lambda t: t[2], default=None)
        if widest is not None and _size_for_style(settings, widest[2]) > need:  # the style needs more than it
            need = _size_for_style(settings, widest[2])
            scale = f" at style scale {settings.style_scale:g}" if settings.style_scale != 1 else ""
            head += f", and {widest[0]} one of {widest[2]} px{scale}"
        raise TooThin(head, need, knob)
    if thin:  # the one that needs most: its size is every style's
        label, shape, needed = max(thin, key=lambda t: t[2])
        raise TooThin(_thin(label, shape, side, what, needed), needed, f"{knob} x --style-scale")


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
        try:  # the pairs are what does not fit: fewer of them, not a smaller picture
            tile_for_budget(free, settings.model, loss, height, width)
            fix = "use a smaller --lbfgs-history"
        except ConfigError:
            fix = "use a smaller --size"
        raise ConfigError(f"a {width}x{height} image needs more than the {_gib(free)} GiB of memory available, "
                          f"even tiled (the image, its gradient, the targets and {history} L-BFGS pairs alone); "
                          f"{fix}") from None
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


def check_untiled(settings: Settings, layers: tuple[str, ...], height: int, width: int) -> int:
    """A step through the network up to `layers` that cannot tile (visualize's) against the memory free now on the
    (placed) settings' device, by the estimate a run's plan makes: ConfigError naming --size where it does not
    fit (it ran into torch's allocator, or swap, unstoppable for minutes); the L-BFGS history it leaves room for."""
    free = free_memory(settings.device)
    history = lbfgs_history(None, free, height, width) if settings.optimizer == "lbfgs" else 0
    loss = LossConfig(content_layers=layers, style_layers=())
    try:
        fits = tile_for_budget(free / 2**30, settings.model, loss, height, width,
                               other_bytes=history * lbfgs_pair_bytes(height, width))
    except ConfigError:  # not even tiled
        fits = 0
    if fits is not None:
        raise ConfigError(f"a {width}x{height} image needs more than the {_gib(free / 2**30)} GiB of memory "
                          f"available; use a smaller --size")
    return history


def check_counts(settings: Settings, styles: int) -> None:
    """The settings that take one value per style image against `styles` of them."""
    if settings.style_blend is not None and len(settings.style_blend) != styles:
        raise SettingError("style_blend", "style blend", f"has {len(settings.style_blend)} weights for {styles} style "
                                                         f"images")
    if settings.content_masks and len(settings.content_masks) != styles:
        raise ConfigError(f"{len(settings.content_masks)} --content-mask files for {styles} style images: one mask "
                          f"per style image, in order")


def check_shapes(settings: Settings, content_shape: tuple[int, int] | None, style_shapes: list[tuple[int, int]], *,
                 content_label: str = "the content image", style_labels: list[str] | None = None) -> None:
    """make_plan's checks that need no place (the images' count and sides at every scale): ConfigError before
    `auto` measures for settings it would refuse (a batch's job)."""
    if not style_shapes and (content_shape is None or settings.style_layers):  # inversion: no style image
        raise ConfigError("at least one style image is needed")
    check_counts(settings, len(style_shapes))
    labels = style_labels or [f"style image {i + 1}" for i in range(len(style_shapes))]
    ref = content_shape if content_shape is not None else style_shapes[0]
    sizes = [size for size, _ in settings.scale_plan()]
    for size in sizes:  # the smallest scale first: there a side is likeliest to vanish
        knob = "--size" if size == sizes[-1] else "--start-size"  # an earlier scale's long side
        try:
            _check_scale(settings, size, knob, (content_label if content_shape is not None else labels[0], ref),
                         list(zip(labels, style_shapes)))
        except TooThin as e:  # advice that is not refused again at another scale
            raise TooThin(e.head, e.needed, e.knob, _advice(settings, e.needed, e.knob)) from None


def make_plan(settings: Settings, content_shape: tuple[int, int] | None, style_shapes: list[tuple[int, int]], *,
              content_label: str = "the content image", style_labels: list[str] | None = None,
              memory: int | None = None, auto: str = "") -> Plan:
    """The plan of a run of these (placed) settings on images of these (height, width) shapes; ConfigError for
    what cannot work. content_shape None: a texture. At every scale each image resized has both sides >=
    MIN_SIDE (a 2000x40 image at 64 px would be 64x1), and the run fits the memory: with a budget, a tile
    exists for it; else the step, as run, fits the memory free now (probed here once unless `memory` is given)."""
    texture = content_shape is None
    check_shapes(settings, content_shape, style_shapes, content_label=content_label, style_labels=style_labels)
    ref = content_shape if content_shape is not None else style_shapes[0]
    loss = settings.loss_config(texture=texture)
    steps = settings.scale_plan()
    if settings.mem_budget_gib is None and memory is None:
        memory = free_memory(settings.device)
    budget = settings.mem_budget_gib * 2**30 if settings.mem_budget_gib is not None else memory
    assert budget is not None  # one of the two is set
    scales = []
    for size, iterations in steps:
        height, width = long_side_shape(ref[0], ref[1], size)
        history = lbfgs_history(settings.lbfgs_history, budget, height, width) if settings.optimizer == "lbfgs" else 0
        tile = settings.tile
        if tile is None and settings.mem_budget_gib is not None:
            try:
                tile = tile_for_budget(settings.mem_budget_gib, settings.model, loss, height, width,
                                       other_bytes=history * lbfgs_pair_bytes(height, width))
            except SettingError as e:  # said for the scale that needs most, with the history its figure gives
                if e.setting != "mem_budget_gib":
                    raise
                raise _budget_too_small(settings, loss, [long_side_shape(ref[0], ref[1], s) for s, _ in steps]
                                        ) from None
        scales.append(Scale(size, height, width, iterations, style_size(settings, size), tile, history))
    for scale in reversed(scales):  # the largest first: its error is the one to act on
        if settings.mem_budget_gib is not None:
            if scale.tile is not None and settings.content_masks:
                raise ConfigError(f"a {scale.width}x{scale.height} image needs a tile within --mem-budget "
                                  f"{settings.mem_budget_gib:g}, and --content-mask runs untiled; raise "
                                  f"--mem-budget or lower --size")
            if scale.tile is not None and settings.backend == "tensorrt":
                raise ConfigError(f"a {scale.width}x{scale.height} image needs a tile within --mem-budget "
                                  f"{settings.mem_budget_gib:g}, and the tensorrt backend cannot tile; "
                                  f"use --backend ort")
            continue
        assert memory is not None
        _check_memory(settings, loss, scale.height, scale.width, memory, scale.history)
        for shape in style_shapes:  # the style targets' forward pass, at the style size
            _check_memory(settings, loss, *long_side_shape(shape[0], shape[1], scale.style_side), memory, 0)
    return Plan(settings, texture, tuple(scales), memory if settings.mem_budget_gib is None else None, auto,
                _tile_notes(settings, loss, scales))


def _budget_too_small(settings: Settings, loss: LossConfig, shapes: list[tuple[int, int]]) -> SettingError:
    """--mem-budget's refusal, with the least budget that runs every scale (memory.least_budget_gib)."""
    def history_bytes(height: int, width: int) -> Callable[[float], float]:
        if settings.optimizer != "lbfgs":
            return lambda budget: 0.0
        return lambda budget: lbfgs_history(settings.lbfgs_history, budget, height, width) * lbfgs_pair_bytes(
            height, width)

    need, height, width = max((least_budget_gib(settings.model, loss, h, w, history_bytes(h, w)), h, w)
                              for h, w in shapes)
    assert settings.mem_budget_gib is not None  # only a budget given is refused
    return too_small(settings.mem_budget_gib, height, width, need)


def _tile_notes(settings: Settings, loss, scales: list[Scale]) -> tuple[str, ...]:
    """A line for the costliest scale whose tiles make the step compute over TILE_COST_FLOOR x the pixels."""
    costly = [(tile_cost(settings.model, list(loss.layers), s.height, s.width, s.tile), s) for s in scales
              if s.tile is not None]
    costly = [(cost, s) for cost, s in costly if cost > TILE_COST_FLOOR]
    if not costly:
        return ()
    cost, scale = max(costly, key=lambda c: c[0])
    why = (f"--mem-budget {settings.mem_budget_gib:g} GiB" if settings.tile is None else f"--tile {settings.tile}")
    return (f"{why} tiles the {scale.width}x{scale.height} px scale into {scale.tile} px cores: each step "
            f"computes about {cost:.0f}x the pixels of an untiled one (the halo each tile carries), so expect it to "
            f"take about that much longer; a larger budget or tile is faster",)
