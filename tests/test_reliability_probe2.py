"""Issue 23, the probe of the surfaces added since the last one (masks, recipes, --init, --devices, video,
invert, serve form fields, the race's tuning record): each defect it found, as the case a careless user tried."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import pics, run_cli  # noqa: F401 (pics: a fixture)
except ModuleNotFoundError:
    from tests.test_cli import pics, run_cli  # noqa: F401

SMALL = ["--model", "vgg16", "--size", "40", "--iters", "2", "--device", "cpu", "--backend", "torch"]
FAST = [*SMALL, "--weights", "random"]


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ a loss whose every term reads nothing

@pytest.mark.parametrize("values, texture, says", [
    ({"style_layers": (), "content_weight": 0.0}, False, "no style layer"),
    ({"content_layers": (), "style_weight": 0.0}, False, "no content layer"),
    ({"style_layer_weights": (0.0,) * 5, "content_weight": 0.0}, False, "style layer weights all 0"),
    ({"style_layer_weights": (0.0,) * 5}, True, "style layer weights all 0"),
])
def test_a_loss_with_weights_but_no_layer_to_read_is_refused(values, texture, says):
    """`--style-layers , --content-weight 0` (or all-zero --style-layer-weights) passed the all-zero weights
    check and gave back the start image with exit 0: a term needs a weight and a layer."""
    with pytest.raises(ConfigError, match="nothing to optimise") as e:
        Settings(**values).validate(texture=texture)
    assert says in str(e.value)
    follow = {**values, "tv_weight": 1.0}  # one term left that moves the image
    if follow.get("style_layers") == () or follow.get("style_layer_weights") == (0.0,) * 5:
        follow["style_weight"] = 0.0  # no style layer (or no weight on one) with a style weight: probes 12, 13
    if follow.get("content_layers") == ():
        follow["content_weight"] = 0.0  # no content layer with a content weight: probe 55b, 6
    Settings(**follow).validate(texture=texture)


def test_no_style_layers_and_no_content_weight_is_one_line_nothing_written(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--style-layers", "", "--content-weight", "0")
    assert "nothing to optimise" in one_line(code, err) and not out.exists()


@pytest.mark.parametrize("flag", ["--style-layers", "--content-mask", "--devices"])
def test_a_list_of_only_separators_is_one_line_not_none(tmp_path, monkeypatch, capsys, pics, flag):
    """`--content-mask ,` and `--devices ,` silently meant none: a slip, said so (an empty text is none)."""
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST, flag, " , ")
    assert flag in one_line(code, err) and not out.exists()


def test_a_batch_job_whose_loss_reads_nothing_fails(tmp_path, monkeypatch, capsys, pics):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"content": "content.png", "style": "style.png", "style_layers": [],
                                "content_weight": 0}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "out", *FAST)
    assert code == 1 and "Traceback" not in err and "nothing to optimise" in err, err
    assert not (tmp_path / "out" / "content__style.png").exists()


# ------------------------------------------------------------------ a path that spells a word

@pytest.mark.parametrize("flag, name", [("--weights", "random"), ("--weights", "imagenet"), ("--init", "noise"),
                                        ("--init", "content")])
def test_a_dot_slash_path_that_spells_a_word_is_the_file(tmp_path, monkeypatch, capsys, pics, flag, name):
    """`--weights ./random` ran random weights and `--init ./noise` started from noise: the path was normalised
    to the word. The file here is no checkpoint and a 20x20 image, so reading it is one line."""
    monkeypatch.chdir(tmp_path)
    if flag == "--weights":
        (tmp_path / name).write_text("not a checkpoint\n")
    else:
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / name, format="PNG")
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out,
                           *(FAST if flag == "--init" else SMALL), flag, f"./{name}")
    assert name in one_line(code, err) and not out.exists()


# ------------------------------------------------------------------ video: a rate that picks no frame

@pytest.mark.parametrize("fps, says", [("0.0001", "lowest rate"), ("0.01", "picks no frame")])
def test_a_video_rate_that_picks_no_frame_is_one_line_nothing_written(tmp_path, monkeypatch, capsys, pics,
                                                                      fps, says):
    """`--fps 0.0001` was a ZeroDivisionError after the frames folder was made; `--fps 0.01` on a 6-frame
    clip said 'wrote out.mp4 (0 frames ...)' with exit 0 and wrote no video."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    from styleengine.benchmarks.video_clips import write_clip

    clip = tmp_path / "in.mp4"
    write_clip(clip, [np.full((48, 64, 3), v / 8, np.float32) for v in range(6)], fps=12)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, pics["style"], "-o", out, *FAST, "--fps", fps)
    assert says in one_line(code, err) and not out.exists()
    assert not out.with_name(out.name + ".frames").exists()


