"""The benchmark harness: configurations, one subprocess each, rows, fits, limits.

Every configuration runs in a fresh `python -m styleengine.benchmarks.worker`
process (JSON spec in, one JSON row out), so its peak memory is its own and
an out-of-memory, a crash or a time-out is a row with a status and a reason
(`ok`, `oom`, `error`, `timeout`, `unavailable`), never a missing line.

This module computes and returns; it never prints and never picks a path:
the CLI (src/styleengine/cli_bench.py) presents and writes where it is told.
It does not import torch at module level, so bad flags fail fast.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import signal
import statistics
import subprocess
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from styleengine.choices import BACKENDS, MODELS, POOLINGS, PRECISIONS, PROVIDERS
from styleengine.errors import ConfigError

DEVICES = ("cpu", "cuda")  # a bench row names the device it ran on: no "auto"
STATUSES = ("ok", "oom", "error", "timeout", "unavailable")
MIN_RESOLUTION = 32
QUANTUM = 16  # the limit search works on multiples of this
PAPER_RES = 512  # "images of about 512x512 pixels" (Gatys et al.)
MIN_FIT_SPAN = 2.0  # slopes need sizes spanning at least this ratio of pixel counts

# Defaults, written once; the CLI reads them from here. 1 warm-up + 2 timed
# iterations keep `bench --res 512,1024` (torch and ort) under 4 minutes on a
# 2-core CPU, where one 1024 px iteration takes ~20 s.
DEFAULT_RES = "512,1024"
DEFAULT_BACKENDS = "torch,ort"
DEFAULT_PROVIDERS = "cpu"
DEFAULT_DEVICES = "cpu"
DEFAULT_PRECISIONS = "fp32"
DEFAULT_MODEL = "vgg19"  # the paper's network
DEFAULT_POOLING = "avg"  # the paper's choice
DEFAULT_ITERS = 2
DEFAULT_WARMUP = 1
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_TIME_BUDGET_S = 60.0  # per iteration; ~1000 L-BFGS iterations in under a day
DEFAULT_MEM_FRACTION = 0.8  # of the memory available when the run starts

# the stable row schema a user scripts against; the CSV has the same columns
ROW_KEYS = ("backend", "provider", "device", "precision", "threads", "height", "width", "status", "reason",
            "median_s", "p10_s", "p90_s", "peak_rss_bytes", "peak_device_bytes", "gflop_per_iter", "gflops",
            "peak_fraction", "versions")
EXTRA_KEYS = ("device_name", "model", "pooling", "iters", "warmup", "iters_per_s", "base_rss_bytes", "speedup",
              "tile", "tiles")
COLUMNS = ROW_KEYS + EXTRA_KEYS
SPEEDUP_NOTE = ("the first ok row's median at the same size over this row's (torch on cpu at fp32 when it "
                "ran, so ORT vs torch and GPU vs CPU)")


# ---------------------------------------------------------------- parsing

def _items(text: str, flag: str) -> list[str]:
    items = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one value, got {text!r}")
    return list(dict.fromkeys(items))


def parse_choices(text: str, allowed: Iterable[str], flag: str) -> list[str]:
    allowed = tuple(allowed)
    items = _items(text, flag)
    for item in items:
        if item not in allowed:
            raise ConfigError(f"unknown {flag.lstrip('-').rstrip('s')} {item!r} in {flag}; choose from {', '.join(allowed)}")
    return items


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    """'512,1024' or '512x768' -> [(h, w), ...]; each side an integer >= 32."""
    out = []
    for item in _items(text, "--res"):
        parts = item.split("x")
        try:
            if len(parts) not in (1, 2):
                raise ValueError
            h, w = (int(parts[0]), int(parts[-1]))
        except ValueError:
            raise ConfigError(f"--res takes sizes like 512 or 512x768, got {item!r}") from None
        if min(h, w) < MIN_RESOLUTION:
            raise ConfigError(f"--res {item}: the smallest size is {MIN_RESOLUTION} px (VGG pools 4 times)")
        out.append((h, w))
    return list(dict.fromkeys(out))


def parse_tiles(text: str | None) -> list[int | None]:
    """--tile: comma-separated core sizes (multiples of 16); `none` (or 0) is the untiled step.
    "none,1024" times both in the same run, so the overhead is a ratio of one run's rows."""
    if text is None:
        return [None]
    out: list[int | None] = []
    for item in _items(text, "--tile"):
        if item.lower() in ("none", "0"):
            out.append(None)
            continue
        try:
            tile = int(item)
        except ValueError:
            raise ConfigError(f"--tile: {item!r} is not a size in px (or none)") from None
        if tile <= 0 or tile % QUANTUM:
            raise ConfigError(f"--tile: {tile} is not a positive multiple of {QUANTUM} px")
        out.append(tile)
    return list(dict.fromkeys(out))


