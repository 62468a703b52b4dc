"""Issue 23, stop 44: probe 43a's serve finding left open (on c99ac9c)."""
from __future__ import annotations

import contextlib
import logging
import time

import pytest

pytest.importorskip("fastapi")

from styleengine.engine import manifest  # noqa: E402
from styleengine.engine.batch import LOCK_FILE  # noqa: E402

try:
    from serve_helpers import SETTINGS, files, wait_for
except ModuleNotFoundError:
    from tests.serve_helpers import SETTINGS, files, wait_for


def test_a_job_whose_results_a_batch_took_meanwhile_keeps_its_picture(tmp_path, monkeypatch):
    """`rm D/results/.batch.lock` under a running server, then `batch --out D/results`: the server's running job
    went on to its end, then failed with "another batch is running ...; wait for it to finish", its finished
    picture kept nowhere (probe 43a, 4). Its picture is saved aside in the server's folder, the client is told to
    submit it again; a job queued meanwhile fails before any work; once the batch ends the server takes its folder
    back."""
    from fastapi.testclient import TestClient

    from styleengine.serve import jobs
    from styleengine.serve.app import Config, create_app

    results = tmp_path / "D" / "results"
    batch: contextlib.ExitStack = contextlib.ExitStack()
    runs: list[int] = []
    real = jobs.stylise_batch

    def stylise_batch(pictures, **kwargs):
        runs.append(len(pictures))
        if len(runs) == 1:  # while the first job runs: the lock file removed by hand, a batch takes the folder
            (results / LOCK_FILE).unlink()
            batch.enter_context(manifest.locked(results))
        return real(pictures, **kwargs)

    monkeypatch.setattr(jobs, "stylise_batch", stylise_batch)
    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "D")
    with TestClient(create_app(config)) as client:
        first = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
        assert first["status"] == "failed", first
        assert "lost its lock while the server ran, and another batch is running on <server folder>/results" in \
            first["reason"], first
        assert "its picture was saved aside on the server as " in first["reason"], first
        assert first["reason"].endswith("; submit it again once the server's folder is its own again"), first
        assert "wait for it to finish" not in first["reason"], first
        assert first["iteration"] == first["iterations"], first
        kept = list((tmp_path / "D").glob(f"{first['id']}-rescued-*.png"))
        assert len(kept) == 1 and kept[0].stat().st_size > 0, list((tmp_path / "D").iterdir())

        refused = client.post("/api/jobs", files=files())  # while the batch holds it: refused at once
        assert refused.status_code == 503, refused.text
        assert "another batch is running on <server folder>/results" in refused.json()["detail"], refused.text
        assert "the server records no job there until that one ends" in refused.json()["detail"], refused.text
        assert str(tmp_path) not in refused.text
        assert runs == [1], runs

        batch.close()  # the batch ends, its lock with it: the server's folder is its own again
        third = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
        assert third["status"] == "done", third
        assert (results / f"{third['id']}.png").is_file()
    assert not (results / LOCK_FILE).exists()
    # its line was written once the folder was the server's again: a restart says why it failed, not "killed"
    with TestClient(create_app(config)) as client:
        again = client.get(f"/api/jobs/{first['id']}").json()
    assert again["status"] == "failed" and again["iteration"] == first["iteration"], again
    assert f"saved aside on the server as {kept[0].name}" in again["reason"] and "killed" not in again["reason"]
    assert not (tmp_path / "D" / "uploads" / first["id"]).exists()


def test_a_queued_job_whose_results_were_taken_fails_before_its_run(tmp_path, monkeypatch):
    """A job queued before results/ was taken by a batch ran all its iterations and then failed: it fails at its
    turn, with no work done."""
    from styleengine.serve import jobs
    from styleengine.serve.job import Job

    ran: list[int] = []
    monkeypatch.setattr(jobs, "stylise_batch", lambda pictures, **kwargs: ran.append(len(pictures)))
    store = jobs.JobStore(tmp_path / "D", batch_wait_s=0.0)
    try:
        (store.results / LOCK_FILE).unlink()
        with manifest.locked(store.results):
            job = Job("0123456789abcdef01234567", settings=SETTINGS.resolved())
            store._run([job])
        assert ran == []
        assert job.status == "failed" and "another batch is running on" in job.reason, job.reason
        assert "submit it again once the server's folder is its own again" in job.reason, job.reason
    finally:
        store.close()


