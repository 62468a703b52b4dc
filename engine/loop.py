"""The optimisation loop: x = init; repeat { loss, grad = step(x); x = opt(x, grad) }.

It works with any Step: the optimisers read the gradient the step returns
(torch.optim only ever sees `x.grad`), never autograd.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from styleengine.choices import LBFGS_HISTORY, OPTIMIZERS, check_choice
from styleengine.errors import ConfigError
from styleengine.engine.steps import Step



@dataclass(frozen=True)
class Record:
    """One iteration, handed to the callback (progress bar, trace file, ...)."""

    iteration: int  # 1-based
    loss: float
    content_loss: float
    style_loss: float
    tv_loss: float
    seconds: float  # wall time of this iteration (step + optimiser update)
    height: int
    width: int


@dataclass
class Result:
    image: torch.Tensor  # the last image whose loss was finite
    iterations: int
    stopped: str | None  # None, "interrupted" or "non-finite loss"
    records: list[Record]


class NonFiniteLoss(Exception):
    pass


def make_optimizer(name: str, params: list[torch.Tensor], lr: float | None,
                   history: int = LBFGS_HISTORY) -> torch.optim.Optimizer:
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "lbfgs":
        # the paper's choice; tolerances off so it runs the iterations asked for, as
        # neural-style does. Each curvature pair is two image-sized fp32 vectors.
        if history < 1:
            raise ConfigError(f"L-BFGS history must be >= 1, got {history}")
        return torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=1, history_size=history,
                                 tolerance_grad=-1.0, tolerance_change=-1.0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr or 0.02)
    raise AssertionError(name)  # every name in OPTIMIZERS is handled above


def optimise(step: Step, init: torch.Tensor, *, iterations: int, optimizer: str = "lbfgs",
             lr: float | None = None, callback: Callable[[Record, torch.Tensor], None] | None = None,
             history: int = LBFGS_HISTORY) -> Result:
    """Run `iterations` steps from `init` (1, 3, H, W) on the step's device.

    history: L-BFGS's curvature pairs (2 * history image-sized vectors).
    The callback gets each Record and the current image (do not modify it).
    Ctrl-C and a non-finite loss end the loop early; the result keeps the
    last image whose loss was finite.
    """
    if iterations < 0:
        raise ConfigError(f"iterations must be >= 0, got {iterations}")
    x = init.detach().to(step.device, torch.float32).clone().requires_grad_(True)
    opt = make_optimizer(optimizer, [x], lr, history)
    last_finite = x.detach().clone()
    records: list[Record] = []
    height, width = x.shape[2], x.shape[3]
    current: dict = {}
    # Not in the paper: L-BFGS sees the gradient divided by a constant fixed at the
    # first evaluation (largest entry 1e-2). torch's L-BFGS takes a raw gradient
    # step (H = I) while it has no accepted curvature pair; with the paper's loss
    # (~1e12 with ImageNet weights) that step moved pixels by ~1e9 at 512 px and
    # overflowed fp32. L-BFGS is otherwise invariant to the scale; the records
    # keep the true loss.
    grad_scale: list[float] = []

    def closure() -> torch.Tensor:
        result = step(x.detach())
        if not math.isfinite(result.loss):
            raise NonFiniteLoss
        last_finite.copy_(x.detach())
        grad = result.grad.to(x.dtype)
        if optimizer == "lbfgs":
            if not grad_scale:
                peak = float(grad.abs().max())
                grad_scale.append(1e-2 / peak if math.isfinite(peak) and peak > 0 else 1.0)
            grad = grad * grad_scale[0]
        x.grad = grad
        current["result"] = result
        return torch.tensor(result.loss)

    stopped = None
    for i in range(1, iterations + 1):
        start = time.perf_counter()
        try:
            opt.step(closure)
        except NonFiniteLoss:
            stopped = "non-finite loss"
            break
        except KeyboardInterrupt:
            stopped = "interrupted"
            break
        result = current["result"]
        record = Record(i, result.loss, result.parts["content"], result.parts["style"], result.parts["tv"],
                        time.perf_counter() - start, height, width)
        records.append(record)
        if callback is not None:
            try:
                callback(record, x.detach())
            except KeyboardInterrupt:
                stopped = "interrupted"
                break
    if stopped is None:
        last_finite = x.detach().clone()  # the final update has not been evaluated but is the result
    return Result(last_finite, len(records), stopped, records)