def positive(value: float | None, flag: str) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a number > 0, got {value}")
    return value


# ---------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    backend: str
    provider: str | None  # ORT's execution provider; None for torch
    device: str  # cpu or cuda: where the step's tensors live
    precision: str
    height: int
    width: int
    model: str = DEFAULT_MODEL
    pooling: str = DEFAULT_POOLING
    tile: int | None = None  # core size of the exact tiled step (engine/tiled.py); None: untiled

    @property
    def key(self) -> tuple:
        """What a limit search and a speed-up compare across (everything but the size)."""
        return (self.backend, self.provider, self.device, self.precision, self.model, self.pooling, self.tile)

    def at(self, height: int, width: int) -> "Config":
        return dataclasses.replace(self, height=height, width=width)


def expand(resolutions: list[tuple[int, int]], backends: list[str], providers: list[str], devices: list[str],
           precisions: list[str], model: str = DEFAULT_MODEL, pooling: str = DEFAULT_POOLING,
           tiles: list[int | None] = (None,)) -> list[Config]:
    """Every configuration, in table order: per size, torch devices then ORT providers then TensorRT,
    each untiled and/or tiled as `tiles` lists (None: untiled).

    torch runs on each of `devices`; ort on each of `providers` (cpu -> cpu
    tensors, cuda/tensorrt -> cuda tensors); tensorrt always on cuda.
    """
    kinds: list[tuple[str, str | None, str]] = []
    for backend in backends:
        if backend == "torch":
            kinds += [("torch", None, d) for d in devices]
        elif backend == "ort":
            kinds += [("ort", p, "cpu" if p == "cpu" else "cuda") for p in providers]
        else:
            kinds.append(("tensorrt", "tensorrt", "cuda"))
    return [Config(b, p, d, prec, h, w, model, pooling, tile)
            for (h, w) in resolutions for (b, p, d) in kinds for prec in precisions for tile in tiles]


# ---------------------------------------------------------------- environment

def versions() -> dict[str, str | None]:
    """Installed versions of the runtimes every row depends on (no import needed)."""
    def version(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"styleengine": version("styleengine"), "torch": version("torch"),
            "onnxruntime": version("onnxruntime-gpu", "onnxruntime"),
            "tensorrt": version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12"),
            "python": platform.python_version()}


def availability(config: Config, machine: dict) -> str | None:
    """Why `config` cannot run on `machine`, or None if it may."""
    if config.device == "cuda" and not machine.get("cuda") and config.backend != "ort":
        return machine.get("cuda_reason") or "no CUDA device"
    if config.backend == "ort":
        if machine.get("ort_reason"):
            return machine["ort_reason"]
        wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}[config.provider or "cpu"]
        if wanted not in machine.get("ort_providers", []):
            return f"ONNX Runtime has no {wanted} here (available: {', '.join(machine.get('ort_providers', []))})"
        if config.device == "cuda" and not machine.get("cuda"):
            return machine.get("cuda_reason") or "no CUDA device"
    if config.backend == "tensorrt" and not machine.get("tensorrt"):
        return machine.get("tensorrt_reason") or "tensorrt is not installed"
    return None


