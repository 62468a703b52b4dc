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
mode was 2.8x slower than one call per image, so a batch runs image by image.
"""
from __future__ import annotations

import torch
from torch import nn

from styleengine.choices import CONV_ALGOS, check_choice
from styleengine.errors import ConfigError, UnavailableError

MIN_POSITIONS = 1024  # output H*W from which NNPACK beat oneDNN (32x32: 0.97x; 24x32: 0.91-2.5x; 48x64: 0.43x)


def winograd_available() -> bool:
    """NNPACK is in this torch build and initialises on this CPU (x86 needs AVX2)."""
    return bool(torch.backends.nnpack.is_available())  # also initialises NNPACK, which its calls need


def resolve_conv(conv: str, device: torch.device, dtype: torch.dtype) -> str:
    """"direct" or "winograd" for a torch step: auto picks Winograd for fp32 on a CPU that has NNPACK."""
    check_choice("conv", conv, CONV_ALGOS)
    fits = device.type == "cpu" and dtype == torch.float32
    if conv == "auto":
        return "winograd" if fits and winograd_available() else "direct"
    if conv == "winograd":
        if not fits:
            raise ConfigError("--conv winograd runs fp32 on the CPU (NNPACK); use --conv direct or auto here")
        if not winograd_available():
            raise UnavailableError("--conv winograd: this torch build or CPU has no NNPACK (x86 needs AVX2); "
                                   "use --conv direct")
    return conv


def _nnpack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.shape[0] == 1:
        return torch._nnpack_spatial_convolution(x.contiguous(), weight, bias, [1, 1])
    return torch.cat([torch._nnpack_spatial_convolution(x[b:b + 1].contiguous(), weight, bias, [1, 1])
                      for b in range(x.shape[0])])


class _WinogradConv(torch.autograd.Function):
    """y = conv(x, W) + b; dL/dx = conv(dL/dy, W flipped, transposed). Frozen weights: no weight gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, weight_back: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        ctx.weight_back = weight_back
        return _nnpack(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _nnpack(grad, ctx.weight_back, None), None, None, None


class WinogradConv3x3(nn.Module):
    """A frozen nn.Conv2d(3x3, stride 1, padding 1) run by NNPACK on maps of MIN_POSITIONS or more, by
    the original convolution (oneDNN) on smaller ones."""

    def __init__(self, conv: nn.Conv2d, min_positions: int = MIN_POSITIONS):
        super().__init__()
        if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != ((3, 3), (1, 1), (1, 1),
                                                                                          (1, 1), 1):
            raise ValueError(f"a Winograd 3x3 convolution cannot replace {conv}")
        self.conv, self.min_positions = conv, min_positions
        weight = conv.weight.detach()
        self.register_buffer("weight_back", weight.flip(2, 3).transpose(0, 1).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < self.min_positions or x.dtype != torch.float32 or x.device.type != "cpu":
            return self.conv(x)
        return _WinogradConv.apply(x, self.conv.weight.detach(), self.weight_back, self.conv.bias.detach())


def use_winograd(net: nn.Module) -> int:
    """Replace every 3x3 convolution of a frozen network (an nn.Sequential `features`) in place; the count."""
    count = 0
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(module, child_name, WinogradConv3x3(child))
                count += 1
    return count
