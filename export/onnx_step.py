"""The three ONNX graphs, generated from the layer table with standard ops only,
so one file runs on ONNX Runtime's CPU, CUDA and TensorRT providers and in
TensorRT itself:

  features   image -> the loss layers' activations (targets)
  step       (image, targets, loss weights) -> (loss terms, d loss / d image)
  tile step  (tile, core box, the full image's G - A, ...) -> (content loss, grad)

The forward and backward passes are shared (graph_ops.py); this module adds
the losses and their gradients:

  Gram style       grad_F  = w / (N^2 M^2) * (G - A) F
  content          grad_F  = alpha c_l * (F - P)
  total variation  grad_x  = 2 (dy[i-1] - dy[i]) + 2 (dx[j-1] - dx[j])

A graph cannot call torch, so each term is written here again by hand; the
definition is engine/losses.py, and tests/test_loss_terms.py checks both
graphs against it term by term (value and gradient).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from styleengine.export.graph_ops import F32, Graph, backward, forward, sum_terms
from styleengine.export.spec import (CONTENT_COEFFS, CORE_BOX, DTYPES, DYNAMIC_AXES, GRAD, IMAGE, LOSS_OUTPUTS,
                                     STYLE_COEFFS, STYLE_LAYER_WEIGHTS, STYLE_WEIGHT, TV_WEIGHT, ExportSpec,
                                     content_input, gram_diff_input, gram_input, ir_version)
from styleengine.model.weights import Weights

__all__ = ["ExportSpec", "build_feature_graph", "build_step_graph", "build_tile_graph", "graph_claims"]


def graph_claims(spec: ExportSpec, weights: Weights, kind: str) -> dict[str, str]:
    """What a graph says it is in its metadata (kind: step, features or tile_step), compared on every use of a
    cached graph (export/cache.py): the weights' file may move, so its source is not among them."""
    return {"kind": kind, "spec": json.dumps(spec.to_json(), sort_keys=True), "weights_sha256": weights.sha256,
            "convention": json.dumps(weights.convention.to_json())}


def _model(g: Graph, name: str, inputs, outputs, spec: ExportSpec, weights: Weights, kind: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], producer_name="styleengine")
    model.ir_version = ir_version(spec.opset)
    meta = {**graph_claims(spec, weights, kind), "weights_source": weights.source,
            "dynamic_axes": json.dumps(DYNAMIC_AXES)}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def _image_info(name: str = IMAGE):
    return helper.make_tensor_value_info(name, F32, [1, 3, "height", "width"])


def _feature_info(name: str, channels: int, layer: str):
    return helper.make_tensor_value_info(name, F32, [1, channels, f"{layer}_h", f"{layer}_w"])


def _content_coeff(g: Graph, i: int, name: str) -> str:
    """alpha c_l of the i-th content layer, a scalar from the CONTENT_COEFFS input."""
    return g.op("Gather", [CONTENT_COEFFS, g.const(i, "idx", np.int64)], f"{name}_ccoeff", axis=0)


