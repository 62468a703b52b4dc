"""`styleengine serve`'s API (serve/app.py, serve/jobs.py) through FastAPI's TestClient: jobs run and are
recorded in batch's manifest format, every bad request is a 4xx with one line, batching, cancelling, limits,
restarts, a failed write. Random VGG16 weights, 32-40 px pictures, a few iterations."""
from __future__ import annotations

import dataclasses
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import SETTINGS, files, png, wait_for  # noqa: E402

from styleengine.engine import images  # noqa: E402
from styleengine.engine.batch import MANIFEST, Manifest  # noqa: E402
from styleengine.engine.stylise import Picture, stylise_batch  # noqa: E402
from styleengine.errors import ImageError, UserError  # noqa: E402
from styleengine.serve import jobs as jobs_module  # noqa: E402
from styleengine.serve.app import Config, create_app  # noqa: E402
from styleengine.serve.jobs import Job, JobStore  # noqa: E402


@pytest.fixture
def config(tmp_path):
    return Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_upload_mb=2, max_size=256, max_iters=50)


@pytest.fixture
def client(config):
    with TestClient(create_app(config)) as c:
        yield c


def _submit(client, data=None, content=None, *styles):
    response = client.post("/api/jobs", files=files(content, *styles), data=data or {})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_job_runs_and_its_png_and_manifest_line_are_kept(client, config):
    job_id = _submit(client, {"iters": "3", "size": "40", "style_weight": "1e4", "preserve_colors": "yes"})
    job = wait_for(client, job_id)
    assert job["status"] == "done", job
    assert job["iteration"] == 3 and job["losses"]["loss"] > 0 and job["distances"]["style"] is not None
    assert 0 < job["loop_seconds"] <= job["seconds"]  # the iterations' share of the engine's time
    result = client.get(job["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(result.content)).size == (40, 32)  # long side 40, aspect of the 32x40 content
    entries, problems = Manifest(config.root / "results" / MANIFEST).read()
    assert not problems and [e["id"] for e in entries] == [job_id]
    assert entries[0]["status"] == "ok" and entries[0]["iterations"] == 3 and len(entries[0]["settings_hash"]) == 16
    assert not any((config.root / "uploads").iterdir())  # the uploads go once the job has run


def test_a_job_runs_under_a_recipe(client):
    job = wait_for(client, _submit(client, {"recipe": "neural-style-pt", "size": "40", "iters": "3"}))
    assert job["status"] == "done" and job["iterations"] == 3, job


def test_events_stream_status_and_previews_until_done(client):
    job_id = _submit(client, {"iters": "4"})
    kinds = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
            elif line.startswith("data: ") and kinds[-1] == "preview":
                assert json.loads(line[6:])["image"].startswith("data:image/png;base64,")
    # the final picture at least; the first iteration's too when the stream connected before it ran (a 4-iteration
    # 40 px job can finish first on a quiet machine; the browser test sees several on a longer job)
    assert kinds.count("preview") >= 1 and kinds[-1] in ("preview", "status")
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "done"


def test_progress_carries_the_distances_while_the_job_runs(client):
    job_id = _submit(client, {"iters": "20"})  # distances every 10 iterations
    seen = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {") and '"status"' in line:
                job = json.loads(line[6:])
                seen.append((job["status"], job["iteration"], job["distances"]))
    running = [(i, d) for status, i, d in seen if status == "running" and d is not None]
    assert running and all(i >= 10 for i, _ in running) and running[0][1]["style"] > 0


def _bomb() -> bytes:
    """A PNG whose header claims 30000x30000 px (900 megapixels) in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def _nan_tiff() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((40, 40), np.nan, dtype=np.float32), "F").save(out, format="TIFF")
    return out.getvalue()


BAD_REQUESTS = {
    "not an image": (dict(content=b"just text"), 422, "not an image"),
    "a bomb": (dict(content=_bomb()), 413, "pixels"),
    "NaN pixels": (dict(content=_nan_tiff()), 422, "NaN"),
    "a tiny image": (dict(content=png(8, 8)), 422, "at least 32 px"),
    "size 100000": (dict(data={"size": "100000"}), 422, "limit of 256 px"),
    "too many iterations": (dict(data={"iters": "51"}), 422, "limit of 50"),
    "negative weight": (dict(data={"style_weight": "-1"}), 422, "style_weight must be"),  # the field's name
    "a negative count": (dict(data={"iters": "-1"}), 422, "iters must be"),
    "negative blend": (dict(data={"style_blend": "-1"}), 422, "blend"),
    "not a number": (dict(data={"tv_weight": "lots"}), 422, "bad tv_weight"),
    "unknown field": (dict(data={"colour": "red"}), 422, "unknown field 'colour'"),
    "an unknown recipe": (dict(data={"recipe": "neural-style"}), 422, "recipe 'neural-style'"),
    "a recipe over the limits": (dict(data={"recipe": "neural-style-pt"}), 422,
                                 "limit of 256 px (with recipe neural-style-pt, its defaults stand"),
    "a recipe's weight past float32": (dict(data={"recipe": "neural-style-pt", "size": "40", "iters": "3",
                                                  "tv_weight": "3e38"}), 422, "tv_weight 3e+38 (in neural-style-pt"),
    "a path in init": (dict(data={"init": "/etc/passwd"}), 422, "cannot name a file"),
    "a relative path in init": (dict(data={"init": "../results/x.png"}), 422, "cannot name a file"),
    "the weights field": (dict(data={"weights": "/tmp/w.pth"}), 422, "unknown field 'weights'"),
    "no style": (dict(styles=()), 422, "style image"),
    "two content images": (dict(extra=[("content", ("c2.png", png(), "image/png"))]), 422, "one content image"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_a_4xx_with_one_line_and_the_server_goes_on(client, config, case):
    spec, status, words = BAD_REQUESTS[case]
    parts = files(spec.get("content"), *spec.get("styles", (png(40, 40, 1),)))
    if "styles" in spec:
        parts = parts[:1]
    response = client.post("/api/jobs", files=parts + spec.get("extra", []), data=spec.get("data", {}))
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    assert str(config.root) not in detail  # no server path in a reason
    assert client.get("/api/health").json()["status"] == "ok"
    assert not any((config.root / "uploads").iterdir())


def test_an_upload_over_the_limit_is_413_before_it_is_read(client):
    big = b"\0" * (3 * 2**20)  # the limit is 2 MB
    response = client.post("/api/jobs", files=files(big))
    assert response.status_code == 413 and "limit of 2 MB" in response.json()["detail"]


def test_unknown_and_cancelled_job_ids(client):
    for method, path in (("get", ""), ("get", "/result"), ("get", "/events"), ("delete", "")):
        response = getattr(client, method)(f"/api/jobs/0123456789abcdef01234567{path}")
        assert response.status_code == 404 and "no job" in response.json()["detail"]
    job_id = _submit(client, {"iters": "50"})
    assert client.delete(f"/api/jobs/{job_id}").status_code == 200
    job = wait_for(client, job_id)
    assert job["status"] == "cancelled" and job["iteration"] < 50
    again = client.delete(f"/api/jobs/{job_id}")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    result = client.get(f"/api/jobs/{job_id}/result")
    assert result.status_code == 409 and "cancelled" in result.json()["detail"]


def test_cancelling_a_running_job_stops_it_at_the_next_iteration(client):
    job_id = _submit(client, {"iters": "50"})
    wait_for(client, job_id, ("running",))
    while (running := client.get(f"/api/jobs/{job_id}").json())["iteration"] < 1:
        time.sleep(0.02)
    assert running["seconds"] == 0 and running["loop_seconds"] is None  # both once the job is over
    client.delete(f"/api/jobs/{job_id}")
    job = wait_for(client, job_id)
    assert job["status"] == "cancelled" and 1 <= job["iteration"] < 50
    # the engine is free again
    assert wait_for(client, _submit(client))["status"] == "done"


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    config = Config(settings=SETTINGS.resolved(), root=tmp_path, max_queue=1)
    with TestClient(create_app(config)) as client:
        first = _submit(client, {"iters": "50"})
        response = client.post("/api/jobs", files=files())
        assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
        assert "queue is full" in response.json()["detail"]
        wait_for(client, first, ("running",))
        client.delete(f"/api/jobs/{first}")
        # the slot is free at once, not at the batch's next iteration (probe 5: 429 right after a cancel)
        assert wait_for(client, _submit(client))["status"] == "done"


def test_results_survive_a_restart(config):
    with TestClient(create_app(config)) as client:
        done = _submit(client)
        wait_for(client, done)
        cancelled = _submit(client, {"iters": "50"})
        client.delete(f"/api/jobs/{cancelled}")
        wait_for(client, cancelled)
        first = client.get(f"/api/jobs/{done}/result").content
    with TestClient(create_app(config)) as client:
        job = client.get(f"/api/jobs/{done}").json()
        assert job["status"] == "done" and job["iteration"] == SETTINGS.iterations
        assert job["seconds"] > 0 and job["loop_seconds"] is None  # the manifest keeps no loop time
        assert client.get(f"/api/jobs/{done}/result").content == first
        assert client.get(f"/api/jobs/{cancelled}").json()["status"] == "cancelled"


def test_a_second_server_on_the_same_folder_is_refused(config):
    with TestClient(create_app(config)):
        with pytest.raises(UserError, match="another server"):
            JobStore(config.root)


def test_a_write_that_fails_fails_the_job_not_the_server(client, monkeypatch):
    def full(image, path, within=None, **kwargs):
        raise ImageError(f"cannot write {path}: [Errno 28] No space left on device")

    monkeypatch.setattr(jobs_module.batch.images, "save_image", full)
    job = wait_for(client, _submit(client))
    assert job["status"] == "failed" and "No space left on device" in job["reason"]
    monkeypatch.undo()
    assert wait_for(client, _submit(client))["status"] == "done"


def test_a_token_is_required_when_set(tmp_path):
    config = Config(settings=SETTINGS.resolved(), root=tmp_path, token="s3cret")
    with TestClient(create_app(config)) as client:
        assert client.get("/api/health").status_code == 200
        refused = client.post("/api/jobs", files=files())
        assert refused.status_code == 401 and "token" in refused.json()["detail"]
        assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.post("/api/jobs", files=files(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202
        assert client.get(f"/api/jobs/{ok.json()['id']}?token=s3cret").status_code == 200


def test_no_cors_unless_asked(tmp_path, config):
    with TestClient(create_app(config)) as client:
        assert "access-control-allow-origin" not in client.get("/api/health", headers={"Origin": "http://x.org"}).headers
    allowed = dataclasses.replace(config, root=tmp_path / "other", cors_origins=("http://x.org",))
    with TestClient(create_app(allowed)) as client:
        headers = client.get("/api/health", headers={"Origin": "http://x.org"}).headers
        assert headers["access-control-allow-origin"] == "http://x.org"


def test_the_page_and_the_openapi_document(client):
    page = client.get("/")
    assert page.status_code == 200 and "styleengine" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/result",
            "/api/health"} <= set(spec["paths"])
    fields = spec["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"content", "style", "size", "iters", "style_weight"} <= set(fields["properties"])


def _store_job(store: JobStore, content: np.ndarray, style: np.ndarray, settings) -> Job:
    return Job(jobs_module.new_id(), settings, content, [style])


def test_same_shape_jobs_run_as_one_batch_and_match_their_solo_runs(tmp_path):
    settings = SETTINGS.resolved()
    rng = np.random.default_rng(3)
    content = rng.random((32, 40, 3)).astype(np.float32)
    styles = [rng.random((40, 40, 3)).astype(np.float32) for _ in range(3)]
    store = JobStore(tmp_path, batch_wait_s=2.0)
    try:
        store_jobs = [_store_job(store, content, s, settings) for s in styles]
        for job in store_jobs:
            store.submit(job)
        for job in store_jobs:
            while not job.over:
                time.sleep(0.02)
        assert [j.status for j in store_jobs] == ["done"] * 3 and [j.batch for j in store_jobs] == [3] * 3
        assert store.started == 1
        assert all(0 < j.loop_seconds <= j.seconds for j in store_jobs)  # each its share of the batch's loop
        for job, style in zip(store_jobs, styles):  # no picture mixed up with another's
            solo, _ = stylise_batch([Picture(content, [style], settings)])[0]
            served = images.load_image(store.result_path(job.id))
            assert np.abs(served - solo).max() <= 1.5 / 255
    finally:
        store.close()


def test_finished_jobs_keep_a_bounded_number_of_previews(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs_module, "KEPT_PREVIEWS", 1)
    settings = SETTINGS.resolved()
    rng = np.random.default_rng(4)
    store = JobStore(tmp_path)
    try:
        done = []
        for _ in range(2):
            job = _store_job(store, rng.random((32, 40, 3)).astype(np.float32),
                             rng.random((40, 40, 3)).astype(np.float32), settings)
            store.submit(job)
            while not job.over:
                time.sleep(0.02)
            done.append(job)
        assert done[0].preview is None and done[1].preview is not None
        assert store.result_path(done[0].id).is_file()  # the picture itself stays on disk
    finally:
        store.close()


def test_serve_refuses_an_outside_address_without_a_token():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "STYLEENGINE_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "styleengine", "serve", "--host", "0.0.0.0", "--weights", "random"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: --host 0.0.0.0 is reachable from other machines: set --token "
                                                "or STYLEENGINE_TOKEN first"]


def test_the_default_folder_is_serve_in_the_cache_folder(isolated_cache, monkeypatch, tmp_path):
    from styleengine.serve.app import open_store

    monkeypatch.chdir(tmp_path)
    store = open_store(Config(settings=SETTINGS))
    try:
        assert store.root == isolated_cache / "serve" and (isolated_cache / "serve" / "results").is_dir()
        assert not any(tmp_path.iterdir())  # nothing in the working directory
    finally:
        store.close()


@pytest.mark.parametrize("iterations", [0, 2])
def test_a_job_whose_loss_went_non_finite_serves_its_last_finite_image(config, monkeypatch, iterations):
    """A job whose loss became non-finite kept no picture in serve, where run and batch write the last finite one
    (stop 37's known limit). It stays failed, says so, and its result is that image, across a restart too; a loss
    not finite at the first iteration has none."""
    from styleengine.engine import loop, stylise as stylise_module

    real = loop.Result

    def late(image, _, stopped, records, distances=None, **kwargs):
        return real(image, iterations, "non-finite loss", records[:iterations], distances, **kwargs)

    monkeypatch.setattr(stylise_module, "Result", late)
    monkeypatch.setattr(loop, "Result", late)
    with TestClient(create_app(config)) as client:
        job = wait_for(client, _submit(client))
        assert job["status"] == "failed", job
        result = client.get(f"/api/jobs/{job['id']}/result")
        if not iterations:
            assert job["reason"].startswith("the loss is not finite at the first iteration") and not job["result"], job
            assert result.status_code == 409 and not job["last_finite"]
            return
        assert job["reason"] == ("the loss became non-finite after 2 iterations; its last finite image is the job's "
                                 "result"), job
        assert job["last_finite"] and job["result"] == f"/api/jobs/{job['id']}/result"
        assert result.status_code == 200 and Image.open(io.BytesIO(result.content)).size == (40, 32)
    monkeypatch.undo()
    monkeypatch.chdir(config.root.parent)
    for root in (config.root, config.root.relative_to(config.root.parent)):  # a restart, its folder spelled either way
        with TestClient(create_app(dataclasses.replace(config, root=root))) as client:  # serves it again
            again = client.get(f"/api/jobs/{job['id']}").json()
            assert (again["status"], again["reason"], again["last_finite"]) == ("failed", job["reason"], True), again
            assert client.get(f"/api/jobs/{job['id']}/result").content == result.content
    (config.root / "results" / f"{job['id']}.png").unlink()
    with TestClient(create_app(config)) as client:  # its file removed: no result, and the reason says why
        gone = client.get(f"/api/jobs/{job['id']}").json()
        assert gone["result"] is None and not gone["last_finite"], gone
        assert gone["reason"] == ("the loss became non-finite after 2 iterations; its last finite image was the job's "
                                  "result, and that file is gone"), gone
        assert client.get(f"/api/jobs/{job['id']}/result").status_code == 409
