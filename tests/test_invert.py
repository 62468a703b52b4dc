"""Feature inversion and class visualisation on known-answer problems with random weights, and their
commands' one-line errors before any work."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine import cli
from styleengine.engine.invert import inversion_settings, invert
from styleengine.engine.loop import optimise
from styleengine.engine.stylise import Settings
from styleengine.engine.visualize import ClassScoreStep, mean_image
from styleengine.errors import WeightsError
from styleengine.model.classifier import load_classifier, random_classifier

FAST = dict(weights="random", model="vgg16", device="cpu", backend="torch", precision="fp32", conv="direct")


def smooth_picture(side: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    return np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.5 + 0.4 * np.cos(2 * y), 0.3 + 0.6 * x * y],
                    axis=2).astype(np.float32)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["styleengine", *map(str, args)])
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_inversion_from_conv1_2_recovers_the_picture():
    picture = smooth_picture()
    out, result, ran = invert(picture, "conv1_2", Settings(size=40, iterations=30, init="noise", **FAST))
    start_rmse = float(np.sqrt(np.mean((np.random.default_rng(0).random(picture.shape) - picture) ** 2)))
    rmse = float(np.sqrt(np.mean((out - picture) ** 2)))
    assert rmse < 0.01 < start_rmse / 10  # from noise (RMS difference ~0.37) to within a grey level or two
    assert result.distances.content < 0.01 and result.distances.style is None
    # beta = 0 and the feature term normalised by the target's energy (Mahendran & Vedaldi)
    assert ran.style_layers == () and ran.style_weight == 0 and ran.content_layers == ("conv1_2",)
    assert 0 < ran.content_weight != 1.0


def test_inversion_settings_drop_everything_of_the_style():
    s = inversion_settings(Settings(style_blend=(1.0, 2.0), preserve_colors=True, style_layer_weights=(1,) * 5),
                           "relu3_1")
    assert (s.content_layers, s.style_layers, s.style_blend, s.preserve_colors, s.style_layer_weights) == \
        (("relu3_1",), (), None, False, None)


def test_invert_command_writes_the_image_and_distances(tmp_path, monkeypatch, capsys):
    Image.fromarray((smooth_picture(48) * 255).round().astype(np.uint8)).save(tmp_path / "p.png")
    code, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "p.png", "--layer", "conv1_2", "-o",
                        tmp_path / "out.png", "--size", "32", "--iters", "5", "--weights", "random", "--model",
                        "vgg16", "--backend", "torch", "--device", "cpu", "--distances", tmp_path / "d.json")
    assert code == 0, err
    assert "weights: random:0 (untrained)" in err and "feature distance at conv1_2" in err
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["layer"] == "conv1_2" and record["iterations"] == 5 and 0 <= record["pixel_rmse"] < 1
    assert Image.open(tmp_path / "out.png").size == (32, 32)


@pytest.mark.parametrize("flags,match", [
    (["--layer", "conv9_9"], "unknown layer 'conv9_9'"),
    (["--init", "style"], "noise or content"),
    (["--tv-weight", "-1"], "--tv-weight must be"),
    (["--size", "8"], "size must be between"),
    (["-o", "out.xyz"], "unknown image suffix"),
])
def test_invert_bad_values_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, flags, match):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "p.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("styleengine.cli_invert.load_run_weights", lambda *a: pytest.fail("work started"))
    args = ["invert", "p.png", "-o", "out.png", "--weights", "random", "--model", "vgg16", *flags]
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "out.png").exists()


def test_class_ascent_raises_the_class_score(vgg16_random):
    classifier = random_classifier(seed=1, hidden=32, classes=10)
    with ClassScoreStep(vgg16_random, classifier, 7, l2_weight=1.0, tv_weight=1.0) as step:
        start = mean_image(32, 32)
        with torch.no_grad():
            before = step.scores(start)[0]
        result = optimise(step, start, iterations=20)
        with torch.no_grad():
            after = step.scores(result.image)[0]
    assert int(before.argmax()) != 7  # not already the top class at the start
    assert float(after[7]) > float(before[7]) + 0.15 and int(after.argmax()) == 7


def test_a_class_whose_last_layer_weights_are_all_zero_is_refused(vgg16_random):
    """A classifier whose last layer is all zeros (probe 6): visualize wrote the start's noise, 'score 0 -> 0',
    exit 0. The class's score does not depend on the picture: one line, before any work."""
    from styleengine.errors import ConfigError
    from styleengine.model.classifier import Classifier

    classifier = random_classifier(seed=1, hidden=32, classes=10)
    (w, b) = classifier.layers[-1]
    zeroed = Classifier([*classifier.layers[:-1], (torch.zeros_like(w), b)], classifier.pool, classifier.source)
    with pytest.raises(ConfigError, match="class 7's weights in the classifier's last layer are all zero"):
        ClassScoreStep(vgg16_random, zeroed, 7, l2_weight=1.0, tv_weight=1.0)


