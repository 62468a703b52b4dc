"""The torch feature network derived from the layer table (model/vgg.py)."""
from __future__ import annotations

import torch
from torch import nn

from styleengine.model.vgg import Pooling, truncated


class VGGFeatures(nn.Module):
    """VGG convolution stack truncated after the deepest layer asked for.

    Keys match torchvision (`features.N.weight`) so checkpoints load as is.
    Average pooling is the paper's choice ("improves the gradient flow");
    max pooling is torchvision's and neural-style's default.
    """

    def __init__(self, model: str, names: list[str], pooling: Pooling = "avg"):
        super().__init__()
        if pooling not in ("avg", "max"):
            raise ValueError(f"unknown pooling {pooling!r}; choose avg or max")
        self.model, self.pooling = model, pooling
        self.layers = truncated(model, names)
        modules: list[nn.Module] = []
        wanted = set(names)
        for previous, layer in zip([None, *self.layers], self.layers):
            if layer.kind == "conv":
                modules.append(nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1))
            elif layer.kind == "relu":
                # in place (no second activation per layer) unless the conv output it overwrites is asked for
                modules.append(nn.ReLU(inplace=previous is None or previous.name not in wanted))
            else:
                modules.append(nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*modules)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) network input -> {name: activation} for `names`."""
        wanted, out = set(names), {}
        for layer, module in zip(self.layers, self.features):
            x = module(x)
            if layer.name in wanted:
                out[layer.name] = x
        return out
