"""`styleengine serve --ray` (serve/ray_app.py) on a local Ray cluster (2 CPUs, 127.0.0.1, started once for this
module): two CPU replicas behind Ray Serve's HTTP proxy; two jobs submitted, both finish, their status, events
and PNGs are served whichever replica answers; a cancel reaches the replica that runs the job. Bounded: every
wait has a deadline (the module takes ~1-2 min on two shared cores)."""
from __future__ import annotations

import io
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from serve_helpers import SETTINGS, files, free_port, png, wait_for  # noqa: E402

from styleengine.serve.app import Config  # noqa: E402
from styleengine.serve.job import Job  # noqa: E402
from styleengine.serve.ray_app import NAMESPACE, JobBoard, RayJobStore, deploy  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE,
             _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()
    for s, handler in saved.items():  # ray.init installs a SIGTERM handler and leaves it
        signal.signal(s, handler)


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("ray-serve")
    port = free_port()
    config = Config(settings=SETTINGS.resolved(), root=root, max_size=256, max_iters=200)
    deployed = deploy(config, host="127.0.0.1", port=port, replicas=2)
    assert deployed.replicas == 2
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        deadline = time.monotonic() + 120
        while client.get("/api/health").status_code != 200:
            assert time.monotonic() < deadline, "the Serve application did not answer"
            time.sleep(0.2)
        yield client, root
    serve.shutdown()


def test_two_jobs_on_two_replicas_finish_and_are_found_from_either(served):
    client, root = served
    replicas = {client.get("/api/health").json()["replica"] for _ in range(40)}
    assert replicas == {"replica-0", "replica-1"}  # both replicas answer requests
    ids: list[str] = []

    def submit(seed: int) -> None:
        response = client.post("/api/jobs", files=files(png(32, 40, seed)), data={"iters": "4", "keep": "true"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in (3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 2
    for job_id in ids:
        assert wait_for(client, job_id, timeout=180)["status"] == "done"
        # whichever replica answers (Serve picks one per request): the same job, the same PNG
        for _ in range(10):
            job = client.get(f"/api/jobs/{job_id}").json()
            assert job["status"] == "done" and job["iteration"] == 4 and job["distances"]["style"] is not None
            result = client.get(f"/api/jobs/{job_id}/result")
            assert result.status_code == 200 and result.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(result.content)).size == (40, 32)
        kinds = []
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
        assert "status" in kinds and "preview" in kinds
    assert {j["id"] for j in client.get("/api/jobs").json()} >= set(ids)
    # each job's PNG and manifest line are in the folder of the replica that ran it
    assert sorted(p.stem for p in root.glob("replica-*/results/*.png")) == sorted(ids)


def test_a_cancel_reaches_the_replica_running_the_job(served):
    client, _ = served
    response = client.post("/api/jobs", files=files(png(32, 40, 5)), data={"iters": "200", "keep": "true"})
    job_id = response.json()["id"]
    wait_for(client, job_id, statuses=("running",), timeout=120)
    deadline = time.monotonic() + 120
    while client.get(f"/api/jobs/{job_id}").json()["status"] == "running":  # asked of either replica, repeated
        assert time.monotonic() < deadline, "the cancel did not reach the job's replica"
        if client.delete(f"/api/jobs/{job_id}").status_code not in (200, 409):
            raise AssertionError("DELETE failed")
        time.sleep(0.3)
    # whichever replica answers next: never an older state than the one seen (RayJobStore.lookup)
    for _ in range(10):
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["iteration"] < 200


def test_a_replica_answers_for_another_replicas_job_from_the_board(cluster, tmp_path):
    import asyncio

    board = ray.remote(num_cpus=0)(JobBoard).remote()  # its own board, not the served application's
    a = RayJobStore(tmp_path / "a", board, "a")
    b = RayJobStore(tmp_path / "b", board, "b")
    try:
        job = Job("0123456789abcdef01234567", None, status="done", iteration=3, iterations=3, keep=True)
        a.result_path(job.id).write_bytes(png())
        a.jobs[job.id] = job
        deadline = time.monotonic() + 30
        seen = None
        while seen is None:
            assert time.monotonic() < deadline, "the job never reached the board"
            seen = asyncio.run(b.lookup(job.id))
            time.sleep(0.05)
        assert seen.to_json() == job.to_json() and not b.owns(seen) and a.owns(job)
        assert b.result_file(seen) == a.result_path(job.id)
        assert asyncio.run(b.lookup("f" * 24)) is None
    finally:
        a.close()
        b.close()


def test_a_remote_jobs_unchanged_preview_is_sent_once(monkeypatch):
    """Each poll of another replica's job is a new snapshot (new bytes objects): a preview goes out when it
    changes, not with every status."""
    import asyncio

    from styleengine.serve import app as app_module

    monkeypatch.setattr(app_module, "EVENT_POLL_S", 0.0)
    polls = []

    class Store:
        draining = False

        def owns(self, job):
            return False

        async def lookup(self, job_id):
            polls.append(1)
            done = len(polls) >= 5
            return Job(job_id, None, status="done" if done else "running", iteration=len(polls),
                       preview=bytes(bytearray(b"png")), preview_iteration=1, version=len(polls))

    class Request:
        async def is_disconnected(self):
            return False

    async def events():
        first = await Store().lookup("a" * 24)
        return [chunk async for chunk in app_module._stream(first, Request(), Store())]

    chunks = asyncio.run(events())
    assert sum(c.startswith("event: status") for c in chunks) >= 4
    assert sum(c.startswith("event: preview") for c in chunks) == 1
