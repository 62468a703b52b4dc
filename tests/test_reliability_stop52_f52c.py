"""Issue 23, stop 52: probe 52's small findings (video's --fps warning, a cache entry that is a broken link, serve's
form, a PNG's metadata, an empty blend list)."""
from __future__ import annotations

from pathlib import Path

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
except ModuleNotFoundError:
    from tests.test_cli import run_cli


@pytest.fixture
def three(tmp_path) -> Path:
    """A 64x48 px clip of 3 frames at 10 fps, with no sound."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    pytest.importorskip("cv2", reason="the video extra (OpenCV) is not installed")
    from styleengine.benchmarks.video_clips import moving_window, write_clip

    try:
        from test_video import photo
    except ModuleNotFoundError:
        from tests.test_video import photo
    frames, _ = moving_window(photo(), 3, (48, 64))
    path = tmp_path / "three.mp4"
    write_clip(path, frames, fps=10, audio=False)
    return path


@pytest.mark.parametrize("rate, span, said", [("10.5", [], None), ("30", ["--frames", "0:2"], "(2 frames for its 1)")])
def test_the_fps_warning_is_given_only_where_a_frame_is_repeated_with_this_runs_counts(tmp_path, monkeypatch, capsys,
                                                                                       three, rate, span, said):
    """`video --fps 3.5` of a 3 fps clip said each source frame was repeated "(3 frames for its 3)", where none was
    (an NTSC clip given `--fps 30` alike), and under `--frames 0:2` it counted the whole clip's frames, not the 2
    made (probe 52a, 8). The warning is given only where a source frame is shown twice, with this run's counts."""
    try:
        from test_video import FAST
    except ModuleNotFoundError:
        from tests.test_video import FAST
    from PIL import Image

    Image.new("RGB", (48, 48), (200, 40, 90)).save(tmp_path / "s.png")
    code, _, err = run_cli(monkeypatch, capsys, "video", three, tmp_path / "s.png", "-o", tmp_path / "o.mp4", *FAST,
                           "--size", "64", "--fps", rate, *span)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning: ") and "--fps" in line]
    if said is None:
        assert not warned, err
    else:
        assert len(warned) == 1 and said in warned[0] and "repeated" in warned[0], err


@pytest.mark.parametrize("link", ["broken", "loop"])
def test_a_cache_entry_that_is_a_broken_link_or_a_loop_is_replaced(tmp_path, link):
    """A cache entry that was a broken symbolic link (or one to itself) failed the run with "cannot write in the
    cache folder cache/exports (Not a directory); make it writable", of a writable folder (probe 52a, 9). It is
    replaced, as an entry that is a file is; the link's target is not made."""
    from styleengine.export import cache

    folder = tmp_path / "exports" / "key"
    folder.parent.mkdir()
    folder.symlink_to(tmp_path / "elsewhere" if link == "broken" else "key")

    def build(staging: Path) -> str:
        (staging / "graph.onnx").write_bytes(b"graph")
        return "built"

    with cache.entry_lock(folder):
        assert cache.read_record(folder) is None  # rebuilt, not read through the link
        assert cache.build_entry(folder, ["graph.onnx"], {"of": "test"}, build) == "built"
        assert cache.read_record(folder, {"of": "test"}) is not None
    assert folder.is_dir() and not folder.is_symlink() and (folder / "graph.onnx").read_bytes() == b"graph"
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [".key.lock", "key"]  # nothing staged is left


@pytest.fixture
def server(tmp_path):
    """A TestClient of a server on random VGG16 weights, 40 px."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS
    from styleengine.serve.app import Config, create_app

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_upload_mb=2, max_size=256, max_iters=50)
    with TestClient(create_app(config)) as client:
        yield client


def _uploads(styles: int = 1) -> list:
    try:
        from serve_helpers import files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import files, png
    return files(None, *[png(40, 40, n) for n in range(styles)])


def test_serve_refuses_keep_given_twice(server):
    """`-F keep=1 -F keep=0` made a job that was cancelled when its page closed (the last one won); every other
    field given twice is refused (probe 52b, 6)."""
    response = server.post("/api/jobs", files=_uploads() + [("keep", (None, "1")), ("keep", (None, "0"))])
    assert response.status_code == 422 and response.json()["detail"] == "keep is given twice", response.text
    assert server.get("/api/jobs").json() == []


def test_serve_says_its_own_style_limit_for_too_many_uploads(server):
    """Nine style uploads were told Starlette's "Too many files. Maximum number of files is 9." (a 400), where the
    user sent 9 styles and /api/health says max_styles 8 (probe 52b, 7). The server's own 422 names its limit."""
    from styleengine.serve.app import MAX_STYLES

    assert server.get("/api/health").json()["limits"]["max_styles"] == MAX_STYLES
    for styles in (MAX_STYLES + 1, MAX_STYLES + 5):
        response = server.post("/api/jobs", files=_uploads(styles))
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert f"at most {MAX_STYLES} style images" in detail and "max_styles" in detail, detail
        assert "Too many files" not in detail, detail
    assert server.get("/api/jobs").json() == []


def _big_text_png(path: Path) -> Path:
    """A 40x40 PNG whose compressed text chunk holds 2 MB: past PIL's MAX_TEXT_CHUNK (1 MiB) once decompressed."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("notes", "a" * 2_000_000, zip=True)
    Image.new("RGB", (40, 40), (10, 120, 30)).save(path, pnginfo=info)
    return path


def test_a_png_whose_text_decompresses_past_pils_limit_is_said_so(tmp_path, monkeypatch, capsys, server):
    """A PNG whose zTXt chunk decompresses past PIL's limit was told "cannot decode content image (truncated or
    corrupt?): Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK": the file is neither; its metadata is
    too large (probe 52b, 7). The run, a batch job and the server say so in one line."""
    try:
        from test_reliability_batch import one_error_line
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_probe13 import FAST, _pictures
    _pictures(tmp_path)
    big = _big_text_png(tmp_path / "big.png")
    said = "its metadata (a compressed text chunk or colour profile) is over"
    code, _, err = run_cli(monkeypatch, capsys, "run", big, tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST)
    line = one_error_line(code, err)
    assert f"content image {big}" in line and said in line and "truncated" not in line, line
    (tmp_path / "j.jsonl").write_text('{"id": "b", "content": "c.png", "styles": ["big.png"], "output": "b.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST)
    assert code == 1 and said in err and "truncated" not in err, err
    response = server.post("/api/jobs", files=[("content", ("c.png", big.read_bytes(), "image/png")),
                                               *_uploads()[1:]])
    assert response.status_code == 422, response.text
    assert said in response.json()["detail"] and "truncated" not in response.json()["detail"], response.text


def test_an_empty_blend_list_is_told_it_has_no_weights(tmp_path, monkeypatch, capsys):
    """`"blend": []` (and the API's style_blend=[]) was told "weights must not all be zero": there are none; `[1, 2]`
    for one style is told its count (probe 52b, 8). An empty list is told it has 0 weights for the style images."""
    from styleengine import api
    from styleengine.errors import UserError

    try:
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_reliability_probe13 import FAST, _pictures
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"id": "e", "content": "c.png", "styles": ["s.png"], "output": "e.png", '
                                      '"blend": []}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST)
    assert code == 1 and "blend has 0 weights for 1 style images" in err and "zero" not in err, err
    with pytest.raises(UserError, match=r"^style_blend has 0 weights for 1 style images") as caught:
        api.stylise(tmp_path / "c.png", tmp_path / "s.png", size=32, iterations=1, weights="random", model="vgg16",
                    style_blend=[])
    assert "zero" not in str(caught.value)
