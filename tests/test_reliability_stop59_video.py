"""Stop 59: probe 59a's video findings (on 589f682). A clip's frames were counted from Matroska's DURATION tag, and
without it from the container's duration: a stale tag dropped frames with exit 0 (1), a zero tag or a streamed
file's missing durations was "has no frames" (1, 3), and a missing tag or a video starting after 0 s counted past
the end, exit 1 every run (2). The count now comes from the video stream's last packets."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")

from styleengine.engine import video_io  # noqa: E402

try:
    from test_cli import run_cli
    from test_reliability_stop55_video import style  # noqa: F401 (a fixture)
    from test_reliability_stop57_video import long_sound_mkv
    from test_video import FAST
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_stop55_video import style  # noqa: F401 (a fixture)
    from tests.test_reliability_stop57_video import long_sound_mkv
    from tests.test_video import FAST

TAG = re.compile(rb"\d\d:\d\d:\d\d\.\d{9}")


def retagged(source: Path, path: Path, tag: bytes) -> Path:
    """`source` with its video stream's DURATION tag (the first one) replaced in place by `tag`, of the same length:
    what an editing tool that leaves the statistics tags stale writes."""
    data = bytearray(source.read_bytes())
    at = data.find(b"DURATION")
    found = TAG.search(data, at)
    assert at >= 0 and found is not None
    data[found.start():found.end()] = tag
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("tag", [b"00:00:00.100000000", b"00:00:00.000000000", b"abcdefghijklmnopqr",
                                 b"99:99:99.000000000"], ids=["stale", "zero", "garbage", "huge"])
def test_a_clip_with_a_wrong_duration_tag_counts_its_frames(tmp_path, tag):
    """A stale tag of 0.1 s made a 3-frame clip one frame long with exit 0; a zero tag made it 'has no frames'."""
    path = retagged(long_sound_mkv(tmp_path / "long.mkv"), tmp_path / "tagged.mkv", tag)
    assert video_io.probe(path).frames == 3


def test_a_clip_without_a_duration_tag_is_not_counted_by_its_longer_sound(tmp_path, monkeypatch, capsys, style):
    """Without the video's tag the count was the container's (the sound's 1 s): 10 frames, a false variable-rate
    warning, and 'the video ended at frame 4, before 10', exit 1 on every run."""
    data = bytearray(long_sound_mkv(tmp_path / "long.mkv").read_bytes())
    at = data.find(b"DURATION")
    data[at:at + 8] = b"DURATIOX"
    source = tmp_path / "untagged.mkv"
    source.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", source, style, "-o", out, *FAST, "--size", "64")
    assert code == 0, err
    assert "variable frame rate" not in err
    assert video_io.probe(out).frames == 3


def write_frames(target, fmt: str, codec: str, first_pts: int = 0) -> None:
    """3 frames of 48x48 at 10 fps into `target` (a path, or a file object)."""
    with av.open(target, "w", format=fmt) as out:
        video = out.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = 48, 48, "yuv420p"
        for i in range(3):
            rgb = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = first_pts + i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)


def test_a_clip_that_starts_after_zero_counts_its_frames(tmp_path):
    """A clip whose video starts at 1 s: its tag (an end time, 1.3 s) counted 13 frames, exit 1 every run."""
    path = tmp_path / "late.mkv"
    write_frames(str(path), "matroska", "ffv1", first_pts=10)
    info = video_io.probe(path)
    assert (info.frames, info.start) == (3, 1.0)


class Pipe(io.RawIOBase):
    """A file that cannot seek, as a pipe: the muxer cannot go back to write the durations."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:  # type: ignore[override]
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()
        super().close()


@pytest.mark.parametrize("suffix,fmt,codec", [(".webm", "webm", "libvpx-vp9"), (".mkv", "matroska", "ffv1")])
def test_a_streamed_clip_without_durations_counts_its_frames(tmp_path, suffix, fmt, codec):
    """A browser's MediaRecorder .webm (or ffmpeg's matroska into a pipe) holds no duration at all: 'has no
    frames', and --frames was refused the same way."""
    path = tmp_path / f"streamed{suffix}"
    pipe = Pipe(path)
    write_frames(pipe, fmt, codec)
    pipe.close()
    assert video_io.probe(path).frames == 3


def encoded(path: Path, codec: str, frames: int = 12, first: int = 0, **context) -> Path:
    """`frames` 48x48 frames at 10 fps from pts `first`, each another grey, in `path`'s container; `context` set on
    the codec."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = 48, 48, "yuv420p"
        for name, value in context.items():
            setattr(video.codec_context, name, value)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 48, 3), i * 16 % 256, np.uint8), format="rgb24")
            frame.pts = first + i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


CLIPS = {  # review of stop 59, 1 and 3; probe 60a, 1, 3 and 4
    "ts-bframes": (".ts", "mpeg2video", {"max_b_frames": 2, "gop_size": 6}),  # the last packet sent is a B-frame
    "mpg-bframes": (".mpg", "mpeg2video", {"max_b_frames": 2, "gop_size": 6}),
    "avi-h264": (".avi", "libx264", {"gop_size": 6, "max_b_frames": 0}),  # its first frame after the stream's start
    "avi-mpeg4-bframes": (".avi", "mpeg4", {"gop_size": 6, "max_b_frames": 2}),
    "flv-h264": (".flv", "libx264", {"gop_size": 6}),
    "mkv-h264": (".mkv", "libx264", {"gop_size": 6}),
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_every_frame_of_a_clip_is_counted_and_reached(tmp_path, name):
    """A .ts with B-frames was counted a frame short (the seek to its end lands on a B-frame sent after its last
    frame: exit 0, the frame dropped), an H.264 .avi showed no frame at all ('the video ended at frame 0'), and
    `--frames A:B` of a .ts showed none (its seek lands past frame A's keyframe)."""
    suffix, codec, context = CLIPS[name]
    path = encoded(tmp_path / f"clip{suffix}", codec, **context)
    decoded = [frame.to_ndarray(format="rgb24") for frame in av.open(str(path)).decode(video=0)]
    info = video_io.probe(path)
    assert info.frames == len(decoded) == 12
    whole = dict(video_io.read_frames(info, 0, info.frames, info.fps, (48, 48)))
    assert sorted(whole) == list(range(12))
    for start, stop in ((1, 4), (7, 10), (9, 12)):
        part = dict(video_io.read_frames(info, start, stop, info.fps, (48, 48)))
        assert sorted(part) == list(range(start, stop)), (start, stop)
        assert all(np.array_equal(part[k], whole[k]) for k in part)
        assert video_io.repeats(info, start, stop, info.fps) == (stop - start, stop - start)


def test_a_raw_stream_is_told_its_frames_cannot_be_timed(tmp_path):
    """A raw .h264 (no container: frames without times) was 'not a video ... (Operation not permitted)'."""
    path = encoded(tmp_path / "raw.h264", "libx264")
    with pytest.raises(video_io.ImageError, match=r"^cannot tell how many frames .*raw\.h264 holds, or their rate"):
        video_io.probe(path)


def test_a_clip_whose_last_frame_lasts_longer_counts_it_once(tmp_path):
    """A .webm whose last frame stays a second (a recording that stops changing) was counted 12 frames for its 3:
    a false variable-rate warning and 'the video ended at frame 4, before 12', exit 1 every run."""
    path = tmp_path / "held.webm"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libvpx-vp9", rate=10)
        video.width, video.height, video.pix_fmt = 48, 48, "yuv420p"
        packets = []
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 48, 3), i * 60, np.uint8), format="rgb24")
            frame.pts = i
            packets += video.encode(frame)
        packets += video.encode()
        packets[-1].duration = 10
        for packet in packets:
            out.mux(packet)
    info = video_io.probe(path)
    assert info.frames == 3
    assert video_io.repeats(info, 0, 3, info.fps) == (3, 3)


def test_frames_of_a_ts_whose_clock_wrapped_are_reached(tmp_path):
    """A broadcast .ts whose 33-bit clock wraps starts before 0: `--frames A:B` sought 'from the start' at time 0,
    after frame A, and showed nothing, exit 1 (probe 61a, 3)."""
    path = encoded(tmp_path / "wrapped.ts", "mpeg2video", frames=24, first=(1 << 33) // 9000 - 5, gop_size=12,
                   max_b_frames=2)
    info = video_io.probe(path)
    assert info.frames == 24 and info.start < 0, info
    whole = dict(video_io.read_frames(info, 0, 24, info.fps, (48, 48)))
    for start in (1, 3, 5, 8):
        part = dict(video_io.read_frames(info, start, start + 3, info.fps, (48, 48)))
        assert sorted(part) == list(range(start, start + 3)) and all(np.array_equal(part[k], whole[k]) for k in part)
