"""Images in and out: decode anything PIL reads into float RGB, resize, write atomically.

Arrays are float32 (H, W, 3) RGB in [0, 1]; tensors are (1, 3, H, W). Every
bad input raises ImageError with a one-line message that names the file.
"""
from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from styleengine import paths
from styleengine.engine.schedule import long_side_shape  # noqa: F401  (callers read it here)
from styleengine.errors import ImageError, first_line

log = logging.getLogger(__name__)

FLOAT_SLACK = 1e-3  # float images may stray this far outside [0, 1] (rounding), and are clipped


def _composite(rgba: np.ndarray, backdrop: float = 1.0) -> np.ndarray:
    """(H, W, 4) float in [0, 1] -> (H, W, 3), alpha blended over the grey `backdrop` (white: 1)."""
    alpha = rgba[..., 3:4]
    return rgba[..., :3] * alpha + backdrop * (1.0 - alpha)


class _RangeError(ValueError):
    """Pixel values a float RGB image cannot honestly be made of; load_image names the file."""


def _check_range(values: np.ndarray, low: float, high: float, kind: str, expected: str) -> None:
    if not np.isfinite(values).all():
        raise _RangeError("has NaN or infinite pixel values")
    if values.size and (values.min() < low or values.max() > high):
        raise _RangeError(f"has {kind} pixel values from {values.min():g} to {values.max():g}; {kind} images are "
                          f"read as {expected}: rescale it or save it as 8 or 16 bits per channel")


LOADED = "loaded"  # _rawmode of a PNG whose pixels were decoded already: its bit depth is gone


def _oriented(img: Image.Image, what: str) -> Image.Image:
    """img turned as its EXIF orientation says; as stored (a warning naming `what`) where its EXIF cannot be
    read (not TIFF data: a PNG's eXIf chunk of anything; a value set by hand), as PIL's own corrupt-EXIF warning
    leaves it."""
    try:
        return ImageOps.exif_transpose(img) or img
    except paths.EXIF_FAULTS as e:
        paths.exif_unreadable(what, e)
        return img


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """img.convert(mode) applying its transparency, which PIL may refuse (a palette index past the palette, a
    key of another type: set by hand, or a 16-bit key PIL kept through convert('P')): _RangeError, one line."""
    try:
        return img.convert(mode)
    except (ValueError, TypeError, OverflowError) as e:  # OverflowError: a key past a C long (2**70)
        raise _RangeError(f"has a transparency PIL cannot apply ({img.mode} image, transparency "
                          f"{img.info.get('transparency')!r:.40}: {first_line(e)}); remove it from the image's "
                          f"info or pass the file's path") from None


def _rawmode(img: Image.Image) -> str | None:
    """How the file holds its pixels, as PIL's decoder was told ("L;4", "RGB;16B"), while they are not decoded
    yet: after the decode PIL keeps only the mode it made of them."""
    tile = getattr(img, "tile", None)
    args = tile[0].args if tile else None
    if isinstance(args, tuple) and args:
        args = args[0]
    if not tile:  # loaded, copied, cropped: PIL no longer says what its key means
        return LOADED
    return args if isinstance(args, str) else None


