"""Issue 23, stop 50: probe 50b's minor findings (visualize, image limits, the API)."""
from __future__ import annotations

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import _pictures


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine whose torch sees no CUDA device, on any machine."""
    import torch

    from styleengine.engine import machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "probe", lambda: machine.Machine(cuda=False, ort_providers=("cpu",), nnpack=True))
    monkeypatch.setattr("styleengine.engine.autotune.probe", machine.probe)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("weights", ["random", "imagenet"])
def test_visualize_refuses_a_missing_cuda_device_before_the_weights(tmp_path, monkeypatch, capsys, no_cuda,
                                                                     device, weights):
    """`visualize --device cuda` without a GPU loaded the weights (or downloaded VGG16's 528 MB) and then said
    "this torch build or machine has no CUDA device", where run, texture and invert refuse at once in other words
    (probe 50b, 1). It is texture's line, before any weights are read."""
    from styleengine.model import classifier, weights as weights_module

    def read(*args, **kwargs):
        raise AssertionError("weights read before the device was checked")

    monkeypatch.setattr(classifier, "load_classifier", read)
    monkeypatch.setattr(weights_module, "load_weights", read)
    monkeypatch.setattr(weights_module, "imagenet_checkpoint", read)
    _pictures(tmp_path)
    flags = ["--size", "40", "--iters", "1", "--model", "vgg16", "--weights", weights, "--device", device]
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "--class", "3", *flags, "-o", tmp_path / "v.png")
    said = one_error_line(code, err)
    assert len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "texture", tmp_path / "s.png", *flags, "--backend", "torch",
                           "-o", tmp_path / "t.png")
    assert said == one_error_line(code, err) == (f"error: --device {device} needs an NVIDIA GPU, and torch sees no "
                                                 f"CUDA device here; use --device cpu"), said
    assert not (tmp_path / "v.png").exists()


@pytest.mark.parametrize("side", [40, 64])
def test_a_decompression_bomb_is_refused_naming_the_one_limit_applied(tmp_path, monkeypatch, capsys, side):
    """A bomb's refusal passed PIL's text on: 89478485 pixels for one past PIL's warning (the limit applied: the
    warning is an error here), 178956970 for one past twice that (PIL's own error), so a user who made a 200 MP
    picture 170 MP was refused again with the other number (probe 50b, 5). Both name the limit applied, the run's
    and the dry run's alike."""
    from PIL import Image

    _pictures(tmp_path)
    Image.new("RGB", (side, side), (9, 9, 9)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40: past the warning; 64x64: past twice it
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "b.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--weights", "random", "--size", "40", "--iters", "1", *dry)
        assert one_error_line(code, err) == (
            f"error: refusing content image {tmp_path / 'b.png'}: it has {side * side} pixels, over the limit of "
            f"1000 past which an image is refused as a possible decompression bomb; make it smaller"), err


@pytest.mark.parametrize("side", [40, 64])
def test_serve_says_its_own_pixel_limit_before_pils_for_any_bomb(tmp_path, monkeypatch, side):
    """`serve --max-pixels` said its own limit for an upload past PIL's warning, but PIL's error text (and its
    doubled number) for one past twice it (probe 50b, 5). The server's limit comes first for both; past PIL's
    limit only, the run's words."""
    pytest.importorskip("fastapi")
    from fastapi import HTTPException
    from PIL import Image

    from styleengine.serve.app import _check_pixels

    Image.new("RGB", (side, side)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(HTTPException) as caught:
        _check_pixels(tmp_path / "b.png", "style image 2", 500)
    assert caught.value.status_code == 413, caught.value.detail
    assert str(caught.value.detail).endswith("; this server takes at most 0.0005 megapixels"), caught.value.detail
    if side == 40:  # past PIL's warning only: the upload's decoding refuses it (load_upload), in the run's words
        assert _check_pixels(tmp_path / "b.png", "style image 2", 10**9) is None
        return
    with pytest.raises(HTTPException) as caught:
        _check_pixels(tmp_path / "b.png", "style image 2", 10**9)
    assert str(caught.value.detail) == ("refusing style image 2: it has 4096 pixels, over the limit of 1000 past "
                                        "which an image is refused as a possible decompression bomb; make it "
                                        "smaller"), caught.value.detail


def test_visualize_says_it_read_the_classifier_not_that_it_ignored_its_keys(tmp_path, monkeypatch, capsys,
                                                                             vgg16_random):
    """`visualize --weights full.pth` said "ignored 6 keys: classifier.0.bias, ..." and then used them: the
    features loader's line, right for run (probe 50b, 9). It says the classifier was read, and its class count."""
    import torch

    from styleengine.model.classifier import random_classifier

    small = random_classifier(seed=2, hidden=16, classes=5, pool=1)
    torch.save({**vgg16_random.state, **{f"classifier.{i}.{p}": t for i, (w, b) in zip((0, 3, 6), small.layers)
                                          for p, t in (("weight", w), ("bias", b))}}, tmp_path / "full.pth")
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "--class", "4", "--size", "32", "--iters", "1",
                           "--model", "vgg16", "--weights", tmp_path / "full.pth", "-o", tmp_path / "v.png")
    assert code == 0, err
    line = next(line for line in err.splitlines() if line.startswith("weights: "))
    assert "ignored" not in line and line.endswith("; classifier: 5 classes"), err
    assert "rank" in err and "of 5;" in err, err


@pytest.mark.parametrize("given, says", [
    ({"content_weight": 5}, ["content_weight is ignored: a texture has no content image"]),
    ({"content_layers": "relu4_2", "luminance_only": True},
     ["content_layers is ignored: a texture has no content image",
      "luminance_only is ignored: a texture has no content image"]),
    ({"temporal_weight": 3}, ["temporal_weight is ignored: only a video's frames read it (styleengine video)"]),
    ({"content_weight": 0, "preserve_colors": False}, [])])
def test_the_api_says_a_setting_a_texture_cannot_use(caplog, given, says):
    """`stylise(None, style, content_weight=5)` returned a texture without a word, where `texture` has no such
    flag and the API says print_every and save_every are ignored (probe 50b, 10). Said the same way (a logged
    warning: taken, so one call's settings serve a run and a texture alike); a value that does nothing anyway
    is not said."""
    from PIL import Image

    import styleengine

    with caplog.at_level("WARNING", logger="styleengine.api"):
        picture = styleengine.stylise(None, Image.new("RGB", (48, 48), (20, 30, 230)), size=40, iterations=1,
                                      weights="random", model="vgg16", backend="torch", **given)
    assert picture.size == (40, 40)
    assert [r.getMessage() for r in caplog.records if r.name == "styleengine.api" and r.levelname == "WARNING"] \
        == says, caplog.text