def test_a_full_disk_when_the_video_is_encoded_is_one_line_and_keeps_the_frames(tmp_path, monkeypatch, capsys,
                                                                                  pics):
    """The output folder full when the video was encoded: a traceback (OSError from the atomic write's close).
    Now one line naming the frames kept, and a rerun with room encodes them without stylising any again."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    import errno

    from styleengine.benchmarks.video_clips import write_clip
    from styleengine.engine import video_io

    clip = tmp_path / "in.mp4"
    write_clip(clip, [np.full((48, 64, 3), v / 8, np.float32) for v in range(3)], fps=12)
    out = tmp_path / "out.mp4"
    real = video_io.write_video

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video_io, "write_video", full)
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, pics["style"], "-o", out, *FAST, "--size", "64")
    line = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    assert "No space left" in line and "frames 0-2 are kept" in line and not out.exists()
    monkeypatch.setattr(video_io, "write_video", real)
    code, _, err = run_cli(monkeypatch, capsys, "video", clip, pics["style"], "-o", out, *FAST, "--size", "64")
    assert code == 0 and "0 stylised" in err and out.exists(), err


# ------------------------------------------------------------------ invert and visualize on a full disk

def full_disk_for(monkeypatch, name: str) -> None:
    """Writing an image named `name` fails as on a full disk; other images (a rescue) are written."""
    from styleengine.engine import images
    from styleengine.errors import ImageError

    real = images.save_image

    def save(image, path, *args, **kwargs):
        if Path(path).name == name:
            raise ImageError(f"cannot write {path}: [Errno 28] No space left on device")
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(images, "save_image", save)


@pytest.mark.parametrize("command", ["invert", "visualize"])
def test_invert_and_visualize_rescue_the_picture_from_a_full_disk(tmp_path, monkeypatch, capsys, pics, command):
    """`run` saves a picture it cannot write elsewhere and says where; invert and visualize lost it."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    full_disk_for(monkeypatch, "out.png")
    out = tmp_path / "out.png"
    args = ([pics["content"], "-o", out] if command == "invert" else ["-o", out, "--class", "1"])
    code, _, err = run_cli(monkeypatch, capsys, command, *args, "--size", "40", "--iters", "2", "--weights",
                           "random", "--device", "cpu")
    assert code == 1 and "Traceback" not in err, err
    assert "saved the image to" in err.strip().splitlines()[-1] and not out.exists()
    assert len(list((tmp_path / "tmp").glob("out-rescued-*.png"))) == 1


def test_invert_distances_on_a_full_disk_is_one_line_and_the_picture_is_written(tmp_path, monkeypatch, capsys,
                                                                                  pics):
    import errno

    from styleengine import paths

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths, "atomic_write", full)
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "invert", pics["content"], "-o", out, "--distances",
                           tmp_path / "d.json", "--size", "40", "--iters", "2", "--weights", "random",
                           "--device", "cpu")
    line = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    assert "cannot write distances" in line and "No space left" in line and out.exists()


def test_an_interrupted_inversion_writes_null_not_nan_for_the_distance_it_did_not_measure(tmp_path, monkeypatch,
                                                                                        capsys, pics):
    """SIGTERM during `invert --distances`: the JSON held `"feature_distance": NaN` (no JSON parser but
    Python's reads it) and the line said 'feature distance ... nan'."""
    import signal

    try:
        from test_reliability import hooked, self_signal
    except ModuleNotFoundError:
        from tests.test_reliability import hooked, self_signal

    hooked(monkeypatch, {3: self_signal(signal.SIGTERM)})
    out, record = tmp_path / "out.png", tmp_path / "d.json"
    code, _, err = run_cli(monkeypatch, capsys, "invert", pics["content"], "-o", out, "--distances", record,
                           "--size", "40", "--iters", "10", "--weights", "random", "--device", "cpu")
    assert code == 143 and "Traceback" not in err and out.exists(), err
    assert "NaN" not in record.read_text() and json.loads(record.read_text())["feature_distance"] is None
    assert "feature distance at conv4_2 not measured" in err and " nan" not in err


# ------------------------------------------------------------------ messages that name what the user typed

@pytest.mark.parametrize("value, says", [("-1", "got -1"),
                                         ("1e308", "--content-weight 1e+308 (in neural-style-pt's units) is past")])
def test_a_recipe_weight_is_judged_as_typed(tmp_path, monkeypatch, capsys, pics, value, says):
    """`--recipe neural-style-pt --content-weight -1` said 'got -2.0' (the value mapped into our units) and
    1e308 said 'got inf'."""
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", tmp_path / "o.png",
                           *FAST, "--recipe", "neural-style-pt", "--content-weight", value)
    line = one_line(code, err)
    assert "--content-weight" in line and says in line


@pytest.mark.parametrize("value", ["nan", "0", "-1"])
def test_invert_names_its_own_flag(tmp_path, monkeypatch, capsys, pics, value):
    """`invert --feature-weight nan` said 'content weight must be ...', a flag invert does not have."""
    code, _, err = run_cli(monkeypatch, capsys, "invert", pics["content"], "-o", tmp_path / "o.png", *FAST,
                           "--feature-weight", value)
    assert "--feature-weight" in one_line(code, err)


def test_a_style_scale_under_the_smallest_side_is_refused():
    """`--style-scale 0.001` ran the style at the 32 px minimum without a word."""
    with pytest.raises(ConfigError, match="at least"):
        Settings(style_scale=0.001).validate()


@pytest.mark.parametrize("init", ["content", "image"])
def test_texture_from_the_content_is_one_line(tmp_path, monkeypatch, capsys, pics, init):
    """`texture --init content` quietly ran from noise: a texture has no content image."""
    out = tmp_path / "t.png"
    code, _, err = run_cli(monkeypatch, capsys, "texture", pics["style"], "-o", out, *FAST, "--init", init)
    assert "a texture has no content" in one_line(code, err) and not out.exists()
