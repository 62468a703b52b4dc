"""Issue 23, probe 10 (on 6f8deaf): probe 9's fixes reached another way (hard links, other routes, other limits,
other suffixes), the Python API, plan/bench lists, serve's event streams. About 380 cases; the defects it found
are tests here."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


def _serve():
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient
    from serve_helpers import SETTINGS

    from styleengine.serve.app import Config, create_app

    def start(tmp_path, **limits):
        config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", **limits)
        return config, TestClient(create_app(config))
    return start


# ------------------------------------------------------------------ D2: a manifest made a hard link while in use

def test_a_manifest_made_a_hard_link_while_in_use_is_not_appended_to(tmp_path):
    """`rm manifest.jsonl; ln victim.txt manifest.jsonl` while a server or batch ran: the next job's line was
    appended to victim.txt (the hard-link check was made only at start)."""
    from styleengine.engine.batch import Manifest
    from styleengine.errors import UserError

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    os.link(victim, tmp_path / "manifest.jsonl")
    with pytest.raises(UserError, match="hard link"):
        Manifest(tmp_path / "manifest.jsonl").append({"id": "a", "status": "failed", "reason": "x"})
    assert victim.read_text() == "mine\n"


# ------------------------------------------------------------------ D3: every route hides the server's folder

def test_no_error_route_spells_out_the_servers_folder(tmp_path):
    """410 for a removed result said "removed from /srv/.../results"; 503 for an uploads/ made a file said
    "/srv/.../uploads is no longer the server's folder" (probe 9 hid it in a job's reason only)."""
    from serve_helpers import files, wait_for

    config, client = _serve()(tmp_path)
    with client:
        job = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
        assert job["status"] == "done", job
        (config.root / "results" / f"{job['id']}.png").unlink()
        gone = client.get(f"/api/jobs/{job['id']}/result")
        shutil.rmtree(config.root / "uploads")
        (config.root / "uploads").write_text("")
        taken = client.post("/api/jobs", files=files())
    assert gone.status_code == 410 and taken.status_code == 503, (gone.text, taken.text)
    for response in (gone, taken):
        assert str(tmp_path) not in response.text and "<server folder>" in response.text, response.text


# ------------------------------------------------------------------ D4: serve's limits on every size and count

@pytest.mark.parametrize("argv, says", [
    (["--size", "64", "--max-size", "256", "--style-scale", "8"], "--size 64 x --style-scale 8 (512 px) is over"),
    (["--size", "200", "--max-size", "256", "--iters", "2", "--max-iters", "2", "--iters-per-scale", "500"],
     "--iters-per-scale 500 (500 iterations at a scale) is over --max-iters 2")])
def test_serve_refuses_own_values_past_its_limits_by_another_flag(tmp_path, monkeypatch, capsys, argv, says):
    """`serve --size 200 --max-size 256 --iters 2 --max-iters 2 --iters-per-scale 500` started and every job ran
    502 iterations; `serve --size 1024 --style-scale 8` started (probe 9 held --size and --iters only)."""
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--results-dir", tmp_path / "srv", "--weights", "random",
                           *argv)
    assert says in one_error_line(code, err)


