"""VGG's classifier: the fully connected layers after pool5, read from a full checkpoint (class
visualisation, engine/visualize.py). torchvision's layout: an adaptive average pool to P x P (7), then
classifier.0 (Linear), ReLU, Dropout, classifier.3, ReLU, Dropout, classifier.6 (the class scores)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from styleengine.errors import WeightsError
from styleengine.model.weights import IMAGENET_URLS, imagenet_checkpoint, read_checkpoint, tensor_problem

LINEAR_INDICES = (0, 3, 6)  # the Linear layers of torchvision's (and neural-style-pt's) classifier Sequential
KEYS = tuple(f"classifier.{i}.{part}" for i in LINEAR_INDICES for part in ("weight", "bias"))  # what a file gives
POOL5_CHANNELS = 512


@dataclass(frozen=True)
class Classifier:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (out, in) weight and (out,) bias per Linear, in order
    pool: int  # the side of the adaptive average pool before the first Linear (7 for VGG)
    source: str

    @property
    def classes(self) -> int:
        return self.layers[-1][0].shape[0]

    def __call__(self, pool5: torch.Tensor) -> torch.Tensor:
        """(B, 512, h, w) -> (B, classes) scores before the softmax (dropout: off, as in evaluation)."""
        x = torch.nn.functional.adaptive_avg_pool2d(pool5, self.pool).flatten(1)
        for i, (weight, bias) in enumerate(self.layers):
            x = torch.nn.functional.linear(x, weight, bias)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def random_classifier(seed: int = 0, hidden: int = 256, classes: int = 1000, pool: int = 1) -> Classifier:
    """Kaiming-normal layers, zero biases (tests and timing; a 1 x 1 pool keeps it small)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [POOL5_CHANNELS * pool * pool, hidden, hidden, classes]
    layers = [(torch.randn(out, inp, generator=gen) * math.sqrt(2.0 / inp), torch.zeros(out))
              for inp, out in zip(sizes, sizes[1:])]
    return Classifier(layers, pool, f"random:{seed}")


def load_classifier(spec: str, model: str, seed: int = 0) -> Classifier:
    """spec: "imagenet" (torchvision's checkpoint of `model`), "random" or a full VGG checkpoint file
    (.pth / .safetensors with classifier.0/3/6 keys)."""
    if spec == "random":
        return random_classifier(seed)
    if spec == "imagenet":
        path, state = Path(IMAGENET_URLS[model]), imagenet_checkpoint(model)
    else:
        path = Path(spec).expanduser()
        state, _ = read_checkpoint(path)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for index in LINEAR_INDICES:
        weight, bias = state.get(f"classifier.{index}.weight"), state.get(f"classifier.{index}.bias")
        if weight is None or bias is None:
            raise WeightsError(f"{path}: no classifier.{index}.weight/.bias; class visualisation needs a full "
                               f"VGG checkpoint (features-only files have no classifier)")
        for key, tensor in ((f"classifier.{index}.weight", weight), (f"classifier.{index}.bias", bias)):
            problem = tensor_problem(tensor)
            if problem is not None:
                raise WeightsError(f"{path}: {key} {problem}")
        weight, bias = weight.detach().float().contiguous(), bias.detach().float().contiguous()
        if weight.dim() != 2 or bias.shape != (weight.shape[0],):
            raise WeightsError(f"{path}: classifier.{index} has shapes {tuple(weight.shape)} and "
                               f"{tuple(bias.shape)}; a Linear layer's are (out, in) and (out,)")
        if layers and weight.shape[1] != layers[-1][0].shape[0]:
            raise WeightsError(f"{path}: classifier.{index} takes {weight.shape[1]} inputs, the layer before "
                               f"gives {layers[-1][0].shape[0]}")
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise WeightsError(f"{path}: classifier.{index} has NaN or infinite values")
        layers.append((weight, bias))
    pool = math.isqrt(layers[0][0].shape[1] // POOL5_CHANNELS)
    if POOL5_CHANNELS * pool * pool != layers[0][0].shape[1]:
        raise WeightsError(f"{path}: classifier.0 takes {layers[0][0].shape[1]} inputs, not 512 x P x P "
                           f"(pool5's channels over a square pool)")
    return Classifier(layers, pool, str(path))


def class_name(index: int) -> str | None:
    """ImageNet's name of class `index` where torchvision (which bundles the list) is installed, else None."""
    try:
        from torchvision.models import VGG16_Weights  # optional: not a dependency
    except ImportError:
        return None
    categories = VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    return categories[index] if 0 <= index < len(categories) else None
