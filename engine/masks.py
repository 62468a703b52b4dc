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
from styleengine.engine.plan import style_size
from styleengine.engine.schedule import long_side_shape
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError, ImageError
from styleengine.paths import ASPECT_SLACK, aspect_fits, check_mask_aspect  # noqa: F401  (stylise reads ASPECT_SLACK here)

SUM_SLACK = 2 / 255  # complementary 8-bit masks (or JPEG ones) may sum to a hair over 1


@dataclass(frozen=True)
class Masks:
    """A run's masks, as given."""

    # float32 in [0, 1], each at its own size as given: resized once, straight to each scale's (a detail lost at
    # its image's own size was lost at every scale, whatever the --size)
    content: tuple[np.ndarray, ...]  # one region per style
    styles: list[np.ndarray | None]  # one per style image; None: the whole style image

    def at(self, height: int, width: int, style_shapes: list[tuple[int, int]]
           ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """(R, height, width) content masks and each style mask at its style's (height, width), as tensors."""
        content = within_one(torch.cat([resize(torch.from_numpy(m)[None, None], height, width)[0]
                                        for m in self.content]))
        styles = [resize(torch.from_numpy(m)[None, None], *shape)[0, 0] if m is not None else None
                  for m, shape in zip(self.styles, style_shapes)]
        return content, styles


def resize(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, R, H, W) masks at (height, width): antialiased bilinear, whose weights are never negative, so that a
    resized mask stays within its values and masks that sum to at most 1 still do (a picture's bicubic rings:
    two bordering masks summed to 1.09 at their border, and a run refused them)."""
    if tuple(masks.shape[2:]) == (height, width):
        return masks
    return torch.nn.functional.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False,
                                           antialias=True)


def within_one(content: torch.Tensor) -> torch.Tensor:
    """(R, H, W) content masks, each pixel's weights scaled down where they sum past 1: masks of other sizes,
    each resized on its own, blur across a border the masks as given do not cross (probe 29: 1.26)."""
    return content / content.sum(dim=0, keepdim=True).clamp(min=1.0)


def read_mask(path: str | os.PathLike, what: str) -> np.ndarray:
    """The mask at `path` as (H, W) float luminance at its own size; transparent pixels are black (painted
    nothing: white strokes on a transparent layer are the region drawn; over white, it was everywhere)."""
    return images.luminance(images.load_image(path, what, backdrop=0.0))


def _read(path: str | os.PathLike, what: str, against: tuple[str, tuple[int, int]] | None = None) -> np.ndarray:
    """The mask at `path` as (H, W) float32 luminance at its own size, checked against `against` (its image's
    name and (height, width)) where given, and for painting somewhere; ImageError, one line."""
    mask = read_mask(path, what).astype(np.float32)
    if against is not None:
        check_mask_aspect(what, path, mask.shape, *against)
    check_paints(what, path, mask)
    return mask


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


def check_overlap(regions: list[np.ndarray]) -> None:
    """check_sum of content masks as given: a run and a batch's or server's start check the same, whatever size
    each run then resizes them to (resize never adds: what sums to at most 1 still does; a check at the run's
    size refused a stray pixel at one --size and took it at another). Masks of other sizes are compared at the
    largest one's, each pixel taken from the one it falls in (a smooth enlargement blurred a hard edge into an
    overlap the masks do not have)."""
    shape = max((r.shape for r in regions), key=lambda s: s[0] * s[1])
    check_sum(np.stack([r if r.shape == shape else torch.nn.functional.interpolate(
        torch.from_numpy(r)[None, None], size=shape, mode="nearest-exact")[0, 0].numpy() for r in regions]))


@dataclass(frozen=True)
class Read:
    """The masks the settings name as read, before any picture: each paints, and the content ones, where they
    share an aspect ratio, do not overlap (what no picture changes: a server says a fault here as its own)."""

    content: list[np.ndarray]
    styles: list[np.ndarray] | None
    overlap_checked: bool  # masks of other aspects: one is not the content's, said first (load)


def read(settings: Settings, content_shape: tuple[int, int] | None = None,
         style_shapes: list[tuple[int, int]] | None = None, style_labels: list[str] | None = None) -> Read | None:
    """The masks the settings name, read and checked on their own (Read), and against the content's and the
    styles' (height, width) where given, in the run's order: each mask's faults as it is read, the content masks'
    overlap, then the style masks. None without --content-mask."""
    if not settings.content_masks:
        return None
    content = ("the content image", content_shape) if content_shape is not None else None
    given = [_read(p, f"content mask {i + 1}", content) for i, p in enumerate(settings.content_masks)]
    shared = all(aspect_fits(mask.shape, given[0].shape) for mask in given)
    if shared:
        check_overlap(given)
    styles = None
    if settings.style_masks:
        labels = style_labels or [f"style image {i + 1}" for i in range(len(settings.style_masks))]
        against = [(label, shape) for label, shape in zip(labels, style_shapes)] if style_shapes is not None \
            else [None] * len(settings.style_masks)
        styles = [_read(p, f"style mask {i + 1}", at) for i, (p, at) in enumerate(zip(settings.style_masks, against,
                                                                                       strict=True))]
    return Read(given, styles, overlap_checked=shared)


def load(settings: Settings, content_shape: tuple[int, int], style_shapes: list[tuple[int, int]],
         style_labels: list[str] | None = None, given: Read | None = None) -> Masks | None:
    """The masks the settings name (`given`: as read() read them on their own), checked against the content's
    and the styles' (height, width): None without --content-mask. The counts are the plan's check
    (engine/plan.py), made before."""
    if not settings.content_masks:
        return None
    labels = style_labels or [f"style image {i + 1}" for i in range(len(style_shapes))]
    if given is None:  # each mask against its picture as it is read: the run's order
        given = read(settings, content_shape, style_shapes, labels)
        assert given is not None  # content masks are named
    else:
        for i, (mask, path) in enumerate(zip(given.content, settings.content_masks)):
            check_mask_aspect(f"content mask {i + 1}", path, mask.shape, "the content image", content_shape)
        for i, (mask, path, shape, label) in enumerate(zip(given.styles or (), settings.style_masks or (),
                                                           style_shapes, labels)):
            check_mask_aspect(f"style mask {i + 1}", path, mask.shape, label, shape)
    if not given.overlap_checked:  # masks of other aspects: each against the content said first
        check_overlap(given.content)
    whats = [f"content mask {i + 1}" for i in range(len(given.content))]
    masks = Masks(tuple(given.content), list(given.styles) if given.styles is not None else [None] * len(style_shapes))
    # the run's first scale is its smallest: where a thin mask fades most, the content's and the styles' alike
    steps = settings.scale_plan()
    smallest = long_side_shape(*content_shape, steps[0][0])
    side = style_size(settings, steps[0][0])
    at_styles = [long_side_shape(*shape, side) for shape in style_shapes]
    larger = "start the run larger (its first scale)" if len(steps) > 1 else "run at a larger size"
    content, at = masks.at(*smallest, at_styles)
    for faded, what, path in zip(content.numpy(), whats, settings.content_masks or ()):
        _painting(faded, what, path, f" or {larger}")
    for i, (resized, path) in enumerate(zip(at, settings.style_masks or ())):
        if resized is not None:
            _painting(resized.numpy(), f"style mask {i + 1}", path, f", {larger} or raise the style scale")
    return masks


def _painting(mask: np.ndarray, what: str, path: str | os.PathLike, advice: str) -> None:
    """ImageError where a few white pixels of a mask, as the run resizes it, fade to nothing (its file is not
    black: check_paints said that), with `advice`: what makes the run keep them."""
    if mask.max() * 255 < 0.5:
        height, width = mask.shape
        raise ImageError(f"{what} {path} fades to black at {width}x{height} px, where the run resizes it: too little "
                         f"of it is white; widen its white{advice}")
