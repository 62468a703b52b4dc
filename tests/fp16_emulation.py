"""fp16 GPU numerics on the CPU: an fp16 graph rewritten to fp32 with a rounding to fp16 after every op
that the graph runs in fp16 (import: `from fp16_emulation import emulated_export`).

ONNX Runtime's CPU provider runs an fp16 graph's Conv by inserting casts around it and then drops the
fp16 -> fp32 -> fp16 round trips between ops, so it computes nearly in fp32 and passes graphs that fail
on CUDA. On CUDA each fp16 op stores its output in fp16, and cuDNN's fp16 convolutions accumulate in fp32:
an fp32 op whose output is rounded to fp16 is that op, up to the order of the additions. The rounding is
a Cast to fp16 and back written into the graph, which ORT keeps (test_fp16_graph.py checks that it does).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from styleengine.export.cache import STEP_FILE, Export

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT


def emulate_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph in fp32, each fp16 value rounded to fp16 where an op makes it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    graph = inferred.graph
    inits = []
    for t in graph.initializer:
        if t.data_type == F16:  # exact in fp32
            inits.append(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))
        else:
            inits.append(t)
    nodes = []
    for node in graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == F16:
                    a.i = F32
        rounded = []
        for i, out in enumerate(node.output):
            if types.get(out) == F16:
                node.output[i] = f"{out}__exact"
                rounded.append(out)
        nodes.append(node)
        for out in rounded:
            nodes.append(helper.make_node("Cast", [f"{out}__exact"], [f"{out}__f16"], to=F16))
            nodes.append(helper.make_node("Cast", [f"{out}__f16"], [out], to=F32))
    new = helper.make_graph(nodes, graph.name, graph.input, graph.output, inits)
    out = helper.make_model(new, opset_imports=model.opset_import, producer_name="fp16-emulation")
    out.ir_version = model.ir_version
    return out


def emulated_export(export: Export, folder: Path) -> Export:
    """A copy of `export` whose step graph is emulate_fp16 of its own (the other graphs are not copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = emulate_fp16(onnx.load(str(export.step_path))).SerializeToString()
    (folder / STEP_FILE).write_bytes(data)
    files = dict(export.meta["files"])
    files[STEP_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    meta = json.loads(json.dumps(export.meta))
    meta["files"] = files
    return replace(export, folder=folder, meta=meta)


def emulated_step(export: Export, spec, loss, folder: Path):
    """An ORT CPU step on the emulated fp16 numerics of `export`'s step graph."""
    from styleengine.engine.ort_step import OrtStep

    return OrtStep(emulated_export(export, folder), spec, loss)
