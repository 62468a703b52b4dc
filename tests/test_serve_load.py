"""`styleengine serve` under load, on a real uvicorn on 127.0.0.1: 50 concurrent clients (64 px, 20 iterations),
a client that goes away mid-job, SIGTERM with a job in flight. Marked `load` (deselect with -m 'not load');
bounded in time and count."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import signal
import threading
import time

import httpx
import numpy as np
import psutil
import pytest

pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402
from serve_helpers import SETTINGS, files, png, serve_process, uvicorn_server, wait_for  # noqa: E402

from styleengine.engine.batch import MANIFEST, Manifest  # noqa: E402
from styleengine.serve.app import Config, create_app  # noqa: E402

pytestmark = pytest.mark.load

CLIENTS = 50
MAX_QUEUE = 2  # small: the excess is most of the 50, and the accepted ones finish quickly on two shared cores
HUES = np.linspace(0, 1, CLIENTS, endpoint=False)
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _solid(hue: float) -> bytes:
    """A 64x64 picture of one colour (with a little noise): its chroma tells its job's result from the others."""
    import colorsys

    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.8))
    noise = np.random.default_rng(int(hue * 1000)).normal(0, 0.03, (64, 64, 3))
    out = io.BytesIO()
    Image.fromarray((np.clip(rgb + noise, 0, 1) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _chroma(image: np.ndarray) -> np.ndarray:
    return (image.reshape(-1, 3) @ _YIQ.T)[:, 1:].mean(axis=0)


class _PeakRss:
    """The process's peak resident memory, sampled every 50 ms while it runs."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_fifty_concurrent_clients(tmp_path):
    settings = dataclasses.replace(SETTINGS, size=64, iterations=20).resolved()
    config = Config(settings=settings, root=tmp_path, max_queue=MAX_QUEUE)
    start = threading.Barrier(CLIENTS)

    def client(index: int, url: str) -> tuple[int, str | None, float]:
        with httpx.Client(base_url=url, timeout=300) as http:
            start.wait()
            response = http.post("/api/jobs", files=files(_solid(HUES[index]), png(64, 64, 7)),
                                 data={"preserve_colors": "true"})
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                return index, None, 0.0
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            job = wait_for(http, job_id, timeout=600)
            assert job["status"] == "done", job
            result = np.asarray(Image.open(io.BytesIO(http.get(job["result"]).content)).convert("RGB")) / 255.0
            # preserve_colors keeps the content's chroma: a result with another job's picture would show it
            own = _chroma(np.asarray(Image.open(io.BytesIO(_solid(HUES[index]))).convert("RGB")) / 255.0)
            return index, job_id, float(np.abs(_chroma(result) - own).max())

    began = time.monotonic()
    with _PeakRss() as memory, uvicorn_server(create_app(config)) as url:
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(lambda i: client(i, url), range(CLIENTS)))
    seconds = time.monotonic() - began
    accepted = [(i, job_id, error) for i, job_id, error in outcomes if job_id is not None]
    refused = CLIENTS - len(accepted)
    assert MAX_QUEUE <= len(accepted) < CLIENTS and refused > 0
    assert len({job_id for _, job_id, _ in accepted}) == len(accepted)
    assert max(error for _, _, error in accepted) < 0.02  # each result has its own picture's colours
    entries, problems = Manifest(tmp_path / "results" / MANIFEST).read()
    assert not problems
    assert sorted(e["id"] for e in entries) == sorted(job_id for _, job_id, _ in accepted)  # each once
    assert all(e["status"] == "ok" and e["iterations"] == 20 for e in entries)
    growth = (memory.peak - memory.start) / 2**20
    print(f"\n{CLIENTS} clients: {len(accepted)} accepted, {refused} refused (429) in {seconds:.1f} s; "
          f"batches of {sorted({e['batch'] for e in entries})}; peak RSS {memory.peak / 2**20:.0f} MiB "
          f"(+{growth:.0f} MiB)")
    assert growth < 1500  # bounded: the queue, not the clients, decides what is held


def test_a_client_that_goes_away_frees_its_slot(tmp_path):
    config = Config(settings=SETTINGS.resolved(), root=tmp_path, max_queue=1)
    with uvicorn_server(create_app(config)) as url, httpx.Client(base_url=url, timeout=60) as http:
        job_id = http.post("/api/jobs", files=files(), data={"iters": "500"}).json()["id"]
        with http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: status") :
                    break  # and the connection closes mid-job
        job = wait_for(http, job_id, timeout=60)
        assert job["status"] == "cancelled" and job["iteration"] < 500
        deadline = time.monotonic() + 60
        while http.get("/api/health").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        kept = http.post("/api/jobs", files=files(), data={"keep": "true"})
        assert kept.status_code == 202
        with http.stream("GET", f"/api/jobs/{kept.json()['id']}/events") as stream:
            next(stream.iter_lines())
        assert wait_for(http, kept.json()["id"])["status"] == "done"  # asked to be kept: runs to the end


def test_sigterm_records_the_job_in_flight(tmp_path):
    server, url = serve_process(tmp_path)
    try:
        job_id = httpx.post(url + "/api/jobs", files=files(), data={"iters": "500", "keep": "true"}).json()["id"]
        wait_for(httpx, job_id, ("running",), prefix=url)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    entries, _ = Manifest(tmp_path / "results" / MANIFEST).read()
    assert [e["id"] for e in entries] == [job_id]
    assert entries[0]["status"] == "failed" and "server stopped" in entries[0]["reason"]
