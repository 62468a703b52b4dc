"""ONNX graphs generated from the layer table: a feature graph and the step graph.

The step graph maps (image, targets, loss weights) -> (loss, d loss / d image)
with standard ONNX ops only, so one file runs on ONNX Runtime's CPU, CUDA and
TensorRT providers and in TensorRT itself. Its backward pass is written by
rule, one rule per forward op:

  conv 3x3/s1/p1   grad_in = Conv(grad_out, W flipped in H and W, in/out swapped)
  relu             grad_in = grad_out * (y > 0), the mask kept as one byte
  avg pool 2x2     grad_in = Pad(Resize_nearest(grad_out)) / 4  (Pad: odd sizes;
                   the 1/4 folded into the backward weights of the conv above)
  max pool 2x2     grad_in = Pad(Resize_nearest(grad_out)) * (y == Resize(max))
  Gram style       grad_F  = w / (N^2 M^2) * (G - A) F
  content          grad_F  = alpha * (F - P)
  total variation  grad_x  = 2 (dy[i-1] - dy[i]) + 2 (dx[j-1] - dx[j])

What the backward keeps from the forward pass: one byte per ReLU output that
the gradient crosses (conv inputs are not needed for input gradients), and
the feature maps of the loss layers. Everything else is freed as soon as
the next layer has consumed it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from styleengine.model.vgg import Layer, Pooling, truncated
from styleengine.model.weights import Weights

OPSET = 17  # bf16 Conv needs opset 22
IMAGE = "image"
GRAD = "grad"
LOSS_OUTPUTS = ("loss", "content_loss", "style_loss", "tv_loss")
CONTENT_WEIGHT, STYLE_WEIGHT, STYLE_LAYER_WEIGHTS, TV_WEIGHT = (
    "content_weight", "style_weight", "style_layer_weights", "tv_weight")
DTYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def content_input(name: str) -> str:
    return f"content_target.{name}"


def gram_input(name: str) -> str:
    return f"gram_target.{name}"


@dataclass(frozen=True)
class ExportSpec:
    """The contract between exporter and runtime: what the graphs compute and
    how their inputs and outputs are named. Stored in each file's metadata."""

    model: str
    pooling: Pooling
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    precision: str = "fp32"  # compute type of convolutions; losses and Grams stay fp32
    opset: int = 0  # 0: the lowest opset that has every op in this precision

    def __post_init__(self):
        if not self.opset:
            object.__setattr__(self, "opset", 22 if self.precision == "bf16" else OPSET)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.content_layers + self.style_layers))

    def input_names(self) -> list[str]:
        return ([IMAGE] + [content_input(n) for n in self.content_layers]
                + [gram_input(n) for n in self.style_layers]
                + [CONTENT_WEIGHT, STYLE_WEIGHT, STYLE_LAYER_WEIGHTS, TV_WEIGHT])

    def output_names(self) -> list[str]:
        return list(LOSS_OUTPUTS) + [GRAD]

    def to_json(self) -> dict:
        d = asdict(self)
        d["content_layers"], d["style_layers"] = list(self.content_layers), list(self.style_layers)
        return d


class _Graph:
    """Accumulates nodes, initializers and unique names."""

    def __init__(self, float_type: int):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.float_type = float_type
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str, n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(hint) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, hint: str, dtype=np.float32) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, array: np.ndarray, name: str) -> str:
        if self.float_type == TensorProto.FLOAT16:
            array = array.astype(np.float16)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        if self.float_type == TensorProto.BFLOAT16:
            tensor = helper.make_tensor(name, TensorProto.BFLOAT16, array.shape,
                                        _to_bf16_bits(array).tobytes(), raw=True)
        self.inits.append(tensor)
        return name

    def cast(self, x: str, to: int, hint: str) -> str:
        return x if to == self.float_type and to == TensorProto.FLOAT else self.op("Cast", [x], hint, to=to)


