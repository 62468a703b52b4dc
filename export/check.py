"""ONNX's strict checks, run on every graph before it is written.

The full checker and shape inference with type checking in strict mode: a
graph that fails them (say, a bf16 activation compared with an fp32 zero)
would fail to load in a runtime, perhaps only on another machine; here it
fails on any CPU, when it is built.
"""
from __future__ import annotations

import onnx

from styleengine.errors import ExportValidationError
from styleengine.export.spec import ir_version

STANDARD_DOMAINS = {"", "ai.onnx"}


def strict_check(model: onnx.ModelProto, what: str = "graph") -> None:
    """Raise ExportValidationError (a bug in the builder) unless `model` passes every check."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportValidationError(f"{what} fails ONNX's strict checks: {e}") from e
    domains = {o.domain for o in model.opset_import} | {n.domain for n in model.graph.node}
    if not domains <= STANDARD_DOMAINS:
        raise ExportValidationError(f"{what} uses non-standard domains {sorted(domains - STANDARD_DOMAINS)}")
    opset = next(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)
    if model.ir_version != ir_version(opset):
        raise ExportValidationError(f"{what} has IR version {model.ir_version}; opset {opset} needs "
                                    f"{ir_version(opset)}")
