"""Stop 63: probes 62a, 63a and 63b (an .avi's times, seeks, damaged packets, edit lists; a signal held through a
write that fails)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from styleengine.engine import video_io  # noqa: E402

try:
    from test_cli import run_cli
    from test_reliability_probe13 import FAST as BATCH_FAST
    from test_reliability_stop43 import three_jobs_batch
    from test_reliability_stop55_video import style  # noqa: F401 (a fixture)
    from test_reliability_stop57_video import long_sound_mkv
    from test_reliability_stop59_video import encoded
    from test_video import FAST
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_probe13 import FAST as BATCH_FAST
    from tests.test_reliability_stop43 import three_jobs_batch
    from tests.test_reliability_stop55_video import style  # noqa: F401 (a fixture)
    from tests.test_reliability_stop57_video import long_sound_mkv
    from tests.test_reliability_stop59_video import encoded
    from tests.test_video import FAST


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


def test_a_damaged_packet_is_passed_over_with_a_warning(tmp_path, monkeypatch, capsys, style):
    """A few bytes of noise in a clip (a bad sector, a download cut and resumed) made FFmpeg refuse a packet: the
    run ended in a traceback from PyAV, its frames left in OUT.frames. As FFmpeg does, the packet is passed over
    and the frame before it stays on screen in its place, said once."""
    path = encoded(tmp_path / "damaged.mp4", "libx264", gop_size=6, max_b_frames=0)
    sizes = [(packet.pos, packet.size) for packet in av.open(str(path)).demux(video=0) if packet.size]
    data = bytearray(path.read_bytes())
    data[sizes[3][0] + 4:sizes[3][0] + 12] = b"\xff" * 8  # frame 3's NAL unit, after its length
    path.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", path, style, "-o", out, "--frames", "0:6", *FAST,
                           "--size", "32")
    assert code == 0, err
    assert "Traceback" not in err and "damaged.mp4 is damaged near 0.4 s (the decoder refused a packet)" in err, err
    assert video_io.probe(out).frames == 6


def test_a_signal_held_through_a_write_that_fails_is_said_too(tmp_path, monkeypatch, capsys):
    """A signal that came while a job's line was written onto a full --out was held, the write failed (the
    picture rescued), and the batch ended with the disk's line alone and the signal's exit code: 'interrupted',
    the jobs left and what a rerun does went unsaid (probe 63b, 1)."""
    import os
    import signal

    from styleengine.engine import batch as engine
    from styleengine.errors import UserError

    def full_disk(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # held: the write goes on
        raise UserError("cannot write the manifest out/manifest.jsonl: No space left on device")

    monkeypatch.setattr(engine, "record_all", full_disk)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 130, err
    assert "No space left on device" in err and "error: interrupted (Ctrl-C) with 3 of 3 jobs left" in err, err


def barred(path: Path, codec: str, frames: int, options: dict[str, str], **context) -> Path:
    """`frames` 48x48 frames at 10 fps, each another grey with a bar at another row and one down its side
    (frames big enough that a muxer gives each its own packet); `options` and `context` set on the codec."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=10, options=options)
        video.width, video.height, video.pix_fmt = 48, 48, "yuv420p"
        for name, value in context.items():
            setattr(video.codec_context, name, value)
        for i in range(frames):
            picture = np.full((48, 48, 3), i * 8 % 256, np.uint8)
            picture[i % 48, :, 0], picture[:, 0, 2] = 255, 255
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def every_window_shows_its_frames(path: Path) -> None:
    """Every `--frames A:A+3` of `path` shows what a whole read shows, and that is each picture FFmpeg decodes."""
    pictures = [frame.to_ndarray(format="rgb24") for frame in av.open(str(path)).decode(video=0)]
    info = video_io.probe(path)
    assert info.frames == len(pictures), (path, info)
    whole = dict(video_io.read_frames(info, 0, info.frames, info.fps, (48, 48)))
    assert sorted(whole) == list(range(len(pictures))) and all(
        np.abs(whole[k] * 255 - pictures[k]).max() < 3 for k in whole), path
    for start in range(1, info.frames - 3):
        part = dict(video_io.read_frames(info, start, start + 3, info.fps, (48, 48)))
        assert sorted(part) == list(range(start, start + 3)), (path, start)
        assert all(np.array_equal(part[k], whole[k]) for k in part), (path, start)


