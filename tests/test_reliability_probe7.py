"""Issue 23: what probe 6 left, and what probes 7 and 8 found on 2a401fb. Each defect is a test here, as the case a
careless or hostile user tried."""
from __future__ import annotations

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


# ------------------------------------------------------------------ an empty path names its flag, not '.'

@pytest.mark.parametrize("argv, named", [
    (["run", "c.png", "s.png", "-o", ""], "--output"),
    (["run", "", "s.png", "-o", "x.png"], "the content image path"),
    (["run", "c.png", "s.png", "-o", "x.png", "--trace", " "], "--trace"),
    (["texture", "s.png", "-o", ""], "--output"),
    (["invert", "", "-o", "x.png"], "the picture path"),
    (["invert", "c.png", "-o", "x.png", "--distances", ""], "--distances"),
    (["visualize", "--class", "1", "-o", ""], "--output"),
    (["video", "", "s.png", "-o", "x.mp4"], "the input video path"),
    (["video", "v.mp4", "s.png", "-o", ""], "--output"),
    (["batch", "", "--out", "o"], "the jobs file path"),
    (["bench", "--json", ""], "--json"),
    (["bench", "--csv", ""], "--csv"),
    (["bench", "--plot", ""], "--plot"),
    (["bench", "--report", ""], "--report"),
])
def test_an_empty_path_is_refused_naming_its_flag(tmp_path, monkeypatch, capsys, argv, named):
    """`-o "$OUT"` with OUT unset said "cannot write .: unknown image suffix" and an empty content "cannot read
    image .: it is a directory": the working folder, which the user never named (probe 6)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    line = one_error_line(code, err)
    assert line == f"error: {named} is empty; name a file", line


# ------------------------------------------------------------------ a damaged tuning record is said once

@pytest.mark.parametrize("damage", ["{torn", '{"entries": 5}'])
def test_a_damaged_tuning_record_is_warned_of_once_a_run(tmp_path, monkeypatch, capsys, damage):
    """A torn `<cache>/tune.json` was warned of at every read: 5 identical lines in one 64 px run (probe 6)."""
    from styleengine.engine import autotune

    monkeypatch.delenv("STYLEENGINE_TUNE")
    monkeypatch.setattr(autotune, "_DAMAGE_SAID", set(), raising=False)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    record = autotune.record_path()
    kept = record.read_bytes() if record.exists() else None
    record.write_text(damage)
    try:
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--weights", "random", "--size", "48", "--iters", "2")
    finally:
        record.unlink(missing_ok=True) if kept is None else record.write_bytes(kept)
    warned = [line for line in err.splitlines() if "tuning record" in line]
    assert code == 0 and len(warned) == 1, err


# ------------------------------------------------------------------ video --frames past the clip's end

@pytest.mark.parametrize("spec, says", [("5:", "past the end"), ("3:", "past the end"), ("1:1", "is empty"),
                                        (":0", "is empty"), ("2:5", "past the end")])
def test_video_frames_past_the_end_say_so(tmp_path, spec, says):
    """`--frames 5:` of a 3-frame clip said "is empty: it needs 0 <= A < B", which it is not (probe 6)."""
    from styleengine.engine.video_io import frame_range
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        frame_range(spec, 3, tmp_path / "v.mp4")
    assert frame_range("2:", 3, tmp_path / "v.mp4") == (2, 3)


# ------------------------------------------------------------------ the API: a PIL image it cannot read

@pytest.mark.parametrize("how", ["closed", "truncated"])
def test_the_api_refuses_a_pil_image_it_cannot_read_in_one_line(tmp_path, how):
    """`stylise(im, style)` with `im` closed (a `with Image.open(...)` block left) raised PIL's raw
    ValueError "Operation on closed image" (probe 6); a lazily opened truncated file, PIL's OSError."""
    import styleengine
    from styleengine.errors import ImageError

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "c.png")
    if how == "closed":
        with Image.open(tmp_path / "c.png") as picture:
            pass
    else:
        Image.effect_noise((64, 64), 40).convert("RGB").save(tmp_path / "n.png")
        (tmp_path / "t.png").write_bytes((tmp_path / "n.png").read_bytes()[:400])
        picture = Image.open(tmp_path / "t.png")
    with pytest.raises(ImageError, match="cannot read content image") as caught:
        styleengine.stylise(picture, Image.new("RGB", (64, 64)), weights="random", size=64, iterations=1)
    assert "\n" not in str(caught.value)