def _losses(g: Graph, spec: ExportSpec, feats: dict[str, str]):
    """Loss terms (fp32 scalars), and per loss layer the functions that emit its gradient (backward's inject)."""
    inject: dict[str, list] = {}
    content_terms, style_terms = [], []
    half = g.const(0.5, "half")
    for i, name in enumerate(spec.content_layers):  # by hand: engine.losses.content_loss times alpha c_l
        diff = g.op("Sub", [feats[name], content_input(name)], f"{name}_cdiff")
        coeff = _content_coeff(g, i, name)
        content_terms.append(g.op("Mul", [g.op("Mul", [g.op("ReduceSum", [g.op("Mul", [diff, diff], f"{name}_csq")],
                                                            f"{name}_csum", keepdims=0), half], f"{name}_closs"),
                                          coeff], f"{name}_closs_w"))
        inject.setdefault(name, []).append(
            lambda diff=diff, name=name, coeff=coeff: g.op("Mul", [diff, coeff], f"{name}_cgrad"))
    for i, name in enumerate(spec.style_layers):  # by hand: engine.losses.style_layer_loss, style_grad_coeff
        f = feats[name]
        shape = g.op("Shape", [f], f"{name}_shape")
        channels = g.op("Slice", [shape, g.const([1], "i1", np.int64), g.const([2], "i2", np.int64)], f"{name}_c")
        flat = g.op("Reshape", [f, g.op("Concat", [channels, g.const([-1], "m1", np.int64)], f"{name}_cm", axis=0)],
                    f"{name}_flat")  # (C, M)
        gram = g.op("Gemm", [flat, flat], f"{name}_gram", transB=1)  # (C, C)
        diff = g.op("Sub", [gram, gram_input(name)], f"{name}_gdiff")
        chw = g.op("Slice", [shape, g.const([1], "i1", np.int64), g.const([4], "i4", np.int64)], f"{name}_chw")
        nm = g.op("Cast", [g.op("ReduceProd", [chw], f"{name}_nm_i", keepdims=0)], f"{name}_nm", to=F32)  # N*M
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


def _tv(g: Graph) -> tuple[str, str]:
    """Squared-difference total variation of the image and its gradient (by hand: engine.losses.tv_loss_and_grad)."""
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


def _preprocess_grad(g: Graph, weights: Weights, grad: str) -> str:
    """d/d image from d/d network input: the chain rule through the per-channel scale."""
    scale, _ = weights.convention.scale_shift()
    return g.op("Mul", [grad, g.const(np.array(scale).reshape(1, 3, 1, 1), "pre_scale_g")], "grad_pre")


def build_step_graph(weights: Weights, spec: ExportSpec) -> onnx.ModelProto:
    g = Graph(DTYPES[spec.precision])
    feats, saved, layers = forward(g, weights, spec, keep_masks=True)
    content_terms, style_terms, inject = _losses(g, spec, feats)
    content = sum_terms(g, content_terms, "content_sum")
    style = g.op("Mul", [sum_terms(g, style_terms, "style_sum"), STYLE_WEIGHT], "style_loss_w")
    tv_raw, tv_grad = _tv(g)
    tv = g.op("Mul", [tv_raw, TV_WEIGHT], "tv_loss_w")
    g.output("Identity", [content], "content_loss")
    g.output("Identity", [style], "style_loss")
    g.output("Identity", [tv], "tv_loss")
    g.output("Sum", ["content_loss", "style_loss", "tv_loss"], "loss")

    grad = backward(g, weights, spec, layers, saved, inject)
    image_grad = _preprocess_grad(g, weights, g.const(np.zeros((1, 3, 1, 1)), "no_grad") if grad is None else grad)
    g.output("Add", [image_grad, g.op("Mul", [tv_grad, TV_WEIGHT], "tv_grad_w")], GRAD)

    channels = {layer.name: layer.out_channels for layer in layers}
    inputs = [_image_info()]
    inputs += [_feature_info(content_input(n), channels[n], n) for n in spec.content_layers]
    inputs += [helper.make_tensor_value_info(gram_input(n), F32, [channels[n], channels[n]])
               for n in spec.style_layers]
    if spec.content_layers:
        inputs.append(helper.make_tensor_value_info(CONTENT_COEFFS, F32, [len(spec.content_layers)]))
    inputs += [helper.make_tensor_value_info(STYLE_WEIGHT, F32, []),
               helper.make_tensor_value_info(STYLE_LAYER_WEIGHTS, F32, [len(spec.style_layers)]),
               helper.make_tensor_value_info(TV_WEIGHT, F32, [])]
    outputs = [helper.make_tensor_value_info(n, F32, []) for n in LOSS_OUTPUTS] + [_image_info(GRAD)]
    return _model(g, "styleengine_step", inputs, outputs, spec, weights, "step")


