"""Issue 23, stop 47: probe 47's serve findings (on 064bbf4)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

try:
    from serve_helpers import SETTINGS, files, png
except ModuleNotFoundError:
    from tests.serve_helpers import SETTINGS, files, png


@pytest.mark.parametrize("long_side, words", [
    (150, "needs a long side of 119 px: crop the image or send size 119"),
    (2000, "needs a long side of 1575 px, over this server's limit of 256 px: crop the image")])
@pytest.mark.parametrize("role", ["content", "style"])
def test_an_image_too_thin_for_the_size_is_told_the_field_or_to_crop(tmp_path, long_side, words, role):
    """A 2000x40 upload was told "(--size 1600): crop the image or use a larger size": a client has no flags, and
    size 1600 is over the server's limit (probe 47b, 2). It names the form's field where the server makes that
    size (that size: a larger one may start at a coarser scale, refused again; probe 49a, 12), else only
    cropping."""
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_size=256, max_iters=50)
    thin = png(40, long_side)
    parts = files(thin) if role == "content" else files(None, thin)
    if role == "style":  # the style's side is size x style_scale
        words = words.replace("send size 119", "send a style_scale of at least 2.97")  # at size 40
    with TestClient(create_app(config)) as client:
        response = client.post("/api/jobs", files=parts)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert words in detail and "--" not in detail, detail


def test_replica_folders_are_the_slots_own_names(tmp_path):
    """`mkdir D/replica-²` made `serve --ray` a 61-line traceback (int() of a digit isdigit takes), and
    `replica-01`, a name no replica uses, was checked as a replica's (probe 47a, 10)."""
    from styleengine.serve.ray_app import replica_folders

    for name in ("replica-0", "replica-2", "replica-10", "replica-²", "replica-01", "replica-", "replica-x"):
        (tmp_path / name).mkdir()
    assert [(n, p.name) for n, p in replica_folders(tmp_path)] == [(0, "replica-0"), (2, "replica-2"),
                                                                   (10, "replica-10")]


def test_a_replica_folder_past_a_gap_is_named_unserved(tmp_path):
    """replica-0 and replica-2 with --replicas 2: slot 2 is not served, and was not named (the folders were
    counted by their place in the list; review 47, 9)."""
    from styleengine.engine.batch import Manifest
    from styleengine.serve.ray_app import unserved

    for slot in (0, 2):
        results = tmp_path / f"replica-{slot}" / "results"
        results.mkdir(parents=True)
        Manifest(results / "manifest.jsonl").append({"id": f"{slot}", "status": "ok", "settings_hash": "h"})
    assert [(p.name, n) for p, n in unserved(tmp_path, 2)] == [("replica-2", 1)]


def test_a_finished_picture_results_cannot_take_is_kept_aside(tmp_path, monkeypatch):
    """A full results/ refused a finished job's picture (its line went in): the picture was dropped, where a
    batch keeps it (probe 48b, 3). It is kept in the server's folder and its reason says so."""
    from fastapi.testclient import TestClient

    from styleengine.engine import images
    from styleengine.serve import jobs
    from styleengine.serve.app import Config, create_app

    try:
        from serve_helpers import wait_for
    except ModuleNotFoundError:
        from tests.serve_helpers import wait_for

    real = images.save_image

    def full(image, path, *args, **kwargs):
        if "results" in str(path):
            raise images.ImageError(f"cannot write {path}: No space left on device")
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(jobs.batch.images, "save_image", full)
    root = tmp_path / "srv"
    config = Config(settings=SETTINGS.resolved(), root=root, max_size=256, max_iters=50)
    with TestClient(create_app(config)) as client:
        response = client.post("/api/jobs", files=files())
        job = wait_for(client, response.json()["id"])
    assert job["status"] == "failed" and "No space left on device" in job["reason"], job
    kept = list(root.glob(f"{job['id']}-rescued-*.png"))
    assert len(kept) == 1 and kept[0].name in job["reason"], job["reason"]


def test_a_thin_uploads_size_advice_is_one_its_plan_takes(tmp_path):
    """"send a larger size 240" for a 300x40 upload was a dead end: at size 240 the job starts at 128 px, where it
    is refused again (probe 48a, 7). A size is advised only where its first scale is that size."""
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_size=512, max_iters=50)
    with TestClient(create_app(config)) as client:
        detail = client.post("/api/jobs", files=files(png(40, 300))).json()["detail"]
    assert detail.endswith("needs a long side of 237 px, and at that size the server's first scale is 128 px: crop "
                           "the image"), detail
