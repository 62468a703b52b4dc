"""The styleengine command line: paths, flags, progress bar, exit codes.

The engine does the work (engine/stylise.py); this module only turns flags
into Settings (whose defaults it reads, never retypes), checks every input
before the long work starts, draws progress on stderr and writes files.
A UserError is one line on stderr and exit 1; anything else is a bug and
keeps its traceback.

Commands are built lazily: `styleengine --help` lists them without
importing torch; `styleengine run --help` imports the engine to show the
real defaults.
"""

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup

from styleengine.errors import ConfigError, UserError

# command -> (module, function, short help); the modules are imported on first use
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("styleengine.cli", "_run_command", "Stylise a content image with one or more style images."),
    "texture": ("styleengine.cli", "_texture_command", "Synthesise a texture from style images (no content)."),
    # written by other engineers; absent modules leave their command out
    "bench": ("styleengine.cli_bench", "bench", "Time the loss-and-gradient step across backends and sizes."),
    "export": ("styleengine.cli_export", "export", "Export the loss-and-gradient step graph to ONNX."),
}
_OPTIONAL_MODULES = ("styleengine.cli_bench", "styleengine.cli_export")


def _available(name: str) -> bool:
    module = _COMMANDS[name][0]
    return module not in _OPTIONAL_MODULES or importlib.util.find_spec(module) is not None


@functools.cache
def _load(name: str) -> click.Command | None:
    """The real click command for `name`; None if its optional module is not there yet."""
    module_name, attr, _ = _COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if module_name in _OPTIONAL_MODULES and e.name == module_name:
            return None
        raise
    function = getattr(module, attr)
    holder = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    holder.command(name)(function)
    command = typer.main.get_command(holder)  # a lone command comes back as itself
    command.name = name
    return command


