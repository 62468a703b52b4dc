"""Issue 23, probe 8 (on 2a401fb): state that outlives a process, and the server as a hostile client sees it. About
237 cases (215 held) on 48 px runs with random weights: client mistakes of every kind (all 4xx), restarts after
SIGTERM/SIGINT/SIGHUP/SIGKILL, damaged manifests and locks at start, two servers on one folder; the export cache,
tune.json, batch manifests and video's frames damaged in every way. Each defect it found is a test here."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import SETTINGS, files, serve_process, wait_for  # noqa: E402

from styleengine.engine.batch import MANIFEST, Manifest  # noqa: E402
from styleengine.errors import UserError  # noqa: E402
from styleengine.serve.app import Config, create_app  # noqa: E402
from styleengine.serve.jobs import JobStore, new_id  # noqa: E402


@pytest.fixture
def config(tmp_path):
    return Config(settings=SETTINGS.resolved(), root=tmp_path / "srv")


def _submit(client, data=None) -> str:
    response = client.post("/api/jobs", files=files(), data=data or {})
    assert response.status_code == 202, response.text
    return response.json()["id"]


# ------------------------------------------------------------------ the server's folders are its own

def test_a_linked_uploads_folder_is_refused_and_what_it_leads_to_untouched(tmp_path):
    """`ln -s ~/photos S/uploads`: the server's start removed every folder of ~/photos (D1)."""
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    (tmp_path / "srv" / "results").mkdir(parents=True)
    (tmp_path / "srv" / "uploads").symlink_to(photos)
    with pytest.raises(UserError, match="uploads is a symbolic link"):
        JobStore(tmp_path / "srv")
    assert (photos / "trip").is_dir()


def test_the_start_clears_only_the_servers_own_uploads_and_temp_files(tmp_path):
    """A real uploads/ lost every entry at start, not only the job folders the server made (D1); a FIFO there
    hung the start for ever (rmtree opened it; D3); half-written results stayed for ever (D13)."""
    uploads, results = tmp_path / "srv" / "uploads", tmp_path / "srv" / "results"
    (uploads / "trip").mkdir(parents=True)
    (uploads / new_id()).mkdir()
    os.mkfifo(uploads / "x")
    os.mkfifo(uploads / new_id())
    results.mkdir()
    (results / f".{new_id()}.png.0123abcd.tmp").write_bytes(b"half")
    (results / "notes.tmp").write_bytes(b"the user's")
    started: list[JobStore] = []
    thread = threading.Thread(target=lambda: started.append(JobStore(tmp_path / "srv")), daemon=True)
    thread.start()
    thread.join(60)
    assert started, "the server's start hung"
    started[0].close()
    kept = {p.name for p in uploads.iterdir()}
    assert "trip" in kept and "x" in kept and len(kept) == 3  # the id-named FIFO stays too: not a folder
    assert [p.name for p in results.iterdir() if p.suffix == ".tmp"] == ["notes.tmp"]