def _to_bf16_bits(array: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def _conv_weights(weights: Weights, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    w = weights.state[f"features.{layer.index}.weight"].numpy()
    b = weights.state[f"features.{layer.index}.bias"].numpy()
    if layer.index == 0:
        # fold the channel order into conv1_1: input channel i holds RGB channel perm[i]
        perm = weights.convention.rgb_permutation()
        w_rgb = np.empty_like(w)
        w_rgb[:, perm] = w
        w = w_rgb
    return w, b


def _metadata(model: onnx.ModelProto, spec: ExportSpec, weights: Weights, kind: str) -> None:
    meta = {"kind": kind, "spec": json.dumps(spec.to_json(), sort_keys=True), "weights_sha256": weights.sha256,
            "weights_source": weights.source, "convention": json.dumps(weights.convention.to_json()),
            "dynamic_axes": json.dumps({IMAGE: {"2": "height", "3": "width"}})}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _forward(g: _Graph, weights: Weights, spec: ExportSpec, keep_masks: bool):
    """Emit preprocessing and the conv stack. Returns the image input name, the
    loss-layer outputs (fp32) and, per layer, what the backward pass needs."""
    ft = g.float_type
    scale, shift = weights.convention.scale_shift()
    x = g.op("Mul", [IMAGE, g.const(np.array(scale).reshape(1, 3, 1, 1), "pre_scale")], "pre_mul")
    h = g.op("Add", [x, g.const(np.array(shift).reshape(1, 3, 1, 1), "pre_shift")], "pre_add")
    if ft != TensorProto.FLOAT:
        h = g.op("Cast", [h], "pre_cast", to=ft)
    wanted = set(spec.layers)
    outputs: dict[str, str] = {}
    saved: dict[str, dict[str, str]] = {}  # per layer name: tensors the backward reads
    layers = truncated(spec.model, spec.layers)
    for pos, layer in enumerate(layers):
        if layer.kind == "conv":
            w, b = _conv_weights(weights, layer)
            h = g.op("Conv", [h, g.weight(w, f"{layer.name}.weight"), g.weight(b, f"{layer.name}.bias")],
                     layer.name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        elif layer.kind == "relu":
            h = g.op("Relu", [h], layer.name)
            nxt = layers[pos + 1] if pos + 1 < len(layers) else None
            if keep_masks and layer.name not in wanted and not (nxt is not None and nxt.kind == "pool" and spec.pooling == "max"):
                # the backward needs only y > 0: one byte instead of four
                saved[layer.name] = {"mask": g.op("Greater", [h, g.const(0, "zero", _np(ft))], f"{layer.name}_mask")}
            else:
                saved[layer.name] = {"y": h}
        else:
            pre = h
            if spec.pooling == "avg":
                h = g.op("AveragePool", [pre], layer.name, kernel_shape=[2, 2], strides=[2, 2])
            else:
                h = g.op("MaxPool", [pre], layer.name, kernel_shape=[2, 2], strides=[2, 2])
            saved[layer.name] = {"in_shape": g.op("Shape", [pre], f"{layer.name}_in_shape")}
            if keep_masks and spec.pooling == "max":
                # route the gradient to the maximum (ties share it: measure zero for real
                # inputs, and zeros are masked by the ReLU below anyway)
                cropped = _crop_even(g, pre, saved[layer.name]["in_shape"], layer.name)
                up = g.op("Resize", [h, "", g.const([1, 1, 2, 2], "up2")], f"{layer.name}_up", mode="nearest")
                eq = g.op("Equal", [cropped, up], f"{layer.name}_argmax")
                relu_name = layers[pos - 1].name
                if relu_name in wanted:
                    saved[layer.name]["mask"] = eq  # the relu keeps y and masks itself
                else:
                    pos_mask = g.op("Greater", [cropped, g.const(0, "zero", _np(ft))], f"{layer.name}_pos")
                    saved[layer.name]["mask"] = g.op("And", [eq, pos_mask], f"{layer.name}_mask")
                    saved[relu_name] = {}  # folded into the pool's mask
        if layer.name in wanted:
            outputs[layer.name] = h if ft == TensorProto.FLOAT else g.op("Cast", [h], f"{layer.name}_f32", to=TensorProto.FLOAT)
    return outputs, saved, layers


def _np(ft: int):
    return {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}.get(ft, np.float32)


def _crop_even(g: _Graph, x: str, shape: str, hint: str) -> str:
    """x[..., :2*(H//2), :2*(W//2)]: the part of a pool's input its windows cover."""
    hw = g.op("Slice", [shape, g.const([2], "i2", np.int64), g.const([4], "i4", np.int64)], f"{hint}_hw")
    even = g.op("Mul", [g.op("Div", [hw, g.const([2], "two", np.int64)], f"{hint}_half"),
                        g.const([2], "two", np.int64)], f"{hint}_even")
    return g.op("Slice", [x, g.const([0, 0], "zeros2", np.int64), even, g.const([2, 3], "axes23", np.int64)],
                f"{hint}_crop")


def _pad_to(g: _Graph, x: str, shape: str, hint: str) -> str:
    """Zero-pad x (N, C, 2h, 2w) at the bottom/right up to `shape` (N, C, H, W)."""
    hw = g.op("Slice", [shape, g.const([2], "i2", np.int64), g.const([4], "i4", np.int64)], f"{hint}_hw")
    xhw = g.op("Slice", [g.op("Shape", [x], f"{hint}_xshape"), g.const([2], "i2", np.int64),
                         g.const([4], "i4", np.int64)], f"{hint}_xhw")
    extra = g.op("Sub", [hw, xhw], f"{hint}_extra")
    pads = g.op("Concat", [g.const([0, 0, 0, 0, 0, 0], "zeros6", np.int64), extra], f"{hint}_pads", axis=0)
    return g.op("Pad", [x, pads], f"{hint}_pad")


def _losses(g: _Graph, spec: ExportSpec, feats: dict[str, str]):
    """Loss terms (fp32 scalars), and per loss layer the functions that emit its
    gradient: called when the backward pass reaches the layer, so that ONNX
    Runtime, which runs nodes in the order they are emitted, computes each
    gradient just before it is consumed rather than holding them all."""
    f32 = TensorProto.FLOAT
    inject: dict[str, list] = {}
    content_terms, style_terms = [], []
    half = g.const(0.5, "half")
    for name in spec.content_layers:
        diff = g.op("Sub", [feats[name], content_input(name)], f"{name}_cdiff")
        content_terms.append(g.op("Mul", [g.op("ReduceSum", [g.op("Mul", [diff, diff], f"{name}_csq")],
                                                f"{name}_csum", keepdims=0), half], f"{name}_closs"))
        inject.setdefault(name, []).append(
            lambda diff=diff, name=name: g.op("Mul", [diff, CONTENT_WEIGHT], f"{name}_cgrad"))
    for i, name in enumerate(spec.style_layers):
        f = feats[name]
        shape = g.op("Shape", [f], f"{name}_shape")
        channels = g.op("Slice", [shape, g.const([1], "i1", np.int64), g.const([2], "i2", np.int64)], f"{name}_c")
        flat = g.op("Reshape", [f, g.op("Concat", [channels, g.const([-1], "m1", np.int64)], f"{name}_cm", axis=0)],
                    f"{name}_flat")  # (C, M)
        gram = g.op("Gemm", [flat, flat], f"{name}_gram", transB=1)  # (C, C)
        diff = g.op("Sub", [gram, gram_input(name)], f"{name}_gdiff")
        chw = g.op("Slice", [shape, g.const([1], "i1", np.int64), g.const([4], "i4", np.int64)], f"{name}_chw")
        nm = g.op("Cast", [g.op("ReduceProd", [chw], f"{name}_nm_i", keepdims=0)], f"{name}_nm", to=f32)  # N*M
        inv_nm2 = g.op("Reciprocal", [g.op("Mul", [nm, nm], f"{name}_nm2")], f"{name}_inv_nm2")
        layer_w = g.op("Gather", [STYLE_LAYER_WEIGHTS, g.const(i, "idx", np.int64)], f"{name}_w", axis=0)
        sq = g.op("ReduceSum", [g.op("Mul", [diff, diff], f"{name}_gsq")], f"{name}_gsum", keepdims=0)
        style_terms.append(g.op("Mul", [g.op("Mul", [sq, inv_nm2], f"{name}_e"),
                                        g.op("Mul", [layer_w, g.const(0.25, "quarter")], f"{name}_wq")],
                                f"{name}_sloss"))
        coeff = g.op("Mul", [g.op("Mul", [layer_w, STYLE_WEIGHT], f"{name}_wb"), inv_nm2], f"{name}_coeff")

        def style_grad(diff=diff, flat=flat, coeff=coeff, shape=shape, name=name):
            grad_flat = g.op("Mul", [g.op("MatMul", [diff, flat], f"{name}_dgf"), coeff], f"{name}_sgradf")
            return g.op("Reshape", [grad_flat, shape], f"{name}_sgrad")

        inject.setdefault(name, []).append(style_grad)
    return content_terms, style_terms, inject


def _sum(g: _Graph, terms: list[str], hint: str) -> str:
    if not terms:
        return g.const(0.0, f"{hint}_zero")
    return terms[0] if len(terms) == 1 else g.op("Sum", terms, hint)


def _tv(g: _Graph) -> tuple[str, str]:
    """Squared-difference total variation of the image and its gradient."""
    big = g.const([2**62], "inf_i", np.int64)
    one, zero, minus1 = g.const([1], "i1", np.int64), g.const([0], "i0", np.int64), g.const([-1], "m1", np.int64)
    total, grads = [], []
    for axis in (2, 3):
        ax = g.const([axis], f"ax{axis}", np.int64)
        d = g.op("Sub", [g.op("Slice", [IMAGE, one, big, ax], f"tv{axis}_hi"),
                         g.op("Slice", [IMAGE, zero, minus1, ax], f"tv{axis}_lo")], f"tv{axis}_d")
        total.append(g.op("ReduceSum", [g.op("Mul", [d, d], f"tv{axis}_sq")], f"tv{axis}_sum", keepdims=0))
        before = [0, 0, 0, 0, 0, 0, 0, 0]
        after = [0, 0, 0, 0, 0, 0, 0, 0]
        before[axis] = 1  # d shifted down: d[i-1] at i
        after[axis + 4] = 1  # d at i, zero at the end
        lo = g.op("Pad", [d, g.const(before, "pad_b", np.int64)], f"tv{axis}_prev")
        hi = g.op("Pad", [d, g.const(after, "pad_a", np.int64)], f"tv{axis}_next")
        grads.append(g.op("Sub", [lo, hi], f"tv{axis}_g"))
    loss = g.op("Add", total, "tv_raw")
    grad = g.op("Mul", [g.op("Add", grads, "tv_g"), g.const(2.0, "two_f")], "tv_grad")
    return loss, grad


def _backward(g: _Graph, weights: Weights, spec: ExportSpec, layers: list[Layer], saved: dict,
              inject: dict[str, list]) -> str | None:
    """Emit the input-gradient pass, deepest layer first; returns d/d(network input)."""
    ft = g.float_type
    grad: str | None = None
    for pos in range(len(layers) - 1, -1, -1):
        layer = layers[pos]
        if layer.name in inject:
            extra = [emit() for emit in inject[layer.name]]
            extra = [i if ft == TensorProto.FLOAT else g.op("Cast", [i], f"{layer.name}_gcast", to=ft) for i in extra]
            grad = _sum(g, ([grad] if grad else []) + extra, f"{layer.name}_gin")
        if grad is None:
            continue
        if layer.kind == "relu":
            keep = saved[layer.name]
            if "mask" in keep:
                mask = keep["mask"]
            elif "y" in keep:
                mask = g.op("Greater", [keep["y"], g.const(0, "zero", _np(ft))], f"{layer.name}_bmask")
            else:
                continue  # folded into the following max pool's mask
            grad = g.op("Mul", [grad, g.op("Cast", [mask], f"{layer.name}_maskf", to=ft)], f"{layer.name}_grad")
        elif layer.kind == "pool":
            up = g.op("Resize", [grad, "", g.const([1, 1, 2, 2], "up2")], f"{layer.name}_gup", mode="nearest")
            if spec.pooling == "avg":
                if layer.name in inject:  # else the 1/4 is folded into the next conv's backward weights
                    up = g.op("Mul", [up, g.const(0.25, "quarter_f", _np(ft))], f"{layer.name}_gavg")
            else:
                up = g.op("Mul", [up, g.op("Cast", [saved[layer.name]["mask"]], f"{layer.name}_maskf", to=ft)],
                          f"{layer.name}_gmax")
            grad = _pad_to(g, up, saved[layer.name]["in_shape"], layer.name)
        else:
            w, _ = _conv_weights(weights, layer)
            w_back = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (Cin, Cout, 3, 3)
            below = layers[pos - 1] if pos else None
            if below is not None and below.kind == "pool" and spec.pooling == "avg" and below.name not in inject:
                w_back = w_back * np.float32(0.25)  # the average pool's 1/4, exact in binary
            grad = g.op("Conv", [grad, g.weight(w_back, f"{layer.name}.weight_grad")], f"{layer.name}_gin",
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return grad


def build_step_graph(weights: Weights, spec: ExportSpec) -> onnx.ModelProto:
    g = _Graph(DTYPES[spec.precision])
    ft = g.float_type
    feats, saved, layers = _forward(g, weights, spec, keep_masks=True)
    content_terms, style_terms, inject = _losses(g, spec, feats)
    content = g.op("Mul", [_sum(g, content_terms, "content_sum"), CONTENT_WEIGHT], "content_loss_w")
    style = g.op("Mul", [_sum(g, style_terms, "style_sum"), STYLE_WEIGHT], "style_loss_w")
    tv_raw, tv_grad = _tv(g)
    tv = g.op("Mul", [tv_raw, TV_WEIGHT], "tv_loss_w")
    g.nodes.append(helper.make_node("Identity", [content], ["content_loss"], name="out_content"))
    g.nodes.append(helper.make_node("Identity", [style], ["style_loss"], name="out_style"))
    g.nodes.append(helper.make_node("Identity", [tv], ["tv_loss"], name="out_tv"))
    g.nodes.append(helper.make_node("Sum", ["content_loss", "style_loss", "tv_loss"], ["loss"], name="out_loss"))

    grad = _backward(g, weights, spec, layers, saved, inject)
    scale, _ = weights.convention.scale_shift()
    image_grad = g.const(np.zeros((1, 3, 1, 1)), "no_grad") if grad is None else grad
    if ft != TensorProto.FLOAT and grad is not None:
        image_grad = g.op("Cast", [image_grad], "grad_f32", to=TensorProto.FLOAT)
    image_grad = g.op("Mul", [image_grad, g.const(np.array(scale).reshape(1, 3, 1, 1), "pre_scale_g")], "grad_pre")
    g.nodes.append(helper.make_node("Add", [image_grad, g.op("Mul", [tv_grad, TV_WEIGHT], "tv_grad_w")], [GRAD],
                                    name="out_grad"))

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(IMAGE, f32, [1, 3, "height", "width"])]
    channels = {l.name: l.out_channels for l in layers}
    for n in spec.content_layers:
        inputs.append(helper.make_tensor_value_info(content_input(n), f32, [1, channels[n], f"{n}_h", f"{n}_w"]))
    for n in spec.style_layers:
        inputs.append(helper.make_tensor_value_info(gram_input(n), f32, [channels[n], channels[n]]))
    inputs += [helper.make_tensor_value_info(CONTENT_WEIGHT, f32, []),
               helper.make_tensor_value_info(STYLE_WEIGHT, f32, []),
               helper.make_tensor_value_info(STYLE_LAYER_WEIGHTS, f32, [len(spec.style_layers)]),
               helper.make_tensor_value_info(TV_WEIGHT, f32, [])]
    outputs = [helper.make_tensor_value_info(n, f32, []) for n in LOSS_OUTPUTS]
    outputs.append(helper.make_tensor_value_info(GRAD, f32, [1, 3, "height", "width"]))
    graph = helper.make_graph(g.nodes, "styleengine_step", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)],
                              producer_name="styleengine")
    model.ir_version = 8
    _metadata(model, spec, weights, "step")
    return model


def build_feature_graph(weights: Weights, spec: ExportSpec) -> onnx.ModelProto:
    """image (1, 3, H, W) in [0, 1] -> the loss layers' activations (fp32)."""
    g = _Graph(DTYPES[spec.precision])
    feats, _, layers = _forward(g, weights, spec, keep_masks=False)
    channels = {l.name: l.out_channels for l in layers}
    outputs = []
    for n in spec.layers:
        g.nodes.append(helper.make_node("Identity", [feats[n]], [n], name=f"out_{n}"))
        outputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, channels[n], f"{n}_h", f"{n}_w"]))
    inputs = [helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, [1, 3, "height", "width"])]
    graph = helper.make_graph(g.nodes, "styleengine_features", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)],
                              producer_name="styleengine")
    model.ir_version = 8
    _metadata(model, spec, weights, "features")
    return model


