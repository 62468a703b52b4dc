"""Issue 23, stop 50: probe 50's video findings."""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")

from styleengine.benchmarks.video_clips import moving_window, write_clip  # noqa: E402

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import _pictures
    from test_video import FAST, photo, style  # noqa: F401  (style: a fixture)
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import _pictures
    from tests.test_video import FAST, photo, style  # noqa: F401


@pytest.fixture
def three(tmp_path) -> Path:
    """A 64x48 px clip of 3 frames at 10 fps, with no sound."""
    frames, _ = moving_window(photo(), 3, (48, 64))
    path = tmp_path / "three.mp4"
    write_clip(path, frames, fps=10, audio=False)
    return path


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_a_video_rate_above_the_clips_says_each_repeat_is_stylised_again(tmp_path, monkeypatch, capsys, three,
                                                                          style):
    """`video --fps 1000` of a 10 fps clip of 3 frames stylised 300 frames (each source frame's 100 repeats, each
    from the one before, to the same picture), with no word of it (probe 50b, 3): a warning says so, in one line;
    the clip's own rate (and below it) warns of nothing."""
    out = tmp_path / "up.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", three, style, "-o", out, *FAST, "--size", "64",
                           "--fps", "20")
    assert code == 0, err
    warned = [line for line in _warnings(err) if "--fps" in line]
    assert len(warned) == 1, err
    assert "above" in warned[0] and "10 fps" in warned[0] and "repeated" in warned[0] and "stylised" in warned[0]
    assert "(6 frames for its 3)" in warned[0], warned
    for n, rate in enumerate(([], ["--fps", "10"], ["--fps", "5"])):
        code, _, err = run_cli(monkeypatch, capsys, "video", three, style, "-o", tmp_path / f"o{n}.mp4",
                               *FAST, "--size", "64", *rate)
        assert code == 0 and not [line for line in _warnings(err) if "--fps" in line], err


def test_a_video_written_inside_another_videos_frames_folder_is_refused(tmp_path, monkeypatch, capsys, three,
                                                                         style):
    """`video ... -o base.mp4.frames/x.mp4` wrote x.mp4 and x.mp4.frames/ among base.mp4's frames: moving that
    folder away (or removing it once base.mp4 is done) took the user's video with it (probe 50b, 4). Refused in
    one line, as a batch's --out there is; nothing is written in it."""
    base = tmp_path / "base.mp4"
    assert run_cli(monkeypatch, capsys, "video", three, style, "-o", base, *FAST, "--size", "64")[0] == 0
    frames = tmp_path / "base.mp4.frames"
    before = sorted(p.name for p in frames.iterdir())
    code, _, err = run_cli(monkeypatch, capsys, "video", three, style, "-o", frames / "x.mp4", *FAST, "--size", "64")
    line = one_error_line(code, err)
    assert "is inside" in line and "a video's frames folder" in line and "choose another output" in line, line
    assert "random" not in err, err  # refused before the weights
    assert sorted(p.name for p in frames.iterdir()) == before
    (frames / "sub").mkdir()  # a folder below goes with the frames too (probe 52a, 7)
    code, _, err = run_cli(monkeypatch, capsys, "video", three, style, "-o", frames / "sub" / "x.mp4", *FAST,
                           "--size", "64")
    line = one_error_line(code, err)
    assert f"is inside {frames}, a video's frames folder" in line and "choose another output" in line, line
    assert not any((frames / "sub").iterdir())


def test_an_empty_lock_another_tool_holds_is_said_as_a_lock_not_a_video(tmp_path, monkeypatch, capsys, three,
                                                                         style):
    """An empty `.lock` held (flock) by another tool, with no video's record: `batch --out` there said "is a video's
    frames folder", and a video onto it "another video is writing" (probe 50a, 11): both say a folder locked by
    another process. A video's folder (its record there) is still said as a video's."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "o.png"}\n')
    for folder in (tmp_path / "b", tmp_path / "vb.mp4.frames"):
        folder.mkdir()
        (folder / ".lock").write_text("")
    with open(tmp_path / "b" / ".lock", "rb") as b, open(tmp_path / "vb.mp4.frames" / ".lock", "rb") as vb:
        fcntl.flock(b, fcntl.LOCK_EX)
        fcntl.flock(vb, fcntl.LOCK_EX)
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b",
                               "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
        line = one_error_line(code, err)
        assert "locked by another process" in line and "video" not in line, line
        code, _, err = run_cli(monkeypatch, capsys, "video", three, style, "-o", tmp_path / "vb.mp4", *FAST,
                               "--size", "64")
        line = one_error_line(code, err)
        assert "locked by another process" in line and "another video" not in line, line
        (tmp_path / "b" / "video.json").write_text("{}")
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b",
                               "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
        assert "is a video's frames folder" in one_error_line(code, err)


def test_files_beside_a_record_of_other_settings_are_all_counted_and_only_frames_are_frames(tmp_path, monkeypatch,
                                                                                           capsys, three, style):
    """Beside a record of other settings, five user files were named as three with no word of the rest, and a
    user's `frame_notes.txt` made the folder "hold frames of other settings" (the rule was a name starting
    "frame_", not the names the folder's frames have; probe 50a, 11). Now "and 2 more", and only a frame's name is
    a frame; nothing there is touched."""
    frames = tmp_path / "out.mp4.frames"
    frames.mkdir()
    (frames / "video.json").write_text(json.dumps({"settings_hash": "0123456789abcdef"}))
    for name in ("notes.txt", "ua.txt", "ub.txt", "uc.txt", "ud.txt"):
        (frames / name).write_text("mine")
    args = ["video", three, style, "-o", tmp_path / "out.mp4", *FAST, "--size", "64"]
    line = one_error_line(*run_cli(monkeypatch, capsys, *args)[::2])
    assert "files (notes.txt, ua.txt, ub.txt and 2 more) beside a record" in line, line
    for name in ("ua.txt", "ub.txt", "uc.txt", "ud.txt"):
        (frames / name).unlink()
    (frames / "frame_notes.txt").write_text("mine")
    line = one_error_line(*run_cli(monkeypatch, capsys, *args)[::2])
    assert "files (frame_notes.txt, notes.txt) beside a record" in line and "holds frames" not in line, line
    (frames / "frame_000000.png").write_bytes(np.zeros(8, np.uint8).tobytes())
    line = one_error_line(*run_cli(monkeypatch, capsys, *args)[::2])
    assert "holds frames of other settings" in line, line
    assert sorted(p.name for p in frames.iterdir()) == ["frame_000000.png", "frame_notes.txt", "notes.txt",
                                                        "video.json"]