def test_the_api_refuses_a_loaded_then_closed_pil_image_in_one_line():
    """A loaded image, then closed: PIL's raw ValueError "Operation on closed image"."""
    import styleengine
    from styleengine.errors import ImageError

    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    picture.close()
    with pytest.raises(ImageError, match="cannot read content image .*closed image"):
        styleengine.stylise(picture, Image.new("RGB", (64, 64)), weights="random", size=64, iterations=1)


# ------------------------------------------------------------------ bench's outputs never replace another kind

@pytest.mark.parametrize("flag, name", [("--json", "photo.png"), ("--csv", "w.pth"), ("--report", "notes.txt"),
                                        ("--plot", "p.jpg")])
def test_bench_never_replaces_a_file_of_another_kind(tmp_path, monkeypatch, capsys, flag, name):
    """`bench --json photo.png` replaced the photo with the timings (probe 6): a file already there is
    replaced only when it is of the flag's kind; --plot writes a PNG, so only under .png."""
    target = tmp_path / name
    target.write_bytes(b"the user's")
    code, _, err = run_cli(monkeypatch, capsys, "bench", flag, target, "--res", "32", "--iters", "1")
    assert flag in one_error_line(code, err) and target.read_bytes() == b"the user's"


# ------------------------------------------------------------------ tune: what it was asked to time

def test_tune_backend_ort_on_a_fresh_cache_exports_and_times_it(tmp_path, monkeypatch, capsys):
    """`tune --backend ort` on a fresh cache said "no candidate for auto ran here: not exported: over the
    trial's budget (... then styleengine tune)" and exited 1 (probe 6): tune is the asked-for measurement."""
    from styleengine.engine import autotune

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    autotune._memo.clear()
    code, out, err = run_cli(monkeypatch, capsys, "tune", "--size", "48", "--weights", "random", "--model", "vgg16",
                             "--backend", "ort", "--device", "cpu")
    assert code == 0, err
    assert "auto: ort fp32 " in out and "skipped" not in out, out


# ------------------------------------------------------------------ `--flag=~/x`: no shell expanded it

