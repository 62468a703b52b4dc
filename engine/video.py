"""Temporally consistent video stylisation: Ruder, Dosovitskiy and Brox, "Artistic style transfer for videos"
(GCPR 2016), on the engine's steps.

The first frame is a usual run (its plan, coarse to fine). Each next frame starts from the previous result
warped by the optical flow (engine/flow.py) and adds their temporal loss, (lambda / D) sum c (x - w)^2 over
the D = 3 H W values, c Ruder et al.'s consistency weights. That term lives in pixel space, so it is added
around the step (TemporalStep: loss and analytic gradient) and works with every backend without touching
the graphs. One step is built per video and the style Grams are computed once; a frame's own content
features are its only new targets.

Chosen from the paper: the short-term loss (previous frame only) and a single pass. Their long-term loss
(several previous frames) and multi-pass variant pay off on long occlusions and camera pans that come back;
each costs a flow pair and a warp per extra frame and, for multi-pass, the whole video again.

No printing, no paths: the caller (cli_video.py) decodes, keeps the finished frames and encodes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from styleengine.engine import images
from styleengine.engine.flow import Consistency, FlowEstimator, consistency, warp, warping_error
from styleengine.engine.loop import Result, non_finite, optimise_batch, uninterrupted, whole
from styleengine.engine.losses import LossConfig, Targets
from styleengine.engine.plan import Plan
from styleengine.engine.quality import Distances, distances
from styleengine.engine.settings import FRAME_ITERS_DIVISOR, Settings
from styleengine.engine.steps import Step, StepResult, make_targets
from styleengine.engine.stylise import build_step, check_run, load_run_weights, prepare, stylise
from styleengine.engine.tiled import TiledStep
from styleengine.model.weights import Weights
from styleengine.errors import WeightsError

MIN_FRAME_ITERS = 10


def frame_iterations(settings: Settings) -> int:
    """Iterations of a frame after the first: --frame-iters, else --iters / FRAME_ITERS_DIVISOR (at least 10)."""
    if settings.frame_iters is not None:
        return settings.frame_iters
    return max(MIN_FRAME_ITERS, settings.iterations // FRAME_ITERS_DIVISOR)


def temporal_term(image: torch.Tensor, warped: torch.Tensor, weights: torch.Tensor, weight: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ruder et al.'s short-term temporal loss per image, (weight / D) sum c (x - w)^2 with D = 3 H W, and its
    gradient. image, warped (B, 3, H, W); weights c (B or 1, 1, H, W). Returns ((B,), (B, 3, H, W))."""
    count = image[0].numel()
    diff = image - warped
    held = diff * weights
    loss = (weight / count) * torch.linalg.vecdot(held.flatten(1), diff.flatten(1))  # no third image-sized tensor
    return loss, held.mul_(2.0 * weight / count)


class TemporalStep:
    """A step with the temporal term added to its loss and gradient (the loss terms' total; content, style
    and tv stay the inner step's). Everything else is the inner step's, lifecycle included."""

    def __init__(self, inner: Step, weight: float):
        self.inner = inner
        self.weight = weight
        self.device: torch.device = inner.device
        self.loss: LossConfig = inner.loss
        self.capturable = inner.capturable  # the term is device work only, with no host sync
        self._warped: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None

    @property
    def conv(self) -> str:
        return self.inner.conv

    def set_reference(self, warped: torch.Tensor, weights: torch.Tensor) -> None:
        """The previous result warped onto this frame (1, 3, H, W) and its consistency weights (1, 1, H, W)."""
        self._warped = warped.to(self.device, torch.float32)
        self._weights = weights.to(self.device, torch.float32)

    def temporal(self, image: torch.Tensor) -> float:
        """The weighted temporal term of `image` (a host read)."""
        if self._warped is None or self._weights is None:
            return 0.0
        return float(temporal_term(image.to(self.device), self._warped, self._weights, self.weight)[0].sum())

    def __call__(self, image: torch.Tensor) -> StepResult:
        result = self.inner(image)
        if self._warped is None or self._weights is None or not self.weight:
            return result
        loss, grad = temporal_term(image, self._warped, self._weights, self.weight)
        losses = result.losses.clone()
        losses[..., 0] += loss if losses.dim() > 1 else loss[0]
        # into the inner step's gradient, which is the caller's until its next call: no image-sized copy a step
        return StepResult(losses, result.grad.add_(grad))

    def features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        return self.inner.features(image, names)

    def grams(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        return self.inner.grams(image, names)

    def set_loss(self, loss: LossConfig) -> None:
        self.inner.set_loss(loss)
        self.loss = loss

    def set_targets(self, targets: Targets | list[Targets]) -> None:
        self.inner.set_targets(targets)

    def trim(self) -> None:
        self.inner.trim()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):  # as the Step protocol's (its annotation names Step)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Frame:
    """One finished frame."""

    index: int
    image: np.ndarray  # (H, W, 3) uint8: what is written, and what the next frame is warped from
    result: Result
    seconds: float
    temporal: float | None  # the weighted temporal term at the end (None: the first frame)
    consistent: float | None  # the fraction of pixels with c = 1
    warping_error: float | None  # mean |O_t - warp(O_t-1)| over those pixels, in [0, 1] units
    signalled: bool = False  # whole, but a signal came as its loop returned: it is kept, then the video stops

    def to_json(self) -> dict[str, Any]:
        d: Distances | None = self.result.distances
        return {"frame": self.index, "iterations": self.result.iterations, "seconds": round(self.seconds, 3),
                "loss": self.result.records[-1].loss if self.result.records else None,
                "temporal_loss": self.temporal, "consistent": self.consistent, "warping_error": self.warping_error,
                **(d.to_json() if d is not None else {})}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> uint8, rounded as images.save_image rounds (a frame read back is the same)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def video_hash(settings: Settings, plan: Plan, files: list[str], selection: dict[str, Any]) -> str:
    """sha256 of what decides the frames (16 hex digits): the settings as given (`auto` as asked), the plan, the
    digests of the files read (video, styles, init, weights) and which frames (first frame and rate: later frames never
    change earlier ones, so a longer range continues a shorter one)."""
    return next(video_hashes(settings, plan, files, selection))


