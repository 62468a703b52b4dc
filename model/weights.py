"""Weight sources (ImageNet via torch.hub, a file, seeded random) and the
input convention that travels with them."""
from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from styleengine.errors import WeightsError, first_line
from styleengine.paths import file_sha256, not_a_file  # noqa: F401  (callers read file_sha256 here)
from styleengine.model.convention import CAFFE, RANDOM, TORCHVISION, Convention
from styleengine.model.vgg import conv_weight_keys, layer_table

__all__ = ["CAFFE", "RANDOM", "TORCHVISION", "Convention", "Weights", "load_weights"]


# torchvision's ImageNet checkpoints; the 8 hex digits are the sha256 prefix
# torch.hub checks (check_hash=True).
IMAGENET_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}
# sha256 prefixes of checkpoints whose convention we know without metadata
KNOWN_PREFIXES = {
    "397923af": TORCHVISION,  # torchvision vgg16
    "dcbb9e9d": TORCHVISION,  # torchvision vgg19
    "d01eb7cb": CAFFE,  # caffe VGG19 converted for neural-style-pt (vgg19-d01eb7cb.pth)
}


@dataclass(frozen=True)
class Weights:
    model: str
    source: str  # "imagenet", "random:SEED" or a file path
    state: dict[str, torch.Tensor]  # conv keys only, float32
    convention: Convention
    sha256: str  # of the tensors (file hash for files), keys the export cache

    @property
    def is_random(self) -> bool:
        return self.source.startswith("random")


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


def check_state(model: str, state: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Keep the conv keys of `model`, checking each key, shape and value (NaN or inf is refused)."""
    expected = conv_weight_keys(model)
    out = {}
    for key, (layer, shape) in expected.items():
        if key not in state:
            raise WeightsError(f"{origin}: missing key {key} ({layer}); is this a {model} checkpoint?")
        tensor = state[key]
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
    for key in state:
        if key.startswith("features.") and key not in expected:
            index = key.split(".")[1]
            if index.isdigit() and int(index) > deepest:
                raise WeightsError(f"{origin}: unexpected key {key}; this looks like a deeper network than {model}")
            raise WeightsError(f"{origin}: unexpected key {key}; a {model} checkpoint has only "
                               f"features.<conv index>.weight and .bias under features.")
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


def _load_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"cannot read safetensors file {path}: {e}") from e
        return state, meta
    if suffix in (".pth", ".pt", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            calls = _pickle_calls(path)
            if calls:  # judged from the file itself: torch's wording of this error changes between versions
                raise WeightsError(
                    f"refusing {path}: it needs code to unpickle ({', '.join(calls[:3])}; only plain tensors are "
                    f"loaded, weights_only=True)") from e
            raise WeightsError(f"cannot read checkpoint {path}: not a PyTorch checkpoint") from e
        except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, OSError) as e:
            reason = first_line(e) if str(e).strip() else f"{type(e).__name__}, empty or cut short?"
            raise WeightsError(f"cannot read checkpoint {path}: {reason}") from e
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
            raise WeightsError(f"{path} is not a state dict of tensors")
        return obj, {}
    raise WeightsError(f"unsupported weights file {path}: use .safetensors or .pth")


def convention_from_metadata(meta: dict[str, str], origin: str = "weights") -> Convention | None:
    """The shared VGG16 file's metadata keys: channel_order, pixel_range, mean, std (`origin` names the file)."""
    from styleengine.errors import ConfigError

    if "channel_order" not in meta:
        return None
    try:
        rng = meta.get("pixel_range", "0-1")
        pixel_range = float(rng.split("-")[-1]) if "-" in rng else float(rng)
        mean = tuple(float(v) for v in meta["mean"].split(","))
        std = tuple(float(v) for v in meta.get("std", "1,1,1").split(","))
        convention = Convention(meta["channel_order"].upper(), pixel_range, mean, std)  # type: ignore[arg-type]
        convention.validate()
    except KeyError as e:
        raise WeightsError(f"{origin}: its metadata has an unreadable input convention: no {e.args[0]}") from None
    except (ValueError, ConfigError) as e:
        raise WeightsError(f"{origin}: its metadata has an unreadable input convention: {e}") from None
    return convention


def load_weights(model: str, spec: str = "imagenet", *, seed: int = 0, convention: Convention | None = None) -> Weights:
    """spec: "imagenet" (torch.hub, hash-checked), "random" or a file path.

    The input convention comes from, in order: `convention` (flags), the
    file's safetensors metadata, the known checkpoints' hashes; files with
    none of these are assumed to be torchvision-style (RGB, ImageNet mean/std).
    """
    layer_table(model)  # validates the model name
    if convention is not None:
        convention.validate()
    if spec == "random":
        state = random_state(model, seed)
        return Weights(model, f"random:{seed}", state, convention or RANDOM, _tensor_digest(state))
    if spec == "imagenet":
        url = IMAGENET_URLS[model]
        try:
            raw = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, progress=False,
                                                     weights_only=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            reason = first_line(e)
            raise WeightsError(
                f"cannot download {model} ImageNet weights ({reason}); pass a local file with --weights PATH "
                f"(.safetensors or .pth), or --weights random for timing"
            ) from e
        state = check_state(model, raw, url)
        return Weights(model, "imagenet", state, convention or TORCHVISION, url.rsplit("-", 1)[-1].split(".")[0])
    path = Path(spec).expanduser()
    raw, meta = _load_file(path)
    state = check_state(model, raw, str(path))
    digest = file_sha256(path)
    found = convention or convention_from_metadata(meta, str(path)) or KNOWN_PREFIXES.get(digest[:8])
    if found is None:
        prefix = path.stem.rsplit("-", 1)[-1]
        found = KNOWN_PREFIXES.get(prefix, TORCHVISION)
    return Weights(model, str(path), state, found, digest)
