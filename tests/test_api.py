"""styleengine.stylise for notebooks: paths, PIL images, uint8 and float arrays give the same picture; bad
arrays and settings are one line; `import styleengine` stays torch-free."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import styleengine
from styleengine.errors import ConfigError, ImageError, UserError

TINY = dict(size=40, iterations=3, weights="random", model="vgg16", device="cpu", backend="torch", precision="fp32",
            conv="direct")


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(1)
    content = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    style = rng.integers(0, 256, (44, 44, 3), dtype=np.uint8)
    Image.fromarray(content).save(tmp_path / "content.png")
    return content, style, tmp_path / "content.png"


def test_every_form_of_a_picture_gives_the_same_result(pictures):
    content, style, path = pictures
    forms = {"uint8": content, "PIL": Image.fromarray(content), "float": content.astype(np.float64) / 255.0,
             "path": str(path)}
    results = {name: np.asarray(styleengine.stylise(form, style, **TINY)) for name, form in forms.items()}
    reference = results.pop("uint8")
    assert reference.dtype == np.uint8 and reference.shape == (33, 40, 3)
    for name, result in results.items():
        assert np.array_equal(result, reference), name


def test_a_list_of_styles_and_a_texture(pictures):
    content, style, _ = pictures
    image = styleengine.stylise(content, [style, Image.fromarray(style[::-1])], style_blend=(1, 3), **TINY)
    assert image.size == (40, 33)
    assert styleengine.stylise(None, style, **TINY).size == (40, 40)


@pytest.mark.parametrize("bad,match", [
    (np.full((40, 40, 3), 255.0), r"content image has float pixel values from 255 to 255.*uint8 array or divide "),
    (np.full((40, 40, 3), np.nan), "NaN"),
    (np.zeros((40, 40, 3), dtype=np.int64), "uint8.*got int64"),
    (np.zeros((40, 40, 2), dtype=np.uint8), r"shape \(40, 40, 2\)"),
    (np.zeros((20, 40, 3), dtype=np.uint8), "at least 32 px"),
    ([[0, 1]], "got list"),
])
def test_bad_arrays_are_one_line(pictures, bad, match):
    _, style, _ = pictures
    with pytest.raises(ImageError, match=match) as info:
        styleengine.stylise(bad, style, **TINY)
    assert "\n" not in str(info.value) and isinstance(info.value, UserError)


def test_grey_and_rgba_arrays(pictures):
    _, style, _ = pictures
    grey = np.random.default_rng(2).integers(0, 256, (40, 40), dtype=np.uint8)
    as_rgb = np.asarray(styleengine.stylise(grey, style, **TINY))
    opaque = np.concatenate([np.repeat(grey[..., None], 3, axis=2), np.full((40, 40, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(np.asarray(styleengine.stylise(opaque, style, **TINY)), as_rgb)


def test_bad_settings_are_one_line(pictures):
    content, style, _ = pictures
    with pytest.raises(ConfigError, match="unknown setting 'iters'; did you mean iterations"):
        styleengine.stylise(content, style, iters=3)
    with pytest.raises(ConfigError, match="^tv_weight must be"):  # the keyword as given
        styleengine.stylise(content, style, **{**TINY, "tv_weight": -1.0})


def test_import_styleengine_does_not_import_torch():
    code = "import sys, styleengine; assert callable(styleengine.stylise); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("which", ["content", "style"])
@pytest.mark.parametrize("picture, says", [
    (Image.fromarray(np.full((40, 48), 70000, np.int32)), "integer pixel values"),
    (Image.fromarray(np.full((40, 48), np.nan, np.float32)), "NaN"),
])
def test_a_pil_image_with_values_no_picture_has_is_one_line_naming_it(pictures, which, picture, says):
    """A 32-bit integer or float PIL image out of range raised the private _RangeError, naming no picture
    (probe 6); load_image already refused the same pixels from a file as an ImageError."""
    content, style, _ = pictures
    args = (picture, style) if which == "content" else (content, picture)
    with pytest.raises(ImageError, match=f"{which} image.*{says}") as info:
        styleengine.stylise(*args, **TINY)
    assert "\n" not in str(info.value)
