"""Regenerate the paper-style figures under examples/figures/ with the shared VGG16 weights.

    python examples/make_figures.py --weights ../shared/weights/vgg16_imagenet_features.safetensors \
        [--only fig3,fig4,sizes] [--out examples/figures]

fig3   one photo (skimage's chelsea) in the style of each painting in ../shared/images/ (the paper's Figure 3)
fig4   a grid over alpha/beta (columns) x the style layers used (rows, relu1_1 .. relu5_1), in the
       size-invariant weighting, and one row in the paper's weighting at the paper's ratios (its Figure 4)
sizes  the same pair at 512 px and at 2048 px (coarse to fine), side by side: the look holds

Every run goes through styleengine's public API (engine.stylise), with the
defaults unless the figure varies a setting; each figure's settings, wall
times and final distances are written to examples/figures/figures.json.
Sizes and iterations fit a 2-core CPU; --quick shrinks them for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
PAINTINGS = ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg")
LAYER_SETS = (("relu1_1",), ("relu1_1", "relu2_1"), ("relu1_1", "relu2_1", "relu3_1"),
              ("relu1_1", "relu2_1", "relu3_1", "relu4_1"), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"))
RATIOS = (1e3, 1e2, 1e1, 1.0)  # alpha/beta in the size-invariant weighting (the default is 1e2)
PAPER_RATIOS = (1e-3, 1e-4, 1e-5, 1e-6)  # alpha/beta in the paper's weighting


def photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()[..., :3].astype(np.float32) / 255.0


def to_uint8(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))


def grid(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str) -> Image.Image:
    """Cells (rows x columns, equal sizes) with labels on the left and at the top."""
    h, w = cells[0][0].height, cells[0][0].width
    left, top, pad = 150, 44, 4
    out = Image.new("RGB", (left + len(cells[0]) * (w + pad), top + len(cells) * (h + pad)), "white")
    draw = ImageDraw.Draw(out)
    draw.text((4, 4), title, fill="black")
    for j, label in enumerate(col_labels):
        draw.text((left + j * (w + pad) + 4, 24), label, fill="black")
    for i, (row, label) in enumerate(zip(cells, row_labels)):
        draw.text((4, top + i * (h + pad) + h // 2 - 6), label, fill="black")
        for j, cell in enumerate(row):
            out.paste(cell, (left + j * (w + pad), top + i * (h + pad)))
    return out


class Runner:
    def __init__(self, weights_path: str, out: Path):
        from styleengine.model.weights import load_weights

        self.weights_path, self.out = weights_path, out
        self.weights = load_weights("vgg16", weights_path)
        self.log: dict[str, list] = {}

    def run(self, figure: str, content: np.ndarray | None, style: np.ndarray, **overrides) -> np.ndarray:
        from styleengine.engine.stylise import Settings, stylise

        settings = Settings(model="vgg16", weights=self.weights_path, **overrides)
        t0 = time.perf_counter()
        image, result = stylise(content, [style], settings, weights=self.weights)
        seconds = time.perf_counter() - t0
        d = result.distances
        self.log.setdefault(figure, []).append({
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
            "seconds": round(seconds, 1), "iterations": result.iterations,
            "style_distance": d.style if d else None, "content_distance": d.content if d else None})
        return image

    def save(self, image: Image.Image, name: str) -> None:
        suffix = Path(name).suffix
        tmp = self.out / f".{name}.tmp{suffix}"
        image.save(tmp, **({"quality": 92} if suffix == ".jpg" else {}))
        os.replace(tmp, self.out / name)

    def write_log(self) -> None:
        path = self.out / "figures.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(self.log)
        tmp = self.out / ".figures.json.tmp"
        tmp.write_text(json.dumps(old, indent=1) + "\n")
        os.replace(tmp, path)


def fig3(r: Runner, images_dir: Path, size: int, iters: int) -> None:
    from styleengine.engine import images

    content = photo("chelsea")
    cells = [to_uint8(images.resize(content, size))]
    for name in PAINTINGS:
        style = images.load_image(images_dir / name)
        out = r.run("fig3", content, style, size=size, iterations=iters)
        cells.append(to_uint8(out))
        r.save(to_uint8(out), f"fig3_chelsea_{Path(name).stem}.png")
    styles = [to_uint8(images.resize(images.load_image(images_dir / n), size)) for n in PAINTINGS]
    h = cells[0].height
    styles = [s.resize((round(s.width * h / s.height), h)) for s in styles]
    r.save(grid([cells, [cells[0].copy()] + [s.crop((0, 0, cells[0].width, h)) for s in styles]],
                ["result", "style (crop)"], ["photo (chelsea)"] + [Path(n).stem for n in PAINTINGS],
                f"Figure 3 style: {size} px, {iters} L-BFGS iterations, defaults, shared VGG16"), "fig3.png")


def fig4(r: Runner, images_dir: Path, size: int, iters: int) -> None:
    from styleengine.engine import images

    content, style = photo("astronaut"), images.load_image(images_dir / "the_scream.jpg")
    rows = []
    for layers in LAYER_SETS:
        rows.append([to_uint8(r.run("fig4", content, style, size=size, iterations=iters, style_layers=layers,
                                    style_weight=1.0 / ratio)) for ratio in RATIOS])
    paper = [to_uint8(r.run("fig4", content, style, size=size, iterations=iters, weighting="paper",
                            style_weight=1.0 / ratio)) for ratio in PAPER_RATIOS]
    labels = [f"up to {layers[-1]}" for layers in LAYER_SETS] + ["paper weighting, all"]
    cols = [f"a/b {ra:g} | paper {rp:g}" for ra, rp in zip(RATIOS, PAPER_RATIOS)]
    r.save(grid(rows + [paper], labels, cols,
                f"Figure 4 style: alpha/beta (size-invariant | paper row) x style layers; {size} px, {iters} it."),
           "fig4.png")


def sizes(r: Runner, images_dir: Path, small: int, large: int, iters: int, fine_iters: int, last_iters: int
          ) -> None:
    """The small run, then coarse to fine from it: the scales above `small` (~sqrt(2) apart) start from the
    small result upsampled (--init PATH), `fine_iters` at each and `last_iters` at `large`. bf16 (this
    CPU has native bf16: half fp32's time, tests/test_quality.py holds its quality)."""
    from styleengine.engine import images

    content, style = photo("astronaut"), images.load_image(images_dir / "starry_night.jpg")
    a = r.run("sizes", content, style, size=small, iterations=iters, precision="bf16")
    r.save(to_uint8(a), f"sizes_{small}.png")
    b = r.run("sizes", content, style, size=large, start_size=round(small * 2**0.5), iters_per_scale=fine_iters,
              iterations=last_iters, precision="bf16", init=str(r.out / f"sizes_{small}.png"))
    r.save(to_uint8(b), f"sizes_{large}.jpg")  # a 2048 px PNG is 9 MB
    side = to_uint8(images.resize(b, small))
    r.save(grid([[to_uint8(a), side]], [""], [f"{small} px", f"{large} px (shown at {small})"],
                f"the same pair and weights at {small} and {large} px"), "sizes.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", default=str(HERE.parent.parent / "shared" / "images"))
    parser.add_argument("--out", default=str(HERE / "figures"))
    parser.add_argument("--only", default="fig3,fig4,sizes")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and iterations (a smoke run)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = Runner(args.weights, out)
    images_dir = Path(args.images)
    q = args.quick
    try:
        for name in args.only.split(","):
            if name == "fig3":
                fig3(r, images_dir, 96 if q else 256, 5 if q else 150)
            elif name == "fig4":
                fig4(r, images_dir, 64 if q else 128, 5 if q else 80)
            elif name == "sizes":
                sizes(r, images_dir, 64 if q else 512, 128 if q else 2048, 5 if q else 150, 3 if q else 20,
                      2 if q else 8)
            else:
                raise SystemExit(f"error: unknown figure {name!r}")
    finally:
        r.write_log()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
