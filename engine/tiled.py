"""An exactly tiled step: the same loss and gradient as the untiled step, tile by tile.

The Gatys loss is a sum over positions: the content term directly, the style
term through the Grams G_l = sum_k F_ik F_jk. So one iteration runs two
passes over tiles of the image:

  pass 1: forward each tile, crop every style layer to the tile's core and
          accumulate G_l += F F^T (fp32); then E_l and D_l = G_l - A_l;
  pass 2: forward and backward each tile with the full image's D_l
          (base.tile_step), restricted to the core, and add the tile's
          input gradient into the full gradient at the tile's place.

A core activation is exact when its tile carries a halo of at least half the
receptive field of the deepest layer used, rounded up to the total stride
(VGG19 to relu5_1: 156 px -> 78 -> 80), and the tile's top-left is a
multiple of that stride, so the pooling grids of tile and image agree; zero
padding then only happens at the true image borders. The tile's gradient is
then exact too: the core outputs are the same functions of the same pixels.
Peak memory is bounded by the tile: only the Grams, the full content target,
the image and its gradient live across tiles.

TV is not local to tiles (3 channels, cheap): it is computed on the full
image in closed form. Every loss term comes from engine/losses.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from styleengine.errors import ConfigError
from styleengine.engine.losses import LossConfig, Targets, content_coeffs, gram_style, tv_coefficient, tv_loss_and_grad
from styleengine.engine.steps import Step, StepBase, StepResult, TileableStep, single_targets
from styleengine.model import vgg
from styleengine.engine.memory import STRIDE, halo_for, step_bytes_per_pixel, tile_for_budget  # noqa: F401



@dataclass(frozen=True)
class Tile:
    """One tile: the box read from the image and the core whose loss it owns, in image pixels."""

    top: int
    left: int
    bottom: int
    right: int
    core_top: int
    core_left: int
    core_bottom: int
    core_right: int

    def core_in_tile(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the core in tile pixels (tile_step's `core`)."""
        return (self.core_top - self.top, self.core_left - self.left,
                self.core_bottom - self.top, self.core_right - self.left)


def tiles(height: int, width: int, tile: int, halo: int) -> Iterator[Tile]:
    """Cores of `tile` px (the last row/column of cores ends at the border), each with its halo, row-major."""
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            yield Tile(max(0, top - halo), max(0, left - halo), min(height, bottom + halo),
                       min(width, right + halo), top, left, bottom, right)


