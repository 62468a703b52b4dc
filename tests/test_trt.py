"""What the TensorRT backend asks of TensorRT, checked against a fake `tensorrt` module.

TensorRT cannot be installed on this project's machines (its wheels fetch
NVIDIA's libraries at install time from an index they cannot reach), so
these tests pin down the plumbing a user with TensorRT will meet: the
network is parsed from the right step graph, the optimisation profile covers
every size the run uses, the precision flags, the engine cache and its key,
and no step before targets.
"""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest
import torch

from styleengine.engine import ort_step, trt_step
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import make_targets
from styleengine.export import cache
from styleengine.export.spec import GRAD, IMAGE, LOSS_OUTPUTS, content_input

SHORT = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"), tv_weight=0.05)


class FakeTensorRT(types.ModuleType):
    """The slice of the tensorrt API that engine/trt_step.py uses; records every request."""

    def __init__(self, version: str = "10.99.0-fake"):
        super().__init__("tensorrt")
        self.__version__ = version
        self.builds: list[dict] = []  # one per build_serialized_network: what the engine was asked to be
        self.contexts: list[FakeContext] = []
        self.parse_ok = True
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class BuilderFlag:
            FP16, TF32 = 0, 7

        class Network:
            def __init__(self, flags):
                self.flags, self.parsed = flags, None

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                self.network.parsed = path
                if not fake.parse_ok:
                    self.num_errors = 1
                return fake.parse_ok

            def get_error(self, i):
                return "In node 3 (Conv): unsupported"

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Config:
            def __init__(self):
                self.set, self.cleared, self.profiles = set(), set(), []

            def set_flag(self, flag):
                self.set.add(flag)

            def clear_flag(self, flag):
                self.cleared.add(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                build = {"graph": network.parsed, "network_flags": network.flags, "set": config.set,
                         "cleared": config.cleared, "profiles": [p.shapes for p in config.profiles]}
                fake.builds.append(build)
                return b"fake-engine " + str(len(fake.builds)).encode()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return FakeEngine(fake, data) if data.startswith(b"fake-engine") else None

        self.Logger, self.BuilderFlag = Logger, BuilderFlag
        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
        self.OnnxParser, self.Builder, self.Runtime = OnnxParser, Builder, Runtime


class FakeEngine:
    def __init__(self, trt: FakeTensorRT, data: bytes):
        self.trt, self.data = trt, data

    def create_execution_context(self):
        context = FakeContext(self.data)
        self.trt.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine_data: bytes):
        self.engine_data, self.shapes, self.addresses, self.runs = engine_data, {}, {}, []

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle):
        self.runs.append(stream_handle)
        return True