# --- the tile graph: one tile of an exactly tiled step (engine/tiled.py) ---
CORE_BOX = "core_box"  # int64 [top, left, bottom, right] in tile pixels
STYLE_COEFFS = "style_coeffs"  # (S,) style_weight * w_l / (N_l^2 M_l^2), M_l of the full image
TILE_OUTPUTS = ("content_loss", GRAD)


def gram_diff_input(name: str) -> str:
    return f"gram_diff.{name}"


def _core_mask(g: _Graph, feature: str, stride: int, hint: str) -> str:
    """(1, 1, h, w) float mask of the positions of `feature` inside the core box."""
    shape = g.op("Shape", [feature], f"{hint}_mshape")
    box = g.op("Div", [CORE_BOX, g.const([stride] * 4, f"stride{stride}", np.int64)], f"{hint}_box")
    axes = []
    for axis, (lo_i, hi_i) in ((2, (0, 2)), (3, (1, 3))):
        size = g.op("Gather", [shape, g.const(axis, "axis", np.int64)], f"{hint}_n{axis}", axis=0)
        idx = g.op("Range", [g.const(0, "r0", np.int64), size, g.const(1, "r1", np.int64)], f"{hint}_idx{axis}")
        lo = g.op("Gather", [box, g.const(lo_i, "lo", np.int64)], f"{hint}_lo{axis}", axis=0)
        hi = g.op("Gather", [box, g.const(hi_i, "hi", np.int64)], f"{hint}_hi{axis}", axis=0)
        inside = g.op("And", [g.op("GreaterOrEqual", [idx, lo], f"{hint}_ge{axis}"),
                              g.op("Less", [idx, hi], f"{hint}_lt{axis}")], f"{hint}_in{axis}")
        dims = [1, 1, -1, 1] if axis == 2 else [1, 1, 1, -1]
        axes.append(g.op("Reshape", [g.op("Cast", [inside], f"{hint}_f{axis}", to=TensorProto.FLOAT),
                                     g.const(dims, "dims", np.int64)], f"{hint}_m{axis}"))
    return g.op("Mul", axes, f"{hint}_mask")


