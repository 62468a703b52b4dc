"""Issue 23, probe 13 (on f769f52): the last stop's fixes from other angles (numbers read strictly everywhere,
$VARIABLES in every path, the dry run's promise) and ground no probe had tried (odd but legal images, encodings,
a deleted working folder, input conventions past float32). About 300 cases; the defects it found are tests here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line

FAST = ["--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch"]


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


def _listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ D1: bench --tile read loosely

@pytest.mark.parametrize("tile", ["1_6", "\uff11\uff16"])
def test_bench_tile_reads_its_numbers_strictly(monkeypatch, capsys, tile):
    """`bench --tile 1_6` (and full-width digits) timed tile 16 and exited 0: --tile is a comma list, read by
    benchmarks/config.py with int(), past the typed options' strict reading."""
    code, out, err = run_cli(monkeypatch, capsys, "bench", "--res", "32", "--backends", "torch", "--iters", "1",
                             "--rounds", "1", "--warmup", "0", "--tile", tile)
    assert "--tile" in one_error_line(code, err) and "not a size" in err
    assert "ms" not in out


# ------------------------------------------------------------------ D2: a variable that expands to nothing

@pytest.mark.parametrize("argv", [
    ["batch", "jobs.jsonl", "--out", "$E"],
    ["batch", "--contents", "$E", "--styles", "s.png", "--out", "out"],
    ["export", "--output", "$E"],
    ["run", "c.png", "s.png", "-o", "$E"],
    ["run", "$E", "s.png", "-o", "o.png"],
])
def test_a_variable_set_to_nothing_is_an_empty_name(tmp_path, monkeypatch, capsys, argv):
    """With `E=` (set, empty): `batch --out '$E'` wrote into the working folder, `export --output '$E'` 170 MB of
    graphs there, `--contents '$E'` stylised every picture there; `--out ''` was refused all along."""
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png"}) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E", "")
    before = _listing(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *argv, *FAST[:2])
    assert "$E" in one_error_line(code, err) and "empty" in err
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("key", ["output", "content"])
def test_a_jobs_files_variable_set_to_nothing_is_refused(tmp_path, monkeypatch, capsys, key):
    """JSONL `"output": "$E"` silently took the default name; `"content": "$E"` said "cannot read .". """
    _pictures(tmp_path)
    job = {"content": "c.png", "styles": "s.png", key: "$E"}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    monkeypatch.setenv("E", "")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           *FAST)
    assert "line 1" in one_error_line(code, err) and "$E" in err and "empty" in err
    assert not (tmp_path / "out" / "c_s.png").exists()


# ------------------------------------------------------------------ D3: style arguments expanded

@pytest.mark.parametrize("spelling", ["$D/s.png", "${D}/s.png", "$D/s.png,$D/s.png"])
def test_style_arguments_are_expanded_as_every_other_path(tmp_path, monkeypatch, capsys, spelling):
    """`run c.png '$D/s.png'` said "image not found: $D/s.png" where the content, --init, masks and -o (and a
    jobs file's styles) were all expanded."""
    _pictures(tmp_path)
    monkeypatch.setenv("D", str(tmp_path))
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", spelling, "-o", tmp_path / "o.png",
                           "--dry-run", *FAST)
    assert code == 0, err


