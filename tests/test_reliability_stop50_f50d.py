"""Issue 23, stop 50: probe 50's video findings."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")

from styleengine.benchmarks.video_clips import moving_window, write_clip  # noqa: E402

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_video import FAST, photo, style  # noqa: F401  (style: a fixture)
except ModuleNotFoundError:
    from tests.test_cli import run_cli
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
