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


def test_preserve_colors_is_the_normal_loop_with_its_colours_swapped():
    """What examples/control_figures.py relies on to draw the --preserve-colors panel without a second loop."""
    content, reddish, _ = _pictures()
    normal, _ = stylise(content, [reddish], TINY)
    preserved, _ = stylise(content, [reddish], dataclasses.replace(TINY, preserve_colors=True))
    np.testing.assert_array_equal(preserved, images.preserve_colors(normal, images.resize(content, TINY.size)))


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


# ---- spatial control: guided Grams ----

def _numpy_guided_loss(f: np.ndarray, masks: np.ndarray, targets: np.ndarray) -> float:
    """The guided style term by its definition, for masks whose pooling to the layer is block means."""
    channels, height, width = f.shape
    ry, rx = masks.shape[1] // height, masks.shape[2] // width
    total = 0.0
    for mask, target in zip(masks, targets):
        m = mask.reshape(height, ry, width, rx).mean(axis=(1, 3)).reshape(-1)
        fm = f.reshape(channels, -1) * m
        mass = (m**2).sum()
        total += mass / (height * width) * (((fm @ fm.T) / mass - target) ** 2).sum() / (4 * channels**2)
    return total


def test_guided_style_term_matches_its_definition_and_is_the_plain_one_for_one_full_region():
    import torch

    from styleengine.engine.losses import guided_style_layer_loss, style_layer_loss

    rng = np.random.default_rng(3)
    f = rng.random((1, 6, 4, 5))
    masks = np.zeros((2, 8, 10))
    masks[0, :, :4] = 1.0
    masks[1, :, 4:] = 0.7
    masks[1, :3] = 0.25  # soft weights, not block-aligned with the regions above
    targets = rng.random((2, 6, 6))
    ft, mt, tt = torch.from_numpy(f), torch.from_numpy(masks), torch.from_numpy(targets)
    got = float(guided_style_layer_loss(ft, mt, tt))
    assert got == pytest.approx(_numpy_guided_loss(f[0], masks, targets), rel=1e-12)
    # one region of all ones, its target the Gram mean: E_l of the whole image exactly
    gram = torch.from_numpy(rng.random((6, 6)))
    plain = style_layer_loss(ft, gram * 20)
    full = guided_style_layer_loss(ft, torch.ones(1, 8, 10, dtype=torch.float64), (gram * 20 / 20)[None])
    assert float(full) == pytest.approx(float(plain), rel=1e-12)
    ft.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: guided_style_layer_loss(x, mt, tt), (ft,))


def test_a_style_mask_takes_the_style_image_s_own_region():
    """A style mask on the left half: the region's target is the mean of f f^T over the left half's positions."""
    import torch

    from styleengine.engine.losses import region_grams

    rng = np.random.default_rng(4)
    f = torch.from_numpy(rng.random((1, 5, 4, 6)))
    left = torch.zeros(8, 12, dtype=torch.float64)
    left[:, :6] = 1.0
    got = region_grams([{"relu1_1": f}, {"relu1_1": f}], [left, None])["relu1_1"]
    half = f[0, :, :, :3].reshape(5, -1)
    whole = f[0].reshape(5, -1)
    torch.testing.assert_close(got[0], half @ half.T / half.shape[1])
    torch.testing.assert_close(got[1], whole @ whole.T / whole.shape[1])


def _masks(tmp_path, height: int, width: int, split: int) -> tuple[str, str]:
    from PIL import Image

    left = np.zeros((height, width), np.uint8)
    left[:, :split] = 255
    paths = str(tmp_path / "left.png"), str(tmp_path / "right.png")
    Image.fromarray(left).save(paths[0])
    Image.fromarray(255 - left).save(paths[1])
    return paths


def test_one_white_mask_is_the_run_without_masks(tmp_path):
    from PIL import Image

    content, style, _ = _pictures()
    white = tmp_path / "white.png"
    Image.fromarray(np.full((80, 96), 255, np.uint8)).save(white)  # twice the size: resized to the content
    plain, plain_result = stylise(content, [style], TINY)
    masked, masked_result = stylise(content, [style], dataclasses.replace(TINY, content_masks=(str(white),)))
    np.testing.assert_allclose(masked, plain, atol=1e-4)
    assert masked_result.distances.style == pytest.approx(plain_result.distances.style, rel=1e-4)


