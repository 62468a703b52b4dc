"""The Python API for notebooks: `styleengine.stylise(content, style, **settings) -> PIL.Image`.

Imported on first call (`import styleengine` stays free of torch). Takes
what image libraries hand over: paths, PIL images, uint8 arrays (0-255),
float arrays (0-1, checked); never prints (the run's weights line goes to
`logging`).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
from typing import Any, Callable

import numpy as np
from PIL import Image

from styleengine import paths
from styleengine.engine import images, loop
from styleengine.engine.recipes import RECIPES, recipe_values
from styleengine.engine.settings import RUN, TEXTURE, TEXTURE_INIT, expanded_paths, options, said_as
from styleengine.engine.stylise import Settings, stylise as run
from styleengine.model.convention import Convention
from styleengine.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)


def settings_of(given: dict[str, Any], recipe: str | None = None) -> Settings:
    """Settings from keyword arguments; an unknown name is a ConfigError naming the closest field. recipe: another
    tool's recipe (engine/recipes.py) under the arguments given, whose weights are then in its units (as
    `run --recipe`)."""
    meta_of = {f.name: f.metadata.get("option") for f in dataclasses.fields(Settings)}  # every command's
    parsed: dict[str, Any] = {}
    for name, value in given.items():  # each read as its flag's text or a jobs file's value is
        if name not in meta_of:
            close = difflib.get_close_matches(name, list(meta_of), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; settings are {', '.join(meta_of)}"
            raise ConfigError(f"unknown setting {name!r}{hint}")
        meta, value = meta_of[name], _plain(value)
        if meta is None:  # not a flag's (the convention object)
            if value is not None and not isinstance(value, Convention):
                raise ConfigError(f"{name} must be a styleengine.model.convention.Convention (or None), got "
                                  f"{type(value).__name__}; channel_order, pixel_range, mean and std set its fields")
            parsed[name] = value
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and meta.kind == "numbers":
            value = (value,)  # one number: a list of one
        if isinstance(value, (list, tuple)):
            value = [_plain(v) for v in value]
        try:
            parsed[name] = expanded_paths(meta, meta.parse(value))  # `init="~/start.png"`, as its flag reads it
        except ConfigError as e:  # an unset $VARIABLE
            raise ConfigError(f"{name} {e}") from None
        except (TypeError, ValueError, OverflowError) as e:
            shown = " ".join(repr(value).split())  # one line: an array's repr has many
            shown = shown if len(shown) <= 60 else f"{shown[:40]}... ({len(shown)} characters)"
            raise ConfigError(f"{name} {shown}: {e}") from None
    if recipe is not None:
        if not isinstance(recipe, str):
            raise ConfigError(f"recipe must be a name ({', '.join(RECIPES)}), got {type(recipe).__name__}")
        parsed = recipe_values(recipe, parsed, flags=False)  # said as the keyword arguments are named
    return Settings(**parsed)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds, a 1-D array as a list, a path as its text: what the parsers
    take."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim <= 1):
        return value.tolist()
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _expanded(picture: Any, role: str) -> Any:
    """A picture's path with `~` and $VARS expanded, as the path settings (init=...) and a jobs file's images
    are; a picture that is no path as it is."""
    if not isinstance(picture, (str, os.PathLike)):
        return picture
    try:
        return paths.expand_text(picture)
    except ConfigError as e:
        raise ConfigError(f"{role} {e}") from None


def _unused(given: dict[str, Any], config: Settings, *, texture: bool) -> list[tuple[str, str]]:
    """(name, why) of each setting given that this call cannot use (the command it stands for, `texture` or `run`,
    has no such option) and set to do something: taken, as print_every is, so that one call's settings serve both."""
    offered, fields = options(TEXTURE if texture else RUN), {f.name: f for f in dataclasses.fields(Settings)}
    return [(name, "a texture has no content image" if name in options(RUN) else
             "only a video's frames read it (styleengine video)")
            for name in given if name not in offered and "option" in fields[name].metadata
            and getattr(config, name)]  # 0, (), None, False: what the call does anyway


