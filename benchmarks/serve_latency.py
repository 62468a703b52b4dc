"""Submit-to-result time of a warm `styleengine serve` against `styleengine run` and the loop alone; and the
throughput of N concurrent same-size jobs on the server against the same jobs one by one.

    python -m styleengine.benchmarks.serve_latency --size 256 --iters 10 --rounds 2 \
        --weights /work/shared/weights/vgg16_imagenet_features.safetensors \
        --json benchmarks/results/serve-latency-cpu.json

Rounds interleave the latency modes (server, server_new, run, loop) so a change in the machine's load hits
them alike. Server: one `styleengine serve` process, warmed by one job first (the same photo and painting as
the server rows: their targets are in the warm engine's cache; server_new sends a photo it has not seen with
the same painting); a job is timed from the POST to the
last byte of its PNG (its end learnt from the event stream). Run: one `styleengine run` process per
picture (imports, weights, step, the loop, the write). Loop: the iterations' own wall time inside an
in-process run on a warm step (the sum of the records' seconds). STYLEENGINE_TUNE=off everywhere: `auto`
by rule, no timed trial in any mode. Each server job's own loop seconds (its iterations, timed inside the
server: `loop_seconds` of GET /api/jobs/{id}) give the target a loop from the same process and moment:
server_minus_allowed_by_own_loop is the job's wall time less 1.1x its loop + 0.3 s. Each mode's CPU seconds
are kept beside its wall time: on a shared machine the wall time measures the neighbours too.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from styleengine.benchmarks.machine import cpu_isa, cpu_name
from styleengine.paths import atomic_write
from styleengine.runtime import passive_openmp


def _picture(path: Path, height: int, width: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _job(http, content: Path, style: Path, size: int, iters: int) -> tuple[float, float]:
    """Seconds from the POST to the PNG's last byte, and the job's own loop seconds inside the server."""
    start = time.perf_counter()
    with open(content, "rb") as c, open(style, "rb") as s:
        response = http.post("/api/jobs", files={"content": c, "style": s},
                             data={"size": str(size), "iters": str(iters), "keep": "true"})
    response.raise_for_status()
    job_id = response.json()["id"]
    with http.stream("GET", f"/api/jobs/{job_id}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: ") and '"status": "done"' in line:
                break
            if line.startswith("data: ") and ('"status": "failed"' in line or '"status": "cancelled"' in line):
                raise RuntimeError(f"job {job_id}: {line}")
    http.get(f"/api/jobs/{job_id}/result").raise_for_status()
    elapsed = time.perf_counter() - start
    return elapsed, http.get(f"/api/jobs/{job_id}").json()["loop_seconds"]


def _loop_seconds(content: Path, style: Path, settings, warm) -> tuple[float, float]:
    """(wall, CPU) seconds of the loop's iterations alone; the CPU time between the first and the last
    iteration's record, scaled to every iteration."""
    from styleengine.engine import images
    from styleengine.engine.stylise import Picture, stylise_batch

    picture = Picture(images.load_image(content), [images.load_image(style)], settings)
    marks: list[float] = []
    (_, result), = stylise_batch([picture], weights=warm.weights(settings), step=warm.step(settings),
                                 callback=lambda record, current: marks.append(time.process_time()))
    count = len(result.records)
    return sum(r.seconds for r in result.records), (marks[-1] - marks[0]) * count / max(1, count - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--throughput-size", type=int, default=128, help="long side of the concurrent jobs")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    os.environ["STYLEENGINE_TUNE"] = "off"
    passive_openmp()  # as the CLI's processes (the server, run) have it: the loop is timed under the same policy

    import httpx
    import torch

    from styleengine.engine.batch import Warm
    from styleengine.engine.stylise import Settings

    common = ["--model", args.model, "--weights", args.weights, "--backend", "torch", "--device", "cpu",
              "--precision", "fp32"]
    work = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    content = _picture(work / "content.png", args.size * 3 // 4, args.size, 0)
    style = _picture(work / "style.png", args.size, args.size, 1)
    small = [_picture(work / f"small{i}.png", args.throughput_size * 3 // 4, args.throughput_size, 10 + i)
             for i in range(args.concurrent)]
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "styleengine", "serve", "--port", str(port), "--results-dir",
                               str(work / "srv"), "--max-queue", str(max(16, args.concurrent)), *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = Settings(size=args.size, iterations=args.iters, model=args.model, weights=args.weights,
                        backend="torch", device="cpu", precision="fp32").resolved()
    rows: dict[str, list[float]] = {"server": [], "server_new": [], "run": [], "loop": []}
    own_loop: dict[str, list[float]] = {"server": [], "server_new": []}  # each server job's loop, in the server
    cpu: dict[str, list[float]] = {mode: [] for mode in rows}  # CPU seconds: what contention leaves alone
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
        deadline = time.monotonic() + 300
        while True:
            try:
                http.get("/api/health").raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start")
                time.sleep(0.2)
        _job(http, content, style, args.size, 2)  # warm: weights, the step, the first allocations
        with Warm() as warm:
            _loop_seconds(content, style, dataclasses.replace(settings, iterations=2), warm)
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
                before = _cpu(server.pid)
                wall, loop = _job(http, content, style, args.size, args.iters)
                rows["server"].append(wall)
                own_loop["server"].append(loop)
                cpu["server"].append(_cpu(server.pid) - before)
                # a photo the server has not seen, the same painting: its content targets are computed again
                fresh = _picture(work / f"new{round_}.png", args.size * 3 // 4, args.size, 100 + round_)
                before = _cpu(server.pid)
                wall, loop = _job(http, fresh, style, args.size, args.iters)
                rows["server_new"].append(wall)
                own_loop["server_new"].append(loop)
                cpu["server_new"].append(_cpu(server.pid) - before)
                start, before = time.perf_counter(), _children_cpu()
                subprocess.run([sys.executable, "-m", "styleengine", "run", str(content), str(style), "-o",
                                str(work / "run.png"), "--size", str(args.size), "--iters", str(args.iters),
                                *common], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                rows["run"].append(time.perf_counter() - start)
                cpu["run"].append(_children_cpu() - before)
                wall, cpu_seconds = _loop_seconds(content, style, settings, warm)
                rows["loop"].append(wall)
                cpu["loop"].append(cpu_seconds)
        # throughput: the same N jobs one by one, then all at once (batched by the server)
        throughput_cpu = _cpu(server.pid)
        start = time.perf_counter()
        for path in small:
            _job(http, path, style, args.throughput_size, args.iters)
        one_by_one = time.perf_counter() - start
        one_by_one_cpu, throughput_cpu = _cpu(server.pid) - throughput_cpu, _cpu(server.pid)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
            list(pool.map(lambda p: _job(http, p, style, args.throughput_size, args.iters), small))
        together = time.perf_counter() - start
        together_cpu = _cpu(server.pid) - throughput_cpu
        batches = sorted({j["batch"] for j in http.get("/api/jobs", params={"limit": args.concurrent}).json()})
    finally:
        server.terminate()
        server.wait(60)
    median = {mode: statistics.median(values) for mode, values in rows.items()}
    report = {
        "machine": {"cpu": cpu_name(), "isa": cpu_isa(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_after": round(os.getloadavg()[0], 2)},
        "settings": {"size": args.size, "iterations": args.iters, "model": args.model,
                     "weights": "random" if args.weights == "random" else Path(args.weights).name,
                     "backend": settings.backend, "precision": settings.precision, "conv": settings.conv},
        "latency_seconds": {mode: [round(v, 3) for v in values] for mode, values in rows.items()},
        "latency_median": {mode: round(v, 3) for mode, v in median.items()},
        "cpu_seconds": {mode: [round(v, 3) for v in values] for mode, values in cpu.items()},
        "cpu_median": {mode: round(statistics.median(values), 3) for mode, values in cpu.items()},
        "server_over_loop": round(median["server"] / median["loop"], 3),
        # the same job's iterations timed inside the server: the target without another process's moment in it
        "server_own_loop_seconds": {mode: [round(v, 3) for v in values] for mode, values in own_loop.items()},
        "server_minus_allowed_by_own_loop": {mode: [round(wall - (1.1 * loop + 0.3), 3)
                                                    for wall, loop in zip(rows[mode], values)]
                                 for mode, values in own_loop.items()},
        "server_minus_1.1_loop": round(median["server"] - 1.1 * median["loop"], 3),
        "throughput": {"jobs": args.concurrent, "size": args.throughput_size, "iterations": args.iters,
                       "one_by_one_seconds": round(one_by_one, 2), "concurrent_seconds": round(together, 2),
                       "speedup": round(one_by_one / together, 2), "one_by_one_cpu_seconds": round(one_by_one_cpu, 2),
                       "concurrent_cpu_seconds": round(together_cpu, 2), "batch_sizes_seen": batches},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, (json.dumps(report, indent=2) + "\n").encode())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