def test_an_unset_variable_in_a_style_argument_is_named(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    monkeypatch.delenv("NOPE", raising=False)
    code, _, err = run_cli(monkeypatch, capsys, "texture", "$NOPE/s.png", "-o", tmp_path / "o.png", "--dry-run",
                           *FAST)
    assert "$NOPE" in one_error_line(code, err) and "not set" in err


# ------------------------------------------------------------------ D4: export's and visualize's --weights

@pytest.mark.parametrize("command", [["export", "--output", "e"], ["visualize", "-o", "v.png", "--class", "1"]])
def test_weights_of_export_and_visualize_expand_variables(tmp_path, monkeypatch, capsys, command):
    """`export --weights '$W/w.safetensors'` said "weights file $W/... was not found": named_text passed the raw
    text on (`~` was expanded later, `$VAR` never); run, batch, video, invert, tune and serve expand it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NOPE", raising=False)
    code, _, err = run_cli(monkeypatch, capsys, *command, "--weights", "$NOPE/w.safetensors")
    assert "$NOPE" in one_error_line(code, err) and "not set" in err and "--weights" in err
    (tmp_path / "w.safetensors").write_bytes(b"x" * 64)  # no weights file: the error must name the expanded path
    monkeypatch.setenv("W", str(tmp_path))
    code, _, err = run_cli(monkeypatch, capsys, *command, "--weights", "$W/w.safetensors")
    assert "$W" not in one_error_line(code, err) and str(tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


# ------------------------------------------------------------------ D5: the dry run refuses what the run refuses

@pytest.mark.parametrize("case", ["trace-is-content", "trace-is-output", "trace-folder-missing", "trace-is-folder",
                                  "suffix", "snapshot-is-content", "fifo-init", "fifo-mask", "tiny-content"])
def test_the_dry_run_refuses_every_output_and_input_the_run_refuses(tmp_path, monkeypatch, capsys, case):
    """The README said the dry run "refuses the outputs the run refuses"; it checked -o only: a trace onto the
    content, the output or a missing folder, -o o.xbm, a snapshot named like the content, a FIFO as --init or a
    mask, and a 1x1 content image all exited 0."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    content, output, extra = "c.png", "o.png", []
    if case == "trace-is-content":
        extra = ["--trace", "c.png"]
    elif case == "trace-is-output":
        extra = ["--trace", "o.png"]
    elif case == "trace-folder-missing":
        extra = ["--trace", "nod/t.jsonl"]
    elif case == "trace-is-folder":
        (tmp_path / "im").mkdir()
        extra = ["--trace", "im"]
    elif case == "suffix":
        output = "o.xbm"
    elif case == "snapshot-is-content":
        Image.new("RGB", (48, 40)).save(tmp_path / "r_2.png")
        content, output, extra = "r_2.png", "r.png", ["--save-every", "2", "--iters", "4"]
    elif case == "fifo-init":
        os.mkfifo(tmp_path / "f.png")
        extra = ["--init", "f.png"]
    elif case == "fifo-mask":
        os.mkfifo(tmp_path / "m.png")
        extra = ["--content-mask", "m.png"]
    elif case == "tiny-content":
        Image.new("RGB", (1, 1)).save(tmp_path / "c.png")
    before = _listing(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "run", content, "s.png", "-o", output, "--dry-run", *FAST, *extra)
    one_error_line(code, err)
    assert "plan:" not in out
    assert _listing(tmp_path) == before


# ------------------------------------------------------------------ D6: every style layer weight 0

@pytest.mark.parametrize("source", ["flag", "jsonl"])
def test_all_zero_style_layer_weights_with_a_style_weight_are_refused(tmp_path, monkeypatch, capsys, source):
    """`--style-layer-weights 0,0,0,0,0` ran with no style term at all and exit 0 (probe 12's empty layer list by
    another road); texture refused it already."""
    _pictures(tmp_path)
    if source == "flag":
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--style-layer-weights", "0,0,0,0,0", *FAST)
        assert "style layer weight" in one_error_line(code, err) and "--style-weight 0" in err
    else:
        job = {"content": "c.png", "styles": "s.png", "style_layer_weights": [0, 0, 0, 0, 0]}
        (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                               *FAST)
        assert code == 1 and "line 1: every style layer weight is 0" in err, err  # a failed job, said by line
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "out" / "c_s.png").exists()


def test_zero_style_layer_weights_with_no_style_weight_still_run():
    from styleengine.engine.settings import Settings

    Settings(style_layer_weights=(0.0,) * 5, style_weight=0.0).validate()


# ------------------------------------------------------------------ minor: conventions past float32

@pytest.mark.parametrize("flags", [["--std", "1e-50,1,1"], ["--pixel-range", "1e-50"], ["--pixel-range", "1e39"],
                                   ["--mean", "1e308,0,0"]])