def build_tile_graph(weights: Weights, spec: ExportSpec) -> onnx.ModelProto:
    """(tile, core box, content targets over the tile, the full image's G - A, style
    coefficients, alpha) -> (content loss over the core, d(content + style)/d tile).

    The same forward and backward as the step graph; only the loss differs:
    each loss layer counts the core positions only, and the style gradient
    uses the Gram of the whole image (1/2 tr(F^T D F) has gradient D F).
    """
    g = _Graph(DTYPES[spec.precision])
    feats, saved, layers = _forward(g, weights, spec, keep_masks=True)
    strides = {l.name: l.stride for l in layers}
    inject: dict[str, list] = {}
    content_terms = []
    for name in spec.content_layers:
        mask = _core_mask(g, feats[name], strides[name], f"{name}_c")
        diff = g.op("Mul", [g.op("Sub", [feats[name], content_input(name)], f"{name}_cdiff"), mask], f"{name}_cdm")
        content_terms.append(g.op("ReduceSum", [g.op("Mul", [diff, diff], f"{name}_csq")], f"{name}_csum", keepdims=0))
        inject.setdefault(name, []).append(
            lambda diff=diff, name=name: g.op("Mul", [diff, CONTENT_WEIGHT], f"{name}_cgrad"))
    for i, name in enumerate(spec.style_layers):
        f = feats[name]

        def style_grad(f=f, name=name, i=i):
            mask = _core_mask(g, f, strides[name], f"{name}_s")
            shape = g.op("Shape", [f], f"{name}_shape")
            channels = g.op("Slice", [shape, g.const([1], "i1", np.int64), g.const([2], "i2", np.int64)], f"{name}_c")
            flat = g.op("Reshape", [g.op("Mul", [f, mask], f"{name}_fm"),
                                    g.op("Concat", [channels, g.const([-1], "m1", np.int64)], f"{name}_cm", axis=0)],
                        f"{name}_flat")  # (C, M_tile), zero outside the core
            coeff = g.op("Gather", [STYLE_COEFFS, g.const(i, "idx", np.int64)], f"{name}_coeff", axis=0)
            grad_flat = g.op("Mul", [g.op("MatMul", [gram_diff_input(name), flat], f"{name}_dgf"), coeff],
                             f"{name}_sgradf")
            return g.op("Reshape", [grad_flat, shape], f"{name}_sgrad")

        inject.setdefault(name, []).append(style_grad)
    half = g.const(0.5, "half")
    content = g.op("Mul", [g.op("Mul", [_sum(g, content_terms, "content_sum"), half], "content_half"),
                           CONTENT_WEIGHT], "content_loss_w")
    g.nodes.append(helper.make_node("Identity", [content], ["content_loss"], name="out_content"))
    grad = _backward(g, weights, spec, layers, saved, inject)
    scale, _ = weights.convention.scale_shift()
    if grad is None:
        grad = g.op("Mul", [IMAGE, g.const(0.0, "zero_f")], "no_grad")
    elif g.float_type != TensorProto.FLOAT:
        grad = g.op("Cast", [grad], "grad_f32", to=TensorProto.FLOAT)
    g.nodes.append(helper.make_node("Mul", [grad, g.const(np.array(scale).reshape(1, 3, 1, 1), "pre_scale_g")],
                                    [GRAD], name="out_grad"))
    f32 = TensorProto.FLOAT
    channels = {l.name: l.out_channels for l in layers}
    inputs = [helper.make_tensor_value_info(IMAGE, f32, [1, 3, "height", "width"]),
              helper.make_tensor_value_info(CORE_BOX, TensorProto.INT64, [4])]
    for n in spec.content_layers:
        inputs.append(helper.make_tensor_value_info(content_input(n), f32, [1, channels[n], f"{n}_h", f"{n}_w"]))
    for n in spec.style_layers:
        inputs.append(helper.make_tensor_value_info(gram_diff_input(n), f32, [channels[n], channels[n]]))
    inputs += [helper.make_tensor_value_info(STYLE_COEFFS, f32, [len(spec.style_layers)]),
               helper.make_tensor_value_info(CONTENT_WEIGHT, f32, [])]
    outputs = [helper.make_tensor_value_info("content_loss", f32, []),
               helper.make_tensor_value_info(GRAD, f32, [1, 3, "height", "width"])]
    graph = helper.make_graph(g.nodes, "styleengine_tile_step", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], producer_name="styleengine")
    model.ir_version = 8
    _metadata(model, spec, weights, "tile_step")
    return model
