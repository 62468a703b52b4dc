"""The optimisation loop: x = init; repeat { losses, grad = step(x); x = opt(x, grad) }.

It works with any Step: the optimisers read the gradient the step returns,
never autograd. Nothing in an iteration waits for the device: the loss terms
stay in a device buffer and reach the host only at a read (a caller that
looks, or the periodic non-finite check), so a GPU queues iteration after
iteration while the host is free.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

from styleengine.choices import LBFGS_HISTORY, OPTIMIZERS, check_choice
from styleengine.engine.lbfgs import DeviceLBFGS
from styleengine.engine.steps import LOSS_TERMS, Step
from styleengine.errors import ConfigError

T = TypeVar("T")

# Reads: the records reach the host (one sync) when the last one is older than
# READ_INTERVAL_S (a progress bar needs no more than ~10 a second), at every
# iteration `read_at` names (--save-every: the image of exactly that iteration),
# every CHECK_EVERY iterations (the non-finite check: a NaN wastes at most that
# many iterations, whose results are thrown away), and at the end.
READ_INTERVAL_S = 0.1
CHECK_EVERY = 16
# On CUDA, a capturable step's iteration (step + update) is captured in a CUDA graph after this many eager
# ones (cuDNN's autotuning and the optimiser's first, different, iteration) and replayed: one launch per
# iteration instead of a few hundred kernels. Rebuilt per call, so per scale of a coarse-to-fine run.
CAPTURE_AFTER = 3
# Adam moves every pixel by up to its learning rate an iteration and nothing holds the image in [0, 1] until
# the end: at the peers' lr 1, 55-59% of the values were outside after 10 iterations, at 0.02 (the default)
# and 0.1 5-12% (shared VGG16, astronaut x The Starry Night, 64 and 128 px, content and noise init)
SATURATION_CHECK_AT, SATURATED_SHARE = 10, 0.25

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One iteration, handed to the callback (progress bar, trace file, ...)."""

    iteration: int  # 1-based
    loss: float
    content_loss: float
    style_loss: float
    tv_loss: float
    # wall time of this iteration (step + optimiser update); iterations read together share
    # their time evenly (on a GPU the host only knows when a read returns)
    seconds: float
    height: int
    width: int
    index: int = 0  # which image of a batch (optimise_batch); 0 for a single image
    # engine.quality.Distances of the image after this iteration, where the caller asked for them
    distances: Any = None


@dataclass
class Result:
    image: torch.Tensor  # the last image whose loss was finite
    iterations: int
    stopped: str | None  # None, "interrupted" or "non-finite loss"
    records: list[Record]
    distances: Any = None  # engine.quality.Distances of `image`, where the caller measured them
    auto: tuple[str, ...] = ()  # what auto's race (engine/race.py) picked at each size class, one line each

    def finished(self) -> "Result":
        """This result, for a caller whose loop is one part of a larger task (a look check, a timed turn): a
        Ctrl-C or SIGTERM the loop caught is raised again, so it ends that task too (tune saved a verdict from
        a check cut short, and exited 0)."""
        if self.stopped == "interrupted":
            raise KeyboardInterrupt
        return self


def lbfgs_grad_scale(grad: torch.Tensor) -> torch.Tensor:
    """The constant L-BFGS's gradients are multiplied by, fixed at the first evaluation (on the device; one
    per image of a batch, (B, 1, 1, 1)).

    Not in the paper: torch's L-BFGS takes a raw gradient step (H = I) while it
    has no accepted curvature pair; with the paper's loss (~1e12 with ImageNet
    weights) that step moved pixels by ~1e9 at 512 px and overflowed fp32. The
    gradient is scaled so its largest entry is 1e-2; L-BFGS is otherwise
    invariant to the scale, and the records keep the true loss.
    """
    peak = grad.abs().amax(dim=(1, 2, 3), keepdim=True)  # per image of a batch: (B, 1, 1, 1)
    usable = torch.isfinite(peak) & (peak > 0)
    return torch.where(usable, 1e-2 / torch.where(usable, peak, 1.0), 1.0)


def optimise(step: Step, init: torch.Tensor, *, iterations: int, optimizer: str = "lbfgs",
             lr: float | None = None, callback: Callable[[Record, torch.Tensor], None] | None = None,
             history: int = LBFGS_HISTORY, max_step: float | None = None,
             read_at: Callable[[int], bool] | None = None,
             read_interval_s: float = READ_INTERVAL_S, check_every: int = CHECK_EVERY,
             kept: list[Result] | None = None) -> Result:
    """Run `iterations` steps from `init` (1, 3, H, W) on the step's device (kept: see optimise_batch).

    history: L-BFGS's curvature pairs (2 * (history + 1) image-sized vectors).
    max_step: L-BFGS moves no pixel more than this per iteration (None: torch's
    LBFGS exactly; stylise passes Settings.lbfgs_max_step).
    callback(record, image) gets every record, in order, at reads (see
    READ_INTERVAL_S); `image` is the current image, exact for the newest
    record of the read (do not modify it). read_at(i) names iterations that
    must be read (e.g. --save-every). Ctrl-C and a non-finite loss end the
    loop early; the result keeps the last image whose loss was finite.
    """
    if init.shape[0] != 1:
        raise ValueError(f"optimise takes one image (1, 3, H, W), got {tuple(init.shape)}; see optimise_batch")
    return optimise_batch(step, init, iterations=iterations, optimizer=optimizer, lr=lr, callback=callback,
                          history=history, max_step=max_step, read_at=read_at, read_interval_s=read_interval_s,
                          check_every=check_every, kept=kept)[0]


