"""The exported step graph against the torch reference, the export cache,
and the ORT step inside the optimisation loop."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from styleengine.engine.loss_config import TV_UNIT  # the weights below in the old units
from styleengine.errors import ConfigError, ExportValidationError, UnavailableError
from styleengine.engine.loop import optimise
from styleengine.engine.losses import LossConfig, content_coeffs
from styleengine.engine.ort_step import OrtStep, create_session, ensure_export, graph_spec, make_graph_step
from styleengine.engine.steps import TorchStep, make_targets
from styleengine.export import cache
from styleengine.export.onnx_step import ExportSpec, build_step_graph
from styleengine.engine.validate import validate_step

# a short stack keeps graphs small and tests fast; the full VGG19 runs once below
SHORT = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "conv3_1"),
                   tv_weight=0.05 / TV_UNIT)


def test_graph_uses_standard_ops_only(vgg19_random):
    spec = graph_spec(vgg19_random, LossConfig(), "max", "fp32")
    model = build_step_graph(vgg19_random, spec)
    onnx.checker.check_model(model)
    assert {op.domain for op in model.opset_import} == {""}
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["spec"])["model"] == "vgg19"
    assert meta["weights_sha256"] == vgg19_random.sha256
    image = model.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]


@pytest.mark.parametrize("model,pooling", [("vgg19", "avg"), ("vgg19", "max"), ("vgg16", "max"), ("vgg16", "avg")])
def test_step_graph_matches_torch(random_weights, model, pooling):
    weights = random_weights(model)
    spec = graph_spec(weights, SHORT, pooling, "fp32")
    export = cache.write_export(weights, spec, cache.cache_root() / f"manual-{model}-{pooling}")
    report = validate_step(lambda: OrtStep(export, spec, SHORT), weights, SHORT, spec,
                           sizes=((32, 32), (48, 36), (37, 45)))
    for c in report:  # fp32 tolerances of the issue: 1e-4 loss, 1e-3 gradient
        assert c.loss_rel < 1e-5 and c.grad_rel_l2 < 1e-4, c


def test_full_vgg19_default_loss_through_cache(vgg19_random):
    loss = LossConfig(tv_weight=0.01 / TV_UNIT)
    export = ensure_export(vgg19_random, loss, "avg")
    assert len(export.meta["validation"]) == 3
    assert all(v["grad_rel_l2"] < 1e-3 and v["loss_rel"] < 1e-4 for v in export.meta["validation"])
    # a second call is a cache hit: same folder, no rebuild
    mtime = export.step_path.stat().st_mtime_ns
    again = ensure_export(vgg19_random, loss, "avg")
    assert again.folder == export.folder and again.step_path.stat().st_mtime_ns == mtime


def test_truncated_cache_entry_is_rebuilt(vgg16_random):
    export = ensure_export(vgg16_random, SHORT, "avg")
    data = export.step_path.read_bytes()
    export.step_path.write_bytes(data[: len(data) // 2])
    assert cache.check_entry(export.folder, vgg16_random, graph_spec(vgg16_random, SHORT, "avg", "fp32")) is None
    rebuilt = ensure_export(vgg16_random, SHORT, "avg")
    assert rebuilt.step_path.read_bytes() == data


def test_tampered_cache_entry_is_rebuilt(vgg16_random):
    export = ensure_export(vgg16_random, SHORT, "avg")
    data = bytearray(export.step_path.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes
    export.step_path.write_bytes(bytes(data))
    rebuilt = ensure_export(vgg16_random, SHORT, "avg")
    assert rebuilt.step_path.read_bytes() != bytes(data)


def test_cache_key_separates_settings(vgg19_random, vgg16_random):
    spec = graph_spec(vgg19_random, SHORT, "avg", "fp32")
    keys = {cache.cache_key(vgg19_random, spec),
            cache.cache_key(vgg19_random, graph_spec(vgg19_random, SHORT, "max", "fp32")),
            cache.cache_key(vgg19_random, graph_spec(vgg19_random, LossConfig(), "avg", "fp32")),
            cache.cache_key(vgg19_random, graph_spec(vgg19_random, SHORT, "avg", "fp16")),
            cache.cache_key(vgg16_random, graph_spec(vgg16_random, SHORT, "avg", "fp32"))}
    assert len(keys) == 5
    # loss weights are graph inputs: changing them does not change the export
    heavier = LossConfig(content_layers=SHORT.content_layers, style_layers=SHORT.style_layers, style_weight=7.0)
    heavier_spec = graph_spec(vgg19_random, heavier, "avg", "fp32")
    assert cache.cache_key(vgg19_random, heavier_spec) == cache.cache_key(vgg19_random, spec)


def test_loss_weights_are_inputs(vgg19_random, make_image):
    """One export serves every weight setting: the same graph, other weights, the torch answer."""
    step = make_graph_step("ort", vgg19_random, SHORT)
    other = LossConfig(content_layers=SHORT.content_layers, style_layers=SHORT.style_layers,
                       style_layer_weights=(0.5, 0.0, 2.0), content_weight=3.0, style_weight=50.0,
                       tv_weight=0.5 / TV_UNIT)
    step.loss = other
    reference = TorchStep(vgg19_random, other, conv="direct")
    content, style, image = make_image(40, 40, 1), make_image(40, 40, 2), make_image(40, 40, 3)
    targets = make_targets(reference, other, content, [style])
    step.set_targets(targets)
    reference.set_targets(targets)
    got, ref = step(image), reference(image)
    assert got.loss == pytest.approx(ref.loss, rel=1e-5)
    for k in ("content", "style", "tv"):
        assert got.parts[k] == pytest.approx(ref.parts[k], rel=1e-5, abs=1e-6)
    assert float((got.grad - ref.grad).norm() / ref.grad.norm()) < 1e-4


def test_ort_features_match_torch(vgg19_random, make_image):
    step = make_graph_step("ort", vgg19_random, SHORT)
    reference = TorchStep(vgg19_random, SHORT, conv="direct")
    image = make_image(44, 36, 5)
    got = step.features(image, SHORT.layers)
    ref = reference.features(image, SHORT.layers)
    for name in SHORT.layers:
        np.testing.assert_allclose(got[name].numpy(), ref[name].numpy(), rtol=1e-4, atol=1e-5)


def test_cpu_step_session_is_made_when_the_targets_are_set(vgg19_random, make_image):
    """The targets' one-off features session and the step's session are never both open on the CPU."""
    step = make_graph_step("ort", vgg19_random, SHORT)
    assert "step" not in step.sessions
    with pytest.raises(RuntimeError, match="set_targets"):
        step(make_image(20, 24))
    targets = make_targets(step, SHORT, make_image(20, 24, 1), [make_image(20, 24, 2)])
    assert "step" not in step.sessions and "features" in step.sessions
    step.set_targets(targets)
    assert "step" in step.sessions and "features" not in step.sessions
    assert torch.isfinite(step(make_image(20, 24, 3)).grad).all()


def test_ort_loop_matches_torch_loop(vgg19_random, make_image):
    """Same seed, same init: final loss within 3% after 50 L-BFGS iterations (fp32 rounding alone moves an
    L-BFGS path by a few percent over 50 iterations: test_lbfgs.py)."""
    content, style, init = make_image(48, 48, 1), make_image(48, 48, 2), make_image(48, 48, 3)
    finals = {}
    for backend, step in (("torch", TorchStep(vgg19_random, SHORT)),
                          ("ort", make_graph_step("ort", vgg19_random, SHORT))):
        step.set_targets(make_targets(step, SHORT, content, [style]))
        result = optimise(step, init, iterations=50)
        assert result.stopped is None
        finals[backend] = result.records[-1].loss
    assert finals["ort"] == pytest.approx(finals["torch"], rel=0.03)  # fp32 L-BFGS is chaotic: 1.4% seen


def test_fp16_graph_within_its_tolerance(vgg19_random):
    spec = graph_spec(vgg19_random, SHORT, "avg", "fp16")
    export = cache.write_export(vgg19_random, spec, cache.cache_root() / "manual-fp16")
    # the CPU provider runs fp16 Conv by inserting casts: it checks the graph, not GPU numerics
    report = validate_step(lambda: OrtStep(export, spec, SHORT), vgg19_random, SHORT, spec, sizes=((32, 32),))
    assert report[0].grad_rel_l2 < 5e-2


def test_validation_catches_a_wrong_graph(vgg19_random):
    spec = graph_spec(vgg19_random, SHORT, "avg", "fp32")
    wrong = vgg19_random.state.copy()
    wrong["features.2.weight"] = wrong["features.2.weight"] * 1.01  # a graph built from other weights
    from dataclasses import replace

    export = cache.write_export(replace(vgg19_random, state=wrong), spec, cache.cache_root() / "manual-wrong")
    with pytest.raises(ExportValidationError, match="disagrees"):
        validate_step(lambda: OrtStep(export, spec, SHORT), vgg19_random, SHORT, spec, sizes=((32, 32),))


def test_unavailable_provider_lists_available(vgg19_random):
    export = ensure_export(vgg19_random, SHORT, "avg")
    import onnxruntime as ort

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU script checks the CUDA provider")
    with pytest.raises(UnavailableError) as err:
        create_session(export.step_path, "cuda")
    message = str(err.value)
    assert "\n" not in message
    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu on a machine without a GPU
        assert "no CUDA device" in message
    else:
        assert "available: " in message and "CPUExecutionProvider" in message


def test_provider_fallback_is_detected(vgg19_random, monkeypatch):
    """ORT may start a CPU session when CUDA cannot load: that is an error, not a silent CPU run."""
    import onnxruntime as ort

    export = ensure_export(vgg19_random, SHORT, "avg")
    real = ort.InferenceSession

    class FallingBack(real):
        def __init__(self, path, options, providers):
            super().__init__(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallingBack)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UnavailableError, match="could not start CUDAExecutionProvider"):
        create_session(export.step_path, "cuda")


def test_bad_settings(vgg19_random):
    with pytest.raises(ConfigError, match="provider"):
        create_session(ensure_export(vgg19_random, SHORT, "avg").step_path, "tpu")
    with pytest.raises(ConfigError, match="CPU provider has no fp16"):
        make_graph_step("ort", vgg19_random, SHORT, precision="fp16", provider="cpu")
    with pytest.raises(ConfigError, match="precision"):
        make_graph_step("ort", vgg19_random, SHORT, precision="int8")
    with pytest.raises(ConfigError, match="relu9_9"):
        graph_spec(vgg19_random, LossConfig(style_layers=("relu9_9",)), "avg", "fp32")


def test_spec_names_and_opset():
    spec = ExportSpec("vgg19", "avg", ("relu4_2",), ("relu1_1",))
    assert spec.opset == 17 and ExportSpec("vgg19", "avg", ("relu4_2",), ("relu1_1",), "bf16").opset == 22
    assert spec.input_names()[0] == "image" and spec.output_names()[-1] == "grad"


def test_tensorrt_backend_unavailable_is_one_line(vgg19_random):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present: the GPU script checks this backend")
    with pytest.raises(UnavailableError) as err:
        make_graph_step("tensorrt", vgg19_random, SHORT)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="tensorrt backend runs"):
        from styleengine.engine.trt_step import make_trt_step

        make_trt_step(vgg19_random, SHORT, precision="int8")


@pytest.mark.parametrize("conv", ["direct", "winograd"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_tile_graph_matches_torch_tile_step(random_weights, make_image, pooling, conv):
    from styleengine.engine.losses import gram, gram_style, tv_loss_and_grad, tv_scale

    weights = random_weights("vgg19")
    torch_step = TorchStep(weights, SHORT, pooling=pooling, conv="direct")
    ort_step = make_graph_step("ort", weights, SHORT, pooling=pooling, conv=conv)
    height, width = 70, 53
    image = make_image(height, width, 3)
    targets = make_targets(torch_step, SHORT, make_image(height, width, 1), [make_image(height, width, 2)])
    feats = torch_step.features(image, list(SHORT.style_layers))
    _, diffs, coeffs = gram_style(SHORT, {n: gram(f) for n, f in feats.items()}, targets,
                                  {n: f.shape[2] * f.shape[3] for n, f in feats.items()})
    for core in ((0, 0, height, width), (16, 0, 48, 37), (32, 16, height, width)):
        cc = content_coeffs(SHORT, targets)
        ref_loss, ref_grad = torch_step.tile_step(image, core, targets.content, diffs, coeffs, cc)
        got_loss, got_grad = ort_step.tile_step(image, core, targets.content, diffs, coeffs, cc)
        assert float(got_loss) == pytest.approx(float(ref_loss), rel=1e-5)
        assert float((got_grad - ref_grad).norm() / ref_grad.norm()) < 1e-5
    # the whole image as one core is the untiled step without TV
    torch_step.set_targets(targets)
    full = torch_step(image)
    loss, grad = ort_step.tile_step(image, (0, 0, height, width), targets.content, diffs, coeffs, cc)
    # the caller adds TV
    untiled_no_tv = full.grad - tv_loss_and_grad(image)[1] * SHORT.tv_weight * tv_scale(SHORT, height, width)
    assert float(loss) == pytest.approx(full.parts["content"], rel=1e-5)
    assert float((grad - untiled_no_tv).norm() / untiled_no_tv.norm()) < 1e-5


def test_validation_checks_names_first(vgg19_random):
    """A graph whose inputs differ from the spec fails on names, before any value is compared."""
    from styleengine.engine.validate import check_signature

    export = ensure_export(vgg19_random, SHORT, "avg")
    session = create_session(export.step_path, "cpu")
    check_signature(session, graph_spec(vgg19_random, SHORT, "avg", "fp32"))
    other = LossConfig(content_layers=SHORT.content_layers, style_layers=SHORT.style_layers + ("relu3_1",))
    with pytest.raises(ExportValidationError, match="inputs"):
        check_signature(session, graph_spec(vgg19_random, other, "avg", "fp32"))


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_winograd_graph_matches_the_direct_graph(random_weights, make_image, pooling):
    """F(4x4, 3x3) in ONNX ops (export/winograd.py, the CPU fp32 default): the direct graph's loss and
    gradient, at sizes that are no whole number of 4x4 tiles at any depth (the tile graph: above)."""
    weights = random_weights("vgg19")
    loss = LossConfig(weighting="paper", style_weight=1e5, tv_weight=0.05 / TV_UNIT)
    steps = {conv: make_graph_step("ort", weights, loss, pooling=pooling, conv=conv) for conv in ("direct", "winograd")}
    assert steps["winograd"].spec.conv == "winograd" and steps["direct"].spec.conv == "direct"
    assert make_graph_step("ort", weights, loss, pooling=pooling).spec.conv == "winograd"  # auto on the CPU
    for height, width in ((70, 53), (37, 90)):
        content, style, image = (make_image(height, width, s) for s in (1, 2, 3))
        targets = make_targets(steps["direct"], loss, content, [style])
        out = {}
        for conv, step in steps.items():
            step.set_targets(targets)
            out[conv] = step(image)
        assert out["winograd"].loss == pytest.approx(out["direct"].loss, rel=1e-5)
        # max pooling: rounding moves a few windows' argmax, and their gradient with it (2.1e-4 seen)
        bound = 1e-4 if pooling == "avg" else 1e-3
        assert float((out["winograd"].grad - out["direct"].grad).norm() / out["direct"].grad.norm()) < bound
