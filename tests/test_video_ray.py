"""`styleengine video --ray` on a local Ray cluster (2 CPUs, two one-CPU actors): a chunk's frames past its
overlap are a one-process run's from the chunk's first frame, a seam frame is the documented cross-fade, a
rerun after a signal runs only the chunks that had not come back, and bad flags are one line."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")

from styleengine import cli_video  # noqa: E402
from styleengine.engine import batch_ray, video_io  # noqa: E402
from styleengine.engine.video_ray import Chunk, chunking, cross_fade, fade_weight, plan_chunks  # noqa: E402
from styleengine.errors import ConfigError  # noqa: E402

try:
    from test_batch_ray import cluster  # noqa: F401 (a fixture: a local 2-CPU cluster for this module)
    from test_cli import assert_one_line_error, run_cli
    from test_video import FAST, clip, frame_count, style  # noqa: F401 (clip and style are fixtures)
except ImportError:  # run from the repository root as a package
    from tests.test_batch_ray import cluster  # noqa: F401
    from tests.test_cli import assert_one_line_error, run_cli
    from tests.test_video import FAST, clip, frame_count, style  # noqa: F401

pytestmark = pytest.mark.ray
CHUNKED = ["--ray", "auto", "--chunk-frames", "3", "--overlap", "1"]  # 6 frames: chunks 0-2 and (2) 3-5


@pytest.fixture
def two_actors(cluster, monkeypatch):
    monkeypatch.setattr(batch_ray, "CPUS_PER_WORKER", 1)


def frames_of(output) -> dict[int, np.ndarray]:
    folder = output.with_name(output.name + ".frames")
    return {int(p.stem.split("_")[1]): np.asarray(Image.open(p), np.int16) for p in folder.glob("frame_*.png")}


def test_chunks_plan_and_defaults():
    assert plan_chunks(0, 10, 4, 2) == [Chunk(0, 0, 0, 4), Chunk(1, 2, 4, 8), Chunk(2, 6, 8, 10)]
    assert chunking(6, 2, None, None) == (3, 2)  # one chunk an actor; the overlap below the chunk
    assert chunking(100, 4, None, None) == (25, 4)
    assert chunking(6, 2, None, 5) == (6, 5)
    later = plan_chunks(0, 10, 4, 2)[1]
    assert [fade_weight(later, i) for i in range(2, 6)] == [1 / 3, 2 / 3, 1.0, 1.0]
    a, b = np.full((2, 2, 3), 30, np.uint8), np.full((2, 2, 3), 90, np.uint8)
    assert np.array_equal(cross_fade(a, b, 1 / 3), np.full((2, 2, 3), 50, np.uint8))


def test_chunked_frames_are_one_process_frames_away_from_seams(tmp_path, monkeypatch, capsys, clip, style,
                                                               two_actors):
    out, trace = tmp_path / "ray.mp4", tmp_path / "trace.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, style, "-o", out, *FAST, "--size", "64", *CHUNKED,
                           "--trace", trace)
    assert code == 0, err
    assert frame_count(out) == 6 and video_io.probe(out).audio
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert sorted((x["chunk"], x["frame"]) for x in lines) == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 3), (1, 4),
                                                               (1, 5)]
    assert not list(out.with_name(out.name + ".frames").glob("seam_*"))
    whole, second = tmp_path / "whole.mp4", tmp_path / "second.mp4"
    assert run_cli(monkeypatch, capsys, "video", clip, style, "-o", whole, *FAST, "--size", "64")[0] == 0
    assert run_cli(monkeypatch, capsys, "video", clip, style, "-o", second, *FAST, "--size", "64",
                   "--frames", "2:6")[0] == 0
    chunked, one, two = frames_of(out), frames_of(whole), frames_of(second)
    for index in (0, 1):  # chunk 0's own chain, from frame 0: the one-process video's
        assert np.abs(chunked[index] - one[index]).max() <= 1, index
    for index in (3, 4, 5):  # chunk 1's chain starts at frame 2: a one-process run of --frames 2:6
        assert np.abs(chunked[index] - two[index]).max() <= 1, index
    # the seam: chunk 0's frame 2 (warped along its chain) and chunk 1's (its chain's first), half and half
    assert np.abs(one[2] - two[2]).mean() > 2  # two different frames: the blend is seen
    expected = cross_fade(one[2].astype(np.uint8), two[2].astype(np.uint8), 0.5).astype(np.int16)
    assert np.abs(chunked[2] - expected).max() <= 1


def test_a_rerun_after_a_signal_runs_only_the_chunks_that_had_not_come_back(tmp_path, monkeypatch, capsys, clip,
                                                                            style, two_actors):
    import os

    out, trace = tmp_path / "ray.mp4", tmp_path / "trace.jsonl"
    sent = []
    for name in ("save", "save_seam"):  # the first write of the first chunk back: SIGTERM, delivered after it
        real = getattr(cli_video.FrameStore, name)

        def hooked(self, *args, _real=real):
            if not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
            return _real(self, *args)

        monkeypatch.setattr(cli_video.FrameStore, name, hooked)
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, style, "-o", out, *FAST, "--size", "64", *CHUNKED,
                           "--trace", trace)
    assert code == 143 and "Traceback" not in err, err
    first = {x["chunk"] for x in map(json.loads, trace.read_text().splitlines())}
    assert len(first) == 1  # one chunk recorded, whole
    if first == {0}:  # frames 0 and 1 are finished (2 waits for chunk 1): the partial video holds them
        assert frame_count(out) == 2 and sorted(frames_of(out)) == [0, 1]
        assert "after 2 new frames" in err, err  # counted inside the shield (probe 24b: "after 0 new frames")
    else:
        # frames 3-5 came back first: frame 0 is the one missing (it said "no frame finished" before stop 43)
        assert "frame 0 is not finished" in err and not out.exists() and sorted(frames_of(out)) == [3, 4, 5]

    monkeypatch.undo()
    monkeypatch.setattr(batch_ray, "CPUS_PER_WORKER", 1)
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, style, "-o", out, *FAST, "--size", "64", *CHUNKED,
                           "--trace", trace)
    assert code == 0, err
    again = {x["chunk"] for x in map(json.loads, trace.read_text().splitlines())}
    assert again == {0, 1} - first  # no finished frame ran again
    assert frame_count(out) == 6 and sorted(frames_of(out)) == list(range(6))
    assert not list(out.with_name(out.name + ".frames").glob("seam_*"))


@pytest.mark.parametrize("flags, message", [
    (["--ray", "nowhere"], "--ray must be auto, HOST:PORT"),
    (["--ray", "auto", "--chunk-frames", "0"], "--chunk-frames must be at least 1"),
    (["--ray", "auto", "--chunk-frames", "3", "--overlap", "3"], "must be less than --chunk-frames"),
    (["--ray", "auto", "--overlap", "-1"], "--overlap must be 0 or more"),
    (["--chunk-frames", "3"], "need --ray")])
def test_bad_chunk_flags_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, clip, style, flags,
                                                        message):
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, style, "-o", out, *FAST, "--size", "64", *flags)
    assert_one_line_error(code, err, out)
    assert message in err
    assert not out.with_name(out.name + ".frames").exists()


def test_an_address_where_nothing_answers_is_refused_at_once():
    with pytest.raises(ConfigError, match="nothing answers"):
        batch_ray.check_address("127.0.0.1:1")