def test_an_input_convention_past_float32_is_refused_up_front(tmp_path, monkeypatch, capsys, flags):
    """`--pixel-range 1e-50` ran on an all-zero input and exited 0 (content distance 0); `--std 1e-50,1,1`,
    `--pixel-range 1e39` and `--mean 1e308` failed at iteration 0 with a non-finite loss: the network computes in
    float32, where these are 0 or infinite."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, *flags)
    assert "float32" in one_error_line(code, err)
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ minor: STYLEENGINE_TUNE's values

@pytest.mark.parametrize("value", ["false", " off", "OFF\n", "No"])
def test_tune_off_is_read_in_every_usual_spelling(monkeypatch, value):
    from styleengine.engine.autotune import tuning_enabled

    monkeypatch.setenv("STYLEENGINE_TUNE", value)
    assert not tuning_enabled()


@pytest.mark.parametrize("value", ["on", "true", "1", "yes", ""])
def test_tune_on_is_read_in_every_usual_spelling(monkeypatch, value):
    from styleengine.engine.autotune import tuning_enabled

    monkeypatch.setenv("STYLEENGINE_TUNE", value)
    assert tuning_enabled()


def test_an_unknown_tune_value_is_one_line(tmp_path, monkeypatch, capsys):
    """`STYLEENGINE_TUNE=bogus` (or `false`) silently meant "on"."""
    _pictures(tmp_path)
    monkeypatch.setenv("STYLEENGINE_TUNE", "bogus")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", "--dry-run", *FAST[:2])
    assert "STYLEENGINE_TUNE" in one_error_line(code, err) and "bogus" in err


# ------------------------------------------------------------------ minor: a deleted working folder

def test_a_deleted_working_folder_is_one_line(tmp_path):
    """Every command that imports torch died with "Intel oneMKL FATAL ERROR", exit 2, even with absolute paths:
    torch's own import needs the working folder. One line before any import instead."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); "
            "sys.argv = ['styleengine', 'run', 'c.png', 's.png', '-o', 'o.png']; "
            "from styleengine.cli import console; console()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "working folder" in lines[0], done.stderr


# ------------------------------------------------------------------ cosmetic

