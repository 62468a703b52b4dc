"""`styleengine invert IMAGE --layer conv4_2 -o OUT`: feature inversion (engine/invert.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from styleengine import paths
from styleengine.cli_job import end_if_stopped, nothing_before_the_result, result_held, stop_said_with, \
    write_or_rescue
from styleengine.cli_run import Output
from styleengine.cli_settings import settings_from, with_settings
from styleengine.engine.plan import TooThin
from styleengine.engine.schedule import AUTO_SCALES_ABOVE, AUTO_START
from styleengine.engine.settings import RUN
from styleengine.engine import images
from styleengine.engine.jobs import settings_inputs
from styleengine.engine.loss_config import check_float32
from styleengine.engine.invert import FEATURE_WEIGHT, INIT, TV_WEIGHT, invert as run_inversion, inversion_settings
from styleengine.engine.stylise import check_run, load_run_weights
from styleengine.errors import ConfigError, ImageError, UserError, first_line


def pixel_rmse(a, b) -> float:
    """RMS difference of two (H, W, 3) arrays in [0, 1], `b` resized to `a`'s shape."""
    import numpy as np

    if a.shape != b.shape:
        b = images.to_array(images.resize_tensor(images.to_tensor(b), a.shape[0], a.shape[1]))
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


@nothing_before_the_result
def _invert(
    image: Annotated[Path, typer.Argument(help="The picture whose features are inverted.", show_default=False,
                                        parser=paths.named_file("the picture path"))],
    output: Output,
    layer: Annotated[str, typer.Option("--layer", help="The layer whose features are matched (conv4_2, "
                                                       "relu3_1, pool2, ...).")] = "conv4_2",
    feature_weight: Annotated[float, typer.Option(
        "--feature-weight", help="The feature term's weight (relative to the target's energy, as Mahendran "
                                 "& Vedaldi).")] = FEATURE_WEIGHT,
    init: Annotated[str, typer.Option("--init", help="noise (the paper's) or content (the picture itself: "
                                                     "a check).")] = INIT,
    distances: Annotated[Optional[Path], typer.Option(
        "--distances", help="Also write the run's distances as JSON here.",
        parser=paths.named_file("--distances"))] = None,
    **flags: Any,
) -> None:
    """Reconstruct IMAGE from its features at one layer, from noise, under a smoothness prior (Mahendran &
    Vedaldi 2015), and write OUT."""
    from styleengine.console import warnings_on
    from styleengine.console import Console

    console = Console(stderr=True, markup=False)
    with warnings_on(console):  # the engine's warnings as "warning:" lines, escaped
        if init not in ("noise", "content"):
            raise ConfigError(f"--init for an inversion is noise or content, got {init!r}")
        # else the settings' check names the content weight
        if not (math.isfinite(feature_weight) and feature_weight > 0):
            raise ConfigError(f"--feature-weight must be a number > 0 (the feature term is what an inversion matches), "
                              f"got {feature_weight}")
        check_float32("--feature-weight", feature_weight)  # the settings' check named the content weight
        settings = inversion_settings(settings_from(flags, RUN, content_weight=feature_weight, init=init), layer)
        settings.validate()
        paths.check_output_path(output)
        inputs = {"image": image, **settings_inputs(settings.init, settings.weights)}  # the weights file too
        paths.check_not_an_input(output, "output", inputs)
        if distances is not None:
            paths.check_writable(distances, "distances")
            paths.check_not_an_input(distances, "distances", {**inputs, "output": output})
            paths.check_own(distances, "distances", paths.own_distances)
        picture = images.load_image(image, "image")
        try:
            check_run(settings, picture.shape[:2], [], content_label=f"image {image}")
        except TooThin as e:  # its first scale is its own: run's --start-size and --scales are not invert's
            if e.advice == f"--size {e.needed}":
                raise
            if e.needed <= AUTO_SCALES_ABOVE:  # one scale at that size: invert gives it
                raise TooThin(e.head, e.needed, "--size") from None
            raise ConfigError(f"{e.head}, which invert cannot give (it starts any --size over {AUTO_SCALES_ABOVE} "
                              f"px at {AUTO_START} px): crop the image") from None
        loaded = load_run_weights(settings)
        console.print(loaded.describe(), highlight=False, soft_wrap=True, markup=False)
        out, result, ran = run_inversion(picture, layer, settings, weights=loaded)
        with result_held(result):  # from here to the last line: a signal before `stopped` is said, none after
            with stop_said_with(result, output, console):
                said = _write(out, result, output, distances, picture, layer, settings, loaded)
            end_if_stopped(result, output, console, said=said)  # the current image is written, then the exit code
            console.print(said, highlight=False, soft_wrap=True)


def _write(out: Any, result: Any, output: Path, distances: Path | None, picture: Any, layer: str, settings: Any,
           loaded: Any) -> str:
    """The picture, then its numbers (--distances); the line saying both."""
    size, model, tv_weight, content_weight = settings.size, settings.model, settings.tv_weight, settings.content_weight
    try:
        write_or_rescue(out, output, [distances.parent] if distances is not None else [])
        failed = None
    except ImageError as e:  # rescued: the numbers are still written, and the line says where both went
        failed = e
    # an interrupted run is not measured: null in the JSON (NaN is no JSON), said so on the line
    feature = result.distances.content if result.distances is not None else None
    rmse = pixel_rmse(out, picture)
    lost = None
    if distances is not None:
        record = {"layer": layer, "feature_distance": feature, "pixel_rmse": rmse, "iterations": result.iterations,
                  "size": size, "model": model, "weights": loaded.source, "tv_weight": tv_weight,
                  "feature_weight": content_weight, "stopped": result.stopped}
        lost = paths.not_ours(distances, "distances", paths.own_distances)  # a user's file put there meanwhile
        try:
            if lost is None:
                paths.atomic_write(distances, (json.dumps(record, indent=1) + "\n").encode())
        except OSError as e:  # a full disk: only the numbers are lost
            lost = e.strerror or first_line(e)  # not its temp file's name: that is gone
    if failed is not None:
        tail = "" if distances is None else (f"; distances {distances} not written either: {lost}" if lost
                                             else f"; the distances are in {distances}")
        raise ImageError(f"{failed}{tail}") from None
    if lost is not None:
        raise UserError(f"cannot write distances {distances}: {lost} (the picture is in {output})")
    shown = f"{feature:.3g}" if feature is not None else "not measured"
    return (f"wrote {output} ({result.iterations} iterations; feature distance at {layer} {shown}, "
            f"pixel RMS difference {rmse:.3g})")


invert = with_settings(_invert, RUN, ("size", "iterations", "optimizer", "lr", "seed", "model", "weights", "non_strict",
                                      "pooling", "tv_weight", "device", "backend"),
                       defaults={"size": 256, "iterations": 200, "tv_weight": TV_WEIGHT})
