"""One benchmark job in its own process.

    python -m styleengine.benchmarks.worker '<json spec>'

prints exactly one JSON object on the last line of stdout; everything any
library writes to stdout goes to stderr instead. Kinds of job:

- "step": build random weights, the step and its targets at one size, run
  `warmup` untimed and `iters` timed iterations (device synchronised around
  each), report raw times, peak host RSS and peak device memory.
- "prepare": construct the step once and close it (an exporting backend
  builds and caches its graph here, so the timed job's peak RSS excludes it).
- "machine": what this machine has (CPU, memory, CUDA, ORT providers,
  TensorRT) and its measured fp32 peak, cached per machine.

A watchdog thread enforces the memory budget (host RSS) and the time budget
(per iteration) from inside, so an over-budget probe ends as a row instead
of swapping the machine or running for minutes.

Test-only: STYLEENGINE_BENCH_FAULT=error|oom|kill|hang makes a "step" job
fail in that way, to exercise the harness's failure rows.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import signal
import sys
import threading
import time
from typing import Any, Callable

FAULT_ENV = "STYLEENGINE_BENCH_FAULT"
WARMUP_ALLOWANCE = 3.0  # x the per-iteration time budget for the targets and warm-up runs
# modules whose absence means "not installed here", not a bug
_OPTIONAL_MODULES = ("styleengine.engine.ort_step", "styleengine.export.onnx_step", "onnxruntime", "tensorrt",
                     "pycuda", "cuda", "pynvml")
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate memory",
             "std::bad_alloc", "outofmemory")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def is_oom_message(text: str) -> bool:
    low = text.lower()
    return any(t in low for t in _OOM_TEXT)


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line reason) for an exception raised while building or stepping."""
    from styleengine.errors import ConfigError, UnavailableError

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, MemoryError):
        return "oom", f"MemoryError: {first}".rstrip(": ")
    if isinstance(exc, (UnavailableError, ConfigError)):  # not on this machine / not this backend's combination
        return "unavailable", first
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.startswith(_OPTIONAL_MODULES):
        return "unavailable", f"not installed: {first}"
    if is_oom_message(str(exc)):
        return "oom", f"{type(exc).__name__}: {first}"
    return "error", f"{type(exc).__name__}: {first}"