@pytest.fixture(scope="module")
def exports(tmp_path_factory, vgg16_random) -> Path:
    """The fp32 export, built once; each test starts from a cache holding only it."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("trt_exports")
    mp.setenv("STYLEENGINE_CACHE_DIR", str(root))
    ort_step.ensure_export(vgg16_random, SHORT, "avg")
    mp.undo()
    return root / "exports"


@pytest.fixture
def fake_trt(monkeypatch, tmp_path, exports) -> FakeTensorRT:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(exports, tmp_path / "cache" / "exports")
    real_ensure = ort_step.ensure_export

    def ensure_export(weights, loss, pooling, precision="fp32", provider="cpu"):
        if precision == "fp32":
            return real_ensure(weights, loss, pooling, precision, provider)
        # fp16 is validated on ORT's CUDA provider, which this machine lacks: the graph as written
        spec = ort_step.graph_spec(weights, loss, pooling, precision)
        export = cache.write_export(weights, spec, tmp_path / f"export-{precision}")
        return cache.record_validation(export, [{"skipped": "no GPU"}], provider)

    monkeypatch.setattr(ort_step, "ensure_export", ensure_export)
    return fake


def _graph_precision(path) -> str:
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return json.loads(meta["spec"])["precision"]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_engine_is_asked_for_the_step_graph_profile_and_precision(fake_trt, vgg16_random, precision):
    step = trt_step.make_trt_step(vgg16_random, SHORT, precision=precision, max_side=724, device=torch.device("cpu"))
    (build,) = fake_trt.builds
    assert build["graph"] == str(step.export.step_path) and step.export.step_path.name == "step.onnx"
    assert _graph_precision(step.export.step_path) == ("fp16" if precision == "fp16" else "fp32")
    strongly_typed = 1 << fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    tf32 = fake_trt.BuilderFlag.TF32
    if precision == "fp32":
        assert build["network_flags"] == 0 and build["cleared"] == {tf32} and not build["set"]
    elif precision == "tf32":
        assert build["network_flags"] == 0 and build["set"] == {tf32} and not build["cleared"]
    else:  # the graph's own types: fp16 convolutions, fp32 Grams and sums; no FP16 flag to let TRT choose
        assert build["network_flags"] == strongly_typed and not build["set"] and not build["cleared"]
    # one profile, from the smallest image a run accepts to the run's largest; relu2_2 is at stride 2
    (profile,) = build["profiles"]
    assert profile == {IMAGE: ((1, 3, 32, 32), (1, 3, 724, 724), (1, 3, 724, 724)),
                       content_input("relu2_2"): ((1, 128, 16, 16), (1, 128, 362, 362), (1, 128, 362, 362))}
    engines = list((cache.cache_root() / "tensorrt").glob(f"*/{trt_step.ENGINE_FILE}"))
    assert len(engines) == 1 and cache.read_record(engines[0].parent) is not None


def test_one_engine_covers_a_coarse_to_fine_run(fake_trt, vgg16_random):
    step = trt_step.make_trt_step(vgg16_random, SHORT, max_side=2048, device=torch.device("cpu"))
    for size in (724, 1024, 1448, (2048, 1536), (1536, 2048), (32, 48)):
        h, w = size if isinstance(size, tuple) else (size, size)
        step._engine_for((1, 3, h, w))
    assert len(fake_trt.builds) == 1


def test_without_max_side_the_engine_grows_with_the_largest_image(fake_trt, vgg16_random, make_image):
    step = trt_step.make_trt_step(vgg16_random, SHORT, device=torch.device("cpu"))
    assert not fake_trt.builds  # nothing to build before the first image
    targets = make_targets(step, SHORT, make_image(48, 40, 1), [make_image(48, 40, 2)])
    step.set_targets(targets)
    step._engine_for((1, 3, 48, 40))
    step._engine_for((1, 3, 40, 48))  # wider than the profile: rebuilt to cover both
    step._engine_for((1, 3, 32, 32))  # covered
    images = [b["profiles"][0][IMAGE] for b in fake_trt.builds]
    assert images == [((1, 3, 32, 32), (1, 3, 48, 40), (1, 3, 48, 40)),
                      ((1, 3, 32, 32), (1, 3, 48, 48), (1, 3, 48, 48))]
    # the new engine's context got the targets again
    assert fake_trt.contexts[-1].shapes[content_input("relu2_2")] == tuple(targets.content["relu2_2"].shape)
    step._engine_for((1, 3, 48, 40))  # an earlier size: the cached engine, no build
    assert len(fake_trt.builds) == 2


def test_engine_cache_key_and_hash_check(fake_trt, vgg16_random, monkeypatch):
    cpu = torch.device("cpu")
    trt_step.make_trt_step(vgg16_random, SHORT, max_side=512, device=cpu)
    step = trt_step.make_trt_step(vgg16_random, SHORT, max_side=512, device=cpu)
    assert len(fake_trt.builds) == 1  # the same graph, precision, profile, TensorRT and GPU: cached
    sha = step.export.sha256(step.export.step_path)
    profile = trt_step.profile_shapes(step.spec, (32, 32), (512, 512))
    key = trt_step.engine_key(sha, "fp32", profile)
    others = {trt_step.engine_key(sha, "tf32", profile),
              trt_step.engine_key(sha, "fp32", trt_step.profile_shapes(step.spec, (32, 32), (1024, 1024))),
              trt_step.engine_key("0" * 64, "fp32", profile)}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Other GPU")
    others.add(trt_step.engine_key(sha, "fp32", profile))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    fake_trt.__version__ = "11.0.0-fake"
    others.add(trt_step.engine_key(sha, "fp32", profile))
    fake_trt.__version__ = "10.99.0-fake"
    assert key not in others and len(others) == 5
    engine = cache.cache_root() / "tensorrt" / key / trt_step.ENGINE_FILE
    engine.write_bytes(b"fake-engine X")  # same size, other bytes
    trt_step.make_trt_step(vgg16_random, SHORT, max_side=512, device=cpu)
    assert len(fake_trt.builds) == 2 and engine.read_bytes() == b"fake-engine 2"


def test_no_step_before_targets(fake_trt, vgg16_random, make_image):
    step = trt_step.make_trt_step(vgg16_random, SHORT, max_side=64, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="set_targets"):
        step(make_image(48, 40))


def test_a_step_off_cuda_runs_on_the_default_stream(fake_trt, vgg16_random, make_image):
    """The fake's CPU device has no stream of the step's: the engine runs on stream 0, nothing waits on None."""
    step = trt_step.make_trt_step(vgg16_random, SHORT, max_side=64, device=torch.device("cpu"))
    step.set_targets(make_targets(step, SHORT, make_image(48, 40, 1), [make_image(48, 40, 2)]))
    result = step(make_image(48, 40, 3))
    context = fake_trt.contexts[-1]
    assert context.runs == [0] and result.grad.shape == (1, 3, 48, 40) and result.losses.shape == (4,)
    bound = {IMAGE, GRAD, *LOSS_OUTPUTS, *step.spec.input_names()}
    assert set(context.addresses) == bound and context.shapes[IMAGE] == (1, 3, 48, 40)
    assert context.addresses[GRAD] == result.grad.data_ptr()


def test_trt_step_lifecycle(fake_trt, vgg16_random, make_image):
    from test_step_lifecycle import assert_lifecycle

    step = trt_step.make_trt_step(vgg16_random, SHORT, max_side=64, device=torch.device("cpu"))
    assert_lifecycle(step, make_image(48, 40, 1), make_image(48, 40, 2), make_image(48, 40, 3), computes=False)


def test_make_step_passes_max_side_for_one_engine(fake_trt, vgg16_random, monkeypatch):
    """backends.make_step(max_side=...) reaches TrtStep: one engine, its profile up to the run's largest side."""
    from styleengine.engine.backends import make_step

    real = trt_step.make_trt_step
    monkeypatch.setattr(trt_step, "make_trt_step", lambda *a, **k: real(*a, **k, device=torch.device("cpu")))
    step = make_step("tensorrt", vgg16_random, SHORT, max_side=1448)
    (build,) = fake_trt.builds
    assert build["profiles"][0][IMAGE] == ((1, 3, 32, 32), (1, 3, 1448, 1448), (1, 3, 1448, 1448))
    for side in (362, 724, 1024, 1448):
        step._engine_for((1, 3, side, side))
    assert len(fake_trt.builds) == 1


def test_parse_errors_are_reported(fake_trt, vgg16_random):
    fake_trt.parse_ok = False
    with pytest.raises(RuntimeError, match="could not parse .*unsupported"):
        trt_step.make_trt_step(vgg16_random, SHORT, max_side=64, device=torch.device("cpu"))


def test_a_full_disk_keeps_the_engine_for_this_run_only(fake_trt, vgg16_random, monkeypatch, caplog):
    import errno
    import logging

    real = cache.os.replace

    def replace(src, dst, *args, **kwargs):  # the record's write and the entry's publish meet a full disk
        if "tensorrt" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(cache.os, "replace", replace)
    with caplog.at_level(logging.WARNING, logger="styleengine"):
        trt_step.make_trt_step(vgg16_random, SHORT, max_side=512, device=torch.device("cpu"))
    assert len(fake_trt.builds) == 1
    assert any("for this run only" in r.getMessage() and "No space left" in r.getMessage() for r in caplog.records)
    assert [p.name for p in (cache.cache_root() / "tensorrt").iterdir() if not p.name.endswith(".lock")] == []