def _wait(until, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    return until()


def test_both_lock_files_removed_by_hand_are_taken_again_before_a_second_server(tmp_path, caplog):
    """`rm D/.serve.lock D/results/.batch.lock` under a running server: nothing took `.serve.lock` again, so a
    second server started on D, swept the first one's uploads of running jobs and called its running job killed
    (probe 43a, 2). Both are taken again within a second, with no job or request: the second server is refused."""
    from styleengine import paths
    from styleengine.serve.jobs import LOCK_WATCH_S, SERVER_LOCK, FolderBusy, JobStore

    first = JobStore(tmp_path / "D")
    try:
        upload = tmp_path / "D" / "uploads" / "0123456789abcdef01234567"
        upload.mkdir()
        (upload / "content").write_bytes(b"a running job's upload")
        (tmp_path / "D" / SERVER_LOCK).unlink()
        (tmp_path / "D" / "results" / LOCK_FILE).unlink()
        assert _wait(lambda: (tmp_path / "D" / SERVER_LOCK).is_file() and first.manifest.at_home(),
                     timeout=10 * LOCK_WATCH_S)
        with pytest.raises(FolderBusy, match="another server is running on"):
            JobStore(tmp_path / "D")
        assert (upload / "content").is_file()

        with caplog.at_level(logging.ERROR, logger="styleengine.serve.jobs"):
            with first._relocking:  # removed, and another server takes it before the watch looks: said once
                (tmp_path / "D" / SERVER_LOCK).unlink()
                other = manifest.take_lock(tmp_path / "D", "server", "--results-dir", SERVER_LOCK)
            try:
                assert _wait(lambda: any("stop one of the two" in r.message for r in caplog.records))
                time.sleep(3 * LOCK_WATCH_S)
                said = [r.message for r in caplog.records if "stop one of the two" in r.message]
                assert len(said) == 1, said
                assert "was removed while the server ran, and another server is running on" in said[0]
            finally:
                paths.release_lock(other, tmp_path / "D" / SERVER_LOCK)
        assert _wait(lambda: (tmp_path / "D" / SERVER_LOCK).is_file(), timeout=10 * LOCK_WATCH_S)  # the first's again
    finally:
        first.close()
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["results", "uploads"]


@pytest.mark.parametrize("case", ["serve.lock of other data", "results lock a link", "replica a file"])
def test_serve_ray_over_a_replica_folder_it_cannot_take_is_one_line_before_ray(tmp_path, monkeypatch, capsys, case):
    """`serve --ray` over `D/replica-0/.serve.lock` holding a user's text: some 300 lines of Ray's tracebacks after
    33 s, the replica refused as it started (probe 44a, 6). Checked before Ray starts: one line, the file kept."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    try:
        from test_cli import run_cli
    except ModuleNotFoundError:
        from tests.test_cli import run_cli

    def init(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", init)
    replica = tmp_path / "D" / "replica-0"
    if case == "replica a file":
        replica.parent.mkdir()
        replica.write_text("mine")
    else:
        (replica / "results").mkdir(parents=True)
        if case == "serve.lock of other data":
            (replica / ".serve.lock").write_text("hello")
        else:
            (replica / "results" / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    code, out, err = run_cli(monkeypatch, capsys, "serve", "--ray", "auto", "--results-dir", tmp_path / "D",
                             "--weights", "random", "--device", "cpu")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    said = {"serve.lock of other data": "is a file of other data, not a lock; move it away",
            "results lock a link": "is a symbolic link; remove it", "replica a file": "is not a replica's folder"}
    assert said[case] in lines[0], lines
    if case == "serve.lock of other data":
        assert (replica / ".serve.lock").read_text() == "hello"


def test_replica_folders_a_smaller_server_does_not_serve_are_named(tmp_path):
    """`serve --ray --replicas 2`, then again with 1: the second replica's finished jobs were 404 with no word
    (probe 44a, 5). The start names the folders and the --replicas that serves them."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from styleengine.engine.batch import Manifest
    from styleengine.serve.ray_app import unserved

    for slot, jobs in ((0, 4), (1, 2), (2, 0), (10, 1)):
        results = tmp_path / f"replica-{slot}" / "results"
        results.mkdir(parents=True)
        for n in range(jobs):
            Manifest(results / "manifest.jsonl").append({"id": f"{slot}-{n}", "status": "ok", "settings_hash": "h"})
    assert [(p.name, n) for p, n in unserved(tmp_path, 1)] == [("replica-1", 2), ("replica-10", 1)]
    assert unserved(tmp_path, 11) == []


def test_a_server_stopped_while_a_batch_holds_results_names_the_picture_after_a_restart(tmp_path, monkeypatch):
    """Stopped while the batch still held results/, the server could not write the failed job's line, and the
    restart said "the server was killed ... 0 iterations" of a job that had finished, its picture saved aside and
    named nowhere (probe 45a, 2). The restart names it."""
    from fastapi.testclient import TestClient

    from styleengine.serve import jobs
    from styleengine.serve.app import Config, create_app

    results = tmp_path / "D" / "results"
    real = jobs.stylise_batch
    held = contextlib.ExitStack()

    def stylise_batch(pictures, **kwargs):
        (results / LOCK_FILE).unlink()
        held.enter_context(manifest.locked(results))
        return real(pictures, **kwargs)

    monkeypatch.setattr(jobs, "stylise_batch", stylise_batch)
    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "D")
    with held:
        with TestClient(create_app(config)) as client:
            first = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
        assert first["status"] == "failed", first
    (kept,) = (tmp_path / "D").glob(f"{first['id']}-rescued-*.png")
    with TestClient(create_app(config)) as client:
        again = client.get(f"/api/jobs/{first['id']}").json()
    assert again["status"] == "failed" and f"saved aside on the server as {kept.name}" in again["reason"], again
    assert "killed" not in again["reason"], again


