"""Temporal consistency of `styleengine video`: consistent frames (engine/video.py) against the same frames
stylised independently, on clips whose motion is known (benchmarks/video_clips.py).

    python -m styleengine.benchmarks.video_consistency \
        --weights ../shared/weights/vgg16_imagenet_features.safetensors --model vgg16 \
        --style ../shared/images/starry_night.jpg --size 96 --frames 6 --png docs/video_strip.png --gif docs/video.gif

Clips: `pan` (a window moving 3 px right and 1.5 px down a frame across skimage's astronaut), `zoom` (1.5 px a
frame and 2% larger a frame), `occlusion` (the pan with a patch of The Scream sliding across it, 4 px a frame),
`crossing` (skimage's coffee photo, still, with a crop of The Scream crossing it at 4 px a frame: a real clip
whose uncovered band is known, video_clips.crossing).
For each: every frame stylised alone (content init, --iters, one warm step) and the video path (the first
frame so, each next from the warped previous result with the temporal loss, --frame-iters). Measured per
frame t > 0: the warping error mean |O_t - warp(O_t-1)| over the pixels Ruder et al.'s masks keep (the masks
and flow from the input frames, the same for both), and each frame's style distance (engine/quality.py).
With --weights-sweep the video path runs once per temporal weight. Writes benchmarks/results/video_<isa>.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from styleengine.paths import atomic_write

SCREAM = "the_scream.jpg"


def clips(count: int, shape: tuple[int, int], images_dir: Path) -> dict[str, list[np.ndarray]]:
    from skimage import data

    from styleengine.benchmarks.video_clips import crossing, moving_window, with_occluder
    from styleengine.engine import images

    photo = data.astronaut().astype(np.float32) / 255.0
    pan, _ = moving_window(photo, count, shape)
    zoom, _ = moving_window(photo, count, shape, step=(1.5, 1.5), zoom=1.02)
    scream = images.load_image(images_dir / SCREAM)
    side = shape[0] // 3
    patch = images.to_array(images.resize_tensor(images.to_tensor(scream), side, side * 3 // 4))
    return {"pan": pan, "zoom": zoom, "occlusion": with_occluder(pan, patch),
            "crossing": crossing(scream, count, shape)[0]}


def masks(frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per frame t > 0: (backward flow t -> t-1, consistency weights), from the input frames."""
    from styleengine.engine.flow import FlowEstimator, consistency

    estimate = FlowEstimator()
    found: list[tuple[np.ndarray, np.ndarray] | None] = [None]
    for before, frame in zip(frames, frames[1:]):
        backward = estimate(frame, before)
        found.append((backward, consistency(backward, estimate(before, frame)).weights))
    return found


def errors(outputs: list[np.ndarray], found: list) -> list[float]:
    from styleengine.engine.flow import warping_error

    return [warping_error(outputs[t], outputs[t - 1], *found[t]) for t in range(1, len(outputs))]


def independent(frames: list[np.ndarray], style: np.ndarray, settings: Any, weights: Any
                ) -> tuple[list[np.ndarray], list[float], float]:
    from styleengine.engine.stylise import build_step, stylise

    resolved = settings.resolved()
    step = build_step(resolved, weights, resolved.loss_config())
    outs, styles, start = [], [], time.perf_counter()
    try:
        for frame in frames:
            image, result = stylise(frame, [style], resolved, weights=weights, step=step)
            outs.append(np.round(np.clip(image, 0, 1) * 255) / 255.0)
            styles.append(result.distances.style)
    finally:
        step.close()
    return outs, styles, time.perf_counter() - start


def consistent(frames: list[np.ndarray], style: np.ndarray, settings: Any, weights: Any
               ) -> tuple[list[np.ndarray], list[float], list[float], float]:
    from styleengine.engine.video import stylise_frames

    done: list[Any] = []
    start = time.perf_counter()
    stopped = stylise_frames(list(enumerate(frames)), [style], settings, weights=weights, on_frame=done.append)
    if stopped is not None:
        raise RuntimeError(f"the video run stopped: {stopped}")
    return ([f.image.astype(np.float32) / 255.0 for f in done], [f.result.distances.style for f in done],
            [f.seconds for f in done], time.perf_counter() - start)