def test_frames_of_an_open_gop_avi_are_reached_from_the_keyframe_before(tmp_path):
    """An .avi's index holds decode times: a seek to frame 5 landed on the keyframe sent at 5 but shown at 8, whose
    B-frames shown before it need the GOP before; FFmpeg dropped them and `--frames 5:8` (or a resumed run) showed
    picture 8 thrice, exit 0 (probe 63a, 1)."""
    every_window_shows_its_frames(barred(tmp_path / "open.avi", "libx264", 40, {
        "x264-params": "bframes=3:b-adapt=0:keyint=8:min-keyint=8:open-gop=1:scenecut=0"}))


def test_frames_of_an_mpeg_ps_are_read_from_its_start(tmp_path):
    """After a seek in an MPEG-PS (.mpg) FFmpeg's times come from a pack cut within: half a frame late, and an open
    GOP's first B-frames lost; `--frames 13:16` showed pictures 3 later, exit 0, and `--frames 37:40` of 40 'ended
    at frame 38' (probe 63a, 2). A pack of several small frames times only its first: the others were dropped,
    the clip counted 22 of its 40 frames, and frames 0-20 all showed picture 0 (probe 63a, 3)."""
    every_window_shows_its_frames(barred(tmp_path / "open.mpg", "mpeg2video", 40, {"bf": "2", "g": "8"}))
    packed = encoded(tmp_path / "packed.mpg", "libx264", frames=40, gop_size=10, max_b_frames=0)
    assert sum(packet.pts is None for packet in av.open(str(packed)).demux(video=0) if packet.size) > 20
    every_window_shows_its_frames(packed)


def test_frames_of_an_open_gop_avi_without_its_index_are_reached_from_its_start(tmp_path):
    """Without its index (a recording stopped by a crash) an .avi's seek to the keyframe before went no further
    back, and `--frames 5:8` showed picture 8 thrice again (probe 64a, 4): such an .avi is read from its start."""
    path = barred(tmp_path / "open.avi", "libx264", 40, {
        "x264-params": "bframes=3:b-adapt=0:keyint=8:min-keyint=8:open-gop=1:scenecut=0"})
    data = path.read_bytes()
    (tmp_path / "no-index.avi").write_bytes(data[:data.rfind(b"idx1")])
    every_window_shows_its_frames(tmp_path / "no-index.avi")


