"""Issue 23, stop 59: probe 59b's serve findings (on 589f682)."""
from __future__ import annotations

import json
import logging
import tempfile

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

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


def test_a_multipart_upload_cut_short_is_told_so_not_a_missing_field(tmp_path, caplog):
    """A multipart body without its closing boundary (a client or a proxy cut it) was a 422 "a job needs at least
    one style image (field style)" for a request that sent one (probe 59b, 3). It is a 400 saying the upload was
    cut short, nothing stored; a whole body still runs, and no boundary or a wrong one keeps its 400."""
    import httpx
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    sent = httpx.Request("POST", "http://x/api/jobs", files=files())
    body, kind = sent.read(), sent.headers["Content-Type"]
    boundary = kind.partition("boundary=")[2].encode()
    end = b"--" + boundary + b"--\r\n"
    assert body.endswith(end)
    style = body.rindex(b'name="style"')
    cuts = {"its closing '--' lost": body[:-4], "no closing boundary": body[:-len(end)],
            "cut inside the style part": body[:style + 200], "cut inside the content part": body[:style - 200]}
    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "D")
    caplog.set_level(logging.INFO)
    with TestClient(create_app(config)) as client:
        for case, cut in cuts.items():
            answer = client.post("/api/jobs", content=cut, headers={"Content-Type": kind})
            assert answer.status_code == 400, (case, answer.text)
            assert answer.json()["detail"] == "the upload is cut short (its multipart body has no closing " \
                                              "boundary)", (case, answer.text)
        assert client.get("/api/jobs").json() == []
        assert list((tmp_path / "D" / "uploads").iterdir()) == []
        plain = client.post("/api/jobs", content=body, headers={"Content-Type": "multipart/form-data"})
        other = client.post("/api/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert (plain.status_code, plain.json()["detail"]) == (400, "Missing boundary in multipart."), plain.text
        assert (other.status_code, other.json()["detail"]) == (400, "Invalid multipart data."), other.text
        whole = client.post("/api/jobs", content=body, headers={"Content-Type": kind})
        assert whole.status_code == 202, whole.text
        assert wait_for(client, whole.json()["id"])["status"] == "done"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


def test_a_picture_aside_in_a_temp_folder_python_fell_back_to_is_found_by_a_restart(tmp_path, monkeypatch):
    """$TMPDIR full at the rescue: Python's temp folder was /tmp, unsaid, and a restart with $TMPDIR usable again
    looked only there: the finished job was recorded for good as 'the server was killed' (probe 60b, 1). A
    picture is looked for in every folder a rescue may have used; a client sees its name wherever it lies (60b, 2)."""
    from styleengine.engine import images
    from styleengine.serve.jobs import JobStore

    fell_back, tmpdir = tmp_path / "fell_back", tmp_path / "tmpdir"
    fell_back.mkdir()
    tmpdir.mkdir()
    monkeypatch.setattr(images, "TEMP_FOLDERS", (str(fell_back),))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # the restart's: $TMPDIR usable again
    job_id = "0123456789abcdef01234567"
    kept = fell_back / f"{job_id}-rescued-x1y2.png"
    images.save_image(images.np.zeros((8, 8, 3), images.np.float32), kept)
    assert images.rescued_copies(tmp_path / "D" / "results" / f"{job_id}.png", [tmp_path / "D"]) == [kept]
    store = JobStore.__new__(JobStore)
    store.root, store.aside, store.own = tmp_path / "D", [tmp_path / "D"], []
    for where in (kept, tmp_path / "elsewhere" / kept.name):
        said = store.for_clients(f"saved aside on the server as {where}; submit it again")
        assert said == f"saved aside on the server as {kept.name}; submit it again", said


def test_an_upload_the_full_temp_folder_cannot_hold_is_a_507(tmp_path, monkeypatch, caplog):
    """A file part over 1 MB goes to the temp folder: full, it was a 500 and a 40-line traceback (probe 60b, 3)."""
    from starlette import formparsers
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    class Full(formparsers.SpooledTemporaryFile):  # type: ignore[misc]
        def rollover(self):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", lambda max_size=0: Full(max_size=max_size))
    caplog.set_level(logging.INFO)
    with TestClient(create_app(Config(settings=SETTINGS.resolved(), root=tmp_path / "D"))) as client:
        (_, (_, picture, _)), *styles = files()
        answer = client.post("/api/jobs", files=[("content", ("c.png", picture + b"\0" * (1 << 20), "image/png")),
                                                 *styles])
        assert answer.status_code == 507, answer.text
        assert answer.json()["detail"] == "the server cannot store the upload (No space left on device); try again " \
                                          "later"
    assert not [r for r in caplog.records if r.exc_info], caplog.text
