"""Issue 23, stop 55: probe 55b's video findings (on d5ca44a): sound at a rate its encoder does not take (7), a
GIF's sound (8), a variable-rate clip's repeats (4)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")

from styleengine.engine import video as video_engine, video_io  # noqa: E402

try:
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_video import FAST
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_video import FAST

TONE = 440.0
SOUNDS = {"aac 44.1 kHz": ("mp4", "libx264", "yuv420p", "aac", 44100, "fltp"),  # a phone's or a camera's
          "pcm 96 kHz": ("mkv", "ffv1", "yuv444p", "pcm_s16le", 96000, "s16")}  # a recorder's; its layout is unnamed


def clip_with_sound(path: Path, video_codec: str, pix_fmt: str, audio_codec: str, rate: int, fmt: str,
                    frames: int = 4, fps: int = 12) -> Path:
    """A 64x48 clip of `frames` frames at `fps` with a mono tone as `audio_codec` at `rate` Hz."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, pix_fmt
        sound = out.add_stream(audio_codec, rate=rate)
        sound.layout = "mono"
        for i in range(frames):
            rgb = np.full((48, 64, 3), 40 * i, np.uint8)
            rgb[:, 8 * i:8 * i + 8] = 255
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        wave = 0.3 * np.sin(2 * np.pi * TONE * np.arange(rate * frames // fps) / rate)
        size = sound.codec_context.frame_size or 1024
        for at in range(0, len(wave) - size + 1, size):
            part = wave[at:at + size]
            data = (part * 32767).astype(np.int16) if fmt == "s16" else part.astype(np.float32)
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[None, :]), format=fmt, layout="mono")
            chunk.sample_rate, chunk.pts = rate, at
            for packet in sound.encode(chunk):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)
    return path


@pytest.fixture
def style(tmp_path) -> Path:
    path = tmp_path / "style.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


def stylised(monkeypatch) -> list[int]:
    """The frames the engine stylises, recorded."""
    ran: list[int] = []
    real = video_engine.VideoRun.frame

    def frame(self, index, picture):
        ran.append(index)
        return real(self, index, picture)

    monkeypatch.setattr(video_engine.VideoRun, "frame", frame)
    return ran