def test_an_output_name_ending_in_a_slash_is_a_folder_not_a_file(tmp_path, monkeypatch, capsys):
    """`run -o o.png/` wrote o.png."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           f"{tmp_path / 'o.png'}/", *FAST)
    assert "--output" in one_error_line(code, err) and "folder" in err
    assert not (tmp_path / "o.png").exists()


def test_serve_refuses_an_upload_limit_no_request_fits(monkeypatch, capsys):
    """`serve --max-upload-mb 1e-300` started, then refused every request "over the limit of 0 MB"."""
    from styleengine.serve import app

    def no_server(*args, **kwargs):
        raise SystemExit(99)  # got as far as opening the server's folder: the limit was taken

    monkeypatch.setattr(app, "open_store", no_server)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--max-upload-mb", "1e-300", "--port", "59999")
    assert "--max-upload-mb" in one_error_line(code, err)


def test_the_limit_rule_compares_the_side_an_image_is_made_at():
    """size=64, style_scale=1.0000001 on --max-size 64 said "(64 px) is over ... limit of 64 px": the style image
    is made at round(64.0000064) = 64 px."""
    from styleengine.engine.settings import Settings
    from styleengine.serve.app import over_limits

    assert over_limits(Settings(size=64, style_scale=1.0000001), 64, 1000) is None
    reason = over_limits(Settings(size=64, style_scale=1.01), 64, 1000)
    assert reason is not None and "(65 px)" in reason
    assert over_limits(Settings(size=64, style_scale=1e308), 64, 1000) is not None


def test_the_api_takes_numpy_arrays_for_a_list_setting():
    """`style_blend=np.array([1.])` was refused as "not a text or a list of texts"."""
    from styleengine.api import settings_of

    assert settings_of({"style_blend": np.array([1.0, 3.0])}).style_blend == (1.0, 3.0)
    assert settings_of({"style_layer_weights": np.ones(5, np.float32)}).style_layer_weights == (1.0,) * 5
    assert settings_of({"size": np.array(48)}).size == 48


# ------------------------------------------------------------------ probe 13b: signals as a command ends

def _run_args(tmp_path):
    return ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST, "--iters", "3"]


def test_a_signal_held_through_the_final_write_is_said(tmp_path, monkeypatch, capsys):
    """A SIGTERM between the loop's end and the final write (20 of 20 trials in that 0.5 s window) exited 0 with
    "wrote o.png": held through the write, then never raised. A signal before a command's last line is said by
    it (143, the picture whole); one after that line changes nothing (probe 12)."""
    import signal

    from styleengine import cli_job

    _pictures(tmp_path)
    real = cli_job._write_result

    def signalled_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_job, "_write_result", signalled_write)
    code, _, err = run_cli(monkeypatch, capsys, *_run_args(tmp_path))
    assert code == 143 and "interrupted after 3 iterations (SIGTERM)" in err, err
    assert Image.open(tmp_path / "o.png").size == (40, 33)  # the whole run's size


class _Cut:
    """A step that raises KeyboardInterrupt where a signal would land: in its first call, or in its close."""

    def __init__(self, step, where):
        self._step, self._where = step, where

    def __getattr__(self, name):
        return getattr(self._step, name)

    def __call__(self, image):
        if self._where == "first step":
            raise KeyboardInterrupt
        return self._step(image)

    def close(self):
        self._step.close()
        if self._where == "close":
            raise KeyboardInterrupt


def test_a_signal_as_the_step_closes_keeps_the_finished_picture(tmp_path, monkeypatch, capsys):
    """A signal put off during the step's close (the tuning account imported onnx there: 0.5 s) came out of
    stylise's `finally` as a KeyboardInterrupt: "interrupted before the first iteration; nothing written", the
    finished picture lost."""
    from styleengine.engine import stylise as stylise_module

    _pictures(tmp_path)
    real = stylise_module.build_step
    monkeypatch.setattr(stylise_module, "build_step", lambda *a, **k: _Cut(real(*a, **k), "close"))
    code, _, err = run_cli(monkeypatch, capsys, *_run_args(tmp_path))
    assert code == 130 and "interrupted after 3 iterations" in err, err
    assert Image.open(tmp_path / "o.png").size == (40, 33)  # the whole run's size


def test_the_account_after_a_run_imports_no_onnx(tmp_path, monkeypatch):
    """Where a signal is put off (an import) as the run ends: the account's write took export.cache, onnx and
    protobuf with it, for a torch run."""
    code = ("import sys\nfrom styleengine.engine import autotune\n"
            "autotune.add_to_account({'a': 1}, 1.0, 0.0, {})\n"
            "print(sorted(m for m in ('onnx', 'styleengine.export.cache') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "STYLEENGINE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "cache" / "tune.json").is_file()


def test_a_signal_before_the_first_step_writes_no_start_image(tmp_path, monkeypatch, capsys):
    """A SIGHUP as the loop began wrote the start image as the result ("interrupted after 0 iterations; wrote
    o.png", replacing whatever o.png held); before the first iteration nothing is written, as in set-up."""
    from styleengine.engine import stylise as stylise_module

    _pictures(tmp_path)
    (tmp_path / "o.png").write_bytes(b"the user's earlier result")
    real = stylise_module.build_step
    monkeypatch.setattr(stylise_module, "build_step", lambda *a, **k: _Cut(real(*a, **k), "first step"))
    code, _, err = run_cli(monkeypatch, capsys, *_run_args(tmp_path))
    assert code == 130 and "nothing written" in one_line(err), err
    assert (tmp_path / "o.png").read_bytes() == b"the user's earlier result"


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_signal_put_off_then_a_refusal_exits_with_the_signals_code(tmp_path, monkeypatch, capsys):
    """A SIGINT put off during an import, then batch's "another batch is running" before it was raised: exit 1
    (5 of 5), the signal lost. The refusal's line stays; the exit code is the signal's."""
    import signal

    from styleengine import cli, paths

    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png"}) + "\n")

    def held_elsewhere(path):
        cli.signals.received = signal.SIGINT  # what _handle records before putting the KeyboardInterrupt off
        return None

    monkeypatch.setattr(paths, "open_lock", held_elsewhere)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out", *FAST)
    assert code == 130 and "another batch or server is running" in err, err  # its holder not known


def test_a_server_stopped_cleanly_leaves_no_lock_file(tmp_path):
    """serve's `results/.batch.lock` stayed after a clean stop, where batch takes its own away (one release for
    both now: paths.release_lock)."""
    from styleengine.engine.manifest import LOCK_FILE
    from styleengine.serve.jobs import JobStore

    store = JobStore(tmp_path / "srv")
    lock = store.results / LOCK_FILE
    assert lock.exists()
    store.close()
    assert not lock.exists()
    JobStore(tmp_path / "srv").close()  # the folder is free for the next server


# ------------------------------------------------------------------ probe 14 (on 3cf34c6): today's fixes' neighbours

@pytest.mark.parametrize("spelling", ["o.png/.", "$D", "$D."])
def test_a_name_that_ends_as_a_folder_is_refused_however_spelled(tmp_path, monkeypatch, capsys, spelling):
    """`-o o.png/.` and `-o '$D'` with D=o.png/ wrote o.png: the slash check read the text as typed."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("D", "o.png/")
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "-o", spelling, *FAST)
    assert "is a folder" in one_error_line(code, err)
    assert not (tmp_path / "o.png").exists()


def test_a_jobs_output_ending_in_slash_dot_is_refused(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", "output": "x.png/."}))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out", *FAST)
    assert "line 1" in one_error_line(code, err) and "is a folder" in err


@pytest.mark.parametrize("flags", [["--tv-weight", "1e39"], ["--style-weight", "1e39"],
                                   ["--style-layer-weights", "1e-50,1e-50,1e-50,1e-50,1e-50"],
                                   ["--pixel-range", "1e-37"], ["--std", "1e30,1e30,1e30"]])
def test_weights_and_conventions_float32_cannot_hold_are_refused(tmp_path, monkeypatch, capsys, flags):
    """`--tv-weight 1e39` replaced an existing o.png with the start image (the loss not finite at iteration 0);
    `--style-layer-weights 1e-50` x5 is 0 in float32 and ran without style; `--pixel-range 1e-37` wrote an
    all-black picture with distances nan, exit 0."""
    _pictures(tmp_path)
    (tmp_path / "o.png").write_bytes(b"the user's earlier result")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, *flags)
    assert "float32" in one_error_line(code, err)
    assert (tmp_path / "o.png").read_bytes() == b"the user's earlier result"


def test_a_first_iteration_that_is_not_finite_writes_nothing(tmp_path, monkeypatch, capsys):
    """Whatever makes the first loss non-finite, -o keeps what it held (the start image replaced it), and the API
    raises instead of handing the start image back as a result."""
    import styleengine
    from styleengine.engine import loop

    _pictures(tmp_path)
    (tmp_path / "o.png").write_bytes(b"the user's earlier result")
    real = loop.Result

    def never_finite(image, iterations, stopped, records, distances=None, **kwargs):
        return real(image, 0, "non-finite loss", [], distances, **kwargs)

    from styleengine.engine import stylise as stylise_module

    monkeypatch.setattr(stylise_module, "Result", never_finite)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST)
    assert "nothing written" in one_error_line(code, err)
    assert (tmp_path / "o.png").read_bytes() == b"the user's earlier result"
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError, match="not finite at the first iteration"):
        styleengine.stylise(np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8), weights="random",
                            size=40, iterations=1, backend="torch")


@pytest.mark.parametrize("env, argv", [
    ({"STYLEENGINE_CACHE_DIR": "$E", "E": ""}, ["bench", "--res", "32", "--backends", "torch", "--iters", "1",
                                                 "--rounds", "1", "--warmup", "0"]),
    ({"STYLEENGINE_CACHE_DIR": "  "}, ["tune", "--size", "32"]),
    ({"STYLEENGINE_TUNE": "bogus"}, ["tune", "--size", "32"]),
])
def test_an_environment_variable_it_cannot_use_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, env,
                                                                          argv):
    """bench gave a traceback for STYLEENGINE_CACHE_DIR='$E' (E=''); '  ' made a folder of spaces in the working
    folder; `tune` timed every candidate before refusing STYLEENGINE_TUNE=bogus."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = _listing(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *argv, "--weights", "random") if argv[0] != "bench" else \
        run_cli(monkeypatch, capsys, *argv)
    assert "STYLEENGINE_" in one_error_line(code, err)
    assert "timing" not in err and _listing(tmp_path) == before


@pytest.mark.parametrize("word", ["./random", "./content"])
def test_a_jobs_files_dot_slash_name_is_a_file_not_a_word(tmp_path, monkeypatch, capsys, word):
    """`"weights": "./random"` in a jobs file in the working folder ran random weights (`./content` the content
    start): the path beside the jobs file joined to the word. The CLI and API read them as files."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    key = "weights" if "random" in word else "init"
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", key: word}) + "\n")
    extra = FAST if key == "init" else FAST[2:]
    code, _, err = run_cli(monkeypatch, capsys, "batch", "jobs.jsonl", "--out", "out", *extra)
    assert code == 1 and "0 ok" in err and word.lstrip("./") in err, err


@pytest.mark.parametrize("flags", [["--max-pixels", "0.0005"], ["--token", "  "], ["--token", " abc"]])
def test_serve_refuses_limits_and_tokens_no_request_can_meet(monkeypatch, capsys, flags):
    """`serve --max-pixels 0.0005` started, then refused every upload; a token of spaces opened a public server to
    `?token=%20%20`, and no Authorization header carries it."""
    from styleengine.serve import app

    def no_server(*args, **kwargs):
        raise SystemExit(99)  # got as far as opening the server's folder: the value was taken

    monkeypatch.setattr(app, "open_store", no_server)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--host", "0.0.0.0", "--port", "59998",
                           *(["--token", "secret"] if "--token" not in flags else []), *flags)
    assert flags[0] in one_error_line(code, err)


def test_a_style_list_with_an_empty_name_is_refused(tmp_path, monkeypatch, capsys):
    """`run c.png 's.png,$E'` (E='') ran with one style; a jobs file's list refused it."""
    _pictures(tmp_path)
    monkeypatch.setenv("E", "")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", f"{tmp_path / 's.png'},$E", "-o",
                           tmp_path / "o.png", "--dry-run", *FAST)
    assert "empty name" in one_error_line(code, err)