def _to_float_rgb(img: Image.Image, backdrop: float = 1.0, rawmode: str | None = None) -> np.ndarray:
    """Any PIL mode -> float32 (H, W, 3) RGB in [0, 1]; alpha over the grey `backdrop`. rawmode: _rawmode's,
    taken before the decode (None: not known; LOADED: an image decoded before it came here, its bit depth gone)."""
    mode = img.mode
    # a PNG's tRNS chunk: one grey level or colour that is transparent (palette images keep theirs per entry)
    keyed = img.info.get("transparency") if mode in ("1", "L", "RGB", "I", "I;16", "I;16B", "I;16L") else None
    if rawmode == LOADED and ((mode == "L" and isinstance(keyed, int) and 0 < keyed < 16)
                              or (mode == "RGB" and isinstance(keyed, tuple))):
        raise _RangeError("has a transparent colour (a PNG's tRNS key) and was loaded, copied or changed before it "
                          "was passed: PIL no longer says its bit depth, which decides the key's meaning; pass its "
                          "path or the image Image.open gives, or picture.convert('RGBA') for PIL's own reading")
    problem = paths.key_problem(mode, keyed, rawmode)
    if problem is not None:
        raise _RangeError(problem)
    if mode == "L" and isinstance(keyed, int) and rawmode in ("L;2", "L;4"):
        # PIL stretches 2- and 4-bit grey levels to 0-255 but leaves the key as the file holds it
        levels = (1 << int(rawmode[2:])) - 1
        grey = np.asarray(img, dtype=np.float32) / 255.0
        alpha = np.asarray(img) != keyed * (255 // levels)
        return _composite(np.stack([grey, grey, grey, alpha.astype(np.float32)], axis=2), backdrop
                          ).astype(np.float32)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG decodes as I;16 or I): full scale is 65535, not 255
        gray = np.asarray(img).astype(np.float64)
        _check_range(gray, 0.0, 65535.0, "integer", "0-65535")
        if rawmode == LOADED and gray.size and gray.max() <= 255:  # a value past 255 says 16 bits; none, nothing
            raise _RangeError(f"is a PIL image of mode {mode} with values 0-255 only that was loaded, copied or made "
                              f"in memory: PIL does not say whether they are 8-bit levels (convert('{mode}') of an "
                              f"8-bit picture) or a dark 16-bit picture; pass its path, the image Image.open gives, "
                              f"or a numpy array (uint8 for 0-255, uint16 for 0-65535)")
        grey = np.repeat((gray / 65535.0)[..., None], 3, axis=2)
        if isinstance(keyed, int):  # PIL's RGBA conversion drops a 16-bit key (and the low byte)
            return _composite(np.concatenate([grey, (gray != keyed)[..., None]], axis=2), backdrop).astype(np.float32)
        return grey.astype(np.float32)
    if mode == "F":
        # float images are taken as [0, 1]; anything else (NaN, inf, 0-255 floats, HDR values) is refused
        # rather than guessed at: dividing by 255 or clipping would silently change the picture
        gray = np.asarray(img, dtype=np.float64)
        _check_range(gray, -FLOAT_SLACK, 1.0 + FLOAT_SLACK, "float", "0-1")
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)
    if mode == "P":
        img = _convert(img, "RGBA") if "transparency" in img.info else img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("1", "L", "RGB") and keyed is not None:
        img = _convert(img, "RGBA")
    elif mode in ("1", "L"):
        img = img.convert("RGB")
    elif mode == "La":
        img = img.convert("LA")
    elif mode == "RGBa":
        img = img.convert("RGBA")
    if img.mode == "LA":
        la = np.asarray(img, dtype=np.float32) / 255.0
        return _composite(la[..., [0, 0, 0, 1]], backdrop).astype(np.float32)
    if img.mode == "RGBA":
        return _composite(np.asarray(img, dtype=np.float32) / 255.0, backdrop).astype(np.float32)
    if img.mode != "RGB":  # CMYK, YCbCr, LAB, HSV, ...
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


# files load_image decodes from bytes already read (by pin_key), not from the disk again: see reading()
_PINNED: contextvars.ContextVar[dict[str, bytes]] = contextvars.ContextVar("pinned", default={})


def pin_key(path: str | os.PathLike) -> str:
    """A path as named, made absolute without folding '..' (after a link it leads elsewhere) or following
    links (one retargeted between the read and the decode would lead to other bytes)."""
    return os.path.join(os.getcwd(), os.fspath(Path(path)))


@contextlib.contextmanager
def reading(pinned: dict[str, bytes]) -> Iterator[None]:
    """load_image decodes the files in `pinned` (pin_key -> bytes) from those bytes: the bytes a batch
    hashed are the bytes it runs on (read twice, a file swapped between the reads passed for the other)."""
    token = _PINNED.set(pinned)
    try:
        yield
    finally:
        _PINNED.reset(token)


