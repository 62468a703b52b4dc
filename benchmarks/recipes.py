"""neural-style-pt's default recipe through `--recipe neural-style-pt` against a reference of its own loss, and
what --tv-weight 0.1 .. 10 do.

    python -m styleengine.benchmarks.recipes --weights ../shared/weights/vgg16_imagenet_features.safetensors \
        --style ../shared/images/starry_night.jpg --size 128 --iters 300 --png-dir docs/recipes

Reference: neural-style-pt's objective written here from its definitions
(content a * mean (F - P)^2, style b * mean (G/(N M) - A/(N M'))^2 per layer,
TV t * sum |dx| on the 0-255 image), optimised as it does: the image in the
caffe space (BGR, 0-255, mean subtracted) from randn * 0.001,
torch.optim.LBFGS (lr 1, history 100, no stopping tolerances), max pooling.
Mapped: `stylise` with engine/recipes.py's values for the same numbers. Both
use the shared VGG16 and are measured alike: engine/quality.py's distances
with a max-pooling step and the targets at the output size. "Ours": this
engine's own default recipe (content init, avg pooling) for comparison.
TV: the default recipe at --tv-weight 0, 0.1, 1, 10 (--tv-iters each): the
distances and the output's mean neighbour difference |dx|. --their-tv 0
drops the TV term from the reference and the mapped run (its L1 form is the
one term the mapping approximates).
Writes benchmarks/results/recipes-<size>px.json (or --json) and the pictures
under --png-dir. --runs picks some of reference, mapped, ours, tv (one
process each on a shared machine: each gets its own share), and --merge
puts the JSON files of such runs together.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from styleengine.paths import atomic_write

TV_SWEEP = (0.0, 0.1, 1.0, 10.0)


def mean_difference(image: np.ndarray) -> float:
    """Mean |dx| over vertical and horizontal neighbours of an (H, W, 3) image in [0, 1]."""
    return float(np.concatenate([np.abs(np.diff(image, axis=0)).ravel(), np.abs(np.diff(image, axis=1)).ravel()])
                 .mean())


def measure(weights, settings, content: np.ndarray, style: np.ndarray, image: np.ndarray) -> dict[str, Any]:
    """engine/quality.py's distances of `image` with the settings' network and loss layers, targets at its size."""
    from styleengine.engine import images
    from styleengine.engine.quality import distances
    from styleengine.engine.steps import TorchStep, make_targets
    from styleengine.engine.stylise import prepare

    loss = settings.loss_config()
    prepared = prepare(content, [style], settings, settings.size)
    with TorchStep(weights, loss, pooling=settings.pooling, conv="direct") as step:
        targets = make_targets(step, loss, prepared.content, prepared.styles)
        d = distances(step, images.to_tensor(image), targets, loss)
    return {"style_distance": d.style, "content_distance": d.content, "style_layers": d.style_layers,
            "content_layers": d.content_layers, "mean_difference": mean_difference(image)}


def reference(weights, settings, content: np.ndarray, style: np.ndarray, iterations: int, seed: int,
              content_weight: float = 5.0, style_weight: float = 100.0, tv_weight: float = 1e-3) -> np.ndarray:
    """neural-style-pt's loss and optimiser (the module docstring) on this engine's network: the (H, W, 3) result."""
    import torch

    from styleengine.engine import images
    from styleengine.engine.steps import build_network, preprocess_params
    from styleengine.engine.stylise import prepare

    loss = settings.loss_config()
    prepared = prepare(content, [style], settings, settings.size)
    scale, shift, perm = preprocess_params(weights.convention, torch.device("cpu"))
    index = torch.tensor(perm)
    back = torch.argsort(index)
    net = build_network(weights, loss.layers, "max")
    for p in net.parameters():
        p.requires_grad_(False)

    def to_caffe(x: torch.Tensor) -> torch.Tensor:
        return (x * scale + shift).index_select(1, index)

    def gram_mean(f: torch.Tensor) -> torch.Tensor:
        flat = f.reshape(f.shape[1], -1)
        return flat @ flat.T / f.numel()

    assert prepared.content is not None  # a content run
    with torch.no_grad():
        content_targets = net(to_caffe(prepared.content), list(loss.content_layers))
        style_targets = {n: gram_mean(f) for n, f in net(to_caffe(prepared.styles[0]), list(loss.style_layers)).items()}
    torch.manual_seed(seed)
    y = (torch.randn(1, 3, prepared.height, prepared.width) * 0.001).requires_grad_(True)
    optimizer = torch.optim.LBFGS([y], lr=1.0, max_iter=iterations, history_size=100, tolerance_grad=-1,
                                  tolerance_change=-1)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        feats = net(y, loss.layers)
        total = y.new_zeros(()) + sum(content_weight * torch.mean((feats[n] - content_targets[n]) ** 2)
                                      for n in loss.content_layers)
        total = total + sum(style_weight * torch.mean((gram_mean(feats[n]) - style_targets[n]) ** 2)
                            for n in loss.style_layers)
        total = total + tv_weight * ((y[:, :, 1:] - y[:, :, :-1]).abs().sum() + (y[..., 1:] - y[..., :-1]).abs().sum())
        total.backward()
        return total

    optimizer.step(closure)
    with torch.no_grad():
        x = (y.detach().index_select(1, back) - shift) / scale
    return images.to_array(x.clamp(0, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--style", required=True, type=Path)
    parser.add_argument("--content", default="astronaut", help="a skimage.data picture or a path")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--tv-iters", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png-dir", type=Path)
    parser.add_argument("--runs", default="reference,mapped,ours,tv")
    parser.add_argument("--their-tv", type=float, default=1e-3,
                        help="neural-style-pt's -tv_weight for the reference and the mapped run (0: the TV form aside)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="JSON files whose runs to take in")
    args = parser.parse_args(argv)
    runs = set(args.runs.split(",")) - {""}

    import torch

    from styleengine.engine import images
    from styleengine.engine.recipes import NEURAL_STYLE_PT, recipe_values
    from styleengine.engine.settings import Settings
    from styleengine.engine.stylise import load_run_weights, stylise

    if Path(args.content).is_file():
        content = images.load_image(args.content)
    else:
        from skimage import data

        content = getattr(data, args.content)().astype(np.float32) / 255
    style = images.load_image(args.style)
    base = dict(model=args.model, weights=args.weights, size=args.size, device="cpu", backend="torch",
                precision="fp32", conv="direct", seed=args.seed)
    mapped = Settings(**recipe_values(NEURAL_STYLE_PT, {**base, "iterations": args.iters, "tv_weight": args.their_tv}))
    ours = Settings(**base, iterations=args.iters)
    weights = load_run_weights(ours)
    rows: dict[str, Any] = {}
    pictures: dict[str, np.ndarray] = {}

    def record(name: str, settings: Settings, run) -> None:
        start = time.perf_counter()
        image = run()
        rows[name] = {"seconds": round(time.perf_counter() - start, 1),
                      **measure(weights, settings, content, style, image)}
        pictures[name] = image
        print(name, json.dumps({k: v for k, v in rows[name].items() if not k.endswith("layers")}), file=sys.stderr)

    if "reference" in runs:
        record("neural-style-pt reference", mapped,
               lambda: reference(weights, mapped, content, style, args.iters, args.seed, tv_weight=args.their_tv))
    if "mapped" in runs:
        record("neural-style-pt mapped", mapped, lambda: stylise(content, [style], mapped, weights=weights)[0])
    if "ours" in runs:
        record("ours default", ours, lambda: stylise(content, [style], ours, weights=weights)[0])
    for tv in TV_SWEEP if "tv" in runs else ():
        s = dataclasses.replace(ours, iterations=args.tv_iters, tv_weight=tv)
        record(f"ours tv {tv:g}", s, lambda s=s: stylise(content, [style], s, weights=weights)[0])
    for path in args.merge:
        rows.update(json.loads(path.read_text())["runs"])

    ref, got = rows.get("neural-style-pt reference"), rows.get("neural-style-pt mapped")
    result = {
        "what": "neural-style-pt's default recipe: a reference of its loss vs --recipe neural-style-pt; "
                "--tv-weight sweep of the default recipe",
        "content": args.content, "style": str(args.style.name), "weights": Path(args.weights).name,
        "model": args.model, "size": args.size, "iterations": args.iters, "tv_iterations": args.tv_iters,
        "their_tv_weight": args.their_tv,
        "seed": args.seed, "mapped_settings": {k: v for k, v in dataclasses.asdict(mapped).items()
                                               if v != getattr(Settings(), k) and k != "convention"},
        "relative_difference": {k: abs(got[k] - ref[k]) / ref[k] for k in ("style_distance", "content_distance")}
        if ref and got else None,
        "runs": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    out = args.json or Path(__file__).resolve().parent / "results" / f"recipes-{args.size}px.json"
    atomic_write(out, (json.dumps(result, indent=1) + "\n").encode())
    if args.png_dir is not None:
        args.png_dir.mkdir(parents=True, exist_ok=True)
        for name, image in pictures.items():
            images.save_image(image, args.png_dir / f"{name.replace(' ', '-')}-{args.size}px.png")
    print(json.dumps(result["relative_difference"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
