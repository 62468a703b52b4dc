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
from fakes import WrappedStep, unblock_later
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

@pytest.mark.parametrize("name", ["x.xbm", "x.msp", "x.bufr", "/proc/x.png", LONG_NAME, "FILE/x.png", "adir.png"])
def test_unwritable_output_is_refused_before_work(tmp_path, monkeypatch, capsys, pics, no_step, name):
    (tmp_path / "adir.png").mkdir()
    out = a_file(tmp_path) / "x.png" if name == "FILE/x.png" else tmp_path / name
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], out=out)
    assert str(out) in err


@pytest.mark.parametrize("suffix", [".xbm", ".msp", ".bufr"])
def test_check_output_path_tries_the_encoder(tmp_path, suffix):
    with pytest.raises(ImageError, match="PIL cannot save RGB"):
        paths.check_output_path(tmp_path / f"x{suffix}")
    paths.check_output_path(tmp_path / "x.png")
    paths.check_output_path(tmp_path / "x.webp")
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


def test_snapshots_too_long_a_name_are_refused_before_work(tmp_path, monkeypatch, capsys, pics, no_step):
    out = tmp_path / ("b" * 240 + ".png")  # fits; out_<iteration>.png with its temp file does not
    refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--save-every", "1", out=out)


def test_save_image_temp_file_failure_is_an_image_error(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="too long"):
        images.save_image(np.zeros((40, 40, 3), np.float32), tmp_path / LONG_NAME)
    with pytest.raises(ImageError):
        images.save_image(np.zeros((40, 40, 3), np.float32), Path("/proc/x.png"))
    assert list(tmp_path.iterdir()) == []


def HookedStep(inner, hooks) -> WrappedStep:
    """A real step that runs `hooks[n]()` before its n-th call."""
    return WrappedStep(inner, hooks=hooks)


def hooked(monkeypatch, hooks):
    real = stylise_module.make_step
    monkeypatch.setattr(stylise_module, "make_step", lambda *a, **k: HookedStep(real(*a, **k), hooks))


@pytest.mark.parametrize("with_trace", [True, False])
def test_final_write_failure_saves_the_image_elsewhere(tmp_path, monkeypatch, capsys, pics, with_trace):
    """The output's folder vanishes mid-run: the image goes next to the trace, else to the temp dir."""
    folder, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    trace = tmp_path / "trace" / "t.jsonl"
    trace.parent.mkdir()
    hooked(monkeypatch, {2: folder.rmdir})
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", folder / "out.png",
                           *FAST, *(["--trace", trace] if with_trace else []))
    assert code == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    (rescued,) = (trace.parent if with_trace else elsewhere).glob("out-rescued-*.png")
    assert f"saved the image to {rescued} instead" in line and str(folder / "out.png") in line
    with Image.open(rescued) as img:
        assert img.size == (40, 48)


# ------------------------------------------------------------------ 4, 5. sizes known up front

@pytest.mark.parametrize("scales", [["--scales", "1"], []])
def test_huge_size_fails_at_once(tmp_path, monkeypatch, capsys, pics, no_step, scales):
    start = time.perf_counter()
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--size", "60000", *scales)
    assert time.perf_counter() - start < 1.0
    assert "memory" in err and "50000x60000" in err


@pytest.fixture
def eight_gib(monkeypatch):
    from styleengine.engine import plan

    monkeypatch.setattr(plan, "free_memory", lambda device: 8 * 2**30)


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
    from styleengine.engine import autotune, capability

    # as on a machine with a GPU and TensorRT
    monkeypatch.setattr(autotune, "probe", lambda: capability.Machine(cuda=True, tensorrt=True))
    monkeypatch.setattr(stylise_module, "check_available", lambda settings: None)
    with pytest.raises(ConfigError, match="tensorrt backend cannot tile"):
        check_run(Settings(size=4096, scales=1, backend="tensorrt", precision="fp32"), (4096, 4096), [(64, 64)])
    check_run(Settings(size=512), (512, 512), [(64, 64)])


def test_memory_check_counts_the_style_images(eight_gib):
    with pytest.raises(ConfigError, match="4096x4096"):
        check_run(Settings(size=512, style_scale=8), (512, 512), [(64, 64)])


