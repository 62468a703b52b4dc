"""The inputs and outputs of a step graph bound to torch tensors: what the ORT and TensorRT steps share.

Targets and loss weights are bound at set_targets, the image at each call;
the gradient and the loss terms are the step's own tensors on its device,
allocated per image size and reused, so on a GPU nothing goes through the
host. The runtime behind it is a `Runner` (ORT's I/O binding, a TensorRT
execution context).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from styleengine.engine.losses import LossConfig, Targets, content_coeffs, tv_coefficient
from styleengine.engine.steps import StepResult
from styleengine.export import spec as names
from styleengine.export.spec import ExportSpec


class Runner(Protocol):
    """A runtime's side of the binding: where each named tensor is, and a run over them."""

    def bind_input(self, name: str, tensor: torch.Tensor) -> None: ...

    def bind_output(self, name: str, tensor: torch.Tensor) -> None: ...

    def run(self, stream: torch.cuda.Stream | None) -> None:
        """Run the graph; on `stream` (None: synchronously, the CPU)."""


class GraphIO:
    """A step graph's tensors, bound to the current Runner (attach: a new session or context gets them all).

    stream: the step's own CUDA stream, or None. A run on it is ordered after torch's current stream and
    torch's after it, by events: no host sync per call.
    """

    def __init__(self, spec: ExportSpec, device: torch.device, stream: torch.cuda.Stream | None = None):
        self.spec, self.device, self.stream = spec, device, stream
        self.runner: Runner | None = None
        self.inputs: dict[str, torch.Tensor] = {}  # the bound inputs but the image (kept alive while bound)
        self.losses: torch.Tensor | None = None  # (4,): names.LOSS_OUTPUTS, one tensor
        self.grad: torch.Tensor | None = None
        self._bound_for: tuple[int, ...] | None = None  # the image shape the outputs and tv_weight are for

    def attach(self, runner: Runner | None) -> None:
        """Bind to `runner` (None: detach) every input and output bound so far."""
        self.runner = runner
        if runner is None:
            return
        for name, tensor in self.inputs.items():
            runner.bind_input(name, tensor)
        if self.losses is not None and self.grad is not None:
            self._bind_outputs(runner)

    def set_targets(self, loss: LossConfig, targets: Targets) -> None:
        f: dict[str, Any] = dict(device=self.device, dtype=torch.float32)
        inputs = {names.content_input(n): targets.content[n].detach().to(**f).contiguous()
                  for n in self.spec.content_layers}
        inputs.update({names.gram_input(n): targets.grams[n].detach().to(**f).contiguous()
                       for n in self.spec.style_layers})
        if self.spec.content_layers:
            coeffs = content_coeffs(loss, targets)
            inputs[names.CONTENT_COEFFS] = torch.tensor([coeffs[n] for n in self.spec.content_layers], **f)
        inputs[names.STYLE_WEIGHT] = torch.tensor(loss.style_weight, **f)
        inputs[names.STYLE_LAYER_WEIGHTS] = torch.tensor(loss.layer_weights(), **f)
        inputs[names.TV_WEIGHT] = torch.zeros((), **f)  # tv_weight * t, set per image size in __call__
        self.inputs, self._bound_for = inputs, None
        self.attach(self.runner)

    def release(self) -> None:
        """Hand back every bound tensor (set_targets binds them again)."""
        self.inputs, self.losses, self.grad, self._bound_for = {}, None, None, None

    def _bind_outputs(self, runner: Runner) -> None:
        assert self.losses is not None and self.grad is not None
        for i, n in enumerate(names.LOSS_OUTPUTS):
            runner.bind_output(n, self.losses[i])
        runner.bind_output(names.GRAD, self.grad)

    def __call__(self, loss: LossConfig, image: torch.Tensor) -> StepResult:
        """Run the graph on `image` against the targets bound: (losses (4,), grad), the step's own tensors."""
        if self.runner is None or not self.inputs:
            raise RuntimeError("GraphIO: no runner or no targets bound")  # the step's lifecycle rules this out
        x = image.detach().to(self.device, torch.float32).contiguous()
        self.runner.bind_input(names.IMAGE, x)
        if self._bound_for != tuple(x.shape):
            self.grad = torch.empty_like(x)
            self.losses = torch.empty(len(names.LOSS_OUTPUTS), device=self.device)
            self._bind_outputs(self.runner)
            self.inputs[names.TV_WEIGHT].fill_(tv_coefficient(loss, x.shape[2], x.shape[3]))
            self._bound_for = tuple(x.shape)
        if self.stream is None:
            self.runner.run(None)
        else:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            self.runner.run(self.stream)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        assert self.losses is not None and self.grad is not None  # bound above for this size
        return StepResult(self.losses, self.grad)
