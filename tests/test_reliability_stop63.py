"""Stop 63: probe 62a's two findings (an .avi whose B-frames start late, a zeroed manifest's end that is no status)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from styleengine.engine import video_io  # noqa: E402

try:
    from test_reliability_stop43 import three_jobs_batch
    from test_reliability_stop59_video import encoded
except ModuleNotFoundError:
    from tests.test_reliability_stop43 import three_jobs_batch
    from tests.test_reliability_stop59_video import encoded

LINE = json.dumps({"boxes": [[i, i, i + 9, i + 9] for i in range(30)], "label": "cat"}).encode()


@pytest.mark.parametrize("data", [b"\0" * 4096 + LINE[-6:] + b"\n", b"\0" * 4096 + b"z" * 30 + b'"}\n',
                                  b"\0" * 4096 + b'"status": "cat"}\n'], ids=["cat", "letters", "status-cat"])
def test_a_zeroed_manifest_ending_in_a_word_no_status_of_ours_is_refused(tmp_path, monkeypatch, capsys, data):
    """After a zeroed first block, any lower-case word, a quote and a brace was taken as the end of a line of
    ours: another tool's file was appended to (probe 62a, 2). Ours end in a status (ok, failed, skipped)."""
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(data)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 1 and "is not a manifest styleengine wrote" in err, err
    assert manifest.read_bytes() == data


def spliced(path: Path, parts: list[Path]) -> Path:
    """One .avi stream of `parts`' packets one after another (their SPS and PPS in band), timed as an .avi times
    them: one after another, in decode order."""
    with av.open(str(parts[0])) as first, av.open(str(path), "w") as out:
        video = out.add_stream_from_template(first.streams.video[0])
        at = 0
        for part in parts:
            with av.open(str(part)) as source:
                for packet in source.demux(video=0):
                    if packet.size:
                        packet.stream, packet.pts, packet.dts = video, at, at
                        at += 1
                        out.mux(packet)
    return path


def test_an_avi_of_h264_with_bframes_shows_each_frame_at_its_time(tmp_path):
    """An .avi keeps decode times: H.264 with B-frames in it gives its pictures in display order under times out
    of order. Such a clip was refused where its B-frames came within its first 32 frames; where they came later
    (a clip joined from two recordings) `--frames` among them showed wrong frames with exit 0, and a whole run
    stopped there, 'rerun to continue', every rerun (probe 62a, 1). Each frame is now shown at its time."""
    early = encoded(tmp_path / "early.avi", "libx264", frames=24, gop_size=6, max_b_frames=2)
    plain = encoded(tmp_path / "plain.avi", "libx264", frames=40, gop_size=10, max_b_frames=0)
    bframes = encoded(tmp_path / "bframes.avi", "libx264", frames=16, first=40, gop_size=8, max_b_frames=3)
    late = spliced(tmp_path / "late.avi", [plain, bframes])
    for path in (early, late):
        pictures = [frame.to_ndarray(format="rgb24") for frame in av.open(str(path)).decode(video=0)]
        info = video_io.probe(path)
        assert info.frames == len(pictures), (path, info)
        whole = dict(video_io.read_frames(info, 0, info.frames, info.fps, (48, 48)))
        assert sorted(whole) == list(range(len(pictures)))
        assert all(np.abs(whole[k] * 255 - pictures[k]).max() < 1.5 for k in whole), path
        for start in (1, 4, 7, info.frames - 12, info.frames - 5, info.frames - 3):
            part = dict(video_io.read_frames(info, start, start + 3, info.fps, (48, 48)))
            assert sorted(part) == list(range(start, start + 3)), (path, start)
            assert all(np.array_equal(part[k], whole[k]) for k in part), (path, start)
            assert video_io.repeats(info, start, start + 3, info.fps) == (3, 3)


@pytest.mark.parametrize("suffix, codec", [(".mp4", "libx264"), (".mov", "libx264"), (".mp4", "mpeg4")])
def test_a_clip_whose_edit_list_hides_its_first_frames_counts_the_frames_it_shows(tmp_path, suffix, codec):
    """`ffmpeg -ss T -i in.mp4 -c copy cut.mp4` keeps the GOP's frames before T and hides them with an edit list:
    the clip was counted by its samples (30 for the 25 shown), and every whole run ended 'the video ended at frame
    26, before 30', exit 1, after stylising it all, with a false variable-rate warning (probe 61a, 2)."""
    path = encoded(tmp_path / f"cut{suffix}", codec, frames=30, first=-5, gop_size=10, max_b_frames=2)
    pictures = [frame.to_ndarray(format="rgb24") for frame in av.open(str(path)).decode(video=0)]
    assert av.open(str(path)).streams.video[0].frames == 30 and len(pictures) == 25  # as such a cut is
    info = video_io.probe(path)
    assert info.frames == 25, info
    whole = dict(video_io.read_frames(info, 0, info.frames, info.fps, (48, 48)))
    assert sorted(whole) == list(range(25))
    assert all(np.abs(whole[k] * 255 - pictures[k]).max() < 3 for k in whole)
    assert video_io.repeats(info, 0, 25, info.fps) == (25, 25) and video_io.repeats(info, 22, 25, info.fps) == (3, 3)
