"""Torch eager against the ORT step, interleaved in one process.

    python -m styleengine.benchmarks.interleaved --res 512 --pairs 5 [--json PATH]

On a shared machine the load drifts between two subprocess runs; stepping
torch and ORT alternately (A B A B ...) exposes both to the same load, and
the per-pair ratio's median is the figure to quote. Peak memory is not
measured here (one process holds both steps): `styleengine bench` measures it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def run(size: int, pairs: int) -> dict:
    import torch

    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig
    from styleengine.engine.steps import make_targets
    from styleengine.model.vgg import gflop
    from styleengine.model.weights import load_weights

    weights, loss = load_weights("vgg19", "random"), LossConfig()
    steps = {"torch": make_step("torch", weights, loss), "ort": make_step("ort", weights, loss)}
    gen = torch.Generator().manual_seed(0)
    content, style, image = (torch.rand(1, 3, size, size, generator=gen) for _ in range(3))
    for step in steps.values():
        step.set_targets(make_targets(step, loss, content, [style]))
        step(image)  # warm-up: first-run costs at this size
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(pairs):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(image)
            times[name].append(time.perf_counter() - t0)
    ratios = [o / t for o, t in zip(times["ort"], times["torch"])]
    return {"size": size, "pairs": pairs, "threads": torch.get_num_threads(),
            "gflop_per_iter": gflop("vgg19", list(loss.content_layers), list(loss.style_layers), size, size)["total"],
            "torch_s": times["torch"], "ort_s": times["ort"],
            "torch_median_s": statistics.median(times["torch"]), "ort_median_s": statistics.median(times["ort"]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "load_avg_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", default="512", help="comma-separated square sizes")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = [run(int(s), args.pairs) for s in args.res.split(",")]
    for r in results:
        print(f"{r['size']} px: torch {r['torch_median_s']:.2f} s, ort {r['ort_median_s']:.2f} s, "
              f"ort/torch per pair: median {r['ratio_median']:.3f} (min {r['ratio_min']:.3f}, max "
              f"{r['ratio_max']:.3f}), load {r['load_avg_1m']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
