"""The fp16 step graph against torch fp32 under fp16 GPU numerics (fp16_emulation.py: every fp16 op's output
rounded to fp16, which ONNX Runtime's CPU provider alone does not do), with random and ImageNet weights.

Before the gradient was scaled, the emulation gave what the H200 gave (grad rel L2 9.6e-2 at 64x64 with
random VGG19 weights, 9.45e-2 on the GPU): the unscaled gradients are subnormal in fp16.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fp16_emulation import emulate_fp16, emulated_step
from styleengine.benchmarks import fp16_check
from styleengine.engine.losses import LossConfig
from styleengine.engine.ort_step import graph_spec
from styleengine.engine.validate import TOLERANCES, validate_step
from styleengine.export import cache
from styleengine.export.onnx_step import build_step_graph

SIZE_64 = ((64, 64),)


def emulated_validation(weights, loss, tmp_path, **kwargs):
    spec = graph_spec(weights, loss, "avg", "fp16")
    export = cache.write_export(weights, spec, tmp_path / "export")
    return validate_step(lambda: emulated_step(export, spec, loss, tmp_path / "emulated"), weights, loss, spec,
                         **kwargs)


def test_emulation_rounds_every_fp16_output():
    """x -> fp16 -> x + 0 (fp16) -> fp32 gives x rounded to fp16, with ORT's optimisations on (they drop
    fp16 round trips they insert themselves, not the graph's own)."""
    zero = numpy_helper.from_array(np.zeros(1, np.float16), "zero")
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["h", "zero"], ["s"]),
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    emulated = emulate_fp16(model)
    assert all(t.data_type == TensorProto.FLOAT for t in emulated.graph.initializer)
    x = np.array([1 + 2**-13, 1e-6, 60000.5, 0.1], np.float32)
    session = ort.InferenceSession(emulated.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1])
def test_fp16_step_graph_holds_with_random_weights(random_weights, tmp_path, seed):
    """At every validation size (noise images): unscaled, 9.6e-2 (seed 0) at 64x64; now 2.5-4.6e-2, of which
    3.0-4.0e-2 is the rounding of the weights to fp16 alone (ReLU masks that flip)."""
    report = emulated_validation(random_weights("vgg19", seed), LossConfig(), tmp_path)
    assert all(c.grad_rel_l2 <= TOLERANCES["fp16"][1] for c in report)


@pytest.mark.parametrize("loss", [LossConfig(weighting="paper", style_weight=1e3),
                                  LossConfig(content_weight=1e-6, style_weight=1e-8)],
                         ids=["paper-weighting", "tiny-weights"])
def test_fp16_step_graph_holds_with_imagenet_vgg16(vgg16_imagenet, tmp_path, loss):
    """The ImageNet VGG16 with the paper's weighting (style weight 1e3: the gradient overflowed fp16, inf) and
    with tiny loss weights (it underflowed: 0.61): the scale follows the gradient. 5.8e-3 each now."""
    report = emulated_validation(vgg16_imagenet, loss, tmp_path, sizes=SIZE_64)
    assert report[0].grad_rel_l2 < 1e-2


def test_fp16_step_graph_holds_with_imagenet_vgg16_on_photo_and_noise(vgg16_imagenet, tmp_path):
    """Default loss, every validation size: 3-6e-3 (the weights' fp16 rounding alone: 4.6-6.5e-3)."""
    pytest.importorskip("skimage")
    for images in fp16_check.IMAGES.values():
        report = emulated_validation(vgg16_imagenet, LossConfig(), tmp_path / images.__name__, images=images)
        assert all(c.grad_rel_l2 < 1e-2 for c in report)


def test_fp32_and_bf16_graphs_have_no_gradient_scale(vgg19_random):
    for precision in ("fp32", "bf16"):
        graph = build_step_graph(vgg19_random, graph_spec(vgg19_random, LossConfig(), "avg", precision))
        assert not any(n.output[0].startswith(("relu1_1_gscale", "grad_unscaled")) for n in graph.graph.node)


def test_fp16_check_reports_each_case(vgg19_random, tmp_path, monkeypatch):
    """The GPU script's logic on the CPU: emulated numerics stand in for the CUDA provider."""
    pytest.importorskip("skimage")
    monkeypatch.setattr(fp16_check, "SIZES", SIZE_64)
    monkeypatch.setattr(fp16_check, "validate_step",
                        lambda *a, **k: validate_step(*a, **dict(k, sizes=SIZE_64)))
    out = fp16_check.run(None, provider="cpu", seeds=(0,),
                         make_graph_step=lambda e, s: emulated_step(e, s, fp16_check.LOSS, tmp_path / "emulated"))
    case = out["cases"]["random vgg19 seed 0"]
    assert set(case) == {"noise", "photo"}
    assert all(row["ok"] and row["grad_rel_l2"] < 5e-2 for rows in case.values() for row in rows)
    assert out["cases"]["vgg16 imagenet"] == {"error": "no weights path given"}
    assert out["ok"] is False  # a case that did not run is not a pass


def test_fp16_check_without_cuda_is_an_error_entry(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    out = fp16_check.run("/nonexistent.safetensors")
    assert "no CUDAExecutionProvider" in out["error"] and out["cases"] == {}
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = fp16_check.run("/nonexistent.safetensors")
    assert "no CUDA device" in out["error"] and out["cases"] == {}
