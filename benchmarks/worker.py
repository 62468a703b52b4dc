"""One benchmark job in its own process.

    python -m styleengine.benchmarks.worker '<json spec>'

prints exactly one JSON object on the last line of stdout; everything any
library writes to stdout goes to stderr instead. Kinds of job:

- "step": build random weights, the step and its targets at one size, run
  `warmup` untimed and `iters` timed iterations (device synchronised around
  each), report raw times, peak host RSS and the peak device memory of the
  timed iterations (counted from after the warm-up: cuDNN's autotuning takes
  workspaces there that a run does not keep). Backend "auto" is what
  `styleengine run` runs without flags, resolved by engine/autotune.choose;
  the job reports what it resolved to and why.
- "prepare": construct the step once and close it (an exporting backend
  builds and caches its graph here, and `auto` runs its trial, so the timed
  job's peak RSS excludes both).
- "machine": what this machine has (CPU, memory, CUDA, ORT providers,
  TensorRT) and its measured fp32 peak, cached per machine (machine.py).

A watchdog thread enforces the memory budget (host RSS) and the time budget
(per iteration) from inside, so an over-budget probe ends as a row instead
of swapping the machine or running for minutes.

Test-only: STYLEENGINE_BENCH_FAULT=error|oom|kill|hang makes a "step" job
fail in that way, to exercise the harness's failure rows.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from typing import Callable

from styleengine.benchmarks.config import RESOLVED_KEYS
from styleengine.benchmarks.machine import cpu_name, run_machine, synchronize

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


class DevicePeak:
    """Peak device memory from `reset()` (called after the warm-up) to `read()`: torch's allocator counter, and
    for runtimes torch cannot count (ORT, TensorRT: `runtime`) this process's memory as NVML sees it."""

    def __init__(self, device, runtime: bool):
        self.device, self.runtime, self.nvml = device, runtime, None
        if device.type == "cuda" and runtime:
            try:
                self.nvml = NvmlPeak(device.index or 0)
                self.nvml.start()
            except Exception:  # noqa: BLE001 - NVML is optional; the row then has no device figure
                self.nvml = None

    def reset(self) -> None:
        import torch

        if self.device.type != "cuda":
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        if self.nvml is not None:
            self.nvml.peak = 0
            self.nvml.sample()

    def read(self) -> int | None:
        """Bytes, or None off CUDA (and for a runtime without NVML)."""
        import torch

        if self.device.type != "cuda":
            return None
        torch_peak = int(torch.cuda.max_memory_allocated(self.device))
        if not self.runtime:
            return torch_peak
        if self.nvml is None:
            return None
        self.nvml.sample()  # torch's counter sees only the bound tensors, not the runtime's memory
        self.nvml.stopped.set()
        return max(torch_peak, self.nvml.peak) or None


def time_iterations(step, image, *, warmup: int, iters: int, dog, sync, after_warmup) -> list[float]:
    """`warmup` untimed then `iters` timed calls of `step` (synchronised around each); `after_warmup()` runs
    between them (the device peak is reset there)."""
    for i in range(warmup):
        dog.start_phase(f"warm-up iteration {i + 1}", WARMUP_ALLOWANCE)
        step(image)
        sync()
        dog.end_phase()
    after_warmup()
    times = []
    for i in range(iters):
        sync()
        dog.start_phase(f"iteration {i + 1}")
        t0 = time.perf_counter()
        step(image)
        sync()
        times.append(time.perf_counter() - t0)
        dog.end_phase()
    return times


def auto_settings(model: str, pooling: str, size: int):
    """The `auto` row's settings: what `styleengine run --size SIZE` gets without --backend, --device,
    --provider, --precision or --conv (each at its default, auto)."""
    from styleengine.engine.stylise import Settings

    return Settings(model=model, pooling=pooling, weights="random", size=size)


