"""Issue 23, stop 42: probe 35b's serve findings (on e476fb8): the start's sweep, a job's line on a full disk, the
folder lock's words."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from serve_helpers import SETTINGS, files, wait_for
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.serve_helpers import SETTINGS, files, wait_for
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures

from styleengine.engine import manifest as manifest_module  # noqa: E402
from styleengine.engine.batch import LOCK_FILE, MANIFEST  # noqa: E402
from styleengine.errors import UserError  # noqa: E402
from styleengine.serve.app import Config, create_app  # noqa: E402
from styleengine.serve.job import new_id  # noqa: E402
from styleengine.serve.jobs import FolderBusy, JobStore  # noqa: E402


def _batch(monkeypatch, capsys, folder, out, output: str) -> None:
    """`batch --out OUT` of one job (id holiday) whose output has a job id's name."""
    (folder / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": output,
                                                   "id": "holiday"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST)
    assert code == 0, err


def test_the_start_sweep_leaves_other_commands_files_with_a_jobs_name(tmp_path, monkeypatch, capsys, caplog):
    """serve's start removed results/<24 hex>.png that a batch's manifest line records (under "file", its id
    another) and a whole batch --out uploads/<24 hex>/ (its manifest and picture), as a killed server's leftovers:
    the names were matched against a job's id only (probe 35b). Only what the server made goes: a job's upload
    folder (its upload files only) and the picture of such a job with no line; what any line records stays."""
    _pictures(tmp_path)
    root = tmp_path / "D"
    batch_picture, batch_folder = "0123456789abcdef01234567.png", root / "uploads" / "abcdefabcdefabcdefabcdef"
    _batch(monkeypatch, capsys, tmp_path, root / "results", batch_picture)
    _batch(monkeypatch, capsys, tmp_path, batch_folder, batch_picture)
    made = root / "results" / f"{new_id()}.png"  # `run -o D/results/<24 hex>.png`: no line, no job's uploads
    Image.new("RGB", (8, 8)).save(made)
    killed = new_id()  # a server killed between its PNG and its line: the job's uploads are still there
    (root / "uploads" / killed).mkdir()
    for name in ("content", "style1", "style2"):
        (root / "uploads" / killed / name).write_bytes(b"an upload")
    Image.new("RGB", (8, 8)).save(root / "results" / f"{killed}.png")
    empty = new_id()  # killed as it made the folder
    (root / "uploads" / empty).mkdir()
    before = {p: p.read_bytes() for p in [root / "results" / batch_picture, made, *batch_folder.rglob("*")]
              if p.is_file()}
    caplog.set_level(logging.INFO, logger="styleengine.serve.jobs")
    store = JobStore(root)
    try:
        for job_id in (killed, empty):
            job = store.jobs[job_id].to_json()
            assert job["status"] == "failed" and "server was killed" in job["reason"], job
        assert batch_picture.removesuffix(".png") not in store.jobs and made.stem not in store.jobs
    finally:
        store.close()
    assert {p: p.read_bytes() for p in before if p.is_file()} == before
    assert not (root / "results" / f"{killed}.png").exists()
    assert sorted(p.name for p in (root / "uploads").iterdir()) == [batch_folder.name]
    said = caplog.text
    assert f"removing {root / 'results' / batch_picture}" not in said and f"{batch_folder} is not a job's" in said
    assert f"{made} is no result of this server's jobs" in said and f"removing {root / 'results' / killed}.png" in said


def _full(monkeypatch) -> None:
    """Every manifest line refused as a full disk refuses it."""
    def append(self, entry):
        raise UserError(f"cannot write the manifest {self.path}: No space left on device")

    monkeypatch.setattr(manifest_module.Manifest, "append", append)


@pytest.mark.parametrize("how", ["finished", "stopped"])
def test_a_job_whose_line_cannot_be_written_is_failed_after_a_restart(tmp_path, monkeypatch, how):
    """A full disk when a job's manifest line was written (the job done, or stopped by the server's stop): its
    uploads were removed all the same, and the restarted server answered 404 "no job" for it (probe 35b). Its
    uploads stay, and the next start's sweep records it as failed, as after a SIGKILL."""
    settings = dataclasses.replace(SETTINGS, iterations=3 if how == "finished" else 100_000).resolved()
    config = Config(settings=settings, root=tmp_path / "srv", max_iters=100_000)
    with TestClient(create_app(config)) as client:
        job_id = client.post("/api/jobs", files=files(), data={"keep": "true"}).json()["id"]
        if how == "finished":
            _full(monkeypatch)
            job = wait_for(client, job_id)
        else:
            wait_for(client, job_id, ("running",))
            _full(monkeypatch)  # the server's stop records it
    if how == "finished":
        assert job["status"] == "failed" and "No space left on device" in job["reason"], job
    assert (config.root / "uploads" / job_id).is_dir()
    monkeypatch.undo()
    for _ in range(2):  # the first restart records it; the next reads its line
        with TestClient(create_app(config)) as client:
            job = client.get(f"/api/jobs/{job_id}").json()
            assert job.get("status") == "failed" and "could not record the job" in job["reason"], job
    assert not any((config.root / "uploads").iterdir())
    assert not (config.root / "results" / f"{job_id}.png").exists()