@pytest.mark.parametrize("how", ["symlink", "hard link", "fifo"])
def test_a_manifest_that_is_not_its_own_file_is_refused_at_start(tmp_path, how):
    """`ln -s ~/notes.txt S/results/manifest.jsonl`: every job appended a line to ~/notes.txt (D2); batch refuses
    it already. A FIFO said "File or stream is not seekable" (D13)."""
    results = tmp_path / "srv" / "results"
    results.mkdir(parents=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    if how == "symlink":
        (results / MANIFEST).symlink_to(notes)
    elif how == "hard link":
        os.link(notes, results / MANIFEST)
    else:
        os.mkfifo(results / MANIFEST)
    with pytest.raises(UserError, match="manifest must be a file|hard link"):
        JobStore(tmp_path / "srv")
    assert notes.read_text() == "mine\n"


# ------------------------------------------------------------------ restored lines are type-checked

@pytest.mark.parametrize("field, value", [("seconds", "abc"), ("iterations", "many"), ("reason", {"a": 1}),
                                          ("batch", 0), ("losses", [1, 2]), ("seconds", -1)])
def test_a_restored_line_of_wrong_types_is_skipped_not_a_500(config, field, value):
    """`"seconds": "abc"` in a manifest line made GET /api/jobs a 500 with a traceback; other wrong types were
    served as they were (D4)."""
    results = config.root / "results"
    results.mkdir(parents=True)
    bad = {"id": new_id(), "status": "ok", "settings_hash": "0123456789abcdef", field: value}
    (results / MANIFEST).write_text(json.dumps(bad) + "\n")
    with TestClient(create_app(config)) as client:
        listing = client.get("/api/jobs")
        assert listing.status_code == 200 and listing.json() == []
        assert client.get(f"/api/jobs/{bad['id']}").status_code == 404


# ------------------------------------------------------------------ the result route

@pytest.mark.parametrize("damage", ["removed", "a link out", "a folder"])
def test_a_result_file_gone_or_replaced_is_410_never_followed(config, tmp_path, damage):
    """`rm S/results/ID.png` while the server ran: 500; a folder there: 500; a link to /etc/passwd: served (D5)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    with TestClient(create_app(config)) as client:
        job_id = _submit(client)
        assert wait_for(client, job_id)["status"] == "done"
        path = config.root / "results" / f"{job_id}.png"
        path.unlink()
        if damage == "a link out":
            path.symlink_to(secret)
        elif damage == "a folder":
            path.mkdir()
        response = client.get(f"/api/jobs/{job_id}/result")
        assert response.status_code == 410 and "root:x" not in response.text
        assert job_id in response.json()["detail"]


# ------------------------------------------------------------------ the server's folders removed while it runs

@pytest.mark.parametrize("removed", ["uploads", "results"])
def test_a_servers_folder_removed_while_it_runs_is_made_again(config, removed):
    """`rm -r S/uploads` (or results) while the server ran: every POST a 500 with FileNotFoundError (D6)."""
    with TestClient(create_app(config)) as client:
        assert wait_for(client, _submit(client))["status"] == "done"
        shutil.rmtree(config.root / removed)
        job_id = _submit(client)
        assert wait_for(client, job_id)["status"] == "done"
        assert client.get(f"/api/jobs/{job_id}/result").status_code == 200


def test_a_servers_folder_replaced_by_a_link_is_503_not_followed(config, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with TestClient(create_app(config)) as client:
        shutil.rmtree(config.root / "uploads")
        (config.root / "uploads").symlink_to(elsewhere)
        response = client.post("/api/jobs", files=files())
        assert response.status_code == 503 and "no longer the server's folder" in response.json()["detail"]
    assert list(elsewhere.iterdir()) == []


def test_a_full_disk_while_storing_an_upload_is_507(config, monkeypatch):
    """A 300 KB tmpfs as --results-dir and a 360 KB upload: 500 with OSError ENOSPC (D7)."""
    from styleengine.serve import app as app_module

    def full(source, target, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with TestClient(create_app(config)) as client:
        monkeypatch.setattr(app_module.shutil, "copyfileobj", full)
        response = client.post("/api/jobs", files=files())
        assert response.status_code == 507 and "No space left" in response.json()["detail"]
        monkeypatch.undo()
        assert list((config.root / "uploads").iterdir()) == []  # the job's folder went with it
        assert wait_for(client, _submit(client))["status"] == "done"


# ------------------------------------------------------------------ watched jobs when the server stops

def test_jobs_watched_by_their_page_are_recorded_as_the_server_stopping_not_cancelled(tmp_path):
    """SIGTERM with event streams open (every job from the web page: EventSource, keep=false) recorded each job
    as cancelled, and uvicorn cancelled the streams with CancelledError tracebacks (D8)."""
    import httpx

    server, url = serve_process(tmp_path)
    streams: list[threading.Thread] = []
    try:
        ids = [httpx.post(url + "/api/jobs", files=files(), data={"iters": "500"}).json()["id"] for _ in range(2)]

        def watch(job_id: str) -> None:
            with contextlib.suppress(httpx.HTTPError):
                with httpx.stream("GET", f"{url}/api/jobs/{job_id}/events", timeout=60) as response:
                    for _ in response.iter_lines():
                        pass

        for job_id in ids:
            streams.append(threading.Thread(target=watch, args=(job_id,), daemon=True))
            streams[-1].start()
        wait_for(httpx, ids[0], ("running",), prefix=url)
        time.sleep(0.5)  # the streams are open
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    for stream in streams:
        stream.join(10)
    entries, _ = Manifest(tmp_path / "results" / MANIFEST).read()
    assert sorted(e["id"] for e in entries) == sorted(ids)
    assert all(e["status"] == "failed" and "server stopped" in e["reason"] for e in entries), entries
    assert "Traceback" not in output and "CancelledError" not in output, output


# ------------------------------------------------------------------ the export cache: FIFOs and links in it

def _within(action, seconds: float = 30.0):
    """action()'s result, or a failure if it has not returned in `seconds` (a FIFO's open blocks for ever)."""
    done: list = []
    failed: list = []

    def call() -> None:
        try:
            done.append(action())
        except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
            failed.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "it hung (a FIFO opened for reading?)"
    if failed:
        raise failed[0]
    return done[0]


@pytest.mark.parametrize("name", ["export.json", "files.json"])
def test_a_fifo_as_a_cache_record_is_damage_not_a_wait(tmp_path, name):
    """`mkfifo $C/exports/KEY/export.json`: `run --backend ort` hung for ever (D9); files.json likewise."""
    from styleengine.export import cache

    folder = tmp_path / "exports" / "KEY"
    folder.mkdir(parents=True)
    os.mkfifo(folder / name)
    if name == "export.json":
        assert _within(lambda: cache.check_entry(folder, None, None)) is None
    else:
        assert _within(lambda: cache.read_record(folder)) is None


@pytest.mark.parametrize("lock", ["fifo", "link out", "folder"])
def test_an_entry_lock_that_is_not_a_file_is_one_line(tmp_path, lock):
    """`.KEY.lock` as a FIFO hung, as a symbolic link made its target outside the cache, as a folder said
    "free some space" (D9, D13)."""
    from styleengine.export import cache

    parent = tmp_path / "exports"
    parent.mkdir()
    path = parent / ".KEY.lock"
    outside = tmp_path / "made-outside"
    if lock == "fifo":
        os.mkfifo(path)
    elif lock == "link out":
        path.symlink_to(outside)
    else:
        path.mkdir()

    def take() -> None:
        with cache.entry_lock(parent / "KEY"):
            pass

    with pytest.raises(cache.CacheWriteError, match="is not a lock file") as caught:
        _within(take)
    assert "free some space" not in str(caught.value) and not outside.exists()


def test_stale_staging_beside_fifos_is_cleared_without_a_wait(tmp_path):
    """A staging folder whose owner's lock is a FIFO, or a FIFO named as a staging folder: the clean-up opened
    them and hung (D9)."""
    from styleengine.export import cache

    parent = tmp_path / "exports"
    (parent / f"{cache.STAGING_PREFIX}zzz-1").mkdir(parents=True)
    os.mkfifo(parent / ".zzz.lock")
    os.mkfifo(parent / f"{cache.STAGING_PREFIX}yyy-2")
    _within(lambda: cache._remove_stale_staging(parent, "KEY"))
    assert not (parent / f"{cache.STAGING_PREFIX}yyy-2").exists()  # not a folder of ours: gone, never opened


# ------------------------------------------------------------------ video's frames folder

def test_a_video_record_nested_too_deep_is_damage_in_one_line(tmp_path):
    """`print('['*100000)` into OUT.frames/video.json: a RecursionError traceback at the rerun (D10)."""
    from styleengine.cli_video import FrameStore
    from styleengine.errors import ConfigError

    store = FrameStore(tmp_path / "out.mp4")
    store.folder.mkdir()
    (store.folder / FrameStore.RECORD).write_text("[" * 100000)
    with pytest.raises(ConfigError, match="damaged"):
        store.take()
        store.open("0123456789abcdef", {}, (48, 64))


def test_a_frame_of_another_size_is_moved_aside_not_encoded(tmp_path):
    """A 128x96 PNG saved as OUT.frames/frame_000002.png was encoded as frame 2, resized (D11). Since stop 41 a
    frame the video did not write is set aside before its size is looked at: a frame of its own of another size
    is damaged."""
    import numpy as np

    from PIL import Image

    from styleengine.cli_video import FrameStore

    store = FrameStore(tmp_path / "out.mp4")
    store.take()
    store.open("0123456789abcdef", {}, (48, 64))
    store.save(2, np.zeros((96, 128, 3), np.uint8))
    store.save(1, np.zeros((48, 64, 3), np.uint8))
    Image.new("RGB", (128, 96), (255, 0, 0)).save(store.path(3))
    assert store.load(1).shape == (48, 64, 3)
    # neither is encoded; since stop 43 each stays at its name until its frame is made again (probe 41a, 4)
    assert store.load(2) is None and store.load(3) is None
    store.save(2, np.zeros((48, 64, 3), np.uint8))
    store.save(3, np.zeros((48, 64, 3), np.uint8))
    assert store.load(2).shape == store.load(3).shape == (48, 64, 3)
    assert store.path(3).with_name("frame_000003.png.foreign").is_file()


# ------------------------------------------------------------------ tune.json written by two processes

def test_two_processes_updating_the_tuning_record_lose_nothing(tmp_path):
    """Two processes each keeping 100 entries left 173 of 200: read-change-write with no lock (D12)."""
    code = ("import sys\nfrom styleengine.engine import autotune\n"
            "for i in range(100):\n"
            "    autotune._update(lambda d, i=i: d['entries'].__setitem__(f'{sys.argv[1]}{i}', {'n': i}))\n")
    env = {**os.environ, "STYLEENGINE_CACHE_DIR": str(tmp_path)}
    writers = [subprocess.Popen([sys.executable, "-c", code, name], env=env) for name in ("a", "b")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    assert len(json.loads((tmp_path / "tune.json").read_text())["entries"]) == 200


# ------------------------------------------------------------------ blend weights past a float's sum

def test_blend_weights_whose_sum_overflows_blend_as_their_ratio(make_image):
    """`style_blend=1e308,1e308`: the sum overflowed to inf and every Gram was weighted 0, silently (D13)."""
    import torch

    from styleengine.engine.losses import blend_grams

    grams = [{"relu1_1": torch.full((2, 2), 1.0)}, {"relu1_1": torch.full((2, 2), 3.0)}]
    blended = blend_grams(grams, [4, 4], 4, [1e308, 1e308])
    assert torch.allclose(blended["relu1_1"], torch.full((2, 2), 2.0))


def test_a_result_whose_job_was_never_recorded_is_removed_at_start(tmp_path):
    """SIGKILL between a job's PNG and its manifest line left the PNG for ever, served by nobody (probe 8's
    left-out case). Only the server's own names go; a user's PNG stays."""
    results = tmp_path / "srv" / "results"
    results.mkdir(parents=True)
    orphan, mine = results / f"{new_id()}.png", results / "holiday.png"
    orphan.write_bytes(b"png"), mine.write_bytes(b"png")
    # what the kill leaves of that job: its uploads, removed only once its line is written (probe 35b)
    (tmp_path / "srv" / "uploads" / orphan.stem).mkdir(parents=True)
    (tmp_path / "srv" / "uploads" / orphan.stem / "content").write_bytes(b"an upload")
    JobStore(tmp_path / "srv").close()
    assert not orphan.exists() and mine.exists()
