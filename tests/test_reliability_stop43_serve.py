"""Issue 23, stop 43: probe 40b's serve findings (on f5d181a)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from styleengine.engine.batch import LOCK_FILE  # noqa: E402
from styleengine.serve.jobs import FolderBusy, JobStore, ServerFolderGone  # noqa: E402


def test_a_results_folder_made_again_is_locked_again(tmp_path):
    """`mv D/results D/results.old` while a server ran: it made results/ again at its next job with no lock in it,
    so a second server started on D, appended to the same manifest and swept the first one's uploads of running
    jobs (probes 40b, 2 and 41a, 3). The server's own lock is in D; the results/ it makes again is locked again,
    and one found in its place (the user's, a batch's: probe 41a, 8) is not taken; the lock left in the moved
    folder goes with it."""
    from styleengine.engine import manifest

    first = JobStore(tmp_path / "D")
    try:
        upload = tmp_path / "D" / "uploads" / "0123456789abcdef01234567"
        upload.mkdir()
        (upload / "content").write_bytes(b"a running job's upload")
        (tmp_path / "D" / "results").rename(tmp_path / "D" / "results.old")
        with pytest.raises(FolderBusy, match="another server is running on .*D \\(it holds .*\\.serve\\.lock\\)"):
            JobStore(tmp_path / "D")  # before the first made results/ again
        assert (upload / "content").is_file()
        first.own_folder(first.results)  # what a job's submission and its record do first
        assert (tmp_path / "D" / "results" / LOCK_FILE).is_file()
        assert not (tmp_path / "D" / "results.old" / LOCK_FILE).exists()
        (tmp_path / "D" / "results").rename(tmp_path / "D" / "results.2")
        (tmp_path / "D" / "results").mkdir()  # the user's, or a batch's (probe 41a, 8): never the server's
        (tmp_path / "D" / "results" / "mine.txt").write_text("the user's")
        with manifest.locked(tmp_path / "D" / "results"):
            with pytest.raises(ServerFolderGone, match="was replaced while the server ran by a folder it did not "
                                                       "make"):
                first.own_folder(first.results)
        with pytest.raises(ServerFolderGone, match="was replaced while the server ran by a folder it did not make"):
            first.own_folder(first.results)
    finally:
        first.close()
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["results", "results.2", "results.old", "uploads"]
    assert not any((tmp_path / "D" / name / LOCK_FILE).exists() for name in ("results", "results.2", "results.old"))
    assert [p.name for p in (tmp_path / "D" / "results").iterdir()] == ["mine.txt"]


def test_a_coarse_to_fine_jobs_iterations_are_its_total(tmp_path):
    """A job run over scales said "iteration 40 of 20" (the first scale's count) and the page's bar was full when
    the first scale ended (probe 40b, 6): `iterations` is the total over its scales."""
    import dataclasses

    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, wait_for
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, wait_for
    from styleengine.serve.app import Config, create_app

    settings = dataclasses.replace(SETTINGS, size=64, iterations=4, scales=2, start_size=40).resolved()
    assert settings.total_iterations() > settings.iterations
    config = Config(settings=settings, root=tmp_path / "srv")
    with TestClient(create_app(config)) as client:
        job_id = client.post("/api/jobs", files=files()).json()["id"]
        job = wait_for(client, job_id)
    assert job["status"] == "done", job
    assert job["iteration"] == job["iterations"] == settings.total_iterations(), job


def test_a_restored_coarse_to_fine_job_keeps_its_total(tmp_path):
    """A coarse-to-fine job stopped mid-run read "37 / 45" and, after a restart, "37 / 37", its bar full: the line
    held only the count run (probe 41a, 7). It holds the job's total over its scales too."""
    import dataclasses

    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, wait_for
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, wait_for
    from styleengine.serve.app import Config, create_app

    settings = dataclasses.replace(SETTINGS, size=64, iterations=100_000, scales=2, start_size=40).resolved()
    config = Config(settings=settings, root=tmp_path / "srv", max_iters=200_000)
    with TestClient(create_app(config)) as client:
        job_id = client.post("/api/jobs", files=files()).json()["id"]
        wait_for(client, job_id, ("running",))
        client.delete(f"/api/jobs/{job_id}")
        stopped = wait_for(client, job_id)
    with TestClient(create_app(config)) as client:
        restored = client.get(f"/api/jobs/{job_id}").json()
    assert stopped["iterations"] == restored["iterations"] == settings.total_iterations(), (stopped, restored)
    assert restored["iteration"] < restored["iterations"]


def test_a_servers_lock_file_removed_by_hand_is_taken_again(tmp_path):
    """`rm D/results/.batch.lock` under a running server: every later job was refused, "was replaced while the
    server ran by a folder it did not make; put its own back" (its own folder; probe 42a, 2). It is its own folder:
    the lock is taken again."""
    store = JobStore(tmp_path / "D")
    try:
        (tmp_path / "D" / "results" / LOCK_FILE).unlink()
        store.own_folder(store.results)
        assert (tmp_path / "D" / "results" / LOCK_FILE).is_file() and store.manifest.at_home()
    finally:
        store.close()
    assert not (tmp_path / "D" / "results" / LOCK_FILE).exists()


@pytest.mark.parametrize("data", [b"USER DATA", b"\n" * 70 + b"my notes", b"batch" + b" " * 70 + b"my notes"])
@pytest.mark.parametrize("name", [".serve.lock", f"results/{LOCK_FILE}"])
def test_a_users_file_named_as_a_lock_is_neither_written_nor_removed(tmp_path, name, data):
    """A user's file named `.serve.lock` in the server's folder was taken as its lock and removed at the stop
    (probe 42a, 3); so was one whose first 64 bytes are blank or a holder's name (probe 43a, 1). A lock file holding
    other data is refused in one line and left as it is."""
    from styleengine.errors import UserError

    mine = tmp_path / "D" / name
    mine.parent.mkdir(parents=True)
    mine.write_bytes(data)
    with pytest.raises(UserError, match="is a file of other data, not a lock; move it away"):
        JobStore(tmp_path / "D")
    assert mine.read_bytes() == data
    assert not (tmp_path / "D" / "uploads").exists()


def test_a_batchs_jobs_in_a_servers_folder_stay_done_after_a_rerun_skipped_them(tmp_path, monkeypatch, capsys):
    """A batch's `--out D/results` run twice (the second: `skipped` lines), then a server on D: it showed the jobs as
    "failed" with no reason and no result, and their distances as None (a batch's line says "style", the server's
    own "style_distance"; probe 42a, 6)."""
    import json

    try:
        from test_cli import run_cli
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_probe13 import FAST, _pictures

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "p1.png"}) + "\n")
    for _ in range(2):
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "D" / "results",
                               *FAST)
        assert code == 0, err
    store = JobStore(tmp_path / "D")
    try:
        job = store.jobs["p1"]
        assert job.status == "done" and job.distances["style"] is not None, job
    finally:
        store.close()
