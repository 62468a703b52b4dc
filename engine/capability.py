"""What runs where: the one table of backends, places, providers, precisions and convolutions.

Torch-free: settings are checked against it without importing torch, and
the machine (does torch see a GPU, which ONNX Runtime providers exist, is
NNPACK there) comes in as a `Machine` probed once elsewhere
(engine/machine.py). Every rule that used to be written beside its user
(is this a GPU run, which precision where, which convolutions) is here once:
settings validation, make_step, export, bench, batch and the tuner
(engine/autotune.py) ask this module.
"""
from __future__ import annotations

from dataclasses import dataclass

from styleengine.choices import BF16_ON_ORT_CUDA, device_kind
from styleengine.errors import ConfigError, UnavailableError

PLACES = ("cpu", "cuda")
# the step's backends a user may name, plus "auto" (torch or ort, measured); tensorrt only when asked for
AUTO_BACKENDS = ("torch", "ort")

# (backend, place) -> the precisions it runs; the first is the rule's pick when nothing is measured
# (fp32 on the CPU: the exact reference; on a GPU the fastest that validated on an H200)
PRECISIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cpu"): ("fp32", "bf16"),
    ("torch", "cuda"): ("bf16", "fp32"),
    ("ort", "cpu"): ("fp32",),
    ("ort", "cuda"): ("fp16", "fp32"),
    ("tensorrt", "cuda"): ("fp16", "fp32", "tf32"),
}
# the providers an ort step may use at each place ("tensorrt": ORT's TensorRT execution provider)
PROVIDERS = {"cpu": ("cpu",), "cuda": ("cuda", "tensorrt")}

_WHY_PRECISION = {
    ("ort", "cpu"): ("ONNX Runtime's CPU provider has no {p} convolutions (it runs them in fp32, no faster); "
                     "use --precision fp32"),
    ("ort", "cuda"): "the ort backend runs fp32 or fp16 on a GPU, not {p}",
    ("torch", "cpu"): "the torch backend runs fp32 or bf16, not {p}",
    ("torch", "cuda"): "the torch backend runs fp32 or bf16, not {p}",
    ("tensorrt", "cuda"): "the tensorrt backend runs fp32, tf32 or fp16, not {p}",
}


@dataclass(frozen=True)
class Machine:
    """What this machine can run, probed once (engine/machine.py)."""

    cuda: bool = False  # torch sees a CUDA device
    ort_providers: tuple[str, ...] = ("cpu",)  # ONNX Runtime providers usable here, by short name
    nnpack: bool = True  # torch's NNPACK (Winograd) initialises on this CPU
    tensorrt: bool = False  # the tensorrt package imports
    bf16: bool = True  # the CPU has bf16 units (AMX, AVX-512 BF16); without them torch emulates bf16


@dataclass(frozen=True)
class Placement:
    """Where a run's step computes: the place, the torch device and the ONNX Runtime provider."""

    place: str  # "cpu" or "cuda"
    device: str  # the torch device: the step's tensors (image, gradient, L-BFGS history) live here
    provider: str  # the ORT provider for a graph step; the place's own for torch


def place(backend: str, device: str, provider: str, machine: Machine | None = None) -> Placement:
    """The one rule for "is this a GPU run": device and provider in step.

    device auto: cuda when torch sees one (for every backend); a graph backend's provider auto follows the
    device (--device cuda --backend ort runs ORT's CUDA provider); a GPU provider puts the run on cuda. A
    device and a provider that disagree are a ConfigError; a GPU asked for and absent, UnavailableError
    (machine None: not checked here).
    """
    named, device = device, device_kind(device)  # cuda:N is a cuda place on that GPU
    if backend == "tensorrt" and provider == "cpu":
        raise ConfigError("--provider cpu is ONNX Runtime's CPU provider; the tensorrt backend runs on an NVIDIA "
                          "GPU (leave --provider at auto, or use --backend ort)")
    # a provider named asks for the graph path: with backend auto it places the ort candidate (and so the run)
    graph = backend in ("ort", "tensorrt") or (backend == "auto" and provider != "auto")
    asked_gpu_provider = graph and provider in PROVIDERS["cuda"]
    if device == "cpu" and (asked_gpu_provider or backend == "tensorrt"):
        what = "the tensorrt backend" if backend == "tensorrt" else f"--provider {provider}"
        other = "--backend torch or ort" if backend == "tensorrt" else "--provider cpu"  # what the next run takes
        raise ConfigError(f"--device cpu and {what} disagree: {what} runs on an NVIDIA GPU; drop --device cpu "
                          f"or use {other}")
    if device == "cuda" and graph and provider == "cpu":
        raise ConfigError("--device cuda and --provider cpu disagree: the ort backend's provider decides where it "
                          "runs; use --provider cuda (or leave it at auto)")
    if device == "auto":
        gpu = asked_gpu_provider or backend == "tensorrt" or (
            machine is not None and machine.cuda and not (graph and provider == "cpu"))
        where = "cuda" if gpu else "cpu"
    else:
        where = device
    if where == "cuda" and machine is not None and not machine.cuda:
        asked = _asked(backend, named, provider)
        instead = ("use --backend torch or ort" if backend == "tensorrt" else  # what asked for the GPU changes
                   "use --provider cpu (or leave it at auto)" if asked.startswith("--provider") else "use --device cpu")
        raise UnavailableError(f"{asked} needs an NVIDIA GPU, and torch sees no CUDA device here; {instead}")
    if backend == "tensorrt":
        chosen = "tensorrt"
    elif backend == "torch" or provider == "auto":
        chosen = "cuda" if where == "cuda" else "cpu"
    else:
        chosen = provider
    if backend == "ort" and machine is not None and chosen not in machine.ort_providers:
        raise UnavailableError(f"ONNX Runtime's {chosen} provider is not available here (available: "
                               f"{', '.join(machine.ort_providers)}); use --provider cpu")
    return Placement(where, named if where == device else where, chosen)


