"""Test clips whose true motion is known: a window moving (and zooming) across a still photo, and one with an
occluder sliding over it; written with a tone as their sound track (tests and the consistency benchmark)."""
from __future__ import annotations

from fractions import Fraction
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


def with_occluder(frames: list[np.ndarray], patch: np.ndarray, speed: float = 4.0) -> list[np.ndarray]:
    """The frames with `patch` (h, w, 3) sliding left to right across their middle at `speed` px a frame."""
    out = []
    h, w = patch.shape[:2]
    for t, frame in enumerate(frames):
        frame = frame.copy()
        x = int(round(t * speed))
        y = (frame.shape[0] - h) // 2
        right = min(frame.shape[1], x + w)
        if x < frame.shape[1]:
            frame[y:y + h, x:right] = patch[:, :right - x]
        out.append(frame)
    return out


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


def clip_rate(fps: int) -> Fraction:
    return Fraction(fps, 1)