# ------------------------------------------------------------------ probe 14b: invert, visualize, the run's end

def _signal_in_the_save(monkeypatch, module):
    import signal

    real = module.write_or_rescue

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "write_or_rescue", signalled)


@pytest.mark.parametrize("command", ["invert", "visualize"])
def test_invert_and_visualize_keep_a_finished_picture_through_a_signal(tmp_path, monkeypatch, capsys, command):
    """A signal after invert's or visualize's loop (the final score, the step's close, the save) exited 143 with
    "error: interrupted" and no picture (10 of 15 at 224 px); run held it through its write."""
    from styleengine import cli_invert, cli_visualize

    _pictures(tmp_path)
    _signal_in_the_save(monkeypatch, cli_invert if command == "invert" else cli_visualize)
    out = tmp_path / "o.png"
    argv = (["invert", tmp_path / "c.png", "--layer", "relu2_1"] if command == "invert" else
            ["visualize", "--class", "3", "--model", "vgg16"])
    code, _, err = run_cli(monkeypatch, capsys, *argv, "-o", out, "--weights", "random", "--size", "40", "--iters",
                           "2")
    assert code == 143 and "(SIGTERM); wrote" in err and "error:" not in err, err
    assert Image.open(out).size[0] == 40


@pytest.mark.parametrize("command", ["invert", "visualize"])
def test_invert_and_visualize_write_nothing_before_the_first_iteration(tmp_path, monkeypatch, capsys, command):
    """A signal before the first iteration: visualize wrote its start image over -o ("after 0 iterations"),
    invert too ("wrote o.png (0 iterations)"); run and texture already wrote nothing."""
    from styleengine import cli_invert
    from styleengine.engine import loop

    _pictures(tmp_path)
    out = tmp_path / "o.png"
    out.write_bytes(b"the user's earlier result")

    def cut(image):
        import torch

        return loop.Result(torch.zeros(1, 3, 40, 40), 0, "interrupted", [])

    if command == "invert":
        monkeypatch.setattr(cli_invert, "run_inversion", lambda picture, *a, **k: (picture, cut(None), None))
        argv = ["invert", tmp_path / "c.png", "--layer", "relu2_1"]
    else:
        monkeypatch.setattr(loop, "optimise", lambda step, start, **k: cut(start))
        argv = ["visualize", "--class", "3", "--model", "vgg16"]
    code, _, err = run_cli(monkeypatch, capsys, *argv, "-o", out, "--weights", "random", "--size", "40", "--iters",
                           "2")
    assert code == 130 and "nothing written" in one_line(err), err
    assert out.read_bytes() == b"the user's earlier result"


