"""Does the fp16 step graph hold on ONNX Runtime's CUDA provider? For a lent GPU with onnxruntime-gpu:

    python -m styleengine.benchmarks.fp16_check [VGG16.safetensors]

exports the fp16 step graph for random VGG19 weights (seeds 0, 1, 2) and, given a path, the ImageNet VGG16,
validates each on the CUDA provider against the torch fp32 reference at the validation sizes on noise and
on a photo (skimage's astronaut as content, its coffee as style, the image the photo plus noise), and
prints one JSON object: per case, image kind and size, the loss and gradient errors and whether they are
within the fp16 tolerance. A missing CUDA provider or weights file is an "error" entry, not a traceback.
"""
from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from styleengine.engine.losses import LossConfig
from styleengine.engine.validate import SIZES, TOLERANCES, noise_images, validate_step

LOSS = LossConfig()
SEEDS = (0, 1, 2)
PHOTO_NOISE = 0.1  # the image: the content photo a few iterations into a run (at the photo itself torch's
# content gradient is exactly zero and any other step's is rounding noise)


def photo_images(height: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, style, image): astronaut, coffee (skimage's sample photos) and astronaut plus noise."""
    from skimage import data

    from styleengine.engine.images import resize_tensor, to_tensor

    content, style = (resize_tensor(to_tensor(photo / 255.0), height, width)
                      for photo in (data.astronaut(), data.coffee()))
    return content, style, content + PHOTO_NOISE * torch.randn(content.shape, generator=gen)


IMAGES = {"noise": noise_images, "photo": photo_images}


def check_weights(weights, provider: str, folder: Path, make_graph_step=None) -> dict:
    """Per image kind, the validation figures of the weights' fp16 step graph at every size.

    make_graph_step(export, spec): the step to validate (default: an OrtStep on `provider`)."""
    from styleengine.engine.ort_step import OrtStep, graph_spec
    from styleengine.export.cache import write_export

    spec = graph_spec(weights, LOSS, "avg", "fp16")
    export = write_export(weights, spec, folder)
    make = make_graph_step or (lambda e, s: OrtStep(e, s, LOSS, provider=provider))
    loss_tol, grad_tol = TOLERANCES["fp16"]
    out = {}
    for kind, images in IMAGES.items():
        report = validate_step(lambda: make(export, spec), weights, LOSS, spec, images=images, check=False)
        out[kind] = [dict(c.to_json(), ok=c.loss_rel <= loss_tol and c.grad_rel_l2 <= grad_tol) for c in report]
    return out


def run(weights_path: str | None, provider: str = "cuda", make_graph_step=None, seeds=SEEDS) -> dict:
    """The JSON report; each case's failure (weights, provider, validation) is its own "error" entry."""
    from styleengine.model.weights import Weights, load_weights

    started = time.perf_counter()
    result: dict = {"provider": provider, "sizes": [list(s) for s in SIZES], "tolerance": TOLERANCES["fp16"],
                    "cases": {}}
    try:
        import onnxruntime as ort

        result["onnxruntime"] = ort.__version__
        if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            result["error"] = f"no CUDAExecutionProvider in onnxruntime {ort.__version__} " \
                              f"(available: {', '.join(ort.get_available_providers())})"
            return result
    except ImportError as e:
        result["error"] = f"onnxruntime is not installed: {e}"
        return result
    if provider == "cuda":
        if not torch.cuda.is_available():  # onnxruntime-gpu lists its provider on machines without a GPU too
            result["error"] = "no CUDA device (torch.cuda.is_available() is False)"
            return result
        result["device"] = torch.cuda.get_device_name(0)
    cases: list[tuple[str, Callable[[], Weights | None]]] = [
        (f"random vgg19 seed {s}", functools.partial(load_weights, "vgg19", "random", seed=s)) for s in seeds]
    cases.append(("vgg16 imagenet", lambda: load_weights("vgg16", weights_path) if weights_path else None))
    with tempfile.TemporaryDirectory(prefix="fp16-check-") as tmp:
        for i, (name, load) in enumerate(cases):
            try:
                weights = load()
                if weights is None:
                    result["cases"][name] = {"error": "no weights path given"}
                    continue
                result["cases"][name] = check_weights(weights, provider, Path(tmp) / str(i), make_graph_step)
            except Exception as e:  # a case that cannot run is a row with its reason (STYLE.md: benchmarks)
                result["cases"][name] = {"error": f"{type(e).__name__}: {e}"}
    result["ok"] = all("error" not in c and all(r["ok"] for rows in c.values() for r in rows)
                       for c in result["cases"].values())
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--provider=")]
    provider = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--provider=")), "cuda")
    result = run(args[0] if args else None, provider)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