def optimise_batch(step: Step, init: torch.Tensor, *, iterations: int, optimizer: str = "lbfgs",
                   lr: float | None = None, callback: Callable[[Record, torch.Tensor], None] | None = None,
                   history: int = LBFGS_HISTORY, max_step: float | None = None,
                   read_at: Callable[[int], bool] | None = None,
                   read_interval_s: float = READ_INTERVAL_S, check_every: int = CHECK_EVERY,
                   kept: list[Result] | None = None) -> list[Result]:
    """optimise() for B images at once, init (B, 3, H, W): one Result per image (also put in `kept` as
    they are made, for a caller a signal may cut into before it has the returned value).

    The step returns the B images' loss terms (B, 4) (a single image's (4,)) and their gradients; each
    image has its own optimiser state (DeviceLBFGS per row; Adam is per element), so image b follows the
    iterates it would alone. Records carry `index`; a non-finite loss stops recording that image (its
    Result keeps its last finite image) while the others go on; Ctrl-C stops them all.
    """
    if iterations < 0:
        raise ConfigError(f"iterations must be >= 0, got {iterations}")
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "lbfgs" and history < 1:
        raise ConfigError(f"L-BFGS history must be >= 1, got {history}")
    if check_every < 1:
        raise ConfigError(f"check_every must be >= 1, got {check_every}")
    device = step.device
    x = init.detach().to(device, torch.float32).clone(memory_format=torch.contiguous_format)
    count, height, width = x.shape[0], x.shape[2], x.shape[3]
    # torch's Adam keeps its step count on the host (capturable=False): only L-BFGS's update is captured
    capture = (device.type == "cuda" and step.capturable and optimizer == "lbfgs"
               and iterations > CAPTURE_AFTER + 1)
    if optimizer == "lbfgs":
        # the paper's choice; tolerances off so it runs the iterations asked for, as neural-style does
        update = _lbfgs_update(x, history, lr or 1.0, static=capture, max_step=max_step)
    else:
        update = _adam_update(x, lr or 0.02)
    # per iteration and image, read later
    losses = torch.empty(max(iterations, 1), count, len(LOSS_TERMS), device=device)
    finite = torch.ones(count, dtype=torch.bool, device=device)  # per image: no non-finite loss so far
    last_finite = x.clone()

    records: list[list[Record]] = [[] for _ in range(count)]
    broken = [False] * count  # images whose loss was non-finite at a read
    state: dict[str, Any] = {"unread": 0, "last_read": time.perf_counter(), "stopped": None, "in_callback": False}

    def read(upto: int) -> None:
        """Bring iterations [unread, upto) to the host, in order; an image stops at a non-finite loss."""
        values = losses[state["unread"]:upto].tolist()  # the one sync of a read
        now = time.perf_counter()
        seconds = (now - state["last_read"]) / max(1, upto - state["unread"])
        state["last_read"] = now
        for row in values:
            state["unread"] += 1
            for index, (loss, content, style, tv) in enumerate(row):
                if broken[index]:
                    continue
                if not math.isfinite(loss):
                    broken[index] = True
                    continue
                record = Record(state["unread"], loss, content, style, tv, seconds, height, width, index)
                records[index].append(record)
                if callback is not None:
                    state["in_callback"] = True
                    callback(record, x[index:index + 1].detach())
                    state["in_callback"] = False
            if all(broken):
                state["stopped"] = "non-finite loss"
                return

    current = torch.empty(count, len(LOSS_TERMS), device=device)  # this iteration's terms (a CUDA graph's output)

    def iteration() -> None:
        result = step(x)
        current.copy_(result.losses)  # (4,) of a single image broadcasts to (1, 4)
        finite.logical_and_(torch.isfinite(current[:, 0]))
        torch.where(finite[:, None, None, None], x, last_finite, out=last_finite)
        update(result.grad)

    graph = None
    done = 0
    grad = torch.is_grad_enabled()
    try:
        with torch.no_grad():
            try:
                for i in range(iterations):
                    if graph is not None:
                        graph.replay()
                    elif capture and i == CAPTURE_AFTER:
                        graph = _capture(iteration)  # runs this iteration once, then records it for the next ones
                    else:
                        iteration()
                    losses[i].copy_(current)
                    done = i + 1
                    if (done == iterations or done - state["unread"] >= check_every
                            or (read_at is not None and read_at(done))
                            or time.perf_counter() - state["last_read"] >= read_interval_s):
                        read(done)
                        if state["stopped"] is not None:
                            break
            except KeyboardInterrupt:
                state["stopped"] = "interrupted"
    except KeyboardInterrupt:  # as no_grad's block closed (its exit is Python code): the loop's, as one inside it
        state["stopped"] = "interrupted"
        torch.set_grad_enabled(grad)  # that exit may not have restored it (a repeat signal is absorbed)
    try:  # a signal just after the loop (its try) is the loop's too: it stops nothing more than one inside it
        if state["stopped"] == "interrupted" and state["unread"] < done and not state["in_callback"]:
            # Ctrl-C during a step: the iterations that finished keep their records, unless one was not finite
            state["stopped"] = None
            try:
                read(done)
            finally:
                state["stopped"] = "interrupted"
    except KeyboardInterrupt:
        state["stopped"] = "interrupted"
    # the final update is not evaluated but is the result of a run that went to its end, unless it is not finite
    # (a huge weight's last step: visualize wrote a NaN picture, exit 0); one read for the batch, after the loop
    def results() -> list[Result]:
        finite_end = torch.isfinite(x.detach()).flatten(1).all(1).tolist()
        made = []
        for index in range(count):
            if broken[index]:
                stopped: str | None = "non-finite loss"
            else:
                stopped = state["stopped"] if state["stopped"] == "interrupted" else None
            if stopped is None and not finite_end[index]:
                stopped = "non-finite loss"
            image = (x if stopped is None else last_finite)[index:index + 1].detach()
            made.append(Result(image, len(records[index]), stopped, records[index]))
        if kept is not None:
            kept[:] = made
        return made

    made, cut = uninterrupted(results)
    if cut:  # a signal as the results were made is the loop's, as one inside it
        state["stopped"] = "interrupted"
        made, _ = uninterrupted(results)
    return made


