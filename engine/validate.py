"""Validate an exported step graph against the torch reference.

Names first, then shapes, then values: loss relative error and gradient
relative L2 error at several sizes (one non-square, one odd), with max and
p99 absolute differences reported.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
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
# The arbiter of a gradient over its tolerance: float64. Some weights (random seeds among them) make fp32's
# gradient ~2e-3 off float64 at a picture, torch's own fp32 steps included (direct at one picture, NNPACK's
# Winograd at another); a graph whose worst distance from float64 over the pictures is within FLOAT64_MARGIN x
# the worst of torch's fp32 steps there is as exact as the reference it is checked against.
FLOAT64_MARGIN = 2.0
# ...or within what fp32 reaches on its own: torch's fp32 steps were up to 6e-3 off float64 at some picture for
# random seeds 0, 7, 11 and 42 (a unit's ReLU flips); a wrong graph is off by several percent
FLOAT64_CEILING = {"fp32": 1e-2}


@dataclass(frozen=True)
class Comparison:
    height: int
    width: int
    loss_rel: float
    grad_rel_l2: float
    grad_max_abs: float
    grad_p99_abs: float
    grad_max_rel: float  # max |diff| / max |reference|
    # gradient relative L2 distances from float64 (the worst of torch's fp32 steps, the graph's): measured at
    # every size when the graph is over the tolerance at one
    fp64_torch: float | None = None
    fp64_graph: float | None = None

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


def _allowed(report: list[Comparison], precision: str, grad_tol: float) -> float:
    """The graph's allowed distance from float64: the tolerance, FLOAT64_MARGIN x the worst of torch's, or
    fp32's own reach (FLOAT64_CEILING), whichever is largest."""
    return max(grad_tol, FLOAT64_CEILING.get(precision, 0.0),
               FLOAT64_MARGIN * max(c.fp64_torch or 0.0 for c in report))


def _float64_verdicts(weights: Weights, loss: LossConfig, spec: ExportSpec, seen: list[tuple], report: list[Comparison]
                      ) -> list[Comparison]:
    """Each size's distances from float64 of torch's fp32 steps (direct; NNPACK's Winograd where it runs) and of
    the graph. seen: (content, style, image, the direct step's gradient, the graph's) per size."""
    from styleengine.engine.steps import TorchStep, make_targets
    from styleengine.engine.winograd import winograd_available

    exact = TorchStep(weights, loss, pooling=spec.pooling, conv="direct").in_float64()
    others = [TorchStep(weights, loss, pooling=spec.pooling, conv="winograd")] if winograd_available() else []
    out = []
    for c, (content, style, image, direct, graph) in zip(report, seen):
        exact.set_targets(make_targets(exact, loss, content.double(), [style.double()]))
        truth = exact(image.double()).grad.numpy()
        grads = [direct]
        for other in others:
            other.set_targets(make_targets(other, loss, content, [style]))
            grads.append(other(image).grad)
        torch_worst = max(compare_grads(truth, g.float().cpu().numpy())["grad_rel_l2"] for g in grads)
        out.append(replace(c, fp64_torch=torch_worst,
                           fp64_graph=compare_grads(truth, graph.float().cpu().numpy())["grad_rel_l2"]))
    for step in (exact, *others):
        step.close()
    return out


def validate_step(make_graph_step: Callable[[], OrtStep], weights: Weights, loss: LossConfig, spec: ExportSpec,
                  sizes=SIZES, seed: int = 0, images=noise_images, check: bool = True) -> list[Comparison]:
    """Run the graph step and the torch step on the same images (images(height, width, generator) ->
    (content, style, image); noise unless given).

    make_graph_step() returns a ready OrtStep (its session's names are checked
    first); raises ExportValidationError on a mismatch beyond the precision's
    tolerance (check=False: returns every size's figures instead, for a report).
    A gradient over its tolerance at some size is judged against float64
    (FLOAT64_MARGIN, FLOAT64_CEILING) before it is refused.
    """
    from styleengine.engine.steps import TorchStep, make_targets

    loss_tol, grad_tol = TOLERANCES[spec.precision]
    reference = TorchStep(weights, loss, pooling=spec.pooling, conv="direct")  # the exact convolutions
    graph_step = make_graph_step()
    gen = torch.Generator().manual_seed(seed)
    results: list[Comparison] = []
    seen: list[tuple] = []  # each size's pictures and gradients, for the float64 arbiter
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
            seen.append((content, style, image, ref.grad, got.grad))
            logger.info("validating the %s step graph at %dx%d: loss rel %.2e (tol %.0e), grad rel L2 %.2e "
                        "(tol %.0e), max abs %.2e, p99 abs %.2e", spec.precision, height, width, c.loss_rel,
                        loss_tol, c.grad_rel_l2, grad_tol, c.grad_max_abs, c.grad_p99_abs)
            if check and c.loss_rel > loss_tol:
                raise ExportValidationError(_disagrees(spec, c, loss_tol, grad_tol))
    finally:
        graph_step.close()
    if any(c.grad_rel_l2 > grad_tol for c in results):
        results = _float64_verdicts(weights, loss, spec, seen, results)
        allowed = _allowed(results, spec.precision, grad_tol)
        for c in results:
            logger.info("  against float64 at %dx%d: torch fp32 %.2e, the graph %.2e (allowed %.2e)", c.height,
                        c.width, c.fp64_torch, c.fp64_graph, allowed)
        if check:
            for c in results:
                if c.grad_rel_l2 > grad_tol and (c.fp64_graph or 0.0) > allowed:
                    raise ExportValidationError(_disagrees(spec, c, loss_tol, grad_tol) + (
                        f"; against float64 the graph is {c.fp64_graph:.2e} off, torch fp32 at worst "
                        f"{max(r.fp64_torch or 0.0 for r in results):.2e}"))
    return results


def _disagrees(spec: ExportSpec, c: Comparison, loss_tol: float, grad_tol: float) -> str:
    return (f"{spec.precision} step graph disagrees with torch at {c.height}x{c.width}: loss rel {c.loss_rel:.2e} "
            f"(tol {loss_tol:.0e}), grad rel L2 {c.grad_rel_l2:.2e} (tol {grad_tol:.0e}), "
            f"max abs {c.grad_max_abs:.2e}, p99 abs {c.grad_p99_abs:.2e}")
