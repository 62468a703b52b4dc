"""`styleengine run|texture ... --dry-run`: the plan, printed, without torch, weights or writing anything;
and the checks of the files a run writes, which the run, batch and the dry run make alike.

What `auto` resolves to comes from the tuning record when a trial for these
settings was kept here, else it says what the first run will measure.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from styleengine import paths
from styleengine.engine.autotune import _apply, by_rule, open_options, recorded_pick, tuning_enabled
from styleengine.engine.machine import probe_light
from styleengine.engine.plan import Plan, make_plan
from styleengine.engine.settings import Settings, run_inputs, settings_inputs, style_roles
from styleengine.errors import ConfigError, ImageError


def numbered(output: Path, iteration: int, iterations: int) -> Path:
    """OUT.png -> OUT_0050.png for iteration 50 of up to 9999."""
    return output.with_name(f"{output.stem}_{iteration:0{len(str(iterations))}d}{output.suffix}")


SNAPSHOT = "styleengine-snapshot"  # a snapshot's mark (images.save_image's text): the output it is a snapshot of
MARKED = ("PNG", "JPEG")  # snapshots of other formats carry no mark, and replace what is there


def snapshot_mark(output: Path) -> str:
    """The mark a snapshot of `output` carries: its name's bytes, one latin-1 character each, so that any name a
    file system takes can be written (a name not UTF-8 lost every snapshot) and read back as it was."""
    return os.fsencode(output.name).decode("latin-1")


def snapshot_problem(path: Path, output: Path) -> str | None:
    """Why a --save-every snapshot of `output` may not be written at `path` (what is there is not an earlier
    snapshot of it: a user's picture, a FIFO), or None."""
    if not os.path.lexists(path):
        return None
    kind = paths.not_a_file(path)  # a FIFO's open would wait for a writer
    if kind is not None:
        return f"it {kind}"
    # a snapshot of before stop 55 holds the name as text
    if paths.image_format(path) in MARKED and paths.marked(path, SNAPSHOT) not in (snapshot_mark(output), output.name):
        return f"a file is there that is not an earlier snapshot of {output.name}"
    return None


def check_snapshots(saves: list[Path], output: Path) -> None:
    """ConfigError for a file at a snapshot's name that is not an earlier snapshot of `output` (a user's picture
    named o_2.png was replaced, unsaid)."""
    for path in saves:
        problem = snapshot_problem(path, output)
        if problem is not None:
            raise ConfigError(f"cannot write --save-every snapshot {path}: {problem}; move it, or choose another -o")


def check_files(*, content: Path | None, styles: list[Path], output: Path, settings: Settings,
                 trace: Path | None, dry: bool = False, through: bool = True) -> None:
    """Every file the job writes can be written, and none of them is one it reads (dry: asked, nothing made;
    through: paths.check_writable's)."""
    total = settings.total_iterations()
    paths.check_output_path(output, through)
    every = settings.save_every
    saves = [numbered(output, i, total) for i in range(every, total, every)] if every else []
    if saves:
        paths.check_output_path(saves[-1])  # the same folder and suffix; the longest name
    if trace is not None:
        paths.check_writable(trace, "trace")
    inputs = run_inputs(content, styles, settings.init, settings.weights, settings.content_masks,
                        settings.style_masks)
    for path, what in [(output, "output"), *((p, "--save-every snapshot") for p in saves), (trace, "trace")]:
        if path is not None:
            paths.check_not_an_input(path, what, inputs)
    check_snapshots(saves, output)  # after the inputs: a snapshot that is one is said as one
    if trace is not None:
        for path, what in [(output, "the output image"), *((p, "a --save-every snapshot") for p in saves)]:
            if paths.same_file(trace, path):
                raise ConfigError(f"trace {trace} is {what}; choose another file name")
        paths.check_own(trace, "trace", paths.own_trace)
    check_cache_for(settings, make=not dry)


def check_cache_for(settings: Settings, make: bool = True) -> None:
    """ConfigError when the ONNX backends, which export into the cache before the first iteration, have no
    cache to use. auto needs none: its trial and race skip a graph the cache does not hold (a read-only cache
    refused `run` while `tune` went on). make=False: a dry run's, which makes no folder."""
    if settings.backend in ("ort", "tensorrt"):
        root = paths.cache_root()
        paths.check_cache_dir(root, "STYLEENGINE_CACHE_DIR", make=make)
        for name in (paths.CACHE_EXPORTS, paths.CACHE_ORT_OPTIMISED, paths.CACHE_TENSORRT):
            problem = paths.in_the_way(root / name)  # found only as the first export began, after the weights
            if problem is not None:
                raise ConfigError(f"cannot use the cache folder {root}: {problem}; remove it or set "
                                  f"STYLEENGINE_CACHE_DIR to another folder")


def _shape(path: str | os.PathLike, what: str) -> tuple[int, int]:
    """The (height, width) of the image `what` from its header, with the run's refusals in the run's words."""
    path = paths.as_given(path, what)  # as the messages show it (`--init ./noise`)
    paths.check_name(path, what)
    problem = paths.input_problem(what, path)
    if problem is not None:
        raise ImageError(problem)
    shape = paths.header_shape(path, what)  # what the run would decode: a body cut short passes
    paths.check_sides(f"{what} {path}", shape)
    return shape


def dry_plan(content: Path | None, styles: list[Path], settings: Settings) -> Plan:
    """The plan a run of these settings on these files would make here (no weights loaded, nothing written)."""
    texture = content is None
    settings.validate(texture=texture)
    content_shape = _shape(content, "content image") if content is not None else None
    style_shapes = [_shape(p, role) for p, role in zip(styles, style_roles(styles))]
    machine = probe_light()
    where, options = open_options(settings, machine)
    pick = recorded_pick(settings, where, options) if len(options) > 1 and tuning_enabled() else None
    if len(options) == 1:
        pick, auto = options[0], "the only option"
    elif pick is not None:
        auto = "measured earlier here (the tuning record)"
    else:
        pick = by_rule(settings, where, options, machine)
        auto = ("by rule (STYLEENGINE_TUNE=off)" if not tuning_enabled() else
                f"not measured here yet: the first run times {len(options)} candidates ("
                + ", ".join(" ".join(o) for o in options) + ") and keeps the fastest; by rule it would be "
                + " ".join(pick))
    placed = _apply(dataclasses.replace(settings, device=where.device, provider=where.provider), *pick, where)
    plan = make_plan(placed, content_shape, style_shapes, content_label=f"content image {content}",
                     style_labels=[f"style image {p}" for p in styles], auto=auto)
    _check_start_and_masks(settings, content_shape, styles, style_shapes)
    problem = paths.weights_problem(settings.weights)  # the run loads its weights after its masks
    if problem is not None:
        raise ConfigError(problem)
    if settings.weights not in paths.WEIGHT_WORDS:  # a file's own convention, from its header, as the run checks it
        from styleengine.model.convention import header_convention

        own = header_convention(Path(settings.weights).expanduser())
        if own is not None:
            settings.check_convention_range(own)
    return plan


def check_own_files(settings: Settings, decode: bool = False) -> dict[str, tuple[int, int]]:
    """The --init image and the masks, checked from their headers as the run checks their pixels (missing, not
    an image, under 32 px, a bomb): {role: shape}. `decode`: read whole, as the run reads them (a batch, a
    server or a video, whose every picture reads them: a body cut short, a black mask, or content masks that
    overlap failed every one)."""
    shapes = {}
    regions: list[Any] = []  # the content masks read whole: their overlap is checked before the style masks
    files = settings_inputs(settings.init, settings.weights, content_masks=settings.content_masks,
                            style_masks=settings.style_masks)
    for role, path in files.items():
        if role == "weights file":
            continue
        shapes[role] = _shape(path, role)  # missing too, in the run's words (an init's: the starts)
        if decode:
            from styleengine.engine import images, masks

            if role == "init image":
                images.load_image(path, role)
                continue
            mask = masks.read_mask(path, role)
            masks.check_paints(role, path, mask)
            if role.startswith("content mask"):
                regions.append(mask)
                if len(regions) == len(settings.content_masks or ()):
                    masks.check_overlap(regions)
    return shapes


def _check_start_and_masks(settings: Settings, content_shape: tuple[int, int] | None, styles: list[Path],
                           style_shapes: list[tuple[int, int]]) -> None:
    """The --init image from its header, and the masks read whole as the run reads them after the plan
    (load_init, masks.load), in its order: not an image, under 32 px, a mask of another aspect ratio than its
    image, one that is black, content masks that overlap."""
    check_own_files(dataclasses.replace(settings, content_masks=None, style_masks=None))
    if settings.content_masks and content_shape is not None:  # a texture has none (validate refused them)
        from styleengine.engine import masks  # torch: only a masked run's dry run pays for it

        masks.load(settings, content_shape, style_shapes, [f"style image {p}" for p in styles])
