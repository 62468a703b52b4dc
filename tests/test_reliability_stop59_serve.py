"""Issue 23, stop 59: probe 59b's serve findings (on 589f682)."""
from __future__ import annotations

import json
import logging
import tempfile

import pytest

pytest.importorskip("fastapi")

try:
    from serve_helpers import SETTINGS, files, wait_for
except ModuleNotFoundError:
    from tests.serve_helpers import SETTINGS, files, wait_for


def _full_disk(monkeypatch, root, line: bool) -> None:
    """The server's folder on a disk full since the job began: its picture refused in results/ and aside in the
    server's folder (`rescue` goes on to the temp folder); `line`: the manifest takes its line all the same."""
    from styleengine.engine import batch, images
    from styleengine.errors import ImageError, UserError

    save_image, mkstemp = images.save_image, images.tempfile.mkstemp

    def refused(image, path, *args, **kwargs):
        if str(path).startswith(str(root)):
            raise ImageError(f"cannot write {path}: No space left on device")
        return save_image(image, path, *args, **kwargs)

    def full(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(root)):
            raise OSError(28, "No space left on device")
        return mkstemp(*args, dir=dir, **kwargs)

    def append(self, entry):
        raise UserError(f"cannot write the manifest {self.path}: No space left on device")

    monkeypatch.setattr(batch.images, "save_image", refused)
    monkeypatch.setattr(images.tempfile, "mkstemp", full)
    if not line:
        monkeypatch.setattr(batch.Manifest, "append", append)


@pytest.fixture
def temp_folder(tmp_path, monkeypatch):
    """The temp folder `rescue` falls back to, this test's own."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_picture_a_full_disk_sent_to_the_temp_folder_is_named_whole_and_found_after_a_restart(
        tmp_path, monkeypatch, caplog, temp_folder):
    """results/ and the server's folder on a full disk: the finished picture went to the temp folder, the log
    said only its name ("saved aside on the server as ID-rescued-x.png"), and the restart recorded the job as
    "the server was killed ... submit it again", the picture named nowhere (probe 59b, 1). The log names the whole
    path, the client its name only, and the restart finds it there and says it as saved aside."""
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    root = tmp_path / "D"
    config = Config(settings=SETTINGS.resolved(), root=root)
    caplog.set_level(logging.INFO, logger="styleengine.serve")
    with TestClient(create_app(config)) as client:
        with monkeypatch.context() as full:
            _full_disk(full, root, line=False)
            job = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
    (kept,) = temp_folder.glob(f"{job['id']}-rescued-*.png")
    assert not list(root.glob("*-rescued-*")), list(root.iterdir())
    assert job["status"] == "failed" and f"saved aside on the server as {kept.name}" in job["reason"], job
    assert str(temp_folder) not in json.dumps(job) and str(root) not in json.dumps(job), job
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"saved aside on the server as {kept}" in line for line in said), said

    caplog.clear()
    with TestClient(create_app(config)) as client:  # the disk freed, the server started again
        again = client.get(f"/api/jobs/{job['id']}").json()
    assert again["status"] == "failed" and "killed" not in again["reason"], again
    assert f"saved aside on the server as {kept.name}" in again["reason"], again
    assert str(temp_folder) not in json.dumps(again), again
    assert any(str(kept) in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    (line,) = [json.loads(x) for x in (root / "results" / "manifest.jsonl").read_text().splitlines()]
    assert line["id"] == job["id"] and str(kept) in line["reason"], line  # the operator's record: whole
    assert not (root / "uploads" / job["id"]).exists()


def test_a_picture_in_the_temp_folder_is_said_to_clients_by_its_name(tmp_path, monkeypatch, temp_folder):
    """results/ and the server's folder full, the manifest taking the line: the client was told "saved the image
    to /tmp/ID-rescued-x.png instead", the server's temp folder spelled out (probe 59b, 1). Its name only, as
    the restart tells it from the manifest's line, which keeps the whole path."""
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    root = tmp_path / "D"
    config = Config(settings=SETTINGS.resolved(), root=root)
    with TestClient(create_app(config)) as client:
        with monkeypatch.context() as full:
            _full_disk(full, root, line=True)
            job = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
    (kept,) = temp_folder.glob(f"{job['id']}-rescued-*.png")
    assert job["status"] == "failed" and kept.name in job["reason"], job
    assert str(temp_folder) not in json.dumps(job), job
    (line,) = [json.loads(x) for x in (root / "results" / "manifest.jsonl").read_text().splitlines()]
    assert str(kept) in line["reason"], line
    with TestClient(create_app(config)) as client:
        again = client.get(f"/api/jobs/{job['id']}").json()
    assert kept.name in again["reason"] and str(temp_folder) not in json.dumps(again), again

