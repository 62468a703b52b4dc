"""`styleengine run` and `styleengine texture`: flags -> Settings, then cli_job.execute.

Imported only when one of them is invoked (or asked for --help): every
default shown is read from Settings, which needs the engine (torch).
"""
import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from styleengine import paths
from styleengine.choices import INITS
from styleengine.cli_job import execute
from styleengine.engine.stylise import TEXTURE_INIT, Settings
from styleengine.errors import ConfigError
from styleengine.model.weights import TORCHVISION


def _split(text: str | None, what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    items = _split(text, what)
    if items is None:
        return None
    try:
        return tuple(float(v) for v in items)
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _convention_changes(channel_order: str | None, pixel_range: float | None, mean: str | None,
                        std: str | None) -> dict[str, Any]:
    """The input-convention fields the flags override, checked by Convention.validate now (on a
    complete convention whose other fields are valid), before any weights are loaded."""
    changes: dict[str, Any] = {}
    if channel_order is not None:
        changes["channel_order"] = channel_order.upper()
    if pixel_range is not None:
        changes["pixel_range"] = float(pixel_range)
    for flag, text in (("mean", mean), ("std", std)):
        values = _floats(text, f"--{flag}")
        if values is not None:
            changes[flag] = values
    dataclasses.replace(TORCHVISION, **changes).validate()
    return changes


d = Settings()  # every default below is read from here
csv = ",".join
Output = Annotated[Path, typer.Option("--output", "-o", help="Output image (.png, .jpg, ...); its folder must exist.")]
Size = Annotated[int, typer.Option("--size", help="Long side of the output in px.")]
Iters = Annotated[int, typer.Option("--iters", help="Optimiser iterations (coarse to fine: at the first scale, "
                                                     "each finer scale half as many, at least 10).")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="lbfgs (the paper's) or adam.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Step size (default: the optimiser's own).")]
History = Annotated[Optional[int], typer.Option(
    "--lbfgs-history", help="L-BFGS curvature pairs, two image-sized vectors each (default: 100, fewer "
                            "where 100 would take over a quarter of the memory budget or of free memory).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the noise init and random weights.")]
Model = Annotated[str, typer.Option("--model", help="vgg19 or vgg16.")]
Weights = Annotated[str, typer.Option("--weights", help="imagenet (torchvision, cached download), random, "
                                                           "or a .safetensors/.pth file.")]
NonStrict = Annotated[bool, typer.Option(
    "--non-strict", help="Ignore a weights file's unknown keys under features. (listed in the weights line) "
                         "instead of refusing the file.")]
Pooling = Annotated[str, typer.Option("--pooling", help="avg (the paper's) or max.")]
StyleWeight = Annotated[float, typer.Option("--style-weight", help="beta, the style loss weight.")]
TvWeight = Annotated[float, typer.Option("--tv-weight", help="Total-variation weight (smooths noise).")]
StyleLayers = Annotated[str, typer.Option("--style-layers", help="Comma-separated layers, e.g. relu1_1,relu2_1.")]
LayerWeights = Annotated[Optional[str], typer.Option(
    "--style-layer-weights", help="Comma-separated w_l, one per style layer (default: 1/n each).")]
Blend = Annotated[Optional[str], typer.Option(
    "--style-blend", help="Comma-separated weights, one per style image (default: equal).")]
StyleScale = Annotated[float, typer.Option("--style-scale", help="Style images are resized to size * this.")]
SaveEvery = Annotated[int, typer.Option("--save-every", help="Also write OUT_<iteration> every N iterations "
                                                              "(0: never).")]
MaxStep = Annotated[float, typer.Option(
    "--lbfgs-max-step", help="L-BFGS moves no pixel (0-1) more than this per iteration; 0: no cap (torch's "
                             "LBFGS exactly, as the paper and popular implementations).")]
