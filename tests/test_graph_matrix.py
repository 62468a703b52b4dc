"""Every graph kind x precision x model x pooling passes ONNX's strict checks and
loads in ONNX Runtime's CPU provider where that provider has the kernels.

A bf16 step graph once reached a GPU with a type error (Greater between a
bf16 activation and an fp32 zero) that ONNX's own checker finds on any CPU;
this matrix is that checker, run on everything we export.

The matrix uses a short layer stack: it has every combination the builders
emit differently, and deeper layers only repeat them with other channel
counts, so the types, ops and domains checked here are those of the full
network. The stack: relu1_1 (a loss layer whose ReLU keeps y), relu1_2 (no
loss, before a pool: folded into max pooling's mask), pool1 (a pool that is a
loss layer: avg pooling's 1/4 stays a Mul), relu2_1 (a one-byte mask),
relu2_2 (a loss layer before a pool), pool2 (avg: the 1/4 folded into
conv2_2's backward weights), conv3_1 (a conv as loss layer). One full-depth
VGG19 step graph per precision with the default loss checks what the short
stack cannot: the default layer set itself.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from styleengine.engine.losses import LossConfig
from styleengine.engine.ort_step import graph_spec
from styleengine.errors import ExportValidationError
from styleengine.export.check import strict_check
from styleengine.export.onnx_step import build_feature_graph, build_step_graph, build_tile_graph
from styleengine.export.spec import OPSETS, ir_version

MATRIX_LOSS = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "pool1", "conv3_1"))
BUILDERS = {"features": build_feature_graph, "step": build_step_graph, "tile_step": build_tile_graph}
CPU_KERNELS = {"fp32": True, "fp16": True, "bf16": False}  # ORT's CPU provider has no bf16 Conv


def check_cpu_session(model: onnx.ModelProto, precision: str) -> None:
    """A CPU session is created where the provider has the kernels; elsewhere the error is a missing
    kernel (NOT_IMPLEMENTED), not a type error in the graph."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model.SerializeToString()
    if CPU_KERNELS[precision]:
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return
    with pytest.raises(OrtNotImplemented, match="Could not find an implementation for Conv"):
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def test_ir_versions():
    assert ir_version(OPSETS["fp32"]) == 8 and ir_version(OPSETS["bf16"]) == 10


def _relu_mask_graph(zero: onnx.TensorProto, ir: int = 10, domain: str = "") -> onnx.ModelProto:
    """bf16 x -> Relu(x) > zero: the node that failed on the H200 when zero was fp32."""
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Greater", ["y", "zero"], ["mask"])]
    if domain:
        nodes.append(helper.make_node("ReorderInput", ["x"], ["z"], domain=domain))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 4])], [zero])
    imports = [helper.make_opsetid("", 22)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir
    return model


def test_strict_check_rejects_what_runtimes_reject():
    bf16_zero = helper.make_tensor("zero", TensorProto.BFLOAT16, [], b"\x00\x00", raw=True)
    strict_check(_relu_mask_graph(bf16_zero))
    with pytest.raises(ExportValidationError, match="Greater"):  # the bf16 graph's fault before the fix
        strict_check(_relu_mask_graph(numpy_helper.from_array(np.zeros((), np.float32), "zero")))
    with pytest.raises(ExportValidationError, match="IR version 8; opset 22 needs 10"):
        strict_check(_relu_mask_graph(bf16_zero, ir=8))
    with pytest.raises(ExportValidationError, match="com.microsoft.nchwc"):  # what ORT's optimiser adds
        strict_check(_relu_mask_graph(bf16_zero, domain="com.microsoft.nchwc"))


# Winograd graphs (export/winograd.py) are fp32 only; in the short stack conv2_2 and conv3_1 (the one whose
# backward carries avg pooling's 1/4) have the channels for it
MATRIX = [(kind, precision, model, pooling, conv)
          for kind, precision, model, pooling in itertools.product(BUILDERS, ("fp32", "fp16", "bf16"),
                                                                   ("vgg19", "vgg16"), ("avg", "max"))
          for conv in (("direct", "winograd") if precision == "fp32" else ("direct",))]


@pytest.mark.parametrize("kind,precision,model,pooling,conv", MATRIX)
def test_graph_is_strictly_valid_and_loads(random_weights, kind, precision, model, pooling, conv):
    weights = random_weights(model)
    spec = graph_spec(weights, MATRIX_LOSS, pooling, precision, conv)
    graph = BUILDERS[kind](weights, spec)
    strict_check(graph, kind)
    check_cpu_session(graph, precision)
    ops = {n.op_type for n in graph.graph.node}
    assert ("DepthToSpace" in ops) == (conv == "winograd")


@pytest.mark.parametrize("precision,conv", [("fp32", "direct"), ("fp32", "winograd"), ("fp16", "direct"),
                                            ("bf16", "direct")])
def test_full_depth_default_step_graph_is_strictly_valid(vgg19_random, precision, conv):
    graph = build_step_graph(vgg19_random, graph_spec(vgg19_random, LossConfig(), "avg", precision, conv))
    strict_check(graph)


def test_winograd_graphs_are_fp32(vgg19_random):
    with pytest.raises(ValueError, match="fp32"):
        graph_spec(vgg19_random, LossConfig(), "avg", "fp16", "winograd")