def test_a_request_cannot_pass_the_size_limit_by_its_style_scale(tmp_path):
    """A form's `size=64&style_scale=30` on a --max-size 64 server made the style 1920 px (38 s for a 0.3 s job)."""
    from serve_helpers import files

    _, client = _serve()(tmp_path, max_size=64)
    with client:
        response = client.post("/api/jobs", files=files(), data={"size": "64", "style_scale": "30"})
        within = client.post("/api/jobs", files=files(), data={"size": "48", "style_scale": "1.25"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "size 64 x style_scale 30 (1920 px) is over this server's limit of 64 px"
    assert within.status_code == 202, within.text


# ------------------------------------------------------------------ D5, D6: a jobs file's outputs

@pytest.mark.parametrize("output, says", [("x.xbm", "PIL cannot save RGB images as XBM"),
                                          ("x.h5", "cannot save RGB images as HDF5"),
                                          ("$NOPE/x.png", "the variable $NOPE is not set"),
                                          ("a${NOPE}.png", "the variable ${NOPE} is not set")])
def test_a_jobs_output_pil_cannot_write_or_with_an_unset_variable_is_refused_before_work(
        tmp_path, monkeypatch, capsys, output, says):
    """`"output": "x.xbm"` (a suffix PIL knows but cannot save RGB as) ran the job, then failed; `"$NOPE/x.png"`
    wrote OUT/$NOPE/x.png and exited 0."""
    _pictures(tmp_path)
    monkeypatch.delenv("NOPE", raising=False)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", "output": output}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
    line = one_error_line(code, err)
    assert "line 1" in line and says in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_an_unset_variable_in_a_flag_after_an_equals_sign_is_refused(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    monkeypatch.delenv("NOPE", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "--output=$NOPE/o.png", "--weights",
                           "random", "--size", "40", "--iters", "1")
    assert "the variable $NOPE is not set" in one_error_line(code, err)
    assert not (tmp_path / "$NOPE").exists()


# ------------------------------------------------------------------ D1, D11: video's kept frames

def _video():
    try:
        from test_reliability_probe9 import VIDEO_FAST, _clip
    except ModuleNotFoundError:
        from tests.test_reliability_probe9 import VIDEO_FAST, _clip
    return VIDEO_FAST, _clip


@pytest.mark.parametrize("kept", ["frame_000000.png", "video.json"])
def test_a_video_trace_that_is_a_hard_link_into_its_frames_folder_is_refused(tmp_path, monkeypatch, capsys, kept):
    """`ln o.mp4.frames/video.json t.jsonl; video ... --trace t.jsonl` overwrote the resume record (over a frame: a
    TypeError traceback): probe 9's check compared real paths only."""
    fast, clip = _video()
    clip(tmp_path)
    argv = ["video", tmp_path / "v.mp4", tmp_path / "s.png", "-o", tmp_path / "o.mp4", *fast]
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 0, err
    before = (tmp_path / "o.mp4.frames" / kept).read_bytes()
    os.link(tmp_path / "o.mp4.frames" / kept, tmp_path / "t.jsonl")
    code, _, err = run_cli(monkeypatch, capsys, *argv, "--trace", tmp_path / "t.jsonl")
    assert "another name of a file there" in one_error_line(code, err)
    assert (tmp_path / "o.mp4.frames" / kept).read_bytes() == before


def test_a_resumed_frame_found_damaged_is_counted_once(tmp_path, monkeypatch, capsys):
    """The progress said "3/2 frames": a kept frame found damaged was counted as finished, then again when it ran."""
    fast, clip = _video()
    clip(tmp_path)
    argv = ["video", tmp_path / "v.mp4", tmp_path / "s.png", "-o", tmp_path / "o.mp4", *fast]
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 0, err
    (tmp_path / "o.mp4.frames" / "frame_000000.png").write_text('{"event": "x"}\n')
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 0 and "2/2 frames" in err and "3/2" not in err, err


# ------------------------------------------------------------------ D7, D8: the Python API

def test_the_apis_convention_of_another_type_is_one_line():
    """`convention='x'` raised TypeError ("replace() should be called on dataclass instances")."""
    import styleengine
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError, match="convention must be a styleengine.model.convention.Convention"):
        styleengine.stylise(Image.new("RGB", (48, 48)), Image.new("RGB", (48, 48)), size=48, iterations=1,
                            weights="random", convention="x")


@pytest.mark.parametrize("given, says", [({"print_every": 1}, "print_every is ignored"),
                                         ({"save_every": 1}, "save_every is ignored without callback")])
def test_the_apis_settings_a_call_cannot_use_are_said(given, says, caplog):
    """`save_every=1` and `print_every=1` were taken and did nothing, not even a log line."""
    import styleengine

    with caplog.at_level("WARNING", logger="styleengine.api"):
        styleengine.stylise(Image.new("RGB", (48, 48)), Image.new("RGB", (48, 48)), size=48, iterations=1,
                            weights="random", **given)
    assert says in caplog.text


def test_the_apis_save_every_with_a_callback_gives_exact_images():
    import styleengine

    seen = []
    styleengine.stylise(Image.new("RGB", (48, 48)), Image.new("RGB", (48, 48), (0, 0, 255)), size=48, iterations=4,
                        weights="random", save_every=2, callback=lambda record, current: seen.append(record.iteration))
    assert {2, 4} <= set(seen)


# ------------------------------------------------------------------ D9, D10: a FIFO where a folder belongs

def test_tune_refuses_a_cache_folder_it_cannot_keep_its_record_in_before_timing(tmp_path, monkeypatch, capsys):
    """STYLEENGINE_CACHE_DIR a FIFO: tune measured for a minute, then said "(File exists)" and exited 0."""
    from styleengine.engine import autotune

    os.mkfifo(tmp_path / "ff")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "ff"))
    monkeypatch.setattr(autotune, "measure_candidates", lambda *a, **k: pytest.fail("it measured"))
    code, _, err = run_cli(monkeypatch, capsys, "tune", "--size", "40", "--weights", "random")
    assert "it is a FIFO" in one_error_line(code, err)