def _called(function: Callable) -> str:
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return "a lambda" if name.endswith("<lambda>") else name


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (a KeyboardInterrupt, also one raised by the callback) stopped a stylise() call: a
    KeyboardInterrupt that carries the picture as far as it got (`.image`, a PIL image) and how many iterations
    it had run. (The API installs no signal handlers: SIGTERM ends the process as Python's default does.)"""

    def __init__(self, image: Image.Image, iterations: int):
        super().__init__(f"interrupted after {iterations} iterations; the picture so far is in .image")
        self.image, self.iterations = image, iterations


def stylise(content: Any, style_or_styles: Any, *, callback: Callable | None = None, recipe: str | None = None,
            **settings: Any) -> Image.Image:
    """Stylise `content` with one style or a list of them; returns the result as a PIL image.

    content, styles: a path, a PIL image, or an (H, W[, 3|4]) numpy array: uint8 is 0-255, float must be
    in [0, 1] (a 0-255 float array is refused, not guessed at). settings: any Settings field by name
    (size=512, iterations=300, weights="imagenet", model="vgg19", style_weight=..., ...); content None
    synthesises a texture. recipe: another tool's recipe, "neural-style-pt" (its defaults under the settings
    given, whose content_weight, style_weight and tv_weight are then in its units).
    callback(record, current): called every iteration, as engine/stylise.py's;
    `current` is the image of the newest record, exact at every save_every-th iteration.
    A setting the call cannot use (print_every; a texture's content_weight) is taken and logged as ignored.
    User errors (a bad image, setting or weights file) raise styleengine.errors.UserError, one line. Ctrl-C
    raises styleengine.api.Interrupted, a KeyboardInterrupt holding the picture so far in `.image`.
    """
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (record, current), got {type(callback).__name__}")
    if callback is not None:  # `lambda record: ...` failed at the first iteration, after the weights and the step
        try:
            inspect.signature(callback).bind(None, None)
        except TypeError:
            raise TypeError(f"callback must take two arguments (record, current); {_called(callback)} takes "
                            f"{inspect.signature(callback)}") from None
        except ValueError:  # no signature to read (some builtins): called as it is
            pass
    config = settings_of(settings, recipe)
    # taken (a command's settings passed through stay valid), but said: they do nothing here (a value the run
    # refuses, save_every=-1, is not said to be ignored first)
    if "print_every" in settings and config.print_every > 0:  # a command's progress lines: the API prints nothing
        logger.warning("print_every is ignored: stylise() prints nothing; pass callback=... to follow the run "
                       "(it gets every iteration's record)")
    if "save_every" in settings and config.save_every > 0 and callback is None:  # snapshots are a command's
        logger.warning("save_every is ignored without callback=...: it makes the callback's image exact at every "
                       "N-th iteration (a command writes it as a snapshot)")
    if content is None and "init" not in settings and config.init == "content":  # the default, not a recipe's
        config = dataclasses.replace(config, init=TEXTURE_INIT)  # a texture starts from noise, as `texture` does
    styles = style_or_styles if isinstance(style_or_styles, (list, tuple)) else [style_or_styles]
    style_roles = [f"style image {i + 1}" if len(styles) > 1 else "style image" for i in range(len(styles))]
    content_array = images.from_picture(_expanded(content, "content image"), "content image") \
        if content is not None else None
    style_arrays = [images.from_picture(_expanded(s, role), role) for s, role in zip(styles, style_roles)]
    try:
        if content is None:
            config.check_texture_start()
        config.validate(texture=content is None)
        for name, why in _unused(settings, config, texture=content is None):  # after validate: none it refuses
            logger.warning("%s is ignored: %s", name, why)
        from styleengine.cli_plan import check_cache_for

        check_cache_for(config)  # the command's words, before any work (an export said "free some space")
        image, result = run(content_array, style_arrays, config, callback=callback)
    except (ConfigError, UnavailableError) as e:  # a setting said as the keyword argument that sets it, not its flag
        raise said_as(e, {f.name: f.name for f in dataclasses.fields(Settings)}) from None
    logger.info("stylised: %d iterations, stopped: %s", result.iterations, result.stopped or "done")
    if result.stopped == "interrupted":  # returned as a finished result, a caller could not tell
        raise Interrupted(images.to_pil(np.asarray(image)), result.iterations)
    if result.stopped == "non-finite loss":  # the start image came back as if stylised
        if not result.iterations:
            raise ConfigError(loop.non_finite(0))
        logger.warning("%s; the last finite image is returned", loop.non_finite(result.iterations))
    return images.to_pil(np.asarray(image))