def test_the_folder_lock_says_what_holds_it(tmp_path, monkeypatch, capsys):
    """`batch --out D/results` while a server held that folder said "another batch is running", and `serve
    --results-dir SV` while a batch ran on SV/results said "another server uses SV" (probe 35b). The lock file
    says what took it; one whose holder is not known says both."""
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png"}) + "\n")
    store = JobStore(tmp_path / "D")
    try:
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out",
                                 tmp_path / "D" / "results", *FAST)
        line = one_error_line(code, err)
        assert "another server is running on" in line and "stop it or use another --out" in line, line
    finally:
        store.close()
    (tmp_path / "SV" / "results").mkdir(parents=True)
    with manifest_module.locked(tmp_path / "SV" / "results"):
        with pytest.raises(FolderBusy, match="another batch is running on .*; wait for it to finish or use "
                                             "another --results-dir"):
            JobStore(tmp_path / "SV")
    (tmp_path / "SV" / "results" / LOCK_FILE).write_bytes(b"")
    with open(tmp_path / "SV" / "results" / LOCK_FILE, "rb") as held:  # a holder that has not said what it is
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FolderBusy, match="another batch or server is running on"):
            JobStore(tmp_path / "SV")
    assert not (tmp_path / "SV" / "results" / MANIFEST).exists()


def test_a_killed_jobs_uploads_stay_until_its_line_is_written(tmp_path, monkeypatch):
    """The start's sweep removed a killed job's uploads before its failed line was written: on a disk still full
    the line was lost with them, and the next start answered 404 for the job. They go once its line is written."""
    root = tmp_path / "srv"
    JobStore(root).close()
    job_id = new_id()
    (root / "uploads" / job_id).mkdir()
    (root / "uploads" / job_id / "content").write_bytes(b"an upload")
    _full(monkeypatch)
    store = JobStore(root)
    try:
        assert store.jobs[job_id].status == "failed"
    finally:
        store.close()
    assert (root / "uploads" / job_id / "content").is_file()
    monkeypatch.undo()
    for _ in range(2):  # the first start records it; the next reads its line
        store = JobStore(root)
        try:
            job = store.jobs[job_id].to_json()
            assert job["status"] == "failed" and "could not record the job" in job["reason"], job
        finally:
            store.close()
    assert not any((root / "uploads").iterdir())


def test_a_lock_left_by_a_killed_holder_or_linked_to_a_users_file(tmp_path, caplog):
    """The taker's name was written after NULs over a lock file a killed holder left ("another batch or server":
    it is opened to append), and into a user's file hard-linked at the lock's name (its text lost); a server
    refused by the lock made uploads/; the sweep said a link at a killed job's result name was "no result of this
    server's jobs" (probe 37)."""
    results = tmp_path / "D" / "results"
    results.mkdir(parents=True)
    (results / LOCK_FILE).write_bytes(b"server")  # what a server killed with SIGKILL leaves
    with manifest_module.locked(results):
        assert (results / LOCK_FILE).read_bytes() == b"batch"
        with pytest.raises(FolderBusy, match="another batch is running on"):
            JobStore(tmp_path / "D")
    assert not (tmp_path / "D" / "uploads").exists()  # refused: nothing made
    notes = tmp_path / "notes.txt"
    notes.write_text("the user's notes\n")
    (tmp_path / "L").mkdir()
    (tmp_path / "L" / LOCK_FILE).hardlink_to(notes)
    with pytest.raises(UserError, match="is a file of other data, not a lock"):  # stop 43: refused, not taken
        with manifest_module.locked(tmp_path / "L"):
            pass
    assert notes.read_text() == "the user's notes\n" and (tmp_path / "L" / LOCK_FILE).is_file()

    root = tmp_path / "S"
    JobStore(root).close()
    job_id = new_id()
    (root / "uploads" / job_id).mkdir()
    (root / "uploads" / job_id / "content").write_bytes(b"an upload")
    (root / "results" / f"{job_id}.png").symlink_to(tmp_path / "elsewhere.png")
    with caplog.at_level(logging.WARNING):
        JobStore(root).close()
    said = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
    assert said and all("is a symbolic link, not a result the server wrote" in s for s in said), said
    assert (root / "results" / f"{job_id}.png").is_symlink()
