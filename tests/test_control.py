"""Gatys et al. 2017's perceptual controls: luminance-only transfer and spatial masks (guided Grams)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from styleengine.engine import images
from styleengine.engine.settings import Settings
from styleengine.engine.stylise import stylise

try:
    from test_cli import FAST, assert_one_line_error, pics, run_cli  # noqa: F401  (fixture)
except ImportError:
    from tests.test_cli import FAST, assert_one_line_error, pics, run_cli  # noqa: F401

TINY = Settings(size=48, iterations=3, weights="random", model="vgg16", backend="torch", device="cpu",
                precision="fp32", conv="direct", tv_weight=0.0, style_weight=1.0)
_YIQ_TO_RGB = np.linalg.inv(np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                                      [0.211456, -0.522591, 0.311135]]))


def _from_yiq(y: np.ndarray, i: np.ndarray, q: np.ndarray) -> np.ndarray:
    rgb = np.stack([y, i, q], axis=2) @ _YIQ_TO_RGB.T
    assert rgb.min() >= 0 and rgb.max() <= 1  # chosen so that nothing clips: Y is exactly the one given
    return rgb.astype(np.float32)


def _pictures(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A content, and two styles of the same luminance but opposite colours."""
    rng = np.random.default_rng(seed)
    shape = (40, 48)
    content = _from_yiq(0.3 + 0.4 * rng.random(shape), 0.1 * rng.random(shape) - 0.05,
                        0.1 * rng.random(shape) - 0.05)
    y = 0.45 + 0.1 * rng.random(shape)  # darker and flatter than the content: the match has work to do
    reddish = _from_yiq(y, np.full(shape, 0.12), np.full(shape, 0.05))
    bluish = _from_yiq(y, np.full(shape, -0.12), np.full(shape, -0.05))
    return content, reddish, bluish


# ---- luminance-only ----

def test_luminance_only_matches_the_style_luminance_to_the_content():
    content, style, _ = _pictures()
    grey_content, (grey_style,) = images.luminance_only(content, [style])
    for grey in (grey_content, grey_style):
        assert grey.shape == content.shape and grey.dtype == np.float32
        assert (grey == grey[..., :1]).all()  # Y in all three channels
    np.testing.assert_allclose(grey_content[..., 0], images.luminance(content), atol=1e-6)
    y = grey_style[..., 0].astype(np.float64)
    y_content = images.luminance(content)
    assert abs(y.mean() - y_content.mean()) < 1e-4 and abs(y.std() - y_content.std()) < 1e-4
    # a flat style has no spread to match: it takes the content's mean
    flat = np.full_like(style, 0.2)
    assert np.allclose(images.luminance_only(content, [flat])[1][0], y_content.mean(), atol=1e-6)


def test_luminance_only_ignores_the_style_colours_and_keeps_the_content_ones():
    """Two styles of one luminance and opposite colours give one result under --luminance-only; with
    --preserve-colors (colours swapped after the loop) the style's colours drove the loop, and they differ."""
    content, reddish, bluish = _pictures()
    luminance = dataclasses.replace(TINY, luminance_only=True)
    out_red, _ = stylise(content, [reddish], luminance)
    out_blue, _ = stylise(content, [bluish], luminance)
    np.testing.assert_allclose(out_red, out_blue, atol=1e-5)  # the same grey pictures, but for float32 rounding
    preserved = dataclasses.replace(TINY, preserve_colors=True)
    assert np.abs(stylise(content, [reddish], preserved)[0] - stylise(content, [bluish], preserved)[0]).max() > 1e-3
    # the colours are the content's: giving them again changes nothing but clipped pixels
    resized = images.resize(content, TINY.size)
    again = images.preserve_colors(out_red, resized)
    assert np.abs(again - out_red).max(axis=2).mean() < 2e-3


def test_luminance_only_runs_on_the_ort_backend():
    """Pre- and post-processing around the loop: a graph step runs it as the torch step does."""
    pytest.importorskip("onnxruntime")
    content, reddish, _ = _pictures()
    settings = dataclasses.replace(TINY, luminance_only=True, iterations=2)
    torch_out, _ = stylise(content, [reddish], settings)
    ort_out, _ = stylise(content, [reddish], dataclasses.replace(settings, backend="ort", provider="cpu"))
    np.testing.assert_allclose(ort_out, torch_out, atol=5e-3)


def test_luminance_only_flag(tmp_path, monkeypatch, capsys, pics):
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--luminance-only")
    assert code == 0, err
    result, content = images.load_image(out), images.load_image(pics["content"])
    close = np.abs(images.preserve_colors(result, content) - result).max(axis=2) <= 6 / 255
    assert close.mean() > 0.95  # the content's colours
