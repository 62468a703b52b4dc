"""The export spec: the contract between the graph builders and the runtimes.

What the graphs compute (model, pooling, loss layers, precision, opset) and
how their inputs and outputs are named. Runtimes read names from here,
never from string literals of their own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from onnx import TensorProto, helper

from styleengine.model.vgg import Pooling

# the lowest opset with every op the graphs use in that precision: Conv,
# AveragePool and MaxPool take bfloat16 from opset 22 on
OPSETS = {"fp32": 17, "fp16": 17, "bf16": 22}
DTYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}

IMAGE = "image"
GRAD = "grad"
LOSS_OUTPUTS = ("loss", "content_loss", "style_loss", "tv_loss")
STYLE_WEIGHT, STYLE_LAYER_WEIGHTS, TV_WEIGHT = "style_weight", "style_layer_weights", "tv_weight"
# (C,) per content layer alpha * c_l (engine.losses.content_coeffs: the weighting's factor is the caller's);
# both the step and the tile graph take it, and neither has it without content layers
CONTENT_COEFFS = "content_coeffs"
# the tile graph's own inputs and outputs (engine/tiled.py)
CORE_BOX = "core_box"  # int64 [top, left, bottom, right] in tile pixels
STYLE_COEFFS = "style_coeffs"  # (S,) style_weight * w_l / (N_l^2 M_l^2), M_l of the full image
TILE_OUTPUTS = ("content_loss", GRAD)
DYNAMIC_AXES = {IMAGE: {"2": "height", "3": "width"}}


def content_input(name: str) -> str:
    return f"content_target.{name}"


def gram_input(name: str) -> str:
    return f"gram_target.{name}"


def gram_diff_input(name: str) -> str:
    return f"gram_diff.{name}"


def ir_version(opset: int) -> int:
    """The IR version an opset needs (17: 8, 22: 10): the oldest runtime that knows the opset can load it."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


@dataclass(frozen=True)
class ExportSpec:
    """What the graphs compute and how their inputs and outputs are named. Stored in each file's metadata."""

    model: str
    pooling: Pooling
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    precision: str = "fp32"  # compute type of convolutions; losses and Grams stay fp32
    opset: int = 0  # 0: the lowest opset that has every op in this precision (OPSETS)
    # "direct": Conv nodes (every runtime's own algorithm: cuDNN, TensorRT, MLAS); "winograd": F(4x4, 3x3) in
    # standard ops for the convolutions with >= 128 channels in and out (export/winograd.py), fp32 only
    conv: str = "direct"

    def __post_init__(self):
        if not self.opset:
            object.__setattr__(self, "opset", OPSETS[self.precision])
        if self.conv not in ("direct", "winograd"):
            raise ValueError(f"graph convolutions are direct or winograd, not {self.conv!r}")
        if self.conv == "winograd" and self.precision != "fp32":
            raise ValueError("Winograd graphs are fp32 (its transforms lose too much in fp16/bf16)")

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.content_layers + self.style_layers))

    def input_names(self) -> list[str]:
        return ([IMAGE] + [content_input(n) for n in self.content_layers]
                + [gram_input(n) for n in self.style_layers]
                + ([CONTENT_COEFFS] if self.content_layers else []) + [STYLE_WEIGHT, STYLE_LAYER_WEIGHTS, TV_WEIGHT])

    def output_names(self) -> list[str]:
        return list(LOSS_OUTPUTS) + [GRAD]

    def to_json(self) -> dict:
        d = asdict(self)
        d["content_layers"], d["style_layers"] = list(self.content_layers), list(self.style_layers)
        return d
