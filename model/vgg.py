"""The VGG layer table (torch-free: settings are checked against it without torch).

One table per architecture; everything else (the torch module in model/network.py, the FLOP
count, the ONNX step graph, the receptive field) is derived from it, so a
new model is a new table, not a new code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from styleengine import choices

Kind = Literal["conv", "relu", "pool"]
Pooling = Literal["avg", "max"]

# channels per block; "M" is a 2x2 stride-2 pool (torchvision's cfg notation)
_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
MODELS = tuple(_CFGS)
assert set(MODELS) == set(choices.MODELS), "styleengine.choices.MODELS names every layer table"


@dataclass(frozen=True)
class Layer:
    name: str  # conv3_2, relu3_2, pool3
    kind: Kind
    index: int  # position in torchvision's `features` Sequential
    in_channels: int
    out_channels: int
    stride: int  # total downsampling of this layer's output w.r.t. the image


def layer_table(model: str) -> list[Layer]:
    """Every layer of `model`'s convolutional stack, in execution order."""
    if model not in _CFGS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    layers: list[Layer] = []
    block, conv, channels, stride = 1, 1, 3, 1
    for entry in _CFGS[model]:
        if entry == "M":
            stride *= 2
            layers.append(Layer(f"pool{block}", "pool", len(layers), channels, channels, stride))
            block, conv = block + 1, 1
            continue
        layers.append(Layer(f"conv{block}_{conv}", "conv", len(layers), channels, int(entry), stride))
        layers.append(Layer(f"relu{block}_{conv}", "relu", len(layers), int(entry), int(entry), stride))
        channels, conv = int(entry), conv + 1
    return layers


def layer_names(model: str) -> list[str]:
    return [layer.name for layer in layer_table(model)]


def resolve(model: str, names: list[str]) -> list[Layer]:
    """Look up layers by name; an unknown name is a ValueError naming it."""
    by_name = {layer.name: layer for layer in layer_table(model)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown layer {unknown[0]!r} for {model}; layers are named like conv4_2, relu4_2, pool4")
    return [by_name[n] for n in names]


def channels(name: str) -> int:
    """The channels of layer `name`, the same in every table (ValueError: no table has it)."""
    found = {layer.out_channels for model in MODELS for layer in layer_table(model) if layer.name == name}
    if not found:
        raise ValueError(f"unknown layer {name!r}; layers are named like conv4_2, relu4_2, pool4")
    assert len(found) == 1, f"{name} has {sorted(found)} channels across the tables"
    return found.pop()


def truncated(model: str, names: list[str]) -> list[Layer]:
    """The table cut after the deepest of `names` (nothing deeper is computed)."""
    deepest = max(layer.index for layer in resolve(model, names))
    return layer_table(model)[: deepest + 1]


def conv_weight_keys(model: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """torchvision state-dict key -> (layer name, expected shape), convs only."""
    keys: dict[str, tuple[str, tuple[int, ...]]] = {}
    for layer in layer_table(model):
        if layer.kind == "conv":
            keys[f"features.{layer.index}.weight"] = (layer.name, (layer.out_channels, layer.in_channels, 3, 3))
            keys[f"features.{layer.index}.bias"] = (layer.name, (layer.out_channels,))
    return keys


def gflop(model: str, content: list[str], style: list[str], height: int, width: int) -> dict[str, float]:
    """GFLOP (2 per multiply-add) of one loss-and-gradient iteration.

    forward: the convolutions up to the deepest loss layer; backward: their
    input-gradient convolutions, the same count (conv1_1's is the image
    gradient itself); gram: G = F F^T and the style gradient (G - A) F,
    2 C^2 M each, per style layer. Pointwise ops are not counted.
    """
    fwd = gram = 0.0
    h, w = height, width
    style_set = set(style)
    for layer in truncated(model, content + style):
        if layer.kind == "pool":
            h, w = h // 2, w // 2
        elif layer.kind == "conv":
            fwd += 2.0 * 9 * layer.in_channels * layer.out_channels * h * w
        if layer.name in style_set:
            gram += 2 * 2.0 * layer.out_channels**2 * h * w
    return {"forward": fwd / 1e9, "backward": fwd / 1e9, "gram": gram / 1e9,
            "total": (2 * fwd + gram) / 1e9}


def receptive_field(model: str, name: str) -> int:
    """Receptive field in pixels of one unit of layer `name`."""
    rf, jump = 1, 1
    for layer in truncated(model, [name]):
        if layer.kind == "conv":
            rf += 2 * jump
        elif layer.kind == "pool":
            rf += jump
            jump *= 2
    return rf
