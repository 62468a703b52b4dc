"""What auto's race costs a first run: `styleengine run` with every flag at its default, raced vs read back.

    python -m styleengine.benchmarks.race_cost \
        --weights ../shared/weights/vgg16_imagenet_features.safetensors --model vgg16 \
        --content coffee --style ../shared/images/starry_night.jpg --size 256 --rounds 2

Rows take turns (A B A B): `raced` runs with no tuning record (the first run on a machine: every size class
of the default coarse-to-fine schedule races its candidates in its first steps, engine/race.py), `recorded`
with the record the first raced run kept (every later run: the picks from the start, no race). ONNX Runtime's
graphs are exported into the cache first, as after any `--backend ort` run, so they race too. Each run is a
child process; its CPU seconds (user + system, from the OS) are the figure, as the wall time moves with
whatever else the machine runs. The race's cost is raced / recorded - 1. Writes
benchmarks/results/race-cost-<isa>.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from styleengine.paths import atomic_write


def _photo(name: str, folder: Path) -> Path:
    """A scikit-image photo by name (coffee, astronaut, chelsea, rocket) or a path."""
    if Path(name).is_file():
        return Path(name)
    import numpy as np
    import skimage.data
    from PIL import Image

    path = folder / f"{name}.png"
    Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(path)
    return path


def _run(args: list[str], env: dict[str, str]) -> dict:
    """One `styleengine run` child: its CPU and wall seconds and the lines auto printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "styleengine", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"styleengine {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stderr.splitlines() if line.startswith(("auto:", "wrote"))]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "load": round(os.getloadavg()[0], 2), "lines": lines}


def main(argv: list[str] | None = None) -> int:
    from styleengine.engine.machine import cpu_isa

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--content", default="coffee")
    parser.add_argument("--style", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chain", type=int, default=0,
                        help="instead of A B pairs: this many runs one after another from an empty record, sharing "
                             "it (run k is the k-th run here: a race cut short goes on in the next), then one more")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.chain:
        return _chain(args)

    work = Path(tempfile.mkdtemp(prefix="race-cost-"))
    try:
        cache, env, common = _prepare(args, work)
        record, kept = cache / "tune.json", work / "tune.json"
        record.unlink(missing_ok=True)
        runs = []
        for round_ in range(args.rounds):
            for kind in ("raced", "recorded"):
                record.unlink(missing_ok=True)
                if kind == "recorded":
                    shutil.copy(kept, record)
                row = _run(["run", *common, "-o", str(work / f"{kind}.png"), "--size", str(args.size)], env)
                if kind == "raced" and not kept.exists():
                    shutil.copy(record, kept)  # the first race's picks: what every recorded run reads
                runs.append({"kind": kind, "round": round_, **row})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(kind: str, what: str) -> float:
        return statistics.median(r[what] for r in runs if r["kind"] == kind)

    pairs = [(a["cpu_s"], b["cpu_s"]) for a, b in zip(runs[::2], runs[1::2])]
    result = {
        "what": "a default `styleengine run` with no tuning record (raced) vs with the first race's record "
                "(recorded), turns taken A B A B; CPU seconds of each child",
        "isa": cpu_isa(), "size": args.size, "model": args.model, "weights": Path(args.weights).name,
        "content": args.content, "style": Path(args.style).name, "cpu_count": os.cpu_count(),
        "runs": runs,
        "raced_over_recorded_cpu": [round(a / b, 4) for a, b in pairs],
        "race_cost_share_cpu": round(statistics.median(a / b for a, b in pairs) - 1, 4),
        "median_cpu_s": {k: median(k, "cpu_s") for k in ("raced", "recorded")},
        "median_wall_s": {k: median(k, "wall_s") for k in ("raced", "recorded")},
    }
    out = args.json or Path(f"benchmarks/results/race-cost-{cpu_isa()}-{args.size}.json")
    atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"race cost: {result['race_cost_share_cpu']:+.1%} of a recorded run's CPU time ({out})")
    return 0


def _prepare(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, str], list[str]]:
    """A cache of its own in `work`, with the graphs a --backend ort run would have cached (so they race);
    the environment and the run's common arguments."""
    cache = work / "cache"
    env = {**os.environ, "STYLEENGINE_CACHE_DIR": str(cache), "STYLEENGINE_TUNE": "on"}
    content = _photo(args.content, work)
    common = [str(content), args.style, "--weights", args.weights, "--model", args.model]
    for conv in ("winograd", "direct"):
        _run(["run", *common, "-o", str(work / "export.png"), "--backend", "ort", "--precision", "fp32",
              "--conv", conv, "--size", "64", "--iters", "1"], env)
    return cache, env, common


def _chain(args: argparse.Namespace) -> int:
    """Runs 1..N+1 on one record from empty: what racing costs each run until the record is complete, against
    the last run's wall time (by then nothing races, if the chain converged)."""
    from styleengine.engine.machine import cpu_isa

    work = Path(tempfile.mkdtemp(prefix="race-chain-"))
    try:
        cache, env, common = _prepare(args, work)
        (cache / "tune.json").unlink(missing_ok=True)
        runs = []
        for k in range(args.chain + 1):
            row = _run(["run", *common, "-o", str(work / f"run{k + 1}.png"), "--size", str(args.size)], env)
            runs.append({"run": k + 1, **row})
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    last = runs[-1]["wall_s"]
    result = {
        "what": f"{args.chain + 1} default `styleengine run`s one after another from an empty tuning record, "
                "sharing it; wall seconds of each child against the last's",
        "isa": cpu_isa(), "size": args.size, "model": args.model, "weights": Path(args.weights).name,
        "content": args.content, "style": Path(args.style).name, "cpu_count": os.cpu_count(), "runs": runs,
        "wall_over_last": [round(r["wall_s"] / last, 4) for r in runs],
        "raced_in": [r["run"] for r in runs if any(line.startswith("auto: racing cost") for line in r["lines"])],
    }
    out = args.json or Path(f"benchmarks/results/race-chain-{cpu_isa()}-{args.size}.json")
    atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"race chain: wall over the last run {result['wall_over_last']}; raced in runs {result['raced_in']} ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
