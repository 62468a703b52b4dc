"""Peak RSS of whole `styleengine run` processes, backends taking turns (A B A B ...).

    python -m styleengine.benchmarks.run_memory CONTENT STYLE --weights FILE --model vgg16 --size 384 \
        --iters 8 --backends torch,ort --rounds 2 [--json PATH]

`styleengine bench` measures the loop (step + optimiser) in a worker; a user's
run also loads images and weights, computes the targets and, at the end, the
style and content distances, any of which can be the process's peak (an ORT
run's was the final distances: 1.16 GiB at 384 px where its loop needed
0.84). Each run is a child process; its peak is the kernel's ru_maxrss for
that child (os.wait4), so nothing of this process is counted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from styleengine.paths import atomic_write


def run_once(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one `styleengine run` child with these arguments."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would stall the child
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "styleengine", "run", *args],
                                 stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            text = err.read().decode(errors="replace").strip()[-400:]
            how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
            raise RuntimeError(f"styleengine run {' '.join(args)} {how}: {text}")
    return wall, usage.ru_maxrss * 1024  # KiB on Linux


def measure(content: str, style: str, backends: list[str], rounds: int, common: list[str]) -> dict:
    from styleengine.benchmarks.machine import cpu_isa, cpu_name

    peaks: dict[str, list[int]] = {b: [] for b in backends}
    walls: dict[str, list[float]] = {b: [] for b in backends}
    error = None
    with tempfile.TemporaryDirectory(prefix="run-memory-") as folder:
        try:
            for _ in range(rounds):
                for backend in backends:
                    out = str(Path(folder) / f"{backend}.png")
                    wall, peak = run_once([content, style, "-o", out, "--backend", backend, *common])
                    walls[backend].append(wall)
                    peaks[backend].append(peak)
        except RuntimeError as e:  # the rounds measured so far are kept, with why the rest are not
            error = str(e)
    return {"cpu": cpu_name(), "cpu_isa": cpu_isa(), "load_avg_1m": os.getloadavg()[0],
            "command": ["styleengine", "run", content, style, "-o", "OUT", "--backend", "BACKEND", *common],
            "peak_rss_bytes": peaks, "wall_s": walls, "error": error,
            "median_peak_rss_gib": {b: statistics.median(v) / 2**30 for b, v in peaks.items() if v}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("content")
    parser.add_argument("style")
    parser.add_argument("--backends", default="torch,ort")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args, common = parser.parse_known_args(argv)  # the rest goes to `styleengine run` as it is
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    result = measure(args.content, args.style, args.backends.split(","), args.rounds, common)
    for backend, gib in result["median_peak_rss_gib"].items():
        print(f"{backend}: peak RSS {gib:.2f} GiB (median of {args.rounds}; "
              f"{', '.join(f'{p / 2**30:.2f}' for p in result['peak_rss_bytes'][backend])})")
    if args.json:
        atomic_write(args.json, json.dumps(result, indent=1).encode())
    if result["error"]:
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
