"""The TensorRT step: an engine built from the same exported step graph.

UNTESTED ON A GPU HERE: TensorRT cannot be installed on this project's
machines (the `tensorrt` wheels on PyPI are source distributions that
download NVIDIA's libraries at install time from NVIDIA's own index, which
these machines cannot reach). What is tested (tests/test_trt.py, with a fake
`tensorrt` module) is what this module asks of TensorRT: the network parsed
from the step graph, the optimisation profile, the precision flags and the
engine's cache key.

Precisions: fp32 (TF32 off), tf32, fp16. fp16 uses the fp16 step graph,
parsed as a strongly typed network so TensorRT keeps the graph's own fp32
Gram and loss sums instead of choosing precisions itself.

The optimisation profile covers every image from MIN_SIDE x MIN_SIDE (the
smallest image a run accepts) up to the largest the run will use: the
`max_side` given (a coarse-to-fine run's last scale), else the largest image
seen so far, the engine being rebuilt (or loaded from the cache) when a
larger one comes. Engines are cached (cache/tensorrt/KEY/), hash-checked,
keyed by the step graph's sha256, TensorRT's version, the GPU, the
precision and the profile.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch

from styleengine.engine.capability import precisions
from styleengine import paths
from styleengine.errors import ConfigError, UnavailableError, first_line
from styleengine.choices import MIN_SIDE
from styleengine.engine.losses import LossConfig, Targets
from styleengine.engine.graph_io import GraphIO
from styleengine.engine.steps import StepBase, StepResult, single_targets
from styleengine.export import spec as names
from styleengine.export.cache import CacheWriteError, Export, build_entry, cache_root, entry_lock, read_record
from styleengine.model.vgg import Pooling, resolve
from styleengine.model.weights import Weights

logger = logging.getLogger(__name__)

TRT_PRECISIONS = precisions("tensorrt", "cuda")
ENGINE_FILE = "step.engine"
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max) shape


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UnavailableError("the tensorrt backend needs the tensorrt package (pip install 'styleengine[tensorrt]') "
                               "and an NVIDIA GPU") from e
    if not torch.cuda.is_available():
        raise UnavailableError("the tensorrt backend needs an NVIDIA GPU; torch sees no CUDA device here")
    return trt


def profile_shapes(spec: names.ExportSpec, low: tuple[int, int], high: tuple[int, int]) -> Profile:
    """(min, opt, max) of every input whose shape follows the image's, for images from low to high (H, W).
    opt is the largest: a run's last scale is its largest and, usually, its longest."""
    def image(hw):
        return (1, 3, *hw)

    shapes = {names.IMAGE: (image(low), image(high), image(high))}
    for layer in resolve(spec.model, list(spec.content_layers)):
        def feature(hw, layer=layer):  # 2x2 stride-2 pools floor: the map is H // stride
            return (1, layer.out_channels, hw[0] // layer.stride, hw[1] // layer.stride)

        shapes[names.content_input(layer.name)] = (feature(low), feature(high), feature(high))
    return shapes


def build_engine(onnx_path, precision: str, profile: Profile) -> bytes:
    """Parse the step graph into a network and build a serialized engine for `profile`."""
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
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the step engine (see its log above)")
    return bytes(serialized)


def engine_key(step_sha256: str, precision: str, profile: Profile) -> str:
    """What an engine depends on: the graph, TensorRT's version, the GPU, the precision and the profile."""
    trt = _import_tensorrt()
    payload = {"graph": step_sha256, "trt": trt.__version__, "gpu": torch.cuda.get_device_name(),
               "precision": precision, "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def cached_engine(export: Export, precision: str, profile: Profile, *, rebuild: bool = False) -> bytes:
    """The serialized engine for (step graph, precision, profile), hash-checked; built on a miss."""
    key = engine_key(export.sha256(export.step_path), precision, profile)
    folder = cache_root() / paths.CACHE_TENSORRT / key
    claims = {"engine_key": key}  # what the engine was built from (graph, TensorRT, GPU, precision, profile)
    with entry_lock(folder):
        if not rebuild and read_record(folder, claims) is not None:
            return (folder / ENGINE_FILE).read_bytes()
        data = build_engine(export.step_path, precision, profile)
        try:
            build_entry(folder, [ENGINE_FILE], claims, lambda staging: (staging / ENGINE_FILE).write_bytes(data))
        except CacheWriteError as e:  # the engine is built: this run has it, the next one builds it again
            logger.warning("cannot keep the TensorRT engine in the cache (%s); using it for this run only",
                           first_line(e))
    return data


class TrtRunner:
    """GraphIO's Runner on a TensorRT execution context."""

    def __init__(self, context):
        self.context = context

    def bind_input(self, name: str, tensor: torch.Tensor) -> None:
        self.context.set_input_shape(name, tuple(tensor.shape))
        self.context.set_tensor_address(name, tensor.data_ptr())

    def bind_output(self, name: str, tensor: torch.Tensor) -> None:
        self.context.set_tensor_address(name, tensor.data_ptr())

    def run(self, stream: torch.cuda.Stream | None) -> None:
        # off CUDA (a fake tensorrt in the tests) there is no stream of ours: the default one, 0
        if not self.context.execute_async_v3(stream.cuda_stream if stream is not None else 0):
            raise RuntimeError("TensorRT execution failed")


class TrtStep(StepBase):
    """device: the CUDA device to run on (default the current one); tests with a fake tensorrt pass the CPU."""

    def __init__(self, export: Export, spec: names.ExportSpec, loss: LossConfig, precision: str, features_step, *,
                 max_side: int | None = None, device: torch.device | None = None):
        trt = _import_tensorrt()
        self.export, self.spec, self.loss, self.precision = export, spec, loss, precision
        self.device = device or torch.device("cuda", torch.cuda.current_device())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.io = GraphIO(spec, self.device, self.stream)
        self._targets_step = features_step  # an ORT step on the fp32 export, for targets
        self.engine: Any = None  # TensorRT's objects: untyped
        self.context: Any = None
        self._covers: tuple[tuple[int, int], tuple[int, int]] | None = None  # the engine's (low, high) image (H, W)
        if max_side is not None:  # one engine for the whole run
            self._engine_for((1, 3, max_side, max_side))

    @property
    def conv(self) -> str:
        """The graph's convolutions ("direct"); TensorRT picks its own kernels for them."""
        return self.spec.conv

    def _engine_for(self, shape: Shape) -> None:
        """Make sure the engine's profile covers an image of `shape`; else load or build one that covers it and
        every image the current one covered (so a coarse-to-fine run rebuilds at most once per new largest size)."""
        hw = (shape[2], shape[3])
        if self._covers is not None:
            (lo_h, lo_w), (hi_h, hi_w) = self._covers
            if lo_h <= hw[0] <= hi_h and lo_w <= hw[1] <= hi_w:
                return
            low, high = (min(lo_h, hw[0]), min(lo_w, hw[1])), (max(hi_h, hw[0]), max(hi_w, hw[1]))
        else:
            low, high = (min(MIN_SIDE, hw[0]), min(MIN_SIDE, hw[1])), hw
        profile = profile_shapes(self.spec, low, high)
        self.engine = self._runtime.deserialize_cuda_engine(cached_engine(self.export, self.precision, profile))
        if self.engine is None:  # hash-checked yet not loadable (another TensorRT build wrote it?): rebuilt
            data = cached_engine(self.export, self.precision, profile, rebuild=True)
            self.engine = self._runtime.deserialize_cuda_engine(data)
        self.context = self.engine.create_execution_context()
        self._covers = (low, high)
        self.io.attach(TrtRunner(self.context))  # the new context gets every tensor bound so far

    def _features(self, image: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in self._targets_step.features(image, layer_names).items()}

    def _set_targets(self, targets: Targets | list[Targets]) -> None:
        self.io.set_targets(self.loss, single_targets(self, targets))

    def _step(self, image: torch.Tensor) -> StepResult:
        self._engine_for(tuple(image.shape))
        return self.io(self.loss, image)

    def _trim(self) -> None:
        self.io.release()

    def _close(self) -> None:
        self.io.release()
        self.io.attach(None)
        self.context = None
        self.engine = None
        self._targets_step.close()


def make_trt_step(weights: Weights, loss: LossConfig, *, pooling: Pooling = "avg", precision: str = "fp32",
                  max_side: int | None = None, device: torch.device | None = None) -> TrtStep:
    """A TensorRT step on the cached step graph (fp16: the fp16 graph, validated on ORT's CUDA provider).
    max_side: the longest side the run will use, for one engine that covers every scale; None: the engine
    grows with the largest image seen (one more build, then cached, per new largest size)."""
    if precision not in TRT_PRECISIONS:
        raise ConfigError(f"the tensorrt backend runs {', '.join(TRT_PRECISIONS)}, not {precision!r}")
    _import_tensorrt()
    from styleengine.engine.ort_step import OrtStep, ensure_export, graph_spec

    graph_precision = "fp16" if precision == "fp16" else "fp32"
    export32 = ensure_export(weights, loss, pooling, "fp32")
    export = ensure_export(weights, loss, pooling, "fp16", provider="cuda") if graph_precision == "fp16" else export32
    features = OrtStep(export32, graph_spec(weights, loss, pooling, "fp32"), loss, provider="cpu")
    return TrtStep(export, graph_spec(weights, loss, pooling, graph_precision), loss, precision, features,
                   max_side=max_side, device=device)