def test_a_signal_as_the_trace_closes_keeps_the_finished_picture(tmp_path, monkeypatch, capsys):
    """A signal after the loop, in what follows the step's close (the trace's close, the progress bar's end), said
    "before the first iteration; nothing written" (3 of 68 end trials): execute's handler took it for set-up's."""
    import signal

    from styleengine import cli_job

    _pictures(tmp_path)
    real = cli_job.TraceWriter.close

    def signalled_close(self):
        if self.lines:  # the last close, after the loop
            os.kill(os.getpid(), signal.SIGTERM)
        real(self)

    monkeypatch.setattr(cli_job.TraceWriter, "close", signalled_close)
    code, _, err = run_cli(monkeypatch, capsys, *_run_args(tmp_path), "--trace", tmp_path / "t.jsonl")
    assert code == 143 and "interrupted after 3 iterations (SIGTERM)" in err, err
    assert Image.open(tmp_path / "o.png").size == (40, 33)
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 3


def test_a_keyboard_interrupt_in_the_progress_bars_end_keeps_the_picture(tmp_path, monkeypatch, capsys):
    from rich.progress import Progress

    _pictures(tmp_path)
    real = Progress.__exit__

    def cut_exit(self, *exc):
        real(self, *exc)
        if exc[0] is None:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "__exit__", cut_exit)
    code, _, err = run_cli(monkeypatch, capsys, *_run_args(tmp_path))
    assert code == 130 and "interrupted after 3 iterations" in err and "nothing written" not in err, err
    assert Image.open(tmp_path / "o.png").size == (40, 33)