def test_paths_after_an_equals_sign_expand_home_and_variables(tmp_path, monkeypatch, capsys):
    """`--output=~/o.png --trace='$D/t.jsonl'` made folders named `~` and `$D` in the working folder's eyes
    ("folder ~ does not exist"), and an output onto an input through `~` was not seen (probes 4, 5)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("D", str(home))
    monkeypatch.chdir(work)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(home / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(home / "s.png")
    fast = ["--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch"]
    code, _, err = run_cli(monkeypatch, capsys, "run", home / "c.png", home / "s.png", "--output=~/o.png",
                           "--trace=$D/t.jsonl", *fast)
    assert code == 0, err
    assert (home / "o.png").is_file() and (home / "t.jsonl").is_file() and list(work.iterdir()) == []
    before = (home / "c.png").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "run", home / "c.png", home / "s.png", "--output=~/x.png",
                           "--trace=~/c.png", *fast)
    assert "trace" in one_error_line(code, err) and (home / "c.png").read_bytes() == before


# ------------------------------------------------------------------ serve: a cancel frees its slot at once

def test_a_cancelled_running_job_frees_its_queue_slot_at_once(tmp_path, monkeypatch):
    """With the queue full (max_queue 1), a client cancelled its running job and submitted again: 429 until the
    batch reached its next iteration, which at 2048 px is seconds away (probe 5)."""
    import threading

    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient
    from serve_helpers import SETTINGS, files, wait_for

    from styleengine.serve.app import Config, create_app
    from styleengine.serve.jobs import JobStore

    released, held = threading.Event(), threading.Event()
    real_run = JobStore._run

    def slow_run(store, members):  # the first batch's iteration takes until the test lets it go
        if not held.is_set():
            held.set()
            store._set(members[0], status="running")
            released.wait(30)
        return real_run(store, members)

    monkeypatch.setattr(JobStore, "_run", slow_run)
    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_queue=1)
    with TestClient(create_app(config)) as client:
        first = client.post("/api/jobs", files=files(), data={"iters": "3"}).json()["id"]
        assert held.wait(30)
        assert client.post("/api/jobs", files=files()).status_code == 429  # full
        assert client.delete(f"/api/jobs/{first}").status_code == 200
        try:
            again = client.post("/api/jobs", files=files())
        finally:
            released.set()
        assert again.status_code == 202, again.text
        assert wait_for(client, again.json()["id"])["status"] == "done"


# ------------------------------------------------------------------ batch: no window between the check and the write

@pytest.mark.parametrize("where", ["the write", "the folder's making"])
def test_a_folder_made_a_link_right_after_the_last_check_is_not_written_through(tmp_path, monkeypatch, capsys,
                                                                                  where):
    """out/sub swapped for a link out of --out between the last check (`outside`) and the write (or the folder's
    mkdir): the picture, or the folders, went through it (probes 4, 5: the window left after their fix)."""
    import shutil

    from styleengine import cli_batch
    from styleengine.engine import batch as engine
    from styleengine.engine import jobs as engine_jobs

    try:
        from test_reliability_batch import FAST, manifest_lines, picture, write_jobs
    except ModuleNotFoundError:
        from tests.test_reliability_batch import FAST, manifest_lines, picture, write_jobs
    picture(tmp_path / "c1.png", 1)
    picture(tmp_path / "s1.png", 3)
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (out / "sub").mkdir(parents=True)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png",
                                                 "output": "sub/deeper/a.png"}])
    real, calls, swapped = engine_jobs.outside, [], []
    at = 2 if where == "the write" else 1  # the checks ask before the folder is made, then before the write

    def outside_then_swap(output, out_dir):  # the check passes; the folder is swapped the moment after
        found = real(output, out_dir)
        calls.append(1)
        if len(calls) == at:
            swapped.append(1)
            shutil.rmtree(out / "sub")
            (victim / "deeper").mkdir()  # what the write would go into
            (out / "sub").symlink_to(victim)
        return found

    assert cli_batch.engine is engine
    monkeypatch.setattr(engine, "outside", outside_then_swap)
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *FAST)
    assert swapped and code == 1 and "Traceback" not in err, err
    assert [p.name for p in victim.rglob("*")] == ["deeper"]
    (line,) = manifest_lines(out)
    assert line["status"] == "failed" and "symbolic link" in line["reason"], line
    assert ("saved the image to" in line["reason"]) is (where == "the write")


def test_a_confined_folder_is_never_reached_through_a_link_made_after_it_was_resolved(tmp_path, monkeypatch):
    """The narrowest window: the folder resolved inside --out, then made a link before it is opened. Each
    folder below --out is opened without following links, so the open fails; nothing is made outside."""
    import os

    from styleengine import paths

    if not paths.CONFINED:
        pytest.skip("no *at calls here: the write falls back to a plain atomic write")
    root, victim = tmp_path / "out", tmp_path / "victim"
    (root / "sub").mkdir(parents=True), victim.mkdir()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(victim)
    monkeypatch.setattr(os.path, "realpath", os.path.abspath)  # as resolved before the swap
    with pytest.raises(OSError, match="became a symbolic link"):
        paths.open_confined_folder(root / "sub" / "deeper", root, make=True)
    with pytest.raises(OSError, match="became a symbolic link"):
        with paths.confined_writer(root / "sub" / "a.png", root) as f:
            f.write(b"x")
    assert list(victim.iterdir()) == []
    fd = paths.open_confined_folder(root / "new" / "deeper", root, make=True)  # made on the way, no link
    os.close(fd)
    assert (root / "new" / "deeper").is_dir()
    with paths.confined_writer(root / "new" / "deeper" / "a.png", root) as f:
        f.write(b"x")
    assert (root / "new" / "deeper" / "a.png").read_bytes() == b"x"
    assert [p.name for p in (root / "new" / "deeper").iterdir()] == ["a.png"]  # no temp file left


# ------------------------------------------------------------------ probe 7: video's trace on a full disk

VIDEO_FAST = ["--weights", "random", "--model", "vgg16", "--iters", "2", "--frame-iters", "1", "--device", "cpu",
              "--backend", "torch", "--style-layers", "relu1_1", "--content-layers", "relu2_2", "--size", "64"]


def _clip(tmp_path, frames: int = 3):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    import numpy as np

    from styleengine.benchmarks.video_clips import write_clip

    path = tmp_path / "in.mp4"
    write_clip(path, [np.full((48, 64, 3), v / 8, np.float32) for v in range(frames)], fps=12)
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    return path, tmp_path / "s.png"


def test_video_trace_on_a_full_disk_stops_the_trace_not_the_video(tmp_path, monkeypatch, capsys):
    """`video --trace /full/t.jsonl`: an OSError traceback from the trace's flush after frame 1, no video, an
    empty trace left; run and texture warn and write the picture (probe 7)."""
    from styleengine import cli_job

    try:
        from fakes import FullAfter
    except ModuleNotFoundError:
        from tests.fakes import FullAfter
    clip, style = _clip(tmp_path)
    monkeypatch.setattr(cli_job, "open", lambda path, *a, **k: FullAfter(path, 1), raising=False)
    code, out, err = run_cli(monkeypatch, capsys, "video", clip, style, "-o", tmp_path / "o.mp4", "--trace",
                             tmp_path / "t.jsonl", *VIDEO_FAST)
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "o.mp4").is_file() and "wrote" in out + err
    assert "warning: trace" in out + err and "No space left" in out + err
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------ serve: signals handed over to uvicorn

def test_a_signal_after_the_hand_over_goes_to_the_servers_handler_not_a_keyboardinterrupt():
    """SIGTERM in serve's first seconds: put off during an import, it was raised later by SIGALRM inside
    uvicorn's event loop, where it was swallowed (the server never stopped) or ended in a CancelledError
    traceback (probe 7). Once handed over, a signal goes to the server's own handler."""
    import os
    import signal as signal_module

    from styleengine.cli import signals

    got = []
    with signals.installed():
        signals.hand_over(lambda signum, frame: got.append(signum))
        os.kill(os.getpid(), signal_module.SIGTERM)  # no KeyboardInterrupt
    assert got == [signal_module.SIGTERM]
    with signals.installed():  # the next command's signals are its own again
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal_module.SIGTERM)