def load_image(path: str | os.PathLike, role: str = "image", backdrop: float = 1.0) -> np.ndarray:
    """Decode `path` fully into float32 (H, W, 3) RGB in [0, 1]; `role` ("style image 2") names it in errors, in the
    words the dry run and the batch's checks use (paths.input_problem).

    Alpha is composited on white (a mask's on black: backdrop 0); palette, greyscale, CMYK, 16-bit and float
    images are converted. Missing, unreadable, non-image, truncated, tiny
    (< 32 px a side) and decompression-bomb files raise ImageError, and so
    do float images with NaN, inf or values outside [0, 1] (taken as 0-1,
    never rescaled by a guess) and 32-bit integer images outside 0-65535.
    A truncated file is an error under PIL's default; PIL's process-wide
    ImageFile.LOAD_TRUNCATED_IMAGES is the application's, left as it is.
    """
    paths.check_name(path, role, ImageError)
    paths.check_folder_ending(os.fspath(path))  # a str's "c.png/" (the API's): Path drops it, then read c.png
    path = paths.as_given(Path(path), role)  # as the messages show it
    problem = paths.input_problem(role, path)
    if problem is not None:
        raise ImageError(problem)
    try:
        pinned = _PINNED.get().get(pin_key(path))
        source = io.BytesIO(pinned) if pinned is not None else path
        with paths.image_errors(path, role, passes=(_RangeError,)), Image.open(source) as opened:
            rawmode = _rawmode(opened)
            _first_frame_said(opened, f"{role} {path}", once=True)
            opened.load()  # decode every byte now: truncation shows here, not later
            img = _oriented(opened, f"{role} {path}")
            size = img.size
            array = _to_float_rgb(img, backdrop, rawmode)
    except _RangeError as e:
        raise ImageError(f"refusing {role} {path}: it {e}") from None
    paths.check_sides(f"{role} {path}", (size[1], size[0]))
    return np.ascontiguousarray(array, dtype=np.float32)


_ANIMATIONS_SAID: set[str] = set()  # files said (a role and a path)


def _first_frame_said(image: Image.Image, what: str, once: bool = False) -> None:
    """A warning for an animation (GIF, APNG, WebP) of which only the first frame is read: it ran unsaid.
    `styleengine video` is named for a content image only: a style or init image is one picture there too.
    once: a file's (`what` names it), said once a process: a batch's jobs share their files."""
    frames = getattr(image, "n_frames", 1)
    if isinstance(frames, int) and frames > 1 and not (once and what in _ANIMATIONS_SAID):
        _ANIMATIONS_SAID.add(what)
        advice = " (`styleengine video` stylises every frame)" if what.startswith("content image") else ""
        log.warning("%s is an animation of %d frames: only its first is used%s", what, frames, advice)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor (or an (H, W, 3) array) -> (H, W, 3) float32 array."""
    if isinstance(image, np.ndarray):
        return np.asarray(image, dtype=np.float32)
    t = image.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    return t.permute(1, 2, 0).contiguous().numpy()


def resize_tensor(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 3, height, width): antialiased bicubic, clamped to [0, 1]."""
    if tuple(image.shape[2:]) == (height, width):
        return image
    out = torch.nn.functional.interpolate(image, size=(height, width), mode="bicubic",
                                          align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def resize(array: np.ndarray, long_side: int) -> np.ndarray:
    """(H, W, 3) array with its longer side scaled to `long_side`."""
    height, width = long_side_shape(array.shape[0], array.shape[1], long_side)
    return to_array(resize_tensor(to_tensor(array), height, width))


def to_pil(image: np.ndarray | torch.Tensor) -> Image.Image:
    """An image clamped to [0, 1] and rounded to 8 bits: what save_image writes."""
    array = np.clip(to_array(image), 0.0, 1.0)
    return Image.fromarray(np.round(array * 255.0).astype(np.uint8), "RGB")


def from_picture(picture: object, what: str) -> np.ndarray:
    """A path, a PIL image or an (H, W), (H, W, 3) or (H, W, 4) array -> float32 (H, W, 3) RGB in [0, 1].

    uint8 arrays are 0-255 (divided by 255, as PIL's pixels are); uint16 0-65535; float arrays must be in
    [0, 1] already: a 0-255 float array is refused, not guessed at (one line naming `what`)."""
    if isinstance(picture, (str, os.PathLike)):
        return load_image(picture, what)
    if isinstance(picture, Image.Image):
        if isinstance(picture, ImageFile.ImageFile) and picture.tile and picture.fp is None:
            raise ImageError(f"cannot read {what} (a PIL image): its file was closed before its pixels were read "
                             f"(call .load() inside the `with` block)")
        rawmode = _rawmode(picture)
        _first_frame_said(picture, what)
        try:
            picture.load()  # a closed image, or a lazy one whose file is truncated: before the pixels
        except (ValueError, OSError) as e:
            raise ImageError(f"cannot read {what} (a PIL image): {first_line(e)}") from None
        try:
            array = _to_float_rgb(_oriented(picture, what), rawmode=rawmode)
        except _RangeError as e:  # a 32-bit integer or float PIL image holding values no picture has
            raise ImageError(f"refusing {what}: it {e}") from None
    elif isinstance(picture, np.ndarray):
        _refuse_masked(picture, what)
        array = _array_to_float_rgb(np.asarray(picture), what)  # np.matrix is 2-D whatever is done to it
    else:
        raise ImageError(f"{what}: expected a path, a PIL image or a numpy array, got {type(picture).__name__}")
    paths.check_sides(what, array.shape)
    return np.ascontiguousarray(array, dtype=np.float32)


def _refuse_masked(array: object, what: str) -> None:
    if isinstance(array, np.ma.MaskedArray) and np.ma.is_masked(array):  # masked pixels hold no picture's
        raise ImageError(f"{what}: a masked array's masked pixels are not a picture's; fill them first "
                         f"(array.filled(value)) or pass array.data")


def check_loaded(array: object, what: str) -> None:
    """Refuse an array that is not what load_image gives (float (H, W, 3) in [0, 1]): the engine's stylise reads
    it as it is, so a uint8 picture ran as values 0-255 (a white result), a masked array its hidden values, no
    word. ImageError, naming `what`, with the entry that takes any picture."""
    _refuse_masked(array, what)
    if not (isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] == 3
            and np.issubdtype(array.dtype, np.floating)):
        got = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__)
        raise ImageError(f"{what}: the engine takes float (H, W, 3) arrays in [0, 1], as images.load_image gives "
                         f"them, got {got}; styleengine.stylise takes paths, PIL images and uint8 arrays")
    paths.check_sides(what, array.shape)  # an empty one divided by its zero side in the plan
    if not np.isfinite(array).all():
        raise ImageError(f"{what} has NaN or infinite values")
    low, high = float(array.min()), float(array.max())  # not empty: check_sides refused that
    if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
        advice = " (0-255 values: divide by 255)" if low >= 0 and 2 < high <= 255 else ""
        raise ImageError(f"{what} has values from {low:g} to {high:g}; the engine takes float arrays in [0, 1]"
                         f"{advice}")