@pytest.mark.parametrize("role", ["content", "style"])
def test_extreme_aspect_ratio_is_one_line_before_work(tmp_path, monkeypatch, capsys, pics, no_step, role):
    content, style = (pics["wide"], pics["style"]) if role == "content" else (pics["content"], pics["wide"])
    err = refused(monkeypatch, capsys, pics, tmp_path, content, style, "--size", "64")
    assert "64x1 px" in err and "1575 px" in err and str(pics["wide"]) in err


def test_extreme_aspect_ratio_texture_and_early_scales(tmp_path, monkeypatch, capsys, pics, no_step):
    out = tmp_path / "t.png"
    code, _, err = run_cli(monkeypatch, capsys, "texture", pics["wide"], "-o", out, *FAST, "--size", "64")
    assert_one_line_error(code, err, out)
    # fine at the final 2000 px, 32x1 at the first of 3 scales: refused too
    with pytest.raises(ConfigError, match="at 1000 px"):
        check_run(Settings(size=2000, scales=3, start_size=1000), (40, 2000), [(56, 56)])


# ------------------------------------------------------------------ 7. never overwrite an input

@pytest.mark.parametrize("how", ["content", "style", "relative", "symlink", "hardlink", "init", "trace"])
def test_output_that_is_an_input_is_refused(tmp_path, monkeypatch, capsys, pics, no_step, how):
    before = pics["style"].read_bytes()
    monkeypatch.chdir(tmp_path)
    extra = []
    if how == "content":
        out = pics["content"]
    elif how in ("style", "init"):
        out = pics["style"]
    elif how == "relative":
        (tmp_path / "sub").mkdir()
        out = Path("sub/../style.png")
    elif how == "symlink":
        out = tmp_path / "link.png"
        out.symlink_to(pics["style"])
    elif how == "hardlink":
        out = tmp_path / "hard.png"
        os.link(pics["style"], out)
    else:  # the trace would overwrite the content image
        out, extra = tmp_path / "new.png", ["--trace", str(pics["content"])]
    if how == "init":  # the output is the --init image (style given another name)
        other = tmp_path / "other_style.png"
        other.write_bytes(before)
        args, extra = (pics["content"], other), ["--init", str(pics["style"])]
    else:
        args = (pics["content"], pics["style"])
    code, _, err = run_cli(monkeypatch, capsys, "run", *args, "-o", out, *FAST, *extra)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "choose another file name" in err
    assert pics["style"].read_bytes() == before


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


def test_cli_nan_image_is_one_line(tmp_path, monkeypatch, capsys, pics, no_step):
    values = np.full((48, 48), 0.5)
    values[1, 1] = np.nan
    nan_tif = float_tiff(tmp_path / "nan.tif", values)
    assert "NaN" in refused(monkeypatch, capsys, pics, tmp_path, nan_tif, pics["style"])
    assert "NaN" in refused(monkeypatch, capsys, pics, tmp_path, pics["content"], nan_tif)


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


# ------------------------------------------------------------------ 9. the last tracebacks

def test_bad_weight_files_are_one_line(tmp_path, monkeypatch, capsys, pics, no_step):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    extra = random_state("vgg16") | {"features.conv.weight": torch.zeros(3)}
    nan_state = random_state("vgg16")
    nan_state["features.2.weight"][0, 0, 0, 0] = float("nan")
    cases = {
        empty: "empty.pth",
        weights_file(tmp_path, "std0.safetensors", metadata={"channel_order": "RGB", "mean": "0,0,0",
                                                             "std": "0,0,0"}): "std",
        weights_file(tmp_path, "mean12.safetensors", metadata={"channel_order": "RGB", "mean": "1,2"}): "mean",
        weights_file(tmp_path, "extra.safetensors", extra): "features.conv.weight",
        weights_file(tmp_path, "nan.safetensors", nan_state): "features.2.weight",
    }
    for path, needle in cases.items():
        err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--weights", path)
        assert needle in err and str(path) in err, err


@pytest.mark.parametrize("where", ["directory", "proc", "under_a_file"])
def test_unwritable_trace_is_refused_before_work(tmp_path, monkeypatch, capsys, pics, no_step, where):
    trace = {"directory": tmp_path, "proc": Path("/proc/t.jsonl"),
             "under_a_file": a_file(tmp_path) / "t.jsonl"}[where]
    assert "trace" in refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--trace", trace)


