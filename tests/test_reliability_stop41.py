"""Issue 23, stop 41: probe 34's findings (on d8f39d4)."""
from __future__ import annotations

import json

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import manifest_lines, one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import manifest_lines, one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "I;16"])
def test_a_pngs_transparent_key_is_transparent(tmp_path, mode):
    """A PNG's tRNS chunk (one grey level or colour that is transparent) was honoured for palette images only: a
    greyscale mask's transparent half read as its grey, and two such halves were refused as an overlap; a
    content's transparent pixels ran as black (probe 34a). Each mode reads as its RGBA twin."""
    import numpy as np
    from PIL import Image

    from styleengine.engine import images

    half = np.zeros((40, 48), bool)
    half[:, :24] = True
    if mode == "1":
        picture, key = Image.fromarray(half).convert("1"), 0
    elif mode == "L":
        picture, key = Image.fromarray(np.where(half, 255, 200).astype(np.uint8)), 200
    elif mode == "RGB":
        picture, key = Image.fromarray(np.where(half[..., None], 255, [200, 10, 20]).astype(np.uint8)), (200, 10, 20)
    else:
        picture, key = Image.fromarray(np.where(half, 65535, 51400).astype(np.uint16)), 51400
    picture.save(tmp_path / "k.png", transparency=key)
    assert Image.open(tmp_path / "k.png").mode == mode
    for backdrop in (0.0, 1.0):  # a mask's, a picture's
        read = images.load_image(tmp_path / "k.png", backdrop=backdrop)
        assert np.array_equal(read[:, :24], np.ones((40, 24, 3), np.float32)), mode
        assert np.array_equal(read[:, 24:], np.full((40, 24, 3), backdrop, np.float32)), mode


def test_a_file_changed_between_chunks_is_hashed_anew(tmp_path, monkeypatch, capsys):
    """A file's hash was kept from chunk to chunk by its path: a content replaced after the first chunk's jobs
    ran failed a later chunk's job, planned after the change, as "changed after the job was planned" (exit 1;
    probe 34a, 3 of 3). The hash kept is the file's while its stat is unchanged."""
    from PIL import Image

    from styleengine.engine import batch as engine

    _pictures(tmp_path)
    Image.new("RGB", (48, 40), (120, 10, 10)).save(tmp_path / "r.png")
    jobs = [{"content": "r.png", "style": "s.png", "output": f"r{i}.png"} for i in range(2)]
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    monkeypatch.setattr(engine, "CHUNK", 1)
    real = engine.record_all

    def then_replaced(*args, **kwargs):
        real(*args, **kwargs)
        Image.new("RGB", (48, 40), (1, 200, 3)).save(tmp_path / "new.png")
        (tmp_path / "new.png").replace(tmp_path / "r.png")

    monkeypatch.setattr(engine, "record_all", then_replaced)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    lines = {line["id"]: line for line in manifest_lines(tmp_path / "o")}
    assert code == 0 and [lines[f"r{i}"]["status"] for i in range(2)] == ["ok", "ok"], err
    assert lines["r0"]["settings_hash"] != lines["r1"]["settings_hash"]
    monkeypatch.setattr(engine, "record_all", real)  # the rerun: the file as it is now is r1's, not r0's
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    statuses = [line["status"] for line in manifest_lines(tmp_path / "o")[2:]]
    assert code == 0 and statuses == ["ok", "skipped"], err


def _server(tmp_path, **own):
    """A TestClient around a server with `own` settings (its files made by the caller)."""
    import dataclasses

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS
    from styleengine.serve.app import Config, create_app

    settings = dataclasses.replace(SETTINGS, **own).resolved()
    return TestClient(create_app(Config(settings=settings, root=tmp_path / "srv")))


def _halves(tmp_path):
    """l.png and r.png: white on the left and on the right half of 40x40."""
    import numpy as np
    from PIL import Image

    left = np.zeros((40, 40), np.uint8)
    left[:, :20] = 255
    Image.fromarray(left).save(tmp_path / "l.png")
    Image.fromarray(255 - left).save(tmp_path / "r.png")
    return str(tmp_path / "l.png"), str(tmp_path / "r.png")


