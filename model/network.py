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

    def spread(self, devices: list[torch.device], split_at: list[str] | None = None) -> None:
        """Run the layers from split_at[i] on devices[i + 1] (the ones before on devices[0]); the activations
        asked for come back to devices[0]. split_at None: the convolutions shared evenly (in order)."""
        names = [layer.name for layer in self.layers]
        if split_at is None:
            convs = [i for i, layer in enumerate(self.layers) if layer.kind == "conv"]
            starts = [convs[len(convs) * k // len(devices)] for k in range(1, len(devices))]
        else:
            starts = [names.index(n) for n in split_at if n in names]  # a split past the deepest layer: unused
        bounds = [0, *starts, len(self.layers)]
        self.hand_over = {}
        for device, start, end in zip(devices, bounds, bounds[1:]):
            if start >= end:
                continue
            self.hand_over[start] = device
            for module in list(self.features)[start:end]:
                module.to(device)
        self.home = devices[0]

    hand_over: dict[int, torch.device] = {}  # layer index -> the device its activation is computed on
    home: torch.device | None = None  # where a spread network's outputs go back to

    def forward(self, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) network input -> {name: activation} for `names`."""
        wanted, out = set(names), {}
        for index, (layer, module) in enumerate(zip(self.layers, self.features)):
            if index in self.hand_over:
                x = x.to(self.hand_over[index])
            x = module(x)
            if layer.name in wanted:
                out[layer.name] = x if self.home is None else x.to(self.home)
        return out
