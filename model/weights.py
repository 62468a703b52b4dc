"""Weight sources (ImageNet via torch.hub, a file, seeded random) and the
input convention that travels with them."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import torch

from styleengine.choices import TORCH_SUFFIXES
from styleengine.errors import WeightsError, first_line
from styleengine.model import recognise
from styleengine.model.convention import CAFFE, RANDOM, TORCHVISION, Convention, convention_from_metadata  # noqa: F401
from styleengine import paths
from styleengine.paths import file_sha256, not_a_file  # noqa: F401  (callers read file_sha256 here)
from styleengine.model.vgg import conv_weight_keys, layer_table

logger = logging.getLogger(__name__)



# torchvision's ImageNet checkpoints; the 8 hex digits are the sha256 prefix
# torch.hub checks (check_hash=True).
IMAGENET_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}
CONVENTIONS = {"caffe": CAFFE, "torchvision": TORCHVISION}  # the names recognise.py gives


def convention_name(convention: Convention) -> str:
    """'caffe convention (BGR, 0-255)', 'torchvision convention (RGB, 0-1, ImageNet mean/std)' or the fields."""
    if convention == CAFFE:
        return "caffe convention (BGR, 0-255)"
    if convention == TORCHVISION:
        return "torchvision convention (RGB, 0-1, ImageNet mean/std)"
    numbers = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    return (f"{convention.channel_order}, 0-{convention.pixel_range:g}, mean {numbers(convention.mean)}, "
            f"std {numbers(convention.std)}")


@dataclass(frozen=True)
class Weights:
    model: str
    source: str  # "imagenet", "random:SEED" or a file path
    state: dict[str, torch.Tensor]  # conv keys only, float32
    convention: Convention
    sha256: str  # of the tensors (file hash for files), keys the export cache
    # where the convention came from: "flags", "metadata", "known hash", "first-layer statistics" or why assumed
    convention_source: str = "flags"
    ignored: tuple[str, ...] = ()  # keys of the file that were not read (classifier, --non-strict extras)

    @property
    def is_random(self) -> bool:
        return self.source.startswith("random")

    def describe(self, read: Collection[str] = ()) -> str:
        """The run's weights line: 'weights: FILE: caffe convention (BGR, 0-255) from metadata'. read: keys of the
        file that the command reads elsewhere (visualize's classifier), so not said to be ignored."""
        if self.is_random:
            return f"weights: {self.source} (untrained), {convention_name(self.convention)}"
        line = f"weights: {self.source}: {convention_name(self.convention)} {self.convention_source}"
        ignored = [key for key in self.ignored if key not in read]
        if ignored:
            more = len(ignored) - 6
            shown = ", ".join(ignored[:6]) + (f" and {more} more" if more > 0 else "")
            line += f"; ignored {len(ignored)} key{'s' * (len(ignored) > 1)}: {shown}"
        return line


def _tensor_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def random_state(model: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Kaiming-normal convs (fan-in: activations stay O(1) through the stack), zero bias."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, (_, shape) in conv_weight_keys(model).items():
        if key.endswith(".weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.zeros(shape)
    return state


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why a loaded tensor cannot be read as real weights (its dtype, layout or device), or None."""
    if tensor.device.type == "meta":  # a model built under torch.device("meta") and saved before loading
        return "holds no data (a tensor on the 'meta' device); save the weights once they are loaded"
    if tensor.layout != torch.strided:
        return f"is a sparse tensor ({tensor.layout}); save it dense (tensor.to_dense())"
    if tensor.is_quantized:
        return f"is quantized ({tensor.dtype}); save it dequantized (tensor.dequantize())"
    if not tensor.is_floating_point():  # complex lost its imaginary part, bool and int ran as 0/1 or as counts
        return f"is {str(tensor.dtype).removeprefix('torch.')}, not a real floating-point tensor"
    return None


def check_state(model: str, state: dict[str, torch.Tensor], origin: str, *,
                strict: bool = True) -> dict[str, torch.Tensor]:
    """Keep the conv keys of `model`, checking each key, shape and value (NaN or inf is refused). Layer-named
    keys (conv1_1.weight) are read as torchvision's; strict=False ignores unknown keys under features.
    instead of refusing them (the caller lists what was not kept)."""
    if recognise.is_nin(state):
        raise WeightsError(f"{origin} is neural-style-pt's NIN (network-in-network): recognised, but not run: "
                           f"every step here (ONNX graphs, Winograd, exact tiling) is built for VGG's 3x3 convs")
    state = recognise.torchvision_keys(model, state)
    expected = conv_weight_keys(model)
    out = {}
    for key, (layer, shape) in expected.items():
        if key not in state:
            raise WeightsError(f"{origin}: missing key {key} ({layer}); is this a {model} checkpoint?")
        tensor = state[key]
        problem = tensor_problem(tensor)
        if problem is not None:
            raise WeightsError(f"{origin}: {key} ({layer}) {problem}")
        if tuple(tensor.shape) != shape:
            raise WeightsError(
                f"{origin}: {key} ({layer}) has shape {tuple(tensor.shape)}, {model} needs {shape}; "
                f"wrong architecture?"
            )
        tensor = tensor.detach().to(torch.float32).contiguous()
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(f"{origin}: {key} ({layer}) has {bad} NaN or infinite values")
        if key.endswith(".weight") and not tensor.any():  # every feature past it would be a constant
            raise WeightsError(f"{origin}: {key} ({layer}) is all zeros; an untrained or damaged checkpoint?")
        out[key] = tensor
    # a VGG19 checkpoint passed as VGG16 has all of VGG16's keys at the wrong
    # places: its features.17 is a conv where VGG16 has one too, but shapes
    # differ somewhere, which the loop above catches. Any other key under
    # features. is a different network (deeper, batch-norm, renamed layers);
    # keys outside it (classifier.*) are not read.
    deepest = max(int(k.split(".")[1]) for k in expected)
    for key in state if strict else ():
        if key.startswith("features.") and key not in expected:
            index = key.split(".")[1]
            if index.isdigit() and int(index) > deepest:
                raise WeightsError(f"{origin}: unexpected key {key}; this looks like a deeper network than {model} "
                                   f"(--non-strict ignores it)")
            raise WeightsError(f"{origin}: unexpected key {key}; a {model} checkpoint has only "
                               f"features.<conv index>.weight and .bias under features. (--non-strict ignores it)")
    return out


# what torch.save's own pickles name: the tensor rebuilders, storages, OrderedDict
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict")


def _pickle_calls(path: Path) -> list[str]:
    """The globals (classes, functions) other than torch's own that the pickle in `path` (a torch.save zip or
    a bare pickle) names: what unpickling it would call. [] if it is not a pickle or names none."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name is not None else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    found: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # torch's legacy format is several pickles, then raw storage bytes
            for op, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings = (strings + [arg])[-2:]
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                    found.append(".".join(strings))
    except ValueError:  # a damaged or non-pickle stream (the storage bytes): what was read before it counts
        pass
    return [g for g in dict.fromkeys(found) if not g.startswith(_TORCH_GLOBALS)]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A .safetensors or .pth file's tensors and metadata; .pth only as plain tensors (weights_only)."""
    problem = not_a_file(path)
    if problem is not None:
        raise WeightsError(f"weights file {path} {problem}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:  # "header too large" sent the user looking for damage
            raise WeightsError(paths.named_as_another(path) or paths.unreadable_safetensors(path, e)) from e
        return state, meta
    if suffix in TORCH_SUFFIXES:
        try:
            # torch's load-time warnings are advice to a programmer (file an issue, TypedStorage, quantized or
            # sparse tensors' states); what is wrong with the file is said below in one line
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, IndexError) as e:  # IndexError: the unpickler's, on a few stray bytes
            calls = _pickle_calls(path)
            if calls:  # judged from the file itself: torch's wording of this error changes between versions
                raise WeightsError(
                    f"refusing {path}: it needs code to unpickle ({', '.join(calls[:3])}; only plain tensors are "
                    f"loaded, weights_only=True)") from e
            raise WeightsError(paths.named_as_another(path) or f"cannot read checkpoint {path}: not a PyTorch "
                                                                 f"checkpoint") from e
        except (struct.error, ValueError, AssertionError, AttributeError, TypeError) as e:  # torch's unpickler on
            # damaged bytes (a legacy file cut short, a zip's data.pkl half written, bytes flipped)
            found = first_line(e) or type(e).__name__
            raise WeightsError(paths.named_as_another(path) or f"cannot read checkpoint {path}: its pickle is damaged "
                                                                 f"or cut short ({found})") from e
        except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, OSError) as e:
            reason = first_line(e) if str(e).strip() else f"{type(e).__name__}, empty or cut short?"
            # what the file is (a TorchScript archive, a zip, an image) before torch's words for it
            raise WeightsError(paths.named_as_another(path) or f"cannot read checkpoint {path}: {reason}") from e
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
            raise WeightsError(f"{path} is not a state dict of tensors")
        return obj, {}
    raise WeightsError(paths.unsupported_weights(path) or str(path))


def imagenet_checkpoint(model: str) -> dict[str, torch.Tensor]:
    """torchvision's whole ImageNet checkpoint of `model` (classifier included): downloaded once into the
    torch hub cache, hash-checked."""
    url = IMAGENET_URLS[model]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    try:
        if not cached.is_file():  # torch.hub's loader writes "Downloading: ..." to stderr itself: library code is quiet
            logger.info("downloading %s ImageNet weights to %s", model, cached)
            cached.parent.mkdir(parents=True, exist_ok=True)
            digest = torch.hub.HASH_REGEX.search(cached.name)
            torch.hub.download_url_to_file(url, str(cached), digest.group(1) if digest else None, progress=False)
        return torch.load(cached, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise WeightsError(
            f"cannot download {model} ImageNet weights ({first_line(e)}); pass a local file with --weights PATH "
            f"(.safetensors or .pth), or --weights random for timing"
        ) from e


def load_weights(model: str, spec: str = "imagenet", *, seed: int = 0, convention: Convention | None = None,
                 strict: bool = True, range_checked: bool = False) -> Weights:
    """spec: "imagenet" (torch.hub, hash-checked), "random" or a file path.

    The input convention comes from, in order: `convention` (flags), the
    file's safetensors metadata, its content (model/recognise.py: a known
    file or first layer, the first layer's statistics); where the content
    cannot tell, torchvision's is assumed and `convention_source` says so.
    strict=False: unknown keys under features. are ignored (listed in
    `ignored`) instead of refused. range_checked: the caller checks the
    metadata's float32 range itself, with the flags that replace its values
    (Settings.check_convention_range); its fields are checked here.
    """
    layer_table(model)  # validates the model name
    if convention is not None:
        convention.validate()
    if spec == "random":
        state = random_state(model, seed)
        return Weights(model, f"random:{seed}", state, convention or RANDOM, _tensor_digest(state),
                       "from flags" if convention else "chosen for random weights")
    if spec == "imagenet":
        url = IMAGENET_URLS[model]
        raw = imagenet_checkpoint(model)
        state = check_state(model, raw, url, strict=strict)
        return Weights(model, "imagenet", state, convention or TORCHVISION, url.rsplit("-", 1)[-1].split(".")[0],
                       "from flags" if convention else "from known hash", _ignored(model, raw, state))
    paths.check_folder_ending(spec)  # the API's "w.pth/" (the command line's is refused as it is read)
    problem = paths.weights_problem(spec)
    if problem is not None:
        raise WeightsError(problem)
    path = Path(spec).expanduser()
    raw, meta = read_checkpoint(path)
    state = check_state(model, raw, str(path), strict=strict)
    try:
        digest = file_sha256(path)
    except OSError as e:  # removed or replaced since it was read (a batch's job file, mid-batch)
        raise WeightsError(f"cannot read weights file {path}: {e.strerror or e}") from None
    found, source = convention, "from flags"
    if found is None:
        found, source = convention_from_metadata(meta, str(path), whole=not range_checked), "from metadata"
    if found is None:
        seen = recognise.recognise(state, digest)
        if seen.name is not None:
            found, source = CONVENTIONS[seen.name], f"from {seen.source}"
        else:
            found, source = TORCHVISION, (f"assumed: no metadata, not a known file, and {seen.detail}; "
                                          f"--channel-order/--pixel-range/--mean/--std set it")
        logger.info("%s: %s %s (%s)", path, convention_name(found), source, seen.detail)
    weights = Weights(model, str(path), state, found, digest, source, _ignored(model, raw, state))
    if weights.ignored:
        logger.info("%s: ignored keys %s", path, ", ".join(weights.ignored))
    return weights


def _ignored(model: str, raw: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The keys of `raw` (as the file names them) that `state`, check_state's result, did not keep."""
    renamed = recognise.torchvision_keys(model, raw)  # in raw's order, one key for one
    return tuple(sorted(key for key, name in zip(raw, renamed) if name not in state))
