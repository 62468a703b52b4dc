"""Dense optical flow, warping and Ruder et al.'s consistency weights between video frames (torch-free).

Convention: a flow field (H, W, 2) in pixels, (dx, dy) per pixel, maps frame A to frame B when
A(p) ~ B(p + flow(p)): `warp(B, flow)` then looks like A. For frame t, the backward flow t -> t-1 warps
the previous stylised frame onto frame t; the forward flow t-1 -> t is only read by the consistency check.

Ruder, Dosovitskiy and Brox, "Artistic style transfer for videos" (GCPR 2016), section 3.2: a pixel of
frame t counts in the temporal loss (c = 1) unless forward-backward consistency fails there (it was
occluded in t-1, or the flow is wrong) or it lies on a motion boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Ruder et al.'s thresholds (their eq. 6 and 7), in pixels
OCCLUSION_REL, OCCLUSION_ABS = 0.01, 0.5
BOUNDARY_REL, BOUNDARY_ABS = 0.01, 0.002


def _grey(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (H, W) uint8, what DIS reads."""
    rgb = np.clip(np.asarray(frame, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class FlowEstimator:
    """OpenCV's DIS optical flow (Kroeger et al. 2016), built once and used for every pair of a video."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
        self._dis = cv2.DISOpticalFlow_create(preset)  # type: ignore[attr-defined]  # missing from cv2's stubs

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The flow A -> B (A(p) ~ B(p + flow(p))) of two (H, W, 3) frames in [0, 1]: (H, W, 2) float32."""
        if a.shape != b.shape:
            raise ValueError(f"frames of one flow must have one shape, got {a.shape} and {b.shape}")
        return self._dis.calc(_grey(a), _grey(b), None)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image(p + flow(p)) for every pixel p, bilinear; sampling outside the frame takes the nearest edge pixel.
    image (H, W) or (H, W, C) float; flow (H, W, 2)."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = xs + flow[..., 0].astype(np.float32)
    map_y = ys + flow[..., 1].astype(np.float32)
    return cv2.remap(np.asarray(image, np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class Consistency:
    """Per pixel of frame t, (H, W) bool: where forward-backward consistency fails and where motion changes
    sharply; `weights` is Ruder et al.'s c: 1 where neither, else 0."""

    occluded: np.ndarray
    boundary: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        return (~(self.occluded | self.boundary)).astype(np.float32)


def consistency(backward: np.ndarray, forward: np.ndarray) -> Consistency:
    """Ruder et al.'s masks for frame t from the backward flow t -> t-1 and the forward flow t-1 -> t."""
    there = warp(forward, backward)  # the forward flow at the point of frame t-1 each pixel comes from
    round_trip = np.sum((there + backward) ** 2, axis=-1)
    occluded = round_trip > OCCLUSION_REL * (np.sum(there ** 2, axis=-1) + np.sum(backward ** 2, axis=-1)) \
        + OCCLUSION_ABS
    grad_u = np.gradient(backward[..., 0])  # (d/dy, d/dx) of the horizontal component
    grad_v = np.gradient(backward[..., 1])
    change = sum(g ** 2 for g in grad_u) + sum(g ** 2 for g in grad_v)
    boundary = change > BOUNDARY_REL * np.sum(backward ** 2, axis=-1) + BOUNDARY_ABS
    return Consistency(occluded, boundary)


def warping_error(current: np.ndarray, previous: np.ndarray, backward: np.ndarray, weights: np.ndarray) -> float:
    """Mean |current - warp(previous)| over the pixels (and channels) whose weight is 1: the temporal
    consistency measure of the video's evaluation (lower: less flicker)."""
    diff = np.abs(np.asarray(current, np.float64) - warp(previous, backward))
    mask = np.broadcast_to(weights[..., None] > 0, diff.shape)
    return float(diff[mask].mean()) if mask.any() else float("nan")