def test_a_signal_put_off_during_an_import_is_raised_at_the_hand_over():
    import signal as signal_module

    from styleengine.cli import signals

    with signals.installed():
        signals._alarm = signal_module.getsignal(signal_module.SIGALRM)  # as _raise leaves it while importing
        with pytest.raises(KeyboardInterrupt):
            signals.hand_over(print)
        assert signals._alarm is None


# ------------------------------------------------------------------ probe 7: one line where it was a traceback

LONG = "q" * 300


@pytest.mark.parametrize("argv", [
    ["run", "c.png", f"{LONG}.png", "-o", "o.png"],
    ["run", "c.png", f"s.png,{LONG}.png", "-o", "o.png"],
    ["texture", f"{LONG}.png", "-o", "o.png"],
    ["batch", f"{LONG}.jsonl", "--out", "o"],
    ["batch", "--contents", LONG, "--styles", "s", "--out", "o"],
    ["export", "-o", LONG],
    ["serve", "--results-dir", LONG],
    ["video", "v.mp4", "s.png", "-o", "o.mp4", "--init", f"{LONG}.png"],
    ["video", "v.mp4", "s.png", "-o", "o.mp4", "--init", "nope.png"],
    ["serve", "--init", "nope.png"],
    ["serve", "--content-mask", "."],
    ["serve", "--max-upload-mb", "inf"],
    ["serve", "--max-pixels", "inf"],
    ["serve", "--port", "70000"],
    ["serve", "--port", "-1"],
    ["serve", "--host", "nonsense.invalid", "--token", "t"],
    ["bench", "--timeout", "1e20", "--res", "32"],
])
def test_names_numbers_and_files_that_were_tracebacks_are_one_line(tmp_path, monkeypatch, capsys, argv):
    """A 300-byte name on the style argument, batch's jobs file and folders, export -o, serve --results-dir
    and video --init: ENAMETOOLONG tracebacks; video --init missing: FileNotFoundError from its hash; serve
    with a missing --init or a folder as mask started, then every POST was a 500; serve's inf limits and
    bench --timeout 1e20: OverflowError; --port 70000 listened on 4464; a host that is no address: exit 3."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    if argv[0] == "video":
        _clip(tmp_path)
        (tmp_path / "in.mp4").rename(tmp_path / "v.mp4")
    code, _, err = run_cli(monkeypatch, capsys, *argv, "--weights", "random")
    one_error_line(code, err)


def test_a_fifo_as_the_weights_of_tune_is_one_line_not_a_wait(tmp_path):
    """`mkfifo w.pth; styleengine tune --weights w.pth` hung for ever hashing it (probe 7); so did serve's
    start and a jobs file's "weights"."""
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "w.pth")
    done = subprocess.run([sys.executable, "-m", "styleengine", "tune", "--size", "48", "--weights",
                           str(tmp_path / "w.pth")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "STYLEENGINE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "FIFO" in done.stderr


# ------------------------------------------------------------------ probe 7: empty values, the API

@pytest.mark.parametrize("field", ["init", "content_mask", "weights"])
def test_a_jobs_files_empty_path_value_is_refused_as_its_flag_is(tmp_path, monkeypatch, capsys, field):
    """A JSONL job's `"init": ""` (or content_mask, weights) ran with the default, exit 0, where `--init ''` is
    one line (probe 7). A CSV's empty cell stays the batch's value."""
    import json

    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", field: ""}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40", "--iters", "1")
    assert "line 1" in one_error_line(code, err) and "is empty" in err
    (tmp_path / "jobs.csv").write_text(f"content,styles,{field}\nc.png,s.png,\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.csv", "--out", tmp_path / "out2",
                           "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
    assert code == 0, err


@pytest.mark.parametrize("setting", ["weights", "init", "content_masks", "style_masks"])
def test_the_apis_empty_path_setting_is_refused(setting):
    import styleengine
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError, match="is empty"):
        styleengine.stylise(Image.new("RGB", (48, 48)), Image.new("RGB", (48, 48)), size=48, iterations=1,
                            **{setting: ""})


@pytest.mark.parametrize("argv", [["visualize", "--class", "1", "-o", "v.png", "--weights", ""],
                                  ["export", "-o", "e", "--weights", ""]])
def test_an_empty_weights_flag_of_visualize_and_export_names_the_flag(tmp_path, monkeypatch, capsys, argv):
    """It said "weights file . is a directory" (probe 7)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert "--weights is empty" in one_error_line(code, err)


def test_video_frames_empty_is_refused_not_the_whole_clip(tmp_path):
    from styleengine.engine.video_io import frame_range
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError, match="--frames is empty"):
        frame_range("", 3, tmp_path / "v.mp4")
    assert frame_range(None, 3, tmp_path / "v.mp4") == (0, 3)


def test_the_api_refuses_weights_with_a_nul_byte_in_one_line():
    """`stylise(..., weights="w\\0.pth")`: a raw ValueError "embedded null byte" (probe 7)."""
    import styleengine
    from styleengine.errors import UserError

    with pytest.raises(UserError, match="NUL"):
        styleengine.stylise(Image.new("RGB", (48, 48)), Image.new("RGB", (48, 48)), size=48, iterations=1,
                            weights="w\0.pth")


def test_ctrl_c_in_the_api_raises_with_the_picture_so_far():
    """Ctrl-C inside stylise() returned the partial picture as a finished result; only a log line said so."""
    import styleengine
    from styleengine.api import Interrupted

    def stop(record, current):
        if record.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        styleengine.stylise(Image.new("RGB", (48, 48), (200, 30, 30)), Image.new("RGB", (48, 48)), size=48,
                            iterations=20, weights="random", model="vgg16", callback=stop)
    assert isinstance(caught.value, Interrupted) and caught.value.image.size == (48, 48)
    assert caught.value.iterations == 2


def test_check_writable_leaves_no_probe_file_when_interrupted(tmp_path, monkeypatch):
    """A SIGTERM 1.2 s into invert left `.o.png.00ab4971.tmp` (probe 7): the probe file's close and unlink."""
    import os

    from styleengine import paths

    real_close = os.close

    def interrupted(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(paths.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        paths.check_writable(tmp_path / "o.png", "output")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ probe 7's minor ones

@pytest.mark.parametrize("output", ["c.png", "/dev/null"])
def test_a_dry_run_refuses_the_outputs_the_run_refuses(tmp_path, monkeypatch, capsys, output):
    """`run --dry-run -o c.png` (the content) and `-o /dev/null` exited 0; the run refuses both (probe 7)."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "-o", output, "--dry-run",
                           "--weights", "random")
    one_error_line(code, err)


def test_a_frames_folder_refused_at_its_start_is_not_left_behind(tmp_path, monkeypatch):
    """`video -o` on a full disk: one line, and an empty OUT.frames/ left behind (probe 7)."""
    from styleengine import paths
    from styleengine.cli_video import FrameStore
    from styleengine.errors import ConfigError

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paths, "atomic_write", full)
    store = FrameStore(tmp_path / "o.mp4")
    with pytest.raises(ConfigError, match="No space left"):
        store.take()
        store.open("0123456789abcdef", {}, (48, 64))
    assert list(tmp_path.iterdir()) == []


def test_a_blank_form_field_is_the_servers_value(tmp_path):
    """The form's `lr=''` meant the server's value but `size=''` was a 422: a blank HTML input is no value."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient
    from serve_helpers import SETTINGS, files, wait_for

    from styleengine.serve.app import Config, create_app

    with TestClient(create_app(Config(settings=SETTINGS.resolved(), root=tmp_path / "srv"))) as client:
        response = client.post("/api/jobs", files=files(), data={"size": "", "style_weight": " ", "lr": ""})
        assert response.status_code == 202, response.text
        assert wait_for(client, response.json()["id"])["status"] == "done"


@pytest.mark.parametrize("backend, refused", [("auto", False), ("torch", False), ("ort", True)])
def test_an_unusable_cache_stops_only_the_backends_that_export(tmp_path, monkeypatch, capsys, backend, refused):
    """A read-only STYLEENGINE_CACHE_DIR refused `run` (auto) while `tune` went on (probe 7): auto times only
    what the cache holds, so only --backend ort/tensorrt need one."""
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    (tmp_path / "cache").write_text("a file, not a folder")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", "--weights", "random", "--size", "40", "--iters", "1",
                           "--backend", backend)
    if refused:
        assert "cache folder" in one_error_line(code, err)
    else:
        assert code == 0 and (tmp_path / "o.png").is_file(), err
