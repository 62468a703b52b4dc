"""Spatial control's masks (Gatys et al. 2017): read, checked against their images, resized per scale.

A mask is a greyscale image, black 0 to white 1 (a colour one is read by its
luminance). Content masks, one per style image in order, say where on the
output each style paints; summed they may not pass 1 at any pixel (where the
sum is below 1 the style pulls less, and nothing but the content where it
is 0). Style masks, optional, one per style image, pick the part of it whose
texture is used (engine/losses.py's guided Grams).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from styleengine.engine import images
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError, ImageError
from styleengine.paths import ASPECT_SLACK, check_mask_aspect  # noqa: F401  (stylise reads ASPECT_SLACK here)

SUM_SLACK = 2 / 255  # complementary 8-bit masks (or JPEG ones) may sum to a hair over 1


@dataclass(frozen=True)
class Masks:
    """A run's masks at its images' own sizes."""

    content: np.ndarray  # (R, H, W) float32 in [0, 1], at the content image's size: one region per style
    styles: list[np.ndarray | None]  # (H_s, W_s) at each style image's size; None: the whole style image

    def at(self, height: int, width: int, style_shapes: list[tuple[int, int]]
           ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """(R, height, width) content masks and each style mask at its style's (height, width), as tensors."""
        content = images.resize_tensor(torch.from_numpy(self.content).unsqueeze(0), height, width)[0]
        styles = [images.resize_tensor(torch.from_numpy(m)[None, None], *shape)[0, 0] if m is not None else None
                  for m, shape in zip(self.styles, style_shapes)]
        return content, styles


def _read(path: str | os.PathLike, what: str, shape: tuple[int, int], image: str) -> np.ndarray:
    """The mask at `path` as (H, W) float32 at `shape`, the (height, width) of `image`; ImageError, one line."""
    array = images.load_image(path, what)
    height, width = array.shape[:2]
    check_mask_aspect(what, path, array.shape, image, shape)
    mask = _resized(images.luminance(array).astype(np.float32), shape)
    check_paints(what, path, mask)
    return mask


def _resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An (H, W) float32 mask at `shape`, resized as the run resizes its images (images.resize_tensor)."""
    if mask.shape == tuple(shape):
        return mask
    return images.resize_tensor(torch.from_numpy(mask)[None, None], *shape)[0, 0].numpy()


def check_paints(what: str, path: str | os.PathLike, mask: np.ndarray) -> None:
    """ImageError for a mask (a luminance array in [0, 1]) that is black everywhere."""
    if mask.max() * 255 < 0.5:
        raise ImageError(f"{what} {path} is black everywhere: its style would paint nothing")


def check_sum(content: np.ndarray) -> None:
    """ConfigError where (R, H, W) content masks overlap: a pixel's weights sum to more than 1."""
    total = content.sum(axis=0)
    if total.max() > 1 + SUM_SLACK:
        y, x = np.unravel_index(int(total.argmax()), total.shape)
        raise ConfigError(f"the content masks sum to {total.max():.2f} at pixel ({x}, {y}); a pixel's weights "
                          f"must sum to at most 1 (each mask is one style's region)")


def check_overlap_at_every_size(regions: list[np.ndarray]) -> None:
    """check_sum for content masks before their content's size is known (a batch's or server's own): refused
    only where they overlap both at their own size and at the coarsest a run resizes them to (MIN_SIDE px), so
    that neither a stray pixel a run's resize smooths away nor the ringing of two bordering masks' resize is
    refused, where every run would take them; masks of different sizes are each run's to check."""
    from styleengine.choices import MIN_SIDE

    first = regions[0].shape
    if any(r.shape != first for r in regions):
        return
    try:
        check_sum(np.stack(regions))
    except ConfigError as own:
        coarsest = images.long_side_shape(first[0], first[1], min(MIN_SIDE, max(first)))
        small = [_resized(r.astype(np.float32), coarsest) for r in regions]
        if np.stack(small).sum(axis=0).max() > 1 + SUM_SLACK:
            raise own from None


def load(settings: Settings, content_shape: tuple[int, int], style_shapes: list[tuple[int, int]],
         style_labels: list[str] | None = None) -> Masks | None:
    """The masks the settings name, checked against the content's and the styles' (height, width): None
    without --content-mask. The counts are the plan's check (engine/plan.py), made before."""
    if not settings.content_masks:
        return None
    labels = style_labels or [f"style image {i + 1}" for i in range(len(style_shapes))]
    content = np.stack([_read(p, f"content mask {i + 1}", content_shape, "the content image")
                        for i, p in enumerate(settings.content_masks)])
    check_sum(content)
    styles: list[np.ndarray | None] = [None] * len(style_shapes)
    if settings.style_masks:
        styles = [_read(p, f"style mask {i + 1}", shape, label)
                  for i, (p, shape, label) in enumerate(zip(settings.style_masks, style_shapes, labels, strict=True))]
    return Masks(content, styles)
