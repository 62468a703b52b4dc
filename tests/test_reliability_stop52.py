"""Issue 23, stop 52: probe 52's findings (on e81b01a)."""
from __future__ import annotations

import os
import signal

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_reliability_stop43 import _three_jobs
except ModuleNotFoundError:
    from tests.test_reliability_stop43 import _three_jobs


@pytest.mark.parametrize("change", ["replaced", "emptied"])
def test_a_signal_after_the_manifest_changed_says_where_its_lines_are(tmp_path, monkeypatch, capsys, change):
    """SIGTERM after a user's file was moved onto the manifest said "the same command resumes (out/manifest.jsonl
    records what is done)" of the user's file; one emptied in place was "not there any more" (probe 52a, 1)."""
    manifest, calls = tmp_path / "out" / "manifest.jsonl", []

    def after_record():
        calls.append(1)
        if len(calls) == 1:
            if change == "replaced":
                (tmp_path / "mine").write_text("my notes\n")
                (tmp_path / "mine").rename(manifest)
            else:
                manifest.write_text("")
            os.kill(os.getpid(), signal.SIGTERM)  # held by the shield around the record, then raised

    code, err = _three_jobs(tmp_path, monkeypatch, capsys, after_record)
    assert code == 143 and "records what is done" not in err, err
    said = {"replaced": "out/manifest.jsonl is not the manifest written (replaced during the run); the lines of the "
                        "1 jobs done went with the file that was there",
            "emptied": "out/manifest.jsonl was emptied during the run, with the lines of the 1 jobs done"}[change]
    assert said in err, err


def test_a_folder_below_a_videos_frames_folder_is_refused(tmp_path, monkeypatch, capsys):
    """`batch --out base.mp4.frames/sub` (and `video -o base.mp4.frames/sub/x.mp4`) was taken: moving the frames
    folder away, as the video's own refusal advises, took the batch's pictures with it (probe 52a, 7). Only folders
    named as a video's frames folders count: a user's video.json up the tree is not one."""
    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_probe13 import FAST, _pictures

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "o.png"}\n')
    for folder in ("base.mp4.frames", "project"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "video.json").write_text("{}")
    out = tmp_path / "base.mp4.frames" / "sub" / "deeper"
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    line = one_error_line(code, err)
    assert f"is inside {tmp_path / 'base.mp4.frames'}, a video's frames folder" in line, line
    assert "give another --out" in line and not out.exists(), line
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "project" / "sub",
                           *FAST)
    assert code == 0, err