@pytest.mark.parametrize("where", ["file", "under_a_file", "proc"])
def test_unusable_cache_dir_is_refused_before_work(tmp_path, monkeypatch, capsys, pics, no_step, where):
    cache = {"file": a_file(tmp_path), "under_a_file": a_file(tmp_path) / "cache", "proc": Path("/proc/cache")}
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(cache[where]))
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--backend", "ort")
    assert "STYLEENGINE_CACHE_DIR" in err


@pytest.mark.parametrize("where", ["directory", "proc", "under_a_file"])
def test_bench_json_unwritable_is_refused_before_row_1(tmp_path, monkeypatch, capsys, where):
    from styleengine import cli_bench

    def no_rows(*args, **kwargs):
        raise AssertionError("bench started measuring")

    monkeypatch.setattr(cli_bench, "machine_info", no_rows)
    target = {"directory": tmp_path, "proc": Path("/proc/b.json"), "under_a_file": a_file(tmp_path) / "b.json"}
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--res", "64", "--backends", "torch",
                           "--json", target[where])
    assert code == 1 and err.startswith("error: cannot write --json") and err.count("\n") == 1, err


# ------------------------------------------------------------------ 10. every setting before the step

@pytest.mark.parametrize("flags", [
    ["--style-blend", "0"],
    ["--backend", "ort", "--precision", "fp16"],
    ["--backend", "tensorrt", "--precision", "fp32", "--tile", "512"],
    ["--std", "0,1,1"],
    ["--mean", "1,2"],
    ["--pixel-range", "inf"],
    ["--channel-order", "GBR"],
    ["--scales", "9"],
    ["--start-size", "4000"],
])
def test_every_setting_is_checked_before_the_step(tmp_path, monkeypatch, capsys, pics, no_step, flags):
    refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], *flags)


def test_blend_of_two_zeros_and_missing_hardware_before_the_step(tmp_path, monkeypatch, capsys, pics, no_step):
    refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], pics["style"],
            "--style-blend", "0,0")
    if not torch.cuda.is_available():
        for flags in (["--device", "cuda"], ["--backend", "ort", "--provider", "cuda"]):
            refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], *flags)
        with pytest.raises(UnavailableError):
            stylise_module.check_available(Settings(backend="tensorrt", precision="fp32"))


# ------------------------------------------------------------------ 11. signals

def self_signal(signum):
    def send():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler interrupts this at once
        raise AssertionError("the signal was not delivered")
    return send


@pytest.mark.parametrize("signum,code,name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_in_the_loop_writes_the_current_image(tmp_path, monkeypatch, capsys, pics, signum, code, name):
    hooked(monkeypatch, {3: self_signal(signum)})
    out, trace = tmp_path / "out.png", tmp_path / "t.jsonl"
    got, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                          "--iters", "10", "--trace", trace)
    assert got == code and "Traceback" not in err
    assert f"interrupted after 2 iterations ({name}); wrote {out}" in err
    assert out.exists() and len(trace.read_text().splitlines()) == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() put the handlers back


@pytest.mark.parametrize("signum,code,name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_in_set_up_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys, pics, signum, code, name):
    def make_step(*args, **kwargs):
        self_signal(signum)()

    monkeypatch.setattr(stylise_module, "make_step", make_step)
    out, trace = tmp_path / "out.png", tmp_path / "t.jsonl"
    got, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                          "--trace", trace)
    assert got == code and "Traceback" not in err
    errors = [x for x in err.splitlines() if x.startswith("error: ")]
    assert errors == [f"error: interrupted ({name}) before the first iteration; nothing written"]
    assert not out.exists() and not trace.exists()


def test_signal_while_the_result_is_written_is_held_back(tmp_path, monkeypatch, capsys, pics):
    from styleengine import cli_job

    real = images.save_image

    def save(image, path):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write: held until the file is complete
        real(image, path)

    monkeypatch.setattr(cli_job.images, "save_image", save)
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST)
    # the file complete, then the signal said (before the run's last line: probe 13)
    assert code == 143 and "interrupted" in err and "Traceback" not in err
    assert Image.open(out).size[0] > 0