def test_a_job_whose_picture_and_line_a_full_results_refused_keeps_its_picture(tmp_path, monkeypatch):
    """results/ full (a disk of its own): the finished picture was lost and the client told "nor could a copy be
    saved", though none was tried and the server's folder had room (probe 46a, 9). It is saved aside there."""
    from fastapi.testclient import TestClient

    from styleengine.engine import batch
    from styleengine.errors import ImageError, UserError
    from styleengine.serve.app import Config, create_app

    results = tmp_path / "D" / "results"
    real = batch.images.save_image

    def save_image(image, path, *args, **kwargs):
        if str(path).startswith(str(results)):
            raise ImageError(f"cannot write {path}: No space left on device")
        return real(image, path, *args, **kwargs)

    def append(self, entry):
        raise UserError(f"cannot write the manifest {self.path}: No space left on device")

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "D")
    with TestClient(create_app(config)) as client:
        monkeypatch.setattr(batch.images, "save_image", save_image)
        monkeypatch.setattr(batch.Manifest, "append", append)
        job = wait_for(client, client.post("/api/jobs", files=files()).json()["id"])
        monkeypatch.undo()
    assert job["status"] == "failed" and "nor could a copy" not in job["reason"], job
    (kept,) = (tmp_path / "D").glob(f"{job['id']}-rescued-*.png")
    assert f"its picture was saved aside on the server as {kept.name}" in job["reason"], job
    with TestClient(create_app(config)) as client:
        again = client.get(f"/api/jobs/{job['id']}").json()
    assert f"saved aside on the server as {kept.name}" in again["reason"] and "killed" not in again["reason"], again