@pytest.mark.parametrize("sound, suffix", [("aac 44.1 kHz", ".webm"), ("pcm 96 kHz", ".mp4"), ("pcm 96 kHz", ".webm")])
def test_sound_at_a_rate_its_encoder_does_not_take_is_resampled_and_kept(tmp_path, monkeypatch, capsys, style, sound,
                                                                          suffix):
    """probe 55b, 7: `-o X.webm` of a clip with 44.1 kHz sound (and .mp4/.webm of 96 kHz PCM) ended, every frame
    stylised, in PyAV's traceback: the sound was re-encoded at the source's rate, which libopus does not take (and a
    PCM stream's unnamed layout, "1 channels", which aac refuses). It is resampled to a rate the encoder takes and
    kept: the tone, its length."""
    container, *made = SOUNDS[sound]
    source = clip_with_sound(tmp_path / f"in.{container}", *made)
    out = tmp_path / f"out{suffix}"
    code, _, err = run_cli(monkeypatch, capsys, "video", source, style, "-o", out, *FAST, "--size", "48")
    assert code == 0 and "Traceback" not in err, err
    with av.open(str(out)) as opened:
        stream = opened.streams.audio[0]
        rate, name = stream.codec_context.sample_rate, stream.codec_context.name
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in opened.decode(stream)])
    assert rate in av.Codec(video_io.AUDIO_CODEC[video_io.CONTAINERS[suffix][0]], "w").audio_rates, (name, rate)
    assert rate >= made[-2] or rate == 48000  # nearest above, else the encoder's highest (opus: 48 kHz)
    assert len(samples) / rate == pytest.approx(4 / 12, abs=0.05)
    spectrum = np.abs(np.fft.rfft(samples[len(samples) // 8:]))  # past the encoder's start-up
    assert np.fft.rfftfreq(len(samples) - len(samples) // 8, 1 / rate)[spectrum.argmax()] == pytest.approx(TONE,
                                                                                                           abs=15)


def test_sound_that_still_cannot_be_encoded_is_said_before_any_frame(tmp_path, monkeypatch, capsys, style):
    """probe 55b, 7: a sound the output's encoder refuses was found at the final encode, a traceback after every frame
    was stylised. Any such case (here the old rule, the source's 44.1 kHz for libopus) is tried before the first
    frame and said in one line, nothing made."""
    source = clip_with_sound(tmp_path / "in.mp4", *SOUNDS["aac 44.1 kHz"][1:])
    monkeypatch.setattr(video_io, "encoder_rate", lambda codec, rate: rate, raising=False)
    ran = stylised(monkeypatch)
    out = tmp_path / "out.webm"
    code, _, err = run_cli(monkeypatch, capsys, "video", source, style, "-o", out, *FAST, "--size", "48")
    line = one_error_line(code, err)
    assert line.startswith(f"error: cannot put the sound of {source} into out.webm (") and line.endswith(
        "); choose .mkv, which keeps any sound as it is") and "libopus" in line, err
    assert ran == [] and not out.exists() and not (tmp_path / "out.webm.frames").exists()


def test_a_sound_refused_at_the_final_encode_anyway_is_one_line_with_the_frames_kept(tmp_path, monkeypatch, capsys,
                                                                                     style):
    """probe 55b, 7: the encoder's refusal at the final encode was PyAV's traceback (~60 lines) naming nothing to do.
    Should one come past the check before the frames (here the check skipped), it is one line saying where the
    finished frames are."""
    source = clip_with_sound(tmp_path / "in.mp4", *SOUNDS["aac 44.1 kHz"][1:])
    monkeypatch.setattr(video_io, "encoder_rate", lambda codec, rate: rate, raising=False)
    monkeypatch.setattr(video_io, "check_sound", lambda *args: None, raising=False)
    out = tmp_path / "out.webm"
    code, _, err = run_cli(monkeypatch, capsys, "video", source, style, "-o", out, *FAST, "--size", "48")
    line = one_error_line(code, err)
    assert line.startswith(f"error: cannot write {out}: ") and "libopus" in line and line.endswith(
        f"; frames 0-3 are kept in {tmp_path / 'out.webm.frames'}"), err
    assert not out.exists() and len(list((tmp_path / "out.webm.frames").glob("frame_*.png"))) == 4


def test_a_gif_of_a_clip_with_sound_says_the_sound_is_not_in_it(tmp_path, monkeypatch, capsys, style):
    """probe 55b, 8: `-o X.gif` of a clip with sound dropped the sound without a word (README: the sound is kept).
    GIF holds none: said once, in a warning line, and the GIF written."""
    source = clip_with_sound(tmp_path / "in.mp4", *SOUNDS["aac 44.1 kHz"][1:])
    out = tmp_path / "out.gif"
    code, _, err = run_cli(monkeypatch, capsys, "video", source, style, "-o", out, *FAST, "--size", "48")
    assert code == 0, err
    said = [line for line in err.splitlines() if "sound" in line]
    assert said == [f"warning: GIF holds no sound: the sound of {source} is not in {out}"], err
    assert video_io.probe(out).frames == 4


def variable_rate_clip(path: Path, shown_ms: list[int], rate: int = 30) -> Path:
    """A clip whose frames are shown at `shown_ms` (a phone's variable rate), its stream rate `rate`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.time_base = Fraction(1, 1000)
        for i, at in enumerate(shown_ms):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = at, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_a_variable_rate_clip_whose_frames_repeat_is_warned(tmp_path, monkeypatch, capsys, style):
    """probe 55b, 4: a variable-rate clip (frames at 0, 10, 500, 520 and 2000 ms, stream rate 30) stylised 61 frames
    for its pictures, each repeat optimised again, with no word (the --fps warning compared rates only). Its
    timestamps are read before the first frame (packets, nothing decoded) and the repeats said, as --fps's are; the
    count is read_frames' own, and a steady clip is said nothing."""
    path = variable_rate_clip(tmp_path / "vfr.mkv", [0, 10, 500, 520, 2000])
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", path, style, "-o", out, *FAST, "--size", "48",
                           "--frames", "0:3")
    assert code == 0, err
    said = [line for line in err.splitlines() if "repeat" in line]
    assert said == [f"warning: {path} has a variable frame rate (its frames' times are uneven), or frames lost to "
                    f"a cut: at 30 fps source "
                    f"frames are repeated, and each repeat is stylised as a frame of its own (3 frames for its 1)"], err
    info = video_io.probe(path)
    for start, stop in ((0, info.frames), (16, 40), (40, info.frames)):
        shown = list(video_io.read_frames(info, start, stop, info.fps, (48, 64)))
        assert video_io.repeats(info, start, stop, info.fps) == (len(shown), len({p[0, 0, 0] for _, p in shown}))
    assert video_io.repeats(info, 0, info.frames, info.fps) == (61, 4)  # 0 and 10 ms: one frame's time
    steady = variable_rate_clip(tmp_path / "steady.mkv", [round(i * 1000 / 30) for i in range(12)])
    steady_info = video_io.probe(steady)
    assert video_io.repeats(steady_info, 0, 12, steady_info.fps) == (12, 12)
    assert video_io.repeats(steady_info, 5, 12, steady_info.fps) == (7, 7)
