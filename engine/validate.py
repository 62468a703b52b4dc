"""Validate an exported step graph against the torch reference.

Names first, then shapes, then values: loss relative error and gradient
relative L2 error at several sizes (one non-square, one odd), with max and
p99 absolute differences reported.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from styleengine.errors import ExportValidationError
from styleengine.engine.losses import LossConfig
from styleengine.export.spec import ExportSpec
from styleengine.model.weights import Weights

if TYPE_CHECKING:  # ort_step imports this module's validate_step where it runs
    from styleengine.engine.ort_step import OrtStep

logger = logging.getLogger(__name__)

# (loss relative error, gradient relative L2 error) per precision; torch fp32
# itself is ~3e-4 from fp64 in gradient, so fp32 graphs must agree to 1e-3
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 5e-2), "bf16": (3e-2, 1e-1)}
SIZES = ((64, 64), (96, 80), (72, 57))  # square, non-square, odd after pooling


@dataclass(frozen=True)
class Comparison:
    height: int
    width: int
    loss_rel: float
    grad_rel_l2: float
    grad_max_abs: float
    grad_p99_abs: float
    grad_max_rel: float  # max |diff| / max |reference|

    def to_json(self) -> dict:
        return asdict(self)


def compare_grads(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    ref, oth = reference.astype(np.float64).ravel(), other.astype(np.float64).ravel()
    diff = np.abs(oth - ref)
    return {"grad_rel_l2": float(np.linalg.norm(oth - ref) / max(float(np.linalg.norm(ref)), 1e-30)),
            "grad_max_abs": float(diff.max()), "grad_p99_abs": float(np.quantile(diff, 0.99)),
            "grad_max_rel": float(diff.max() / max(np.abs(ref).max(), 1e-30))}


def check_signature(session, spec: ExportSpec) -> None:
    """Input and output names of a session against the spec."""
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if sorted(got_in) != sorted(spec.input_names()):
        raise ExportValidationError(f"step graph inputs {got_in} differ from the spec's {spec.input_names()}")
    if sorted(got_out) != sorted(spec.output_names()):
        raise ExportValidationError(f"step graph outputs {got_out} differ from the spec's {spec.output_names()}")


def noise_images(height: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, style, image): three uniform noise images."""
    return (torch.rand(1, 3, height, width, generator=gen), torch.rand(1, 3, height, width, generator=gen),
            torch.rand(1, 3, height, width, generator=gen))


def validate_step(make_graph_step: Callable[[], OrtStep], weights: Weights, loss: LossConfig, spec: ExportSpec,
                  sizes=SIZES, seed: int = 0, images=noise_images, check: bool = True) -> list[Comparison]:
    """Run the graph step and the torch step on the same images (images(height, width, generator) ->
    (content, style, image); noise unless given).

    make_graph_step() returns a ready OrtStep (its session's names are checked
    first); raises ExportValidationError on a mismatch beyond the precision's
    tolerance (check=False: returns every size's figures instead, for a report).
    """
    from styleengine.engine.steps import TorchStep, make_targets

    loss_tol, grad_tol = TOLERANCES[spec.precision]
    reference = TorchStep(weights, loss, pooling=spec.pooling, conv="direct")  # the exact convolutions
    graph_step = make_graph_step()
    gen = torch.Generator().manual_seed(seed)
    results = []
    try:
        check_signature(graph_step.sessions.get("step"), spec)  # names before values
        for height, width in sizes:
            content, style, image = images(height, width, gen)
            targets = make_targets(reference, loss, content, [style])
            reference.set_targets(targets)
            graph_step.set_targets(targets)
            ref, got = reference(image), graph_step(image.to(graph_step.device))
            if tuple(got.grad.shape) != tuple(ref.grad.shape):
                raise ExportValidationError(f"gradient shape {tuple(got.grad.shape)} != {tuple(ref.grad.shape)}")
            stats = compare_grads(ref.grad.cpu().numpy(), got.grad.float().cpu().numpy())
            c = Comparison(height, width, abs(got.loss - ref.loss) / max(abs(ref.loss), 1e-30), **stats)
            results.append(c)
            logger.info("validating the %s step graph at %dx%d: loss rel %.2e (tol %.0e), grad rel L2 %.2e "
                        "(tol %.0e), max abs %.2e, p99 abs %.2e", spec.precision, height, width, c.loss_rel,
                        loss_tol, c.grad_rel_l2, grad_tol, c.grad_max_abs, c.grad_p99_abs)
            if check and not (c.loss_rel <= loss_tol and c.grad_rel_l2 <= grad_tol):
                raise ExportValidationError(
                    f"{spec.precision} step graph disagrees with torch at {height}x{width}: loss rel {c.loss_rel:.2e} "
                    f"(tol {loss_tol:.0e}), grad rel L2 {c.grad_rel_l2:.2e} (tol {grad_tol:.0e}), "
                    f"max abs {c.grad_max_abs:.2e}, p99 abs {c.grad_p99_abs:.2e}")
    finally:
        graph_step.close()
    return results
