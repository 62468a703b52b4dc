"""Winograd 3x3 convolutions for the torch step on the CPU (NNPACK, inside PyTorch's CPU builds).

Every VGG convolution is 3x3, stride 1, padding 1. oneDNN runs them directly
at ~90% of the CPU's fp32 peak, so the direct step cannot get much faster;
NNPACK's Winograd transform F(6x6, 3x3) does 2.25-4x fewer multiplications
and ran VGG19's convolutions at 384x512 in 0.32-0.49x oneDNN's time on a
2-core AVX-512 CPU (benchmarks/results, README). The input gradient of such
a convolution is the same convolution of the output gradient with the
weights flipped in H and W and in/out swapped (what export/graph_ops.py
emits in ONNX), so the backward runs on NNPACK too.

Numerics: the transform rounds differently; one layer is ~4e-6 from float64
(rel L2) where oneDNN's direct convolution is ~2e-7, and the whole step's
gradient 2e-5..9e-5 from float64 with the shared VGG16 (1e-6 direct). The
references (export validation, exactness tests) run `conv="direct"`.

Small maps are left to oneDNN: below ~1024 output positions NNPACK's
per-call overhead wins (512 channels at 8x8: 6x slower). NNPACK's own batch
mode was 2.8x slower than one call per image, so a batch runs image by image, and a large map in
strips of rows (MAX_CALL_ELEMENTS: NNPACK's workspace grows with a call's maps and is never freed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from styleengine.choices import CONV_ALGOS, check_choice

MIN_POSITIONS = 1024  # output H*W from which NNPACK beat oneDNN (32x32: 0.97x; 24x32: 0.91-2.5x; 48x64: 0.43x)
# elements per NNPACK call, counting the input or the output, whichever has more channels. Its workspace holds
# both transformed (~1.8x each) and stays allocated (PyTorch keeps one buffer per thread at its largest size):
# one call on conv1_2's 64x1024x1024 input added 1.2 GB where oneDNN adds 0.5 GB, and conv1_1's 3 -> 64 at
# 384x512 in one call 90 MB. Larger maps go in strips of rows (a one-row halo each): 16 MB a call, 63 MB kept.
# Half that (1 << 21) keeps 32 MB but cost 7.6% of the step at 384x512 (smaller calls run slower).
MAX_CALL_ELEMENTS = 1 << 22


def winograd_available() -> bool:
    """NNPACK is in this torch build and initialises on this CPU (x86 needs AVX2)."""
    return bool(torch.backends.nnpack.is_available())  # also initialises NNPACK, which its calls need


def resolve_conv(conv: str, device: torch.device, dtype: torch.dtype) -> str:
    """"direct" or "winograd" for a torch step, by capability's rule: auto picks Winograd for fp32 on a CPU that
    has NNPACK; Winograd asked for elsewhere is refused there."""
    from styleengine.engine import capability

    check_choice("conv", conv, CONV_ALGOS)
    precision = "fp32" if dtype == torch.float32 else "bf16"
    machine = capability.Machine(nnpack=winograd_available() if device.type == "cpu" else True)
    return capability.rule("torch", device.type, precision, conv, machine)[1]


def _nnpack_image(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, max_elements: int,
                  inplace: bool = False) -> torch.Tensor:
    """One image (1, C, H, W), in strips of rows with a one-row halo when it has over `max_elements`.
    `inplace` (same channels in and out, x not needed afterwards): the strips' results overwrite x, which
    spares a whole map; each strip reads its halo row above from a copy taken before the strip before it
    overwrote that row."""
    _, channels, height, width = x.shape
    rows = max(8, max_elements // (max(channels, weight.shape[0]) * width))  # the workspace holds both
    if rows >= height:
        return torch._nnpack_spatial_convolution(x.contiguous(), weight, bias, [1, 1])
    inplace = inplace and weight.shape[0] == channels and x.is_contiguous()
    y = x if inplace else x.new_empty(1, weight.shape[0], height, width)
    above = None  # in place: input row top - 1 as it was before the previous strip wrote its output there
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        strip = x[:, :, max(top - 1, 0):min(bottom + 1, height)]
        pads = (0, 0, int(top == 0), int(bottom == height))  # the image's own zero padding, top and bottom
        # a copy in place (one channel: a strip of rows is already contiguous, and .contiguous() a view of x)
        strip = F.pad(strip, pads) if any(pads) else strip.clone() if inplace else strip.contiguous()
        if inplace:
            if above is not None:
                strip[:, :, 0] = above
            above = x[:, :, bottom - 1].clone()
        y[:, :, top:bottom] = torch._nnpack_spatial_convolution(strip, weight, bias, [0, 1])  # [pad H, pad W]
    return y


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            max_elements: int = MAX_CALL_ELEMENTS, inplace: bool = False) -> torch.Tensor:
    if x.shape[0] == 1:
        return _nnpack_image(x, weight, bias, max_elements, inplace)
    return torch.cat([_nnpack_image(x[b:b + 1], weight, bias, max_elements) for b in range(x.shape[0])])


class _WinogradConv(torch.autograd.Function):
    """y = conv(x, W) + b; dL/dx = conv(dL/dy, W flipped, transposed). Frozen weights: no weight gradient,
    so nothing of x is kept (autograd's convolution keeps its input); the flipped weights are made when
    the backward needs them (a copy of the layer's weights, ~1% of its time) rather than kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.weight = weight
        return _nnpack(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # in place for a large map (a whole map less at the peak, which is in the first layers' backward):
        # the gradient reaching a convolution here is a MaskedReLU's in-place result or autograd's sum of
        # gradients, used once (a view, e.g. an expanded ones, is never overwritten)
        owned = grad._base is None
        return _nnpack(grad, ctx.weight.flip(2, 3).transpose(0, 1).contiguous(), None, inplace=owned), None, None


class _MaskedReLU(torch.autograd.Function):
    """ReLU keeping one byte per element (not y > 0) for its backward, not the fp32 output: with convolutions
    that keep nothing, a ReLU output is freed once the next layer has read it (unless the loss reads it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if inplace:
            ctx.mark_dirty(x)
            y = x.clamp_min_(0)
        else:
            y = x.clamp_min(0)
        off = y > 0
        ctx.save_for_backward(off.logical_not_())  # where the gradient is zeroed (NaN included, as ReLU's)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # in place: in this network every gradient reaching a ReLU is a fresh tensor (a convolution's, a
        # pool's, a style term's or autograd's sum of them), used once; a view (an expanded ones from a
        # .sum(), a slice) is not, and gets a new tensor. torch.where took twice threshold_backward's time
        # (42 vs 21 ms at 64x384x512); mul_ by the bool mask made an fp32 copy of it first (a whole map at the
        # backward's peak); masked_fill_ makes none
        (off,) = ctx.saved_tensors
        if grad._base is not None or not grad.is_contiguous():
            return grad.masked_fill(off, 0), None
        return grad.masked_fill_(off, 0), None


class _AvgPool2x2(torch.autograd.Function):
    """2x2/2 average pooling that keeps only its input's shape: d/dx is the gradient upsampled, / 4
    (exact in binary), zero on the last row / column an odd size drops (what avg_pool2d_backward gives)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return F.avg_pool2d(x, 2, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        height, width = ctx.shape[2], ctx.shape[3]
        up = F.interpolate(grad, size=(grad.shape[2] * 2, grad.shape[3] * 2), mode="nearest").mul_(0.25)
        if up.shape[2] != height or up.shape[3] != width:
            up = F.pad(up, (0, width - up.shape[3], 0, height - up.shape[2]))
        return up


class MaskedReLU(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return x.clamp_min_(0) if self.inplace else x.clamp_min(0)
        return _MaskedReLU.apply(x, self.inplace)


class AvgPool2x2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return F.avg_pool2d(x, 2, 2)
        return _AvgPool2x2.apply(x)


class WinogradConv3x3(nn.Module):
    """A frozen nn.Conv2d(3x3, stride 1, padding 1) run by NNPACK on maps of MIN_POSITIONS or more, by
    the original convolution (oneDNN) on smaller ones."""

    def __init__(self, conv: nn.Conv2d, min_positions: int = MIN_POSITIONS):
        super().__init__()
        if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1),
                                                                                          (1, 1), 1):
            raise ValueError(f"a Winograd 3x3 convolution cannot replace {conv}")
        self.conv, self.min_positions = conv, min_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < self.min_positions or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.conv(x)
        bias = self.conv.bias
        assert bias is not None  # VGG's convolutions all have one
        return _WinogradConv.apply(x, self.conv.weight.detach(), bias.detach())


def use_winograd(net: nn.Module) -> int:
    """In a frozen network, in place: every 3x3 convolution a WinogradConv3x3, every ReLU a MaskedReLU and
    every 2x2 average pool an AvgPool2x2 (the same values; what the input gradient needs kept, no more:
    0.16 GiB less peak memory at 384x512). The number of convolutions replaced.

    For the image's gradient only: the backward overwrites the gradients of the maps inside the network as
    it goes (ReLU and large-map convolution backwards run in place), so a hook on an inner map or
    autograd.grad asked for one sees them changed; use the direct network (conv="direct") for those."""
    count = 0
    for _, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(module, child_name, WinogradConv3x3(child))
                count += 1
            elif isinstance(child, nn.ReLU):
                setattr(module, child_name, MaskedReLU(child.inplace))
            elif isinstance(child, nn.AvgPool2d) and (child.kernel_size, child.stride, child.padding) == (2, 2, 0):
                setattr(module, child_name, AvgPool2x2())
    return count
