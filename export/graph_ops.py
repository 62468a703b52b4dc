"""The op-level builder shared by every graph: preprocessing, the VGG forward
pass and its input-gradient backward pass, written by rule, one rule per
forward op:

  conv 3x3/s1/p1   grad_in = Conv(grad_out, W flipped in H and W, in/out swapped)
  relu             grad_in = grad_out * (y > 0), the mask kept as one byte
  avg pool 2x2     grad_in = Pad(Resize_nearest(grad_out)) / 4  (Pad: odd sizes;
                   the 1/4 folded into the backward weights of the conv above)
  max pool 2x2     grad_in = Pad(Resize_nearest(grad_out)) * (y == Resize(max))

What the backward keeps from the forward pass: one byte per ReLU output that
the gradient crosses (conv inputs are not needed for input gradients), and
the feature maps of the loss layers. Everything else is freed as soon as
the next layer has consumed it.

Types: the convolutions and everything between them run in the graph's
float type (fp32, fp16 or bf16); the image, the loss-layer outputs and all
loss arithmetic are fp32. Every constant that meets an activation is made
in the activation's type (`Graph.fconst`): ONNX binds both inputs of an
elementwise op to one type.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from styleengine.export import winograd
from styleengine.export.spec import IMAGE, ExportSpec
from styleengine.model.vgg import Layer, truncated
from styleengine.model.weights import Weights

F32 = TensorProto.FLOAT


class Graph:
    """Accumulates nodes, initializers and unique names for one graph of float type `float_type`."""

    def __init__(self, float_type: int):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.float_type = float_type
        self._count = 0
        self._shared: dict[str, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def output(self, op_type: str, inputs: list[str], name: str) -> None:
        """A node whose output is the graph output `name`."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"out_{name}"))

    def const(self, value, hint: str, dtype=np.float32) -> str:
        """A constant of a numpy dtype (fp32 loss arithmetic, int64 shapes)."""
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def fconst(self, value, hint: str) -> str:
        """A constant in the graph's float type, for arithmetic on activations."""
        return self._float_tensor(np.asarray(value, np.float32), self.name(hint))

    def weight(self, array: np.ndarray, name: str) -> str:
        return self._float_tensor(array, name)

    def shared(self, key: str, make) -> str:
        """One float initializer per key, made by make() the first time (weights both passes read)."""
        if key not in self._shared:
            self._shared[key] = self._float_tensor(make(), key)
        return self._shared[key]

    def _float_tensor(self, array: np.ndarray, name: str) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self.float_type == TensorProto.BFLOAT16:  # numpy has no bfloat16: raw bits
            tensor = helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, _to_bf16_bits(array).tobytes(),
                                        raw=True)
        elif self.float_type == TensorProto.FLOAT16:
            tensor = numpy_helper.from_array(array.astype(np.float16), name)
        else:
            tensor = numpy_helper.from_array(array, name)
        self.inits.append(tensor)
        return name

    def to_float(self, x: str, hint: str) -> str:
        """x (fp32) in the graph's float type."""
        return x if self.float_type == F32 else self.op("Cast", [x], hint, to=self.float_type)

    def compare(self, op_type: str, a: str, b: str, hint: str) -> str:
        """Greater/Equal of two activations: in bf16 graphs on fp32 copies (ONNX Runtime's CUDA provider has
        no bf16 comparison kernels: a bf16 graph failed to load there with 'Provider type for Greater node
        ... is not set'); casting is exact, so the mask is the same."""
        if self.float_type == TensorProto.BFLOAT16:
            a, b = self.to_f32(a, f"{hint}_a32"), self.to_f32(b, f"{hint}_b32")
        return self.op(op_type, [a, b], hint)

    def positive(self, x: str, hint: str) -> str:
        """x > 0 as a bool mask."""
        return self.compare("Greater", x, self.fconst(0, "zero"), hint)

    def to_f32(self, x: str, hint: str) -> str:
        """x (the graph's float type) in fp32."""
        return x if self.float_type == F32 else self.op("Cast", [x], hint, to=F32)


