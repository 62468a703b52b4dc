"""This machine as the engine sees it: the CPU (name, vector ISA), what runs here (capability.Machine,
probed once a process) and a fingerprint of everything a measured choice depends on."""
from __future__ import annotations

import functools
import platform

from styleengine.engine.capability import Machine


@functools.cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(model name, flags) from /proc/cpuinfo; the platform's names where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), ()
    model = next((line.split(":", 1)[1].strip() for line in info if line.lower().startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    return model or platform.processor() or platform.machine(), tuple(flags)


def cpu_name() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> tuple[str, ...]:
    return _cpuinfo()[1]


def cpu_isa() -> str:
    """The widest vector ISA the CPU reports (avx512 / avx2 / ...) and its bf16 units: two CPUs of one name
    can differ, and every time with them."""
    flags = cpu_flags()
    if not flags:
        return platform.machine()
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4_2")):
        if flag in flags:
            extra = "+amx" if "amx_bf16" in flags else "+bf16" if isa == "avx512" and "avx512_bf16" in flags else ""
            return isa + extra
    return platform.machine()


def native_bf16() -> bool:
    """bf16 matrix instructions in the CPU (AMX or AVX-512 BF16): where a bf16 step can beat fp32."""
    return any(f in cpu_flags() for f in ("amx_bf16", "avx512_bf16"))


def _bf16_units() -> bool:
    """Machine.bf16: False only for an x86 CPU whose flags are known and name no bf16 units (elsewhere, or with
    no /proc/cpuinfo to read, bf16 is timed and the trial tells)."""
    x86 = platform.machine() in ("x86_64", "AMD64", "i686")
    return not x86 or not cpu_flags() or native_bf16()


def kernel_flags() -> list[str]:
    """The CPU flags that change which kernels run (and so what is fastest)."""
    return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))


def probe_light() -> Machine:
    """probe() without torch (a dry run): a GPU from the NVIDIA driver's own listing, NNPACK from the ISA it
    needs on x86 (AVX2), ONNX Runtime's providers as probe() counts them."""
    import importlib.util
    import os

    gpus = "/proc/driver/nvidia/gpus"
    cuda = os.path.isdir(gpus) and bool(os.listdir(gpus))
    providers: tuple[str, ...] = ("cpu",)
    if cuda and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        names = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
        providers += tuple(short for name, short in names.items() if name in ort.get_available_providers())
    x86 = platform.machine() in ("x86_64", "AMD64", "i686")
    return Machine(cuda=cuda, ort_providers=providers, nnpack=not x86 or "avx2" in cpu_flags(),
                   tensorrt=cuda and importlib.util.find_spec("tensorrt") is not None, bf16=_bf16_units())


@functools.cache
def probe() -> Machine:
    """What runs here: CUDA through torch, ONNX Runtime's usable providers, NNPACK, TensorRT. Once a process."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    providers: tuple[str, ...] = ("cpu",)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        names = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
        # onnxruntime-gpu lists its GPU providers whether or not a GPU is there
        providers += tuple(short for name, short in names.items() if cuda and name in ort.get_available_providers())
    return Machine(cuda=cuda, ort_providers=providers, nnpack=bool(torch.backends.nnpack.is_available()),
                   tensorrt=cuda and importlib.util.find_spec("tensorrt") is not None, bf16=_bf16_units())


def fingerprint() -> dict[str, object]:
    """What a measured choice depends on: CPU model and the flags that change kernels, threads, GPU, versions."""
    import torch

    gpu = torch.cuda.get_device_name(0) if probe().cuda else None
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = None
    return {"cpu": cpu_name(), "flags": kernel_flags(), "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "onnxruntime": ort_version, "machine": platform.machine()}
