"""The same look at every size? Default flags at several sizes, every output seen at one common size.

    python -m styleengine.benchmarks.schedule_look \
        --weights ../shared/weights/vgg16_imagenet_features.safetensors --model vgg16 \
        --styles ../shared/images/starry_night.jpg --sizes 128,384,1024 --png docs/schedule_look.png

For each painting and size, two schedules run with every other flag at its
default (content init, --iters): `old`, one scale (today's default up to
1024 px), and `new`, the default schedule of this checkout
(engine/schedule.py). Each output is resized to --view px (long side) and its
style and content distances (engine/quality.py) are taken there against the
content and style at --view px, so the sizes are compared on one picture.
Time: a schedule's iterations at each scale times the median seconds an
iteration at that size, taken from every run's iterations there (a scale's
first left out), and each run's wall time. Above --old-up-to px `old` (a
single scale: 300 iterations at 1024 px are ~30 min on 2 cores) does not
run: its time comes from the seconds an iteration that `new` measured at
its last scale, and it has no distances. Writes benchmarks/results/schedule_look_<isa>.json (or --json)
and a strip of the pictures at --view px (--png).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import statistics
import sys
import time
from typing import Any
from pathlib import Path

from styleengine.paths import atomic_write

# Settings overrides; new: the checkout's default schedule
SCHEDULES: dict[str, dict[str, Any]] = {"old": {"scales": 1}, "new": {}}
TOLERANCE = 1.25  # "the same look": every size's distances within 25% of each other


def per_scale_seconds(records) -> dict[int, list[float]]:
    """Long side -> seconds of each iteration at that scale but its first (which builds the step's buffers)."""
    by_size: dict[int, list[float]] = {}
    for r in records:
        by_size.setdefault(max(r.height, r.width), []).append(r.seconds)
    return {s: t[1:] if len(t) > 1 else t for s, t in by_size.items()}


def run(content, style, settings, weights, init_image=None):
    """(the output, its wall seconds, seconds of the iterations at each scale)."""
    from styleengine.engine.stylise import stylise

    start = time.perf_counter()
    image, result = stylise(content, [style], settings, weights=weights, init_image=init_image)
    if result.stopped is not None:
        raise RuntimeError(f"the run at {settings.size} px stopped early: {result.stopped}")
    return image, time.perf_counter() - start, per_scale_seconds(result.records)


def continue_run(content, style, base, plan: list[tuple[int, int]], first):
    """The rest of a default run from its first scale's output `first`: the plan's scales 2..n, each a single
    scale started from the previous one's output (stylise resizes it, as its own scale loop does):
    (the output, wall seconds, seconds an iteration per scale)."""
    import tempfile

    from styleengine.engine import images
    from styleengine.model.weights import load_weights

    weights = load_weights(base.model, base.weights)
    image, wall, seconds = first, 0.0, {}
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "previous.png"  # the path `init` names; the float array itself starts each scale
        for size, iterations in plan[1:]:
            images.save_image(image, init)
            settings = dataclasses.replace(base, size=size, scales=1, iterations=iterations, init=str(init))
            image, scale_wall, scale_seconds = run(content, style, settings, weights, init_image=image)
            wall += scale_wall
            seconds.update(scale_seconds)
    return image, wall, seconds


class Viewer:
    """Distances of any output at the view size, against the content and style at that size."""

    def __init__(self, content, style, base, weights, view: int):
        from styleengine.engine.backends import make_step
        from styleengine.engine.steps import make_targets
        from styleengine.engine.stylise import prepare

        self.view = view
        self.loss = base.loss_config()
        prepared = prepare(content, [style], dataclasses.replace(base, size=view), view)
        self.step = make_step(base.backend, weights, self.loss, pooling=base.pooling, device=base.device,
                              precision=base.precision, provider=base.provider, conv=base.conv)
        self.targets = make_targets(self.step, self.loss, prepared.content, prepared.styles,
                                    output_positions=prepared.height * prepared.width)
        self.content = prepared.content

    def __call__(self, image) -> dict:
        from styleengine.engine import images
        from styleengine.engine.quality import distances

        x = images.to_tensor(images.resize(image, self.view))
        d = distances(self.step, x, self.targets, self.loss)
        return {"style": d.style, "content": d.content}

    def close(self) -> None:
        self.step.close()


def load_content(name: str):
    """An image path, or the name of a scikit-image sample photo ("coffee"), as an (H, W, 3) array in [0, 1]."""
    from styleengine.engine import images

    if "/" in name or "." in name:
        return images.load_image(name)
    from skimage import data

    return getattr(data, name)().astype("float32") / 255.0


def spread(values: list[float]) -> float:
    """max / min: 1.25 means the largest is 25% above the smallest."""
    return max(values) / min(values)


def strip(rows: list[tuple[str, list[tuple[str, object]]]], view: int, path: str) -> None:
    """One row per painting: the labelled pictures at `view` px, written atomically."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    from styleengine.engine import images

    label_h = 14
    cells = [[(label, images.resize(img, view)) for label, img in row]  # type: ignore[arg-type]
             for _, row in rows]
    height = max(im.shape[0] for row in cells for _, im in row) + label_h
    width = max(sum(im.shape[1] + 4 for _, im in row) for row in cells)
    canvas = Image.new("RGB", (width, height * len(cells)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(cells):
        x = 0
        for label, im in row:
            canvas.paste(Image.fromarray((np.clip(im, 0, 1) * 255 + 0.5).astype("uint8")), (x, r * height + label_h))
            draw.text((x + 2, r * height + 1), label, fill="black")
            x += im.shape[1] + 4
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    atomic_write(Path(path), buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--content", default="coffee", help="a skimage.data name or an image path")
    parser.add_argument("--styles", required=True, help="comma-separated painting paths")
    parser.add_argument("--sizes", default="128,384,1024")
    parser.add_argument("--view", type=int, default=128, help="long side the outputs are compared at")
    parser.add_argument("--schedules", default="old,new")
    parser.add_argument("--workers", type=int, default=2, help="processes for the runs that share a first scale")
    parser.add_argument("--old-up-to", type=int, default=512, help="above this size `old` is timed only")
    parser.add_argument("--iters", type=int, default=None, help="default: Settings' (a smoke test sets fewer)")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", required=True)
    # explicit, not auto: a tuning trial would run inside the timed region
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--conv", default="direct")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/schedule_look_<isa>.json")
    parser.add_argument("--png", default=None)
    args = parser.parse_args(argv)

    from styleengine.engine import images
    from styleengine.engine.machine import cpu_isa, cpu_name
    from styleengine.engine.stylise import Settings
    from styleengine.model.weights import load_weights

    content = load_content(args.content)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.schedules.split(",")
    extra = {"iterations": args.iters} if args.iters is not None else {}
    base = Settings(model=args.model, weights=args.weights, backend=args.backend, precision=args.precision,
                    conv=args.conv, **extra).resolved()
    weights = load_weights(base.model, base.weights)
    plans = {(name, size): dataclasses.replace(base, size=size, **SCHEDULES[name]).scale_plan()
             for name in names for size in sizes}
    styles = {path: images.load_image(path) for path in args.styles.split(",")}
    times: dict[int, list[float]] = {}  # long side -> seconds of every timed iteration there, all runs
    results: dict = {}
    out = {"content": args.content, "view": args.view, "sizes": sizes, "model": args.model, "weights": args.weights,
           "device": f"{base.backend} {base.precision} {base.conv} {base.device}", "iterations": base.iterations,
           "machine": {"cpu": cpu_name(), "isa": cpu_isa()}, "tolerance": TOLERANCE, "results": results}
    path = Path(args.json or f"benchmarks/results/schedule_look_{cpu_isa()}.json")
    rows = []
    for style_path, style in styles.items():
        viewer = Viewer(content, style, base, weights, args.view)
        entry: dict = {"unstylised": viewer(content), "runs": {}}
        row = [("content", content), ("style", style)]
        done: dict = {}  # plan -> its run: schedules that agree at a size run once
        firsts: dict = {}  # (first scale) -> its output, for the runs that start with it
        jobs = []
        for size in sizes:
            for name in names:
                plan = plans[(name, size)]
                run_out: dict = {"plan": [list(p) for p in plan], "wall_seconds": None, "distances": None}
                entry["runs"][f"{name}@{size}"] = run_out
                if tuple(plan) in done or (name == "old" and size > args.old_up_to):
                    continue
                done[tuple(plan)] = run_out
                if len(plan) > 1 and tuple(plan[:1]) in done:
                    jobs.append((f"{name}@{size}", plan))  # continues from the shared first scale, below
                    continue
                settings = dataclasses.replace(base, size=size, **SCHEDULES[name])
                image, run_out["wall_seconds"], seconds = run(content, style, settings, weights)
                firsts[tuple(plan)] = image
                for s_, t in seconds.items():
                    times.setdefault(s_, []).extend(t)
                run_out["distances"] = viewer(image)
                row.append((f"{name} {size}", image))
        # a run whose first scale is a single-scale run already done continues from that run's output (what
        # stylise's own scale loop does), the continuations in parallel: the 2-core machine is shared
        # spawn: a forked child of a process that has run torch's thread pool hangs
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.workers),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {}
            for key, plan in jobs:
                first = firsts[tuple(plan[:1])]
                futures[key] = pool.submit(continue_run, content, style, base, plan, first)
            for key, plan in jobs:
                image, wall, seconds = futures[key].result()
                run_out = entry["runs"][key]
                first_wall = next(r["wall_seconds"] for r in entry["runs"].values()
                                  if r["plan"] == [list(plan[0])] and r["wall_seconds"] is not None)
                run_out["wall_seconds"] = first_wall + wall
                run_out["shared_first_scale"] = True
                for s_, t in seconds.items():
                    times.setdefault(s_, []).extend(t)
                run_out["distances"] = viewer(image)
                row.append((key.replace("@", " "), image))
        for key, kept in [(k, p) for k, p in ((k, tuple(tuple(x) for x in r["plan"])) for k, r in
                                                entry["runs"].items())]:
            if entry["runs"][key]["distances"] is None and kept in done and done[kept]["distances"] is not None:
                entry["runs"][key].update(done[kept])
        viewer.close()
        for key, r in entry["runs"].items():
            d = r["distances"]
            print(f"{style_path} {key}: plan {r['plan']}" + (f", wall {r['wall_seconds']:.0f} s, style "
                  f"{d['style']:.3f} content {d['content']:.3f}" if d else " (timed only)"), flush=True)
        for name in names:
            measured = [r["distances"] for k, r in entry["runs"].items() if k.startswith(name + "@") and r["distances"]]
            if len(measured) > 1:
                s = {k: spread([m[k] for m in measured]) for k in ("style", "content")}
                entry[f"{name}_spread"] = s
                print(f"{style_path} {name}: max/min over sizes, style {s['style']:.2f} content {s['content']:.2f} "
                      f"({'within' if max(s.values()) <= TOLERANCE else 'outside'} {TOLERANCE - 1:.0%})", flush=True)
        results[style_path] = entry
        rows.append((style_path, row))
        per_it = {s: statistics.median(t) for s, t in sorted(times.items())}
        out["seconds_per_iteration"] = {str(s): t for s, t in per_it.items()}
        out["seconds"] = {f"{name}@{size}": sum(n * per_it[s] for s, n in plan) if all(s in per_it for s, _ in plan)
                          else None for (name, size), plan in plans.items()}
        for size in sizes:
            line = ", ".join(f"{name} {out['seconds'][f'{name}@{size}'] or float('nan'):.0f} s" for name in names)
            print(f"{size} px from the seconds an iteration: {line}", flush=True)
        atomic_write(path, (json.dumps(out, indent=1) + "\n").encode())  # after each painting: a cut run keeps it
        if args.png:
            strip(rows, args.view * 2, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
