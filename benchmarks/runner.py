"""Running bench configurations: one `python -m styleengine.benchmarks.worker`
process each (JSON spec in, one JSON row out), so its peak memory is its own and
an out-of-memory, a crash or a time-out is a row with a status and a reason
(`ok`, `oom`, `error`, `timeout`, `unavailable`), never a missing line.

Computes and returns; never prints. No torch at module level.
"""
from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Callable

from styleengine.benchmarks.config import (DEFAULT_ITERS, DEFAULT_MEM_FRACTION, DEFAULT_ROUNDS, DEFAULT_TIMEOUT_S,
                                           DEFAULT_WARMUP, STATUSES, Config, split_iters)
from styleengine.benchmarks.interleaved import paired_ratios, take_turns
from styleengine.choices import PROVIDER_NAMES
from styleengine.errors import UserError

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
        wanted = PROVIDER_NAMES[config.provider or "cpu"]
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


def peak_gflops(config: Config, machine: dict, device: str | None = None) -> float | None:
    """The measured fp32 peak of the device the row ran on (`device`: an auto row's resolved one)."""
    if (device or config.device) == "cuda":
        return machine["gpus"][0]["fp32_peak_gflops"] if machine.get("gpus") else None
    return machine.get("fp32_peak_gflops")


def gflop_per_iter(config: Config) -> float:
    """GFLOP of one loss-and-gradient iteration from the layer table (the default loss's layers). torch-free: in
    bench's own process, as a row ends, torch's import held a signal for seconds."""
    from styleengine.engine.loss_config import LossConfig
    from styleengine.model.vgg import gflop

    loss = LossConfig()
    return gflop(config.model, list(loss.content_layers), list(loss.style_layers), config.height, config.width)["total"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _failure(outcomes: list[Outcome], rounds: int) -> tuple[str, str] | None:
    """(status, reason) of the first round that did not give timings, or None when every round did."""
    for i, out in enumerate(outcomes):
        if out.status != "ok" or not out.data.get("times_s"):
            status, reason = (out.status, out.reason) if out.status != "ok" else (
                "error", "the worker returned no timings")
            return status, (f"round {i + 1} of {rounds}: {reason}" if rounds > 1 else reason)
    return None


def make_row(config: Config, outcomes: Outcome | list[Outcome], machine: dict, iters: int, warmup: int,
             rounds: int | None = None) -> dict:
    """One row with every column from its rounds (one Outcome each, in order, of `rounds` planned); measured
    figures only where every round gave them (a failed round makes the row failed, and the rounds after it
    do not run; the raw times measured before it are kept in times_s).

    median_s, p10_s, p90_s: over every timed iteration of every round; round_s: each round's median (their
    range is the spread between rounds); peaks: the highest round's."""
    outcomes = [outcomes] if isinstance(outcomes, Outcome) else outcomes
    per_round = [[float(t) for t in out.data.get("times_s") or []] for out in outcomes]
    times = [t for ts in per_round for t in ts]
    failed = _failure(outcomes, rounds or len(outcomes))
    ok = failed is None
    ran = [out.data for out in outcomes if out.data.get("times_s")]
    top = max(outcomes, key=lambda out: out.data.get("peak_rss_bytes") or 0).data  # the round of the highest peak
    d = ran[0] if ran else top
    resolved = d.get("resolved")  # an auto row: what the worker resolved it to
    gf = gflop_per_iter(config)
    median = statistics.median(times) if ok else None
    device = (resolved or {}).get("device") or config.device
    peak = peak_gflops(config, machine, device)
    gpus = machine.get("gpus") or []
    devices: list[int] = [out.data["peak_device_bytes"] for out in outcomes if out.data.get("peak_device_bytes")]
    reason = failed[1] if failed else ""
    if resolved and any(r.get("resolved") != resolved for r in ran):
        reason = "auto resolved differently between rounds: " + "; ".join(
            str(r.get("resolved")) for r in ran)  # status stays ok: every round ran, the note says what
    row = {
        "backend": config.backend, "provider": (resolved or {}).get("provider", config.provider),
        "device": device, "precision": (resolved or {}).get("precision") or config.precision,
        "threads": d.get("threads", machine.get("torch_threads")),
        "height": config.height, "width": config.width,
        "status": failed[0] if failed else "ok", "reason": reason,
        "median_s": median, "p10_s": percentile(times, 10) if ok else None,
        "p90_s": percentile(times, 90) if ok else None,
        "peak_rss_bytes": top.get("peak_rss_bytes"), "peak_device_bytes": max(devices) if devices else None,
        "gflop_per_iter": gf, "gflops": gf / median if ok else None,
        "peak_fraction": gf / median / peak if ok and peak else None,
        "versions": machine.get("versions") or versions(),
        "device_name": d.get("device_name") or (gpus[0]["name"] if device == "cuda" and gpus
                                                 else machine.get("cpu")),
        "model": config.model, "pooling": config.pooling, "iters": len(times) if ok else iters,
        "warmup": warmup, "iters_per_s": 1.0 / median if ok else None,
        "base_rss_bytes": top.get("base_rss_bytes"), "speedup": None,
        "tile": config.tile, "tiles": d.get("tiles"), "loop": config.loop,
        "conv": d.get("conv") or resolved_conv(config),
        "rounds": len(outcomes), "round_s": [statistics.median(ts) for ts in per_round] if ok else None,
        "times_s": times, "resolved": resolved, "why": d.get("why"),
    }
    return row


def resolved_conv(config: Config) -> str | None:
    """What a row's --conv became: the worker reports it; a row whose worker failed first gets the same
    rule here (engine/capability.py), so it is not named apart from its series. An `auto` row that failed
    before resolving names none."""
    if config.backend == "auto":
        return None
    if config.conv != "auto":
        return config.conv
    from styleengine.engine import capability

    where = config.device if config.backend == "torch" else "cpu" if (config.provider or "cpu") == "cpu" else "cuda"
    try:
        return capability.rule(config.backend, where, config.precision, "auto")[1]
    except UserError:  # a row the table refuses: its failure says why
        return None


# ---------------------------------------------------------------- running

Progress = Callable[[str, Config, dict | None], None]  # (event, config, row or None)


@dataclass
class Runner:
    """Runs configurations, one worker process at a time (never two timed processes at once).

    run_all: the configurations of one size take turns, A B C A B C ..., `rounds` times, each turn a fresh
    process timing its share of `iters` after `warmup` untimed iterations: every row sees the machine's
    drift alike, and each process is alone on the machine (its peak memory its own, the device's memory
    all its own: a warm process beside it would keep its cached blocks and change cuDNN's choices).
    """

    machine: dict
    iters: int = DEFAULT_ITERS
    warmup: int = DEFAULT_WARMUP
    timeout_s: float = DEFAULT_TIMEOUT_S
    mem_budget_bytes: int | None = None  # None: 80% of available on the device
    time_limit_s: float | None = None  # per iteration, enforced inside the worker
    env: dict | None = None  # extra environment for the workers (tests)
    progress: Progress | None = None
    rounds: int = DEFAULT_ROUNDS  # run_all's; run() is one round
    _prepared: dict = field(default_factory=dict)

    def _env(self) -> dict | None:
        if not self.env:
            return None
        return {**os.environ, **self.env}

    def _prepare(self, config: Config) -> Outcome:
        """Build (and cache) an exporting backend's graph in its own process, once per kind; an `auto` row's
        once per size (its trial, and any graph it chose, then cost no timed process anything)."""
        key = config.key + ((config.height, config.width) if config.backend == "auto" else ())
        if key not in self._prepared:
            spec = {"kind": "prepare", **asdict(config)}
            self._prepared[key] = run_worker(spec, self.timeout_s, self._env())
        return self._prepared[key]

    def outcome(self, config: Config, *, iters: int, warmup: int, mem_budget_bytes: int | None,
                time_limit_s: float | None) -> Outcome:
        """One worker process timing `config` (after its graph is prepared), or why it could not."""
        reason = availability(config, self.machine)
        if reason:
            return Outcome("unavailable", reason)
        if config.backend not in ("naive", "torch"):
            prepared = self._prepare(config)
            if prepared.status != "ok":
                return Outcome(prepared.status, f"preparing the step: {prepared.reason}")
        budget = mem_budget_bytes or default_mem_budget(config, self.machine)
        spec = {"kind": "step", **asdict(config), "iters": iters, "warmup": warmup,
                # the watchdog can only see host memory; device memory is checked after
                "mem_limit_bytes": budget if config.device != "cuda" else None,
                "time_limit_s": time_limit_s}
        return run_worker(spec, self.timeout_s, self._env())

    def run(self, config: Config, *, iters: int | None = None, warmup: int | None = None,
            mem_budget_bytes: int | None = None, time_limit_s: float | None = None) -> dict:
        """One configuration's row from one process; each keyword left None takes the runner's own setting."""
        iters = self.iters if iters is None else iters
        warmup = self.warmup if warmup is None else warmup
        if self.progress:
            self.progress("start", config, None)
        outcome = self.outcome(config, iters=iters, warmup=warmup,
                               mem_budget_bytes=self.mem_budget_bytes if mem_budget_bytes is None else mem_budget_bytes,
                               time_limit_s=self.time_limit_s if time_limit_s is None else time_limit_s)
        row = make_row(config, outcome, self.machine, iters, warmup)
        if self.progress:
            self.progress("done", config, row)
        return row

    def run_all(self, configs: list[Config]) -> list[dict]:
        """Every configuration's row, in the order given; those of one size take turns for `rounds` rounds."""
        shares = split_iters(self.iters, self.rounds)
        rows: dict[Config, dict] = {}
        sizes = list(dict.fromkeys((c.height, c.width) for c in configs))
        for size in sizes:
            group = list(dict.fromkeys(c for c in configs if (c.height, c.width) == size))

            def turn(config: Config, r: int) -> Outcome:
                if self.progress:
                    self.progress("start", config, None)
                out = self.outcome(config, iters=shares[r], warmup=self.warmup,
                                   mem_budget_bytes=self.mem_budget_bytes, time_limit_s=self.time_limit_s)
                if self.progress:
                    self.progress("round", config, {**make_row(config, out, self.machine, shares[r], self.warmup),
                                                    "round": r + 1, "rounds": self.rounds})
                return out

            turns = take_turns(group, turn, self.rounds,
                               drop=lambda out: out.status != "ok" or not out.data.get("times_s"))
            for config in group:
                rows[config] = make_row(config, turns[config], self.machine, self.iters, self.warmup, self.rounds)
                if self.progress:
                    self.progress("done", config, rows[config])
        ordered = [rows[c] for c in configs]
        add_speedups(ordered)
        return ordered


def add_speedups(rows: list[dict]) -> None:
    """speedup = baseline time / row time, per size and kind (step or loop); the baseline is the first ok row
    of them in table order (the naive loop on cpu at fp32 when it ran). Rows that took the same turns
    (round_s of equal length) get the median of their rounds' ratios, so the load each round saw cancels."""
    def kind(row: dict) -> tuple:
        return (row["height"], row["width"], row["model"], row["pooling"], bool(row.get("loop")))

    baselines: dict[tuple, dict] = {}
    for row in rows:
        if row["status"] == "ok":
            baselines.setdefault(kind(row), row)
    for row in rows:
        base = baselines.get(kind(row))
        row["speedup"] = None
        if row["status"] != "ok" or not base:
            continue
        rounds, base_rounds = row.get("round_s") or [], base.get("round_s") or []
        if len(rounds) > 1 and len(rounds) == len(base_rounds):
            row["speedup"] = statistics.median(paired_ratios(base_rounds, rounds))
        else:
            row["speedup"] = base["median_s"] / row["median_s"]
