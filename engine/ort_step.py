"""The ONNX Runtime step: one run of the exported step graph per iteration.

Inputs and outputs are bound once (I/O binding) to torch tensors on the
step's device, so on a GPU provider the image and gradient never leave the
device; targets and loss weights are bound at set_targets and reused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from styleengine.choices import PROVIDER_NAMES, PROVIDERS, check_choice
from styleengine.engine import capability
from styleengine import paths
from styleengine.errors import ConfigError, ExportValidationError, UnavailableError, first_line
from styleengine.engine.losses import LossConfig, Targets
from styleengine.engine.graph_io import GraphIO
from styleengine.engine.steps import StepBase, StepResult, single_targets
from styleengine.export import spec as names
from styleengine.export.cache import (CacheWriteError, Export, build_entry, cache_root, cached_export, entry_lock,
                                      claims_match, read_graph_claims, read_record, record_validation)
from styleengine.export.spec import ExportSpec
from styleengine.model.vgg import Pooling
from styleengine.model.weights import Weights, file_sha256

logger = logging.getLogger(__name__)


def session_options(threads: int | None = None, arena: bool = True, unfolded: bool = False):
    """unfolded: keep computed weights computed (Winograd graphs: prepacking, and constant folding, see
    _optimizer_kwargs, would store the transformed kernels, 4x the weights, export/winograd.py)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # a one-off run (targets) without the arena hands its memory back to the
    # system when it ends, so it does not add to the step's own peak
    so.enable_cpu_mem_arena = arena
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    # The memory pattern preallocates one block per input shape on the second
    # run; next to the arena's freed chunks it raised the peak from 0.79 to
    # 1.40 GiB at 512 px. Without it the arena reuses the first run's chunks.
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    if unfolded:
        so.add_session_config_entry("session.disable_prepacking", "1")
        # ORT's default order ran every kernel transform (inputs: initializers only) at the start of a
        # run, all alive at once (0.87 vs 0.68 GiB peak at 192x256); by priority each runs before its layer
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return so


def _optimizer_kwargs(unfolded: bool) -> dict:
    """InferenceSession's keyword arguments for an unfolded session (session_options): no constant folding."""
    return {"disabled_optimizers": ["ConstantFolding"]} if unfolded else {}


def machine_tag() -> str:
    """ONNX Runtime version and CPU identity: what an ORT-optimised CPU graph depends on."""
    import hashlib
    import platform

    import onnxruntime as ort

    from styleengine.engine.machine import cpu_flags, cpu_name

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx", "f16c")))
    cpu = platform.machine() + (cpu_name() if cpu_flags() else "") + " ".join(flags)
    return hashlib.sha256(f"{ort.__version__}|{cpu}".encode()).hexdigest()[:12]