def _to_bf16_bits(array: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def conv_weights(weights: Weights, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    w = weights.state[f"features.{layer.index}.weight"].numpy()
    b = weights.state[f"features.{layer.index}.bias"].numpy()
    if layer.index == 0:
        # fold the channel order into conv1_1: input channel i holds RGB channel perm[i]
        perm = weights.convention.rgb_permutation()
        w_rgb = np.empty_like(w)
        w_rgb[:, perm] = w
        w = w_rgb
    return w, b


def forward(g: Graph, weights: Weights, spec: ExportSpec, keep_masks: bool):
    """Emit preprocessing and the conv stack. Returns the loss-layer outputs
    (fp32), per layer what the backward pass needs, and the layers."""
    scale, shift = weights.convention.scale_shift()
    x = g.op("Mul", [IMAGE, g.const(np.array(scale).reshape(1, 3, 1, 1), "pre_scale")], "pre_mul")
    h = g.op("Add", [x, g.const(np.array(shift).reshape(1, 3, 1, 1), "pre_shift")], "pre_add")
    # fp16 graphs run the first conv in fp32: its input (0-255 less the mean in the caffe convention) would lose
    # its low bits in fp16 (the ImageNet VGG16, emulated: gradient error 5-8e-3 -> 3-6e-3), at a 3-channel conv's cost
    first_in_f32 = g.float_type == TensorProto.FLOAT16
    if not first_in_f32:
        h = g.to_float(h, "pre_cast")
    wanted = set(spec.layers)
    outputs: dict[str, str] = {}
    saved: dict[str, dict[str, str]] = {}  # per layer name: tensors the backward reads
    layers = truncated(spec.model, spec.layers)
    for pos, layer in enumerate(layers):
        if layer.kind == "conv":
            w, b = conv_weights(weights, layer)
            if winograd.applies(spec.conv, layer.in_channels, layer.out_channels):
                flat = g.shared(f"{layer.name}.weight_flat", lambda w=w: winograd.flat_weights(w))
                h = winograd.conv(g, h, flat, layer.out_channels, layer.in_channels, layer.name, bias=b)
            elif first_in_f32 and layer.index == 0:
                conv32 = g.op("Conv", [h, g.const(w, f"{layer.name}.weight32"), g.const(b, f"{layer.name}.bias32")],
                              f"{layer.name}_32", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
                h = g.to_float(conv32, layer.name)
            else:
                h = g.op("Conv", [h, g.weight(w, f"{layer.name}.weight"), g.weight(b, f"{layer.name}.bias")],
                         layer.name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        elif layer.kind == "relu":
            h = g.op("Relu", [h], layer.name)
            nxt = layers[pos + 1] if pos + 1 < len(layers) else None
            max_pool_next = nxt is not None and nxt.kind == "pool" and spec.pooling == "max"
            if keep_masks and layer.name not in wanted and not max_pool_next:
                # the backward needs only y > 0: one byte instead of four
                saved[layer.name] = {"mask": g.positive(h, f"{layer.name}_mask")}
            else:
                saved[layer.name] = {"y": h}
        else:
            pre = h
            pool = "AveragePool" if spec.pooling == "avg" else "MaxPool"
            h = g.op(pool, [pre], layer.name, kernel_shape=[2, 2], strides=[2, 2])
            saved[layer.name] = {"in_shape": g.op("Shape", [pre], f"{layer.name}_in_shape")}
            if keep_masks and spec.pooling == "max":
                # route the gradient to the maximum (ties share it: measure zero for real
                # inputs, and zeros are masked by the ReLU below anyway)
                cropped = crop_even(g, pre, saved[layer.name]["in_shape"], layer.name)
                up = g.op("Resize", [h, "", g.const([1, 1, 2, 2], "up2")], f"{layer.name}_up", mode="nearest")
                eq = g.compare("Equal", cropped, up, f"{layer.name}_argmax")
                relu_name = layers[pos - 1].name
                if relu_name in wanted:
                    saved[layer.name]["mask"] = eq  # the relu keeps y and masks itself
                else:
                    pos_mask = g.positive(cropped, f"{layer.name}_pos")
                    saved[layer.name]["mask"] = g.op("And", [eq, pos_mask], f"{layer.name}_mask")
                    saved[relu_name] = {}  # folded into the pool's mask
        if layer.name in wanted:
            outputs[layer.name] = g.to_f32(h, f"{layer.name}_f32")
    return outputs, saved, layers


def crop_even(g: Graph, x: str, shape: str, hint: str) -> str:
    """x[..., :2*(H//2), :2*(W//2)]: the part of a pool's input its windows cover."""
    hw = g.op("Slice", [shape, g.const([2], "i2", np.int64), g.const([4], "i4", np.int64)], f"{hint}_hw")
    even = g.op("Mul", [g.op("Div", [hw, g.const([2], "two", np.int64)], f"{hint}_half"),
                        g.const([2], "two", np.int64)], f"{hint}_even")
    return g.op("Slice", [x, g.const([0, 0], "zeros2", np.int64), even, g.const([2, 3], "axes23", np.int64)],
                f"{hint}_crop")


def pad_to(g: Graph, x: str, shape: str, hint: str) -> str:
    """Zero-pad x (N, C, 2h, 2w) at the bottom/right up to `shape` (N, C, H, W)."""
    hw = g.op("Slice", [shape, g.const([2], "i2", np.int64), g.const([4], "i4", np.int64)], f"{hint}_hw")
    xhw = g.op("Slice", [g.op("Shape", [x], f"{hint}_xshape"), g.const([2], "i2", np.int64),
                         g.const([4], "i4", np.int64)], f"{hint}_xhw")
    extra = g.op("Sub", [hw, xhw], f"{hint}_extra")
    pads = g.op("Concat", [g.const([0, 0, 0, 0, 0, 0], "zeros6", np.int64), extra], f"{hint}_pads", axis=0)
    return g.op("Pad", [x, pads], f"{hint}_pad")


def sum_terms(g: Graph, terms: list[str], hint: str) -> str:
    """The sum of fp32 terms (a 0 constant when there are none)."""
    if not terms:
        return g.const(0.0, f"{hint}_zero")
    return terms[0] if len(terms) == 1 else g.op("Sum", terms, hint)


def backward(g: Graph, weights: Weights, spec: ExportSpec, layers: list[Layer], saved: dict,
             inject: dict[str, list]) -> str | None:
    """Emit the input-gradient pass, deepest layer first; returns d/d(network input) in fp32, or None
    when no loss reaches the image. inject: per loss layer, functions that emit its loss's gradient
    (fp32), called when the backward reaches the layer so each is computed just before it is consumed
    (ONNX Runtime runs nodes in the order they are emitted)."""
    grad: str | None = None
    grad_scale: str | None = None  # fp16 graphs: the fp32 scalar the carried gradient is multiplied by
    for pos in range(len(layers) - 1, -1, -1):
        layer = layers[pos]
        if layer.name in inject and g.float_type == TensorProto.FLOAT16:
            grad, grad_scale = _scaled_sum(g, grad, grad_scale, [emit() for emit in inject[layer.name]], layer.name)
        elif layer.name in inject:
            extra = [g.to_float(emit(), f"{layer.name}_gcast") for emit in inject[layer.name]]
            terms = ([grad] if grad else []) + extra
            grad = terms[0] if len(terms) == 1 else g.op("Sum", terms, f"{layer.name}_gin")
        if grad is None:
            continue
        if layer.kind == "relu":
            keep = saved[layer.name]
            if "mask" in keep:
                mask = keep["mask"]
            elif "y" in keep:
                mask = g.positive(keep["y"], f"{layer.name}_bmask")
            else:
                continue  # folded into the following max pool's mask
            grad = g.op("Mul", [grad, g.op("Cast", [mask], f"{layer.name}_maskf", to=g.float_type)],
                        f"{layer.name}_grad")
        elif layer.kind == "pool":
            up = g.op("Resize", [grad, "", g.const([1, 1, 2, 2], "up2")], f"{layer.name}_gup", mode="nearest")
            if spec.pooling == "avg":
                if layer.name in inject:  # else the 1/4 is folded into the next conv's backward weights
                    up = g.op("Mul", [up, g.fconst(0.25, "quarter_f")], f"{layer.name}_gavg")
            else:
                up = g.op("Mul", [up, g.op("Cast", [saved[layer.name]["mask"]], f"{layer.name}_maskf",
                                           to=g.float_type)], f"{layer.name}_gmax")
            grad = pad_to(g, up, saved[layer.name]["in_shape"], layer.name)
        else:
            w, _ = conv_weights(weights, layer)
            below = layers[pos - 1] if pos else None
            # the average pool's 1/4, folded into the weights (exact in binary)
            scale = 0.25 if below is not None and below.kind == "pool" and spec.pooling == "avg" \
                and below.name not in inject else 1.0
            if winograd.applies(spec.conv, layer.in_channels, layer.out_channels):
                flat = g.shared(f"{layer.name}.weight_flat", lambda w=w: winograd.flat_weights(w))
                grad = winograd.conv(g, grad, flat, layer.out_channels, layer.in_channels, f"{layer.name}_gin",
                                     backward=True, scale=scale)
                continue
            w_back = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (Cin, Cout, 3, 3)
            grad = g.op("Conv", [grad, g.weight(w_back * np.float32(scale), f"{layer.name}.weight_grad")],
                        f"{layer.name}_gin", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    if grad is None:
        return None
    grad = g.to_f32(grad, "grad_f32")
    return grad if grad_scale is None else g.op("Div", [grad, grad_scale], "grad_unscaled")


# fp16 gradients are carried scaled so that their largest entry is this (a power of two): below it, 2^22 of
# normal range (VGG's gradients are 1e-10..1e-5 unscaled with random weights: all subnormal or zero in fp16);
# above it, 2^8 of headroom for the growth through the convolutions before the next loss layer (up to 28x seen
# with the ImageNet VGG16 from relu4_2 to the image)
GRAD_SCALE_TARGET = 2.0 ** 8


def _scaled_sum(g: Graph, grad: str | None, scale: str | None, terms: list[str], hint: str) -> tuple[str, str]:
    """At a loss layer of an fp16 graph: the carried gradient (fp16, times `scale`) plus the layer's loss
    gradients (fp32), summed in fp32 and returned in fp16 with a new power-of-two scale (fp32 scalar) that
    puts the largest entry at GRAD_SCALE_TARGET: a fixed scale cannot serve every weights, size and loss
    weight (the gradients' magnitude spans orders of magnitude between them)."""
    if grad is not None:
        assert scale is not None  # a carried fp16 gradient always comes with its scale
        terms = terms + [g.op("Div", [g.to_f32(grad, f"{hint}_g32"), scale], f"{hint}_gprev")]
    total = terms[0] if len(terms) == 1 else g.op("Sum", terms, f"{hint}_gsum32")
    peak = g.op("Max", [g.op("ReduceMax", [g.op("Abs", [total], f"{hint}_gabs")], f"{hint}_gpeak", keepdims=0),
                        g.const(1e-30, "tiny")], f"{hint}_gpeak_pos")  # an all-zero gradient: scale 2^108
    exponent = g.op("Floor", [g.op("Div", [g.op("Log", [g.op("Div", [g.const(GRAD_SCALE_TARGET, "gtarget"), peak],
                                                              f"{hint}_gratio")], f"{hint}_glog"),
                                           g.const(np.log(2.0), "ln2")], f"{hint}_glog2")], f"{hint}_gexp")
    new_scale = g.op("Pow", [g.const(2.0, "two_f32"), exponent], f"{hint}_gscale")
    return g.to_float(g.op("Mul", [total, new_scale], f"{hint}_gscaled"), f"{hint}_gin"), new_scale
