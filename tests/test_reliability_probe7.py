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