def video_hashes(settings: Settings, plan: Plan, files: list[str], selection: dict[str, Any],
                 ways: Iterable[dict[str, Any]] = ({},)) -> Iterator[str]:
    """video_hash with each of `ways` (values of Settings' AUTO_FIELDS, Settings.ways_alike) put in place of the
    settings' and the plan's."""
    from styleengine.engine.manifest import _jsonable, unspelled

    payload: dict[str, Any] = {
        "settings": unspelled(_jsonable(dataclasses.replace(settings, save_every=0, distance_every=0))),
        "plan": plan.to_json(), "files": files, "selection": selection, "frame_iters": frame_iterations(settings)}
    for way in ways:
        payload["settings"].update(way)
        payload["plan"].update(way)
        yield hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_weights_unchanged(weights: Weights, hashed: str | None, path: str) -> None:
    """Refuse weights whose bytes are not those the video's hash holds (`hashed`; None: random or a word):
    a file replaced after the hash would run another network under it."""
    if hashed is not None and weights.sha256 != hashed:
        raise WeightsError(f"weights file {path} changed after the video started: its bytes are not those its hash "
                           f"holds; run it again")


class VideoRun:
    """The warm state of one video: the step (built once), the style Grams at the output size (computed once),
    the flow estimator, and the previous frame. `frame()` stylises the next frame."""

    def __init__(self, styles: list[np.ndarray], settings: Settings, plan: Plan, weights: Weights | None = None,
                 init_image: np.ndarray | None = None):
        self.settings = settings.resolved()
        self.plan = plan
        self.styles = styles
        self.init_image = init_image  # an --init file's picture, decoded once from the bytes the video's hash holds
        self.weights = weights if weights is not None else load_run_weights(self.settings)
        self.loss = self.settings.loss_config()
        last = plan.scales[-1]
        self.last = last
        self.step = build_step(self.settings, self.weights, self.loss, max_side=max(last.height, last.width))
        inner: Step = TiledStep(self.step, self.loss, self.settings.model, tile=last.tile) if last.tile else self.step
        self.temporal = TemporalStep(inner, self.settings.temporal_weight)
        self.flow = FlowEstimator()
        self._grams: dict[str, torch.Tensor] | None = None
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # (input frame, finished frame in [0, 1])

    def close(self) -> None:
        self.step.close()

    def __enter__(self) -> "VideoRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def restart(self) -> None:
        """The next frame starts a new chain, from the usual init (a chunk's first frame, engine/video_ray.py)."""
        self.previous = None

    def skip(self, frame: np.ndarray, finished: np.ndarray) -> None:
        """A frame finished before (resume): the next one warps from it."""
        self.previous = (frame, np.asarray(finished, np.float32) / 255.0)

    def _style_grams(self, frame: np.ndarray) -> dict[str, torch.Tensor]:
        """The style Grams at the output size, computed (and the styles resized) for the first frame only."""
        if self._grams is None:
            prepared = prepare(frame, self.styles, self.settings, self.last.size)
            blend = list(self.settings.style_blend) if self.settings.style_blend else None
            self._grams = make_targets(self.temporal.inner, self.loss, None, prepared.styles, blend,
                                       output_positions=prepared.height * prepared.width).grams
        return self._grams

    def frame(self, index: int, frame: np.ndarray) -> Frame:
        """Stylise `frame` (H, W, 3) in [0, 1] at the output size; result.stopped says if it did not finish."""
        start = time.perf_counter()
        if self.previous is None:
            image, result = stylise(frame, self.styles, self.settings, weights=self.weights, step=self.step,
                                    init_image=self.init_image,
                                    plan=self.plan)
            done = Frame(index, to_uint8(image), result, time.perf_counter() - start, None, None, None)
        else:
            done = self._next(index, frame, start)
        if self.previous is None and whole(done.result, self.plan.iterations):  # _next's frames: said there
            done = dataclasses.replace(done, result=dataclasses.replace(done.result, stopped=None), signalled=True)
        if done.result.stopped is None:
            self.previous = (frame, done.image.astype(np.float32) / 255.0)
        return done

    def _next(self, index: int, frame: np.ndarray, start: float) -> Frame:
        before, finished = self.previous  # type: ignore[misc]  # frame() sends only a frame with a previous one
        backward = self.flow(frame, before)  # t -> t-1: where each pixel was
        mask: Consistency = consistency(backward, self.flow(before, frame))
        weights = mask.weights
        warped = warp(finished, backward)
        step = self.temporal
        if (self.last.height, self.last.width) != frame.shape[:2]:
            raise ValueError(f"frame {index} is {frame.shape[:2]}, the plan's last scale {self.last.height}x"
                             f"{self.last.width}")
        grams = self._style_grams(frame)
        content = images.to_tensor(frame)
        targets = Targets(step.features(content, list(self.loss.content_layers)) if self.loss.content_layers else {},
                          grams)
        step.set_targets(targets)
        step.set_reference(images.to_tensor(warped), torch.from_numpy(weights)[None, None])
        settings = self.settings
        kept: list[Result] = []
        signalled = False
        try:
            result = optimise_batch(step, images.to_tensor(warped), iterations=frame_iterations(settings),
                                    optimizer=settings.optimizer, lr=settings.lr, history=self.last.history,
                                    max_step=settings.lbfgs_max_step or None, kept=kept)[0]
        except KeyboardInterrupt:  # as the loop returned: its result is made, the signal is said after the frame
            if not kept:
                raise
            result, signalled = kept[0], True
        if whole(result, frame_iterations(settings)):  # the frame is the finished one: kept, then the video stops
            result, signalled = dataclasses.replace(result, stopped=None), True

        def finish() -> tuple[Result, float | None, np.ndarray, float]:  # reads only: run again if a signal cuts it
            done, temporal = result, None
            if done.stopped is None:
                done = dataclasses.replace(done, distances=distances(step, done.image, targets, self.loss))
                temporal = step.temporal(done.image)
            image = np.clip(images.to_array(done.image), 0.0, 1.0)
            if settings.preserve_colors:
                image = images.preserve_colors(image, frame)
            out = to_uint8(image)
            return done, temporal, out, warping_error(out.astype(np.float32) / 255.0, finished, backward, weights)

        (result, temporal, out, error), late = uninterrupted(finish)
        return Frame(index, out, result, time.perf_counter() - start, temporal, float(weights.mean()), error,
                     signalled or late)