def test_a_damaged_clip_runs_to_its_end_and_says_so_as_it_meets_the_damage(tmp_path, caplog):
    """A tenth of an .mp4 zeroed: past the packets the decoder refused, a frame held in its reorder came out with
    its time gone back, and the run stopped there, 'out of order; convert it first' (with a command writing onto
    the input), every rerun; the damage was said after the run's last line, without its 'warning:' (probe 64a, 1
    and 6)."""
    path = barred(tmp_path / "clip.mp4", "libx264", 60, {"x264-params": "bframes=3:keyint=10"})
    data = bytearray(path.read_bytes())
    data[len(data) // 3:len(data) // 3 + len(data) // 10] = bytes(len(data) // 10)
    path.write_bytes(bytes(data))
    info = video_io.probe(path)
    frames = video_io.read_frames(info, 0, info.frames, info.fps, (48, 48))
    with caplog.at_level("WARNING"):
        seen = [index for index, _ in zip(range(40), frames)]
        assert "is damaged near" in caplog.text  # met before the frames after it, not when the read is closed
        seen += [index for index, _ in frames]
    assert seen == list(range(60)) and caplog.text.count("is damaged") == 1, caplog.text


def test_a_clip_the_demuxer_cannot_read_past_a_point_keeps_its_frames_before(tmp_path, monkeypatch, caplog):
    """Noise in a fragmented .mp4 made FFmpeg's demuxer fail ('Invalid data', 'Cannot allocate memory'): a
    traceback from PyAV (probe 64a, 2). The frames before it are read, the rest is the damage, said."""
    path = barred(tmp_path / "clip.mp4", "libx264", 12, {})
    opened = av.open

    class Failing:  # the file's own container whose demuxer fails after six packets
        def __init__(self, *args, **kwargs):
            self.container = opened(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.container, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

        def demux(self, *args):
            for n, packet in enumerate(self.container.demux(*args)):
                if n == 6:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield packet

    info = video_io.probe(path)
    monkeypatch.setattr(video_io.av, "open", Failing)
    with caplog.at_level("WARNING"):
        read = [index for index, _ in video_io.read_frames(info, 0, info.frames, info.fps, (48, 48))]
    assert read[:6] == list(range(6)) and "nothing after it could be read: Invalid data" in caplog.text, caplog.text


def test_a_clip_whose_header_names_no_decoder_is_refused_in_a_line(tmp_path):
    """Noise in an .mp4's header left its video stream without a decoder: 'NoneType' object has no attribute
    'height', a traceback (found by probe 64a's damaged files)."""
    path = barred(tmp_path / "clip.mp4", "libx264", 12, {})
    data = bytearray(path.read_bytes())
    at = data.find(b"minf")
    data[at:at + 4] = b"\xff" * 4
    path.write_bytes(bytes(data))
    with pytest.raises(video_io.ImageError, match="no decoder for its video stream"):
        video_io.probe(path)


def test_a_signal_that_lands_in_a_weakref_callback_is_raised_again():
    """A signal that arrived while the garbage collector ran a weakref callback (WeakKeyDictionary's remove, as a
    batch went from one job to the next) raised its KeyboardInterrupt there, where Python drops it ('Exception
    ignored in'): the batch ran its last job and exited 0 (probe 64b, 1, 2 of 26 tries)."""
    import os
    import signal
    import time
    import weakref

    from styleengine.cli import signals

    class Thing:
        pass

    def gone(_):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs here, inside the callback
            pass

    with signals.installed():
        thing = Thing()
        watch = weakref.ref(thing, gone)
        with pytest.raises(KeyboardInterrupt):
            del thing
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
        assert watch() is None and signals.exit_code == 143


def test_a_frame_whose_time_goes_back_is_dropped_and_said(caplog):
    """A demuxer that passed over damage unsaid (Matroska) left a frame in the decoder's reorder, given late with
    its time gone back: the run stopped, 'out of order; convert it first', every rerun (probe 65a, 1)."""
    damage = video_io._Damage(Path("clip.mkv"))
    timed = [(0.0, "a"), (0.1, "b"), (0.05, "late"), (0.2, "c"), (0.15, "later")]
    with caplog.at_level("WARNING"):
        assert [frame for _, frame in video_io._in_order(iter(timed), Path("clip.mkv"), damage)] == ["a", "b", "c"]
    assert caplog.text.count("clip.mkv is damaged near 0.1 s (a frame whose time goes back: dropped)") == 1
    caplog.clear()
    damage = video_io._Damage(Path("clip.mkv"), end=1.8)  # a time past the clip's end is the damage's own
    with caplog.at_level("WARNING"):
        damage.found(166024.2, "the decoder refused a packet")
    assert "clip.mkv is damaged (the decoder refused a packet)" in caplog.text, caplog.text


def test_a_video_that_ends_before_its_count_names_the_range_that_runs(tmp_path, monkeypatch, capsys, style):
    """An .avi cut short (its header counts the frames it held), or a clip whose damage ends the read: 'the video
    ended at frame 27, before 32', exit 1 every run, and no way on (probe 64a, 5; 65a, 2 and 3)."""
    path = barred(tmp_path / "clip.avi", "libx264", 40, {"x264-params": "bframes=0:keyint=5"})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 7 // 10])
    info = video_io.probe(path)
    read = len(list(video_io.read_frames(info, 0, info.frames, info.fps, (48, 48))))
    assert info.frames == 40 and read < 36, (info, read)
    code, _, err = run_cli(monkeypatch, capsys, "video", path, style, "-o", tmp_path / "out.mp4", "--frames",
                           f"{read - 2}:", *FAST, "--size", "32")
    assert code == 1 and f"the video ended at frame {read}, before 40" in err, err
    assert f"`--frames {read - 2}:{read}` runs what was read" in err, err


def test_a_sound_an_mkv_cannot_take_is_not_told_to_choose_mkv(tmp_path, monkeypatch):
    """A damaged clip's sound failed its copy ('Operation not permitted') into .mp4 and into .mkv alike, and each
    time the line said 'choose .mkv' (probe 65a, 4)."""
    source = long_sound_mkv(tmp_path / "long.mkv")
    info = video_io.probe(source)

    def damaged(*args, **kwargs):
        raise av.error.PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(video_io, "_AudioCopy", damaged)
    with pytest.raises(video_io.ConfigError, match=r"cannot copy the sound of .*long\.mkv \(.*damaged\?\); make a "
                                                   r"copy without it first, e\.g\. ffmpeg -i long\.mkv -an -c copy "
                                                   r"long-silent\.mkv"):
        video_io.check_sound(info, tmp_path / "out.mkv", (0.0, 0.3))
    with pytest.raises(video_io.ConfigError, match="choose .mkv"):  # another container: .mkv may take it
        video_io.check_sound(info, tmp_path / "out.mp4", (0.0, 0.3))


def test_a_signal_put_off_as_the_last_job_ends_is_said(tmp_path, monkeypatch, capsys):
    """A signal whose KeyboardInterrupt Python dropped in a finalizer during the last job was put off, and the
    batch's end (signals.finish) cancelled it: '3 ok', exit 0 (probe 65b, 1)."""
    import os
    import signal

    from styleengine.cli import signals
    from styleengine.engine import batch as engine

    real = engine.run_groups

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs here, inside the finalizer
                pass

    def then_a_signal(*args, **kwargs):
        yield from real(*args, **kwargs)
        Finalized()  # after the last job's line, as the jobs run out

    monkeypatch.setattr(engine, "run_groups", then_a_signal)
    monkeypatch.setattr(signals, "RETRY_S", 30.0)  # not raised again before the batch's end looks
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 143 and "interrupted (SIGTERM) with 0 of 3 jobs left; every job is recorded" in err, err


@pytest.mark.parametrize("output", ["x\u0000/a.png", "\ud800/a.png"], ids=["nul", "surrogate"])
def test_a_manifest_line_whose_output_names_no_file_is_skipped(tmp_path, monkeypatch, capsys, output):
    """An ok line without its `file` whose output holds a NUL or a lone surrogate in a folder part: a traceback
    from place()'s realpath (ValueError, UnicodeEncodeError) at the next run (probe 66a, 1)."""
    import json

    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 0, err
    with open(tmp_path / "out" / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"id": "zz", "output": output, "settings_hash": "abc", "status": "ok"}) + "\n")
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 0 and "line 4: its output is not a text naming a file; skipped" in err, err


