"""The real CLI: bad input is one line and exit 1 with no file; the happy paths write what they say."""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine import cli
from styleengine.engine import images, stylise as stylise_module
from styleengine.engine.loop import optimise
from styleengine.engine.steps import StepResult

from fakes import QuadraticStep, WrappedStep
try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_images import bad_files
except ModuleNotFoundError:
    from tests.test_images import bad_files

FAST = ["--weights", "random", "--model", "vgg16", "--size", "48", "--iters", "3", "--device", "cpu"]


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `styleengine ARGS` in-process through main(): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["styleengine", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def pics(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in (("content", (48, 40, 3)), ("style", (56, 56, 3)), ("style2", (40, 48, 3))):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[name])
    return paths


def assert_one_line_error(code: int, err: str, out_path: Path) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out_path.exists()
    if out_path.parent.is_dir():
        assert not any(p.name.startswith(f".{out_path.name}.") for p in out_path.parent.iterdir())


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("case", ["missing", "directory", "not_image", "truncated_png", "truncated_jpg", "tiny",
                                  "bomb", "bomb_warning"])
@pytest.mark.parametrize("role", ["content", "style"])
def test_bad_image(tmp_path, monkeypatch, capsys, pics, case, role):
    bad = bad_files(tmp_path)[case]
    out = tmp_path / "out.png"
    content, style = (bad, pics["style"]) if role == "content" else (pics["content"], bad)
    code, _, err = run_cli(monkeypatch, capsys, "run", content, style, "-o", out, *FAST)
    assert_one_line_error(code, err, out)
    assert str(bad) in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files; the directory case covers unreadable")
def test_unreadable_file(tmp_path, monkeypatch, capsys, pics):
    locked = tmp_path / "locked.png"
    locked.write_bytes(pics["style"].read_bytes())
    locked.chmod(0)
    out = tmp_path / "out.png"
    assert_one_line_error(*run_cli(monkeypatch, capsys, "run", pics["content"], locked, "-o", out, *FAST)[::2], out)


@pytest.mark.parametrize("flags", [
    ["--style-layers", "relu1_1,relu9_9"],
    ["--content-layers", "conv4_7"],
    ["--content-weight", "nan"],
    ["--style-weight", "-1"],
    ["--tv-weight", "inf"],
    ["--size", "0"],
    ["--iters", "-1"],
    ["--style-scale", "0"],
    ["--lr", "0"],
    ["--save-every", "-2"],
    ["--optimizer", "sgd"],
    ["--model", "resnet50"],
    ["--pooling", "median"],
    ["--backend", "mps"],
    ["--precision", "int4"],
    ["--device", "tpu"],
    ["--style-layer-weights", "1,2"],
    ["--style-blend", "1,x"],
    ["--style-blend", "1,2"],
    ["--mean", "1,2"],
    ["--std", "0,1,1"],
    ["--channel-order", "GBR"],
    ["--init", "no_such_init.png"],
])
def test_bad_settings(tmp_path, monkeypatch, capsys, pics, flags):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST, *flags)
    assert_one_line_error(code, err, out)


@pytest.mark.parametrize("name", ["missing_folder/out.png", "out.unknownsuffix"])
def test_bad_output_path(tmp_path, monkeypatch, capsys, pics, name):
    out = tmp_path / name
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST)
    assert_one_line_error(code, err, out)


def test_trace_in_missing_folder(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--trace", tmp_path / "nope" / "t.jsonl")
    assert_one_line_error(code, err, out)


def test_weights_of_the_wrong_architecture(tmp_path, monkeypatch, capsys, pics):
    from safetensors.torch import save_file

    from styleengine.model.weights import random_state

    weights = tmp_path / "vgg16.safetensors"
    save_file(random_state("vgg16"), str(weights))
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out,
                           "--weights", weights, "--model", "vgg19", "--size", "48", "--iters", "1")
    assert_one_line_error(code, err, out)
    assert "features." in err  # the message names the key


def test_texture_bad_style(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "texture", tmp_path / "missing.png", "-o", out, *FAST)
    assert_one_line_error(code, err, out)


def test_python_dash_m_entry_point_is_one_line(tmp_path):
    """`python -m styleengine` gives one line and exit 1."""
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-m", "styleengine", "run", str(tmp_path / "missing.png"),
                           str(tmp_path / "s.png"), "-o", str(out), "--weights", "random"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: content image {tmp_path / 'missing.png'} was not found"]
    assert not out.exists()


