"""Test clips whose true motion is known: a window moving (and zooming) across a still photo, one with an
occluder sliding over it, and a painting crossing a still photo (`crossing`: what it uncovers is known to the
pixel); written with a tone as their sound track (tests and the consistency benchmark)."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

TONE_HZ = 440


def moving_window(photo: np.ndarray, count: int, shape: tuple[int, int], *, step: tuple[float, float] = (3.0, 1.5),
                  zoom: float = 1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` frames (H, W, 3) float32: a window of `shape` moving `step` px (x, y) a frame across `photo`
    (float RGB) and scaled by `zoom` a frame about its centre; with the true backward flow of each frame
    t -> t-1 ((H, W, 2), frame 0's zero)."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    frames, flows = [], []
    origin = np.array([(photo.shape[1] - width * 1.5) / 2, (photo.shape[0] - height * 1.5) / 2], np.float32)

    def source(t: int) -> tuple[np.ndarray, np.ndarray]:
        s = zoom ** -t  # a frame's pixel spans 1/zoom^t photo pixels
        return (origin[0] + step[0] * t + cx + (xs - cx) * s, origin[1] + step[1] * t + cy + (ys - cy) * s)

    for t in range(count):
        sx, sy = source(t)
        frames.append(cv2.remap(photo.astype(np.float32), sx, sy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
        if t == 0:
            flows.append(np.zeros((height, width, 2), np.float32))
            continue
        # the pixel of frame t-1 that shows the photo point (sx, sy) of frame t's pixel
        s_prev = zoom ** -(t - 1)
        px = (sx - origin[0] - step[0] * (t - 1) - cx) / s_prev + cx
        py = (sy - origin[1] - step[1] * (t - 1) - cy) / s_prev + cy
        flows.append(np.stack([px - xs, py - ys], axis=-1).astype(np.float32))
    return [np.clip(f, 0.0, 1.0) for f in frames], flows


def with_occluder(frames: list[np.ndarray], patch: np.ndarray, speed: float = 4.0, start: int = 0
                  ) -> list[np.ndarray]:
    """The frames with `patch` (h, w, 3) sliding left to right across their middle at `speed` px a frame, its
    left edge at x = `start` in frame 0."""
    out = []
    h, w = patch.shape[:2]
    for t, frame in enumerate(frames):
        frame = frame.copy()
        x = start + int(round(t * speed))
        y = (frame.shape[0] - h) // 2
        right = min(frame.shape[1], x + w)
        if x < frame.shape[1]:
            frame[y:y + h, x:right] = patch[:, :right - x]
        out.append(frame)
    return out


def uncovered(shape: tuple[int, int], patch: tuple[int, int], speed: float, t: int, start: int = 0) -> np.ndarray:
    """(H, W) bool: the pixels of frame t that `with_occluder`'s patch (h, w) covered at t-1 and no longer
    covers: the band it uncovers (disocclusion), where frame t-1 has no view of what frame t shows."""
    height, width = shape
    h, w = patch
    y = (height - h) // 2

    def covered(k: int) -> np.ndarray:
        mask = np.zeros(shape, bool)
        x = start + int(round(k * speed))
        mask[y:y + h, min(x, width):min(width, x + w)] = True
        return mask

    return covered(t - 1) & ~covered(t) if t > 0 else np.zeros(shape, bool)


def crossing(painting: np.ndarray, count: int, shape: tuple[int, int], *, speed: float = 4.0
             ) -> tuple[list[np.ndarray], tuple[int, int], int]:
    """A real clip with occlusions: skimage's coffee photo, still, at `shape`, with a crop of `painting` (its
    middle, half the clip's height, a quarter of its width) crossing it left to right at `speed` px a frame,
    occluding the photo ahead of it and uncovering it behind (`uncovered`). (frames, the patch's (h, w), its
    x in frame 0: one patch width in, as DIS's flow is unreliable near the frame's edge)."""
    from skimage import data

    height, width = shape
    photo = cv2.resize(data.coffee().astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_AREA)
    h, w = height // 2, width // 4
    ph, pw = painting.shape[:2]
    side = min(ph // 2, pw // 2)  # a square-ish crop from the painting's middle, resized to the patch
    crop = painting[(ph - side) // 2:(ph + side) // 2, (pw - side) // 2:(pw + side) // 2].astype(np.float32)
    patch = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
    start = w
    return with_occluder([photo] * count, np.clip(patch, 0.0, 1.0), speed, start), (h, w), start


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 12, *, audio: bool = True,
               codec: str = "libx264") -> None:
    """Encode float frames as a video (lossless-ish: crf 0 for x264) with, optionally, a tone as AAC."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        if codec == "libx264":
            video.options = {"crf": "0"}
        sound = out.add_stream("aac", rate=44100) if audio else None
        for frame in frames:
            rgb = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = int(44100 * len(frames) / fps)
            t = np.arange(samples) / 44100.0
            wave = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)[None, :]
            size = sound.codec_context.frame_size or 1024
            for i in range(0, samples - size + 1, size):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, i:i + size]), format="fltp",
                                                   layout="mono")
                chunk.sample_rate = 44100
                chunk.pts = i
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