@pytest.mark.parametrize("where", ["results_dir", "uploads", "frames"])
def test_a_fifo_where_a_folder_belongs_is_called_a_fifo_on_every_command(tmp_path, monkeypatch, capsys, where):
    """`serve --results-dir FIFO` said "Not a directory", a FIFO uploads/ or OUT.frames "it is a file" (probe 9
    worded check_folder's case only)."""
    if where == "frames":
        fast, clip = _video()
        clip(tmp_path)
        os.mkfifo(tmp_path / "o.mp4.frames")
        argv = ["video", tmp_path / "v.mp4", tmp_path / "s.png", "-o", tmp_path / "o.mp4", *fast]
    else:
        root = tmp_path / "srv"
        if where == "uploads":
            root.mkdir()
        os.mkfifo(root / "uploads" if where == "uploads" else root)
        argv = ["serve", "--results-dir", root, "--weights", "random"]
    assert "is a FIFO (a named pipe)" in one_error_line(*run_cli(monkeypatch, capsys, *argv)[::2])


# ------------------------------------------------------------------ minor: numbers and arrays

@pytest.mark.parametrize("argv, says", [(["run", "c.png", "s.png", "-o", "o.png", "--size", "4_0", "--weights",
                                          "random"], "'4_0'"),
                                        (["bench", "--res", "6_4"], "--res takes sizes like 512")])
def test_a_whole_number_with_an_underscore_is_refused_as_a_jobs_file_refuses_it(tmp_path, monkeypatch, capsys,
                                                                                 argv, says):
    """`--size 64_0` ran at 640 px (click's int() reads Python's digit separators); the serve form refused it."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert says in one_error_line(*run_cli(monkeypatch, capsys, *argv)[::2])
    assert not (tmp_path / "o.png").exists()


def test_a_big_endian_uint16_array_is_read_as_a_native_one():
    """">u2" was refused ("got >u2") where big-endian floats were taken."""
    import numpy as np

    from styleengine.engine.images import from_picture

    native = np.arange(40 * 40 * 3, dtype=np.uint16).reshape(40, 40, 3) * 7
    assert np.array_equal(from_picture(native.astype(">u2"), "x"), from_picture(native, "x"))


def test_a_huge_style_scale_in_a_request_is_a_422_not_a_500(tmp_path):
    """`style_scale=1e308` overflowed the limit rule's round() (a 500) before validate could refuse it (review)."""
    from serve_helpers import files

    _, client = _serve()(tmp_path, max_size=64)
    with client:
        response = client.post("/api/jobs", files=files(), data={"size": "64", "style_scale": "1e308"})
    assert response.status_code == 422 and "is over this server's limit of 64 px" in response.json()["detail"]


@pytest.mark.parametrize("name", ["price$5.png", "naïve$é.png", "${X:-d}.png"])
def test_a_dollar_that_is_no_shell_variable_stays_in_the_name(tmp_path, monkeypatch, capsys, name):
    """The unset-variable rule took `$5`, `$é` and `${X:-d}` for variables (review): a shell's $NAME only."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", f"--output={name}", "--weights", "random",
                           "--size", "40", "--iters", "1", "--backend", "torch")
    assert code == 0 and (tmp_path / name).is_file(), err


def test_an_existing_file_named_with_a_dollar_is_read_as_named(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    (tmp_path / "c.png").rename(tmp_path / "c$NOPE.png")
    monkeypatch.delenv("NOPE", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", "c$NOPE.png", "s.png", "-o", "o.png", "--weights", "random",
                           "--size", "40", "--iters", "1", "--backend", "torch", "--init=c$NOPE.png")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "run", "c$NOPE.png", "s.png", "-o", "o.png", "--weights", "random",
                           "--size", "40", "--iters", "1", "--init=$NOPE/i.png")
    assert "--init '$NOPE/i.png': the variable $NOPE is not set" in one_error_line(code, err)