class TiledStep(StepBase):
    """Wraps a step that has `features`, `tile_features` and `tile_step` (torch, ORT) and computes the
    same function tile by tile.

    tile: core size in px, a multiple of 16; halo: px read around each core
    (None: half the receptive field of the deepest loss layer, rounded up to 16).
    An image that fits in one core (the early scales of a coarse-to-fine
    run) goes to the base step untiled: same function, no second pass.
    """

    def __init__(self, base: Step, loss: LossConfig, model: str, *, tile: int, halo: int | None = None):
        loss.validate(model)
        if not isinstance(base, TileableStep):
            raise ConfigError(f"the {type(base).__name__} step cannot be tiled (it has no tile_step and tile_features)")
        self.base: TileableStep = base
        if tile <= 0 or tile % STRIDE:
            raise ConfigError(f"tile size must be a positive multiple of {STRIDE} px, got {tile}")
        if halo is not None and (halo < 0 or halo % STRIDE):
            raise ConfigError(f"tile halo must be a multiple of {STRIDE} px >= 0, got {halo}")
        self.loss, self.model, self.tile = loss, model, tile
        base.trim()  # the base's untiled buffers (an earlier scale's) are not needed by tiles
        self.halo = halo_for(model, loss.layers) if halo is None else halo
        self.device = base.device
        self.strides = {layer.name: layer.stride for layer in vgg.layer_table(model)}
        self.channels = {layer.name: layer.out_channels for layer in vgg.layer_table(model)}
        self.targets: Targets | None = None
        self._base_has_targets = False

    @property
    def conv(self) -> str:
        return self.base.conv

    def set_loss(self, loss: LossConfig) -> None:
        super().set_loss(loss)
        self.base.set_loss(loss)  # what an image that fits one core runs
        self._base_has_targets = False

    def _trim(self) -> None:
        self.base.trim()
        self._base_has_targets = False  # a trimmed base takes its targets again when stepped

    def _fits(self, image: torch.Tensor) -> bool:
        return image.shape[2] <= self.tile and image.shape[3] <= self.tile

    # ------------------------------------------------------------ helpers
    def _tiles(self, image: torch.Tensor, halo: int) -> Iterator[tuple[Tile, torch.Tensor]]:
        for t in tiles(image.shape[2], image.shape[3], self.tile, halo):
            yield t, image[:, :, t.top:t.bottom, t.left:t.right]

    def _core(self, t: Tile, name: str, f: torch.Tensor) -> torch.Tensor:
        """Crop a tile's layer map (1, C, h, w) to the tile's core (layer coords = pixel // stride)."""
        s = self.strides[name]
        top, left, bottom, right = t.core_in_tile()
        return f[:, :, top // s: bottom // s, left // s: right // s]

    # ------------------------------------------------------------ Step protocol
    @torch.no_grad()
    def _features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """Each named layer's full map (fp32, on the device), assembled from the tiles' cores."""
        height, width = image.shape[2], image.shape[3]
        if self._fits(image):
            return self.base.features(image, names)
        halo = max(self.halo, halo_for(self.model, names))
        out: dict[str, torch.Tensor] = {}
        for t, x in self._tiles(image, halo):
            feats = self.base.features(x, names)
            for n in names:
                s = self.strides[n]
                if n not in out:
                    out[n] = torch.empty(1, self.channels[n], height // s, width // s, device=self.device)
                out[n][:, :, t.core_top // s: t.core_bottom // s, t.core_left // s: t.core_right // s] = \
                    self._core(t, n, feats[n])
            del feats
        return out

    @torch.no_grad()
    def _grams(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """Gram matrices (C, C) fp32 of the named layers over the whole image, accumulated tile by tile."""
        halo = max(self.halo, halo_for(self.model, names))
        out = {n: torch.zeros(self.channels[n], self.channels[n], device=self.device) for n in names}
        for t, x in self._tiles(image, halo):
            feats = self.base.tile_features(x, names)
            for n in names:
                f = self._core(t, n, feats[n]).float()
                f = f.reshape(f.shape[1], -1)  # (C, M_core)
                out[n].addmm_(f, f.T)  # engine.losses.gram of the core, summed in place
            del feats
        return out

    def _set_targets(self, targets: Targets | list[Targets]) -> None:
        # kept here: tile_step takes its targets per call, the base step never sees full-size ones
        self.targets = single_targets(self, targets).to(self.device)
        self._base_has_targets = False

    def _step(self, image: torch.Tensor) -> StepResult:
        assert self.targets is not None  # the lifecycle's check (StepBase.__call__)
        loss, targets = self.loss, self.targets
        image = image.detach().to(self.device, torch.float32)
        if self._fits(image):
            if not self._base_has_targets:
                self.base.set_targets(self.targets)
                self._base_has_targets = True
            return self.base(image)
        height, width = image.shape[2], image.shape[3]

        # pass 1: the full image's Grams, then E_l and D_l = G_l - A_l
        zero = torch.zeros((), device=self.device)
        style = zero
        diffs: dict[str, torch.Tensor] = {}
        coeffs: dict[str, float] = {}
        if loss.style_layers:
            positions = {n: (height // self.strides[n]) * (width // self.strides[n])  # M_l of the full image
                         for n in loss.style_layers}
            style, diffs, coeffs = gram_style(loss, self._grams(image, list(loss.style_layers)), targets, positions)

        # pass 2: per tile, d(content + style)/d tile over its core, added at the tile's place
        grad = torch.zeros_like(image)
        content = zero
        content_w = content_coeffs(loss, targets)  # c_l of the full image's targets
        for t, x in self._tiles(image, self.halo):
            tile_content = {}
            for n in loss.content_layers:
                s = self.strides[n]
                h, w = (t.bottom - t.top) // s, (t.right - t.left) // s
                tile_content[n] = targets.content[n][:, :, t.top // s: t.top // s + h, t.left // s: t.left // s + w]
            part, g = self.base.tile_step(x, t.core_in_tile(), tile_content, diffs, coeffs, content_w)
            content = content + part
            grad[:, :, t.top:t.bottom, t.left:t.right] += g.to(self.device)
            del g

        tv = zero
        if loss.tv_weight:
            tv_value, tv_grad = tv_loss_and_grad(image)
            tv_weight = tv_coefficient(loss, height, width)
            tv = tv_weight * tv_value
            grad.add_(tv_grad, alpha=tv_weight)
            del tv_grad
        return StepResult(torch.stack([content + style + tv, content, style, tv]).float(), grad)

    def _close(self) -> None:
        self.base.close()


# ---------------------------------------------------------------- tile size from a memory budget

# Bytes per tile pixel of a torch fp32 tile step, on top of the process's
# baseline: autograd keeps each layer's output (conv and ReLU) and the
# backward holds about as much again transiently, so
#   bytes/px = STEP_FACTOR * 4 * sum over layers up to the deepest of C_l / stride_l^2
