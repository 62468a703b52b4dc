"""Shared fixtures: seeded random VGG weights, tiny images, the shared VGG16 file.

Everything here is generic (no test module's particular sizes or layers), so
any test file can use it. Nothing touches the network: `imagenet` weights are
never loaded here.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch

from styleengine.model.weights import Weights, load_weights

# the signal tests send SIGHUP to commands that keep an ignored one ignored (nohup): they start from a terminal's
# default, whatever the runner (a background job, nohup) left
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

SHARED_VGG16_NAME = "vgg16_imagenet_features.safetensors"
# the repo checkout sits next to shared/ (/work/main and /work/shared)
_DEFAULT_SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / SHARED_VGG16_NAME


def shared_vgg16_path() -> Path | None:
    """The shared VGG16 ImageNet file, or None when this machine lacks it.

    STYLEENGINE_SHARED_WEIGHTS may name the file itself or the folder holding it.
    """
    env = os.environ.get("STYLEENGINE_SHARED_WEIGHTS")
    candidates = []
    if env:
        p = Path(env).expanduser()
        candidates.append(p / SHARED_VGG16_NAME if p.is_dir() else p)
    candidates.append(_DEFAULT_SHARED_WEIGHTS)
    for path in candidates:
        if path.is_file():
            return path
    return None


_SKIP_SHARED = (
    f"shared VGG16 weights not found at {_DEFAULT_SHARED_WEIGHTS} "
    "(set STYLEENGINE_SHARED_WEIGHTS to the file or its folder)"
)


@pytest.fixture(autouse=True)
def no_signal_left_over():
    """A test whose command a signal stopped leaves it recorded; the next test's command, invoked without
    main()'s handlers (CliRunner), would say it was interrupted as it ended."""
    yield
    cli = sys.modules.get("styleengine.cli")
    if cli is not None:
        cli.signals.clear()


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Every test session gets its own cache folder (exports, the bench's peak figure): no test reads or
    writes the user's real cache. Sessions share it between tests, since a VGG export costs seconds;
    a test that needs an empty cache sets STYLEENGINE_CACHE_DIR itself (monkeypatch)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("STYLEENGINE_CACHE_DIR", str(path))
    # `auto` by rule, not by a timed trial: the same path on every machine (tests/test_autotune.py measures)
    mp.setenv("STYLEENGINE_TUNE", "off")
    # a picture rescued to the temp folder (a failed write, on purpose) lands in the session's folder, not /tmp
    mp.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def random_weights() -> Callable[..., Weights]:
    """Factory: random_weights(model="vgg19", seed=0) -> seeded random Weights (cached)."""
    cache: dict[tuple[str, int], Weights] = {}

    def make(model: str = "vgg19", seed: int = 0) -> Weights:
        if (model, seed) not in cache:
            cache[(model, seed)] = load_weights(model, "random", seed=seed)
        return cache[(model, seed)]

    return make


_MACHINE: list[dict] = []


@pytest.fixture
def machine_once(monkeypatch) -> None:
    """`bench` in this process describes the machine from a worker process once per session, not once per
    command: that worker (importing torch, onnx, onnxruntime) costs seconds a command, and a test of what bench
    does with its outputs does not depend on what it says of the machine. The first use runs the real one."""
    import copy

    from styleengine import cli_bench
    from styleengine.benchmarks.runner import machine_info

    def once() -> dict:
        if not _MACHINE:
            _MACHINE.append(machine_info())
        return copy.deepcopy(_MACHINE[0])

    monkeypatch.setattr(cli_bench, "machine_info", once)


@pytest.fixture(scope="session")
def vgg19_random(random_weights) -> Weights:
    return random_weights("vgg19", 0)


@pytest.fixture(scope="session")
def vgg16_random(random_weights) -> Weights:
    return random_weights("vgg16", 0)


@pytest.fixture
def make_image() -> Callable[..., torch.Tensor]:
    """Factory: make_image(h, w, seed=0, dtype=float32) -> (1, 3, h, w) uniform in [0, 1], seeded."""

    def make(height: int = 32, width: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(1, 3, height, width, generator=gen, dtype=torch.float64).to(dtype)

    return make


@pytest.fixture
def tiny_image(make_image) -> torch.Tensor:
    """(1, 3, 20, 24) fp32, non-square, odd after two poolings."""
    return make_image(20, 24, seed=0)


@pytest.fixture(scope="session")
def shared_vgg16_file() -> Path:
    path = shared_vgg16_path()
    if path is None:
        pytest.skip(_SKIP_SHARED)
    return path


@pytest.fixture(scope="session")
def vgg16_imagenet(shared_vgg16_file) -> Weights:
    """The shared ImageNet VGG16 (BGR, 0-255, caffe mean), loaded once per session."""
    return load_weights("vgg16", str(shared_vgg16_file))
