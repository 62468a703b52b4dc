"""Stop 57: probe 57a's video finding (on 3025e79): the sound streams after the first, and a multichannel sound
mixed down to stereo by a re-encode, went without a word (6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")

from styleengine.engine import video as video_engine, video_io  # noqa: E402

try:
    from test_cli import run_cli
    from test_reliability_stop55_video import style  # noqa: F401 (a fixture)
    from test_video import FAST
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_stop55_video import style  # noqa: F401 (a fixture)
    from tests.test_video import FAST


def clip(path: Path, sounds: list[tuple[str, str, int]], frames: int = 3, fps: int = 10) -> Path:
    """A 48x48 clip of `frames` frames at `fps` with a quiet noise in each of `sounds` (codec, layout, rate)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("ffv1" if path.suffix == ".mkv" else "mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 48, 48, "yuv420p"
        streams = []
        for codec, layout, rate in sounds:
            stream = out.add_stream(codec, rate=rate)
            stream.layout = layout
            streams.append(stream)
        for i in range(frames):
            rgb = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for stream in streams:
            channels, rate = stream.layout.nb_channels, stream.rate
            size, total = stream.codec_context.frame_size or 1024, rate * frames // fps
            for at in range(0, total, size):
                data = (np.random.default_rng(at).random((channels, min(size, total - at))) * 0.1).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(data, format="fltp", layout=stream.layout.name)
                chunk.sample_rate, chunk.pts = rate, at
                for packet in stream.encode(chunk):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return path


def run_video(monkeypatch, capsys, source: Path, style: Path, out: Path) -> tuple[list[str], list[str]]:
    """`styleengine video SOURCE STYLE -o OUT` (exit 0): its sound warnings said before the first frame was
    stylised, and those said after it."""
    before: list[str] = []
    real = video_engine.VideoRun.frame

    def frame(self, index, picture):
        if not before:
            before.append(capsys.readouterr().err)
        return real(self, index, picture)

    monkeypatch.setattr(video_engine.VideoRun, "frame", frame)
    code, _, err = run_cli(monkeypatch, capsys, "video", source, style, "-o", out, *FAST, "--size", "48")
    assert code == 0 and before, (before, err)
    return ([line for line in before[0].splitlines() if line.startswith("warning:") and "sound" in line],
            [line for line in err.splitlines() if line.startswith("warning:") and "sound" in line])


def sounds(path: Path) -> list[tuple[str, int, int]]:
    """Each sound stream of `path` decoded back: (codec, channels, samples)."""
    found = []
    with av.open(str(path)) as container:
        count = len(container.streams.audio)
    for index in range(count):  # each read through on its own: decoding one stream reads past the others
        with av.open(str(path)) as container:
            stream = container.streams.audio[index]
            samples = sum(frame.samples for frame in container.decode(stream))
            found.append((stream.codec_context.name, stream.codec_context.layout.nb_channels, samples))
    return found


def test_a_clip_with_two_sound_streams_says_only_the_first_is_kept(tmp_path, monkeypatch, capsys, style):
    """probe 57a, 6: a clip with a second sound stream (another language, a commentary) lost it in the video, no
    word. Said once, before the first frame is stylised; the first stream is kept, as before."""
    source = clip(tmp_path / "two.mkv", [("flac", "stereo", 48000), ("flac", "mono", 44100)])
    out = tmp_path / "out.mp4"
    before, after = run_video(monkeypatch, capsys, source, style, out)
    assert before == [f"warning: {source} has 2 sound streams: only the first is kept in {out}"], before
    assert after == []
    kept = sounds(out)
    assert [(codec, channels) for codec, channels, _ in kept] == [("flac", 2)] and kept[0][2] > 0


@pytest.mark.parametrize("suffix, encoder", [(".webm", "opus"), (".avi", "mp3")])
def test_a_multichannel_sound_mixed_down_by_its_re_encode_is_said(tmp_path, monkeypatch, capsys, caplog, style,
                                                                   suffix, encoder):
    """probe 57a, 6: a 5.1 sound re-encoded for .webm (opus) or .avi (mp3) was mixed down to stereo, no word.
    Said once, before the first frame is stylised, with .mkv's way to keep the channels (which holds: its 6
    channels copied, nothing said)."""
    source = clip(tmp_path / "a51.mp4", [("aac", "5.1", 48000)])
    out = tmp_path / f"out{suffix}"
    before, after = run_video(monkeypatch, capsys, source, style, out)
    assert before == [f"warning: the sound of {source} has 6 channels: they are mixed down to stereo for {out}'s "
                      f"encoder ({encoder}); .mkv keeps them"], before
    assert after == []
    (codec, channels, samples), = sounds(out)
    assert codec.startswith(encoder) and channels == 2 and samples > 0  # mp3 is read back by "mp3float"
    info, kept = video_io.probe(source), tmp_path / "kept.mkv"
    caplog.clear()
    video_io.check_sound(info, kept, (0.0, 0.3))
    video_io.write_video(kept, [np.zeros((48, 48, 3), np.uint8)] * 3, info.fps, audio=info, span=(0.0, 0.3))
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    (codec, channels, samples), = sounds(kept)
    assert (codec, channels) == ("aac", 6) and samples > 0


def test_a_clip_with_two_video_streams_says_only_the_first_is_stylised(tmp_path, caplog):
    """probe 58a (noted): a clip's second video stream (another angle) was dropped, no word, where a second sound
    stream is said."""
    path = tmp_path / "two.mkv"
    with av.open(str(path), "w") as out:
        streams = [out.add_stream("ffv1", rate=10) for _ in range(2)]
        for stream in streams:
            stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        for i in range(3):
            rgb = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
            for stream in streams:
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                out.mux(packet)
    with caplog.at_level("WARNING", logger="styleengine"):
        assert video_io.probe(path).frames == 3
    assert [r.getMessage() for r in caplog.records] == [f"{path} has 2 video streams: only the first is stylised"]


def long_sound_mkv(path: Path) -> Path:
    """An .mkv of 3 frames at 10 fps whose sound runs about 1 s."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 48, 48, "yuv420p"
        sound = out.add_stream("flac", rate=48000)
        sound.layout = "stereo"
        for i in range(3):
            rgb = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for k in range(11):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 4608), "int16"), format="s16", layout="stereo")
            chunk.sample_rate, chunk.pts = 48000, k * 4608
            for packet in sound.encode(chunk):
                out.mux(packet)
        for stream in (sound, video):
            for packet in stream.encode():
                out.mux(packet)
    return path


def test_an_mkv_whose_sound_runs_longer_counts_its_video_frames(tmp_path):
    """probe 58b, 5: an .mkv of 3 frames whose sound runs 1 s was counted 11 frames (the container's duration, its
    longest stream's), warned as variable-rate, one frame repeated, and ended 'the video ended at frame 4, before
    11', exit 1, every run."""
    assert video_io.probe(long_sound_mkv(tmp_path / "long_sound.mkv")).frames == 3
