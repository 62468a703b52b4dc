"""Issue 23, stop 43: probe 40b's serve findings (on f5d181a)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from styleengine.engine.batch import LOCK_FILE  # noqa: E402
from styleengine.serve.jobs import FolderBusy, JobStore, ServerFolderGone  # noqa: E402


def test_a_results_folder_made_again_is_locked_again(tmp_path):
    """`mv D/results D/results.old` while a server ran: it made results/ again at its next job with no lock in it,
    so a second server started on D, appended to the same manifest and swept the first one's uploads in flight
    (probe 40b, 2). The folder made again is locked again; where another took it first, nothing is recorded
    there. The lock file left in the moved folder goes with the old lock."""
    first = JobStore(tmp_path / "D")
    second = None
    try:
        (tmp_path / "D" / "results").rename(tmp_path / "D" / "results.old")
        first.own_folder(first.results)  # what a job's submission and its record do first
        assert (tmp_path / "D" / "results" / LOCK_FILE).is_file()
        assert not (tmp_path / "D" / "results.old" / LOCK_FILE).exists()
        with pytest.raises(FolderBusy, match="another server is running on"):
            second = JobStore(tmp_path / "D")
        (tmp_path / "D" / "results").rename(tmp_path / "D" / "results.2")
        second = JobStore(tmp_path / "D")  # started while the first had not made it again
        with pytest.raises(ServerFolderGone, match="was moved or removed while the server ran, and another server "
                                                   "is running on"):
            first.own_folder(first.results)
    finally:
        first.close()
        if second is not None:
            second.close()
    assert not (tmp_path / "D" / "results" / LOCK_FILE).exists()


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
