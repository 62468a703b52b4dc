"""The TensorRT step: an engine built from the same exported step graph.

Precisions: fp32 (TF32 off), tf32, fp16. fp16 uses the fp16 step graph,
parsed as a strongly typed network so TensorRT keeps the graph's own fp32
Gram and loss sums instead of choosing precisions itself. Engines are
cached beside the ONNX export, keyed by TensorRT version, GPU and profile.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from styleengine.choices import BACKEND_PRECISIONS
from styleengine.errors import ConfigError, UnavailableError
from styleengine.engine.losses import LossConfig, Targets
from styleengine.engine.steps import StepResult
from styleengine.export import spec as names
from styleengine.export.cache import atomic_write
from styleengine.model.vgg import Pooling, resolve
from styleengine.model.weights import Weights

TRT_PRECISIONS = BACKEND_PRECISIONS["tensorrt"]
# the optimisation profile's default range of image sides; --size outside it rebuilds
DEFAULT_PROFILE = (64, 512, 2048)


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UnavailableError("the tensorrt backend needs the tensorrt package (pip install 'styleengine[tensorrt]') "
                               "and an NVIDIA GPU") from e
    if not torch.cuda.is_available():
        raise UnavailableError("the tensorrt backend needs an NVIDIA GPU; torch sees no CUDA device here")
    return trt


class TrtStep:
    def __init__(self, engine_bytes: bytes, spec: names.ExportSpec, loss: LossConfig, features_step):
        trt = _import_tensorrt()
        self.spec, self.loss = spec, loss
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_bytes)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self._features = features_step  # an ORT step on the same export, for targets
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}

    def features(self, image: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in self._features.features(image, layer_names).items()}

    def set_targets(self, targets: Targets) -> None:
        f = dict(device=self.device, dtype=torch.float32)
        inputs = {names.content_input(n): targets.content[n].to(**f).contiguous() for n in self.spec.content_layers}
        inputs.update({names.gram_input(n): targets.grams[n].to(**f).contiguous() for n in self.spec.style_layers})
        inputs[names.CONTENT_WEIGHT] = torch.tensor(self.loss.content_weight, **f)
        inputs[names.STYLE_WEIGHT] = torch.tensor(self.loss.style_weight, **f)
        inputs[names.STYLE_LAYER_WEIGHTS] = torch.tensor(self.loss.layer_weights(), **f)
        inputs[names.TV_WEIGHT] = torch.tensor(self.loss.tv_weight, **f)
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        self._inputs = inputs
        self._outputs = {}

    def __call__(self, image: torch.Tensor) -> StepResult:
        x = image.detach().to(self.device, torch.float32).contiguous()
        self.context.set_input_shape(names.IMAGE, tuple(x.shape))
        self.context.set_tensor_address(names.IMAGE, x.data_ptr())
        if not self._outputs or self._outputs[names.GRAD].shape != x.shape:
            self._outputs = {n: torch.empty((), device=self.device) for n in names.LOSS_OUTPUTS}
            self._outputs[names.GRAD] = torch.empty_like(x)
            for n, t in self._outputs.items():
                self.context.set_tensor_address(n, t.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        scalars = torch.stack([self._outputs[n] for n in names.LOSS_OUTPUTS]).tolist()  # synchronises
        loss, content, style, tv = scalars
        return StepResult(loss, self._outputs[names.GRAD].clone(), {"content": content, "style": style, "tv": tv})

    def close(self) -> None:
        self.context = None
        self.engine = None


def _profile_shapes(spec: names.ExportSpec, side: int) -> dict[str, tuple[int, ...]]:
    shapes = {names.IMAGE: (1, 3, side, side)}
    for layer in resolve(spec.model, list(spec.content_layers)):
        shapes[names.content_input(layer.name)] = (1, layer.out_channels, side // layer.stride, side // layer.stride)
    return shapes


def build_engine(onnx_path: Path, spec: names.ExportSpec, precision: str, profile=DEFAULT_PROFILE) -> bytes:
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "fp16":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    elif precision == "tf32":
        config.set_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = (_profile_shapes(spec, s) for s in profile)
    for name in lo:
        opt_profile.set_shape(name, lo[name], opt[name], hi[name])
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the step engine (see its log above)")
    return bytes(serialized)


def make_trt_step(weights: Weights, loss: LossConfig, *, pooling: Pooling = "avg", precision: str = "fp32",
                  profile=DEFAULT_PROFILE) -> TrtStep:
    if precision not in TRT_PRECISIONS:
        raise ConfigError(f"the tensorrt backend runs {', '.join(TRT_PRECISIONS)}, not {precision!r}")
    trt = _import_tensorrt()
    from styleengine.engine.ort_step import OrtStep, ensure_export, graph_spec

    graph_precision = "fp16" if precision == "fp16" else "fp32"
    export = ensure_export(weights, loss, pooling, "fp32")
    if graph_precision == "fp16":
        export16 = ensure_export(weights, loss, pooling, "fp16", provider="cuda")
    onnx_export = export16 if graph_precision == "fp16" else export
    spec = graph_spec(weights, loss, pooling, graph_precision)
    key = hashlib.sha256(json.dumps({"export": onnx_export.meta["files"]["step.onnx"]["sha256"],
                                     "trt": trt.__version__, "gpu": torch.cuda.get_device_name(),
                                     "precision": precision, "profile": list(profile)}).encode()).hexdigest()[:16]
    engine_path = onnx_export.folder / f"step-{key}.engine"
    if engine_path.is_file():
        data = engine_path.read_bytes()
    else:
        data = build_engine(onnx_export.step_path, spec, precision, profile)
        atomic_write(engine_path, data)
    features = OrtStep(export, graph_spec(weights, loss, pooling, "fp32"), loss, provider="cpu")
    return TrtStep(data, spec, loss, features)
