"""Methods against each other, interleaved in one process (A B C A B C ...), as ratios.

    python -m styleengine.benchmarks.interleaved --res 384x512,192x256 --methods naive,torch,torch-bf16,ort \
        --loop 5 --rounds 3 [--json PATH]

On a shared machine the load drifts between two subprocess runs; taking turns
exposes every method to the same load, and the per-round ratio to the first
method (median over rounds) is the figure to quote. A turn is `--loop N`
whole iterations (the engine's optimise with a 100-pair L-BFGS history, or
the naive loop's one LBFGS(max_iter=N) call; the first iteration of each turn
is not counted) or, with --loop 0, one step. Peak memory is not measured here
(one process holds every method): `styleengine bench` measures it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Sequence, TypeVar

from styleengine.paths import atomic_write

# name: (backend, precision, convolutions); "torch" and "ort" are what `styleengine run` runs (Winograd on the CPU)
METHODS = {"naive": ("naive", "fp32", None), "torch": ("torch", "fp32", "auto"),
           "torch-direct": ("torch", "fp32", "direct"), "torch-bf16": ("torch", "bf16", "auto"),
           "ort": ("ort", "fp32", "auto"), "ort-direct": ("ort", "fp32", "direct")}


T = TypeVar("T")
R = TypeVar("R")


def take_turns(names: Sequence[T], turn: Callable[[T, int], R], rounds: int, *,
               drop: Callable[[R], bool] = lambda result: False) -> dict[T, list[R]]:
    """A B C A B C ...: `turn(name, round)` for every name, round after round; a name whose result `drop`s
    sits out the rounds after it (a failed configuration is not retried). Results per name, in round order."""
    results: dict[T, list[R]] = {name: [] for name in names}
    out: set[T] = set()
    for r in range(rounds):
        for name in names:
            if name in out:
                continue
            results[name].append(turn(name, r))
            if drop(results[name][-1]):
                out.add(name)
    return results


def paired_ratios(times: Sequence[float], base: Sequence[float]) -> list[float]:
    """Each round's time over the base's in the same round: the load both saw cancels."""
    return [t / b for t, b in zip(times, base)]


def run(height: int, width: int, methods: list[str], loop: int, rounds: int) -> dict:
    import torch

    from styleengine.benchmarks import naive
    from styleengine.benchmarks.config import LOOP_HISTORY
    from styleengine.benchmarks.machine import cpu_isa
    from styleengine.engine.backends import make_step
    from styleengine.engine.loop import optimise
    from styleengine.engine.losses import LossConfig
    from styleengine.engine.steps import make_targets
    from styleengine.model.weights import load_weights

    weights, loss = load_weights("vgg19", "random"), LossConfig()
    gen = torch.Generator().manual_seed(0)
    content, style, image = (torch.rand(1, 3, height, width, generator=gen) for _ in range(3))
    steps = {}
    for name in methods:
        backend, precision, conv = METHODS[name]
        if backend != "naive":
            steps[name] = make_step(backend, weights, loss, precision=precision, conv=conv or "auto")
            steps[name].set_targets(make_targets(steps[name], loss, content, [style]))

    def turn(name: str) -> float:
        """One turn's time per iteration (median over the turn's iterations but the first)."""
        if name == "naive":
            if not loop:
                _, closure = naive.prepare(weights, image, content, style)
                closure()
                t0 = time.perf_counter()
                closure()
                return time.perf_counter() - t0
            return statistics.median(naive.run(weights, image, content, style, iterations=loop + 1,
                                               history=LOOP_HISTORY)[2][1:])
        if not loop:
            t0 = time.perf_counter()
            steps[name](image)
            return time.perf_counter() - t0
        records = optimise(steps[name], image, iterations=loop + 1, history=LOOP_HISTORY).finished().records
        return statistics.median(r.seconds for r in records[1:])

    for name in methods:
        turn(name)  # warm-up: first-run costs at this size
    times = take_turns(methods, lambda name, _: turn(name), rounds)
    base = methods[0]
    ratios = {name: paired_ratios(times[name], times[base]) for name in methods[1:]}
    convs = {name: step.conv for name, step in steps.items()}
    return {"height": height, "width": width, "loop": loop, "rounds": rounds, "threads": torch.get_num_threads(),
            "convs": convs,
            "cpu_isa": cpu_isa(), "times_s": times,
            "median_s": {name: statistics.median(v) for name, v in times.items()},
            "ratio_to": base, "ratio_median": {name: statistics.median(v) for name, v in ratios.items()},
            "ratio_range": {name: [min(v), max(v)] for name, v in ratios.items()},
            "load_avg_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    from styleengine.runtime import passive_openmp

    passive_openmp()  # as the CLI runs (before torch loads); every method here runs under it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", default="384x512", help="comma-separated sizes, 512 or 384x512")
    parser.add_argument("--methods", default="naive,torch,ort", help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--loop", type=int, default=5, help="iterations per turn (0: one step per turn)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or len(methods) < 2:
        parser.error(f"--methods: two or more of {', '.join(METHODS)}")
    results = []
    for size in args.res.split(","):
        h, _, w = size.partition("x")
        results.append(run(int(h), int(w or h), methods, args.loop, args.rounds))
        r = results[-1]
        print(f"{r['height']}x{r['width']} ({'loop' if args.loop else 'step'}): "
              + ", ".join(f"{m} {s:.3f} s" for m, s in r["median_s"].items()) + "; vs " + r["ratio_to"] + ": "
              + ", ".join(f"{m} {q:.3f}x" for m, q in r["ratio_median"].items())
              + f" (load {r['load_avg_1m']:.1f})", flush=True)
    if args.json:
        atomic_write(args.json, json.dumps({"results": results}, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
