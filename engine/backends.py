"""Choosing a Step: the one place that knows every backend."""
from __future__ import annotations

from styleengine.choices import BACKENDS, check_choice, gpu_index
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import Step, TorchStep
from styleengine.model.vgg import Pooling
from styleengine.model.weights import Weights


def make_step(backend: str, weights: Weights, loss: LossConfig, *, pooling: Pooling = "avg",
              device: str = "cpu", precision: str = "fp32", provider: str = "cpu", conv: str = "auto",
              max_side: int | None = None, devices: tuple[str, ...] = (), split_at: tuple[str, ...] = ()) -> Step:
    """A ready Step (call set_targets before stepping).

    backend "torch" runs on `device`; "ort" runs the exported step graph on
    ONNX Runtime's `provider`; "tensorrt" builds a TensorRT engine from it.
    conv: the convolutions, auto|direct|winograd: the torch backend's (engine/winograd.py: NNPACK), the ORT
    graphs' (export/winograd.py: F(4x4, 3x3) in ONNX ops); auto = Winograd for fp32 on the CPU.
    devices, split_at (torch): one network spread over several devices (TorchStep).
    max_side (tensorrt): the longest side the run will use (a coarse-to-fine run's last scale), so one engine
    covers every scale; None: the engine grows with the largest image seen (a build per new largest size).
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        return TorchStep(weights, loss, pooling=pooling, device=device, precision=precision, conv=conv,
                         devices=devices, split_at=split_at)
    if backend in ("ort", "tensorrt"):
        from styleengine.engine.ort_step import make_graph_step

        return make_graph_step(backend, weights, loss, pooling=pooling, provider=provider, precision=precision,
                               conv=conv, max_side=max_side, gpu=gpu_index(device) if device != "auto" else 0)
    raise AssertionError(backend)  # every name in BACKENDS is handled above