class _LazyCommand(TyperCommand):
    """Stands in for a command in the listing; builds the real one when invoked or asked for help."""

    def __init__(self, name: str, short_help: str):
        super().__init__(name, help=short_help, short_help=short_help)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        real = _load(self.name)
        if real is None:  # listed, then vanished: report as an unknown command
            raise click.UsageError(f"command {self.name!r} is not installed", parent)
        return real.make_context(info_name, args, parent=parent, **extra)


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(dict.fromkeys(super().list_commands(ctx) + [n for n in _COMMANDS if _available(n)]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            return _LazyCommand(cmd_name, _COMMANDS[cmd_name][2]) if _available(cmd_name) else None
        return super().get_command(ctx, cmd_name)


class _App(typer.Typer):
    """`app()` behaves like `main()` (python -m styleengine calls app())."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UserError as e:
            _fail(e)


app = _App(cls=_LazyGroup, pretty_exceptions_enable=False, no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Gatys neural style transfer (Gatys, Ecker, Bethge 2016) with a pluggable loss-and-gradient step."""


def _fail(error: UserError) -> None:
    print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    """The console script: a user error (ours or a flag click cannot parse) is one line and exit 1."""
    try:
        code = app(standalone_mode=False)
    except UserError as e:
        _fail(e)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `styleengine`: the listing, as --help gives it
        print(e.ctx.get_help() if e.ctx is not None else str(e))
        sys.exit(0)
    except click.exceptions.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else "styleengine"
        print(f"error: {e.format_message().splitlines()[0]} (see '{command} --help')", file=sys.stderr)
        sys.exit(1)
    except typer.Abort:  # EOF at a prompt
        sys.exit(1)
    # a command's typer.Exit(n) (Ctrl-C: 130) comes back as n; a normal return as None
    sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------- run / texture

def _split(text: str | None, what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    return items


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    items = _split(text, what)
    if items is None:
        return None
    try:
        return tuple(float(v) for v in items)
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _numbered(output: Path, iteration: int, iterations: int) -> Path:
    """OUT.png -> OUT_0050.png for iteration 50 of up to 9999."""
    return output.with_name(f"{output.stem}_{iteration:0{len(str(iterations))}d}{output.suffix}")


def _convention_overrides(weights: Any, channel_order: str | None, pixel_range: float | None,
                          mean: str | None, std: str | None) -> Any:
    """The weights with their input convention overridden field by field."""
    import dataclasses
    import math

    changes: dict[str, Any] = {}
    if channel_order is not None:
        if channel_order.upper() not in ("RGB", "BGR"):
            raise ConfigError(f"--channel-order must be RGB or BGR, got {channel_order!r}")
        changes["channel_order"] = channel_order.upper()
    if pixel_range is not None:
        if not (pixel_range > 0 and math.isfinite(pixel_range)):
            raise ConfigError(f"--pixel-range must be a finite number > 0, got {pixel_range}")
        changes["pixel_range"] = float(pixel_range)
    for flag, text in (("mean", mean), ("std", std)):
        values = _floats(text, f"--{flag}")
        if values is None:
            continue
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ConfigError(f"--{flag} needs three finite numbers like 0.485,0.456,0.406, got {text!r}")
        if flag == "std" and any(v <= 0 for v in values):
            raise ConfigError(f"--std values must be > 0, got {text!r}")
        changes[flag] = values
    if not changes:
        return weights
    return dataclasses.replace(weights, convention=dataclasses.replace(weights.convention, **changes))


def _execute(*, content: Path | None, styles: list[Path], output: Path, settings: Any, trace: Path | None,
             channel_order: str | None, pixel_range: float | None, mean: str | None, std: str | None) -> None:
    """Check everything, run, write. Shared by `run` and `texture` (content None)."""
    import json

    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from styleengine.engine import images
    from styleengine.engine.stylise import INITS, stylise
    from styleengine.model.weights import load_weights

    console = Console(stderr=True)
    texture = content is None
    # 1. everything cheap first: settings, output folders, images; then weights
    settings.validate(texture=texture)
    images.check_output_path(output)
    if trace is not None and not trace.parent.is_dir():
        raise ConfigError(f"cannot write trace {trace}: folder {trace.parent} does not exist")
    content_array = images.load_image(content) if content is not None else None
    style_arrays = [images.load_image(p) for p in styles]
    if settings.style_blend is not None and len(settings.style_blend) != len(styles):
        raise ConfigError(f"{len(settings.style_blend)} --style-blend weights for {len(styles)} style images")
    init_image = images.load_image(settings.init) if settings.init not in INITS else None
    weights = load_weights(settings.model, settings.weights, seed=settings.seed)
    weights = _convention_overrides(weights, channel_order, pixel_range, mean, std)
    if weights.is_random:
        console.print("[bold red]WARNING: --weights random: the network is untrained, so the output is NOT a "
                      "stylisation (random weights are for tests and timing only)[/]", soft_wrap=True)

    # 2. the long work
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("{task.fields[spi]:.2f} s/it"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    trace_file = open(trace, "w", encoding="utf-8") if trace is not None else None
    try:
        with progress:
            total = sum(iters for _, iters in settings.scale_plan())  # over all scales of a coarse-to-fine run
            task = progress.add_task("texture" if texture else "stylise", total=total,
                                     loss=float("nan"), spi=0.0)

            def on_iteration(record: Any, current: Callable[[], Any]) -> None:
                progress.update(task, advance=1, loss=record.loss, spi=record.seconds)
                if trace_file is not None:
                    trace_file.write(json.dumps({
                        "iteration": record.iteration, "loss": record.loss, "content_loss": record.content_loss,
                        "style_loss": record.style_loss, "tv_loss": record.tv_loss, "seconds": record.seconds,
                        "height": record.height, "width": record.width}) + "\n")
                    trace_file.flush()
                every = settings.save_every
                if every and record.iteration % every == 0 and record.iteration < total:
                    images.save_image(current(), _numbered(output, record.iteration, total))

            image, result = stylise(content_array, style_arrays, settings, callback=on_iteration, weights=weights,
                                    init_image=init_image)
    finally:
        if trace_file is not None:
            trace_file.close()

    # 3. the image is written whatever stopped the loop (Ctrl-C: the current one; NaN: the last finite one)
    images.save_image(image, output)
    seconds = sum(r.seconds for r in result.records)
    if result.stopped == "interrupted":
        console.print(f"interrupted after {result.iterations} iterations; wrote {output}", soft_wrap=True)
        raise typer.Exit(130)
    if result.stopped == "non-finite loss":
        print(f"error: the loss became non-finite after {result.iterations} iterations; "
              f"wrote the last finite image to {output}", file=sys.stderr)
        raise typer.Exit(1)
    console.print(f"wrote {output} ({result.iterations} iterations, {seconds:.1f} s)", soft_wrap=True)


@functools.cache
def _commands() -> dict[str, Callable[..., None]]:
    """Build run and texture; importing the engine here keeps `styleengine --help` free of torch."""
    from typing import Annotated, Optional

    from styleengine.engine.stylise import TEXTURE_INIT, Settings

    d = Settings()  # every default below is read from here
    csv = ",".join
    Output = Annotated[Path, typer.Option("--output", "-o", help="Output image (.png, .jpg, ...); its folder must exist.")]
    Size = Annotated[int, typer.Option("--size", help="Long side of the output in px.")]
    Iters = Annotated[int, typer.Option("--iters", help="Optimiser iterations.")]
    Optimizer = Annotated[str, typer.Option("--optimizer", help="lbfgs (the paper's) or adam.")]
    Lr = Annotated[Optional[float], typer.Option("--lr", help="Step size (default: the optimiser's own).")]
    History = Annotated[Optional[int], typer.Option(
        "--lbfgs-history", help="L-BFGS curvature pairs, two image-sized vectors each (default: 100, fewer "
                                "where 100 would take over a quarter of the memory budget or of free memory).")]
    Seed = Annotated[int, typer.Option("--seed", help="Seed of the noise init and random weights.")]
    Model = Annotated[str, typer.Option("--model", help="vgg19 or vgg16.")]
    Weights = Annotated[str, typer.Option("--weights", help="imagenet (torchvision, cached download), random, "
                                                               "or a .safetensors/.pth file.")]
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
    Trace = Annotated[Optional[Path], typer.Option("--trace", help="Write one JSON object per iteration here.")]
    Device = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (torch backend).")]
    Backend = Annotated[str, typer.Option("--backend", help="torch, ort or tensorrt (untested: TensorRT cannot be "
                                                            "installed where this is built; see README).")]
    Provider = Annotated[str, typer.Option("--provider", help="cpu, cuda or tensorrt (ort backend).")]
    Precision = Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16.")]
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
        "--iters-per-scale", help="Iterations at each scale but the last (default: --iters).")]
    Tile = Annotated[Optional[int], typer.Option(
        "--tile", help="Exact tiled step with cores of SIZE px (a multiple of 16): same result, memory "
                       "bounded by the tile (default: untiled).")]
    MemBudget = Annotated[Optional[float], typer.Option(
        "--mem-budget", help="Choose the tile size for this many GiB (ignored with --tile).")]

    def run(
        content: Annotated[Path, typer.Argument(help="Content image.", show_default=False)],
        styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
        output: Output,
        size: Size = d.size,
        iters: Iters = d.iterations,
        optimizer: Optimizer = d.optimizer,
        lr: Lr = d.lr,
        lbfgs_history: History = d.lbfgs_history,
        init: Annotated[str, typer.Option("--init", help="noise, content, style or an image path.")] = d.init,
        seed: Seed = d.seed,
        model: Model = d.model,
        weights: Weights = d.weights,
        pooling: Pooling = d.pooling,
        content_weight: Annotated[float, typer.Option("--content-weight", help="alpha, the content loss weight.")
                                  ] = d.content_weight,
        style_weight: StyleWeight = d.style_weight,
        tv_weight: TvWeight = d.tv_weight,
        content_layers: Annotated[str, typer.Option("--content-layers", help="Comma-separated layers, e.g. relu4_2.")
                                  ] = csv(d.content_layers),
        style_layers: StyleLayers = csv(d.style_layers),
        style_layer_weights: LayerWeights = None,
        style_blend: Blend = None,
        style_scale: StyleScale = d.style_scale,
        preserve_colors: Annotated[bool, typer.Option(
            "--preserve-colors/--no-preserve-colors", help="Keep the content's colours; transfer luminance only.")
        ] = d.preserve_colors,
        save_every: SaveEvery = d.save_every,
        trace: Trace = None,
        device: Device = d.device,
        backend: Backend = d.backend,
        provider: Provider = d.provider,
        precision: Precision = d.precision,
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
        settings = Settings(
            size=size, iterations=iters, optimizer=optimizer, lr=lr, lbfgs_history=lbfgs_history, init=init,
            seed=seed, model=model,
            weights=weights, pooling=pooling, content_layers=_split(content_layers, "--content-layers"),
            style_layers=_split(style_layers, "--style-layers"),
            style_layer_weights=_floats(style_layer_weights, "--style-layer-weights"),
            content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
            style_blend=_floats(style_blend, "--style-blend"), style_scale=style_scale,
            preserve_colors=preserve_colors, backend=backend, provider=provider, device=device,
            precision=precision, save_every=save_every, scales=scales, start_size=start_size,
            iters_per_scale=iters_per_scale, tile=tile, mem_budget_gib=mem_budget)
        _execute(content=content, styles=styles, output=output, settings=settings, trace=trace,
                 channel_order=channel_order, pixel_range=pixel_range, mean=mean, std=std)

    def texture(
        styles: Annotated[list[Path], typer.Argument(help="One or more style images.", show_default=False)],
        output: Output,
        size: Size = d.size,
        iters: Iters = d.iterations,
        optimizer: Optimizer = d.optimizer,
        lr: Lr = d.lr,
        lbfgs_history: History = d.lbfgs_history,
        init: Annotated[str, typer.Option("--init", help="noise, style or an image path.")] = TEXTURE_INIT,
        seed: Seed = d.seed,
        model: Model = d.model,
        weights: Weights = d.weights,
        pooling: Pooling = d.pooling,
        style_weight: StyleWeight = d.style_weight,
        tv_weight: TvWeight = d.tv_weight,
        style_layers: StyleLayers = csv(d.style_layers),
        style_layer_weights: LayerWeights = None,
        style_blend: Blend = None,
        style_scale: StyleScale = d.style_scale,
        save_every: SaveEvery = d.save_every,
        trace: Trace = None,
        device: Device = d.device,
        backend: Backend = d.backend,
        provider: Provider = d.provider,
        precision: Precision = d.precision,
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
        settings = Settings(
            size=size, iterations=iters, optimizer=optimizer, lr=lr, lbfgs_history=lbfgs_history, init=init,
            seed=seed, model=model,
            weights=weights, pooling=pooling, style_layers=_split(style_layers, "--style-layers"),
            style_layer_weights=_floats(style_layer_weights, "--style-layer-weights"),
            style_weight=style_weight, tv_weight=tv_weight, style_blend=_floats(style_blend, "--style-blend"),
            style_scale=style_scale, backend=backend, provider=provider, device=device, precision=precision,
            save_every=save_every, scales=scales, start_size=start_size, iters_per_scale=iters_per_scale,
            tile=tile, mem_budget_gib=mem_budget)
        _execute(content=None, styles=styles, output=output, settings=settings, trace=trace,
                 channel_order=channel_order, pixel_range=pixel_range, mean=mean, std=std)

    return {"run": run, "texture": texture}


def __getattr__(name: str) -> Any:
    """`_run_command` / `_texture_command`, built on first use (they need the engine's defaults)."""
    if name in ("_run_command", "_texture_command"):
        return _commands()[name[1:].removesuffix("_command")]
    raise AttributeError(name)
