"""Settings: everything a run needs besides the images, each declared once with its metadata (torch-free).

A field's metadata (`Option`) is all the front-ends need: its flag, help, help
group, what kind of value it takes (which also parses a jobs file's value), and
whether a jobs file may set it per job. The CLI (src/styleengine/cli_settings.py)
and the jobs-file overrides (engine/jobs.py) are generated from it, so adding a
setting is adding one field here.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from styleengine.choices import (BACKENDS, CONV_ALGOS, DEVICES, INIT_ALIASES, INITS, MIN_SIDE, MODELS, OPTIMIZERS,
                                 POOLINGS, PRECISIONS, PROVIDERS, MAX_SIDE, check_choice, check_seed,
                                 device_kind, FLOAT32_TINY, MAX_LR, MAX_SEED, WEIGHT_WORDS)  # noqa: F401
from styleengine.engine import capability
from styleengine.engine.loss_config import LossConfig, check_float32
from styleengine.engine.schedule import AUTO_SCALES_ABOVE, AUTO_START, scale_plan, scale_sizes
from styleengine.errors import ConfigError, SettingError, UnavailableError, UserError
from styleengine.model.convention import RANDOM, TORCHVISION, Convention, reads_as_zero

# the loop keeps 16 bytes of loss terms an iteration on the device; past this a run is a typo, not a plan
MAX_ITERATIONS = 1_000_000
TEXTURE_INIT = "noise"  # texture synthesis starts from white noise, as in the paper
# video, tuned with the shared VGG16 (caffe convention: BGR, 0-255) on a 64 px pan, 40 + 20 iterations a frame
# (benchmarks/video_consistency.py, docs/video.md): warping error vs independent frames 0.46x at 1e4, 0.44x at
# 1e5, 0.39x at 1e6, style distance the same at each; the total loss is ~4e4 there. A file whose features are on
# another scale (torchvision's [0, 1] input) needs another weight, as the style weight does
TEMPORAL_WEIGHT = 1e6
FRAME_ITERS_DIVISOR = 2  # a frame that starts from the warped previous result needs fewer (Ruder et al.)
_LOSS = LossConfig()  # the loss defaults live in LossConfig; Settings reads them from there


# ---- what kind of value a setting takes: one parser for a flag's text and a jobs file's JSON or CSV cell ----

def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        words = tuple(v.strip() for v in value.replace(";", ",").split(",") if v.strip())
        if value.strip() and not words:  # "," is a slip, not "none" (that is an empty text)
            raise ValueError("separators and no names")
        return words
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        words = tuple(v.strip() for v in value)  # trimmed as the text's are
        if not all(words):  # ["a", ""] is the slip "a,," is not: a list spells every name
            raise ValueError("an empty name in the list")
        return words
    raise ValueError("not a text or a list of texts")


class OutOfRange(ValueError):
    """A whole number past 2**63: past any setting's range, which the setting's own check words better."""


def whole(value: Any) -> int:
    """An int, or a text of one; never a bool, a fraction or a float (1e20 is a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        if len(value.strip().lstrip("+-").lstrip("0")) > 19:  # past 2**63; int() refuses 4300 digits itself
            raise OutOfRange("out of range")
        number = int(value)
    elif type(value).__name__.startswith("float") and float(value).is_integer():  # 64.0, numpy's float32(64)
        raise ValueError("a whole number is given as an int, not a float")
    else:
        raise ValueError("not a whole number")
    if abs(number) >= 2**63:
        raise OutOfRange("out of range")
    return number


def real(value: Any) -> float:
    """A finite number, or a text of one; never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("not a number")
    if isinstance(value, str) and ("_" in value or not value.isascii()):  # float() reads "1_0" and "٤٨" too
        raise ValueError("not a number")
    if isinstance(value, TooSmall):
        raise Underflow("too small: it reads as 0")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    if isinstance(value, str) and reads_as_zero(value, number):
        raise Underflow("too small: it reads as 0")  # 1e-400: a typo, not "no style"
    return number


class Underflow(ValueError):
    """A number written with digits that a float rounds to 0 (1e-400)."""


class TooSmall(float):
    """A JSON number a float reads as 0 (1e-400): 0.0, which real() refuses and no text or whole key takes."""

    text: str

    def __new__(cls, text: str) -> TooSmall:
        made = super().__new__(cls, 0.0)
        made.text = text
        return made

    def __repr__(self) -> str:  # said as written, in an error about it
        return self.text


def json_number(text: str) -> float:
    """A JSON number as a float, TooSmall where a float makes it 0 (json.loads read 1e-400 as 0)."""
    number = float(text)
    return TooSmall(text) if reads_as_zero(text, number) else number


def _word(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a text")
    return value.strip()


def _numbers(value: Any) -> tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(real(v) for v in value)
    return tuple(real(v) for v in _words(value))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


# kind -> (parser, the Python type a flag takes): a list kind is typed as comma-separated text
KINDS: dict[str, tuple[Callable[[Any], Any], type]] = {
    "whole": (whole, int), "real": (real, float), "word": (_word, str), "words": (_words, str),
    "numbers": (_numbers, str), "flag": (_flag, bool),
}
RUN, TEXTURE, BATCH, VIDEO = "run", "texture", "batch", "video"
EVERY = frozenset({RUN, TEXTURE, BATCH, VIDEO})
WITH_CONTENT = frozenset({RUN, BATCH, VIDEO})  # settings a texture (no content image) has no use for
ONLY_VIDEO = frozenset({VIDEO})  # temporal consistency (engine/video.py): no picture of run or batch reads them
ONE_RUN = frozenset({RUN, TEXTURE})  # progress a batch does not report per picture
ONE_CONTENT = frozenset({RUN, BATCH})  # files beside each content image (masks): run's, a batch's or a job's


# the ways of running a step that `auto` picks (engine/autotune.py): how fast a picture is made, not what it is
AUTO_FIELDS = ("backend", "device", "provider", "precision", "conv")


@dataclass(frozen=True)
class Option:
    """How a front-end offers one setting."""

    help: str
    group: str  # the help section
    kind: str  # a KINDS key
    flag: str = ""  # "": --field-name
    optional: bool = False  # None is a value (the setting's automatic choice)
    per_job: bool = True  # a jobs file may set it per job (else it belongs to the whole batch: one warm device)
    commands: frozenset[str] = EVERY
    words: tuple[str, ...] = ()  # for a path setting: the words that are not paths
    files: bool = False  # a list of file paths (masks): each expanded as a path setting's value is
    texture_help: str = ""  # the help under `texture`, where it differs
    aliases: tuple[str, ...] = ()  # other names a jobs file may use for it
    spellings: tuple[tuple[str, str], ...] = ()  # (another tool's word, ours): read as ours wherever it is parsed

    def parse(self, value: Any) -> Any:
        """The setting's value from a flag's text or a jobs file's value (ValueError if it is not one)."""
        if (self.files or self.words) and isinstance(value, str) and not value.strip():
            # a path's empty text: the working folder as weights, or (optional) silently no mask
            wanted = "its files" if self.files else f"a file or one of {', '.join(self.words)}"
            raise ValueError(f"is empty; name {wanted}, or leave it out")
        if self.optional and (value is None or (isinstance(value, str) and not value.strip())):
            return None
        parsed = KINDS[self.kind][0](value)
        return dict(self.spellings).get(parsed, parsed) if self.spellings else parsed


def expanded_paths(meta: Option, value: Any) -> Any:
    """A path setting's parsed value with `~` and $VARIABLES expanded, as a flag's and a jobs file's are (no
    shell expanded `--init=~/x.png`, nor a notebook's string); its words as they are. ConfigError for a variable
    that is not set."""
    from styleengine import paths

    if meta.files and isinstance(value, (tuple, list)):
        return tuple(paths.expand_text(v) for v in value)
    if meta.words and isinstance(value, str) and value not in meta.words and value != TEXTURE_INIT:
        return paths.expand_text(value)
    return value


def option(default: Any, help: str, group: str, kind: str, **meta: Any) -> Any:
    return field(default=default, metadata={"option": Option(help=help, group=group, kind=kind,
                                                              optional=default is None, **meta)})


SIZE, LOSS, OPTIM, NETWORK, COMPUTE, SCALES, MEMORY, PROGRESS, INPUT, TEMPORAL = (
    "Size and iterations", "Loss", "Optimiser", "Network and weights", "Compute (auto: measured here)",
    "Coarse to fine", "Memory", "Progress", "Weights' input convention (overrides)", "Video")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a run needs besides the images; each default is written here once."""

    size: int = option(512, "Long side of the output in px.", SIZE, "whole")
    # L-BFGS: one loss-and-gradient evaluation an iteration; coarse to fine: see engine/schedule.py
    iterations: int = option(300, "Optimiser iterations (coarse to fine: at the first scale, each finer scale "
                                  "half as many, at least 10).", SIZE, "whole", flag="--iters")
    optimizer: str = option("lbfgs", "lbfgs (the paper's) or adam.", OPTIM, "word")
    lr: float | None = option(None, "Step size (default: the optimiser's own: L-BFGS 1, Adam 0.02).", OPTIM,
                              "real")
    # two image-sized vectors a pair: 100 cost 10 GB at 2048x2048
    lbfgs_history: int | None = option(
        None, "L-BFGS curvature pairs, two image-sized vectors each (default: 100, fewer where 100 would take "
              "over a quarter of the memory budget or of free memory).", OPTIM, "whole")
    # not in the paper or the popular loops: without it, VGG16 at 512 px, the loss jumped 55x at iteration 4
    # and 13x at 7 (moves of 2.4 and 1.1); with 0.25 it fell smoothly, 42% lower at iteration 20 and 8% at 40,
    # both distances slightly lower at 40 (0.1 was slower: each early step clipped)
    lbfgs_max_step: float = option(
        0.25, "L-BFGS moves no pixel (0-1) more than this per iteration; 0: no cap (torch's LBFGS exactly, as the "
              "paper and popular implementations).", OPTIM, "real")
    # the paper starts from white noise; content init reaches a readable result in far fewer iterations, which
    # matters on a CPU (its Fig. 6 compares both)
    init: str = option("content", "noise, content, style, randn or an image path (neural-style's random and image: "
                                  "noise and content; randn: neural-style-pt's start, a flat grey with N(0, 0.001) "
                                  "noise in the network's input units).", OPTIM, "word", words=(*INITS, *INIT_ALIASES),
                       spellings=tuple(INIT_ALIASES.items()), texture_help="noise, style, randn or an image path.")
    seed: int = option(0, "Seed of the noise init and random weights.", OPTIM, "whole")
    model: str = option("vgg19", "vgg19 or vgg16.", NETWORK, "word")
    weights: str = option("imagenet", "imagenet (torchvision, cached download), random, or a .safetensors/.pth "
                                      "file.", NETWORK, "word", words=WEIGHT_WORDS)
    non_strict: bool = option(False, "Ignore (and list) a weights file's unknown keys under features. instead of "
                                     "refusing the file; shapes are still checked.", NETWORK, "flag", per_job=False)
    pooling: str = option("avg", "avg (the paper's) or max.", NETWORK, "word")
    content_layers: tuple[str, ...] = option(_LOSS.content_layers, "Comma-separated layers, e.g. relu4_2.", LOSS,
                                             "words", commands=WITH_CONTENT)
    style_layers: tuple[str, ...] = option(_LOSS.style_layers, "Comma-separated layers, e.g. relu1_1,relu2_1.",
                                           LOSS, "words")
    style_layer_weights: tuple[float, ...] | None = option(
        _LOSS.style_layer_weights, "Comma-separated w_l, one per style layer (default: 1/n each).", LOSS, "numbers")
    content_weight: float = option(_LOSS.content_weight, "alpha, the content loss weight.", LOSS, "real",
                                   commands=WITH_CONTENT)
    style_weight: float = option(_LOSS.style_weight, "beta, the style loss weight.", LOSS, "real")
    tv_weight: float = option(_LOSS.tv_weight, "Total-variation weight (smooths noise).", LOSS, "real")
    weighting: str = option(
        _LOSS.weighting, "invariant: content and TV terms are means over positions, so the weights mean the same "
                         "at every size; paper: Gatys et al.'s sums (the content term grows with the pixel count).",
        LOSS, "word")
    normalize_gradients: bool = option(
        False, "neural-style's -normalize_gradients: each loss term's gradient at its layer divided by its L1 norm, "
               "times its weight (torch backend; untiled).", LOSS, "flag")
    normalize_weights: bool = option(
        False, "neural-style-pt's -normalize_weights: each layer's content and style weight divided by its channel "
               "count.", LOSS, "flag")
    style_blend: tuple[float, ...] | None = option(
        None, "Comma-separated weights, one per style image (default: equal).", LOSS, "numbers", aliases=("blend",))
    # the paper: 1, the styles at the content's size
    style_scale: float = option(1.0, "Style images are resized to size * this.", LOSS, "real")
    preserve_colors: bool = option(False, "Keep the content's colours; transfer luminance only.", LOSS, "flag",
                                   commands=WITH_CONTENT)
    # Gatys et al. 2017, colour control: --preserve-colors swaps colours after a loop the style's colours drove
    luminance_only: bool = option(
        False, "Optimise luminance only (Gatys et al. 2017): the network sees content and style as greyscale, the "
               "style's brightness matched to the content's mean and spread; colours from the content.", LOSS,
        "flag", commands=WITH_CONTENT)
    # Gatys et al. 2017, spatial control (guided Grams, engine/losses.py): one region of the output per style
    content_masks: tuple[str, ...] | None = option(
        None, "Spatial control (Gatys et al. 2017): greyscale masks, comma-separated, one per style image in order, "
              "each where on the content its style paints (white: fully, black: not; summed, at most 1 a pixel).",
        LOSS, "words", flag="--content-mask", commands=ONE_CONTENT, files=True)
    style_masks: tuple[str, ...] | None = option(
        None, "With --content-mask: greyscale masks, one per style image, each the part of its style image whose "
              "texture is used (default: the whole image).", LOSS, "words", flag="--style-mask",
        commands=ONE_CONTENT, files=True)
    backend: str = option("auto", "auto (torch or ort, the faster here: measured once, see 'styleengine tune'), "
                                  "torch, ort or tensorrt (untested: TensorRT cannot be installed where this is "
                                  "built).", COMPUTE, "word", per_job=False)
    provider: str = option("auto", "ONNX Runtime's provider: auto (follows --device), cpu, cuda or tensorrt.",
                           COMPUTE, "word", per_job=False)
    device: str = option("auto", "cpu, cuda, cuda:N (the GPU of index N) or auto (cuda when there is one), every "
                                 "backend.", COMPUTE, "word", per_job=False)
    # one picture's network over several devices, as neural-style's -gpu 0,1 -multidevice_strategy
    devices: tuple[str, ...] = option((), "Spread one picture's network over these devices in order (comma-"
                                          "separated, e.g. cuda:0,cuda:1; the torch backend).", COMPUTE, "words",
                                      per_job=False, commands=ONE_RUN)
    split_at: tuple[str, ...] = option((), "With --devices: the layers where each next device takes over, one "
                                           "fewer than the devices (default: the convolutions shared evenly).",
                                       COMPUTE, "words", per_job=False, commands=ONE_RUN)
    precision: str = option("auto", "auto (the fastest measured here that keeps the look of fp32), fp32, bf16 "
                                    "(torch), fp16 (ort/tensorrt on a GPU) or tf32 (tensorrt).", COMPUTE, "word",
                            per_job=False)
    conv: str = option("auto", "Convolutions: auto (measured, like the precision), direct (oneDNN/cuDNN/ONNX "
                               "Runtime's own: the exact reference) or winograd (fp32; torch on the CPU: NNPACK; "
                               "ort: F(4x4, 3x3) in the graph; ~1e-5 rounding).", COMPUTE, "word", per_job=False)
    save_every: int = option(0, "Also write OUT_<iteration> every N iterations (0: never).", PROGRESS, "whole",
                             per_job=False, commands=ONE_RUN)
    print_every: int = option(0, "Print the loss and its terms every N iterations (0: never).", PROGRESS, "whole",
                              per_job=False, commands=ONE_RUN)
    # a forward pass each time; the result always has the final image's
    distance_every: int = option(
        0, "Measure the style and content distances every N iterations, for --trace (0: only the final image's, "
           "in the summary line).", PROGRESS, "whole", per_job=False, commands=ONE_RUN)
    # coarse to fine (not in the paper): engine/schedule.py
    scales: int | None = option(
        None, f"Coarse-to-fine scales, each ~sqrt(2) larger, ending at --size (default: 1 up to {AUTO_SCALES_ABOVE} "
              f"px, above that as many as start at {AUTO_START} px, so that every size has the same look; 1: a "
              "single scale).", SCALES, "whole")
    start_size: int | None = option(None, f"Long side of the first scale in px (default: {AUTO_START} above "
                                          f"{AUTO_SCALES_ABOVE} px).", SCALES, "whole")
    iters_per_scale: int | None = option(
        None, "Iterations at each scale but the last, and --iters at the last (default: halving from --iters at "
              "the first scale).", SCALES, "whole")
    # exact tiling (engine/tiled.py)
    tile: int | None = option(None, "Exact tiled step with cores of SIZE px (a multiple of 16): same result, "
                                    "memory bounded by the tile (default: untiled).", MEMORY, "whole")
    mem_budget_gib: float | None = option(None, "Choose the tile size for this many GiB (ignored with --tile).",
                                          MEMORY, "real", flag="--mem-budget")
    # the weights' own input convention (metadata, known file) with these fields overridden
    channel_order: str | None = option(None, "Override the weights' input channel order: RGB or BGR.", INPUT,
                                       "word", per_job=False)
    pixel_range: float | None = option(None, "Override the weights' pixel range: the network sees pixel x RANGE "
                                       "(1: torchvision's weights, 255: caffe's).", INPUT, "real", per_job=False)
    mean: tuple[float, ...] | None = option(None, "Override the weights' input mean: r,g,b (in channel order, "
                                                  "pixel-range units).", INPUT, "numbers", per_job=False)
    std: tuple[float, ...] | None = option(None, "Override the weights' input std: three numbers.", INPUT,
                                           "numbers", per_job=False)
    # video (Ruder et al. 2016): the temporal term is a mean over the 3 H W values, as their eq. 5 divides by D
    temporal_weight: float = option(
        TEMPORAL_WEIGHT, "Weight of the temporal loss: each frame stays close to the previous result warped by the "
                         "optical flow, where the flow is consistent (0: off).", TEMPORAL, "real", commands=ONLY_VIDEO)
    frame_iters: int | None = option(
        None, f"Iterations of each frame after the first, which starts from the warped previous result "
              f"(default: --iters / {FRAME_ITERS_DIVISOR}, at least 10).", TEMPORAL, "whole", commands=ONLY_VIDEO)
    # a whole convention (the Python API); the four fields above override it field by field
    convention: Convention | None = None

    def __post_init__(self) -> None:
        if self.init in INIT_ALIASES:  # the peers' spelling, stored as ours (a frozen field: set once, here)
            object.__setattr__(self, "init", INIT_ALIASES[self.init])

    def resolved(self) -> "Settings":
        """These settings with every `auto` (backend, device, provider, precision, conv) made concrete for this
        machine: measured once and kept (engine/autotune.py), explicit settings as given."""
        from styleengine.engine.autotune import choose

        return choose(self).settings

    def as_asked(self, asked: "Settings") -> "Settings":
        """These resolved settings with each way of running that `asked` left to `auto` put back to `auto`: what
        a finished picture's hash holds (a batch job's, a video's). auto measured again and picking another way,
        which keeps the look, left finished work unknown: a video's resume was refused, a batch job ran again."""
        auto: dict[str, Any] = {name: "auto" for name in AUTO_FIELDS if getattr(asked, name) == "auto"}
        return dataclasses.replace(self, **auto)

    def ways_alike(self, asked: "Settings") -> Iterator[dict[str, Any]]:
        """Each way of running (AUTO_FIELDS' values) a finished picture's hash may hold and still be these resolved
        settings' work, as_asked's first: a field left to auto, as auto or as auto picks it now (made with it
        given: frames made with --conv winograd were refused without it, where auto picks winograd); a field
        given, as given only (made by auto, whatever it picked then, is not what the flag asks)."""
        options = [("auto", getattr(self, name)) if getattr(asked, name) == "auto" else (getattr(self, name),)
                   for name in AUTO_FIELDS]
        for values in itertools.product(*options):
            yield dict(zip(AUTO_FIELDS, values))

    def ways_one_apart(self, asked: "Settings") -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(field, value, way) for each way of running one field apart from these settings' as asked or as
        resolved: what names the flag that made frames refused as other settings (a way given then, not now)."""
        choices = {"backend": ("auto", *BACKENDS), "device": DEVICES, "provider": ("auto", *PROVIDERS),
                   "precision": ("auto", *PRECISIONS), "conv": CONV_ALGOS}
        for base in (next(self.ways_alike(asked)), {name: getattr(self, name) for name in AUTO_FIELDS}):
            for name in AUTO_FIELDS:
                for value in choices[name]:
                    if value != base[name]:
                        yield name, value, {**base, name: value}

    def scale_plan(self) -> list[tuple[int, int]]:
        """(long side, iterations) per scale, coarse to fine (engine/schedule.py)."""
        return scale_plan(self.size, self.iterations, self.scales, self.start_size, self.iters_per_scale)

    def total_iterations(self) -> int:
        """Iterations over every scale: where the loop's record.iteration ends."""
        return sum(count for _, count in self.scale_plan())

    def convention_changes(self) -> dict[str, Any]:
        """The input-convention fields these settings override (upper-cased channel order)."""
        changes: dict[str, Any] = {}
        for name in ("channel_order", "pixel_range", "mean", "std"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value.upper() if name == "channel_order" else value
        return changes

    def input_convention(self, own: Convention) -> Convention:
        """The convention a network with its `own` convention is fed with under these settings."""
        return dataclasses.replace(self.convention or own, **self.convention_changes())

    def check_convention_range(self, own: Convention, whose: str = "the weights'") -> None:
        """ConfigError unless the convention fed to a network with its `own` keeps features within float32;
        it names the fields given by their flags, and the others as `whose` (or the given convention's)."""
        convention = self.input_convention(own)
        changes = self.convention_changes()
        given = [f"{flag_of(name)} {_said(getattr(convention, name))}" for name in RANGE_FIELDS if name in changes]
        problem = convention.range_problem(one=len(given) == 1)
        if problem is None:
            return
        theirs = [f"{name.replace('_', ' ')} {_said(getattr(convention, name))}" for name in RANGE_FIELDS
                  if name not in changes]
        whose = ("the convention's" if self.convention is not None
                 else "the random weights'" if self.weights == "random" else whose)
        if not given:
            raise ConfigError(f"{whose} {_listed(theirs)} {problem}")
        raise ConfigError(f"{_listed(given)}{f' with {whose} {_listed(theirs)}' if theirs else ''} {problem}")

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
            normalize_gradients=self.normalize_gradients,
            normalize_weights=self.normalize_weights,
        )

    def _check_devices(self) -> None:
        """--devices and --split-at: ConfigError unless they name one split of the network (torch-free)."""
        from styleengine.model.vgg import layer_names

        if not self.devices:
            if self.split_at:
                raise ConfigError("--split-at needs --devices (the devices the network is split over)")
            return
        kinds = {device_kind(d) for d in self.devices}
        if len(self.devices) < 2 or "auto" in kinds or len(kinds) > 1:
            raise ConfigError(f"--devices takes two or more devices of one kind (cpu or cuda:N), got "
                              f"{','.join(self.devices)}; one device is --device")
        if self.device not in ("auto", self.devices[0]):
            raise ConfigError(f"--device {self.device} and --devices {','.join(self.devices)} disagree: the run "
                              f"lives on the first of --devices; drop --device")
        if self.split_at:
            names = layer_names(self.model)
            unknown = [n for n in self.split_at if n not in names]
            if unknown:
                raise ConfigError(f"--split-at: {', '.join(unknown)} is no layer of {self.model}")
            at = [names.index(n) for n in self.split_at]
            if len(at) != len(self.devices) - 1 or at != sorted(set(at)) or at[0] == 0:
                raise ConfigError(f"--split-at takes {len(self.devices) - 1} layer(s) in network order after the "
                                  f"first, one for each device after the first; got {','.join(self.split_at)}")

    def _check_masks(self, texture: bool) -> None:
        """What the mask settings alone decide (against the style images: engine/plan.py, engine/masks.py)."""
        if texture and (self.content_masks or self.style_masks):
            raise ConfigError("masks place styles on a content image; a texture has none")
        if self.style_masks and not self.content_masks:
            raise ConfigError("--style-mask needs --content-mask: a style mask picks the part of its style image "
                              "that paints the region its content mask gives")
        if not self.content_masks:
            return
        if self.style_masks and len(self.style_masks) != len(self.content_masks):
            raise ConfigError(f"{len(self.style_masks)} --style-mask files for {len(self.content_masks)} "
                              f"--content-mask files: one of each per style image, in order")
        if self.tile is not None:
            raise ConfigError("--content-mask runs untiled (the exact tiled step has no guided Grams); drop --tile")
        if self.style_blend is not None:
            raise ConfigError("--style-blend does not apply with --content-mask: each style image paints its own "
                              "region")

    def torch_only(self) -> str | None:
        """Why this run needs the torch step (capability.refusal's torch_only: a graph backend is refused
        with it, auto takes torch), or None."""
        if self.content_masks:
            return capability.MASKS
        if self.normalize_gradients:
            return capability.NORMALIZE_GRADIENTS
        if self.devices:
            return capability.SPREAD
        return None

    def check_texture_start(self) -> None:
        """ConfigError if a texture (no content image) is asked to start from its content (the CLI and the API:
        Settings' own default start is the content, which a texture's front-end replaces with noise)."""
        if self.init == "content":  # neural-style's "image" is stored as content too: both are said
            raise SettingError("init", "init", "content (or image): a texture has no content image (noise, randn, "
                                               "style or an image file)")

    def validate(self, *, texture: bool = False) -> None:
        """Raise ConfigError for any setting that cannot work, before any long work starts (torch-free)."""
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("model", self.model, MODELS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("backend", self.backend, ("auto",) + BACKENDS)
        check_choice("provider", self.provider, ("auto",) + PROVIDERS)
        device_kind(self.device)
        self._check_devices()
        check_choice("precision", self.precision, ("auto",) + PRECISIONS)
        check_choice("conv", self.conv, CONV_ALGOS)
        capability.check_settings(self.backend, self.device, self.provider, self.precision, self.conv,
                                  torch_only=self.torch_only())
        self._check_masks(texture)
        if not MIN_SIDE <= self.size <= MAX_SIDE:
            raise SettingError("size", "size", f"must be between {MIN_SIDE} and {MAX_SIDE} px, got {self.size}")
        for setting, name, value in (("iterations", "iterations", self.iterations),
                                     ("iters_per_scale", "iterations per scale", self.iters_per_scale)):
            if value is not None and value > MAX_ITERATIONS:
                raise SettingError(setting, name, f"must be at most {MAX_ITERATIONS}, got {value}")
        check_seed(self.seed)
        if self.iterations < 0:
            raise SettingError("iterations", "iterations", f"must be >= 0, got {self.iterations}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise SettingError("lr", "learning rate", f"must be a finite number > 0, got {self.lr}")
        # the step is float32: 1e39 overflowed it (a traceback), 1e-46 was 0 (the content, unstyled, exit 0)
        if self.lr is not None and not FLOAT32_TINY <= self.lr <= MAX_LR:
            raise SettingError("lr", "learning rate", f"must be from {FLOAT32_TINY:.3g} to {MAX_LR:g} (float32, "
                               f"where the step is taken), got {self.lr:g}")
        if not (self.style_scale > 0 and math.isfinite(self.style_scale)):
            raise SettingError("style_scale", "style scale", f"must be a finite number > 0, got {self.style_scale}")
        if self.size * self.style_scale < MIN_SIDE:  # coarser scales clamp to MIN_SIDE; the final one would too
            raise ConfigError(f"--size x --style-scale must be at least {MIN_SIDE} px, got {self.size} x "
                              f"{self.style_scale:.3g}")
        if self.size * self.style_scale > MAX_SIDE:
            raise ConfigError(f"--size x --style-scale must be at most {MAX_SIDE} px, got {self.size} x "
                              f"{self.style_scale:.3g}")
        if self.save_every < 0:
            raise SettingError("save_every", "save-every", f"must be >= 0, got {self.save_every}")
        if not (self.lbfgs_max_step >= 0 and math.isfinite(self.lbfgs_max_step)):
            raise SettingError("lbfgs_max_step", "L-BFGS max step",
                               f"must be a finite number >= 0 (0: no cap), got {self.lbfgs_max_step}")
        check_float32("L-BFGS max step", self.lbfgs_max_step, "lbfgs_max_step")
        if self.print_every < 0:
            raise SettingError("print_every", "print-every", f"must be >= 0, got {self.print_every}")
        if self.distance_every < 0:
            raise SettingError("distance_every", "distance-every", f"must be >= 0, got {self.distance_every}")
        if self.lbfgs_history is not None and self.lbfgs_history < 1:
            raise SettingError("lbfgs_history", "L-BFGS history", f"must be >= 1, got {self.lbfgs_history}")
        if not (self.temporal_weight >= 0 and math.isfinite(self.temporal_weight)):
            raise SettingError("temporal_weight", "temporal weight",
                               f"must be a finite number >= 0, got {self.temporal_weight}")
        # a term of the float32 loss as the others
        check_float32("temporal weight", self.temporal_weight, "temporal_weight")
        if self.frame_iters is not None and not 0 <= self.frame_iters <= MAX_ITERATIONS:
            raise SettingError("frame_iters", "frame iterations",
                               f"must be between 0 and {MAX_ITERATIONS}, got {self.frame_iters}")
        if self.iters_per_scale is not None and self.iters_per_scale < 0:
            raise SettingError("iters_per_scale", "iterations per scale", f"must be >= 0, got {self.iters_per_scale}")
        if self.tile is not None and (self.tile <= 0 or self.tile % 16):
            raise SettingError("tile", "tile size", f"must be a positive multiple of 16 px, got {self.tile}")
        if self.mem_budget_gib is not None and not (self.mem_budget_gib > 0 and math.isfinite(self.mem_budget_gib)):
            raise SettingError("mem_budget_gib", "memory budget",
                               f"must be a finite number of GiB > 0, got {self.mem_budget_gib}")
        scale_sizes(self.size, self.scales, self.start_size)  # raises ConfigError for impossible scales
        for setting, name, values in (("style_layer_weights", "style layer weight", self.style_layer_weights),
                                      ("style_blend", "style blend weight", self.style_blend)):
            for v in values or ():
                if not (v >= 0 and math.isfinite(v)):
                    raise SettingError(setting, name, f"must be a finite number >= 0, got {v}")
        if self.style_blend and not sum(self.style_blend) > 0:  # an empty list: its count is said (check_counts)
            raise SettingError("style_blend", "style blend", "weights must not all be zero (they are normalised to "
                                                             "sum to 1)")
        if self.normalize_gradients and (self.tile is not None or self.mem_budget_gib is not None):
            raise ConfigError("--normalize-gradients needs each layer's whole gradient, which the tiled step "
                              "(--tile, --mem-budget) never holds; drop one of them")
        if self.backend == "tensorrt" and self.tile is not None:
            raise ConfigError("the tensorrt backend cannot tile; use --backend ort or torch for --tile")
        # each field's own fault, on a complete convention whose other fields are valid
        self.input_convention(self.convention or TORCHVISION).check_fields()
        own = {"random": RANDOM, "imagenet": TORCHVISION}.get(self.weights)  # known without reading a file
        if own is not None or self.convention is not None or set(RANGE_FIELDS) <= set(self.convention_changes()):
            self.check_convention_range(own or TORCHVISION)  # else once the file's own is read (load_run_weights)
        if texture and not self.style_layers:  # the loss's own check would name the content layer it has not
            raise ConfigError("a texture needs at least one style layer; --style-layers names none")
        loss = self.loss_config(texture=texture)
        loss.validate(self.model)
        if idle := loss.idle(texture=texture):  # a weight with no layer to read moves nothing
            raise ConfigError(f"every loss weight is 0 ({idle}): there is nothing to optimise, the output "
                              f"would be the start image")
        if not self.style_layers and self.style_weight > 0:  # `--style-layers "$LAYERS"` unset ran without style
            raise ConfigError("--style-layers names no layer, so the style images would do nothing; name at least "
                              "one (default: relu1_1,relu2_1,relu3_1,relu4_1,relu5_1), or set --style-weight 0")
        if not texture and not self.content_layers and self.content_weight > 0:  # as the style's: ran with no content
            raise ConfigError(f"--content-layers names no layer, so the content image would not be followed; name "
                              f"one (default: {','.join(_LOSS.content_layers)}), or set --content-weight 0")
        if self.style_weight > 0 and not any(w > 0 for w in loss.layer_weights()):  # ran with no style term
            raise ConfigError("every style layer weight is 0 (--style-layer-weights), so the style images would do "
                              "nothing; give one layer a weight > 0, or set --style-weight 0")


DEFAULTS = Settings()


def options(command: str = RUN) -> dict[str, Option]:
    """Field name -> Option of every setting `command` offers, in declaration order."""
    found = {}
    for f in dataclasses.fields(Settings):
        meta = f.metadata.get("option")
        if meta is not None and command in meta.commands:
            found[f.name] = meta
    return found


# the convention's fields that set how far pixels are scaled and shifted (the channel order only permutes them)
RANGE_FIELDS = ("pixel_range", "mean", "std")


def _said(value: float | tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


def _listed(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def flag_of(name: str) -> str:
    """The flag of setting `name` (--iters for iterations)."""
    meta = options(BATCH).get(name) or options(TEXTURE).get(name)
    return (meta.flag if meta and meta.flag else "--" + name.replace("_", "-"))


def said_as(error: UserError, names: Mapping[str, str]) -> UserError:
    """`error` with each setting in `names` (Settings field -> the name the user gave it: a jobs file's key, a
    keyword, a form field) said by that name: a SettingError's label, or its flag where a message names it; the
    rest as they were."""
    def renamed(text: str) -> str:
        for name, given in names.items():  # a flag stands alone: not inside a longer flag or a path
            text = re.sub(rf"(?<![\w/.-]){re.escape(flag_of(name))}(?![\w-])", lambda _: given, text)
        return text

    if isinstance(error, SettingError):  # its label, and another setting its problem names
        label, problem = names.get(error.setting, error.label), renamed(error.problem)
        return error if (label, problem) == (error.label, error.problem) else SettingError(error.setting, label,
                                                                                            problem)
    rename = getattr(error, "renamed", None)  # one that keeps its parts (plan.TooThin) says them renamed
    if rename is not None:
        return rename(renamed)
    if type(error) not in (ConfigError, UnavailableError):  # a file's error names no setting
        return error
    text = renamed(str(error))
    return error if text == str(error) else type(error)(text)


def run_inputs(content: Path | None, styles: Sequence[Path], init: str, weights: str,
               content_masks: Sequence[str] | None = None, style_masks: Sequence[str] | None = None
               ) -> dict[str, Path]:
    """Every file one picture's run reads, by role ("content image", "style image 2", "init image", ...): what
    none of its outputs may be."""
    found = {"content image": Path(content)} if content is not None else {}
    found.update({role: Path(p) for role, p in zip(style_roles(styles), styles)})
    found.update(settings_inputs(init, weights, content_masks=content_masks, style_masks=style_masks))
    return found


def style_roles(styles: Sequence[object]) -> list[str]:
    """How errors name the style images: "style image", or "style image 2" among several."""
    return [f"style image {i + 1}" if len(styles) > 1 else "style image" for i in range(len(styles))]


def settings_inputs(init: str, weights: str, content_masks: Sequence[str] | None = None,
                    style_masks: Sequence[str] | None = None) -> dict[str, Path]:
    """The files an --init, a --weights and the mask values name, by role ("init image", "weights file",
    "content mask 1", ...); none for the named inits and imagenet / random weights."""
    found = {}
    if init not in INITS:
        found["init image"] = Path(init)
    if weights not in WEIGHT_WORDS:
        found["weights file"] = Path(weights)
    for kind, mask_paths in (("content mask", content_masks), ("style mask", style_masks)):
        found.update({f"{kind} {i + 1}": Path(p) for i, p in enumerate(mask_paths or ())})
    return found