@pytest.mark.parametrize("args", [["run", "a.png", "b.png", "-o", "c.png", "--iters", "abc"],
                                  ["run", "a.png", "-o", "c.png", "--no-such-flag"], ["bench", "--iters", "x"],
                                  ["no-such-command"]])
def test_flags_click_cannot_parse_are_one_line_and_exit_1(args):
    proc = subprocess.run([sys.executable, "-m", "styleengine", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr
    assert "--help" in proc.stderr  # it says where to look


def test_bare_command_lists_the_commands_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "styleengine"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "run" in proc.stdout and "bench" in proc.stdout


def test_typer_floor_has_the_click_cli_imports():
    """cli.py subclasses typer's own click (typer._click, vendored from typer 0.26, which dropped its click
    dependency): the declared floor must be a typer that has it."""
    import importlib.metadata
    import re

    (typer_req,) = [r for r in importlib.metadata.requires("styleengine") if re.match(r"typer\b", r)]
    floor = re.search(r">=\s*([0-9.]+)", typer_req)
    assert floor is not None, typer_req
    assert tuple(int(p) for p in floor.group(1).split(".")) >= (0, 26), typer_req


def test_listed_command_that_vanished_is_a_usage_error(monkeypatch, capsys):
    """An optional command listed, then gone when invoked: one line and exit 1 (typer._click has no
    UsageError at its top level: it was an AttributeError)."""
    monkeypatch.setattr(cli, "_load", lambda name: None)
    code, _, err = run_cli(monkeypatch, capsys, "export", "--help")
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("error: command 'export' is not installed (see '"), err


def test_top_level_help_does_not_import_torch():
    code = ("import sys; from styleengine import cli; sys.argv = ['styleengine', '--help']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "run" in proc.stdout and "texture" in proc.stdout
    assert proc.stdout.strip().endswith("NO TORCH")


# ------------------------------------------------------------------ NaN and Ctrl-C

def FakeStep(bad_call: int, failure: str = "nan") -> QuadraticStep:
    """loss = sum(x^2); returns NaN (or raises KeyboardInterrupt) on call `bad_call`."""
    return QuadraticStep(bad_call=bad_call, failure=failure)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_nan_loss_stops_and_keeps_last_finite_image(optimizer):
    step = FakeStep(bad_call=3)
    init = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = optimise(step, init, iterations=10, optimizer=optimizer, lr=0.1)
    assert result.stopped == "non-finite loss"
    assert result.iterations == 2 and len(result.records) == 2
    torch.testing.assert_close(result.image, step.seen[1])  # the image of call 2, the last finite loss
    assert torch.isfinite(result.image).all()


def failing_make_step(failure: str, bad_call: int = 3):
    real = stylise_module.make_step

    def interrupt():
        raise KeyboardInterrupt

    def make_step(*args, **kwargs):
        if failure == "interrupt":
            return WrappedStep(real(*args, **kwargs), hooks={bad_call: interrupt})
        return WrappedStep(real(*args, **kwargs), nan_at=bad_call)
    return make_step


def test_cli_nan_loss_reports_and_writes_last_finite_image(tmp_path, monkeypatch, capsys, pics):
    monkeypatch.setattr(stylise_module, "make_step", failing_make_step("nan"))
    out, trace = tmp_path / "out.png", tmp_path / "t.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--iters", "10", "--trace", trace)
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "after 2 iterations" in errors[0]
    assert out.exists() and np.isfinite(images.load_image(out)).all()
    assert len(trace.read_text().splitlines()) == 2


def test_cli_ctrl_c_writes_current_image(tmp_path, monkeypatch, capsys, pics):
    monkeypatch.setattr(stylise_module, "make_step", failing_make_step("interrupt"))
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--iters", "10")
    assert code == 130 and "Traceback" not in err and "interrupted after 2 iterations" in err
    assert out.exists()


# ------------------------------------------------------------------ happy paths

def test_run_writes_image_and_trace(tmp_path, monkeypatch, capsys, pics):
    out, trace = tmp_path / "out.png", tmp_path / "trace.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--trace", trace)
    assert code == 0, err
    assert "NOT a stylisation" in err  # --weights random is loud about it
    # what auto became, and why, in one line (conftest: by rule, STYLEENGINE_TUNE=off)
    assert "auto: torch fp32 " in err and "on the cpu: by rule (STYLEENGINE_TUNE=off)" in err
    with Image.open(out) as img:
        assert img.size == (40, 48)  # content 40x48 (W x H): long side 48
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    for r in records:
        assert set(r) >= {"iteration", "loss", "content_loss", "style_loss", "tv_loss", "seconds"}
        assert math.isfinite(r["loss"]) and r["seconds"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "out.png", "style.png", "style2.png",
                                                          "trace.jsonl"]


def test_texture(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "tex.png"
    code, _, err = run_cli(monkeypatch, capsys, "texture", pics["style"], "-o", out, *FAST, "--size", "40")
    assert code == 0, err
    with Image.open(out) as img:
        assert img.size == (40, 40)


def test_save_every(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--iters", "4", "--save-every", "2")
    assert code == 0, err
    assert (tmp_path / "out_2.png").exists() and out.exists()
    assert not (tmp_path / "out_4.png").exists()  # the last one is OUT itself


def test_preserve_colors(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--preserve-colors", "--tv-weight", "1")
    assert code == 0, err
    result, content = images.load_image(out), images.load_image(pics["content"])
    # re-applying the content's chroma changes nothing but pixels that clipped at 0 or 1
    close = np.abs(images.preserve_colors(result, content) - result).max(axis=2) <= 6 / 255
    assert close.mean() > 0.95


def test_blend_init_path_and_convention_flags(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], pics["style2"], "-o", out,
                           *FAST, "--style-blend", "1,3", "--init", pics["style2"], "--optimizer", "adam",
                           "--channel-order", "BGR", "--pixel-range", "255", "--mean", "100,110,120",
                           "--std", "50,50,50", "--style-scale", "0.8")
    assert code == 0, err
    assert out.exists()


def test_convention_flags_reach_the_step_and_the_loaded_weights_are_let_go(tmp_path, monkeypatch, capsys, pics):
    """The CLI checks the weights up front and lets stylise load them again with the flags' convention
    (the file's own fields for the rest); stylise lets them go once its step is built (an ORT step keeps
    its own copy, so the run needs none)."""
    import gc
    import weakref

    from styleengine import cli_job
    from styleengine.model.weights import RANDOM

    loaded, alive_in_loop = [], []
    real_load, real_optimise = stylise_module.load_weights, stylise_module.optimise_at_size

    def load(*args, **kwargs):
        weights = real_load(*args, **kwargs)
        loaded.append((weights.convention, weakref.ref(weights)))
        return weights

    def optimise_at_size(*args, **kwargs):
        gc.collect()
        alive_in_loop.extend(ref() is not None for ref in held + [ref for _, ref in loaded])
        return real_optimise(*args, **kwargs)

    def checked(*args, **kwargs):  # the CLI's up-front check: the object it would hold
        weights = real_check(*args, **kwargs)
        held.append(weakref.ref(weights))
        return weights

    built, real_build = [], stylise_module.build_step

    def build(settings, weights, loss, **kwargs):  # the convention the step is built with
        built.append(weights.convention)
        return real_build(settings, weights, loss, **kwargs)

    held, real_check = [], cli_job.load_run_weights
    monkeypatch.setattr(stylise_module, "build_step", build)
    monkeypatch.setattr(stylise_module, "load_weights", load)
    monkeypatch.setattr(stylise_module, "optimise_at_size", optimise_at_size)
    monkeypatch.setattr(cli_job, "load_run_weights", checked)
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--backend", "ort", "--channel-order", "BGR", "--mean", "0.4,0.45,0.5")
    assert code == 0, err
    assert len(loaded) == 2  # the CLI's check (load_run_weights), then stylise's own
    convention = built[0]
    assert (convention.channel_order, convention.mean) == ("BGR", (0.4, 0.45, 0.5))
    assert (convention.pixel_range, convention.std) == (RANDOM.pixel_range, RANDOM.std)
    assert len(held) == 1 and alive_in_loop == [False, False, False]


def test_a_run_hands_back_its_ort_session_before_the_final_distances_unless_the_step_is_warm(monkeypatch):
    """The final distances run the features graph: a step built for the run is trimmed first (its session's
    arena held the loop's buffers beside the features session: 1.16 vs 0.83 GiB for a 384 px run); a warm
    step passed in by the caller (batch) keeps its session for the next picture."""
    from styleengine.engine.stylise import Settings, build_step, stylise

    seen = []
    real = stylise_module.distances

    def distances(step, *args, **kwargs):
        base = getattr(step, "base", step)  # a TiledStep's ORT step
        seen.append("step" not in base.sessions and "tile" not in base.sessions)
        return real(step, *args, **kwargs)

    monkeypatch.setattr(stylise_module, "distances", distances)
    rng = np.random.default_rng(4)
    content, style = rng.random((40, 48, 3), dtype=np.float32), rng.random((40, 40, 3), dtype=np.float32)
    settings = Settings(size=48, iterations=2, weights="random", model="vgg16", device="cpu", backend="ort")
    image, result = stylise(content, [style], settings)
    assert seen == [True] and result.distances is not None and np.isfinite(image).all()
    # tiled (64 px in 32 px cores): the tile step's session goes too
    image, result = stylise(content, [style], dataclasses.replace(settings, size=64, tile=32))
    assert seen == [True, True] and result.distances is not None and np.isfinite(image).all()
    resolved = settings.resolved()
    warm = build_step(resolved, stylise_module.load_run_weights(resolved), resolved.loss_config())
    try:
        stylise(content, [style], settings, step=warm)
        assert seen == [True, True, False] and "step" in warm.sessions
    finally:
        warm.close()


def test_distance_every_reaches_the_records_with_or_without_a_callback():
    """--distance-every: the records of every N-th iteration (counted across scales) carry the distances,
    in Result.records as in what the callback sees (they were measured only for a callback, and only it
    saw them)."""
    from styleengine.engine.stylise import Settings, stylise

    rng = np.random.default_rng(5)
    content, style = rng.random((40, 48, 3), dtype=np.float32), rng.random((40, 40, 3), dtype=np.float32)
    settings = Settings(size=48, iterations=4, distance_every=2, weights="random", model="vgg16", device="cpu")
    _, result = stylise(content, [style], settings)
    assert [r.iteration for r in result.records if r.distances is not None] == [2, 4]
    seen = []
    _, result = stylise(content, [style], settings, callback=lambda record, image: seen.append(record))
    assert [r.iteration for r in seen if r.distances is not None] == [2, 4]
    assert [r.distances for r in result.records] == [r.distances for r in seen]
    # coarse to fine (45 px, then 48): every 2nd iteration counted across both scales
    two = dataclasses.replace(settings, scales=2, start_size=45)
    total = sum(iterations for _, iterations in two.scale_plan())
    _, result = stylise(content, [style], two)
    assert len(result.records) == total > 4
    assert [r.iteration for r in result.records if r.distances is not None] == list(range(2, total + 1, 2))


def test_stylise_is_seeded_locally():
    from styleengine.engine.stylise import Settings, stylise

    rng = np.random.default_rng(3)
    style = rng.random((40, 40, 3), dtype=np.float32)
    settings = Settings(size=32, iterations=2, weights="random", model="vgg16", device="cpu")
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, _ = stylise(None, [style], settings)
    assert torch.rand(1) == expected  # the run drew nothing from torch's global generator
    b, _ = stylise(None, [style], settings)
    np.testing.assert_array_equal(a, b)


def test_lbfgs_gradient_scaling_keeps_loss_and_tames_the_gradient():
    """The loop's L-BFGS sees the gradient scaled so its first max is 1e-2; records keep the true loss."""

    class Huge(QuadraticStep):
        def __call__(self, image):
            r = super().__call__(image)
            return StepResult.from_floats(r.loss * 1e12, r.grad * 1e12, {k: v * 1e12 for k, v in r.parts.items()})

    x = torch.full((1, 3, 4, 4), 0.5)
    first = optimise(Huge(), x, iterations=1, optimizer="lbfgs")
    assert first.records[0].loss == pytest.approx(0.25 * 48 * 1e12)  # the loss the records show is unscaled
    moved = float((first.image - x).abs().max())
    assert 0 < moved <= 1e-2 * (1 + 1e-6)  # the first (raw-gradient) step moves pixels by at most 1e-2
    result = optimise(Huge(), x, iterations=5, optimizer="lbfgs")
    assert result.stopped is None and torch.isfinite(result.image).all()


def tune_timed(monkeypatch, capsys, tmp_path, bf16: bool) -> tuple[int, str, str]:
    """`tune` of the torch candidates on the cpu, on a CPU with or without bf16 units (whatever this one has),
    each candidate timed 100 ms slower than the one before: (exit code, stdout, stderr)."""
    import dataclasses

    from styleengine.engine import autotune

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path))
    here = autotune.probe()
    monkeypatch.setattr(autotune, "probe", lambda: dataclasses.replace(here, bf16=bf16))
    monkeypatch.setattr(autotune, "measure_candidates", lambda settings, where, options, side, export_all: [
        autotune.Trial(*o, seconds=(0.2 + 0.1 * i,) * 3) for i, o in enumerate(options)])
    autotune._memo.clear()
    return run_cli(monkeypatch, capsys, "tune", "--size", "64", "--weights", "random", "--device", "cpu",
                   "--backend", "torch")


def test_tune_prints_the_table_it_chose_from(monkeypatch, capsys, tmp_path):
    """`styleengine tune` measures (whatever STYLEENGINE_TUNE says) and prints every candidate and the pick."""
    code, out, err = tune_timed(monkeypatch, capsys, tmp_path, bf16=True)  # three candidates
    assert code == 0, err
    table = out.split("auto:")[0]  # rich wraps the table's cells to the terminal
    assert "(chosen)" in table and "bf16" in table and "200.00 ms" in table and "400.00 ms" in table
    assert "auto: torch fp32 winograd on the cpu: fastest valid" in out
    assert (tmp_path / "tune.json").is_file()
    # conftest's STYLEENGINE_TUNE=off: measured as asked, but the runs here would not read it (probe 6: unsaid)
    assert "warning: STYLEENGINE_TUNE=off: runs here pick by rule" in err


# ------------------------------------------------------------------ an exception's first line

def test_first_line_of_an_error():
    from styleengine.errors import ConfigError, first_line

    # ours is one line but for a name's line break, said as \n, not cut there (probe 16: "image not found: a")
    assert first_line(ConfigError("\n  bad flag\nmore detail")) == "bad flag\\nmore detail"
    assert first_line(OSError("\n  bad disk\nmore detail")) == "bad disk"  # a library's: its first line
    assert first_line(ConfigError("")) == first_line(ConfigError(" \n ")) == "ConfigError"
    assert first_line(ConfigError("raw"), "formatted\nrest") == "formatted"


def test_empty_user_error_is_one_line_in_bench(monkeypatch, capsys):
    """`python -m styleengine.cli_bench`: a UserError with no message still says which error (it raised
    IndexError on the empty message)."""
    import typer

    from styleengine import cli_bench
    from styleengine.errors import ConfigError

    def fail(_command):
        raise ConfigError("")

    monkeypatch.setattr(typer, "run", fail)
    with pytest.raises(SystemExit) as exit_info:
        cli_bench.main()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: ConfigError\n"


def test_empty_user_error_fails_its_batch_job(monkeypatch, tmp_path):
    """batch: a job whose file checks raise a UserError with no message fails with a reason (IndexError)."""
    from styleengine import cli_batch
    from styleengine.engine import batch
    from styleengine.errors import ImageError

    def fail(**_files):
        raise ImageError("")

    monkeypatch.setattr(cli_batch, "check_files", fail)
    job = batch.Job("j", tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / "out" / "o.png")
    planned = cli_batch._check(batch.Planned(job, stylise_module.Settings(), "h", "run"), tmp_path / "out")
    assert (planned.status, planned.reason) == ("failed", "ImageError")


def test_run_races_auto_once_then_reads_the_record(tmp_path, monkeypatch, capsys, pics):
    """Tuning on and nothing measured: the run says it races, then what each size class picked; the
    next run reads the record and races nothing."""
    from styleengine.engine import autotune, race

    monkeypatch.setattr(race, "RACE_SHARE", 1.0)  # a 12-iteration run affords no race at 3% (test_race covers it)
    monkeypatch.setattr(race, "RACE_CAP", 1.0)
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    autotune._memo.clear()
    args = ["run", pics["content"], pics["style"], "-o", tmp_path / "out.png", *FAST, "--iters", "12",
            "--backend", "torch", "--precision", "fp32"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "auto: racing torch fp32 winograd, torch fp32 direct in the run's first steps" in err
    assert "auto: at 128 px: torch fp32 " in err and "measured now" in err and "not kept" not in err, err
    autotune._memo.clear()
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "racing" not in err and "measured now" not in err and "measured earlier here" in err
    autotune._memo.clear()