def stopped_why(result: Result) -> str | None:
    """Why a frame's loop stopped early ("interrupted", or a loss that is not finite in loop.non_finite's words,
    as every command says it), or None."""
    return non_finite(result.iterations) if result.stopped == "non-finite loss" else result.stopped


def stylise_frames(frames: Iterable[tuple[int, np.ndarray]], styles: list[np.ndarray], settings: Settings, *,
                   plan: Plan | None = None, finished: Callable[[int], np.ndarray | None] = lambda index: None,
                   on_frame: Callable[[Frame], None] = lambda frame: None, weights: Weights | None = None,
                   init_image: np.ndarray | None = None) -> str | None:
    """Stylise (index, frame) pairs in order (frames (H, W, 3) in [0, 1], all one shape, settings.size their
    long side). finished(index): a frame done before (uint8), skipped and warped from; on_frame gets each new
    one as it finishes. Returns None, or why it stopped early ("interrupted", or a loss that is not finite in
    loop.non_finite's words): the frame that stopped is not handed on."""
    run: VideoRun | None = None
    try:
        for index, frame in frames:
            if run is None:
                plan = plan or check_run(settings, frame.shape[:2], [s.shape[:2] for s in styles])
                run = VideoRun(styles, settings, plan, weights, init_image)
            done = finished(index)
            if done is not None:
                run.skip(frame, done)
                continue
            result = run.frame(index, frame)
            why = stopped_why(result.result)
            if why is not None:
                return why
            on_frame(result)
            if result.signalled:
                return "interrupted"
    finally:
        if run is not None:
            run.close()
    return None
