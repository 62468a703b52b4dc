"""One job of the server: what a request asked for, its progress and its result (the store: serve/jobs.py)."""
from __future__ import annotations

import io
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from styleengine.engine.loop import Record
from styleengine.engine.stylise import Settings

STATUSES = ("queued", "running", "done", "failed", "cancelled")
DISTANCE_READS = 10  # style and content distances measured this many times a run (a forward pass each),
MIN_DISTANCE_EVERY = 10  # but not more often than every 10 iterations (a forward pass is ~1/3 of an iteration)


class QueueFull(Exception):
    """The queue holds max_queue jobs; retry_after: seconds until a slot is likely free."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


def distance_every(iterations: int) -> int:
    """How often a job's progress carries the style and content distances."""
    return max(MIN_DISTANCE_EVERY, iterations // DISTANCE_READS)


def new_id() -> str:
    return secrets.token_hex(12)  # 96 random bits, hex only: never a path


@dataclass
class Job:
    """One request's picture and what is known about it; the worker writes, handlers read."""

    id: str
    settings: Settings | None  # None: a job read back from the manifest
    content: np.ndarray | None = field(default=None, repr=False)
    styles: list[np.ndarray] = field(default_factory=list, repr=False)
    upload_dir: Path | None = None
    settings_hash: str | None = None
    keep: bool = False  # run to the end even when every watcher has gone
    masks: Any = field(default=None, repr=False)  # the server's masks, read against these pictures (masks.Masks)
    init_image: np.ndarray | None = field(default=None, repr=False)  # the server's --init file, as hashed
    status: str = "queued"
    reason: str | None = None
    iteration: int = 0
    iterations: int = 0
    losses: dict[str, float] | None = None
    distances: dict[str, Any] | None = None
    seconds: float = 0.0
    # of `seconds`, the iterations' own (the records' sum): the rest is the engine's passes; None: not known (a
    # job read back from the manifest)
    loop_seconds: float | None = 0.0
    batch: int = 1
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancelled: bool = False
    watchers: int = 0  # open event streams
    preview: bytes | None = field(default=None, repr=False)  # the latest preview PNG
    preview_iteration: int = 0
    version: int = 0  # bumped at every change an event stream sends
    # called (from the worker thread) after each change: an event stream's wake-up, so it sends the news now
    wakers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    last_finite: bool = False  # a failed job whose loss went non-finite: its last finite image is its result
    result_at: Path | None = None  # a Ray replica's view of another replica's job with a result: where its PNG is
    _last_progress: float = 0.0
    _last_preview: float = -math.inf

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "reason": self.reason, "iteration": self.iteration,
                "iterations": self.iterations, "losses": self.losses, "distances": self.distances,
                "seconds": round(self.seconds, 3),
                # with `seconds`, once the job is over (while it runs, `seconds` is not yet set)
                "loop_seconds": round(self.loop_seconds, 3) if self.over and self.loop_seconds is not None else None,
                "batch": self.batch, "keep": self.keep, "last_finite": self.last_finite,
                "result": f"/api/jobs/{self.id}/result" if self.has_result else None}

    @property
    def has_result(self) -> bool:
        """A picture to serve: a done job's, or a failed one's last finite image (as `run` writes it)."""
        return self.status == "done" or (self.status == "failed" and self.last_finite)

    @property
    def run_settings(self) -> Settings:
        """The settings of a job to run (a job read back from the manifest has none and never runs)."""
        assert self.settings is not None
        return self.settings

    @property
    def shape(self) -> tuple[int, int]:
        """The content's (height, width), while the job has its images."""
        assert self.content is not None
        return self.content.shape[0], self.content.shape[1]

    @property
    def over(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


def _distances(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"style": value.style, "content": value.content}


def _losses(record: Record) -> dict[str, float]:
    return {"loss": record.loss, "content": record.content_loss, "style": record.style_loss, "tv": record.tv_loss}


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    array = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array, "RGB").save(out, format="PNG", compress_level=1)  # previews: speed over size
    return out.getvalue()
