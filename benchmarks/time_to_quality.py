"""Wall time to a finished picture: single scale against coarse-to-fine, as distance-vs-seconds curves.

    python -m styleengine.benchmarks.time_to_quality --size 512 --iters 300 \
        --weights ../shared/weights/vgg16_imagenet_features.safetensors --model vgg16 \
        --style ../shared/images/starry_night.jpg --schedules single,from256,from128 \
        --json benchmarks/results/time-to-quality.json --png docs/time_to_quality.png

Each schedule runs `stylise` as a user would (targets per scale, the step
built once); a snapshot of the image is taken every `--every` iterations (the
loop reads exactly there, as --save-every makes it) and its wall time is
the run's time so far, the snapshots' own cost taken out. Afterwards each
snapshot is upsampled to the final size and measured against the final
size's targets (engine/quality.py), so every curve is "the picture at
--size px, after t seconds". A schedule reaches quality when both its
distances are within 5% of the single-scale run's final ones (or below).
The schedules run one after another, in turns when --rounds > 1 (A B C A B
C), and the figure quoted is the median over rounds of each time-to-quality.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

from styleengine.paths import atomic_write

TOLERANCE = 1.05  # "the same distances": within 5% of the single-scale run's final ones


def schedules(names: list[str], iters: int, coarse_iters: int, last_iters: int) -> dict[str, dict]:
    """Settings overrides per schedule name: single, or fromN (coarse to fine from N px, `coarse_iters` at each
    coarser scale and `last_iters` at `size`)."""
    out = {}
    for name in names:
        if name == "single":
            out[name] = {"scales": 1, "iterations": iters}
        elif name.startswith("from") and name[4:].isdigit():
            out[name] = {"start_size": int(name[4:]), "iters_per_scale": coarse_iters, "iterations": last_iters}
        else:
            raise SystemExit(f"error: unknown schedule {name!r} (single or fromN, e.g. from256)")
    return out


def run_one(content, style, base, overrides: dict, every: int, weights) -> tuple[list[dict], dict]:
    """(snapshots [{iteration, seconds, size, image}], the run's Result fields)."""
    import numpy as np

    from styleengine.engine.stylise import stylise

    settings = dataclasses.replace(base, save_every=every, **overrides)
    snaps: list[dict] = []
    clock = {"start": time.perf_counter(), "excluded": 0.0}

    def callback(record, current) -> None:
        if record.iteration % every:
            return
        t0 = time.perf_counter()
        snaps.append({"iteration": record.iteration, "height": record.height, "width": record.width,
                      "seconds": t0 - clock["start"] - clock["excluded"], "image": np.array(current())})
        clock["excluded"] += time.perf_counter() - t0

    image, result = stylise(content, [style], settings, callback=callback, weights=weights)
    total = time.perf_counter() - clock["start"] - clock["excluded"]
    snaps.append({"iteration": result.iterations, "height": image.shape[0], "width": image.shape[1],
                  "seconds": total, "image": image})
    return snaps, {"iterations": result.iterations, "seconds": total, "stopped": result.stopped,
                   "losses": [r.loss for r in result.records]}


def measure(snaps: list[dict], content, style, base, weights) -> list[dict]:
    """Distances of each snapshot at the final size (upsampled bicubic, as the next scale's init is)."""
    from styleengine.engine import images
    from styleengine.engine.backends import make_step
    from styleengine.engine.quality import distances
    from styleengine.engine.steps import make_targets
    from styleengine.engine.stylise import prepare

    settings = base.resolved()
    loss = settings.loss_config()
    prepared = prepare(content, [style], settings, settings.size)
    with make_step(settings.backend, weights, loss, pooling=settings.pooling, device=settings.device,
                   precision=settings.precision, provider=settings.provider) as step:
        targets = make_targets(step, loss, prepared.content, prepared.styles,
                               output_positions=prepared.height * prepared.width)
        out = []
        for s in snaps:
            x = images.to_tensor(s["image"])
            if (x.shape[2], x.shape[3]) != (prepared.height, prepared.width):
                x = images.resize_tensor(x, prepared.height, prepared.width).clamp(0, 1)
            d = distances(step, x, targets, loss)
            out.append({"iteration": s["iteration"], "seconds": s["seconds"], "height": s["height"],
                        "width": s["width"], "style": d.style, "content": d.content})
    return out


def time_to(curve: list[dict], style: float, content: float) -> float | None:
    """Seconds to the first point with both distances within TOLERANCE of (style, content); None if never."""
    for p in curve:
        if p["style"] <= style * TOLERANCE and p["content"] <= content * TOLERANCE:
            return p["seconds"]
    return None


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rounds in result["curves"].items():
        curve = rounds[0]
        for ax, key in zip(axes, ("style", "content")):
            ax.plot([p["seconds"] for p in curve], [p[key] for p in curve], label=name, marker=".", markersize=3)
    target = result["target"]
    for ax, key in zip(axes, ("style", "content")):
        ax.axhline(target[key] * TOLERANCE, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("wall seconds")
        ax.set_ylabel(f"{key} distance at {result['size']} px")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"time to quality at {result['size']} px ({result['machine']['cpu']}, {result['device']}); "
                 f"dotted: the single-scale run's final distance + 5%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--content", default="astronaut", help="a skimage.data name or an image path")
    parser.add_argument("--style", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=300, help="the single-scale run's iterations")
    parser.add_argument("--coarse-iters", type=int, default=100, help="iterations at each coarser scale")
    parser.add_argument("--last-iters", type=int, default=150, help="coarse-to-fine's iterations at --size")
    parser.add_argument("--schedules", default="single,from256,from128")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--style-weight", type=float, default=None)
    parser.add_argument("--weighting", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)

    from styleengine.benchmarks.machine import cpu_isa, cpu_name
    from styleengine.engine import images
    from styleengine.engine.stylise import Settings
    from styleengine.model.weights import load_weights

    if "/" in args.content or "." in args.content:
        content = images.load_image(args.content)
    else:
        from skimage import data

        content = getattr(data, args.content)().astype("float32") / 255.0
    style = images.load_image(args.style)
    extra = {k: v for k, v in (("style_weight", args.style_weight), ("weighting", args.weighting)) if v is not None}
    base = Settings(size=args.size, model=args.model, weights=args.weights, backend=args.backend,
                    precision=args.precision, **extra).resolved()
    weights = load_weights(base.model, base.weights)
    plans = schedules(args.schedules.split(","), args.iters, args.coarse_iters, args.last_iters)
    curves: dict[str, list] = {name: [] for name in plans}
    runs: dict[str, list] = {name: [] for name in plans}
    for r in range(args.rounds):
        for name, overrides in plans.items():
            snaps, info = run_one(content, style, base, overrides, args.every, weights)
            curves[name].append(measure(snaps, content, style, base, weights))
            runs[name].append(info)
            print(f"round {r + 1} {name}: {info['seconds']:.1f} s, final style {curves[name][-1][-1]['style']:.4g} "
                  f"content {curves[name][-1][-1]['content']:.4g}", file=sys.stderr, flush=True)
    reference = "single" if "single" in curves else next(iter(curves))
    target = {k: statistics.median(c[-1][k] for c in curves[reference]) for k in ("style", "content")}
    summary = {}
    for name, rounds in curves.items():
        times = [time_to(c, target["style"], target["content"]) for c in rounds]
        reached = [t for t in times if t is not None]
        summary[name] = {"seconds_to_quality": statistics.median(reached) if len(reached) == len(times) else None,
                         "per_round": times, "final": {k: statistics.median(c[-1][k] for c in rounds)
                                                       for k in ("style", "content")},
                         "total_seconds": statistics.median(i["seconds"] for i in runs[name]),
                         "settings": plans[name]}
    result = {"size": args.size, "content": args.content, "style": args.style, "model": args.model,
              "device": f"{base.backend} {base.precision} {base.device if base.backend == 'torch' else base.provider}",
              "weighting": base.weighting, "style_weight": base.style_weight,
              "machine": {"cpu": cpu_name(), "isa": cpu_isa()}, "target": target, "tolerance": TOLERANCE,
              "summary": summary, "curves": curves, "runs": runs}
    for name, s in summary.items():
        t = s["seconds_to_quality"]
        print(f"{name:10s} time to quality {('%.1f s' % t) if t is not None else 'not reached':>12s}  "
              f"(run {s['total_seconds']:.1f} s; final style {s['final']['style']:.4g} content "
              f"{s['final']['content']:.4g})")
    if args.json:
        atomic_write(args.json, json.dumps(result, indent=1).encode())
    if args.png:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
