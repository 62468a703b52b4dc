"""The distances' cost (engine/quality.py, engine/stylise.py): one forward pass per reading, and none again for
the final image when the loop's last reading already measured it. Random VGG16 weights, 32 px."""
from __future__ import annotations

import numpy as np
import pytest

from styleengine.engine import stylise as stylise_module
from styleengine.engine.losses import LossConfig
from styleengine.engine.quality import distances
from styleengine.engine.steps import TorchStep, make_targets
from styleengine.engine.stylise import Settings, stylise
from styleengine.engine.tiled import TiledStep


def _counted(step, monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    inner = step._features

    def counted(image, names):
        calls.append(list(names))
        return inner(image, names)

    monkeypatch.setattr(step, "_features", counted)
    return calls


def test_a_reading_is_one_forward_pass_and_equals_the_two_pass_one(vgg16_random, make_image, monkeypatch):
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "relu2_2"))
    step = TorchStep(vgg16_random, loss)
    content, style, image = make_image(32, 32, 1), make_image(32, 32, 2), make_image(32, 32, 3)
    targets = make_targets(step, loss, content, [style])
    grams, feats = step.grams(image, list(loss.style_layers)), step.features(image, list(loss.content_layers))
    calls = _counted(step, monkeypatch)
    got = distances(step, image, targets, loss)
    assert calls == [["relu1_1", "relu2_1", "relu2_2"]]  # one pass, relu2_2 once
    for n in loss.style_layers:
        want = float((grams[n] - targets.grams[n]).double().norm() / targets.grams[n].double().norm())
        assert got.style_layers[n] == pytest.approx(want, rel=1e-6)
    want = float((feats["relu2_2"] - targets.content["relu2_2"]).double().norm()
                 / targets.content["relu2_2"].double().norm())
    assert got.content_layers["relu2_2"] == pytest.approx(want, rel=1e-6)


def test_a_tiled_step_keeps_its_own_grams(vgg16_random, make_image):
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"))
    inner = TorchStep(vgg16_random, loss)
    tiled = TiledStep(inner, loss, "vgg16", tile=16)
    content, style, image = make_image(32, 32, 1), make_image(32, 32, 2), make_image(32, 32, 3)
    targets = make_targets(inner, loss, content, [style])
    whole, by_tiles = distances(inner, image, targets, loss), distances(tiled, image, targets, loss)
    assert by_tiles.style == pytest.approx(whole.style, rel=1e-4)
    assert by_tiles.content == pytest.approx(whole.content, rel=1e-4)


def test_the_final_image_is_not_measured_twice(vgg16_random, monkeypatch):
    calls = []
    inner = stylise_module.distances

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(stylise_module, "distances", counted)
    rng = np.random.default_rng(0)
    content, style = rng.random((32, 40, 3), dtype=np.float32), rng.random((40, 40, 3), dtype=np.float32)
    settings = Settings(size=40, iterations=4, distance_every=2, model="vgg16", weights="random",
                        backend="torch", device="cpu", precision="fp32", scales=1)
    _, result = stylise(content, [style], settings, weights=vgg16_random)
    assert len(calls) == 2  # iterations 2 and 4; the final image is iteration 4's
    assert result.distances == result.records[-1].distances and result.distances is not None