def whole(result: Result, iterations: int) -> bool:
    """Whether an "interrupted" result ran all its `iterations`: the signal came as its loop returned, and the
    picture is the finished one (a video frame, a batch job keep it; the command then stops)."""
    return result.stopped == "interrupted" and len(result.records) >= iterations


def non_finite(iterations: int) -> str:
    """What a loss that became non-finite after `iterations` is called, in every command's words."""
    if iterations == 0:
        return "the loss is not finite at the first iteration (a weight or the input convention too large for float32?)"
    return f"the loss became non-finite after {iterations} iterations"


def uninterrupted(make: Callable[[], T]) -> tuple[T, bool]:
    """make()'s value though a KeyboardInterrupt cut into it (make runs again: it must only read), and whether
    one did: a signal just after a loop returned lost its finished pictures."""
    cut = False
    while True:
        try:
            return make(), cut
        except KeyboardInterrupt:
            cut = True


def _capture(iteration: Callable[[], None]) -> "torch.cuda.CUDAGraph":
    """A CUDA graph of one iteration, after one more eager run on a side stream (as torch.cuda.graphs asks)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        iteration()  # this iteration, run for real on the capture's stream (the warm-up capture needs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        iteration()
    return graph


def _lbfgs_update(x: torch.Tensor, history: int, lr: float, static: bool, max_step: float | None
                  ) -> Callable[[torch.Tensor], None]:
    opt = DeviceLBFGS(x.view(x.shape[0], -1), history, lr, static=static, max_step=max_step)  # one per image
    scale: list[torch.Tensor] = []
    scaled = torch.empty_like(x)  # the scaled gradient, reused (the step's own buffer is not ours to change)

    def update(grad: torch.Tensor) -> None:
        if not scale:
            scale.append(lbfgs_grad_scale(grad))
        torch.mul(grad, scale[0], out=scaled)
        opt.step(x.view(x.shape[0], -1), scaled.view(x.shape[0], -1))

    return update


def _adam_update(x: torch.Tensor, lr: float) -> Callable[[torch.Tensor], None]:
    opt = torch.optim.Adam([x], lr=lr)  # x is a plain tensor: the gradient comes from the step
    steps = [0]

    def update(grad: torch.Tensor) -> None:
        x.grad = grad.to(x.dtype)
        opt.step()
        steps[0] += 1
        if steps[0] == SATURATION_CHECK_AT:
            warn_if_saturated(x, lr, steps[0])

    return update


def warn_if_saturated(x: torch.Tensor, lr: float, iterations: int) -> float:
    """Log a warning when over SATURATED_SHARE of the image's values lie outside [0, 1] (clipped at the end);
    returns the share (one sync)."""
    share = float(((x < 0) | (x > 1)).float().mean())
    if share > SATURATED_SHARE:
        log.warning(f"Adam's learning rate {lr:g} saturates the image: {share:.0%} of its values are outside 0-1 "
                    f"after {iterations} iterations (clipped at the end); lower --lr (Adam's default is 0.02)")
    return share
