"""What a run needs in memory, and the tile and L-BFGS history that fit a budget (torch-free: a plan is
made without torch). The step's own estimate is calibrated in STEP_FACTOR's comment."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from typing import Callable

from styleengine.choices import LBFGS_HISTORY, device_kind, gpu_index
from styleengine.errors import ConfigError, SettingError
from styleengine.engine.loss_config import LossConfig
from styleengine.model import vgg

STRIDE = 16  # total stride of every VGG: tile origins and core sizes are multiples of it
HISTORY_SHARE = 0.25  # of the memory budget (or of the memory available) that L-BFGS's history may take
MIN_AUTO_HISTORY = 3  # below this L-BFGS is little better than gradient descent; kept even if over the share


def lbfgs_pair_bytes(height: int, width: int) -> int:
    """Memory of one L-BFGS curvature pair: two fp32 vectors the size of a (3, H, W) image."""
    return 2 * 3 * height * width * 4


def free_memory(device: str) -> int:
    """Bytes free now where a run's tensors live: the GPU's for a CUDA device (through torch when it is
    loaded, else nvidia-smi, so a plan needs no torch), else the host's."""
    if device_kind(device) == "cuda":
        index = gpu_index(device)
        if "torch" not in sys.modules and shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits",
                                  f"--id={index}"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                return int(out.stdout.strip()) * 2**20
        import torch

        if torch.cuda.is_available():
            return torch.cuda.mem_get_info(index)[0]
    import psutil

    return psutil.virtual_memory().available


def lbfgs_history(asked: int | None, budget_bytes: float, height: int, width: int) -> int:
    """The L-BFGS history for an image of height x width: `asked`, else LBFGS_HISTORY capped so the pairs
    (2 * 3 * H * W fp32 values each) stay within HISTORY_SHARE of `budget_bytes` (the memory budget, else
    the memory available when the run was planned)."""
    if asked is not None:
        return asked
    fits = int(HISTORY_SHARE * budget_bytes // lbfgs_pair_bytes(height, width))
    return max(MIN_AUTO_HISTORY, min(LBFGS_HISTORY, fits))


def halo_for(model: str, names: list[str]) -> int:
    """Half the receptive field of the deepest of `names`, rounded up to the total stride."""
    deepest = max(vgg.resolve(model, names), key=lambda layer: layer.index)
    return math.ceil(vgg.receptive_field(model, deepest.name) / 2 / STRIDE) * STRIDE


# STEP_FACTOR calibrated on this machine: untiled VGG19 default loss, 1024 px,
# against a layer sum of 4 * 610 = 2.44 kB/px: the torch step with direct
# convolutions 2.50 GB - 0.42 GB baseline = 1.99 kB/px (0.82), with Winograd
# 2.24 - 0.42 GB (0.71); the ORT Winograd graph 3.61 - 0.39 GB = 3.2 kB/px
# (1.32: its transformed tiles, 2.25x a layer's input, and ORT's arena), the
# most of any step, so 1.4 (a tile also holds its pass-1 style maps, freed
# before pass 2).
STEP_FACTOR = 1.4


def step_bytes_per_pixel(model: str, names: list[str]) -> float:
    return STEP_FACTOR * 4.0 * sum(layer.out_channels / layer.stride**2 for layer in vgg.truncated(model, names))


# a tile whose tiled step computes more than this many times the pixels of the untiled one is not chosen
# silently (--mem-budget 0.7 picked 16 px tiles: ~115x the time of untiled)
TILE_COST_FLOOR = 2.0


def tile_cost(model: str, names: list[str], height: int, width: int, tile: int) -> float:
    """Pixels the tiled step's convolutions see, over the image's: each tile's core plus its halo (clipped
    at the image's edges), summed over the tiles; 1.0 is untiled."""
    halo = halo_for(model, names)
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    seen_h = sum(min(height, (r + 1) * tile + halo) - max(0, r * tile - halo) for r in range(rows))
    seen_w = sum(min(width, (c + 1) * tile + halo) - max(0, c * tile - halo) for c in range(cols))
    return seen_h * seen_w / (height * width)


def _costs(model: str, loss: LossConfig, height: int, width: int, baseline_gib: float, other_bytes: float
           ) -> tuple[float, float, float]:
    """(bytes whatever the tile, bytes a step pixel, the pixels of the least step: untiled, or the smallest
    tile with its halo, whichever is less)."""
    per_px = step_bytes_per_pixel(model, loss.layers)
    pixels = float(height) * float(width)  # inf past 1e308, not an OverflowError: a size that never fits
    content = sum(4.0 * layer.out_channels / layer.stride**2 for layer in vgg.resolve(model, list(loss.content_layers)))
    fixed = baseline_gib * 2**30 + pixels * (8 * 3 * 4 + content) + other_bytes
    return fixed, per_px, min(pixels, (STRIDE + 2 * halo_for(model, loss.layers)) ** 2)


def _gib_up(nbytes: float) -> float:
    return math.ceil(nbytes / 2**30 * 100) / 100  # rounded up: the figure said runs


def too_small(budget_gib: float, height: int, width: int, need_gib: float) -> SettingError:
    return SettingError("mem_budget_gib", "memory budget", f"{budget_gib:g} GiB is too small for a {width}x{height} "
                        f"image (it needs {need_gib:g} GiB: the image, gradient, targets and optimiser, and the step "
                        f"on it or on its smallest tile)")


def least_budget_gib(model: str, loss: LossConfig, height: int, width: int,
                     history_bytes: Callable[[float], float], baseline_gib: float = 0.5) -> float:
    """The least budget (GiB, to 0.01) a height x width image runs in, with the optimiser history that budget
    gives it (`history_bytes(budget bytes)`: an automatic history grows with the budget, so a figure worked out
    for a tiny budget's short history was refused with the longer one it then got)."""
    need = 0.0
    for _ in range(64):  # the history is capped: a few rounds reach the budget that holds its own history
        fixed, per_px, smallest = _costs(model, loss, height, width, baseline_gib, history_bytes(need * 2**30))
        more = _gib_up(fixed + per_px * smallest)
        if more <= need:
            break
        need = more
    return need


def tile_for_budget(budget_gib: float, model: str, loss: LossConfig, height: int, width: int,
                    baseline_gib: float = 0.5, other_bytes: float = 0.0) -> int | None:
    """The largest core size (multiple of 16) whose step fits `budget_gib`; None if the untiled step fits.

    Fixed cost, whatever the tile: the process baseline, the image, its
    gradient and L-BFGS's copies (counted as 8 image-sized fp32 buffers;
    the optimiser's history, 2 per remembered iteration, is the caller's
    `other_bytes`), and the content targets (fp32, C_l / stride_l^2 per pixel).
    """
    if not (budget_gib > 0 and math.isfinite(budget_gib)):
        raise ConfigError(f"memory budget must be a finite number of GiB > 0, got {budget_gib}")
    fixed, per_px, smallest = _costs(model, loss, height, width, baseline_gib, other_bytes)
    budget = budget_gib * 2**30
    if fixed + per_px * float(height) * float(width) <= budget:
        return None
    halo = halo_for(model, loss.layers)
    side = math.sqrt(max(0.0, budget - fixed) / per_px) - 2 * halo  # core side of an inner tile
    tile = int(side // STRIDE) * STRIDE
    if tile < STRIDE:
        raise too_small(budget_gib, height, width, _gib_up(fixed + per_px * smallest))
    return tile