def check_provider(provider: str) -> str:
    """ONNX Runtime's name for `provider` if it can run here, else UnavailableError (ConfigError if unknown)."""
    import onnxruntime as ort

    check_choice("provider", provider, PROVIDERS)
    wanted = PROVIDER_NAMES[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UnavailableError(f"ONNX Runtime provider {wanted} is not available here; "
                               f"available: {', '.join(available)}")
    if provider != "cpu" and not torch.cuda.is_available():
        # onnxruntime-gpu lists its GPU providers whether or not a GPU is there
        raise UnavailableError(f"ONNX Runtime provider {wanted} needs an NVIDIA GPU, and torch sees no CUDA "
                               f"device here; use --provider cpu")
    return wanted


def create_session(path: Path, provider: str, threads: int | None = None, arena: bool = True, *,
                   sha256: str | None = None, stream: "torch.cuda.Stream | None" = None, unfolded: bool = False):
    """An InferenceSession on exactly `provider`, or UnavailableError.

    ORT silently falls back to the CPU when a GPU provider cannot start
    (missing CUDA libraries, no device), so the session's providers are
    checked after creation.

    On the CPU provider the graph as ORT optimised it (fusions, NCHWc
    layout) is cached in the cache folder, keyed by the graph's sha256 (the
    export's record, else hashed here) and machine_tag(), and loaded with
    optimisation off: optimising at load time left both weight layouts
    resident (0.30 vs 0.19 GiB after loading, 0.79 vs 0.67 GiB peak at 512 px).

    stream: a (non-default) torch CUDA stream the CUDA provider runs its kernels on, so a step queues
    behind the optimiser's kernels with no host sync (ORT treats stream 0, torch's default, as none).
    unfolded: see session_options.
    """
    import onnxruntime as ort

    wanted = check_provider(provider)
    providers: list[str | tuple[str, dict[str, str]]] = [wanted]
    if provider != "cpu":
        providers.append("CPUExecutionProvider")
    if provider == "cuda" and stream is not None:
        providers[0] = (wanted, {"device_id": str(stream.device.index or 0), "has_user_compute_stream": "1",
                                 "user_compute_stream": str(stream.cuda_stream)})
    options = session_options(threads, arena, unfolded)
    if provider == "cpu":
        session = _cpu_session(path, sha256 or file_sha256(path), options, unfolded)
    else:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        try:
            session = ort.InferenceSession(str(path), options, providers=providers, **_optimizer_kwargs(unfolded))
        except state.NoSuchFile:
            raise _graph_gone(path) from None
    got = session.get_providers()
    logger.debug("ONNX Runtime session for %s: asked for %s, got %s", path.name, wanted, got)
    if not got or got[0] != wanted:
        raise UnavailableError(f"ONNX Runtime could not start {wanted} (the session got {', '.join(got)}); "
                               f"check the CUDA/TensorRT libraries or use --provider cpu")
    return session


OPTIMISED_FILE = "optimised.onnx"


_NOT_KEPT: set[str] = set()  # why an optimised graph could not be kept, as said already


def optimised_folder(sha256: str) -> Path:
    """The cache entry of ORT's optimised CPU graph of the graph with this sha256, on this ORT and CPU."""
    return cache_root() / paths.CACHE_ORT_OPTIMISED / machine_tag() / sha256[:32]


def _cpu_session(path: Path, sha256: str, options, unfolded: bool):
    """A CPU session from the cached optimised graph, checked against its recorded hash; on a miss,
    a mismatch or a load error, one from `path` that writes the optimised graph into a new entry."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    load_errors = (state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile,
                   state.NotImplemented)
    folder = optimised_folder(sha256)
    claims = {"source_sha256": sha256}  # an entry copied from another graph's folder is not this one

    def optimise(staging: Path):
        options.optimized_model_filepath = str(staging / OPTIMISED_FILE)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    **_optimizer_kwargs(unfolded))

    try:
        with entry_lock(folder):
            if read_record(folder, claims) is not None:
                loading = session_options(options.intra_op_num_threads, options.enable_cpu_mem_arena, unfolded)
                loading.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                try:
                    session = ort.InferenceSession(str(folder / OPTIMISED_FILE), loading,
                                                   providers=["CPUExecutionProvider"])
                except load_errors as e:  # hash-checked yet unloadable (a broken build of ORT?): made again
                    logger.info("the cached optimised graph %s does not load (%s); optimising again", folder, e)
                else:  # another graph's optimised file, copied in with a record rewritten to match it
                    if claims_match(session.get_modelmeta().custom_metadata_map, read_graph_claims(path)):
                        return session
                    logger.warning("the cached optimised graph %s says it is another graph than %s; optimising "
                                   "again", folder, path.name)
            logger.info("optimising %s for this CPU into the cache (%s)", path.name, folder)
            return build_entry(folder, [OPTIMISED_FILE], claims, optimise)
    except (CacheWriteError, *load_errors) as e:  # ORT reports a failed write of its graph as one of these
        if not path.is_file():  # the graph itself went (`rm -r` of the cache as the run began): no session at all
            raise _graph_gone(path) from None
        # the optimised graph only saves start-up time: without it the run is the same, optimised in memory
        if first_line(e) not in _NOT_KEPT:  # once a process: each graph of a run (step, features) said it again
            _NOT_KEPT.add(first_line(e))
            logger.warning("cannot keep ONNX Runtime's optimised graph in the cache (%s); optimising it for this "
                           "run only", first_line(e))
        options.optimized_model_filepath = ""
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                        **_optimizer_kwargs(unfolded))
        except state.NoSuchFile:
            raise _graph_gone(path) from None


def _graph_gone(path: Path) -> CacheWriteError:
    return CacheWriteError(f"the graph {path} was removed from the cache while this ran (the cache folder cleared?); "
                           f"run again")


def _ort_device(device: torch.device) -> tuple[str, int]:
    return ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)


class OrtRunner:
    """GraphIO's Runner on an ONNX Runtime session: its I/O binding."""

    def __init__(self, session, device: torch.device, run_options):
        self.session, self.run_options = session, run_options
        self.binding = session.io_binding()
        self.kind, self.index = _ort_device(device)

    def _where(self, tensor: torch.Tensor) -> tuple:
        return self.kind, self.index, np.float32, list(tensor.shape), tensor.data_ptr()

    def bind_input(self, name: str, tensor: torch.Tensor) -> None:
        self.binding.bind_input(name, *self._where(tensor))

    def bind_output(self, name: str, tensor: torch.Tensor) -> None:
        self.binding.bind_output(name, *self._where(tensor))

    def run(self, stream: torch.cuda.Stream | None) -> None:  # the session was made on the stream
        self.session.run_with_iobinding(self.binding, self.run_options)


@dataclass(frozen=True)
class SessionRule:
    """When one of an OrtStep's sessions exists: made on first use, dropped at the lifecycle events in
    `dropped_at` ("set_targets", "trim"); close drops every session."""

    graph: str  # the export's graph: "step", "features" or "tile"
    arena: bool  # ORT's CPU arena: buffers kept between runs
    dropped_at: frozenset[str]


SESSION_RULES = {
    # made by set_targets (GPU providers: at build, to fail there); on the CPU after the features session has
    # gone, not both at once (ORT Winograd, 192x256: the targets' peak 0.60 GiB, above the loop's); its arena
    # keeps the largest image's buffers (4-5 GiB at 1448 px), which trim hands back
    "step": SessionRule("step", arena=True, dropped_at=frozenset({"trim"})),
    # targets are its only use; without an arena a one-off run's memory goes back before the step runs
    "features": SessionRule("features", arena=False, dropped_at=frozenset({"set_targets"})),
    # the tile step (tile_step's docstring: the arena, 54 vs 68 s per iteration at 2048 px)
    "tile": SessionRule("tile", arena=True, dropped_at=frozenset({"trim"})),
    # a tiled first pass runs every iteration; the arena spares fresh pages per tile (18.5 vs 23.5 s at 2048 px)
    "tile_features": SessionRule("features", arena=True, dropped_at=frozenset()),
}


class Sessions:
    """An OrtStep's ONNX Runtime sessions, each existing by its SessionRule."""

    def __init__(self, make: Callable[[str, SessionRule], Any]):
        self._make = make
        self._open: dict[str, Any] = {}

    def get(self, name: str):
        """The session, made if it is not there."""
        if name not in self._open:
            self._open[name] = self._make(name, SESSION_RULES[name])
        return self._open[name]

    def __contains__(self, name: str) -> bool:
        return name in self._open

    def at(self, event: str) -> list[str]:
        """Drop the sessions `event` ends (every one at "close"); their names."""
        gone = [n for n in self._open if event == "close" or event in SESSION_RULES[n].dropped_at]
        for n in gone:
            del self._open[n]
        return gone


class OrtStep(StepBase):
    def __init__(self, export: Export, spec: ExportSpec, loss: LossConfig, *, provider: str = "cpu",
                 threads: int | None = None, gpu: int = 0):
        import onnxruntime as ort

        self.export, self.spec, self.loss, self.provider, self.threads = export, spec, loss, provider, threads
        self.device = torch.device("cuda", gpu) if provider in ("cuda", "tensorrt") else torch.device("cpu")
        # on CUDA the step runs on a stream of ours, ordered after torch's by events, and Run does not wait
        # for it to finish: the loop's next kernels queue behind it (no host sync per iteration)
        self.stream = torch.cuda.Stream(self.device) if provider == "cuda" else None
        self.run_options = ort.RunOptions()
        if self.stream is not None:
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self.io = GraphIO(spec, self.device, self.stream)
        self.sessions = Sessions(self._make_session)
        if provider != "cpu":
            self.sessions.get("step")  # fail here, not at the first step, if the provider cannot start

    @property
    def conv(self) -> str:
        """The graph's convolutions, "direct" or "winograd" (TorchStep.conv's counterpart)."""
        return self.spec.conv

    @property
    def unfolded(self) -> bool:
        return self.conv == "winograd"

    def _make_session(self, name: str, rule: SessionRule):
        path = {"step": self.export.step_path, "features": self.export.features_path,
                "tile": self.export.tile_path}[rule.graph]
        session = create_session(path, self.provider, self.threads, rule.arena, sha256=self.export.sha256(path),
                                 stream=self.stream if name == "step" else None, unfolded=self.unfolded)
        if name == "step":
            self.io.attach(OrtRunner(session, self.device, self.run_options))
        return session

    def _drop_sessions(self, event: str) -> None:
        if "step" in self.sessions.at(event):
            self.io.attach(None)

    def _trim(self) -> None:
        """Hand back what the step sessions hold (SESSION_RULES): their arenas keep the buffers of the largest
        image (or tile) they ran, which a tiled scale after an untiled one, or the distances after the last
        step, never use. set_targets makes the step session again; the tile step makes its own on its next
        call."""
        self.io.release()
        self._drop_sessions("trim")

    def _features(self, image: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
        return self._run_features(self.sessions.get("features"), image, layer_names)

    def tile_features(self, tile: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
        """features() for a tiled step's first pass, which runs every iteration (SESSION_RULES)."""
        self._check_open("tile_features")
        return self._run_features(self.sessions.get("tile_features"), tile, layer_names)

    def _run_features(self, session, image: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
        out_names = [o.name for o in session.get_outputs()]
        unknown = set(layer_names) - set(out_names)
        if unknown:
            raise ConfigError(f"the feature graph has no layer {sorted(unknown)[0]}")
        values = session.run(layer_names, {names.IMAGE: image.detach().float().cpu().numpy()})
        return {n: torch.from_numpy(v).to(self.device) for n, v in zip(layer_names, values)}

    def _set_targets(self, targets: Targets | list[Targets]) -> None:
        one = single_targets(self, targets)
        self._drop_sessions("set_targets")
        self.sessions.get("step")
        self.io.set_targets(self.loss, one)

    def _step(self, image: torch.Tensor) -> StepResult:
        return self.io(self.loss, image)

    def tile_step(self, tile: torch.Tensor, core: tuple[int, int, int, int], content: dict[str, torch.Tensor],
                  gram_diffs: dict[str, torch.Tensor], style_coeffs: dict[str, float],
                  content_coeffs: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """One tile of an exactly tiled step: see TorchStep.tile_step for the contract.

        Runs the export's tile graph (SESSION_RULES["tile"]).
        Inputs go through host memory: tiling is for images too big for one
        step, where a copy per tile is small against the tile's convolutions.
        The session keeps ORT's arena: tiles differ in size (the last row
        and column) and the arena keeps the largest tile's buffers, but
        without it every tile's buffers are fresh pages (2048 px, VGG16,
        4 tiles: 68 s/iteration and 5.4 GB peak without, 54 s and 7.8 GB with).
        """
        self._check_open("tile_step")
        host = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
        feeds = {names.IMAGE: host(tile), names.CORE_BOX: np.asarray(core, np.int64),
                 names.STYLE_COEFFS: np.asarray([style_coeffs[n] for n in self.spec.style_layers], np.float32)}
        if self.spec.content_layers:
            feeds[names.CONTENT_COEFFS] = np.asarray([content_coeffs[n] for n in self.spec.content_layers], np.float32)
        feeds.update({names.content_input(n): host(content[n]) for n in self.spec.content_layers})
        feeds.update({names.gram_diff_input(n): host(gram_diffs[n]) for n in self.spec.style_layers})
        content_loss, grad = self.sessions.get("tile").run(list(names.TILE_OUTPUTS), feeds)
        return torch.from_numpy(content_loss).to(self.device), torch.from_numpy(grad).to(self.device)

    def _close(self) -> None:
        self.io.release()
        self._drop_sessions("close")


def graph_spec(weights: Weights, loss: LossConfig, pooling: Pooling, precision: str, conv: str = "direct"
               ) -> ExportSpec:
    loss.validate(weights.model)
    return ExportSpec(weights.model, pooling, tuple(loss.content_layers), tuple(loss.style_layers), precision,
                      conv=conv)


def graph_conv(conv: str, provider: str, precision: str) -> str:
    """The graph's convolutions for an ORT step: "auto" by capability's rule (Winograd for fp32 on the CPU
    provider, 0.45-0.87x the direct time on its large layers; GPU providers have cuDNN's own)."""
    where = "cpu" if provider == "cpu" else "cuda"
    return capability.rule("ort", where, precision, conv)[1]


def ensure_export(weights: Weights, loss: LossConfig, pooling: Pooling, precision: str = "fp32",
                  provider: str = "cpu", conv: str = "direct") -> Export:
    """The cached export, built and validated against torch on a miss."""
    from styleengine.engine.validate import validate_step

    spec = graph_spec(weights, loss, pooling, precision, conv)

    def validate(export: Export) -> Export:
        # fp32 on the CPU (one entry serves every provider); fp16 and bf16 where they run, a GPU provider
        check_provider = "cpu" if precision in capability.precisions("ort", "cpu") else provider
        report = validate_step(lambda: OrtStep(export, spec, loss, provider=check_provider), weights, loss, spec)
        return record_validation(export, [c.to_json() for c in report], check_provider)

    return cached_export(weights, spec, validate)


def make_graph_step(backend: str, weights: Weights, loss: LossConfig, *, pooling: Pooling = "avg",
                    provider: str = "cpu", precision: str = "fp32", threads: int | None = None,
                    max_side: int | None = None, conv: str = "auto", gpu: int = 0):
    """An ORT or TensorRT step (a GPU provider's on GPU `gpu`). max_side (tensorrt): the longest side the run
    will use, so that one engine covers every scale; None: an engine covering each new largest image is
    built (and cached) when it comes.
    conv (ort): the graph's convolutions (graph_conv); TensorRT picks its own from the direct graph."""
    if backend == "tensorrt":
        from styleengine.engine.trt_step import make_trt_step

        return make_trt_step(weights, loss, pooling=pooling, precision=precision, max_side=max_side)
    conv = graph_conv(conv, provider, precision)  # ConfigError where the provider cannot run the precision
    try:
        export = ensure_export(weights, loss, pooling, precision, provider, conv)
    except ExportValidationError as e:
        if precision == "fp32":
            raise  # the reference precision disagreeing with torch is a bug: its traceback stays
        # a reduced precision that does not hold for these weights here is the user's to change
        raise ConfigError(f"--precision {precision} does not hold here: {first_line(e)}; use --precision fp32"
                          ) from e
    return OrtStep(export, graph_spec(weights, loss, pooling, precision, conv), loss, provider=provider,
                   threads=threads, gpu=gpu)