@pytest.mark.parametrize("own", ["mask", "init"])
def test_a_servers_file_is_run_as_the_bytes_its_hash_holds(tmp_path, monkeypatch, own):
    """serve decoded its mask (and its --init at the run) apart from the read its hash took: a mask swapped
    between the two ran under the other file's hash (probe 34a, 12 and 5 of 40). The bytes hashed are the
    bytes run; a file swapped between its hash and that read is the server's 503, and no job."""
    from PIL import Image

    from styleengine.serve.jobs import JobStore

    try:
        from serve_helpers import files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import files, png
    left, right = _halves(tmp_path)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "i.png")
    changed = tmp_path / ("l.png" if own == "mask" else "i.png")
    real = JobStore.settings_hash

    def hashed_then_swapped(self, *args, **kwargs):
        digest = real(self, *args, **kwargs)
        Image.open(tmp_path / "r.png").convert("RGB").save(changed)
        return digest

    settings = {"content_masks": (left, right)} if own == "mask" else {"init": str(tmp_path / "i.png")}
    with _server(tmp_path, **settings) as client:
        monkeypatch.setattr(JobStore, "settings_hash", hashed_then_swapped)
        styles = [png(40, 40, 1)] * (2 if own == "mask" else 1)
        response = client.post("/api/jobs", files=files(png(40, 40), *styles))
        assert response.status_code == 503, response.text
        role = "content mask 1 l.png" if own == "mask" else "init image i.png"
        assert response.json()["detail"] == (f"the server's {role} changed while this request read it: its bytes "
                                             f"are not those its hash holds; try again"), response.text
        assert client.get("/api/jobs").json() == []


def test_a_servers_weights_file_replaced_after_it_was_loaded_is_said(tmp_path):
    """The server loads its weights once, and hashed each request with the file's bytes as they were then: a file
    replaced after the start ran the old network under the new file's hash. The request is the server's 503."""
    from safetensors.torch import save_file

    from styleengine.model.weights import random_state

    try:
        from serve_helpers import files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import files, png
    save_file(random_state("vgg16", seed=1), str(tmp_path / "w.safetensors"))
    with _server(tmp_path, weights=str(tmp_path / "w.safetensors")) as client:
        assert client.post("/api/jobs", files=files(png(40, 40))).status_code == 202
        save_file(random_state("vgg16", seed=2), str(tmp_path / "w.safetensors"))
        response = client.post("/api/jobs", files=files(png(40, 40)))
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith("the server's weights file w.safetensors changed after the "
                                                    "server loaded it: restart the server"), response.text


@pytest.mark.parametrize(("made", "said"), [
    ("junk", "the server's content mask 2 r.png is not an image"),
    ("black", "the server's content mask 2 r.png is black everywhere"),
    ("left", "the server's content masks sum to 2.00 at pixel (0, 0)"),
    ("truncated", "cannot decode the server's content mask 2 r.png")])
def test_a_servers_mask_broken_after_its_start_is_its_own_503(tmp_path, made, said):
    """A server's mask replaced by a broken one after its start was each request's 422, said as "the server's the
    content masks sum to ..." or "the server's cannot decode ..." (probe 34a): the server's 503, said in
    order."""
    import numpy as np
    from PIL import Image

    try:
        from serve_helpers import files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import files, png
    left, right = _halves(tmp_path)
    with _server(tmp_path, content_masks=(left, right)) as client:
        whole = (tmp_path / "r.png").read_bytes()
        if made == "junk":
            (tmp_path / "r.png").write_text("junk")
        elif made == "black":
            Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "r.png")
        elif made == "left":
            (tmp_path / "r.png").write_bytes((tmp_path / "l.png").read_bytes())
        else:
            (tmp_path / "r.png").write_bytes(whole[:60])
        response = client.post("/api/jobs", files=files(png(40, 40), png(40, 40, 1), png(40, 40, 2)))
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert detail.startswith(said) and detail.endswith("it cannot run jobs until it is mended"), detail
        assert str(tmp_path) not in detail