def _array_to_float_rgb(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{what}: an image array is (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype.kind == "u" and array.dtype.itemsize == 2:  # either byte order (">u2" from a FITS or raw file)
        values = (array.astype(np.float64) / 65535.0).astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        try:
            _check_range(values, -FLOAT_SLACK, 1.0 + FLOAT_SLACK, "float", "0-1")
        except _RangeError as e:
            advice = "; for 0-255 values pass a uint8 array or divide by 255" if np.isfinite(values).all() else ""
            raise ImageError(f"{what} {e}{advice}") from None
        values = np.clip(values, 0.0, 1.0)
    else:
        raise ImageError(f"{what}: image arrays are uint8 (0-255), uint16 (0-65535) or float (0-1), "
                         f"got {array.dtype}")
    if values.ndim == 2:
        return np.repeat(values[..., None], 3, axis=2)
    return _composite(values) if values.shape[2] == 4 else values


def save_image(image: np.ndarray | torch.Tensor, path: str | os.PathLike, within: Path | None = None,
               text: dict[str, str] | None = None, within_fd: int | None = None, through: bool = True) -> str:
    """Write an image (clamped to [0, 1], rounded to 8 bits) atomically: a temp file, then os.replace; returns the
    sha256 of the bytes written. within: a folder the image must stay in, no symbolic link below it followed
    (paths.confined_writer); within_fd: that folder as opened before (its lock's). text: a PNG's text chunks.
    through: a link at `path` is written through (an output's), else replaced (a snapshot's)."""
    path = Path(path)
    fmt = paths.image_format(path)
    if not path.parent.is_dir():
        raise ImageError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir() and (within is None or not path.is_symlink()):  # a confined write replaces a link
        raise ImageError(f"cannot write {path}: it is a directory")
    pil = to_pil(image)
    try:
        encoded = io.BytesIO()
        if text and fmt == "PNG":
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            for key, value in text.items():
                info.add_text(key, value)
            pil.save(encoded, format=fmt, pnginfo=info)
        elif text and fmt == "JPEG":  # its comment segment, one key, as paths.marked reads it
            (key, value), = text.items()
            pil.save(encoded, format=fmt, comment=f"{key}: {value}".encode())
        else:
            pil.save(encoded, format=fmt)
        with paths.atomic_writer(path, through) if within is None else paths.confined_writer(path, within,
                                                                                             within_fd) as f:
            f.write(encoded.getbuffer())
    except OSError as e:  # "Read-only file system", as the other writes say it, not "[Errno 30] ...: 'path'"
        raise ImageError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
    except (ValueError, KeyError) as e:
        raise ImageError(f"cannot write {path}: {first_line(e)}") from None
    return hashlib.sha256(encoded.getbuffer()).hexdigest()


# YIQ (NTSC): Y is luminance, I and Q carry the chroma
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], dtype=np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


TEMP_FOLDERS = ("/tmp", "/var/tmp", "/usr/tmp")  # where Python looks for a temp folder after $TMPDIR, $TEMP, $TMP


def rescue_folders(folders: list[Path]) -> list[Path]:
    """Where `rescue(..., folders)` tries to save a picture, in order: `folders`, then the temp folder, then every
    folder Python would have taken for it (a $TMPDIR full at the first call is passed over for /tmp, unsaid: a
    later process with another temp folder looks in each)."""
    temp = [tempfile.gettempdir(), *(os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")), *TEMP_FOLDERS]
    return list(dict.fromkeys([*folders, *(Path(os.path.abspath(t)) for t in temp if t)]))


RESCUED = "-rescued-"  # in a rescued picture's name, after its output's name


def _rescued_prefix(output: Path) -> str:
    return f"{output.stem[:64]}{RESCUED}"


def rescue(image: np.ndarray | torch.Tensor, output: Path, folders: list[Path],
           avoid: Callable[[Path], bool] = lambda folder: False) -> Path | None:
    """Save `image`, whose write to `output` failed, as a new PNG in the first of `rescue_folders(folders)` that
    takes it, passing over those `avoid` names (a style folder, whose next run would read it as a style: a temp
    folder may be one); where it went, or None."""
    for folder in rescue_folders(folders):
        if avoid(folder):
            continue
        try:
            fd, name = tempfile.mkstemp(prefix=_rescued_prefix(output), suffix=".png", dir=folder)
        except (OSError, ValueError):
            continue
        os.close(fd)
        try:
            save_image(image, name)
            return Path(name)
        except ImageError:
            Path(name).unlink(missing_ok=True)
    return None


def rescued_copies(output: Path, folders: list[Path]) -> list[Path]:
    """The pictures `rescue(..., output, folders)` saved, in any of the folders it tries (a later start's look)."""
    pattern = f"{glob.escape(_rescued_prefix(output))}*.png"
    return [p for folder in rescue_folders(folders) for p in sorted(folder.glob(pattern)) if p.is_file()]


def rescued(saved: Path | None) -> str:
    """Where a picture whose write failed went, for the error line."""
    return f"saved the image to {saved} instead" if saved else "nor could a copy be saved; the image is lost"


def luminance(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float64 Y (YIQ)."""
    return array.astype(np.float64) @ _RGB_TO_YIQ[0]


def grey(y: np.ndarray) -> np.ndarray:
    """(H, W) luminance -> (H, W, 3) float32 RGB with Y in every channel, clipped to [0, 1]."""
    return np.repeat(np.clip(y, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)


def luminance_only(content: np.ndarray, styles: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Gatys et al. 2017's luminance-only transfer, before the loop: the content's luminance, and each style's
    luminance with its mean and standard deviation matched to the content's (L' = s_c / s_s (L - m_s) + m_c),
    each as Y in all three channels. A flat style (s_s 0) becomes the content's mean."""
    y_content = luminance(content)
    mean, std = y_content.mean(), y_content.std()
    matched = []
    for style in styles:
        y = luminance(style)
        spread = y.std()
        # clipped to [0, 1] by grey(): the pixels the loop and the steps take (the paper does not say)
        matched.append(grey((y - y.mean()) * (std / spread if spread > 0 else 0.0) + mean))
    return grey(y_content), matched


def preserve_colors(output: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Luminance of `output` with the chroma of `content` (neural-style's -original_colors 1, in YIQ).

    Not in Gatys et al. 2016 (their later paper on colour preservation).
    `content` is resized to the output's size if needed.
    """
    if content.shape[:2] != output.shape[:2]:
        content = to_array(resize_tensor(to_tensor(content), output.shape[0], output.shape[1]))
    out_yiq = output.astype(np.float64) @ _RGB_TO_YIQ.T
    content_yiq = content.astype(np.float64) @ _RGB_TO_YIQ.T
    mixed = np.concatenate([out_yiq[..., :1], content_yiq[..., 1:]], axis=2)
    return np.clip(mixed @ _YIQ_TO_RGB.T, 0.0, 1.0).astype(np.float32)
