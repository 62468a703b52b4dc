"""Issue 23, probe 9 (on 614637d): today's fixes tried from other angles, and new ground (recipes, masks, colours,
texture/invert/visualize flags, CSV quoting and encodings, snapshots on full and read-only disks, odd inits and
style scales). About 190 cases; the defects it found are tests here."""
from __future__ import annotations

import json
import os
import threading

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


# ------------------------------------------------------------------ a manifest made a FIFO while it is in use

def test_a_manifest_made_a_fifo_while_in_use_fails_the_write_never_waits(tmp_path):
    """`rm manifest.jsonl; mkfifo manifest.jsonl` while a server or batch ran: the next append blocked for
    ever (the server ignored SIGTERM, the batch hung); the FIFO check was made only at start (D1, D2)."""
    from styleengine.engine.batch import Manifest
    from styleengine.errors import UserError

    path = tmp_path / "manifest.jsonl"
    os.mkfifo(path)
    manifest, outcome = Manifest(path), []

    def append() -> None:
        try:
            manifest.append({"id": "a", "status": "failed", "reason": "x"})
        except UserError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=append, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the append waited on the FIFO"
    assert outcome and "FIFO" in outcome[0]
    with pytest.raises(UserError, match="FIFO"):
        manifest.read()


# ------------------------------------------------------------------ video: the trace inside the frames folder

def _clip(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    import numpy as np

    from styleengine.benchmarks.video_clips import write_clip

    write_clip(tmp_path / "v.mp4", [np.full((48, 64, 3), v / 8, np.float32) for v in range(2)], fps=12)
    _pictures(tmp_path)


VIDEO_FAST = ["--weights", "random", "--model", "vgg16", "--iters", "1", "--frame-iters", "1", "--device", "cpu",
              "--backend", "torch", "--style-layers", "relu1_1", "--content-layers", "relu2_2", "--size", "64"]


@pytest.mark.parametrize("inside", ["frame_000000.png", "video.json"])
def test_a_video_trace_inside_its_frames_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys, inside):
    """`--trace out.mp4.frames/frame_000000.png` wrote the trace over a kept frame, then a TypeError traceback;
    over video.json it overwrote the resume record (D3)."""
    _clip(tmp_path)
    (tmp_path / "o.mp4.frames").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "v.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "o.mp4", "--trace", tmp_path / "o.mp4.frames" / inside, *VIDEO_FAST)
    assert "inside o.mp4.frames" in one_error_line(code, err)
    assert list((tmp_path / "o.mp4.frames").iterdir()) == []


def test_a_video_frames_folder_that_is_a_link_is_refused(tmp_path, monkeypatch, capsys):
    """A symbolic link as OUT.frames was followed, the frames written wherever it led (batch and serve refuse)."""
    _clip(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "o.mp4.frames").symlink_to(tmp_path / "elsewhere")
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "v.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "o.mp4", *VIDEO_FAST)
    assert "symbolic link" in one_error_line(code, err) and list((tmp_path / "elsewhere").iterdir()) == []


# ------------------------------------------------------------------ serve: its own values within its limits

@pytest.mark.parametrize("argv, says", [(["--size", "48", "--max-size", "40"], "--size 48 is over --max-size 40 px"),
                                        (["--max-size", "10"], "--max-size must be at least 32"),
                                        (["--iters", "20", "--max-iters", "10"], "--iters 20 is over --max-iters")])
def test_serve_refuses_defaults_over_its_own_limits(tmp_path, monkeypatch, capsys, argv, says):
    """`serve --size 48 --max-size 10` started and ran POSTs without a size at 48 px, while size=40 was 422 (D4)."""
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--results-dir", tmp_path / "srv", "--weights", "random",
                           *argv)
    assert says in one_error_line(code, err)


def test_serve_refuses_a_job_at_once_when_results_is_not_its_folder(tmp_path):
    """results/ a FIFO (or link): the POST was taken (202) and the job failed after its work (m4)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    import shutil

    from fastapi.testclient import TestClient
    from serve_helpers import SETTINGS, files

    from styleengine.serve.app import Config, create_app

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv")
    with TestClient(create_app(config)) as client:
        shutil.rmtree(config.root / "results")
        os.mkfifo(config.root / "results")
        response = client.post("/api/jobs", files=files())
        assert response.status_code == 503 and "is a FIFO (a named pipe))" in response.json()["detail"]


# ------------------------------------------------------------------ a jobs file's outputs

@pytest.mark.parametrize("output, says", [("~/x.png", "outside --out"), ("$HOME/x.png", "outside --out"),
                                          ("", "output is empty"), ("x.txt", "unknown image suffix"),
                                          ("sub/", "is a folder")])
def test_a_jobs_files_odd_output_is_one_line_with_its_line_number(tmp_path, monkeypatch, capsys, output, says):
    """`"output": "~/x.png"` wrote OUT/~/x.png (a folder named ~), `"output": ""` took the default name, and
    `"output": "x.txt"` failed only after the job's whole run (D5, m1)."""
    _pictures(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", "output": output}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40", "--iters", "1")
    line = one_error_line(code, err)
    assert "line 1" in line and says in line
    assert not (tmp_path / "out" / "~").exists() and not (tmp_path / "out" / "$HOME").exists()


def test_a_fifo_where_a_folder_belongs_is_called_a_fifo(tmp_path):
    """"exists and is not a folder (it is a FIFO (a named pipe), not a regular file)" (m3)."""
    from styleengine import paths
    from styleengine.errors import ConfigError

    os.mkfifo(tmp_path / "fo")
    with pytest.raises(ConfigError) as caught:
        paths.check_folder(tmp_path / "fo", "--out")
    assert str(caught.value).endswith("(it is a FIFO (a named pipe))")


def test_a_failed_jobs_reason_does_not_spell_out_the_servers_folder(tmp_path, monkeypatch):
    """A job's reason in GET /api/jobs/ID showed the server's paths ("cannot write /srv/results/ID.png: No space
    left on device"), while the upload's 507 hid them (m4). The manifest keeps the whole line."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient
    from serve_helpers import SETTINGS, files, wait_for

    from styleengine.engine.batch import MANIFEST, Manifest
    from styleengine.errors import ImageError
    from styleengine.serve import jobs as jobs_module
    from styleengine.serve.app import Config, create_app

    def full(image, path, within=None, **kwargs):
        raise ImageError(f"cannot write {path}: [Errno 28] No space left on device")

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv")
    with TestClient(create_app(config)) as client:
        monkeypatch.setattr(jobs_module.batch.images, "save_image", full)
        job = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
    assert job["status"] == "failed" and "No space left" in job["reason"]
    assert str(tmp_path) not in job["reason"] and "<server folder>" in job["reason"]
    (line,) = Manifest(config.root / "results" / MANIFEST).read()[0]
    assert str(tmp_path) in line["reason"]
