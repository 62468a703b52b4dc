"""Checks and timings that need a GPU, for a lent machine (benchmarks/gpu_check.sh runs them).

    python -m styleengine.benchmarks.gpu_check correct|loop|step|profile  (prints one JSON object)

- correct: on CUDA the loop with its CUDA graph gives the losses of the eager loop; the ORT CUDA step
  (own stream, no host sync) gives torch's losses;
- loop: the whole loop at 384x512 (VGG19, random weights, avg pooling, noise init, 100-pair history) as
  the issue measures it: (time of a 520-iteration run - time of a 20-iteration run) / 500, so set-up
  and the first, cheaper iterations cancel; naive vs torch fp32/bf16 vs ORT CUDA fp32/fp16, two rounds
  interleaved; and each step alone (median of 20) for loop/step;
- step: the step alone at 512 and 2048 in every precision (median of 10);
- profile: where a step's time goes at 512 and 2048, per kernel (torch's profiler, which sees ORT's
  kernels too: torch fp32/bf16, ORT CUDA fp32/fp16) and per ONNX op (ORT's profiler: host times and
  the provider of each op), for the step targets (<= 2 ms at 512, <= 20 ms at 2048) still missed
  when last measured.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import torch

from styleengine.engine.backends import make_step
from styleengine.engine.loop import optimise
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import make_targets
from styleengine.model.weights import load_weights

LOSS = LossConfig()
H, W = 384, 512


def images(h: int, w: int):
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, h, w, generator=gen) for _ in range(3)]  # content, style, noise init


def ready_step(weights, backend: str, precision: str, h: int, w: int, loss: LossConfig = LOSS,
               device: str = "cuda"):
    step = make_step(backend, weights, loss, device=device, precision=precision, provider=device)
    content, style, init = images(h, w)
    step.set_targets(make_targets(step, loss, content, [style]))
    return step, init


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_run(fn) -> float:
    synchronize()
    t0 = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t0


def correct(weights) -> dict:
    out: dict[str, object] = {}
    step, init = ready_step(weights, "torch", "fp32", H, W)
    graphed = [r.loss for r in optimise(step, init, iterations=30).records]
    step.capturable = False
    eager = [r.loss for r in optimise(step, init, iterations=30).records]
    out["torch_graph_vs_eager_max_rel"] = max(abs(a - b) / abs(b) for a, b in zip(graphed, eager))
    out["torch_losses"] = eager[:8]
    for precision in ("fp32", "bf16"):  # with TV (its closed-form autograd Function inside the graph)
        step, init = ready_step(weights, "torch", precision, H, W, LossConfig(tv_weight=10.0))
        with_graph = [r.loss for r in optimise(step, init, iterations=30).records]
        step.capturable = False
        without = [r.loss for r in optimise(step, init, iterations=30).records]
        out[f"torch_{precision}_tv_graph_vs_eager_max_rel"] = max(abs(a - b) / abs(b)
                                                                  for a, b in zip(with_graph, without))
    try:
        ort_step, _ = ready_step(weights, "ort", "fp32", H, W)
        ort = [r.loss for r in optimise(ort_step, init, iterations=8).records]
        out["ort_cuda_vs_torch_max_rel_first8"] = max(abs(a - b) / abs(b) for a, b in zip(ort, eager[:8]))
        out["ort_losses"] = ort
    except Exception as e:  # noqa: BLE001 - reported, the check goes on
        out["ort_error"] = f"{type(e).__name__}: {e}"[:400]
    return out


def loop(weights) -> dict:
    from styleengine.benchmarks import naive

    content, style, init = images(H, W)
    short, long = 20, 520
    methods = {"naive": None, "torch fp32": ("torch", "fp32"), "torch bf16": ("torch", "bf16"),
               "ort cuda fp32": ("ort", "fp32"), "ort cuda fp16": ("ort", "fp16")}
    steps, errors = {}, {}
    for name, kind in methods.items():
        if kind is None:
            continue
        try:
            steps[name] = ready_step(weights, *kind, H, W)[0]
            optimise(steps[name], init, iterations=8)  # warm-up: cuDNN autotuning, capture
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {e}"[:400]

    def run(name: str, n: int) -> float:
        if name == "naive":
            return timed_run(lambda: naive.run(weights, init, content, style, iterations=n, device="cuda"))
        return timed_run(lambda: optimise(steps[name], init, iterations=n, history=100))

    run("naive", short)
    per_iter: dict[str, list[float]] = {}
    for _ in range(2):  # interleaved rounds
        for name in ["naive"] + list(steps):
            per_iter.setdefault(name, []).append((run(name, long) - run(name, short)) / (long - short))
    step_ms = {}
    x = init.cuda()
    for name, step in steps.items():
        times = []
        for _ in range(23):
            times.append(timed_run(lambda: step(x)))
        step_ms[name] = 1e3 * statistics.median(times[3:])
    loop_ms = {k: 1e3 * min(v) for k, v in per_iter.items()}
    return {"size": [H, W], "loop_ms_per_iter": loop_ms, "loop_rounds_ms": {k: [1e3 * t for t in v]
                                                                             for k, v in per_iter.items()},
            "step_ms": step_ms, "loop_over_step": {k: loop_ms[k] / step_ms[k] for k in step_ms},
            "speedup_vs_naive": {k: loop_ms["naive"] / v for k, v in loop_ms.items()}, "errors": errors}


def step(weights) -> dict:
    out, errors = {}, {}
    for side in (512, 2048):
        for backend, precision in (("torch", "fp32"), ("torch", "bf16"), ("ort", "fp32"), ("ort", "fp16"),
                                   ("ort", "bf16")):
            name = f"{backend} {precision} {side}"
            try:
                s, init = ready_step(weights, backend, precision, side, side)
                x = init.cuda()
                times = [timed_run(lambda: s(x)) for _ in range(13)]
                out[name] = 1e3 * statistics.median(times[3:])
                s.close()
            except Exception as e:  # noqa: BLE001
                errors[name] = f"{type(e).__name__}: {e}"[:400]
            torch.cuda.empty_cache()
    return {"step_ms": out, "errors": errors}


def _kind(name: str) -> str:
    """A kernel's (or ONNX op's) family, from its name."""
    low = name.lower()
    for kind, marks in (("convolution", ("conv", "cudnn", "implicit", "winograd", "fprop", "dgrad")),
                        ("matmul", ("gemm", "matmul", "cutlass", "cublas", "sm90_", "bmm", "mm")),
                        ("copy", ("memcpy", "copy", "memset", "cast", "to_copy")),
                        ("reduction", ("reduce", "sum", "norm")),
                        ("pool", ("pool",))):
        if any(m in low for m in marks):
            return kind
    return "elementwise/other"


def _summary(times: dict[str, float], counts: dict[str, int], steps: int, top: int) -> dict:
    """Per-step milliseconds and calls by name (the `top` largest) and by family."""
    by_kind: dict[str, float] = defaultdict(float)
    for name, t in times.items():
        by_kind[_kind(name)] += t / steps
    ranked = sorted(times, key=lambda name: times[name], reverse=True)[:top]
    return {"total_ms": sum(times.values()) / steps,
            "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "top": [{"name": n[:160], "ms": times[n] / steps, "calls": counts[n] / steps} for n in ranked]}


def _profile_torch(step, x, steps: int, top: int, device: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x)
        synchronize()
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in prof.key_averages():
        # on CUDA each kernel's own device time; on the CPU (the test) each op's own time
        t = e.self_device_time_total if device == "cuda" else e.self_cpu_time_total
        if t > 0 and (device != "cuda" or e.device_type != torch.autograd.DeviceType.CPU):
            times[e.key] += t / 1e3
            counts[e.key] += e.count
    return _summary(times, counts, steps, top)


def _profile_ort(weights, precision: str, side: int, steps: int, top: int, device: str) -> dict:
    """ORT's own profiler (node times, its JSON trace), switched on in the step's session options."""
    from styleengine.engine import ort_step

    folder = tempfile.mkdtemp(prefix="ort-profile-")
    plain = ort_step.session_options

    def profiling(*args, **kwargs):
        so = plain(*args, **kwargs)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(folder, "step")
        return so

    ort_step.session_options = profiling
    try:
        s, init = ready_step(weights, "ort", precision, side, side, device=device)
        x = init.to(device)
        for _ in range(3):
            s(x)
        synchronize()
        # on CUDA the kernels too: torch's profiler (CUPTI) sees every kernel of the process, ORT's
        # included, where ORT's node times are the host's (its Run does not wait for the stream)
        kernels = _profile_torch(s, x, steps, top, device) if device == "cuda" else None
        if kernels is None:
            for _ in range(steps):
                s(x)
            synchronize()
        with open(s.sessions.get("step").end_profiling()) as f:
            trace = json.load(f)
        s.close()
    finally:
        ort_step.session_options = plain
        shutil.rmtree(folder, ignore_errors=True)  # every session's trace (the features' too): read or not needed
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    # the last `steps` runs (the warm-up ones and those of the targets' features before them)
    start = runs[-steps]["ts"] if len(runs) >= steps else 0
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            args = e.get("args", {})
            key = f"{args.get('op_name', '?')} [{args.get('provider', '?')}]"
            times[key] += e["dur"] / 1e3
            counts[key] += 1
    out = _summary(times, counts, steps, top)  # per ONNX op and provider (a CPU one in a CUDA session: copies)
    out["run_ms"] = statistics.median(r["dur"] / 1e3 for r in runs[-steps:]) if runs else None
    if kernels is not None:
        out["kernels"] = kernels
    return out


def profile(weights, device: str = "cuda", sides=(512, 2048), steps: int = 3, top: int = 20) -> dict:
    out, errors = {}, {}
    for side in sides:
        for backend, precision in (("torch", "fp32"), ("torch", "bf16"), ("ort", "fp32"), ("ort", "fp16")):
            name = f"{backend} {precision} {side}"
            try:
                if backend == "torch":
                    s, init = ready_step(weights, backend, precision, side, side, device=device)
                    x = init.to(device)
                    for _ in range(3):
                        s(x)
                    out[name] = _profile_torch(s, x, steps, top, device)
                    s.close()
                else:
                    out[name] = _profile_ort(weights, precision, side, steps, top, device)
            except Exception as e:  # noqa: BLE001 - reported, the check goes on
                errors[name] = f"{type(e).__name__}: {e}"[:400]
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"profile": out, "errors": errors}


def main() -> None:
    mode = sys.argv[1]
    torch.manual_seed(0)
    weights = load_weights("vgg19", "random")
    result = {"correct": correct, "loop": loop, "step": step, "profile": profile}[mode](weights)
    result["device"] = torch.cuda.get_device_name(0)
    result["torch"] = torch.__version__
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