def test_a_servers_mask_count_is_said_as_the_servers(tmp_path):
    """Two server masks and a request of one style: "2 --content-mask files for 1 style images", a flag the
    client never sent (probe 34a)."""
    try:
        from serve_helpers import files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import files, png
    with _server(tmp_path, content_masks=_halves(tmp_path)) as client:
        response = client.post("/api/jobs", files=files(png(40, 40), png(40, 40, 1)))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == ("the server's 2 content masks are for 2 style images, one each in order; "
                                         "this request sent 1")


def test_a_warm_engine_keeps_few_random_networks(tmp_path):
    """A server of random weights kept one network (and its step) per request's seed, never dropped: about 80 MB
    a seed, 3.1 GB over 30 requests (probe 34a). It keeps the newest two; the one in use stays."""
    import dataclasses

    try:
        from serve_helpers import SETTINGS
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS
    from styleengine.engine import batch

    with batch.Warm() as warm:
        for seed in range(5):
            settings = dataclasses.replace(SETTINGS, seed=seed).resolved()
            step = warm.step(settings)
            assert warm.step(settings) is step and warm.weights(settings) is warm.weights(settings)
            assert len(warm._weights) <= batch.RANDOM_KEPT and len(warm._steps) <= batch.RANDOM_KEPT
        assert warm.steps_built == 5


@pytest.mark.parametrize("numbers", ["written", "full"])
def test_an_inversions_rescued_picture_says_its_distances(tmp_path, monkeypatch, capsys, numbers):
    """`invert -o ro/i.png --distances ro/d.json` with ro unwritable: the line said the picture's rescue and nothing
    of the distances, which were never written (probe 34b). They are written if they can be, and the line says
    where they are or why not."""
    import errno

    from styleengine import paths
    from styleengine.engine import images

    _pictures(tmp_path)
    real_save, real_write = images.save_image, paths.atomic_write

    def save(image, path, *args, **kwargs):
        if str(path) == str(tmp_path / "i.png"):
            raise images.ImageError(f"cannot write {path}: read-only file system")
        return real_save(image, path, *args, **kwargs)

    def write(path, *args, **kwargs):
        if numbers == "full":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(images, "save_image", save)
    monkeypatch.setattr(paths, "atomic_write", write)
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "i.png",
                           "--distances", tmp_path / "d.json", "--size", "40", "--iters", "2", "--weights", "random")
    line = one_error_line(code, err)
    assert "saved the image to" in line, line
    if numbers == "written":
        assert line.endswith(f"; the distances are in {tmp_path / 'd.json'}") and (tmp_path / "d.json").is_file()
    else:
        assert line.endswith(f"; distances {tmp_path / 'd.json'} not written either: No space left on "
                             f"device"), line


def test_a_server_reads_its_weights_file_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """Each request's hash read the server's whole weights file again (58 MB for the shared VGG16, ten times that
    for VGG19): it is hashed again only once the file changes."""
    import os

    from safetensors.torch import save_file

    from styleengine import paths
    from styleengine.model.weights import random_state

    try:
        from serve_helpers import files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import files, png
    weights = tmp_path / "w.safetensors"
    save_file(random_state("vgg16", seed=1), str(weights))
    read: list[int] = []  # the inodes of the files hashed
    real = paths.stream_sha256
    monkeypatch.setattr(paths, "stream_sha256", lambda f: read.append(os.fstat(f.fileno()).st_ino) or real(f))
    with _server(tmp_path, weights=str(weights)) as client:
        assert client.post("/api/jobs", files=files(png(40, 40))).status_code == 202
        first = read.count(weights.stat().st_ino)  # its hash, and its load (a server's first job loads them)
        for _ in range(2):
            assert client.post("/api/jobs", files=files(png(40, 40))).status_code == 202
    assert read.count(weights.stat().st_ino) == first, read
