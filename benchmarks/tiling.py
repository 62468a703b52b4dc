"""Tiled vs untiled step: peak RSS and seconds per iteration, one fresh subprocess per configuration.

    python -m benchmarks.tiling --config 1024 --config 1024:512 --config 2048 --config 2048:1024 \
        --config 4096:1024 --budget-s 900 --out benchmarks/results/tiling-cpu.json

A configuration is SIZE (untiled) or SIZE:TILE. Random VGG19 weights, the
paper's loss (relu4_2; relu1_1..relu5_1), random targets of the right shapes
(the step's cost does not depend on their values), fp32, all threads. One
iteration is one loss-and-gradient evaluation (what L-BFGS calls per step).
Each worker logs every tile call (phase, seconds, ru_maxrss) to a side file,
so a configuration cut off by --budget-s still reports its peak so far and
an estimate of the full iteration from its per-tile times; estimates are
marked as such ("status": "estimate"), never mixed with measurements.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    """User + system CPU seconds of this process: on a shared machine, far steadier than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(size: int, tile: int | None, iters: int, backend: str, pooling: str, log: str,
           probe: bool = False) -> dict:
    import torch

    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig, Targets
    from styleengine.engine.tiled import TiledStep, tiles
    from styleengine.export import vgg
    from styleengine.export.weights import load_weights

    loss = LossConfig()
    weights = load_weights("vgg19", "random", seed=0)
    base = make_step(backend, weights, loss, pooling=pooling)  # type: ignore[arg-type]
    strides = {l.name: (l.stride, l.out_channels) for l in vgg.layer_table("vgg19")}
    gen = torch.Generator().manual_seed(0)
    content = {n: torch.rand(1, strides[n][1], size // strides[n][0], size // strides[n][0], generator=gen)
               for n in loss.content_layers}
    grams = {}
    for n in loss.style_layers:
        a = torch.rand(strides[n][1], strides[n][1], generator=gen)
        grams[n] = a @ a.T
    targets = Targets(content, grams)
    step = TiledStep(base, loss, "vgg19", tile=tile) if tile else base
    n_tiles = len(list(tiles(size, size, tile, step.halo))) if tile else 1
    x = torch.rand(1, 3, size, size, generator=gen)

    out = open(log, "a", encoding="utf-8")
    start = time.perf_counter()

    def logged(phase, fn):
        def call(*args, **kwargs):
            t0, c0 = time.perf_counter(), _cpu()
            result = fn(*args, **kwargs)
            out.write(json.dumps({"phase": phase, "seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0,
                                  "since_start": time.perf_counter() - start, "maxrss": _maxrss()}) + "\n")
            out.flush()
            return result
        return call

    if probe:
        # one iteration with every full-size buffer (image, gradient, content target, Grams, TV) but
        # both passes over only the largest tile: its peak is the iteration's (tiles run one at a
        # time and free their activations), its time is per tile, not per iteration
        all_tiles = list(tiles(size, size, tile, step.halo))
        largest = max(all_tiles, key=lambda t: (t.bottom - t.top) * (t.right - t.left))
        step._tiles = lambda image, halo: iter([(largest, image[:, :, largest.top:largest.bottom,
                                                                  largest.left:largest.right])])
    if tile:
        base.features = logged("pass1", base.features)
        base.tile_step = logged("pass2", base.tile_step)
    step.set_targets(targets)
    base_rss = _maxrss()
    seconds, cpu_seconds = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), _cpu()
        result = step(x)
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(_cpu() - c0)
        out.write(json.dumps({"phase": "iteration", "seconds": seconds[-1], "maxrss": _maxrss()}) + "\n")
        out.flush()
    assert result.grad.shape == x.shape
    return {"size": size, "tile": tile, "halo": getattr(step, "halo", None), "tiles": n_tiles, "probe": probe,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_bytes": _maxrss(), "setup_rss_bytes": base_rss,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_config(spec: str, iters: int, budget_s: float, backend: str, pooling: str) -> dict:
    spec, _, probe = spec.partition("/")
    size, _, tile = spec.partition(":")
    row: dict = {"config": spec, "size": int(size), "tile": int(tile) if tile else None, "backend": backend,
                 "pooling": pooling, "load_avg_start": os.getloadavg()[0]}
    with tempfile.NamedTemporaryFile("w+", suffix=".jsonl", delete=False) as f:
        log = f.name
    if probe:
        row["config"] = spec + "/probe"
    cmd = [sys.executable, "-m", "benchmarks.tiling", "--worker", spec + ("/probe" if probe else ""),
           "--iters", str(iters),
           "--backend", backend, "--pooling", pooling, "--log", log]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s)
        row["wall_s"] = time.perf_counter() - t0
        if proc.returncode == 0:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            row["status"] = "ok"
            row["s_per_it"] = min(row["seconds"])
            row["cpu_s_per_it"] = min(row["cpu_seconds"])
            if probe:  # a measured peak, an estimated time: every tile as long as the largest one
                calls = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
                per_tile = {p: max(c["seconds"] for c in calls if c["phase"] == p) for p in ("pass1", "pass2")}
                row["probe_tile_seconds"] = per_tile
                row["estimated_s_per_it"] = row["tiles"] * (per_tile["pass1"] + per_tile["pass2"])
                cpu = {p: max(c.get("cpu_s", 0.0) for c in calls if c["phase"] == p) for p in ("pass1", "pass2")}
                row["estimated_cpu_s_per_it"] = row["tiles"] * (cpu["pass1"] + cpu["pass2"])
                row["status"] = "ok (peak measured, time estimated)"
                del row["s_per_it"], row["cpu_s_per_it"]  # those timed one tile per pass, not an iteration
        else:
            row["status"] = "failed"
            row["reason"] = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
    except subprocess.TimeoutExpired:
        row["wall_s"] = time.perf_counter() - t0
        row["status"] = "timeout"
    calls = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    os.unlink(log)
    row["load_avg_end"] = os.getloadavg()[0]
    if row["status"] == "timeout" and calls:
        row["peak_rss_so_far_bytes"] = max(c["maxrss"] for c in calls)
        row["tile_calls_done"] = {p: sum(c["phase"] == p for c in calls) for p in ("pass1", "pass2")}
        # estimate: every tile costs the mean of the tile calls measured in each pass
        from styleengine.engine.tiled import halo_for, tiles

        n = len(list(tiles(row["size"], row["size"], row["tile"], halo_for("vgg19", ["relu4_2", "relu5_1"]))))
        row["tiles"] = n
        est = 0.0
        for phase in ("pass1", "pass2"):
            times = [c["seconds"] for c in calls if c["phase"] == phase]
            if times:
                est += n * sum(times) / len(times)
            else:
                est = float("nan")
        row["estimated_s_per_it"] = est
        row["status"] = "estimate"
        row["reason"] = f"cut off at {budget_s:.0f} s; s/it estimated from the tile calls that ran"
    return row


