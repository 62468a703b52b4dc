"""The settings flags of `run`, `texture`, `batch` (and any command that takes a run's settings), generated
from the fields' metadata in engine/settings.py: no flag is spelled out by hand.

`with_settings(body, command)` gives typer a function whose signature is
the body's own parameters followed by one option per setting (typer reads
`__signature__`); the body gets the flags' values in `**flags` and turns
them into Settings with `settings_from`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Callable, Optional, get_type_hints

import typer
from typer._click.globals import get_current_context

from typer._click.core import ParameterSource

from styleengine import paths
from styleengine.engine.recipes import recipe_values
from styleengine.engine.settings import (DEFAULTS, KINDS, TEXTURE, TEXTURE_INIT, Option, Settings, Underflow,
                                         expanded_paths, options)
from styleengine.errors import ConfigError


def flag(name: str, meta: Option) -> str:
    return meta.flag or "--" + name.replace("_", "-")


def _default(name: str, meta: Option, command: str, defaults: dict[str, Any]) -> Any:
    if command == TEXTURE and name == "init":
        return TEXTURE_INIT
    value = defaults.get(name, getattr(DEFAULTS, name))
    if meta.kind in ("words", "numbers") and value is not None:
        return ",".join(str(v) for v in value)  # shown and typed as comma-separated text
    return value


def parameters(command: str, names: tuple[str, ...] | None = None, defaults: dict[str, Any] | None = None
               ) -> list[inspect.Parameter]:
    """One keyword parameter per setting `command` offers (or the `names` among them), annotated for typer;
    `defaults`: another command's own defaults for some of them (invert's smaller size)."""
    found = []
    for name, meta in options(command).items():
        if names is not None and name not in names:
            continue
        kind = KINDS[meta.kind][1]
        declared = flag(name, meta)
        if meta.kind == "flag":
            declared = f"{declared}/--no-{declared[2:]}"
        help_text = meta.texture_help if command == TEXTURE and meta.texture_help else meta.help
        annotation = Annotated[Optional[kind] if meta.optional else kind,  # type: ignore[valid-type]
                               typer.Option(declared, help=help_text, rich_help_panel=meta.group)]
        default = _default(name, meta, command, defaults or {})
        found.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return found


def _given(name: str) -> bool:
    """Whether flag `name` was named on the command line (or its environment), not left at its default."""
    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def parse_list(name: str, meta: Option, value: Any) -> Any:
    """A list setting's value from its flag's comma-separated text; ConfigError naming the flag ("," is a slip,
    not none)."""
    try:
        return meta.parse(value)
    except Underflow as e:
        raise ConfigError(f"{flag(name, meta)} {value!r}: a number in it is {e}") from None
    except ValueError:
        raise ConfigError(f"{flag(name, meta)} must be comma-separated "
                          f"{'numbers' if meta.kind == 'numbers' else 'names'}, got {value!r}") from None


def _expanded(name: str, meta: Option, value: Any) -> Any:
    """expanded_paths, an unset $VARIABLE said with its flag."""
    try:
        return expanded_paths(meta, value)
    except ConfigError as e:
        raise ConfigError(f"{flag(name, meta)} {e}") from None


def settings_from(flags: dict[str, Any], command: str, recipe: str | None = None, **fixed: Any) -> Settings:
    """Settings from the generated flags' values (other keys are ignored): comma lists split, a path setting's
    value that is not one of its words, and each of a list of files, expanded (`--weights=~/w.pth`: no shell
    expanded it). recipe: another
    tool's recipe (engine/recipes.py) under the flags named on the command line."""
    from styleengine.engine.autotune import tuning_enabled

    # the environment's settings read with the flags: STYLEENGINE_TUNE=bogus failed every batch job, and a
    # STYLEENGINE_CACHE_DIR naming no folder every one that tuned (after its weights had loaded)
    tuning_enabled()
    paths.cache_root()
    values: dict[str, Any] = {}
    for name, meta in options(command).items():
        if name not in flags or (recipe is not None and not _given(name)):
            continue
        value = flags[name]
        if (meta.files or meta.words) and isinstance(value, str) and not value.strip():
            # `--content-mask "$MASK"` with MASK unset ran unmasked; `--weights ''` read the working folder
            wanted = "its files" if meta.files else f"a file or one of {', '.join(meta.words)}"
            raise ConfigError(f"{flag(name, meta)} is empty; name {wanted}, or leave the flag out")
        if meta.kind in ("words", "numbers") and value is not None:
            value = parse_list(name, meta, value)
        values[name] = _expanded(name, meta, value)
    if recipe is not None:
        values = recipe_values(recipe, values)
    return Settings(**{**values, **fixed})


def with_settings(body: Callable[..., None], command: str, names: tuple[str, ...] | None = None,
                  defaults: dict[str, Any] | None = None) -> Callable[..., None]:
    """`body` (its own parameters, then **flags) as a command offering every setting of `command` as a flag."""
    hints = get_type_hints(body, include_extras=True)  # the body's module's names, not this one's
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(body).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(body)
    def command_function(**values: Any) -> None:
        body(**values)

    signature = inspect.Signature(own + parameters(command, names, defaults))
    command_function.__signature__ = signature  # type: ignore[attr-defined]
    # typer also reads the annotations: resolved ones, since this module does not know the body's names
    command_function.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    del command_function.__wrapped__  # typer must read the generated signature, not the body's
    return command_function