Trace = Annotated[Optional[Path], typer.Option("--trace", help="Write one JSON object per iteration here.")]
DistanceEvery = Annotated[int, typer.Option(
    "--distance-every", help="Measure the style and content distances every N iterations, for --trace (0: only "
                             "the final image's, in the summary line).")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (cuda when there is one), every backend.")]
Backend = Annotated[str, typer.Option("--backend", help="auto (torch or ort, the faster here: measured once, see "
                                                        "'styleengine tune'), torch, ort or tensorrt (untested: "
                                                        "TensorRT cannot be installed where this is built).")]
Provider = Annotated[str, typer.Option("--provider", help="ONNX Runtime's provider: auto (follows --device), cpu, "
                                                          "cuda or tensorrt.")]
Precision = Annotated[str, typer.Option("--precision", help="auto (the fastest measured here that keeps the look "
                                                             "of fp32), fp32, bf16 (torch), fp16 (ort/tensorrt on a "
                                                             "GPU) or tf32 (tensorrt).")]
Conv = Annotated[str, typer.Option("--conv", help="Convolutions: auto (measured, like the precision), direct "
                                                  "(oneDNN/cuDNN/ONNX Runtime's own: the exact reference) or "
                                                  "winograd (fp32; torch on the CPU: NNPACK; ort: F(4x4, 3x3) in "
                                                  "the graph; ~1e-5 rounding).")]
ChannelOrder = Annotated[Optional[str], typer.Option(
    "--channel-order", help="Override the weights' input channel order: RGB or BGR.")]
PixelRange = Annotated[Optional[float], typer.Option(
    "--pixel-range", help="Override the weights' pixel range: 1 or 255.")]
Mean = Annotated[Optional[str], typer.Option("--mean", help="Override the weights' input mean: r,g,b "
                                                            "(in channel order, pixel-range units).")]
Std = Annotated[Optional[str], typer.Option("--std", help="Override the weights' input std: three numbers.")]
Scales = Annotated[Optional[int], typer.Option(
    "--scales", help="Coarse-to-fine scales, each ~sqrt(2) larger, ending at --size (default: 1 up to "
                     "1024 px, above that enough to start at 512-724 px).")]
StartSize = Annotated[Optional[int], typer.Option("--start-size", help="Long side of the first scale in px.")]
ItersPerScale = Annotated[Optional[int], typer.Option(
    "--iters-per-scale", help="Iterations at each scale but the last, and --iters at the last (default: halving "
                              "from --iters at the first scale).")]
Tile = Annotated[Optional[int], typer.Option(
    "--tile", help="Exact tiled step with cores of SIZE px (a multiple of 16): same result, memory "
                   "bounded by the tile (default: untiled).")]
Weighting = Annotated[str, typer.Option(
    "--weighting", help="invariant: content and TV terms are means over positions, so the weights mean the same "
                        "at every size; paper: Gatys et al.'s sums (the content term grows with the pixel count).")]
MemBudget = Annotated[Optional[float], typer.Option(
    "--mem-budget", help="Choose the tile size for this many GiB (ignored with --tile).")]
Init = Annotated[str, typer.Option("--init", help="noise, content, style or an image path.")]
ContentWeight = Annotated[float, typer.Option("--content-weight", help="alpha, the content loss weight.")]
ContentLayers = Annotated[str, typer.Option("--content-layers", help="Comma-separated layers, e.g. relu4_2.")]
PreserveColors = Annotated[bool, typer.Option(
    "--preserve-colors/--no-preserve-colors", help="Keep the content's colours; transfer luminance only.")]

_FLAG_FIELDS = {"iters": "iterations", "mem_budget": "mem_budget_gib"}  # flag name -> Settings field
_LAYER_LISTS = ("content_layers", "style_layers")
_NUMBER_LISTS = ("style_layer_weights", "style_blend")
_PATH_CHOICES = {"init": (*INITS, TEXTURE_INIT), "weights": ("imagenet", "random")}  # else a file's path


def settings_from(flags: dict[str, Any]) -> Settings:
    """Settings from a command's parameters (its locals()): flags renamed to their fields, comma lists split;
    parameters that are not settings (paths, convention overrides) are left out."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for name, value in flags.items():
        field = _FLAG_FIELDS.get(name, name)
        if field not in fields:
            continue
        flag = "--" + name.replace("_", "-")
        if name in _LAYER_LISTS:
            value = _split(value, flag)
        elif name in _NUMBER_LISTS:
            value = _floats(value, flag)
        elif name in _PATH_CHOICES and value not in _PATH_CHOICES[name]:  # `--weights=~/w.pth`: no shell expanded it
            value = str(paths.expand(value))
        values[field] = value
    return Settings(**values)


def run(
    content: Annotated[Path, typer.Argument(help="Content image.", show_default=False)],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
    output: Output,
    size: Size = d.size,
    iters: Iters = d.iterations,
    optimizer: Optimizer = d.optimizer,
    lr: Lr = d.lr,
    lbfgs_history: History = d.lbfgs_history,
    lbfgs_max_step: MaxStep = d.lbfgs_max_step,
    init: Init = d.init,
    seed: Seed = d.seed,
    model: Model = d.model,
    weights: Weights = d.weights,
    non_strict: NonStrict = d.non_strict,
    pooling: Pooling = d.pooling,
    content_weight: ContentWeight = d.content_weight,
    style_weight: StyleWeight = d.style_weight,
    tv_weight: TvWeight = d.tv_weight,
    weighting: Weighting = d.weighting,
    content_layers: ContentLayers = csv(d.content_layers),
    style_layers: StyleLayers = csv(d.style_layers),
    style_layer_weights: LayerWeights = None,
    style_blend: Blend = None,
    style_scale: StyleScale = d.style_scale,
    preserve_colors: PreserveColors = d.preserve_colors,
    save_every: SaveEvery = d.save_every,
    trace: Trace = None,
    distance_every: DistanceEvery = d.distance_every,
    device: Device = d.device,
    backend: Backend = d.backend,
    provider: Provider = d.provider,
    precision: Precision = d.precision,
    conv: Conv = d.conv,
    channel_order: ChannelOrder = None,
    pixel_range: PixelRange = None,
    mean: Mean = None,
    std: Std = None,
    scales: Scales = d.scales,
    start_size: StartSize = d.start_size,
    iters_per_scale: ItersPerScale = d.iters_per_scale,
    tile: Tile = d.tile,
    mem_budget: MemBudget = d.mem_budget_gib,
) -> None:
    """Stylise CONTENT with STYLE... (Gatys et al.) and write OUT."""
    settings = settings_from(locals())
    execute(content=content, styles=styles, output=output, settings=settings, trace=trace,
            convention=_convention_changes(channel_order, pixel_range, mean, std))

def texture(
    styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
    output: Output,
    size: Size = d.size,
    iters: Iters = d.iterations,
    optimizer: Optimizer = d.optimizer,
    lr: Lr = d.lr,
    lbfgs_history: History = d.lbfgs_history,
    lbfgs_max_step: MaxStep = d.lbfgs_max_step,
    init: Annotated[str, typer.Option("--init", help="noise, style or an image path.")] = TEXTURE_INIT,
    seed: Seed = d.seed,
    model: Model = d.model,
    weights: Weights = d.weights,
    non_strict: NonStrict = d.non_strict,
    pooling: Pooling = d.pooling,
    style_weight: StyleWeight = d.style_weight,
    tv_weight: TvWeight = d.tv_weight,
    weighting: Weighting = d.weighting,
    style_layers: StyleLayers = csv(d.style_layers),
    style_layer_weights: LayerWeights = None,
    style_blend: Blend = None,
    style_scale: StyleScale = d.style_scale,
    save_every: SaveEvery = d.save_every,
    trace: Trace = None,
    distance_every: DistanceEvery = d.distance_every,
    device: Device = d.device,
    backend: Backend = d.backend,
    provider: Provider = d.provider,
    precision: Precision = d.precision,
    conv: Conv = d.conv,
    channel_order: ChannelOrder = None,
    pixel_range: PixelRange = None,
    mean: Mean = None,
    std: Std = None,
    scales: Scales = d.scales,
    start_size: StartSize = d.start_size,
    iters_per_scale: ItersPerScale = d.iters_per_scale,
    tile: Tile = d.tile,
    mem_budget: MemBudget = d.mem_budget_gib,
) -> None:
    """Synthesise a texture from STYLE... (the same loss with alpha = 0, white-noise init) and write OUT."""
    settings = settings_from(locals())
    execute(content=None, styles=styles, output=output, settings=settings, trace=trace,
            convention=_convention_changes(channel_order, pixel_range, mean, std))
