"""What a weights file is, read from its content: the input convention and the key layout.

The convention comes from, in order: the file's metadata, a known file
(the sha256 of the file, or of its first layer's values), the first
layer's statistics. Never from the file's name: a renamed or symlinked copy
is the same weights.

First-layer statistics (conv1_1 weight RMS), measured:
  caffe VGG16 (the shared file, BGR 0-255 inputs)            0.207
  the same network re-expressed for torchvision's inputs       11.9  (x57.6 = 255 x the ImageNet std)
  torchvision's VGG16 (6 of 64 filters, a public printout)     0.30
  Kaiming-normal random (this repo's random weights)           0.27
Trained files of both conventions sit at 0.2-0.3: the ~58x is what folding
one convention's preprocessing into the first layer does, not a difference
between the trained files. So the statistics decide only for a first layer
rescaled that way (far outside 0.2-0.3); in between the convention is
assumed, and the run's weights line says so.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import torch

from styleengine.model.vgg import layer_table

log = logging.getLogger(__name__)

FIRST_LAYER = "features.0.weight"
TRAINED_RMS = (0.207, 0.30)  # conv1_1 weight RMS of trained files (caffe measured; torchvision from a printout)
FOLD_FACTOR = 57.6  # 255 x the ImageNet std (0.226): a first layer re-expressed for the other convention's inputs
# halfway (geometric) between the trained band and a folded first layer, on either side
CAFFE_BELOW = TRAINED_RMS[0] / math.sqrt(FOLD_FACTOR)  # 0.027
TORCHVISION_ABOVE = TRAINED_RMS[1] * math.sqrt(FOLD_FACTOR)  # 2.28


@dataclass(frozen=True)
class Recognised:
    """What the content says about the convention: which one (a name in CONVENTIONS or None) and from what."""

    name: str | None  # "caffe", "torchvision" or None: the content cannot tell
    source: str  # "metadata", "known hash", "first-layer statistics"
    detail: str = ""  # the figure behind it, for the log and the weights line


# sha256 prefixes of whole files whose convention is known (torch.hub checks these 8 hex digits)
KNOWN_FILES = {
    "397923af": "torchvision",  # torchvision vgg16-397923af.pth
    "dcbb9e9d": "torchvision",  # torchvision vgg19-dcbb9e9d.pth
    # caffe VGG19 / VGG16 as first downloaded for neural-style-pt; its download script re-saves them with
    # renamed classifier keys, so the saved files' hashes are other (unknown here: no copy on this machine)
    "d01eb7cb": "caffe",
    "00b39a1b": "caffe",
}
# first_layer_fingerprint of known networks: holds across re-saving, renamed keys, formats and metadata
KNOWN_FIRST_LAYERS = {
    "e699c97df9cb013d": "caffe",  # caffe VGG16 (the shared vgg16_imagenet_features.safetensors, via Keras)
}


def first_layer_rms(state: dict[str, torch.Tensor]) -> float:
    w = state[FIRST_LAYER].detach().to(torch.float64)
    return float(w.pow(2).mean().sqrt())


def first_layer_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """16 hex digits of the sorted |conv1_1 weights| to 1e-4: the same for a copy whose kernels were flipped,
    channels reordered or keys renamed, different for another network."""
    w = state[FIRST_LAYER].detach().to(torch.float64).abs().flatten().sort().values
    return hashlib.sha256((w * 1e4).round().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def from_statistics(state: dict[str, torch.Tensor]) -> Recognised:
    rms = first_layer_rms(state)
    detail = f"conv1_1 weight RMS {rms:.3g}"
    if rms < CAFFE_BELOW:
        return Recognised("caffe", "first-layer statistics", f"{detail} < {CAFFE_BELOW:.3g}")
    if rms > TORCHVISION_ABOVE:
        return Recognised("torchvision", "first-layer statistics", f"{detail} > {TORCHVISION_ABOVE:.3g}")
    return Recognised(None, "first-layer statistics",
                      f"{detail}: trained files of both conventions sit at {TRAINED_RMS[0]:g}-{TRAINED_RMS[1]:g}")


def recognise(state: dict[str, torch.Tensor], file_sha256: str | None) -> Recognised:
    """The convention a file's tensors say (metadata is the caller's: it is read before the tensors)."""
    if file_sha256 is not None and file_sha256[:8] in KNOWN_FILES:
        return Recognised(KNOWN_FILES[file_sha256[:8]], "known hash", f"file sha256 {file_sha256[:8]}")
    fingerprint = first_layer_fingerprint(state)
    if fingerprint in KNOWN_FIRST_LAYERS:
        return Recognised(KNOWN_FIRST_LAYERS[fingerprint], "known hash", f"first layer {fingerprint}")
    found = from_statistics(state)
    log.info("convention from first-layer statistics: %s (%s)", found.name or "cannot tell", found.detail)
    return found


# --- key layouts

# neural-style-pt's NIN (nin_imagenet.pth): (name, features index, in, out, kernel, stride, padding)
NIN_CONVS = [
    ("conv1", 0, 3, 96, 11, 4, 0), ("cccp1", 2, 96, 96, 1, 1, 0), ("cccp2", 4, 96, 96, 1, 1, 0),
    ("conv2", 7, 96, 256, 5, 1, 2), ("cccp3", 9, 256, 256, 1, 1, 0), ("cccp4", 11, 256, 256, 1, 1, 0),
    ("conv3", 14, 256, 384, 3, 1, 1), ("cccp5", 16, 384, 384, 1, 1, 0), ("cccp6", 18, 384, 384, 1, 1, 0),
    ("conv4-1024", 22, 384, 1024, 3, 1, 1), ("cccp7-1024", 24, 1024, 1024, 1, 1, 0),
    ("cccp8-1024", 26, 1024, 1000, 1, 1, 0),
]


def is_nin(state: dict[str, torch.Tensor]) -> bool:
    """Every NIN_CONVS weight at its index with its shape: neural-style-pt's NIN."""
    return all(tuple(getattr(state.get(f"features.{i}.weight"), "shape", ())) == (o, c, k, k)
               for _, i, c, o, k, _, _ in NIN_CONVS)


def torchvision_keys(model: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with layer-named keys (conv1_1.weight, neural-style-pt's and caffe's names) renamed to
    torchvision's features.<index>.weight; other keys as they are."""
    index = {layer.name: layer.index for layer in layer_table(model) if layer.kind == "conv"}
    out = {}
    for key, tensor in state.items():
        name, _, param = key.rpartition(".")
        out[f"features.{index[name]}.{param}" if name in index else key] = tensor
    return out
