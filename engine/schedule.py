"""The coarse-to-fine schedule: the long side and iterations of each scale (torch-free)."""
from __future__ import annotations

import math

from styleengine.choices import MIN_SIDE
from styleengine.errors import ConfigError

MIN_SCALE_ITERS = 10  # the fewest iterations the halving schedule gives a scale (scale_plan)
AUTO_SCALES_ABOVE = 1024  # sizes above this run coarse-to-fine unless `scales` says otherwise
AUTO_START = 512 * math.sqrt(2)  # an automatic first scale lies in (512, 724] px


def scale_sizes(size: int, scales: int | None = None, start_size: int | None = None) -> list[int]:
    """Long sides of a coarse-to-fine run, growing by about sqrt(2) and ending at `size`.

    scales and start_size both None: [size] up to AUTO_SCALES_ABOVE, else
    from the first size in (512, 724] (2048 -> 724, 1024, 1448, 2048).
    scales only: `scales` sizes, each sqrt(2) times the one before.
    start_size only: from start_size, as many ~sqrt(2) steps as come closest.
    Both: `scales` sizes from start_size to size, evenly spaced in log size.
    """
    if scales is not None and scales < 1:
        raise ConfigError(f"scales must be >= 1, got {scales}")
    if start_size is not None and not (MIN_SIDE <= start_size <= size):
        raise ConfigError(f"start size must be between {MIN_SIDE} and the size {size} px, got {start_size}")
    if scales is None and start_size is None:
        if size <= AUTO_SCALES_ABOVE:
            return [size]
        scales = math.ceil(2 * math.log2(size / AUTO_START) - 1e-9) + 1
    if start_size is None:
        ratio = math.sqrt(2)
    else:
        if scales is None:
            scales = round(2 * math.log2(size / start_size)) + 1
        if scales == 1:
            return [size]
        ratio = (size / start_size) ** (1 / (scales - 1))
    assert scales is not None  # every branch above sets it
    sizes = [round(size / ratio ** (scales - 1 - i)) for i in range(scales)]
    if sizes[0] < MIN_SIDE:
        raise ConfigError(f"{scales} scales up to {size} px start at {sizes[0]} px, below the minimum "
                          f"{MIN_SIDE} px; use fewer scales")
    return sizes


def scale_plan(size: int, iterations: int, scales: int | None = None, start_size: int | None = None,
               iters_per_scale: int | None = None) -> list[tuple[int, int]]:
    """(long side, iterations) per scale, coarse to fine.

    iters_per_scale set: that many at every scale but the last, `iterations` at the last. Else the
    first scale does `iterations` and each finer one half as many as the one before (at least
    MIN_SCALE_ITERS): a ~sqrt(2) step doubles the pixels, so every scale costs about the same time
    and most iterations run where they are cheap (a 2048 px run: 300, 150, 75, 38 at 724 .. 2048 px,
    a quarter of the time of 300 at each)."""
    sizes = scale_sizes(size, scales, start_size)
    if iters_per_scale is not None:
        return [(s, iters_per_scale) for s in sizes[:-1]] + [(sizes[-1], iterations)]
    floor = min(iterations, MIN_SCALE_ITERS)
    return [(s, max(floor, math.ceil(iterations / 2**i))) for i, s in enumerate(sizes)]


def long_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is `long_side`, aspect kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
