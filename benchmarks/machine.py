"""What this machine has: CPU name and vector ISA, memory, CUDA devices, ONNX Runtime
providers, TensorRT, and the measured fp32 peak per device (cached per machine in the
cache folder). Run inside a worker process (`{"kind": "machine"}`), never in the CLI's.
"""
from __future__ import annotations

import json
import platform
import time
from typing import Any

from styleengine.engine.machine import cpu_isa, cpu_name  # noqa: F401  (re-exported: bench rows name the CPU)
from styleengine.paths import atomic_write, read_regular


def synchronize(device: Any) -> None:
    """Wait for the device's queued work (CUDA); timing GPU work needs it around every timed region."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


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
            synchronize(x.device)
            t0 = time.perf_counter()
            F.conv2d(x, k, padding=1)
            synchronize(x.device)
            best = min(best, time.perf_counter() - t0)
    return flop / best / 1e9


def cached_fp32_peak(device: str, key: str, refresh: bool = False) -> tuple[float, bool]:
    """(GFLOP/s, from cache?) keyed by device model, thread count and torch version."""
    path = _peak_cache_path()
    try:
        cache = json.loads(read_regular(path))  # a file of ours: never through a link, nor a FIFO's wait
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):  # damaged: measured again, and written whole
        cache = {}
    if not refresh and isinstance(cache.get(key), (int, float)):
        return float(cache[key]), True
    value = measure_fp32_peak(device)
    cache[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cache, indent=1, sort_keys=True).encode(), through=False)
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
