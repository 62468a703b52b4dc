"""`styleengine run|texture ... --dry-run`: the plan, printed, without torch, weights or writing anything.

What `auto` resolves to comes from the tuning record when a trial for these
settings was kept here, else it says what the first run will measure.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from styleengine import paths
from styleengine.engine.autotune import _apply, by_rule, open_options, recorded_pick, tuning_enabled
from styleengine.engine.machine import probe_light
from styleengine.engine.plan import Plan, make_plan
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError, ImageError


def _shape(path: Path, what: str) -> tuple[int, int]:
    paths.check_name(path, what)
    if not path.is_file():
        raise ImageError(f"{what} not found (or not a file): {path}")
    shape = paths.image_shape(path)
    if shape is None:
        raise ImageError(f"cannot read the size of {what} {path}: not an image PIL can open")
    return shape


def dry_plan(content: Path | None, styles: list[Path], settings: Settings) -> Plan:
    """The plan a run of these settings on these files would make here (no weights loaded, nothing written)."""
    texture = content is None
    settings.validate(texture=texture)
    if settings.weights not in ("imagenet", "random") and not Path(settings.weights).is_file():
        raise ConfigError(f"weights file not found (or not a file): {settings.weights}")
    content_shape = _shape(content, "content image") if content is not None else None
    style_shapes = [_shape(p, "style image") for p in styles]
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
    return make_plan(placed, content_shape, style_shapes, content_label=f"content image {content}",
                     style_labels=[f"style image {p}" for p in styles], auto=auto)
