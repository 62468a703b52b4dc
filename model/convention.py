"""How an RGB image in [0, 1] becomes a network's input (torch-free: settings carry one)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path


# the network input's scale and shift: caffe's are 255 and -124, torchvision's 4.4 and -2.1; past these bounds the
# features overflow or underflow float32 (a scale of 1e-37 gave an all-black NaN picture, exit 0)
INPUT_SCALE = (1e-3, 1e5)
INPUT_SHIFT = 1e5
HEADER_LIMIT = 100_000_000  # a safetensors header past this is refused by its reader too


@dataclass(frozen=True)
class Convention:
    """How an RGB image in [0, 1] becomes the network's input."""

    channel_order: str  # "RGB" or "BGR"
    pixel_range: float  # 1.0 or 255.0: the input is pixel * pixel_range
    mean: tuple[float, float, float]  # in channel_order, in pixel_range units
    std: tuple[float, float, float]

    def to_json(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ConfigError unless every field can work (check_fields) and together they keep features within
        float32 (range_problem)."""
        from styleengine.errors import ConfigError

        self.check_fields()
        problem = self.range_problem()
        if problem is not None:
            raise ConfigError(f"input pixel range {self.pixel_range:g}, mean {_numbers(self.mean)} and std "
                              f"{_numbers(self.std)} {problem}")

    def check_fields(self) -> None:
        """SettingError unless each field can work: RGB/BGR, a finite range > 0, three finite means, three
        finite stds > 0 (a zero std divides by zero)."""
        import math

        from styleengine.errors import SettingError

        # one field's fault is a SettingError of the setting of that name (a front end says it as given)
        if self.channel_order not in ("RGB", "BGR"):
            raise SettingError("channel_order", "input channel order", f"must be RGB or BGR, got "
                                                                      f"{self.channel_order!r}")
        if not (self.pixel_range > 0 and math.isfinite(self.pixel_range)):
            raise SettingError("pixel_range", "input pixel range", f"must be a finite number > 0, got "
                                                                  f"{self.pixel_range}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise SettingError(name, f"input {name}", f"needs three finite numbers, one per channel, got "
                                                         f"{_numbers(values)}")
        if any(v <= 0 for v in self.std):
            raise SettingError("std", "input std values", f"must be > 0, got {_numbers(self.std)}")

    def range_problem(self, *, one: bool = False) -> str | None:
        """None, or what these (valid) fields do to pixels past float32's reach: "scale pixels by ...: past what
        float32 features hold (...)", its verbs for `one` subject ("scales") where asked."""
        scale, shift = self.scale_shift()
        low, high = INPUT_SCALE
        if all(low <= abs(v) <= high for v in scale) and all(abs(v) <= INPUT_SHIFT for v in shift):
            return None
        # the network computes in float32: a pixel range of 1e-50 fed it zeros, a std of 1e-50 infinities
        s = "s" if one else ""
        return (f"scale{s} pixels by {','.join(f'{v:.3g}' for v in scale)} and shift{s} them by "
                f"{','.join(f'{v + 0.0:.3g}' for v in shift)}: past what float32 features hold "
                f"(scales {low:g} to {high:g}, shifts up to {INPUT_SHIFT:g})")

    def scale_shift(self) -> tuple[list[float], list[float]]:
        """Per RGB channel: network_input[c'] = rgb[c] * scale[c] + shift[c]."""
        order = [0, 1, 2] if self.channel_order == "RGB" else [2, 1, 0]
        scale, shift = [0.0] * 3, [0.0] * 3
        for pos, rgb in enumerate(order):  # input channel `pos` holds colour `rgb`
            scale[rgb] = self.pixel_range / self.std[pos]
            shift[rgb] = -self.mean[pos] / self.std[pos]
        return scale, shift

    def rgb_permutation(self) -> list[int]:
        """Network input channel i takes RGB channel perm[i]."""
        return [0, 1, 2] if self.channel_order == "RGB" else [2, 1, 0]


def _numbers(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


TORCHVISION = Convention("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE = Convention("BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
# Seeded random weights: any convention works; this one keeps inputs O(1).
RANDOM = Convention("RGB", 1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def reads_as_zero(text: str, number: float) -> bool:
    """Whether `text`, a number with a digit other than 0 before its exponent, was read as 0."""
    return number == 0 and re.search(r"[1-9]", text.lower().partition("e")[0]) is not None


def header_convention(path: Path) -> Convention | None:
    """A .safetensors file's input convention from its header alone (8 bytes of length, then JSON; no tensor
    read and no torch: the dry run's), or None where the header does not say it: a .pth, a file without that
    metadata, or a header that cannot be read (a damaged file is the run's to say, as for every weights file)."""
    import json
    import struct

    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < size <= HEADER_LIMIT:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, RecursionError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return None
    return convention_from_metadata(meta, str(path), whole=False)  # the dry run checks the range with its flags


def convention_from_metadata(meta: dict[str, str], origin: str = "weights", whole: bool = True
                             ) -> Convention | None:
    """The shared VGG16 file's metadata keys: channel_order, pixel_range, mean, std (`origin` names the file).
    Each field is checked; together against float32 only where `whole` (a run checks that with its flags)."""
    from styleengine.errors import ConfigError, WeightsError

    if "channel_order" not in meta:
        return None
    def number(text: str) -> float:  # a digit a float reads as 0 is no 0 the file meant (1e-400)
        value = float(text)
        if reads_as_zero(text, value):
            raise ValueError(f"{text.strip()} reads as 0 in a float")
        return value

    try:
        rng = meta.get("pixel_range", "0-1")
        span = re.fullmatch(r"\s*0+(?:\.0*)?\s*-\s*(\S.*)", rng)  # "0-255"; "1e-2" is one number, not a span
        pixel_range = number(span.group(1) if span else rng)
        mean = tuple(number(v) for v in meta["mean"].split(","))
        std = tuple(number(v) for v in meta.get("std", "1,1,1").split(","))
        convention = Convention(meta["channel_order"].upper(), pixel_range, mean, std)  # type: ignore[arg-type]
        if whole:
            convention.validate()
        else:
            convention.check_fields()
    except KeyError as e:
        raise WeightsError(f"{origin}: its metadata has an unreadable input convention: no {e.args[0]}") from None
    except ConfigError as e:  # read, and out of what a network takes (a std of 1e-9)
        raise WeightsError(f"{origin}: its metadata has an unusable input convention: {e}") from None
    except ValueError as e:
        raise WeightsError(f"{origin}: its metadata has an unreadable input convention: {e}") from None
    return convention
