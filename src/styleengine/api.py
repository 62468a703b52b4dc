"""The Python API for notebooks: `styleengine.stylise(content, style, **settings) -> PIL.Image`.

Imported on first call (`import styleengine` stays free of torch). Takes
what image libraries hand over: paths, PIL images, uint8 arrays (0-255),
float arrays (0-1, checked); never prints (the run's weights line goes to
`logging`).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from typing import Any, Callable

import numpy as np
from PIL import Image

from styleengine.engine import images
from styleengine.engine.settings import TEXTURE_INIT, options
from styleengine.engine.stylise import Settings, stylise as run
from styleengine.errors import ConfigError

logger = logging.getLogger(__name__)


def settings_of(given: dict[str, Any]) -> Settings:
    """Settings from keyword arguments; an unknown name is a ConfigError naming the closest field."""
    fields = [f.name for f in dataclasses.fields(Settings)]
    for name in given:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; settings are {', '.join(fields)}"
            raise ConfigError(f"unknown setting {name!r}{hint}")
    # comma lists and single names or numbers, read as the flags read them, become the tuples Settings holds
    for name in ("content_layers", "style_layers", "style_layer_weights", "style_blend", "content_masks",
                 "style_masks"):
        value = given.get(name)
        if isinstance(value, (int, float, os.PathLike)) and not isinstance(value, bool):
            value = (value,)
        if isinstance(value, (list, tuple)):  # mask paths as pathlib hands them over
            value = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        if isinstance(value, (str, list, tuple)):
            try:
                given = {**given, name: options()[name].parse(value)}
            except ValueError as e:
                raise ConfigError(f"{name} must be comma-separated or a list of "
                                  f"{'numbers' if options()[name].kind == 'numbers' else 'names'}, got {value!r} "
                                  f"({e})") from None
    return Settings(**given)


def stylise(content: Any, style_or_styles: Any, *, callback: Callable | None = None, **settings: Any) -> Image.Image:
    """Stylise `content` with one style or a list of them; returns the result as a PIL image.

    content, styles: a path, a PIL image, or an (H, W[, 3|4]) numpy array: uint8 is 0-255, float must be
    in [0, 1] (a 0-255 float array is refused, not guessed at). settings: any Settings field by name
    (size=512, iterations=300, weights="imagenet", model="vgg19", style_weight=..., ...); content None
    synthesises a texture. callback(record, current): called every iteration, as engine/stylise.py's.
    User errors (a bad image, setting or weights file) raise styleengine.errors.UserError, one line.
    """
    if content is None and "init" not in settings:  # a texture starts from noise, as `styleengine texture` does
        settings = {**settings, "init": TEXTURE_INIT}
    config = settings_of(settings)
    styles = style_or_styles if isinstance(style_or_styles, (list, tuple)) else [style_or_styles]
    content_array = images.from_picture(content, "content image") if content is not None else None
    style_arrays = [images.from_picture(s, f"style image {i + 1}" if len(styles) > 1 else "style image")
                    for i, s in enumerate(styles)]
    config.validate(texture=content is None)
    image, result = run(content_array, style_arrays, config, callback=callback)
    logger.info("stylised: %d iterations, stopped: %s", result.iterations, result.stopped or "done")
    return images.to_pil(np.asarray(image))