def strip(rows: dict[str, list[np.ndarray]], path: Path) -> None:
    """Rows of frames side by side (one row per label), written as a PNG."""
    import io

    from PIL import Image, ImageDraw

    from styleengine.engine import images

    first = next(iter(rows.values()))
    h, w = first[0].shape[:2]
    label_w = 110
    canvas = Image.new("RGB", (label_w + w * len(first), h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, frames) in enumerate(rows.items()):
        draw.text((4, r * h + h // 2 - 6), label, fill="black")
        for c, frame in enumerate(frames):
            canvas.paste(images.to_pil(frame), (label_w + c * w, r * h))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def gif(rows: dict[str, list[np.ndarray]], path: Path, fps: int) -> None:
    """The rows' frames side by side as an animated GIF (independent | consistent)."""
    import io

    from PIL import Image

    from styleengine.engine import images

    columns = list(rows.values())
    pictures = [Image.fromarray(np.concatenate([np.asarray(images.to_pil(col[t])) for col in columns], axis=1))
                for t in range(len(columns[0]))]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=int(1000 / fps),
                     loop=0)
    atomic_write(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--style", required=True)
    parser.add_argument("--size", type=int, default=96, help="long side of the clips, px")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--iters", type=int, default=100, help="iterations of an independent frame and frame 0")
    parser.add_argument("--frame-iters", type=int, default=None, help="default: the setting's default")
    parser.add_argument("--temporal-weights", default=None, help="comma-separated; default: the setting's default")
    parser.add_argument("--clips", default="pan,zoom,occlusion")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--conv", default="direct")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/video_<isa>.json")
    parser.add_argument("--png", default=None)
    parser.add_argument("--gif", default=None)
    args = parser.parse_args(argv)

    import torch

    from styleengine.engine import images
    from styleengine.engine.machine import cpu_isa, cpu_name
    from styleengine.engine.settings import Settings
    from styleengine.model.weights import load_weights

    shape = (args.size * 3 // 4 // 2 * 2, args.size)
    base = Settings(model=args.model, weights=args.weights, backend=args.backend, precision="fp32", conv=args.conv,
                    device="cpu", size=args.size, iterations=args.iters, frame_iters=args.frame_iters)
    weights = load_weights(base.model, base.weights)
    style = images.load_image(args.style)
    all_clips = clips(args.frames, shape, Path(args.style).parent)
    lambdas = ([float(v) for v in args.temporal_weights.split(",")] if args.temporal_weights
               else [base.temporal_weight])
    out: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "isa": cpu_isa(), "threads": torch.get_num_threads(),
                    "load_average_before": os.getloadavg()[0]},
        "settings": {"model": args.model, "weights": Path(args.weights).name, "style": Path(args.style).name,
                     "shape": list(shape), "frames": args.frames, "iterations": args.iters,
                     "frame_iters": (args.frame_iters if args.frame_iters is not None
                                     else dataclasses.replace(base).frame_iters) or "default",
                     "backend": args.backend, "conv": args.conv},
        "clips": {}}
    shown: dict[str, list[np.ndarray]] = {}
    for name in args.clips.split(","):
        frames = all_clips[name]
        found = masks(frames)
        alone, alone_style, alone_s = independent(frames, style, base, weights)
        entry: dict[str, Any] = {
            "independent": {"warping_error": statistics.mean(errors(alone, found)), "style_distance": alone_style,
                            "seconds": round(alone_s, 2)},
            "consistent": {}, "kept_pixels": [float(f[1].mean()) for f in found[1:] if f is not None]}
        for weight in lambdas:
            settings = dataclasses.replace(base, temporal_weight=weight)
            outs, styles, seconds, total = consistent(frames, style, settings, weights)
            err = statistics.mean(errors(outs, found))
            ratio = [s / a for s, a in zip(styles, alone_style)]
            entry["consistent"][str(weight)] = {
                "warping_error": err, "error_ratio": err / entry["independent"]["warping_error"],
                "style_distance": styles, "style_ratio_max": max(ratio), "style_ratio_mean": statistics.mean(ratio),
                "seconds_per_frame": seconds, "seconds": round(total, 2)}
            print(name, weight, json.dumps({k: v for k, v in entry["consistent"][str(weight)].items()
                                            if k in ("error_ratio", "style_ratio_max", "style_ratio_mean")}))
            if name == "occlusion" and weight == lambdas[0]:
                shown = {"input": frames, "independent": alone, "consistent": outs}
        out["clips"][name] = entry
    out["machine"]["load_average_after"] = os.getloadavg()[0]  # load slows the figures, never changes them
    path = Path(args.json or f"benchmarks/results/video_{cpu_isa()}.json")
    atomic_write(path, (json.dumps(out, indent=1) + "\n").encode())
    if shown and args.png:
        strip(shown, Path(args.png))
    if shown and args.gif:
        gif({k: v for k, v in shown.items() if k != "input"}, Path(args.gif), fps=6)


if __name__ == "__main__":
    main()
