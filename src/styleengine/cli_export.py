"""`styleengine export`: write the feature and step graphs, validated against torch."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from styleengine.choices import GRAPH_PRECISIONS, POOLINGS, check_choice
from styleengine.errors import ConfigError
from styleengine.engine.losses import LossConfig

_DEFAULT = LossConfig()


def _layers(value: Optional[str], default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(v.strip() for v in value.split(",") if v.strip())


def export(
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write step.onnx, features.onnx, export.json"),
    model: str = typer.Option("vgg19", help="vgg19 or vgg16"),
    weights: str = typer.Option("imagenet", help="imagenet, random, or a .safetensors/.pth file"),
    pooling: str = typer.Option("avg", help="avg (the paper's) or max"),
    precision: str = typer.Option("fp32", help="fp32, fp16 or bf16 convolutions (losses stay fp32)"),
    content_layers: Optional[str] = typer.Option(None, help=f"comma-separated (default {','.join(_DEFAULT.content_layers)})"),
    style_layers: Optional[str] = typer.Option(None, help=f"comma-separated (default {','.join(_DEFAULT.style_layers)})"),
    seed: int = typer.Option(0, help="seed for --weights random"),
    validate: bool = typer.Option(True, help="compare against torch at three sizes (fp32 and fp16 on this CPU)"),
) -> None:
    """Export the VGG feature graph and the loss-and-gradient step graph to ONNX."""
    from rich.console import Console
    from rich.table import Table

    from styleengine.engine.ort_step import OrtStep, graph_spec
    from styleengine.export.cache import record_validation, write_export
    from styleengine.engine.validate import validate_step
    from styleengine.model.weights import load_weights

    check_choice("precision", precision, GRAPH_PRECISIONS)
    check_choice("pooling", pooling, POOLINGS)
    if not output.parent.exists():
        raise ConfigError(f"output folder's parent does not exist: {output.parent}")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a folder")
    loss = LossConfig(content_layers=_layers(content_layers, _DEFAULT.content_layers),
                      style_layers=_layers(style_layers, _DEFAULT.style_layers))
    w = load_weights(model, weights, seed=seed)
    spec = graph_spec(w, loss, pooling, precision)  # validates layer names
    console = Console(stderr=True)
    written = write_export(w, spec, output)
    if validate and precision != "bf16":
        report = validate_step(lambda: OrtStep(written, spec, loss, provider="cpu"), w, loss, spec)
        record_validation(written, [c.to_json() for c in report])
        table = Table(title=f"{precision} step graph vs torch fp32")
        for col in ("size", "loss rel", "grad rel L2", "grad max abs", "grad p99 abs"):
            table.add_column(col, justify="right")
        for c in report:
            table.add_row(f"{c.height}x{c.width}", f"{c.loss_rel:.2e}", f"{c.grad_rel_l2:.2e}",
                          f"{c.grad_max_abs:.2e}", f"{c.grad_p99_abs:.2e}")
        console.print(table)
    elif validate:
        console.print("bf16 graphs need a GPU provider to run; not validated here")
    meta = json.loads((output / "export.json").read_text())
    console.print(f"wrote {output}/step.onnx ({meta['files']['step.onnx']['bytes'] / 1e6:.1f} MB), "
                  f"features.onnx, export.json (opset {spec.opset}, weights sha256 {w.sha256[:12]})")
