"""`styleengine run` and `styleengine texture`: flags -> Settings, then cli_job.execute.

Every settings flag is generated from engine/settings.py's metadata
(cli_settings); only the files and the dry run are declared here. The
engine (torch) is imported only for a real run: a dry run stays torch-free.
"""
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from styleengine.cli_settings import settings_from, with_settings
from styleengine.paths import check_outside_style_folders, expand_style_arguments, named_file
from styleengine.engine.settings import RUN, TEXTURE, Settings
from styleengine.errors import printable

Output = Annotated[Path, typer.Option("--output", "-o", help="Output image (.png, .jpg, ...); its folder must exist.",
                                      show_default=False, parser=named_file("--output"))]
Trace = Annotated[Optional[Path], typer.Option("--trace", help="Write one JSON object per iteration here.",
                                               parser=named_file("--trace"))]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan (sizes, iterations, tiles, L-BFGS history, "
                                                        "what auto resolves to) and stop: no weights loaded, "
                                                        "nothing written. Files are checked as the run checks "
                                                        "them, short of decoding: a damaged image or weights "
                                                        "file, or what a mask holds, the run finds.")]
# texts: typer makes "" the Path ".", the working folder as a style folder
Styles = Annotated[list[str], typer.Argument(help="One or more style images: several, a comma-separated list or a "
                                                   "folder of them.", show_default=False)]
Recipe = Annotated[Optional[str], typer.Option(
    "--recipe", help="Another tool's recipe: neural-style-pt (its defaults; --content-weight, --style-weight and "
                     "--tv-weight then read in its units; other flags win as given). See the README.",
    show_default=False)]


def _dry_run(content: Path | None, styles: list[Path], output: Path, trace: Path | None, settings: Settings) -> None:
    from styleengine.console import Console, warnings_on

    with warnings_on(Console(stderr=True, markup=False)):  # PIL's, as the run says them
        _dry_run_checked(content, styles, output, trace, settings)


def _dry_run_checked(content: Path | None, styles: list[Path], output: Path, trace: Path | None,
                     settings: Settings) -> None:
    from styleengine import paths
    from styleengine.cli_plan import check_files, dry_plan
    from styleengine.console import say
    from styleengine.engine.settings import run_inputs

    # what the run refuses before its work, the dry run refuses too (a trace onto the content, a FIFO as --init)
    settings.validate(texture=content is None)
    check_files(content=content, styles=styles, output=output, settings=settings, trace=trace, dry=True)
    plan = dry_plan(content, styles, settings)
    paths.check_inputs(run_inputs(content, styles, settings.init, settings.weights, settings.content_masks,
                                  settings.style_masks))
    for line in plan.lines():
        say(printable(line))


def _run(content: Annotated[Path, typer.Argument(help="Content image.", show_default=False,
                                                 parser=named_file("the content image path"))], styles: Styles,
         output: Output, trace: Trace = None, dry_run: DryRun = False, recipe: Recipe = None, **flags: Any) -> None:
    """Stylise CONTENT with STYLE... (Gatys et al.) and write OUT."""
    settings = settings_from(flags, RUN, recipe)
    style_paths, folders = expand_style_arguments(styles)
    check_outside_style_folders([(output, "output"), (trace, "trace")], folders)  # a snapshot is beside the output
    if dry_run:
        return _dry_run(content, style_paths, output, trace, settings)
    from styleengine.cli_job import execute

    execute(content=content, styles=style_paths, output=output, settings=settings, trace=trace)


def _texture(styles: Styles, output: Output, trace: Trace = None, dry_run: DryRun = False, recipe: Recipe = None,
             **flags: Any) -> None:
    """Synthesise a texture from STYLE... (the same loss with alpha = 0, white-noise init) and write OUT."""
    settings = settings_from(flags, TEXTURE, recipe)
    settings.check_texture_start()  # asked for: texture's own default is noise
    style_paths, folders = expand_style_arguments(styles)
    check_outside_style_folders([(output, "output"), (trace, "trace")], folders)  # a snapshot is beside the output
    if dry_run:
        return _dry_run(None, style_paths, output, trace, settings)
    from styleengine.cli_job import execute

    execute(content=None, styles=style_paths, output=output, settings=settings, trace=trace)


run = with_settings(_run, RUN)
texture = with_settings(_texture, TEXTURE)