def test_two_styles_paint_their_own_regions(tmp_path):
    """Left half one style, right half the other: each half ends nearer its own style's Grams than the other's
    (measured with the same network), and swapping the masks swaps that."""
    import torch

    from styleengine.engine.losses import guided_gram
    from styleengine.engine.stylise import load_run_weights
    from styleengine.engine.steps import TorchStep

    rng = np.random.default_rng(5)
    content = np.full((48, 48, 3), 0.5, np.float32) + 0.05 * rng.random((48, 48, 3)).astype(np.float32)
    smooth = np.repeat(np.linspace(0.1, 0.9, 48, dtype=np.float32)[None, :, None], 48, axis=0).repeat(3, axis=2)
    noisy = rng.random((48, 48, 3)).astype(np.float32)
    left, right = _masks(tmp_path, 48, 48, 24)
    settings = dataclasses.replace(TINY, iterations=20, content_weight=1e-3, style_weight=10.0)
    step = TorchStep(load_run_weights(settings), settings.loss_config(), conv="direct")
    layer = "relu2_1"
    half = torch.zeros(48, 48)
    half[:, :24] = 1.0

    def nearer(out: np.ndarray, mask: torch.Tensor) -> str:
        feats = step.features(images.to_tensor(out), [layer])[layer]
        mean = guided_gram(feats, mask)[0]
        gaps = {name: float((mean - guided_gram(step.features(images.to_tensor(s), [layer])[layer], None)[0]).norm())
                for name, s in (("smooth", smooth), ("noisy", noisy))}
        return min(gaps, key=gaps.__getitem__)

    out, _ = stylise(content, [smooth, noisy], dataclasses.replace(settings, content_masks=(left, right)))
    assert (nearer(out, half), nearer(out, 1 - half)) == ("smooth", "noisy")
    swapped, _ = stylise(content, [smooth, noisy], dataclasses.replace(settings, content_masks=(right, left)))
    assert (nearer(swapped, half), nearer(swapped, 1 - half)) == ("noisy", "smooth")


def _grey(path, height: int, width: int, value: int = 255, split: int | None = None, right: bool = False) -> str:
    """A mask file: `value` everywhere, or white left of column `split` (right: white from there on)."""
    from PIL import Image

    array = np.full((height, width), value, np.uint8)
    if split is not None:
        array[:, split:] = 0
        array = 255 - array if right else array
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("one mask, two styles", "1 --content-mask files for 2 style images"),
    ("another aspect ratio", "needs its image's aspect ratio"),
    ("black", "is black everywhere"),
    ("not an image", "not an image"),
    ("overlapping", "the content masks sum to 2.00"),
    ("style mask alone", "--style-mask needs --content-mask"),
    ("style mask count", "1 --style-mask files for 2 --content-mask files"),
    ("ort", "run on the torch backend only"),
    ("tile", "runs untiled"),
    ("blend", "--style-blend does not apply"),
])
def test_bad_masks_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, pics, case, message):
    out = tmp_path / "out.png"
    left = _grey(tmp_path / "left.png", 48, 40, split=20)
    right = _grey(tmp_path / "right.png", 96, 80, split=40, right=True)  # at twice the size: resized
    flags = {
        "one mask, two styles": ["--content-mask", left],
        "another aspect ratio": ["--content-mask", f"{left},{_grey(tmp_path / 'wide.png', 40, 80)}"],
        "black": ["--content-mask", f"{left},{_grey(tmp_path / 'black.png', 48, 40, value=0)}"],
        "not an image": ["--content-mask", f"{left},{tmp_path / 'notes.png'}"],
        "overlapping": ["--content-mask", f"{left},{_grey(tmp_path / 'white.png', 48, 40)}"],
        "style mask alone": ["--style-mask", f"{left},{right}"],
        "style mask count": ["--content-mask", f"{left},{right}", "--style-mask", left],
        "ort": ["--content-mask", f"{left},{right}", "--backend", "ort"],
        "tile": ["--content-mask", f"{left},{right}", "--tile", "16"],
        "blend": ["--content-mask", f"{left},{right}", "--style-blend", "1,2"],
    }[case]
    (tmp_path / "notes.png").write_text("not a picture")
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], pics["style2"], "-o", out,
                           *FAST, *flags)
    assert_one_line_error(code, err, out)
    assert message in err


def test_masks_flags_run_and_auto_picks_torch(tmp_path, monkeypatch, capsys, pics):
    from styleengine.engine import capability

    out = tmp_path / "out.png"
    left = _grey(tmp_path / "left.png", 48, 40, split=20)
    right = _grey(tmp_path / "right.png", 48, 40, split=20, right=True)
    style_left = _grey(tmp_path / "style_left.png", 56, 56, split=28)
    code, stdout, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], pics["style2"], "-o", out,
                                *FAST, "--content-mask", f"{left},{right}", "--style-mask",
                                f"{style_left},{_grey(tmp_path / 'all.png', 40, 48)}")
    assert code == 0, err
    assert images.load_image(out).shape == (48, 40, 3)
    for where in ("cpu", "cuda"):
        options = capability.candidates("auto", where, "auto", "auto", torch_only=capability.MASKS)
        assert {b for b, _, _ in options} == {"torch"}
    assert capability.refusal("tensorrt", "cuda", "auto", "auto", torch_only=capability.MASKS) == capability.MASKS


def test_a_budget_that_needs_tiles_is_refused_with_masks():
    from styleengine.engine.plan import make_plan
    from styleengine.errors import ConfigError

    settings = Settings(size=2048, mem_budget_gib=4, model="vgg16")
    assert make_plan(settings, (1000, 1500), [(800, 600), (800, 600)]).scales[-1].tile is not None
    with pytest.raises(ConfigError, match="--content-mask runs untiled"):
        make_plan(dataclasses.replace(settings, content_masks=("a.png", "b.png")), (1000, 1500),
                  [(800, 600), (800, 600)])