def test_classifier_from_a_full_checkpoint(tmp_path, vgg16_random):
    small = random_classifier(seed=2, hidden=16, classes=5, pool=2)
    state = {**vgg16_random.state, **{f"classifier.{i}.{p}": t for i, (w, b) in zip((0, 3, 6), small.layers)
                                      for p, t in (("weight", w), ("bias", b))}}
    torch.save(state, tmp_path / "full.pth")
    loaded = load_classifier(str(tmp_path / "full.pth"), "vgg16")
    assert loaded.pool == 2 and loaded.classes == 5
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(loaded.layers, small.layers))
    torch.save(vgg16_random.state, tmp_path / "features.pth")
    with pytest.raises(WeightsError, match="needs a full VGG checkpoint"):
        load_classifier(str(tmp_path / "features.pth"), "vgg16")
    state["classifier.3.weight"] = torch.ones(16, 7)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="classifier.3 takes 7 inputs, the layer before gives 16"):
        load_classifier(str(tmp_path / "broken.pth"), "vgg16")


def test_visualize_command(tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "visualize", "--class", "3", "-o", tmp_path / "v.png", "--size", "32",
                        "--iters", "3", "--weights", "random")
    assert code == 0, err
    assert "wrote" in err and "class 3: score" in err and Image.open(tmp_path / "v.png").size == (32, 32)


@pytest.mark.parametrize("flags,match", [(["--class", "-1"], "class index >= 0"),
                                         (["--class", "1000"], "classes 0-999"),
                                         (["--class", "1", "--l2-weight", "nan"], "--l2-weight must be"),
                                         (["--class", "1", "--size", "8"], "size must be between"),
                                         (["--class", "1", "--weights", "features.pth"], "full VGG checkpoint")])
def test_visualize_bad_values_are_one_line(tmp_path, monkeypatch, capsys, vgg16_random, flags, match):
    torch.save(vgg16_random.state, tmp_path / "features.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("styleengine.engine.visualize.ClassScoreStep.__init__",
                        lambda *a, **k: pytest.fail("work started"))
    code, err = run_cli(monkeypatch, capsys, "visualize", "-o", tmp_path / "v.png", "--weights", "random", *flags)
    assert code == 1 and len(err.strip().splitlines()) == 1 and match in err, err


def test_visualize_reads_the_classifier_of_torchvisions_download(monkeypatch, tmp_path, vgg16_random):
    """--weights imagenet: the classifier of the same hash-checked checkpoint the features come from."""
    small = random_classifier(seed=3, hidden=8, classes=4, pool=1)
    full = {**vgg16_random.state, **{f"classifier.{i}.{p}": t for i, (w, b) in zip((0, 3, 6), small.layers)
                                     for p, t in (("weight", w), ("bias", b))}}
    urls = []
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda url, dst, hash_prefix=None, progress=True: urls.append(url) or torch.save(full, dst))
    loaded = load_classifier("imagenet", "vgg16")
    assert loaded.classes == 4 and urls == ["https://download.pytorch.org/models/vgg16-397923af.pth"]
