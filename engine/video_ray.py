"""`styleengine video --ray`: the selected frames cut into overlapping chunks, each stylised on a Ray actor.

Chunk i owns frames start_i..stop_i-1 and its chain begins `overlap` frames earlier (chunk 0 at its own
first frame): that first frame is a usual run from the usual init (its plan, coarse to fine), each next one
warped from the previous result, exactly as one process stylising `--frames first_i:stop_i`. So a chunk's
frames past its overlap are the frames of that one-process run. Over an overlap both neighbours have a frame:
the frame written is their linear cross-fade (`cross_fade`), the later chunk's weight rising (m + 1) /
(overlap + 1) over the overlap's frames m = 0..overlap-1, so the look slides from one chain to the next with
no jump at the seam.

Each actor keeps one warm VideoRun (its step and style Grams) for its life, as batch_ray's workers keep one
warm engine; the driver decodes the frames, sends each chunk's frames (uint8) to an idle actor and writes
what comes back (the CLI owns the frame folder). Ray is imported only through batch_ray.ActorPool.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from styleengine.errors import ConfigError

DEFAULT_OVERLAP = 4  # frames a chunk re-runs before its own: its chain settles, and the cross-fade spans them


@dataclass(frozen=True)
class Chunk:
    index: int
    first: int  # the first frame its chain stylises (start - overlap, or start for chunk 0)
    start: int  # its own frames are start..stop-1
    stop: int  # frames first..start-1 (its overlap) are cross-faded with the previous chunk's

    def frames(self) -> range:
        return range(self.first, self.stop)


def chunking(frames: int, workers: int, length: int | None, overlap: int | None) -> tuple[int, int]:
    """(chunk length, overlap) for `frames` selected frames on `workers` actors: --chunk-frames, else as many
    chunks as actors (each actor gets one, the fewest seams); --overlap, else DEFAULT_OVERLAP (less where the
    chunk is shorter). ConfigError for a length below 1 or an overlap outside 0..length-1."""
    check_chunking(length, overlap)
    if length is None:
        length = max(1, math.ceil(frames / max(1, workers)))
        if overlap is not None and length <= overlap:
            length = overlap + 1
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, length - 1)
    if overlap >= length:
        raise ConfigError(f"--overlap {overlap} must be less than the chunk length {length} (--chunk-frames)")
    return length, overlap


def check_chunking(length: int | None, overlap: int | None) -> None:
    """The values alone (before a cluster is asked how many actors it has)."""
    if length is not None and length < 1:
        raise ConfigError(f"--chunk-frames must be at least 1, got {length}")
    if overlap is not None and overlap < 0:
        raise ConfigError(f"--overlap must be 0 or more, got {overlap}")
    if length is not None and overlap is not None and overlap >= length:
        raise ConfigError(f"--overlap {overlap} must be less than --chunk-frames {length}")


def plan_chunks(start: int, stop: int, length: int, overlap: int) -> list[Chunk]:
    """Frames start..stop-1 as chunks of `length` own frames (the last may be shorter)."""
    chunks = []
    for index, own in enumerate(range(start, stop, length)):
        first = max(start, own - overlap)
        chunks.append(Chunk(index, first, own, min(stop, own + length)))
    return chunks


def fade_weight(chunk: Chunk, frame: int) -> float:
    """The weight of `chunk`'s own frame in the written one, 1 past its overlap; over it (m + 1) / (K + 1)."""
    if frame >= chunk.start:
        return 1.0
    return (frame - chunk.first + 1) / (chunk.start - chunk.first + 1)


def cross_fade(earlier: np.ndarray, later: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) earlier + weight later, uint8 frames, rounded."""
    mixed = (1.0 - weight) * earlier.astype(np.float64) + weight * later.astype(np.float64)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ChunkFrame:
    """One frame of a chunk, as the actor hands it back: small (no tensors)."""

    index: int
    image: np.ndarray  # (H, W, 3) uint8, the chunk's own (before any cross-fade)
    trace: dict[str, Any]  # Frame.to_json()


class VideoWorker:
    """A Ray actor's body: one warm VideoRun for its life (rebuilt only for other settings)."""

    def __init__(self, folder: str | None = None) -> None:
        from styleengine.engine.batch_ray import enter

        self.problem = enter(folder)  # the driver's working folder: its --init, masks and weights by their paths
        self.video: Any = None
        self.key: str | None = None

    def stylise(self, chunk: Chunk, frames: list[np.ndarray], styles: list[np.ndarray], settings: Any, plan: Any,
                key: str, weights_sha256: str | None = None, init_image: np.ndarray | None = None
                ) -> tuple[list[ChunkFrame], str | None]:
        """The chunk's frames (uint8, first..stop-1), its chain from the first; and why it stopped early, or
        None. `weights_sha256`: the weights file's bytes as the video's hash holds them (checked on load);
        `init_image`: an --init file's picture, as the driver decoded it."""
        from styleengine.engine.video import VideoRun, check_weights_unchanged, stopped_why

        if self.problem is not None:
            return [], self.problem
        if self.key != key:
            if self.video is not None:
                self.video.close()
            self.video, self.key = None, None
            video = VideoRun(styles, settings, plan, init_image=init_image)
            try:
                check_weights_unchanged(video.weights, weights_sha256, settings.weights)
            except BaseException:
                video.close()
                raise
            self.video, self.key = video, key
        self.video.restart()
        done: list[ChunkFrame] = []
        for index, frame in zip(chunk.frames(), frames):
            # uint8 / 255 in float32, as video_io reads a frame: the same input bits as one process
            result = self.video.frame(index, np.ascontiguousarray(frame, dtype=np.float32) / 255.0)
            why = stopped_why(result.result)
            if why is not None:
                return done, why
            done.append(ChunkFrame(index, result.image, result.to_json()))
        return done, None


class VideoRayRunner:
    """Chunks on a Ray cluster, one VideoWorker per actor (batch_ray.ActorPool: same sizing and restarts)."""

    def __init__(self, address: str, *, cpus_per_worker: int | None = None,
                 on_interrupt: Callable[[int | None], None] | None = None):
        from styleengine.engine.batch_ray import ActorPool

        self.pool = ActorPool(VideoWorker, address, cpus_per_worker=cpus_per_worker, on_interrupt=on_interrupt)

    @property
    def workers(self) -> int:
        return len(self.pool.actors)

    def run(self, work: Iterable[tuple[Chunk, list[np.ndarray]]], styles: list[np.ndarray], settings: Any,
            plan: Any, key: str, weights_sha256: str | None = None, init_image: np.ndarray | None = None
            ) -> Iterator[tuple[Chunk, list[ChunkFrame], str | None]]:
        """(chunk, its frames, why it stopped or None) as each chunk comes back (any order)."""
        ray = self.pool.ray
        shared = [ray.put(styles), ray.put(settings), ray.put(plan)]  # sent once, not with every chunk
        init = ray.put(init_image)
        items = ((chunk, frames, *shared, key, weights_sha256, init) for chunk, frames in work)
        for item, (frames, stopped) in self.pool.map("stylise", items):
            yield item[0], frames, stopped

    def stop(self) -> None:
        """The actors ended; close() shuts Ray down after it."""
        self.pool.stop()

    def close(self) -> None:
        self.pool.close()