# ------------------------------------------------------------------ probe 15 (on b7c8265)

@pytest.mark.parametrize("command", ["batch", "run"])
def test_a_tune_setting_it_cannot_read_is_one_line_before_any_job_or_weights(tmp_path, monkeypatch, capsys,
                                                                             command):
    """`STYLEENGINE_TUNE=bogus batch` failed every job on it (a failed line each in the manifest); `run` loaded (or
    downloaded) its weights first."""
    from styleengine.model import weights as weights_module

    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png"}) + "\n")
    monkeypatch.setenv("STYLEENGINE_TUNE", "bogus")

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the refusal")

    from styleengine.engine import stylise as stylise_module

    monkeypatch.setattr(weights_module, "load_weights", no_weights)
    monkeypatch.setattr(stylise_module, "load_weights", no_weights)
    argv = (["batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out"] if command == "batch" else
            ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png"])
    code, _, err = run_cli(monkeypatch, capsys, *argv, *FAST)
    assert "STYLEENGINE_TUNE" in one_error_line(code, err) and "line 1" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("flags, says", [(["--tv-weight", "1e39"], "past float32"),
                                         (["--l2-weight", "1e-50"], "past float32")])
def test_visualize_refuses_weights_float32_cannot_hold(tmp_path, monkeypatch, capsys, flags, says):
    """`visualize --tv-weight 1e39` replaced -o with the start image ("0 iterations"), exit 0: its own weight
    check took any finite number."""
    out = tmp_path / "o.png"
    out.write_bytes(b"the user's earlier result")
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "--class", "3", "--model", "vgg16", "-o", out,
                           "--weights", "random", "--size", "40", "--iters", "2", *flags)
    assert says in one_error_line(code, err)
    assert out.read_bytes() == b"the user's earlier result"


def test_a_last_step_that_is_not_finite_is_no_result(tmp_path, monkeypatch, capsys):
    """`visualize --l2-weight 1e37` wrote a picture of NaN ("score -> nan", a RuntimeWarning from the save), exit 0:
    the loop's final update is not evaluated, and nothing checked it was finite. It is the last finite image now,
    and said."""
    import torch

    from styleengine.engine import loop

    class Exploding:
        device = torch.device("cpu")
        capturable = False

        def __call__(self, x):
            from styleengine.engine.steps import StepResult

            return StepResult.from_floats(1.0 + 0.0 * float(x.sum()), torch.full_like(x, float("nan")),  # a NaN step
                                          {"content": 0.0, "style": 0.0, "tv": 0.0})

    result = loop.optimise(Exploding(), torch.full((1, 3, 32, 32), 0.5), iterations=1, optimizer="adam", lr=0.1)
    assert result.stopped == "non-finite loss" and bool(torch.isfinite(result.image).all())