def build_feature_graph(weights: Weights, spec: ExportSpec) -> onnx.ModelProto:
    """image (1, 3, H, W) in [0, 1] -> the loss layers' activations (fp32)."""
    g = Graph(DTYPES[spec.precision])
    feats, _, layers = forward(g, weights, spec, keep_masks=False)
    channels = {layer.name: layer.out_channels for layer in layers}
    for n in spec.layers:
        g.output("Identity", [feats[n]], n)
    outputs = [_feature_info(n, channels[n], n) for n in spec.layers]
    return _model(g, "styleengine_features", [_image_info()], outputs, spec, weights, "features")


def _core_mask(g: Graph, feature: str, stride: int, hint: str) -> str:
    """(1, 1, h, w) fp32 mask of the positions of `feature` inside the core box."""
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
        axes.append(g.op("Reshape", [g.op("Cast", [inside], f"{hint}_f{axis}", to=F32),
                                     g.const(dims, "dims", np.int64)], f"{hint}_m{axis}"))
    return g.op("Mul", axes, f"{hint}_mask")


def build_tile_graph(weights: Weights, spec: ExportSpec) -> onnx.ModelProto:
    """(tile, core box, content targets over the tile, the full image's G - A, style
    coefficients, alpha) -> (content loss over the core, d(content + style)/d tile).

    The same forward and backward as the step graph; only the loss differs:
    each loss layer counts the core positions only, and the style gradient
    uses the Gram of the whole image (1/2 tr(F^T D F) has gradient D F).
    """
    g = Graph(DTYPES[spec.precision])
    feats, saved, layers = forward(g, weights, spec, keep_masks=True)
    strides = {layer.name: layer.stride for layer in layers}
    inject: dict[str, list] = {}
    content_terms = []
    for i, name in enumerate(spec.content_layers):  # by hand: engine.losses.content_loss over the core
        mask = _core_mask(g, feats[name], strides[name], f"{name}_c")
        diff = g.op("Mul", [g.op("Sub", [feats[name], content_input(name)], f"{name}_cdiff"), mask], f"{name}_cdm")
        coeff = _content_coeff(g, i, name)
        content_terms.append(g.op("Mul", [g.op("ReduceSum", [g.op("Mul", [diff, diff], f"{name}_csq")],
                                                f"{name}_csum", keepdims=0), coeff], f"{name}_csum_w"))
        inject.setdefault(name, []).append(
            lambda diff=diff, name=name, coeff=coeff: g.op("Mul", [diff, coeff], f"{name}_cgrad"))
    for i, name in enumerate(spec.style_layers):
        f = feats[name]

        def style_grad(f=f, name=name, i=i):  # by hand: engine.losses.style_grad_surrogate's gradient
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
    content = g.op("Mul", [sum_terms(g, content_terms, "content_sum"), half], "content_half")
    g.output("Identity", [content], "content_loss")
    grad = backward(g, weights, spec, layers, saved, inject)
    if grad is None:
        grad = g.op("Mul", [IMAGE, g.const(0.0, "zero_f")], "no_grad")
    scale, _ = weights.convention.scale_shift()
    g.output("Mul", [grad, g.const(np.array(scale).reshape(1, 3, 1, 1), "pre_scale_g")], GRAD)

    channels = {layer.name: layer.out_channels for layer in layers}
    inputs = [_image_info(), helper.make_tensor_value_info(CORE_BOX, TensorProto.INT64, [4])]
    inputs += [_feature_info(content_input(n), channels[n], n) for n in spec.content_layers]
    inputs += [helper.make_tensor_value_info(gram_diff_input(n), F32, [channels[n], channels[n]])
               for n in spec.style_layers]
    inputs += [helper.make_tensor_value_info(STYLE_COEFFS, F32, [len(spec.style_layers)])]
    if spec.content_layers:
        inputs.append(helper.make_tensor_value_info(CONTENT_COEFFS, F32, [len(spec.content_layers)]))
    outputs = [helper.make_tensor_value_info("content_loss", F32, []), _image_info(GRAD)]
    return _model(g, "styleengine_tile_step", inputs, outputs, spec, weights, "tile_step")