def _asked(backend: str, device: str, provider: str) -> str:
    if backend == "tensorrt":
        return "the tensorrt backend"
    if backend != "torch" and provider in PROVIDERS["cuda"]:
        return f"--provider {provider}"
    return f"--device {device}"


def precisions(backend: str, where: str) -> tuple[str, ...]:
    """The precisions `backend` runs at `where`, the rule's pick first; () where it cannot run there."""
    return PRECISIONS.get((backend, where), ())


def convs(backend: str, where: str, precision: str, machine: Machine | None = None) -> tuple[str, ...]:
    """The convolutions a step runs in this precision, the rule's pick first: Winograd is fp32 only (its
    transforms lose too much in 16 bits); torch runs it on the CPU through NNPACK, a graph as F(4x4, 3x3)
    in standard ops anywhere (on a GPU cuDNN's own are the rule's pick); TensorRT picks its own."""
    if precision != "fp32" or backend == "tensorrt":
        return ("direct",)
    if backend == "torch":
        if where != "cpu" or (machine is not None and not machine.nnpack):
            return ("direct",)
        return ("winograd", "direct")
    return ("winograd", "direct") if where == "cpu" else ("direct", "winograd")


def graph_conv(precision: str, conv: str, where: str = "cpu") -> str:
    """An ONNX step graph's convolutions, whatever provider runs it: Winograd graphs are fp32; auto is the
    place's pick (Winograd on the CPU, cuDNN's own on a GPU)."""
    if conv == "winograd" and precision != "fp32":
        raise ConfigError(_GRAPH_WINOGRAD)
    if conv != "auto":
        return conv
    return convs("ort", where, precision)[0]


_GRAPH_WINOGRAD = "--conv winograd graphs are fp32 (their transforms lose too much in fp16/bf16)"
# what only the torch step computes (autograd through a network in engine/losses.py's terms): the graphs hold
# the loss and its gradient as exported, without per-layer gradient rescaling or masked style terms
NORMALIZE_GRADIENTS = "--normalize-gradients runs on the torch backend only (--backend torch or auto)"
MASKS = "spatial masks (--content-mask) run on the torch backend only; use --backend torch (auto picks it)"
SPREAD = "--devices splits the torch backend's network; a graph backend runs one graph on one device"


def refusal(backend: str, where: str, precision: str, conv: str, machine: Machine | None = None, *,
            torch_only: str | None = None) -> str | None:
    """Why `backend` cannot run `precision` with `conv` convolutions at `where` (None: it can). "auto" in
    precision or conv means any of the options. torch_only: why the run's loss needs the torch step
    (Settings.torch_only), if it does."""
    if torch_only and backend != "torch":
        return torch_only
    runs = precisions(backend, where)
    if not runs:
        return f"the {backend} backend runs on an NVIDIA GPU (--device cuda), not on the CPU"
    if precision != "auto" and precision not in runs:
        if (backend, where, precision) == ("ort", "cuda", "bf16"):
            return f"--precision bf16 on ONNX Runtime's GPU providers: {BF16_ON_ORT_CUDA}"
        if (backend, where, precision) == ("ort", "cpu", "bf16") and conv != "winograd":  # torch runs it here
            return ("ONNX Runtime's CPU provider has no bf16 convolutions (it runs them in fp32, no faster); use "
                    "--precision fp32, or --backend torch for bf16")
        return _WHY_PRECISION[(backend, where)].format(p=precision)
    if conv in ("auto", "direct"):
        return None
    options = [p for p in ([precision] if precision != "auto" else runs) if conv in convs(backend, where, p, machine)]
    if options:
        return None
    if backend == "torch" and where == "cpu" and precision in ("auto", "fp32"):
        return ("--conv winograd: this torch build or CPU has no NNPACK (x86 needs AVX2); use --conv direct")
    if backend == "torch":
        return ("--conv winograd runs fp32: the torch backend on the CPU (--device cpu; NNPACK) or the ort backend "
                "(F(4x4, 3x3) in the graph)")
    if backend == "tensorrt":
        return "--conv winograd: TensorRT picks its own convolutions; use --conv direct or auto"
    return _GRAPH_WINOGRAD