def test_a_jobs_files_picture_named_with_a_dollar_is_read_beside_it_from_anywhere(tmp_path, monkeypatch, capsys):
    """A jobs file's `c$NOPE.png` beside it was 'the variable $NOPE is not set (a file by that name does not
    exist)' from another folder, and ran from its own: the literal name was looked for in the working folder
    (probe 66a, 2)."""
    from PIL import Image

    monkeypatch.delenv("NOPE", raising=False)
    (tmp_path / "j").mkdir()
    for name, colour in (("c$NOPE.png", (200, 30, 30)), ("s.png", (20, 20, 200))):
        Image.new("RGB", (40, 40), colour).save(tmp_path / "j" / name)
    (tmp_path / "j" / "jobs.jsonl").write_text('{"content": "c$NOPE.png", "style": "s.png", "output": "x.png"}\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j" / "jobs.jsonl", "--out", tmp_path / "o",
                           *BATCH_FAST)
    assert code == 0 and (tmp_path / "o" / "x.png").is_file(), err


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_jobs_given_on_standard_input_are_told_to_be_saved_to_a_file(tmp_path, monkeypatch, capsys, name):
    """`batch -` and `batch /dev/stdin` said "unknown suffix '(none)'; use .jsonl or .csv", which no pipe can have
    (and `<(...)` is a FIFO, refused): the line now says to save the jobs to a file (probe 66b, 3)."""
    code, _, err = run_cli(monkeypatch, capsys, "batch", name, "--out", tmp_path / "o", *BATCH_FAST)
    assert code == 1 and "not standard input; save them to one first" in err, err


def test_a_jobs_files_output_named_with_a_dollar_is_looked_for_in_out(tmp_path, monkeypatch, capsys):
    """An output `y$NOPE.png` was judged in the working folder: refused ('$NOPE is not set') from one folder though
    --out held it, run from another that held an unrelated file of that name (probe 67a, 1)."""
    from PIL import Image

    monkeypatch.delenv("NOPE", raising=False)
    (tmp_path / "j").mkdir()
    Image.new("RGB", (40, 40), (20, 20, 200)).save(tmp_path / "j" / "s.png")
    (tmp_path / "j" / "jobs.jsonl").write_text('{"content": "s.png", "style": "s.png", "output": "y$NOPE.png"}\n')
    (tmp_path / "o").mkdir()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "o" / "y$NOPE.png")  # an earlier run's, say
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j" / "jobs.jsonl", "--out", tmp_path / "o",
                             *BATCH_FAST)
    assert code == 0 and "ok y$NOPE" in out + err, out + err
