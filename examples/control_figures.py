"""Regenerate docs/control/: Gatys et al. 2017's perceptual controls with the shared VGG16 weights.

    python examples/control_figures.py --weights ../shared/weights/vgg16_imagenet_features.safetensors \
        [--out docs/control] [--size 256] [--iters 150] [--run NAME | --assemble]

luminance.png  astronaut in Starry Night's style: normal, --preserve-colors (colours swapped after the loop),
               --luminance-only (the loop sees luminance only), one seed
masks.png      Starry Night on the background and The Scream on the person, with the two content masks
               (mask_background.png, mask_person.png: drawn here, the files the README's command uses)

Every run goes through engine.stylise with the defaults but the model, weights, size, iterations and the
control compared (torch, fp32 Winograd on the CPU). --preserve-colors runs the very loop of the normal run
and only swaps colours after it (engine/stylise.py's finish: images.preserve_colors of the result and the
content at its size), so its panel is that function applied to the normal run's result, not a second loop.
distances.json holds each run's own distances (against the targets it optimised: luminance
targets for --luminance-only), each result's distances against the colour targets, and per region of the
masked run its style distance from each painting (the region's guided Grams, engine/quality.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "images"  # the checkout sits next to shared/


def person_mask(height: int, width: int) -> np.ndarray:
    """A soft mask of the astronaut (head and suit as two ellipses), 1 on her, 0 on the background."""
    image = Image.new("L", (512, 512), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((150, 10, 300, 210), fill=255)  # head and hair
    draw.ellipse((10, 170, 390, 640), fill=255)  # suit and shoulders
    image = image.filter(ImageFilter.GaussianBlur(6)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def strip(panels: list[tuple[str, np.ndarray]]) -> Image.Image:
    h, w = panels[0][1].shape[:2]
    pad, top = 4, 20
    out = Image.new("RGB", (len(panels) * (w + pad), h + top), "white")
    draw = ImageDraw.Draw(out)
    for i, (label, image) in enumerate(panels):
        draw.text((i * (w + pad) + 4, 4), label, fill="black")
        out.paste(Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)), (i * (w + pad), top))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "control"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--run", choices=("normal", "luminance_only", "two_regions"),
                        help="only this run (its PNG and JSON; runs may go side by side), no figures")
    parser.add_argument("--assemble", action="store_true", help="no runs: the figures from the runs' files")
    args = parser.parse_args()

    import dataclasses

    import torch

    from styleengine.engine import images
    from styleengine.engine.quality import distances
    from styleengine.engine.settings import Settings
    from styleengine.engine.steps import TorchStep, make_targets
    from styleengine.engine.stylise import load_run_weights, stylise

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    content = images.load_image(HERE / "astronaut.png")
    starry, scream = (images.load_image(SHARED / n) for n in ("starry_night.jpg", "the_scream.jpg"))
    base = Settings(model="vgg16", weights=args.weights, size=args.size, iterations=args.iters, seed=0,
                    backend="torch", device="cpu", precision="fp32", conv="winograd")
    loss = base.loss_config()
    step = TorchStep(load_run_weights(base), loss, conv="direct")
    small = images.resize(content, args.size)
    height, width = small.shape[:2]

    def measure(image: np.ndarray, styles: list[np.ndarray], masks: torch.Tensor | None = None) -> dict:
        styles_t = [images.to_tensor(images.resize(s, args.size)) for s in styles]
        targets = make_targets(step, loss, images.to_tensor(small), styles_t, output_positions=height * width,
                               masks=masks)
        return distances(step, images.to_tensor(image), targets, loss).to_json()

    person = person_mask(height, width)
    mask_paths = [out / "mask_background.png", out / "mask_person.png"]
    runs = {"normal": ([starry], {}), "luminance_only": ([starry], {"luminance_only": True}),
            "two_regions": ([starry, scream], {"content_masks": tuple(str(p) for p in mask_paths)})}
    if args.run in (None, "two_regions") and not args.assemble:  # written once: side-by-side runs read them
        for mask, path in zip((1 - person, person), mask_paths):
            Image.fromarray((mask * 255 + 0.5).astype(np.uint8)).save(path)
    for name in [args.run] if args.run else ([] if args.assemble else list(runs)):
        styles, flags = runs[name]
        started = time.perf_counter()
        image, result = stylise(content, styles, dataclasses.replace(base, **flags))
        seconds = time.perf_counter() - started
        images.save_image(image, out / f"astronaut_{name}.png")
        (out / f"{name}.json").write_text(json.dumps({"seconds": round(seconds, 1),
                                                      "own": result.distances.to_json()}) + "\n")
        print(name, f"{seconds:.0f} s", result.distances.style, result.distances.content, flush=True)
    if args.run:
        return

    report: dict = {"settings": {"model": "vgg16", "size": args.size, "iterations": args.iters, "seed": 0,
                                 "conv": "winograd", "weights": Path(args.weights).name}}
    done = {name: (images.load_image(out / f"astronaut_{name}.png"), json.loads((out / f"{name}.json").read_text()))
            for name in runs}
    # the normal run's loop, its colours swapped: what --preserve-colors writes (see the docstring)
    preserved = images.preserve_colors(done["normal"][0], small)
    images.save_image(preserved, out / "astronaut_preserve_colors.png")
    done["preserve_colors"] = (images.load_image(out / "astronaut_preserve_colors.png"), done["normal"][1])
    report["luminance"] = {name: {**done[name][1], "colour_targets": measure(done[name][0], [starry])}
                           for name in ("normal", "preserve_colors", "luminance_only")}
    strip([("content", small)] + [(name.replace("_", " "), done[name][0])
                                  for name in ("normal", "preserve_colors", "luminance_only")]
          + [("style", images.resize(starry, args.size))]).save(out / "luminance.png")
    image = done["two_regions"][0]
    regions = {}
    for region, mask in (("background", 1 - person), ("person", person)):
        one = torch.from_numpy(np.ascontiguousarray(mask))[None]
        regions[region] = {painting: measure(image, [style], one)["style_distance"]
                           for painting, style in (("starry_night", starry), ("the_scream", scream))}
    report["masks"] = {**done["two_regions"][1], "regions": regions,
                       "content_masks": [p.name for p in mask_paths], "styles": ["starry_night.jpg", "the_scream.jpg"]}
    grey = [np.repeat(m[..., None], 3, axis=2) for m in (1 - person, person)]
    strip([("content", small), ("mask: Starry Night", grey[0]), ("mask: The Scream", grey[1]),
           ("two styles, two regions", image)]).save(out / "masks.png")
    (out / "distances.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["luminance"], indent=1), json.dumps(regions), flush=True)


if __name__ == "__main__":
    main()