def build(spec: dict, weights, loss):
    """(step, what an auto row resolved to or None): the step `spec` asks for, as `styleengine run` builds it."""
    from styleengine.engine.backends import make_step

    if spec["backend"] != "auto":
        step = make_step(spec["backend"], weights, loss, pooling=spec["pooling"], device=spec["device"],
                         precision=spec["precision"], provider=spec.get("provider") or "cpu",
                         conv=spec.get("conv") or "auto")
        return step, None
    from styleengine.engine.autotune import choose
    from styleengine.engine.stylise import build_step

    settings = auto_settings(spec["model"], spec["pooling"], max(int(spec["height"]), int(spec["width"])))
    settings.validate()
    choice = choose(settings, int(spec["height"]), int(spec["width"]))
    chosen = choice.settings
    step = build_step(chosen, weights, loss)
    graph = chosen.backend != "torch"
    resolved = {"backend": chosen.backend, "provider": chosen.provider if graph else None,
                "device": step.device.type, "precision": chosen.precision, "conv": step.conv}
    assert tuple(resolved) == RESOLVED_KEYS
    return step, {"resolved": resolved, "why": choice.why}


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

    from styleengine.engine.losses import LossConfig
    from styleengine.engine.steps import make_targets
    from styleengine.model.weights import load_weights

    base = {"threads": torch.get_num_threads(), "device_name": None, "times_s": [], "tiles": None,
            "peak_rss_bytes": None, "base_rss_bytes": None, "peak_device_bytes": None, "resolved": None,
            "why": None}
    dog = Watchdog(emit, base, spec.get("mem_limit_bytes"), spec.get("time_limit_s"))
    dog.start()
    h, w = int(spec["height"]), int(spec["width"])

    torch.manual_seed(0)
    weights = load_weights(spec["model"], "random")
    loss = LossConfig()
    if spec["backend"] == "naive":
        return _run_naive(spec, weights, base, dog)
    step, auto = build(spec, weights, loss)
    base.update(auto or {})
    # what `styleengine run` keeps: the step, not the loaded weights (an ORT step has them in its session)
    del weights
    backend = auto["resolved"]["backend"] if auto else spec["backend"]
    if backend in ("torch", "ort"):
        base["conv"] = step.conv  # what "auto" resolved to
    tile = spec.get("tile")
    if tile:
        from styleengine.engine.tiled import TiledStep, tiles

        step = TiledStep(step, loss, spec["model"], tile=int(tile))
        base["tiles"] = len(list(tiles(h, w, step.tile, step.halo)))
    device = step.device
    cuda = device.type == "cuda"
    base["device_name"] = torch.cuda.get_device_name(device) if cuda else cpu_name()
    peak = DevicePeak(device, runtime=backend != "torch")  # torch's allocator cannot see ORT's or TensorRT's
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
                                           lambda: synchronize(device), after_warmup=peak.reset)
    else:
        base["times_s"] = time_iterations(step, image, warmup=int(spec["warmup"]), iters=int(spec["iters"]),
                                          dog=dog, sync=lambda: synchronize(device), after_warmup=peak.reset)
    base["peak_device_bytes"] = peak.read()
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
    peak = DevicePeak(device, runtime=False)
    base["base_rss_bytes"] = current_rss_bytes()
    gen = torch.Generator().manual_seed(0)
    content, image = (torch.rand(1, 3, h, w, generator=gen) for _ in range(2))
    # the style at the content's size: the tutorial's model runs the style through its content-loss modules
    # while building (it needs images of one size); its values do not matter for timing
    style = torch.rand(1, 3, h, w, generator=gen)
    base["times_s"] = time_naive(weights, image, content, style, loop=int(spec.get("loop") or 0),
                                 iters=int(spec["iters"]), warmup=int(spec["warmup"]), pooling=spec["pooling"],
                                 device=spec["device"], dog=dog, sync=lambda: synchronize(device),
                                 after_warmup=peak.reset)
    base["peak_device_bytes"] = peak.read()
    dog.stopped.set()
    base["peak_rss_bytes"] = peak_rss_bytes()
    return {**base, "status": "ok", "reason": ""}


def run_prepare(spec: dict) -> dict:
    from styleengine.engine.losses import LossConfig
    from styleengine.model.weights import load_weights

    weights = load_weights(spec["model"], "random")
    step, _ = build(spec, weights, LossConfig())
    step.close()
    return {"status": "ok", "reason": ""}


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
