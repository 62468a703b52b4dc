"""engine/images.py: every mode converts to the right RGB, every bad file is one ImageError."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine.engine import images
from styleengine.errors import ImageError


def save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


# ------------------------------------------------------------------ conversions

def test_rgb_png_round_values(tmp_path):
    arr = np.zeros((40, 50, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 255, 128, 7
    out = images.load_image(save(tmp_path, Image.fromarray(arr), "a.png"))
    assert out.shape == (40, 50, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [1.0, 128 / 255, 7 / 255], atol=1e-6)


def test_grayscale(tmp_path):
    out = images.load_image(save(tmp_path, Image.new("L", (40, 40), 128), "g.png"))
    np.testing.assert_allclose(out[5, 5], [128 / 255] * 3, atol=1e-6)


def test_one_bit(tmp_path):
    out = images.load_image(save(tmp_path, Image.new("1", (40, 40), 1), "b.png"))
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    img.putpixel((1, 1), (255, 0, 0, 255))
    img.putpixel((2, 2), (0, 0, 0, 128))
    out = images.load_image(save(tmp_path, img, "a.png"))
    np.testing.assert_allclose(out[0, 0], [1, 1, 1], atol=1e-6)  # transparent -> white
    np.testing.assert_allclose(out[1, 1], [1, 0, 0], atol=1e-6)  # opaque red stays red
    np.testing.assert_allclose(out[2, 2], [1 - 128 / 255] * 3, atol=1e-6)  # half black over white


def test_la_composited_on_white(tmp_path):
    img = Image.new("LA", (40, 40), (0, 0))
    img.putpixel((1, 1), (0, 255))
    out = images.load_image(save(tmp_path, img, "la.png"))
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])
    np.testing.assert_allclose(out[1, 1], [0, 0, 0])


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 255, 0] + [0, 0, 255] + [0] * 762)
    img.putpixel((3, 3), 1)
    out = images.load_image(save(tmp_path, img, "p.png"))
    np.testing.assert_allclose(out[0, 0], [0, 1, 0])
    np.testing.assert_allclose(out[3, 3], [0, 0, 1])
    out = images.load_image(save(tmp_path, img, "pt.png", transparency=0))
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])  # transparent index -> white
    np.testing.assert_allclose(out[3, 3], [0, 0, 1])


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    out = images.load_image(save(tmp_path, img, "c.tif"))
    np.testing.assert_allclose(out[0, 0], [1, 0, 0], atol=1e-6)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_scaled_not_clipped(tmp_path, mode):
    arr = np.full((40, 40), 32768, np.uint16)
    arr[0, 0], arr[0, 1] = 65535, 0
    img = Image.frombytes(mode, (40, 40), arr.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    path = save(tmp_path, img, "s.png")
    out = images.load_image(path)
    np.testing.assert_allclose(out[5, 5], [32768 / 65535] * 3, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])
    np.testing.assert_allclose(out[0, 1], [0, 0, 0])


def test_mode_i(tmp_path):
    img = Image.fromarray(np.full((40, 40), 16384, np.int32), "I")
    path = save(tmp_path, img, "i.tif")  # older PIL decodes 16-bit PNGs as mode I
    with Image.open(path) as check:
        assert check.mode == "I"
    np.testing.assert_allclose(images.load_image(path)[0, 0], [16384 / 65535] * 3, atol=1e-6)


def test_float_tiff(tmp_path):
    img = Image.fromarray(np.full((40, 40), 0.25, np.float32), "F")
    np.testing.assert_allclose(images.load_image(save(tmp_path, img, "f.tif"))[0, 0], [0.25] * 3, atol=1e-6)


# ------------------------------------------------------------------ bad inputs

def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (the pixel data is never reached)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"missing": tmp_path / "missing.png", "directory": tmp_path / "adir.png"}
    files["directory"].mkdir()
    files["not_image"] = tmp_path / "text.png"
    files["not_image"].write_text("hello, not a picture\n")
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for suffix in ("png", "jpg"):
        full = tmp_path / f"full.{suffix}"
        noisy.save(full)
        data = full.read_bytes()
        files[f"truncated_{suffix}"] = tmp_path / f"truncated.{suffix}"
        files[f"truncated_{suffix}"].write_bytes(data[: len(data) // 2])
    files["tiny"] = tmp_path / "tiny.png"
    Image.new("RGB", (64, 20)).save(files["tiny"])
    files["bomb"] = tmp_path / "bomb.png"
    files["bomb"].write_bytes(png_header_claiming(100_000, 100_000))  # over 2x the limit: PIL's error
    files["bomb_warning"] = tmp_path / "bomb_warning.png"
    files["bomb_warning"].write_bytes(png_header_claiming(10_000, 10_000))  # over 1x: PIL only warns
    return files


BAD = ["missing", "directory", "not_image", "truncated_png", "truncated_jpg", "tiny", "bomb", "bomb_warning"]


@pytest.mark.parametrize("case", BAD)
def test_bad_files_raise_one_line_image_error(tmp_path, case):
    path = bad_files(tmp_path)[case]
    with pytest.raises(ImageError) as info:
        images.load_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_bomb_keeps_pil_default_limit(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=f"over the limit of {before} past which"):
        images.load_image(bad_files(tmp_path)["bomb_warning"])
    assert Image.MAX_IMAGE_PIXELS == before


# ------------------------------------------------------------------ resize, tensors, save

def test_tensor_round_trip_and_resize():
    arr = np.random.default_rng(1).random((60, 90, 3), dtype=np.float32)
    t = images.to_tensor(arr)
    assert t.shape == (1, 3, 60, 90)
    np.testing.assert_array_equal(images.to_array(t), arr)
    small = images.resize(arr, 45)
    assert small.shape == (30, 45, 3) and small.min() >= 0 and small.max() <= 1
    assert images.long_side_shape(512, 341, 256) == (256, 170)


def test_resize_is_antialiased():
    stripes = np.zeros((64, 64, 3), np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes: an antialiased 4x reduction is flat grey
    small = images.resize(stripes, 16)
    np.testing.assert_allclose(small[:, 1:-1], 0.5, atol=0.02)  # the border columns see the padding


def test_save_image_rounds_clamps_and_reads_back(tmp_path):
    arr = np.zeros((40, 40, 3), np.float32)
    arr[0, 0] = [0.5, 1.7, -0.3]
    images.save_image(torch.from_numpy(arr).permute(2, 0, 1)[None], tmp_path / "o.png")
    back = np.asarray(Image.open(tmp_path / "o.png"))
    assert tuple(back[0, 0]) == (128, 255, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temp file left
    images.save_image(arr, tmp_path / "o.jpg")
    assert Image.open(tmp_path / "o.jpg").format == "JPEG"


@pytest.mark.parametrize("name", ["nofolder/o.png", "o.unknownsuffix", "o"])
def test_save_image_refuses(tmp_path, name):
    with pytest.raises(ImageError):
        images.save_image(np.zeros((40, 40, 3), np.float32), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_load_image_leaves_pils_truncation_flag_alone(tmp_path, monkeypatch):
    """PIL's LOAD_TRUNCATED_IMAGES is process-wide, the application's: reading an image does not set it."""
    from PIL import ImageFile

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    images.load_image(tmp_path / "a.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_writes_never_change_the_umask(tmp_path, monkeypatch):
    """An atomic write (an image, a cache file) makes the file 0666 less the umask without setting the
    umask, which is the process's: setting it to read it let other threads create files with umask 0."""
    import os
    import stat

    from styleengine import paths

    previous = os.umask(0o027)
    try:
        calls = []
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o027)
        images.save_image(np.zeros((40, 40, 3), np.float32), tmp_path / "o.png")
        paths.atomic_write(tmp_path / "data.json", b"{}")
        monkeypatch.undo()
    finally:
        os.umask(previous)
    assert calls == []
    for name in ("o.png", "data.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "o.png"]  # no temp file left


def test_save_image_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "o.png"
    target.write_bytes(b"old")

    def broken(self, fp, format=None, **params):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(ImageError, match="disk full"):
        images.save_image(np.zeros((40, 40, 3), np.float32), target)
    assert target.read_bytes() == b"old"  # the old file is untouched: atomic replace
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_preserve_colors_keeps_output_luminance_and_content_chroma():
    rng = np.random.default_rng(2)
    content = 0.25 + 0.5 * rng.random((40, 40, 3), dtype=np.float32)
    gray = np.repeat(0.25 + 0.5 * rng.random((40, 40, 1), dtype=np.float32), 3, axis=2)
    out = images.preserve_colors(gray, content)
    luminance = np.array([0.299, 0.587, 0.114], np.float32)
    ok = (out > 0.001).all(axis=2) & (out < 0.999).all(axis=2)  # where nothing was clipped
    assert ok.mean() > 0.9
    np.testing.assert_allclose((out @ luminance)[ok], (gray @ luminance)[ok], atol=2e-3)
    # chroma: out minus its luminance equals content minus its luminance
    chroma_out = out - (out @ luminance)[..., None]
    chroma_content = content - (content @ luminance)[..., None]
    np.testing.assert_allclose(chroma_out[ok], chroma_content[ok], atol=2e-3)
    np.testing.assert_allclose(images.preserve_colors(content, content), content, atol=1e-5)