def test_sigterm_to_a_real_process_writes_the_current_image(tmp_path, pics):
    """What `timeout`, `kill` and batch schedulers do: the loop stops, the image is written, exit 143."""
    out, trace = tmp_path / "out.png", tmp_path / "t.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "styleengine", "run", str(pics["content"]), str(pics["style"]),
                             "-o", str(out), *FAST, "--size", "40", "--iters", "100000", "--trace", str(trace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (trace.exists() and trace.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "(SIGTERM); wrote" in err
    with Image.open(out) as img:
        assert img.size == (33, 40)
    assert not list(tmp_path.glob(".out.png.*"))


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

    class InterruptedTargets(WrappedStep):
        def features(self, image, names):
            self.feature_calls = getattr(self, "feature_calls", 0) + 1
            # scale 2's content features (scale 1: content, then style; only the last scale measures distances)
            if self.feature_calls == 3:
                raise KeyboardInterrupt
            return self.inner.features(image, names)

    monkeypatch.setattr(stylise_module, "make_step", lambda *a, **k: InterruptedTargets(real(*a, **k), {}))
    content = images.to_array(make_image(64, 64, seed=1))
    style = images.to_array(make_image(64, 64, seed=2))
    settings = Settings(size=64, scales=2, iterations=2, weights="random", model="vgg16", device="cpu")
    image, result = stylise_module.stylise(content, [style], settings)
    assert result.stopped == "interrupted" and result.iterations == 2
    assert image.shape == (45, 45, 3) and np.isfinite(image).all()


def test_ctrl_c_while_measuring_distances_keeps_the_image(monkeypatch, make_image):
    """A KeyboardInterrupt in the final distance measurement ends the run as interrupted, image kept."""
    real = stylise_module.make_step

    class InterruptedDistances(WrappedStep):
        def features(self, image, names):
            self.feature_calls = getattr(self, "feature_calls", 0) + 1
            if self.feature_calls == 3:  # after the targets (content, style): the distances' style Grams
                raise KeyboardInterrupt
            return self.inner.features(image, names)

    monkeypatch.setattr(stylise_module, "make_step", lambda *a, **k: InterruptedDistances(real(*a, **k), {}))
    content = images.to_array(make_image(48, 48, seed=1))
    style = images.to_array(make_image(48, 48, seed=2))
    image, result = stylise_module.stylise(content, [style], Settings(size=48, iterations=3, weights="random",
                                                                      model="vgg16", device="cpu"))
    assert result.stopped == "interrupted" and result.iterations == 3 and result.distances is None
    assert image.shape == (48, 48, 3) and np.isfinite(image).all()


# ------------------------------------------------------------------ issue 23: outputs, signals, weights, messages

def test_weights_path_is_expanded_before_the_output_check(tmp_path, monkeypatch, capsys, pics, no_step):
    """`--weights=~/w.pth --trace ~/w.pth`: the shell expands only the second; the check sees both expanded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WDIR", str(tmp_path))
    weights = tmp_path / "w.pth"
    torch.save(random_state("vgg16"), weights)
    before = weights.read_bytes()
    for spelling in ("~/w.pth", "$WDIR/w.pth"):
        err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], f"--weights={spelling}",
                      "--trace", weights)
        assert "weights file" in err
    assert weights.read_bytes() == before


def full_disk_open(monkeypatch, module, name_part: str):
    """`open` in `module` writes to /dev/full (ENOSPC at the first flush) for paths containing name_part."""
    import builtins

    def fake(path, *args, **kwargs):
        return builtins.open("/dev/full" if name_part in str(path) else path, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake, raising=False)


def test_trace_on_a_full_disk_is_a_warning_and_the_image_is_written(tmp_path, monkeypatch, capsys, pics):
    from styleengine import cli_job

    full_disk_open(monkeypatch, cli_job, "t.jsonl")
    out, trace = tmp_path / "out.png", tmp_path / "t.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--trace", trace)
    assert code == 0 and "Traceback" not in err, err
    assert out.is_file() and "warning: trace" in err and "No space left on device" in err


def test_snapshot_on_a_full_disk_is_a_warning_and_the_image_is_written(tmp_path, monkeypatch, capsys, pics):
    import contextlib

    real = paths.temp_beside

    @contextlib.contextmanager
    def full(path, dir_fd=None):
        with real(path, dir_fd) as (fd, name):
            if not Path(path).name.startswith("out_"):  # the snapshots, not the final image
                yield fd, name
                return
            os.close(fd)
            yield os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(paths, "temp_beside", full)
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--save-every", "1")
    assert code == 0 and "Traceback" not in err, err
    assert out.is_file() and "warning:" in err and "No space left on device" in err
    assert not list(tmp_path.glob(".out_*"))


def test_trace_onto_a_snapshot_is_refused(tmp_path, monkeypatch, capsys, pics, no_step):
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--save-every", "1",
                  "--trace", tmp_path / "out_1.png")
    assert "snapshot" in err


def test_sighup_in_the_loop_writes_the_current_image(tmp_path, monkeypatch, capsys, pics):
    """A closed terminal or ssh session: as SIGTERM, the current image is kept."""
    def unhandled(signum, frame):  # the default would end the test process itself
        raise AssertionError("SIGHUP reached the handler outside the command")

    hooked(monkeypatch, {3: self_signal(signal.SIGHUP)})
    out = tmp_path / "out.png"
    previous = signal.signal(signal.SIGHUP, unhandled)
    try:
        code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                               "--iters", "10")
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert code == 129 and "Traceback" not in err, err
    assert f"interrupted after 2 iterations (SIGHUP); wrote {out}" in err and out.exists()


def test_fifo_content_image_is_refused(tmp_path, monkeypatch, capsys, pics, no_step):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    fed = unblock_later(fifo)
    err = refused(monkeypatch, capsys, pics, tmp_path, fifo, pics["style"])
    assert "not a regular file" in err and not fed.is_set()


@pytest.mark.parametrize("flags,needle", [(["--seed", str(10**20)], "--seed"), (["--iters", str(10**10)], "--iters"),
                                          (["--seed", "-1"], "--seed")])
def test_huge_seed_and_iterations_are_refused_with_a_bound(tmp_path, monkeypatch, capsys, pics, no_step, flags,
                                                           needle):
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], *flags)
    assert needle in err and "at most" in err


def test_all_zero_weights_are_refused(tmp_path, monkeypatch, capsys, pics, no_step):
    state = {k: torch.zeros_like(v) for k, v in random_state("vgg16").items()}
    path = tmp_path / "zeros.pth"
    torch.save(state, path)
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], "--weights", path)
    assert "all zeros" in err


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("how", ["torch_save", "raw_pickle"])
def test_pickled_code_is_refused_as_such(tmp_path, how):
    import pickle

    path = tmp_path / "evil.pth"
    if how == "torch_save":
        torch.save({"features.0.weight": _Payload()}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(), protocol=4))
    with pytest.raises(WeightsError, match="needs code to unpickle"):
        load_weights("vgg16", str(path))


def test_interrupted_coarse_to_fine_says_the_image_is_a_first_scale_size(tmp_path, monkeypatch, capsys, pics):
    hooked(monkeypatch, {2: self_signal(signal.SIGINT)})
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--size", "64", "--scales", "2", "--iters", "5")
    assert code == 130, err
    with Image.open(out) as img:
        width, height = img.size
    assert max(width, height) < 64
    assert f"{width}x{height} px" in err and "--size 64" in " ".join(err.split())


def test_extreme_aspect_error_names_size(tmp_path, monkeypatch, capsys, no_step):
    content = tmp_path / "thin.png"
    Image.fromarray(np.zeros((32, 10000, 3), np.uint8)).save(content)
    style = tmp_path / "style.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(style)
    code, _, err = run_cli(monkeypatch, capsys, "run", content, style, "-o", tmp_path / "o.png", *FAST)
    assert code == 1
    assert "--size 9844" in err


@pytest.mark.parametrize("name", ["x\u0000.png", "z" * 300 + ".png"])
def test_unusable_output_name_is_one_line(tmp_path, monkeypatch, capsys, pics, no_step, name):
    err = refused(monkeypatch, capsys, pics, tmp_path, pics["content"], pics["style"], out=tmp_path / name)
    assert "NUL" in err or "null byte" in err or "too long" in err


def test_disk_full_in_the_cache_is_one_line(tmp_path, monkeypatch, vgg16_random):
    import errno

    from styleengine.engine.ort_step import graph_spec
    from styleengine.engine.losses import LossConfig
    from styleengine.export import cache

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "write_export", full)
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1",))
    with pytest.raises(ConfigError, match="No space left on device.*STYLEENGINE_CACHE_DIR"):
        cache.cached_export(vgg16_random, graph_spec(vgg16_random, loss, "avg", "fp32"), lambda e: e)
