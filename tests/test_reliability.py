"""Issue 12: nothing lost, nothing silently wrong. Every case a careless or hostile user tried is refused
in one line before any work (exit 1, nothing written), or, where work was done, keeps it.

Tests run as root, so chmod 000 does not make a folder unwritable: unwritable places here are /proc and
paths under a regular file. `no_step` makes building the step a test failure: a check that passes it
came too late.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine import paths
from styleengine.engine import images, stylise as stylise_module
from styleengine.engine.steps import StepBase
from styleengine.engine.stylise import Settings, check_run
from styleengine.errors import ConfigError, ImageError, UnavailableError, WeightsError
from styleengine.model.weights import load_weights, random_state

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import FAST, assert_one_line_error, run_cli
except ModuleNotFoundError:
    from tests.test_cli import FAST, assert_one_line_error, run_cli

LONG_NAME = "a" * 245 + ".png"  # legal (249 characters), too long once the temp file's 14 are added


@pytest.fixture
def pics(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in (("content", (48, 40, 3)), ("style", (56, 56, 3)), ("wide", (40, 2000, 3))):
        out[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(out[name])
    return out


@pytest.fixture
def no_step(monkeypatch):
    def make_step(*args, **kwargs):
        raise AssertionError("the step was built: the check came too late")

    monkeypatch.setattr(stylise_module, "make_step", make_step)


def refused(monkeypatch, capsys, pics, tmp_path, *args, out: Path | None = None) -> str:
    """Run `run CONTENT STYLE... -o OUT` with the fast defaults and `args`' flags; assert one line, exit 1,
    nothing written (no output, trace or temp file); return the error line."""
    out = out or tmp_path / "out.png"
    before = set(tmp_path.rglob("*"))
    n = next((i for i, a in enumerate(args) if str(a).startswith("--")), len(args))  # the images come first
    code, _, err = run_cli(monkeypatch, capsys, "run", *args[:n], "-o", out, *FAST, *args[n:])
    assert_one_line_error(code, err, tmp_path / "never_written.png")
    assert set(tmp_path.rglob("*")) == before
    return err.strip()


def a_file(tmp_path) -> Path:
    path = tmp_path / "regular_file"
    path.write_text("not a folder")
    return path


# ------------------------------------------------------------------ 2. the outputs, checked before any work

@pytest.mark.parametrize("suffix", [".xbm", ".msp", ".bufr"])
def test_check_output_path_tries_the_encoder(tmp_path, suffix):
    with pytest.raises(ImageError, match="PIL cannot save RGB"):
        images.check_output_path(tmp_path / f"x{suffix}")
    images.check_output_path(tmp_path / "x.png")
    images.check_output_path(tmp_path / "x.webp")
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


def test_save_image_temp_file_failure_is_an_image_error(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="too long"):
        images.save_image(np.zeros((40, 40, 3), np.float32), tmp_path / LONG_NAME)
    with pytest.raises(ImageError):
        images.save_image(np.zeros((40, 40, 3), np.float32), Path("/proc/x.png"))
    assert list(tmp_path.iterdir()) == []


class HookedStep(StepBase):
    """A real step that runs `hooks[n]()` before its n-th call."""

    def __init__(self, inner, hooks):
        self.inner, self.device, self.hooks, self.calls = inner, inner.device, hooks, 0

    def features(self, image, names):
        return self.inner.features(image, names)

    def set_targets(self, targets):
        self.inner.set_targets(targets)

    def close(self):
        self.inner.close()

    def __call__(self, image):
        self.calls += 1
        if self.calls in self.hooks:
            self.hooks[self.calls]()
        return self.inner(image)


def hooked(monkeypatch, hooks):
    real = stylise_module.make_step
    monkeypatch.setattr(stylise_module, "make_step", lambda *a, **k: HookedStep(real(*a, **k), hooks))


# ------------------------------------------------------------------ 4, 5. sizes known up front

@pytest.fixture
def eight_gib(monkeypatch):
    monkeypatch.setattr(stylise_module, "available_memory", lambda settings: 8 * 2**30)


def test_memory_check_suggests_tile_and_budget(eight_gib, monkeypatch):
    big = Settings(size=4096, scales=1, weights="random")
    with pytest.raises(ConfigError, match=r"untiled; add --mem-budget 7.2 .* or --tile \d+"):
        check_run(big, (4096, 4096), [(64, 64)])
    check_run(Settings(size=4096, scales=1, tile=512), (4096, 4096), [(64, 64)])  # fits tiled
    with pytest.raises(ConfigError, match=r"--tile 4000 at 4096x4096 .* use --tile \d+ or less"):
        check_run(Settings(size=4096, scales=1, tile=4000), (4096, 4096), [(64, 64)])
    check_run(Settings(size=4096, scales=1, mem_budget_gib=8), (4096, 4096), [(64, 64)])  # the budget is trusted
    with pytest.raises(ConfigError, match="too small"):
        check_run(Settings(size=4096, scales=1, mem_budget_gib=0.6), (4096, 4096), [(64, 64)])
    monkeypatch.setattr(stylise_module, "check_available", lambda settings: None)  # as on a machine with TensorRT
    with pytest.raises(ConfigError, match="tensorrt backend cannot tile"):
        check_run(Settings(size=4096, scales=1, backend="tensorrt", precision="fp32"), (4096, 4096), [(64, 64)])
    check_run(Settings(size=512), (512, 512), [(64, 64)])


def test_memory_check_counts_the_style_images(eight_gib):
    with pytest.raises(ConfigError, match="4096x4096"):
        check_run(Settings(size=512, style_scale=8), (512, 512), [(64, 64)])


# ------------------------------------------------------------------ 8. non-finite inputs

def float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), "F").save(path)
    return path


@pytest.mark.parametrize("bad,needle", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                        (-np.inf, "NaN or infinite"), (200.0, "from 0.5 to 200"),
                                        (-0.5, "from -0.5 to 0.5")])
def test_float_tiff_outside_zero_one_is_refused(tmp_path, bad, needle):
    values = np.full((40, 40), 0.5)
    values[3, 4] = bad
    with pytest.raises(ImageError, match=needle):
        images.load_image(float_tiff(tmp_path / "f.tif", values))


def test_float_tiff_rounding_is_clipped_and_int_range_checked(tmp_path):
    values = np.full((40, 40), 0.5)
    values[0, 0], values[0, 1] = 1.0004, -0.0004
    out = images.load_image(float_tiff(tmp_path / "f.tif", values))
    assert out[0, 0, 0] == 1.0 and out[0, 1, 0] == 0.0
    wide = np.full((40, 40), 70000, np.int32)
    Image.fromarray(wide, "I").save(tmp_path / "i.tif")
    with pytest.raises(ImageError, match="0-65535"):
        images.load_image(tmp_path / "i.tif")


def weights_file(tmp_path, name, state=None, metadata=None) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / name
    state = random_state("vgg16") if state is None else state
    if name.endswith(".pth"):
        torch.save(state, path)
    else:
        save_file(state, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("key,value", [("features.0.weight", float("nan")), ("features.28.bias", float("inf")),
                                       ("features.14.weight", -float("inf"))])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weights_are_refused_at_load(tmp_path, key, value, suffix):
    state = random_state("vgg16")
    state[key] = state[key].clone()
    state[key].view(-1)[5] = value
    with pytest.raises(WeightsError, match=f"{key} .* NaN or infinite"):
        load_weights("vgg16", str(weights_file(tmp_path, f"w{suffix}", state)))


# ------------------------------------------------------------------ 11. signals

def self_signal(signum):
    def send():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler interrupts this at once
        raise AssertionError("the signal was not delivered")
    return send


def test_same_file_and_writable_helpers(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    assert paths.same_file(a, tmp_path / "." / "a.txt") and not paths.same_file(a, tmp_path / "b.txt")
    paths.check_writable(tmp_path / "new.txt", "file")
    with pytest.raises(ConfigError, match="too long"):
        paths.check_writable(tmp_path / LONG_NAME, "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_ctrl_c_between_scales_keeps_the_last_scale(monkeypatch, make_image):
    """The loop's contract holds between scales too: a KeyboardInterrupt while the next scale's targets are
    computed ends the run with the previous scale's image, not a lost run."""
    real = stylise_module.make_step

    class InterruptedTargets(HookedStep):
        def features(self, image, names):
            self.feature_calls = getattr(self, "feature_calls", 0) + 1
            if self.feature_calls == 3:  # scale 2's content features (scale 1: content, then style)
                raise KeyboardInterrupt
            return self.inner.features(image, names)

    monkeypatch.setattr(stylise_module, "make_step", lambda *a, **k: InterruptedTargets(real(*a, **k), {}))
    content = images.to_array(make_image(64, 64, seed=1))
    style = images.to_array(make_image(64, 64, seed=2))
    settings = Settings(size=64, scales=2, iterations=2, weights="random", model="vgg16", device="cpu")
    image, result = stylise_module.stylise(content, [style], settings)
    assert result.stopped == "interrupted" and result.iterations == 2
    assert image.shape == (45, 45, 3) and np.isfinite(image).all()