class Watchdog(threading.Thread):
    """Ends the process with a row when RSS passes `mem_limit` or a phase outlasts `time_limit`."""

    def __init__(self, emit: Callable[[dict], None], base: dict, mem_limit: int | None, time_limit: float | None):
        super().__init__(daemon=True)
        self.emit, self.base, self.mem_limit, self.time_limit = emit, base, mem_limit, time_limit
        self.phase: tuple[str, float, float] | None = None  # (what, started at, allowance)
        self.stopped = threading.Event()

    def start_phase(self, what: str, allowance: float = 1.0) -> None:
        """Time `what` against `allowance` x the time limit."""
        self.phase = (what, time.perf_counter(), allowance)

    def end_phase(self) -> None:
        self.phase = None

    def run(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self.stopped.wait(0.02):
            rss = proc.memory_info().rss
            if self.mem_limit and rss > self.mem_limit:
                self.emit({**self.base, "status": "oom", "peak_rss_bytes": max(rss, peak_rss_bytes()),
                           "reason": f"host RSS {rss / 2**30:.2f} GiB passed the memory budget "
                                     f"{self.mem_limit / 2**30:.2f} GiB"})
                os._exit(0)
            phase = self.phase
            if phase and self.time_limit and time.perf_counter() - phase[1] > self.time_limit * phase[2]:
                self.emit({**self.base, "status": "timeout", "peak_rss_bytes": peak_rss_bytes(),
                           "reason": f"{phase[0]} took over {self.time_limit * phase[2]:g} s "
                                     f"(time budget {self.time_limit:g} s per iteration)"})
                os._exit(0)


class NvmlPeak(threading.Thread):
    """Samples this process's GPU memory through NVML (for backends torch cannot count)."""

    def __init__(self, index: int = 0):
        super().__init__(daemon=True)
        import pynvml  # nvidia-ml-py; optional

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        self.peak, self.stopped = 0, threading.Event()

    def sample(self) -> None:
        for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if p.pid == os.getpid() and p.usedGpuMemory:
                self.peak = max(self.peak, int(p.usedGpuMemory))

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.sample()


def _synchronize(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest vector ISA the CPU reports (avx512 / avx2 / ...): two CPUs of one name can differ,
    and the fp32 peak and every time with them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return platform.machine()
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4_2")):
        if flag in flags:
            return isa + ("+bf16" if isa == "avx512" and "avx512_bf16" in flags else "")
    return platform.machine()


def random_targets(model: str, loss, height: int, width: int, gen):
    """Targets with the shapes a height x width image gives (content maps, symmetric PSD Grams), random values."""
    import torch

    from styleengine.engine.losses import Targets
    from styleengine.model import vgg

    layers = {layer.name: layer for layer in vgg.layer_table(model)}
    content = {n: torch.rand(1, layers[n].out_channels, height // layers[n].stride, width // layers[n].stride,
                             generator=gen) for n in loss.content_layers}
    grams = {}
    for n in loss.style_layers:
        a = torch.rand(layers[n].out_channels, layers[n].out_channels, generator=gen)
        grams[n] = a @ a.T
    return Targets(content, grams)


def run_step(spec: dict, emit: Callable[[dict], None]) -> dict:
    """Time one configuration; returns the raw measurements (the harness adds the rest)."""
    fault = os.environ.get(FAULT_ENV, "")  # test-only, checked before the slow imports
    if fault == "error":
        raise RuntimeError(f"injected failure ({FAULT_ENV}=error)")
    if fault == "oom":
        raise MemoryError(f"injected out-of-memory ({FAULT_ENV}=oom)")
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "hang":
        time.sleep(3600)
    import torch

    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig
    from styleengine.engine.steps import make_targets
    from styleengine.model.weights import load_weights

    base = {"threads": torch.get_num_threads(), "device_name": None, "times_s": [], "tiles": None,
            "peak_rss_bytes": None, "base_rss_bytes": None, "peak_device_bytes": None}
    dog = Watchdog(emit, base, spec.get("mem_limit_bytes"), spec.get("time_limit_s"))
    dog.start()
    h, w = int(spec["height"]), int(spec["width"])

    torch.manual_seed(0)
    weights = load_weights(spec["model"], "random")
    loss = LossConfig()
    if spec["backend"] == "naive":
        return _run_naive(spec, weights, base, dog)
    step = make_step(spec["backend"], weights, loss, pooling=spec["pooling"], device=spec["device"],
                     precision=spec["precision"], provider=spec.get("provider") or "cpu")
    tile = spec.get("tile")
    if tile:
        from styleengine.engine.tiled import TiledStep, tiles

        step = TiledStep(step, loss, spec["model"], tile=int(tile))
        base["tiles"] = len(list(tiles(h, w, step.tile, step.halo)))
    device = step.device
    cuda = device.type == "cuda"
    base["device_name"] = torch.cuda.get_device_name(device) if cuda else cpu_name()
    nvml = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        if spec["backend"] != "torch":  # torch's allocator cannot see ORT's or TensorRT's memory
            try:
                nvml = NvmlPeak(device.index or 0)
                nvml.start()
            except Exception:  # noqa: BLE001 - NVML is optional; the row then has no device figure
                nvml = None
    base["base_rss_bytes"] = current_rss_bytes()

    gen = torch.Generator().manual_seed(0)
    # the first run at a new size pays one-off costs (primitive creation, arena
    # growth): targets and warm-up get WARMUP_ALLOWANCE x the per-iteration budget
    dog.start_phase("computing the targets", WARMUP_ALLOWANCE)
    if tile:
        # random targets of the right shapes: timing does not depend on their values, and at 8192 px the
        # content target's own tiled forward would take a third of an iteration
        step.set_targets(random_targets(spec["model"], loss, h, w, gen))
    else:
        content = torch.rand(1, 3, h, w, generator=gen)
        # a small style image: timing does not depend on target values, and this
        # spares a full-size forward (its Grams are rescaled to h*w positions)
        style = torch.rand(1, 3, min(h, 64), min(w, 64), generator=gen)
        step.set_targets(make_targets(step, loss, content, [style], output_positions=h * w))
        del content, style
    dog.end_phase()
    image = torch.rand(1, 3, h, w, generator=gen).to(device)

    if spec.get("loop"):
        from styleengine.benchmarks.loops import time_engine_loop

        base["times_s"] = time_engine_loop(step, image, int(spec["loop"]), int(spec["warmup"]), dog,
                                           lambda: _synchronize(device))
    for i in range(int(spec["warmup"]) if not spec.get("loop") else 0):
        dog.start_phase(f"warm-up iteration {i + 1}", WARMUP_ALLOWANCE)
        step(image)
        _synchronize(device)
        dog.end_phase()
    for i in range(int(spec["iters"]) if not spec.get("loop") else 0):
        _synchronize(device)
        dog.start_phase(f"iteration {i + 1}")
        t0 = time.perf_counter()
        step(image)
        _synchronize(device)
        base["times_s"].append(time.perf_counter() - t0)
        dog.end_phase()

    if cuda:
        torch_peak = int(torch.cuda.max_memory_allocated(device))
        if spec["backend"] == "torch":
            base["peak_device_bytes"] = torch_peak
        elif nvml is not None:  # torch's counter sees only the bound tensors, not the runtime's memory
            nvml.sample()
            nvml.stopped.set()
            base["peak_device_bytes"] = max(torch_peak, nvml.peak) or None
    step.close()
    dog.stopped.set()
    base["peak_rss_bytes"] = peak_rss_bytes()
    return {**base, "status": "ok", "reason": ""}


def _run_naive(spec: dict, weights, base: dict, dog) -> dict:
    """The naive backend (benchmarks/naive.py): its own model and loop, the engine's random weights."""
    import torch

    from styleengine.benchmarks.loops import time_naive

    h, w = int(spec["height"]), int(spec["width"])
    device = torch.device(spec["device"])
    base["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base["base_rss_bytes"] = current_rss_bytes()
    gen = torch.Generator().manual_seed(0)
    content, image = (torch.rand(1, 3, h, w, generator=gen) for _ in range(2))
    # the style at the content's size: the tutorial's model runs the style through its content-loss modules
    # while building (it needs images of one size); its values do not matter for timing
    style = torch.rand(1, 3, h, w, generator=gen)
    base["times_s"] = time_naive(weights, image, content, style, loop=int(spec.get("loop") or 0),
                                 iters=int(spec["iters"]), warmup=int(spec["warmup"]), pooling=spec["pooling"],
                                 device=spec["device"], dog=dog, sync=lambda: _synchronize(device))
    if device.type == "cuda":
        base["peak_device_bytes"] = int(torch.cuda.max_memory_allocated(device))
    dog.stopped.set()
    base["peak_rss_bytes"] = peak_rss_bytes()
    return {**base, "status": "ok", "reason": ""}


def run_prepare(spec: dict) -> dict:
    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig
    from styleengine.model.weights import load_weights

    weights = load_weights(spec["model"], "random")
    step = make_step(spec["backend"], weights, LossConfig(), pooling=spec["pooling"], device=spec["device"],
                     precision=spec["precision"], provider=spec.get("provider") or "cpu")
    step.close()
    return {"status": "ok", "reason": ""}


def _peak_cache_path():
    from styleengine.export.cache import cache_root

    return cache_root() / "fp32_peak.json"


def measure_fp32_peak(device: str, reps: int = 10) -> float:
    """GFLOP/s of a large fp32 3x3 convolution (256 -> 256 channels), best of `reps`, all threads."""
    import torch
    import torch.nn.functional as F

    batch, channels, size = (1, 256, 128) if device == "cpu" else (32, 256, 128)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    k = torch.randn(channels, channels, 3, 3, generator=gen).to(device) * 0.01
    flop = 2.0 * 9 * channels * channels * size * size * batch
    best = float("inf")
    with torch.no_grad():
        F.conv2d(x, k, padding=1)  # warm-up: primitive creation, allocations
        for _ in range(reps):
            _synchronize(x.device)
            t0 = time.perf_counter()
            F.conv2d(x, k, padding=1)
            _synchronize(x.device)
            best = min(best, time.perf_counter() - t0)
    return flop / best / 1e9


def cached_fp32_peak(device: str, key: str, refresh: bool = False) -> tuple[float, bool]:
    """(GFLOP/s, from cache?) keyed by device model, thread count and torch version."""
    path = _peak_cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not refresh and isinstance(cache.get(key), (int, float)):
        return float(cache[key]), True
    value = measure_fp32_peak(device)
    cache[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement
    return value, False


def run_machine(spec: dict) -> dict:
    """This machine's hardware, runtimes and fp32 peak(s)."""
    import psutil
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_isa": cpu_isa(), "arch": platform.machine(), "os": platform.platform(),
        "python": platform.python_version(),
        "logical_cpus": psutil.cpu_count(logical=True), "physical_cpus": psutil.cpu_count(logical=False),
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "memory_available_bytes": int(psutil.virtual_memory().available),
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
        "cuda_reason": "" if torch.cuda.is_available() else
        f"torch {torch.__version__} sees no CUDA device (cuda build: {torch.version.cuda or 'no'})",
        "gpus": [], "ort_providers": [], "ort_reason": "", "tensorrt": False, "tensorrt_reason": "",
    }
    try:
        import onnxruntime

        info["ort_providers"] = list(onnxruntime.get_available_providers())
    except ImportError as e:
        info["ort_reason"] = f"onnxruntime not importable: {e}"
    try:
        import tensorrt  # noqa: F401

        info["tensorrt"] = True
    except ImportError as e:
        info["tensorrt_reason"] = f"tensorrt not importable: {e}"
    key = f"cpu|{info['cpu']}|{info['cpu_isa']}|threads={info['torch_threads']}|torch={torch.__version__}"
    info["fp32_peak_gflops"], info["fp32_peak_cached"] = cached_fp32_peak("cpu", key, spec.get("refresh_peak", False))
    info["fp32_peak_method"] = "best of 10 fp32 conv2d 256->256 3x3 at 128x128, torch, all threads"
    if info["cuda"]:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            name = torch.cuda.get_device_name(i)
            peak, cached = cached_fp32_peak(f"cuda:{i}", f"cuda|{name}|torch={torch.__version__}",
                                            spec.get("refresh_peak", False))
            info["gpus"].append({"index": i, "name": name, "memory_free_bytes": int(free),
                                 "memory_total_bytes": int(total), "fp32_peak_gflops": peak,
                                 "fp32_peak_cached": cached})
    return info


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the harness dies, so a killed bench leaves no worker behind."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    out = os.fdopen(os.dup(1), "w")  # the real stdout, for the one JSON line
    os.dup2(2, 1)  # C-level prints from libraries go to stderr
    sys.stdout = sys.stderr
    lock = threading.Lock()
    done = []

    def emit(row: dict) -> None:
        with lock:
            if done:
                return
            done.append(True)
            out.write("\n" + json.dumps(row) + "\n")
            out.flush()

    spec = json.loads(argv[0])
    kind = spec.get("kind", "step")
    try:
        if kind == "step":
            row = run_step(spec, emit)
        elif kind == "prepare":
            row = run_prepare(spec)
        elif kind == "machine":
            row = {"status": "ok", "reason": "", **run_machine(spec)}
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    except BaseException as e:  # noqa: BLE001 - every failure becomes a row with its status
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        status, reason = classify(e)
        import traceback

        traceback.print_exc(file=sys.stderr)
        row = {"status": status, "reason": reason, "peak_rss_bytes": peak_rss_bytes()}
    emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
