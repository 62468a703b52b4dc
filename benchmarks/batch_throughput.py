"""Images per hour: one `styleengine run` process per picture vs `styleengine batch` (one by one, warm) vs
`styleengine batch` (batched), on the same jobs.

    python -m styleengine.benchmarks.batch_throughput --size 256 --iters 30 --jobs 4 \
        --json benchmarks/results/batch-throughput-cpu.json

Every mode is timed by wall clock around its processes (start-up, weights, set-up and the writes
included: what a user waits for). The pictures are seeded noise (timing does not depend on content), the
weights random (seeded; timing does not depend on weight values). Each mode writes into its own fresh
folder under --work (a temp folder by default), so no mode skips another's jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from styleengine.benchmarks.machine import cpu_isa, cpu_name
from styleengine.paths import atomic_write

MODES = ("run per picture", "batch one by one", "batch batched")


def _pictures(folder: Path, jobs: int, size: int) -> tuple[list[Path], Path]:
    rng = np.random.default_rng(0)
    contents = []
    for i in range(jobs):
        path = folder / f"content{i}.png"
        Image.fromarray(rng.integers(0, 256, (size * 3 // 4, size, 3), dtype=np.uint8)).save(path)
        contents.append(path)
    style = folder / "style.png"
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(style)
    return contents, style


def _timed(commands: list[list[str]]) -> float:
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(size: int, iters: int, jobs: int, model: str, work: Path, on_row=None, modes=MODES) -> list[dict]:
    contents, style = _pictures(work, jobs, size)
    common = ["--size", str(size), "--iters", str(iters), "--model", model, "--weights", "random",
              "--device", "cpu"]
    exe = [sys.executable, "-m", "styleengine"]
    jobs_file = work / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps({"content": c.name, "style": style.name}) + "\n" for c in contents))
    plans = {
        "run per picture": [[*exe, "run", str(c), str(style), "-o", str(work / "run" / f"{c.stem}.png"), *common]
                            for c in contents],
        "batch one by one": [[*exe, "batch", str(jobs_file), "--out", str(work / "one"), "--batch-size", "1",
                              *common]],
        "batch batched": [[*exe, "batch", str(jobs_file), "--out", str(work / "batched"), *common]],
    }
    (work / "run").mkdir()
    rows = []
    for mode in modes:
        load = os.getloadavg()[0]
        seconds = _timed(plans[mode])
        rows.append({"mode": mode, "size": size, "iterations": iters, "jobs": jobs, "seconds": round(seconds, 2),
                     "images_per_hour": round(jobs / seconds * 3600, 1), "load_before": round(load, 2)})
        if on_row is not None:
            on_row(rows[-1])
    if "batch batched" in modes:
        batched = [json.loads(line) for line in (work / "batched" / "manifest.jsonl").read_text().splitlines()]
        rows[-1]["batch_sizes"] = sorted({line["batch"] for line in batched})
        rows[-1]["manifest_example"] = batched[0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[256])
    parser.add_argument("--iters", type=int, nargs="+", default=[30], help="one per --size")
    parser.add_argument("--jobs", type=int, nargs="+", default=[4], help="one per --size")
    parser.add_argument("--model", default="vgg19")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    import torch

    rows = []
    for size, iters, jobs in zip(args.size, args.iters, args.jobs):
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            rows += measure(size, iters, jobs, args.model, Path(work),
                            on_row=lambda row: print(json.dumps(row), file=sys.stderr), modes=args.modes)
    report = {"machine": {"cpu": cpu_name(), "isa": cpu_isa(), "logical_cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__, "load_at_end": round(os.getloadavg()[0], 2)},
              "model": args.model, "weights": "random (seeded)", "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