# ---------------------------------------------------------------- subprocesses

@dataclass
class Outcome:
    """What one worker process gave back."""

    status: str
    reason: str
    data: dict = field(default_factory=dict)
    wall_s: float = 0.0


def run_worker(spec: dict, timeout_s: float, env: dict | None = None) -> Outcome:
    """Run one worker job; every way it can end becomes an Outcome with a status."""
    cmd = [sys.executable, "-m", "styleengine.benchmarks.worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return Outcome("timeout", f"no result within {timeout_s:g} s (the process was killed)",
                       wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    data = None
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = None
    if isinstance(data, dict) and data.get("status") in STATUSES:
        return Outcome(data["status"], data.get("reason") or "", data, wall)
    err = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    tail = err[-1][:300] if err else "no output"
    if proc.returncode < 0:
        sig = -proc.returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGKILL:
            return Outcome("oom", "killed by SIGKILL (most likely the kernel's out-of-memory killer)", wall_s=wall)
        return Outcome("error", f"killed by {name}: {tail}", wall_s=wall)
    if is_oom_text(proc.stderr):
        return Outcome("oom", tail, wall_s=wall)
    return Outcome("error", f"exit code {proc.returncode}: {tail}", wall_s=wall)


def is_oom_text(text: str) -> bool:
    low = text.lower()
    return any(t in low for t in ("out of memory", "memoryerror", "can't allocate memory", "failed to allocate memory"))


def machine_info(timeout_s: float = 300.0, refresh_peak: bool = False) -> dict:
    """This machine (CPU, memory, CUDA, ORT providers, TensorRT, fp32 peak), from a worker process."""
    out = run_worker({"kind": "machine", "refresh_peak": refresh_peak}, timeout_s)
    if out.status != "ok":
        raise RuntimeError(f"could not describe this machine: {out.status}: {out.reason}")
    info = {k: v for k, v in out.data.items() if k not in ("status", "reason")}
    try:
        import os

        info["load_avg_1m"] = os.getloadavg()[0]  # other work on the machine skews every figure
    except (OSError, AttributeError):
        info["load_avg_1m"] = None
    info["versions"] = versions()
    return info


def default_mem_budget(config: Config, machine: dict) -> int:
    """80% of what is available on the config's device when the run starts."""
    if config.device == "cuda" and machine.get("gpus"):
        return int(DEFAULT_MEM_FRACTION * machine["gpus"][0]["memory_free_bytes"])
    return int(DEFAULT_MEM_FRACTION * machine["memory_available_bytes"])


def peak_gflops(config: Config, machine: dict) -> float | None:
    if config.device == "cuda":
        return machine["gpus"][0]["fp32_peak_gflops"] if machine.get("gpus") else None
    return machine.get("fp32_peak_gflops")


def gflop_per_iter(config: Config) -> float:
    """GFLOP of one loss-and-gradient iteration from the layer table (the default loss's layers)."""
    from styleengine.engine.losses import LossConfig
    from styleengine.model.vgg import gflop

    loss = LossConfig()
    return gflop(config.model, list(loss.content_layers), list(loss.style_layers), config.height, config.width)["total"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def make_row(config: Config, outcome: Outcome, machine: dict, iters: int, warmup: int) -> dict:
    """One row with every column; measured figures only where the run gave them."""
    d = outcome.data
    times = [float(t) for t in d.get("times_s") or []]
    ok = outcome.status == "ok" and bool(times)
    gf = gflop_per_iter(config)
    median = statistics.median(times) if ok else None
    peak = peak_gflops(config, machine)
    gpus = machine.get("gpus") or []
    row = {
        "backend": config.backend, "provider": config.provider, "device": config.device,
        "precision": config.precision, "threads": d.get("threads", machine.get("torch_threads")),
        "height": config.height, "width": config.width,
        "status": outcome.status if (ok or outcome.status != "ok") else "error",
        "reason": outcome.reason if (ok or outcome.status != "ok") else "the worker returned no timings",
        "median_s": median, "p10_s": percentile(times, 10) if ok else None,
        "p90_s": percentile(times, 90) if ok else None,
        "peak_rss_bytes": d.get("peak_rss_bytes"), "peak_device_bytes": d.get("peak_device_bytes"),
        "gflop_per_iter": gf, "gflops": gf / median if ok else None,
        "peak_fraction": gf / median / peak if ok and peak else None,
        "versions": machine.get("versions") or versions(),
        "device_name": d.get("device_name") or (gpus[0]["name"] if config.device == "cuda" and gpus
                                                 else machine.get("cpu")),
        "model": config.model, "pooling": config.pooling, "iters": len(times) if ok else iters,
        "warmup": warmup, "iters_per_s": 1.0 / median if ok else None,
        "base_rss_bytes": d.get("base_rss_bytes"), "speedup": None,
        "tile": config.tile, "tiles": d.get("tiles"),
    }
    return row


# ---------------------------------------------------------------- running

Progress = Callable[[str, Config, dict | None], None]  # (event, config, row or None)


@dataclass
class Runner:
    """Runs configurations one at a time (never two timed processes at once)."""

    machine: dict
    iters: int = DEFAULT_ITERS
    warmup: int = DEFAULT_WARMUP
    timeout_s: float = DEFAULT_TIMEOUT_S
    mem_budget_bytes: int | None = None  # None: 80% of available on the device
    time_limit_s: float | None = None  # per iteration, enforced inside the worker
    env: dict | None = None  # extra environment for the workers (tests)
    progress: Progress | None = None
    _prepared: dict = field(default_factory=dict)

    def _env(self) -> dict | None:
        if not self.env:
            return None
        import os

        return {**os.environ, **self.env}

    def _prepare(self, config: Config) -> Outcome:
        """Build (and cache) an exporting backend's graph in its own process, once per kind."""
        key = config.key
        if key not in self._prepared:
            spec = {"kind": "prepare", **asdict(config)}
            self._prepared[key] = run_worker(spec, self.timeout_s, self._env())
        return self._prepared[key]

    def run(self, config: Config, *, iters: int | None = None, warmup: int | None = None) -> dict:
        iters = self.iters if iters is None else iters
        warmup = self.warmup if warmup is None else warmup
        if self.progress:
            self.progress("start", config, None)
        reason = availability(config, self.machine)
        if reason:
            outcome = Outcome("unavailable", reason)
        else:
            outcome = self._prepare(config) if config.backend != "torch" else Outcome("ok", "")
            if outcome.status == "ok":
                budget = self.mem_budget_bytes or default_mem_budget(config, self.machine)
                spec = {"kind": "step", **asdict(config), "iters": iters, "warmup": warmup,
                        # the watchdog can only see host memory; device memory is checked after
                        "mem_limit_bytes": budget if config.device == "cpu" else None,
                        "time_limit_s": self.time_limit_s}
                outcome = run_worker(spec, self.timeout_s, self._env())
            else:
                outcome = Outcome(outcome.status, f"preparing the step: {outcome.reason}")
        row = make_row(config, outcome, self.machine, iters, warmup)
        if self.progress:
            self.progress("done", config, row)
        return row

    def run_all(self, configs: list[Config]) -> list[dict]:
        rows = [self.run(c) for c in configs]
        add_speedups(rows)
        return rows


def add_speedups(rows: list[dict]) -> None:
    """speedup = baseline median / row median, per size; the baseline is the first
    ok row at that size in table order (torch on cpu at fp32 when it ran)."""
    baselines: dict[tuple, float] = {}
    for row in rows:
        if row["status"] == "ok":
            baselines.setdefault((row["height"], row["width"], row["model"], row["pooling"]), row["median_s"])
    for row in rows:
        base = baselines.get((row["height"], row["width"], row["model"], row["pooling"]))
        row["speedup"] = base / row["median_s"] if row["status"] == "ok" and base else None


# ---------------------------------------------------------------- fits

def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def series_name(row: dict) -> str:
    """torch cpu fp32, ort cpu fp32, ort cuda fp32, ort tensorrt fp16, tensorrt fp32, ort cpu fp32 tile 1024."""
    backend, provider = row["backend"], row.get("provider")
    where = row["device"] if backend == "torch" else (provider if provider and provider != backend else "")
    tile = f"tile {row['tile']}" if row.get("tile") else ""
    return " ".join(p for p in (backend, where, row["precision"], tile) if p)


def fit_slopes(rows: list[dict]) -> list[dict]:
    """Per backend/provider/device/precision: the log-log slopes of time and memory against pixels.

    mem_slope uses the peak RSS (or device peak on a GPU); mem_slope_net
    subtracts the process's RSS before the first image-sized tensor (torch,
    the weights, the runtime), which is constant in the size.
    """
    groups: dict[str, dict[tuple, dict]] = {}
    for row in rows:  # one point per series and size (a limit's probes repeat its table row)
        if row["status"] == "ok":
            groups.setdefault(series_name(row), {}).setdefault((row["height"], row["width"]), row)
    fits = []
    for name, points in groups.items():
        rs = list(points.values())
        px = [r["height"] * r["width"] for r in rs]
        mem = [r["peak_device_bytes"] if r["device"] == "cuda" else r["peak_rss_bytes"] for r in rs]
        net = [(r["peak_rss_bytes"] - r["base_rss_bytes"]) if r["device"] == "cpu" and r.get("base_rss_bytes")
               else r["peak_device_bytes"] for r in rs]
        if max(px) < MIN_FIT_SPAN * min(px):  # a slope over a few percent of pixels is noise
            continue
        fits.append({"series": name, "points": len(rs), "min_px": min(r["height"] for r in rs),
                     "max_px": max(r["height"] for r in rs),
                     "time_slope": loglog_slope(px, [r["median_s"] for r in rs]),
                     "mem_slope": loglog_slope(px, mem), "mem_slope_net": loglog_slope(px, net)})
    return fits


# ---------------------------------------------------------------- limit search

@dataclass
class Probe:
    res: int
    fits: bool
    why: str  # "fits", or which budget (or failure) stopped it
    row: dict | None = None


def search_limit(probe: Callable[[int], Probe], *, start: int = PAPER_RES, floor: int = MIN_RESOLUTION,
                 ceiling: int = 32768, quantum: int = QUANTUM) -> tuple[int | None, list[Probe]]:
    """The largest multiple of `quantum` in [floor, ceiling] whose probe fits.

    Brackets from `start` (doubling up while it fits, halving down while it
    does not), then bisects the bracket down to `quantum`. Assumes fitting
    is monotone in the size. Returns (limit or None, the probes in order).
    """
    def snap(r: int) -> int:
        return max(floor, min(ceiling, (r // quantum) * quantum))

    done: dict[int, Probe] = {}
    order: list[Probe] = []

    def fits(r: int) -> bool:
        if r not in done:
            done[r] = probe(r)
            order.append(done[r])
        return done[r].fits

    r = snap(start)
    lo: int | None
    hi: int | None
    if fits(r):
        lo, hi = r, None
        while hi is None:
            nxt = snap(lo * 2)
            if nxt == lo:
                return lo, order  # fits at the ceiling
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        lo, hi = None, r
        while lo is None:
            nxt = snap(hi // 2)
            if nxt == hi:
                return None, order  # not even the floor fits
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    while hi - lo > quantum:
        mid = snap((lo + hi) // 2)
        if mid <= lo:
            mid = lo + quantum
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, order


def judge(row: dict, mem_budget: int, time_budget: float) -> Probe:
    """Does one probe row fit both budgets?"""
    res = row["height"]
    if row["status"] != "ok":
        return Probe(res, False, f"{row['status']}: {row['reason']}", row)
    mem = row["peak_device_bytes"] if row["device"] == "cuda" else row["peak_rss_bytes"]
    if mem is not None and mem > mem_budget:
        return Probe(res, False, f"memory {mem / 2**30:.2f} GiB > budget {mem_budget / 2**30:.2f} GiB", row)
    if row["median_s"] > time_budget:
        return Probe(res, False, f"{row['median_s']:.1f} s/iteration > budget {time_budget:g} s", row)
    return Probe(res, True, "fits", row)


def find_limit(runner: Runner, config: Config, *, mem_budget_bytes: int | None, time_budget_s: float,
               start: int = PAPER_RES) -> dict:
    """Search one configuration's largest square size; each probe is one worker process
    (one warm-up and one timed iteration; the worker stops it once it passes either budget)."""
    mem_budget = mem_budget_bytes or default_mem_budget(config, runner.machine)
    saved = runner.mem_budget_bytes, runner.time_limit_s
    runner.mem_budget_bytes, runner.time_limit_s = mem_budget, time_budget_s

    def probe(res: int) -> Probe:
        # one warm-up: ORT's CPU arena keeps growing after the first run, so a
        # single iteration would understate the memory at the limit
        return judge(runner.run(config.at(res, res), iters=1, warmup=1), mem_budget, time_budget_s)

    try:
        limit, probes = search_limit(probe, start=start)
    finally:
        runner.mem_budget_bytes, runner.time_limit_s = saved
    at_limit = next((p.row for p in probes if p.res == limit), None)
    paper = next((p for p in probes if p.res == PAPER_RES), None)
    first_fail = min((p for p in probes if not p.fits), key=lambda p: p.res, default=None)
    result = {
        "backend": config.backend, "provider": config.provider, "device": config.device,
        "precision": config.precision, "model": config.model, "pooling": config.pooling, "tile": config.tile,
        "mem_budget_bytes": mem_budget, "time_budget_s": time_budget_s, "limit_px": limit,
        "limited_by": first_fail.why if first_fail else "the search ceiling",
        "at_limit": at_limit,
        "probes": [{"res": p.res, "fits": p.fits, "why": p.why,
                    "median_s": p.row["median_s"] if p.row else None,
                    "peak_rss_bytes": p.row["peak_rss_bytes"] if p.row else None,
                    "peak_device_bytes": p.row["peak_device_bytes"] if p.row else None,
                    "base_rss_bytes": p.row.get("base_rss_bytes") if p.row else None} for p in probes],
        "paper_512": None,
    }
    if paper is not None and paper.row is not None:
        row = paper.row
        mem = row["peak_device_bytes"] if row["device"] == "cuda" else row["peak_rss_bytes"]
        result["paper_512"] = {
            "fits": paper.fits, "median_s": row["median_s"], "peak_bytes": mem,
            "time_fraction_of_budget": row["median_s"] / time_budget_s if row["median_s"] else None,
            "mem_fraction_of_budget": mem / mem_budget if mem else None,
            "limit_pixels_over_512": (limit * limit) / (PAPER_RES * PAPER_RES) if limit else None,
        }
    return result


# ---------------------------------------------------------------- documents and files

def document(machine: dict, rows: list[dict], *, limits: list[dict] | None = None, command: str = "") -> dict:
    """The JSON document: {"machine": ..., "rows": [...]} plus the fits, limits and notes."""
    return {
        "machine": {**machine, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command},
        "rows": [{k: row.get(k) for k in COLUMNS} for row in rows],
        "fits": fit_slopes(rows + [p for lim in (limits or []) for p in _limit_points(lim)]),
        "limits": limits or [],
        "notes": {
            "weights": "random (seeded); timing does not depend on weight values",
            "speedup": SPEEDUP_NOTE,
            "peak_fraction": "achieved GFLOP/s over the device's measured fp32 conv peak (bf16/fp16 may exceed 1)",
            "gflop_per_iter": "convolutions forward + input gradient + Gram terms, from the layer table",
            "tile": ("tiled rows (engine/tiled.py: exact, two passes over tiles with a halo) count the untiled "
                     "step's GFLOP, the useful work, so their GFLOP/s and speed-up show the tiling overhead; "
                     "their targets are random of the right shapes (the time does not depend on their values)"),
        },
    }


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(row.get(k), sort_keys=True) if isinstance(row.get(k), dict)
                             else ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})


def write_plot(path: Path, doc: dict) -> None:
    """Time and memory per iteration against megapixels, per series, log-log; the
    FLOP floor (GFLOP / measured fp32 peak) dashed; 512 px marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from styleengine.engine.losses import LossConfig
    from styleengine.model.vgg import gflop

    machine = doc["machine"]
    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    for lim in doc.get("limits", []):  # the probes add points between the table's sizes
        rows += [p for p in _limit_points(lim)]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(series_name(r), []).append(r)
    for name, rs in series.items():
        rs = sorted({(r["height"], r["width"]): r for r in rs}.values(), key=lambda r: r["height"] * r["width"])
        mp = [r["height"] * r["width"] / 1e6 for r in rs]
        ax_t.plot(mp, [r["median_s"] for r in rs], "o-", label=name)
        mem = [(r["peak_device_bytes"] if r["device"] == "cuda" else r["peak_rss_bytes"]) or float("nan") for r in rs]
        ax_m.plot(mp, [m / 2**30 for m in mem], "o-", label=name)
    if rows:
        loss = LossConfig()
        sizes = sorted({r["height"] for r in rows} | {PAPER_RES})
        grid = sorted({max(QUANTUM, round(sizes[0] * (sizes[-1] / sizes[0]) ** (i / 40) / QUANTUM) * QUANTUM)
                       for i in range(41)})
        model = rows[0].get("model") or DEFAULT_MODEL
        for device, peak in (("cpu", machine.get("fp32_peak_gflops")),
                             ("cuda", (machine.get("gpus") or [{}])[0].get("fp32_peak_gflops"))):
            if peak and any(r["device"] == device for r in rows):
                floor = [gflop(model, list(loss.content_layers), list(loss.style_layers), int(s), int(s))["total"]
                         / peak for s in grid]
                ax_t.plot([s * s / 1e6 for s in grid], floor, "k--", lw=1,
                          label=f"FLOP floor {device} ({peak:.0f} GFLOP/s fp32 peak)")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(PAPER_RES**2 / 1e6, color="grey", ls=":", lw=1)
        ax.text(PAPER_RES**2 / 1e6, 0.02, " 512 px (paper)", transform=ax.get_xaxis_transform(), fontsize=8,
                color="grey")
        ax.set_xlabel("megapixels")
        ax.grid(True, which="both", alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax_t.set_ylabel("seconds per iteration (median)")
    ax_m.set_ylabel("peak memory, GiB (host RSS; GPU: device)")
    ax_t.legend(fontsize=7)
    ax_m.legend(fontsize=7)
    fig.suptitle(f"styleengine step: {machine.get('cpu', '')}"
                 + (f" / {machine['gpus'][0]['name']}" if machine.get("gpus") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _limit_points(limit: dict) -> list[dict]:
    """Probe results as plot points (ok probes that ran to completion)."""
    base = {k: limit.get(k) for k in ("backend", "provider", "device", "precision", "model", "tile")}
    return [{**base, "height": p["res"], "width": p["res"], "median_s": p["median_s"],
             "peak_rss_bytes": p["peak_rss_bytes"], "peak_device_bytes": p["peak_device_bytes"],
             "base_rss_bytes": p.get("base_rss_bytes"), "status": "ok"}
            for p in limit["probes"] if p["median_s"] is not None]


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def table_rows(rows: list[dict], *, reasons: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the console table and the markdown report."""
    header = ["configuration", "size", "status", "s/iter", "p10-p90 s", "GFLOP/it", "GFLOP/s", "of peak",
              "RSS GiB", "device GiB", "speed-up"] + (["reason"] if reasons else [])
    cells = []
    for r in rows:
        ok = r["status"] == "ok"
        cells.append([
            series_name(r), f"{r['height']}x{r['width']}", r["status"], _fmt(r["median_s"], ".2f"),
            f"{r['p10_s']:.2f}-{r['p90_s']:.2f}" if ok else "-", _fmt(r["gflop_per_iter"], ".0f"),
            _fmt(r["gflops"], ".1f"), f"{r['peak_fraction']:.0%}" if r["peak_fraction"] is not None else "-",
            gib(r["peak_rss_bytes"]), gib(r["peak_device_bytes"]),
            f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-",
        ] + ([r["reason"] or ""] if reasons else []))
    return header, cells


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in esc])


def limit_sentence(lim: dict) -> str:
    """One line per searched configuration: the limit, the figures there, and 512 px."""
    name = series_name(lim)
    if lim["limit_px"] is None:
        return f"{name}: not even {MIN_RESOLUTION} px fits ({lim['limited_by']})"
    row = lim["at_limit"] or {}
    mem = row.get("peak_device_bytes") if lim["device"] == "cuda" else row.get("peak_rss_bytes")
    text = (f"{name}: limit {lim['limit_px']} px ({lim['limit_px'] ** 2 / 1e6:.2f} MP) at "
            f"{_fmt(row.get('median_s'), '.1f')} s/iteration and {gib(mem)} GiB "
            f"(budgets {lim['time_budget_s']:g} s, {gib(lim['mem_budget_bytes'])} GiB; next size up: "
            f"{lim['limited_by']})")
    paper = lim.get("paper_512")
    if paper and paper["median_s"] is not None:
        text += (f"; the paper's 512 px takes {paper['median_s']:.2f} s and {gib(paper['peak_bytes'])} GiB "
                 f"({paper['time_fraction_of_budget']:.0%} of the time budget), and the limit holds "
                 f"{paper['limit_pixels_over_512'] or 0:.1f}x its pixels")
    return text


def write_report(path: Path, doc: dict, plot_path: Path | None = None) -> None:
    m = doc["machine"]
    lines = [f"# styleengine bench", "",
             f"- machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs, "
             f"{gib(m.get('memory_total_bytes'))} GiB), torch threads {m.get('torch_threads')}, "
             f"load average {_fmt(m.get('load_avg_1m'), '.2f')} at start",
             f"- GPUs: {', '.join(g['name'] for g in m.get('gpus', [])) or 'none'}",
             f"- fp32 peak (measured): {_fmt(m.get('fp32_peak_gflops'), '.1f')} GFLOP/s ({m.get('fp32_peak_method')})",
             f"- versions: {json.dumps(m.get('versions'), sort_keys=True)}",
             f"- command: `{m.get('command')}`", f"- weights: {doc['notes']['weights']}", ""]
    if doc["rows"]:
        lines += ["## Per-iteration figures", "", markdown_table(*table_rows(doc["rows"])), "",
                  f"speed-up: {doc['notes']['speedup']}.", ""]
    if doc.get("fits"):
        lines += ["## Scaling with the pixel count (log-log slopes; 1 = linear)", "",
                  markdown_table(["series", "points", "sizes", "time slope", "memory slope", "memory slope (net)"],
                                 [[f["series"], str(f["points"]), f"{f['min_px']}-{f['max_px']}",
                                   _fmt(f["time_slope"], ".2f"), _fmt(f["mem_slope"], ".2f"),
                                   _fmt(f["mem_slope_net"], ".2f")] for f in doc["fits"]]), ""]
    if doc.get("limits"):
        lines += ["## Resolution limit", ""] + [f"- {limit_sentence(lim)}" for lim in doc["limits"]] + [""]
    if plot_path is not None:
        import os

        rel = Path(os.path.relpath(Path(plot_path).resolve(), Path(path).resolve().parent))
        lines += ["## Plot", "", f"![time and memory against megapixels]({rel.as_posix()})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