def estimate_row(size: int, tile: int, reference: dict) -> dict:
    """An estimate (not a measurement) from a measured tiled row: time scales with tile count."""
    from styleengine.engine.tiled import halo_for, tiles

    halo = halo_for("vgg19", ["relu4_2", "relu5_1"])
    area = sum((t.bottom - t.top) * (t.right - t.left) for t in tiles(size, size, tile, halo))
    ref_area = sum((t.bottom - t.top) * (t.right - t.left)
                   for t in tiles(reference["size"], reference["size"], tile, halo))
    ref_s = reference.get("s_per_it") or reference.get("estimated_s_per_it")
    if ref_s is None:
        return {"config": f"{size}:{tile}", "size": size, "tile": tile, "status": "failed",
                "reason": f"no time in the {reference['config']} row to extrapolate from"}
    fixed = 4 * size * size * (3 * 3 + 512 / 64)  # image, gradient, TV temporaries, content target (bytes)
    ref_fixed = 4 * reference["size"] ** 2 * (3 * 3 + 512 / 64)
    ref_peak = reference.get("peak_rss_bytes") or reference.get("peak_rss_so_far_bytes")
    return {"config": f"{size}:{tile}", "size": size, "tile": tile, "status": "estimate",
            "estimated_s_per_it": ref_s * area / ref_area,
            "estimated_peak_rss_bytes": ref_peak - ref_fixed + fixed,
            "reason": f"extrapolated from the {reference['config']} row: tiled pixel area x{area / ref_area:.2f}, "
                      "peak = that row's peak - its image-sized buffers + these"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[],
                   help="SIZE, SIZE:TILE, or SIZE:TILE/probe (both passes over the largest tile only: "
                        "peak measured, time estimated); repeatable")
    p.add_argument("--estimate", action="append", default=[],
                   help="SIZE:TILE:REFCONFIG, an estimate from a measured row; repeatable")
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=1800.0, help="per configuration")
    p.add_argument("--backend", default="torch")
    p.add_argument("--pooling", default="avg")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tiling-cpu.json"))
    p.add_argument("--append", action="store_true", help="keep the rows already in --out")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        spec, _, probe = args.worker.partition("/")
        size, _, tile = spec.partition(":")
        row = worker(int(size), int(tile) if tile else None, args.iters, args.backend, args.pooling, args.log,
                     probe=probe == "probe")
        print(json.dumps(row))
        return
    doc = {"rows": []}
    if args.append and args.out.is_file():
        doc = json.loads(args.out.read_text())
    doc["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                      "logical_cpus": os.cpu_count(), "note": "shared machine: see each row's load averages"}
    doc["command"] = " ".join(sys.argv)

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, args.out)

    for spec in args.config:
        row = run_config(spec, args.iters, args.budget_s, args.backend, args.pooling)
        doc["rows"] = [r for r in doc["rows"] if r.get("config") != row["config"] or r.get("backend") != args.backend]
        doc["rows"].append(row)
        save()
        print(json.dumps({k: row.get(k) for k in ("config", "status", "s_per_it", "estimated_s_per_it",
                                                   "peak_rss_bytes", "peak_rss_so_far_bytes", "reason")}),
              flush=True)
    by_config = {r["config"]: r for r in doc["rows"]}
    for spec in args.estimate:
        size, tile, ref = spec.split(":", 2)
        doc["rows"] = [r for r in doc["rows"] if r.get("config") != f"{size}:{tile}"]
        doc["rows"].append(estimate_row(int(size), int(tile), by_config[ref]))
        save()
    # overhead ratios where both a tiled and an untiled row were measured, in CPU seconds (the machine
    # is shared: wall time moves with the other users' load) and in wall seconds
    ratios = {}
    by_config = {r["config"]: r for r in doc["rows"]}
    for r in doc["rows"]:
        u = by_config.get(str(r["size"]))
        if r.get("tile") and r.get("status") == "ok" and u and u.get("status") == "ok":
            ratios[r["config"]] = {"wall": r["s_per_it"] / u["s_per_it"]}
            if r.get("cpu_s_per_it") and u.get("cpu_s_per_it"):
                ratios[r["config"]]["cpu"] = r["cpu_s_per_it"] / u["cpu_s_per_it"]
    doc["overhead_vs_untiled"] = ratios
    save()


if __name__ == "__main__":
    main()
