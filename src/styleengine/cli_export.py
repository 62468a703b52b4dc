"""`styleengine export`: write the portable graphs and their manifest, strictly checked and validated against torch.

The folder gets step.onnx, features.onnx, tile_step.onnx and export.json,
nothing else: what a runtime derives from them for one machine (ONNX
Runtime's optimised CPU graph) goes to the cache folder. They are built and
validated in a staging folder beside them and published together (signals
held meanwhile): an interrupted or failed export leaves the folder as it
was, and files already there are replaced only with --force. A signal that
arrives once publishing has begun is held and reported: the export is whole,
so it exits 0.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import typer

from styleengine import paths
from styleengine.choices import CONV_ALGOS, GRAPH_PRECISIONS, MODELS, POOLINGS, WEIGHT_WORDS, check_choice, check_seed
from styleengine.cli_settings import parse_list
from styleengine.engine.capability import precisions
from styleengine.engine.settings import options
from styleengine.errors import ConfigError, ExportValidationError, UserError
from styleengine.engine.losses import LossConfig

_DEFAULT = LossConfig()
logger = logging.getLogger(__name__)


def _layers(name: str, value: Optional[str], default: tuple[str, ...]) -> tuple[str, ...]:
    """--content-layers, --style-layers as run reads them (',' is a slip, not none)."""
    return default if value is None else parse_list(name, options()[name], value)


def _writable_folder(output: Path) -> None:
    """ConfigError unless `output` is, or can be made as, a folder this process can write in; nothing is
    left behind by the check."""
    paths.check_folder(output, "output")
    where = output if output.is_dir() else output.parent
    if not where.is_dir():
        raise ConfigError(f"output folder's parent is not an existing folder: {where}")
    try:
        Path(tempfile.mkdtemp(prefix=".styleengine-probe-", dir=where)).rmdir()
    except OSError as e:
        raise ConfigError(f"cannot write into {where}: {e.strerror or e}") from e


STAGING_PREFIX = ".styleengine-export-"  # an export is built in such a folder beside its output, then moved in
OWNER_LOCK = ".owner.lock"  # inside it, locked by the exporting process for as long as it lives
# a staging folder is abandoned once its lock can be taken and it is this old (a live export makes the lock file,
# then takes it: a moment in which the lock is free), or, without a lock (killed before making it), this old
OWNED_AGE_S, UNOWNED_AGE_S = 10, 60


def _remove_abandoned(parent: Path) -> None:
    """Remove the staging folders in `parent` that no live export owns (a SIGKILL or a power cut left up to
    135 MB there, and every later export left them)."""
    for staging in parent.glob(f"{STAGING_PREFIX}*"):
        if staging.is_symlink() or not staging.is_dir() or not re.fullmatch(r"[0-9a-f]{12}",
                                                                           staging.name[len(STAGING_PREFIX):]):
            continue  # not a folder of ours (paths.fresh_folder names them; a user's .styleengine-export-mine)
        from styleengine.export.cache import GRAPH_FILES, META_FILE

        ours = (*GRAPH_FILES, META_FILE, OWNER_LOCK)  # and their temp files (paths.temp_beside's names)
        written = re.compile("|".join(rf"{re.escape(n)}|\.{re.escape(n)}\.[0-9a-f]{{8}}\.tmp" for n in ours))
        with os.scandir(staging) as entries:
            if not all(written.fullmatch(e.name) and e.is_file(follow_symlinks=False) for e in entries):
                continue  # it holds what no export writes: someone else's folder
        if paths.abandoned(staging, staging / OWNER_LOCK, unowned_age_s=UNOWNED_AGE_S, owned_age_s=OWNED_AGE_S):
            logger.info("removing %s, left by an export that did not finish", staging)
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _held(output: Path) -> Iterator[None]:
    """The existing folder `output` locked (flock) for the block; ConfigError if another export holds it."""
    if not output.is_dir():  # made by the publish: a second export then refuses it without --force
        yield
        return
    fd = os.open(output, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if not paths.try_lock(fd, blocking=False):
            raise ConfigError(f"another export into {output} is running; wait for it to finish")
        yield
    finally:
        os.close(fd)


def _existing(output: Path, names: tuple[str, ...], force: bool) -> None:
    """ConfigError if `output` already holds any of `names` and --force was not given."""
    found = [n for n in names if os.path.lexists(output / n)] if output.is_dir() else []
    for name in found:  # a rename cannot replace a folder: publishing would stop half-way, the old and new mixed
        problem = paths.not_a_file(output / name)
        if problem is not None and not os.path.islink(output / name):
            raise ConfigError(f"{output / name} {problem}; the export cannot replace it: move it away")
    if found and not force:
        raise ConfigError(f"{output} already holds {', '.join(found)}; use --force to replace "
                          f"{'it' if len(found) == 1 else 'them'}")


def _publish(staging: Path, output: Path, names: tuple[str, ...]) -> None:
    """Move the staged files into `output`, the manifest (the last of `names`) last. Call it with signals
    held (the caller decides what a signal that arrived meanwhile means)."""
    if not output.exists():
        (staging / OWNER_LOCK).unlink(missing_ok=True)  # the export's own lock is no file of the user's folder
        os.replace(staging, output)  # one rename: the whole folder appears at once
        return
    # over an earlier export (--force): its record goes first, the new one comes last, so a kill in between
    # leaves graphs without export.json (no export), never a record that names other graphs
    (output / names[-1]).unlink(missing_ok=True)
    for name in names:
        os.replace(staging / name, output / name)


def validation_provider(precision: str) -> str | None:
    """Where an exported graph is validated: where it will run. fp32 on the CPU; fp16 and bf16 on CUDA when
    there is a GPU, else fp16 on the CPU (a check of what the graph computes) and bf16 not at all."""
    if precision in precisions("ort", "cpu"):
        return "cpu"
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda" if precision in precisions("ort", "cuda") else None  # bf16: no CUDA kernels either
    return "cpu" if precision == "fp16" else None


_NOT_ON_A_GPU = {
    "fp16": "validated on the CPU provider, which has no fp16 convolution kernels and runs them in fp32 between "
            "casts: this checks what the graph computes, not GPU fp16 arithmetic (no GPU here)",
    "bf16": "not validated against torch: neither ONNX Runtime's CPU provider nor its CUDA provider has bf16 "
            "kernels for every op of the step (for bf16 use the torch backend); the graphs passed ONNX's strict checks",
}


def export(
    output: Path = typer.Option(..., "-o", "--output",
                                help="Folder to write step.onnx, features.onnx, tile_step.onnx and export.json",
                                parser=paths.named_folder("--output")),
    model: str = typer.Option("vgg19", help=" or ".join(MODELS)),
    weights: str = typer.Option("imagenet", help="imagenet, random, or a .safetensors/.pth file",
                                parser=paths.named_text("--weights", WEIGHT_WORDS)),
    pooling: str = typer.Option("avg", help="avg (the paper's) or max"),
    precision: str = typer.Option("fp32", help="fp32, fp16 or bf16 convolutions (losses stay fp32)"),
    conv: str = typer.Option("auto", help="auto (what `run --backend ort` runs on the CPU: winograd for fp32, else "
                                          "direct), direct (Conv nodes: each runtime's own algorithm) or winograd "
                                          "(fp32: F(4x4, 3x3) in standard ops)"),
    content_layers: Optional[str] = typer.Option(None, help=f"comma-separated (default {','.join(_DEFAULT.content_layers)})"),
    style_layers: Optional[str] = typer.Option(None, help=f"comma-separated (default {','.join(_DEFAULT.style_layers)})"),
    seed: int = typer.Option(0, help="seed for --weights random"),
    validate: bool = typer.Option(True, help="compare against torch at three sizes where the graph runs: fp32 on "
                                             "the CPU; fp16 and bf16 on CUDA, else fp16 on the CPU and bf16 not"),
    force: bool = typer.Option(False, "--force", help="replace the graphs and export.json already in the folder"),
) -> None:
    """Export the VGG feature graph and the loss-and-gradient step graphs to ONNX (portable: standard ops only)."""
    from styleengine.console import Console
    from rich.table import Table

    from styleengine.engine.capability import graph_conv
    from styleengine.engine.ort_step import OrtStep, graph_spec
    from styleengine.engine.validate import validate_step
    from styleengine.cli import signals

    paths.cache_root()  # the variable read with the flags, before onnx's import and the weights (as every command)
    from styleengine.export.cache import record_validation, write_export
    from styleengine.model.weights import load_weights

    check_choice("model", model, MODELS)
    check_choice("precision", precision, GRAPH_PRECISIONS)
    check_choice("pooling", pooling, POOLINGS)
    check_choice("conv", conv, CONV_ALGOS)
    check_seed(seed)
    conv = graph_conv(precision, conv)  # winograd graphs are fp32: refused before any work
    loss = LossConfig(content_layers=_layers("content_layers", content_layers, _DEFAULT.content_layers),
                      style_layers=_layers("style_layers", style_layers, _DEFAULT.style_layers))
    loss.validate(model)
    _writable_folder(output)
    from styleengine.export.cache import GRAPH_FILES, META_FILE

    names = (*GRAPH_FILES, META_FILE)
    _existing(output, names, force)
    with _held(output):  # a second export into it at once is refused: each said it wrote its own
        w = load_weights(model, weights, seed=seed)
        spec = graph_spec(w, loss, pooling, precision, conv)
        console = Console(stderr=True, markup=False)
        # published whole, it becomes the user's folder: made as mkdir makes one (the umask applied by the kernel,
        # never read by setting it, which changed it for every thread meanwhile)
        parent = output if output.is_dir() else output.parent
        _remove_abandoned(parent)
        staging = paths.fresh_folder(parent, STAGING_PREFIX)
        owner = None
        try:
            owner = paths.lock_file(staging / OWNER_LOCK)  # held while this process lives: the next export sees it
            paths.try_lock(owner, blocking=False)
            try:
                written = write_export(w, spec, staging)
            except OSError as e:
                raise UserError(f"cannot write the export beside {output} ({e.strerror or e}); nothing written") from None
            provider = validation_provider(precision) if validate else None
            if provider is not None:
                try:
                    report = validate_step(lambda: OrtStep(written, spec, loss, provider=provider), w, loss, spec)
                except ExportValidationError as e:
                    raise UserError(f"the exported graph disagrees with torch ({str(e).splitlines()[0]}); nothing "
                                    f"written to {output}") from None
                record_validation(written, [c.to_json() for c in report], provider)
                table = Table(title=f"{precision} step graph on ONNX Runtime {provider} vs torch fp32")
                arbiter = any(c.fp64_graph is not None for c in report)  # a size over the tolerance went to float64
                for col in ("size", "loss rel", "grad rel L2", "grad max abs", "grad p99 abs",
                            *(("float64: torch fp32 / graph",) if arbiter else ())):
                    table.add_column(col, justify="right")
                for c in report:
                    fp64 = (f"{c.fp64_torch:.2e} / {c.fp64_graph:.2e}" if c.fp64_graph is not None else "-",)
                    table.add_row(f"{c.height}x{c.width}", f"{c.loss_rel:.2e}", f"{c.grad_rel_l2:.2e}",
                                  f"{c.grad_max_abs:.2e}", f"{c.grad_p99_abs:.2e}", *(fp64 if arbiter else ()))
                console.print(table)
            _existing(output, names, force)  # a file that appeared meanwhile is the user's too
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if owner is not None:
                owner.close()
            raise
        # from here the export is as good as done: a signal is held to the command's end, and only reported (exit 0)
        signals.hold()
        try:
            # what was exported, from the staging folder: another export may replace the published one meanwhile
            mine = (staging / META_FILE).read_bytes()
            _publish(staging, output, names)
        except OSError as e:
            raise UserError(f"cannot move the export into {output}: {e.strerror or e}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if owner is not None:
                owner.close()
        if validate and precision in _NOT_ON_A_GPU and provider != "cuda":
            console.print(f"{precision}: {_NOT_ON_A_GPU[precision]}")
        meta = json.loads(mine)
        try:
            replaced = (output / META_FILE).read_bytes() != mine
        except OSError:
            replaced = True
        if replaced:  # two exports into one folder at once: the folder holds one of them whole
            console.print(f"warning: another export into {output} was published at the same time; run export "
                          f"--force again to be sure of what the folder holds")
        if signals.received is not None:  # before the last line: one after it stops nothing, and is not said
            console.print(f"{signals.name} arrived after the export was published; the export is complete")
        console.print(f"wrote {output}/step.onnx ({meta['files']['step.onnx']['bytes'] / 1e6:.1f} MB), "
                      f"features.onnx, tile_step.onnx, export.json (opset {spec.opset}, IR {meta['ir_version']}, "
                      f"weights sha256 {w.sha256[:12]})", soft_wrap=True)  # one line, piped or not
