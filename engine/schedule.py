"""The coarse-to-fine schedule: the long side and iterations of each scale (torch-free)."""
from __future__ import annotations

import math

from styleengine.choices import MIN_SIDE
from styleengine.errors import ConfigError, SettingError

MIN_SCALE_ITERS = 10  # the fewest iterations the halving schedule gives a scale (scale_plan)
# a default run above one sqrt(2) step over AUTO_START px starts there: the look is set where VGG's receptive
# fields cover the same share of the picture at every size, the finer scales add texture
AUTO_START = 128
AUTO_SCALES_ABOVE = round(AUTO_START * math.sqrt(2))


def scale_sizes(size: int, scales: int | None = None, start_size: int | None = None) -> list[int]:
    """Long sides of a coarse-to-fine run, growing by about sqrt(2) and ending at `size`.

    scales and start_size both None: [size] up to AUTO_SCALES_ABOVE (181 px),
    else from AUTO_START (128 px) as start_size alone (384 -> 128, 185, 266, 384).
    scales only: `scales` sizes, each sqrt(2) times the one before.
    start_size only: from start_size, as many ~sqrt(2) steps as come closest.
    Both: `scales` sizes from start_size to size, evenly spaced in log size.
    """
    if scales is not None and scales < 1:
        raise SettingError("scales", "scales", f"must be >= 1, got {scales}")
    if start_size is not None and not (MIN_SIDE <= start_size <= size):
        raise SettingError("start_size", "start size", f"must be between {MIN_SIDE} and the size {size} px, got "
                                                       f"{start_size}")
    if scales is None and start_size is None:
        if size <= AUTO_SCALES_ABOVE:
            return [size]
        start_size = AUTO_START
    if start_size is None:
        ratio = math.sqrt(2)
    else:
        if scales is None:
            scales = round(2 * math.log2(size / start_size)) + 1
        if scales == 1:
            return [size]
        if scales > size - start_size + 1:  # (a list of 10**20 sizes would never be made)
            raise ConfigError(f"{scales} scales from {start_size} to {size} px: at most {size - start_size + 1}, "
                              f"one per px")
        ratio = (size / start_size) ** (1 / (scales - 1))
    assert scales is not None  # every branch above sets it
    try:
        first = round(size / ratio ** (scales - 1))
    except OverflowError:  # a thousand scales or more: far below any size
        first = 0
    if first < MIN_SIDE:
        raise ConfigError(f"{scales} scales up to {size} px start at {first} px, below the minimum "
                          f"{MIN_SIDE} px; use fewer scales")
    return [round(size / ratio ** (scales - 1 - i)) for i in range(scales)]


def scale_plan(size: int, iterations: int, scales: int | None = None, start_size: int | None = None,
               iters_per_scale: int | None = None) -> list[tuple[int, int]]:
    """(long side, iterations) per scale, coarse to fine.

    iters_per_scale set: that many at every scale but the last, `iterations` at the last. Else the
    first scale does `iterations` and each finer one half as many as the one before (at least
    MIN_SCALE_ITERS): a ~sqrt(2) step doubles the pixels, so every scale costs about the same time
    and most iterations run where they are cheap (the default at 1024 px: 300, 150, 75, 38, 19, 10, 10
    at 128 .. 1024 px, the pixels of 39 iterations at 1024 px instead of 300)."""
    sizes = scale_sizes(size, scales, start_size)
    if iters_per_scale is not None:
        return [(s, iters_per_scale) for s in sizes[:-1]] + [(sizes[-1], iterations)]
    floor = min(iterations, MIN_SCALE_ITERS)
    return [(s, max(floor, math.ceil(iterations / 2**i))) for i, s in enumerate(sizes)]


def long_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is `long_side`, aspect kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