def check(backend: str, where: str, precision: str, conv: str, machine: Machine | None = None, *,
          torch_only: str | None = None) -> None:
    """ConfigError (UnavailableError for a missing NNPACK) with refusal()'s reason, if there is one."""
    why = refusal(backend, where, precision, conv, machine, torch_only=torch_only)
    if why is None:
        return
    raise (UnavailableError if "no NNPACK" in why else ConfigError)(why)


def rule(backend: str, where: str, precision: str, conv: str, machine: Machine | None = None) -> tuple[str, str]:
    """(precision, conv) with `auto` made concrete by rule, without measuring: the first option of each."""
    check(backend, where, precision, conv, machine)
    chosen = precision if precision != "auto" else precisions(backend, where)[0]
    if conv != "auto" and conv != "winograd":
        return chosen, conv
    if conv == "winograd" and precision == "auto":
        return "fp32", conv  # Winograd runs fp32 only
    return chosen, conv if conv != "auto" else convs(backend, where, chosen, machine)[0]


def candidates(backend: str, where: str, precision: str, conv: str, machine: Machine | None = None, *,
               torch_only: str | None = None) -> list[tuple[str, str, str]]:
    """Every (backend, precision, conv) the settings leave open at `where`, the rule's pick first.
    backend "auto": AUTO_BACKENDS that run there (torch_only: torch); precision "auto": no bf16 on a CPU
    without bf16 units (asked for, it runs)."""
    backends = [b for b in AUTO_BACKENDS if precisions(b, where) and not (torch_only and b != "torch")
                ] if backend == "auto" else [backend]
    out = []
    for b in backends:
        for p in precisions(b, where):
            if precision != "auto" and p != precision:
                continue
            if precision == "auto" and (where, p) == ("cpu", "bf16") and machine is not None and not machine.bf16:
                continue  # emulated: never faster than fp32, and its trial's one step ran 7 s unstoppable
            for c in convs(b, where, p, machine):
                if conv == "auto" or c == conv:
                    out.append((b, p, c))
    return out


def check_settings(backend: str, device: str, provider: str, precision: str, conv: str, *,
                   torch_only: str | None = None) -> None:
    """ConfigError for what no machine runs: a device and provider that disagree, or a precision and
    convolutions the backend runs nowhere it may run (device auto: at neither place; backend auto: no
    backend). What depends on the machine (a GPU, a provider, NNPACK) is checked when `auto` is resolved."""
    where = place(backend, device, provider).place  # ConfigError: a device and a provider that disagree
    # device auto leaves the place to the machine, unless a provider (of a graph backend) pins it
    pinned = device != "auto" or where == "cuda" or (provider == "cpu" and backend != "torch")
    places = [where] if pinned else list(PLACES)
    backends = (("torch",) if torch_only else AUTO_BACKENDS) if backend == "auto" else (backend,)
    reasons: list[str] = []
    for b in backends:
        why = [refusal(b, p, precision, conv, torch_only=torch_only) for p in places]
        if all(why):
            # device auto: a place that runs the precision refuses the rest (--conv winograd), which holds at
            # every place; else the first place the backend runs at (the CPU's: a machine without a GPU is not
            # told a GPU's fix; it names the GPU's where that differs)
            convs_only = [w for w, p in zip(why, places) if refusal(b, p, precision, "auto", torch_only=torch_only)
                          is None]
            runs = [w for w, p in zip(why, places) if precisions(b, p)]
            reasons.append(str((convs_only or runs or why)[0]))
        else:
            return
    raise ConfigError(reasons[0] if len(reasons) == 1 else no_backend(precision, conv, reasons))


def no_backend(precision: str, conv: str, reasons: list[str]) -> str:
    """Why backend auto has no candidate: each backend's refusal."""
    asked = " ".join(f"--{k} {v}" for k, v in (("precision", precision), ("conv", conv)) if v != "auto")
    return f"no backend runs {asked or 'this'} here: " + "; ".join(reasons)
