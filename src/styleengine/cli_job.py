"""One run or texture job for the CLI: check everything, run with a progress bar, write the files.

Order: (1) settings, then every file the job will write (folders writable,
an encoder for the suffix, names that fit, no output that is an input,
the export cache), then the images (and with them the sizes at every scale
and the memory they need), then the weights; (2) the long work; (3) the
result, written whatever stopped the loop and, should that write fail,
saved next to the trace or in the temp folder instead. A signal during (1)
or set-up is one line (exit 130 for Ctrl-C, 143 for SIGTERM) and nothing
is written; during the loop it stops the loop and the current image is
written (cli.py explains why SIGTERM is raised as KeyboardInterrupt).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import typer

from styleengine.cli import signals
from styleengine import paths
from styleengine.engine import images, loop, masks
from styleengine.engine.images import rescue, rescued
from styleengine.cli_plan import SNAPSHOT, check_files, numbered, snapshot_mark, snapshot_problem
from styleengine.engine.stylise import Settings, check_run, load_init, load_run_weights, stylise
from styleengine.engine.settings import style_roles
from styleengine.console import warnings_on
from styleengine.errors import ConfigError, ImageError, UserError, first_line, printable


class TraceWriter:
    """--trace: one JSON object per iteration, the file opened at the first record (so an interrupted
    set-up leaves no empty file). A write or close that fails (a full disk) stops the trace, not the run; a
    trace that holds no whole line then is removed."""

    def __init__(self, path: Path | None, plan: dict[str, Any] | None = None):
        self.path, self.file, self.failure = path, None, None
        self.lines = 0  # lines written whole (flushed)
        self.whole = 0  # bytes of those lines: a failed write's torn tail is cut back to here
        self.plan = plan  # the run's plan, in the first iteration's object
        self.written_at: Path | None = None  # the regular file opened (a link's file): a failure cleans it up

    def _extra(self) -> dict[str, Any]:
        plan, self.plan = self.plan, None
        return {"plan": plan} if plan is not None else {}

    def write(self, record: Any) -> None:
        """One iteration's record."""
        if self.path is None or self.failure is not None:
            return
        self.write_object({
            "iteration": record.iteration, "loss": record.loss, "content_loss": record.content_loss,
            "style_loss": record.style_loss, "tv_loss": record.tv_loss, "seconds": record.seconds,
            "height": record.height, "width": record.width,
            **(record.distances.to_json() if record.distances is not None else {}), **self._extra()},
            f"iteration {record.iteration}")

    def write_object(self, line: dict[str, Any], at: str) -> None:
        """One JSON object as a line (`at` names it in a failure: "iteration 7", "frame 3")."""
        if self.path is None or self.failure is not None:
            return
        try:
            if self.file is None:
                self._check_again()
                self.file = self._open()
            text = json.dumps(line) + "\n"
            self.file.write(text)
            self.file.flush()
            self.lines += 1
            self.whole += len(text.encode("utf-8"))
        except ConfigError as e:  # _check_again: nothing opened, nothing to remove
            self.failure = f"trace {self.path} not written: " + first_line(e).removeprefix(
                f"cannot write trace {self.path}: ")
        except OSError as e:
            self.failure = f"trace {self.path} stopped at {at}: {e.strerror or e}"
            self.close()
            # the file opened, never a link to it (a descriptor's name, say /dev/stdout: nothing to clean up)
            if self.written_at is not None and self.lines == 0:  # an empty or torn first line is no trace
                with contextlib.suppress(OSError):
                    self.written_at.unlink()
            elif self.written_at is not None:  # every line left parses, as a manifest's do
                with contextlib.suppress(OSError):
                    os.truncate(self.written_at, self.whole)

    def _open(self) -> Any:
        """The trace's file for writing: an earlier trace with other names (an archive's hard link, reached by a
        link or not) is replaced by a new file of its mode and owner, those names keeping it; a descriptor's name
        (/dev/stdout, /dev/fd/N) is written through as it is. Sets `written_at`: the file a failure cleans up."""
        assert self.path is not None
        if paths.names_a_descriptor(self.path):  # appended to, as the shell's `>>` asks (`>` emptied it already)
            return open(self.path, "a", encoding="utf-8")
        target = Path(os.path.realpath(self.path))  # the file, not a link the user made to it
        found = target.stat() if target.is_file() else None
        if found is not None and found.st_nlink > 1:
            target.unlink()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, found.st_mode & 0o7777)  # exactly: os.open's mode goes through the umask
            if (found.st_uid, found.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root gives a file away: a user's own stays theirs
                    os.fchown(fd, found.st_uid, found.st_gid)
            file = os.fdopen(fd, "w", encoding="utf-8")
        else:
            file = open(target, "w", encoding="utf-8")
        self.written_at = target
        return file

    def _check_again(self) -> None:
        """The start's checks, again at the first line: a FIFO, or a user's file, put at the name during the
        set-up would hang the run, or be replaced (ConfigError's line becomes the warning)."""
        assert self.path is not None
        paths.check_writable(self.path, "trace")
        paths.check_own(self.path, "trace", paths.own_trace)

    def close(self) -> None:
        file, self.file = self.file, None
        if file is None:
            return
        try:
            file.close()  # flushes what a failed write left in the buffer (failing again); the fd is closed
        except OSError as e:
            self.failure = self.failure or f"trace {self.path} could not be completed: {e.strerror or e}"


def write_or_rescue(image: Any, output: Path, folders: list[Path]) -> None:
    """Write `image` to `output`; should that fail (a full disk), rescue it and raise ImageError saying where."""
    try:
        images.save_image(image, output)
    except ImageError as e:
        raise ImageError(f"{e}; {rescued(rescue(image, output, folders))}") from None


def _write_result(image: Any, output: Path, trace: Path | None, styles: list[Path]
                  ) -> tuple[Path | None, str | None]:
    """Write the result to `output`; should that fail, to a new PNG next to the trace (unless a style image is
    there: a style folder's next run would read it as one) or in the temp folder. (where it went or None, why
    `output` failed or None)."""
    try:
        images.save_image(image, output)
        return output, None
    except ImageError as e:
        folders = {*(p.parent for p in styles), *(Path(os.path.realpath(p)).parent for p in styles)}
        # the style's folder as named, and its file's, by identity (a bind mount of it is it)
        beside = [trace.parent] if trace is not None and not any(
            paths.inside(trace, f, directly=True) for f in folders) else []
        named = [os.fspath(p) for p in styles] + [os.path.realpath(p) for p in styles]  # a link's folder and its file's
        return rescue(image, output, beside, avoid=lambda folder: any(
            paths.inside(style, folder, directly=True) for style in named)), str(e)


def execute(*, content: Path | None, styles: list[Path], output: Path, settings: Settings, trace: Path | None,
            ) -> None:
    """Check, run, write (see the module's docstring). `content` None: a texture."""
    from styleengine.console import Console

    console = Console(stderr=True, markup=False)
    done: list[Any] = []
    try:
        with warnings_on(console):
            done += _checked_run(content=content, styles=styles, output=output, settings=settings, trace=trace,
                                 console=console)
    except KeyboardInterrupt:
        if not done:
            _nothing_written()
        done[1] = interrupted(done[1])  # after the loop had returned (the handler's removal): said below
    image, result, failures = done

    # 3. the image is written whatever stopped the loop after its first iteration (a signal: the current one;
    # NaN: the last finite one), with further signals held back until it is
    with result_held(result):  # from here to the last line: a signal before `stopped` is said, none after
        written, failure = _write_result(image, output, trace, styles)
        for note in failures:
            console.print(f"warning: {note}", soft_wrap=True, highlight=False)
        height, width = images.to_array(image).shape[:2]
        early = (f" ({width}x{height} px: an earlier scale's image, not --size {settings.size})"
                 if max(height, width) < settings.size else "")
        if failure is not None:  # a signal or a loss that is not finite is said with it, and keeps its exit
            end_if_stopped(result, output, console, said=f"{failure}; {rescued(written)}{early}")
            print(printable(f"error: {failure}; {rescued(written)}"), file=sys.stderr)
            raise typer.Exit(1)
        seconds = sum(r.seconds for r in result.records)
        end_if_stopped(result, output, console, early)
        for line in result.auto:
            console.print(f"auto: {line}", highlight=False, soft_wrap=True)
        console.print(f"wrote {output} ({result.iterations} iterations, {seconds:.1f} s{describe(result.distances)})",
                      soft_wrap=True)


def end_if_stopped(result: Any, output: Path, console: Any, early: str = "", said: str | None = None) -> None:
    """A result its loop did not finish, written to `output`: said with where it went, then exit 128+n for a
    signal that came before this check (`early`: what the picture is, when not the asked size), 1 for a loss
    that became non-finite (the last finite image). `said`: the command's own "wrote ..." line instead. A
    finished one returns."""
    if signals.stopped(result.stopped):
        signals.reported = True
        console.print(f"interrupted after {result.iterations} iterations ({signals.name}); "
                      f"{said or f'wrote {output}{early}'}", soft_wrap=True, highlight=False)
        raise typer.Exit(signals.exit_code)
    if result.stopped == "non-finite loss":
        print(printable(f"error: {loop.non_finite(result.iterations)}; "
                        f"{said or f'wrote the last finite image to {output}'}"), file=sys.stderr)
        raise typer.Exit(1)


@contextlib.contextmanager
def stop_said_with(result: Any, output: Path, console: Any) -> Iterator[None]:
    """A write's UserError (a full disk), said with the signal or the loss that ended the loop first: one line
    and that exit code (a rescued picture read as a finished one, exit 1 where a scheduler waits for 143)."""
    try:
        yield
    except UserError as e:
        end_if_stopped(result, output, console, said=first_line(e))
        raise


def interrupted(result: Any) -> Any:
    """A loop's Result that a signal cut into after the loop had returned: its image whole, said as interrupted."""
    return dataclasses.replace(result, stopped=result.stopped or "interrupted")


def loop_result(run: Callable[[list], Any]) -> Any:
    """run(kept)'s loop Result, with signals held from the moment it exists (signals.hold): one that lands as the
    loop returns, before result_held, is the loop's (visualize said "nothing written" after all its iterations)."""
    kept: list[Any] = []
    try:
        result = run(kept)
        signals.hold()
        return result
    except KeyboardInterrupt:
        if not kept:  # before the loop made its result: set-up's
            raise
        signals.hold()
        return interrupted(kept[0])


@contextlib.contextmanager
def result_held(result: Any) -> Iterator[None]:
    """From a loop's result to the command's last line: a signal is held, said after the files by the command
    if it came before the command reads signals.stopped, and stopping nothing after (signals.hold); before
    the first iteration, nothing is written (the start image is no result)."""
    if result.stopped == "interrupted" and result.iterations == 0:
        _nothing_written()
    if result.stopped == "non-finite loss" and result.iterations == 0:  # -o kept
        raise UserError(f"{loop.non_finite(0)}; nothing written")
    signals.hold()  # to the command's end: its last lines are inside this block
    yield


def nothing_before_the_result(command: Callable[..., None]) -> Callable[..., None]:
    """A command with one loop (invert, visualize): a signal that comes out of it came before the loop's result
    (result_held holds one after), so it is said as run says it: "before the first iteration; nothing written"
    (they said only "interrupted (SIGTERM)")."""
    @functools.wraps(command)
    def said(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            _nothing_written()
    return said


def _nothing_written() -> None:
    signals.reported = True
    print(f"error: interrupted ({signals.name}) before the first iteration; nothing written", file=sys.stderr)
    raise typer.Exit(signals.exit_code) from None


def describe(distances: Any) -> str:
    """'; style distance 0.123, content distance 0.456' (engine/quality.py), or '' when not measured."""
    if distances is None:
        return ""
    parts = [f"{what} distance {value:.3g}" for what, value in (("style", distances.style),
                                                                ("content", distances.content)) if value is not None]
    return "; " + ", ".join(parts) if parts else ""


def announce(settings: Settings, plan: Any, console: Any, *, race: bool = False) -> tuple[Settings, Any]:
    """Before the long work: the weights loaded (to fail now) and described, `auto` resolved and said how,
    a warning for random weights. The plan with `auto` resolved, and the settings too unless `race` (one
    run: what the record does not say, it races in its first steps, engine/race.py)."""
    # stylise loads them again and lets them go once its step is built (the ORT step has its own copy in
    # its session; VGG19's 80 MB kept beside the loop for nothing)
    weights = load_run_weights(settings)
    console.print(weights.describe(), highlight=False, soft_wrap=True, markup=False)
    untrained = weights.is_random
    del weights
    if "auto" in (settings.backend, settings.device, settings.provider, settings.precision, settings.conv):
        from styleengine.engine.autotune import choose

        choice = choose(settings, race=race)  # read back from the record, else measured (engine/autotune.py)
        plan = dataclasses.replace(plan, settings=choice.settings, auto=choice.why)
        if not race:
            settings = choice.settings
        console.print(f"auto: {choice.why}", highlight=False, soft_wrap=True)
    if untrained:
        console.print("WARNING: --weights random: the network is untrained, so the output is NOT a "
                      "stylisation (random weights are for tests and timing only)", style="bold red", soft_wrap=True)
    return settings, plan


def _checked_run(*, content: Path | None, styles: list[Path], output: Path, settings: Settings,
                 trace: Path | None, console: Any) -> tuple[Any, Any, list[str]]:
    """Steps 1 and 2: (the image to write, the loop's Result, warnings for the end)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    texture = content is None
    # 1. everything cheap first: settings, the files to write, images, sizes and memory; then weights
    settings.validate(texture=texture)
    check_files(content=content, styles=styles, output=output, settings=settings, trace=trace)
    content_array = images.load_image(content, "content image") if content is not None else None
    style_arrays = [images.load_image(p, role) for p, role in zip(styles, style_roles(styles))]
    plan = check_run(settings, content_array.shape[:2] if content_array is not None else None,
                     [s.shape[:2] for s in style_arrays], content_label=f"content image {content}",
                     style_labels=[f"style image {p}" for p in styles])
    for note in plan.notes:  # before any work: the user may rather change the flag than wait
        console.print(f"warning: {note}", highlight=False, soft_wrap=True)
    init_image = load_init(settings)
    regions = masks.load(settings, content_array.shape[:2], [s.shape[:2] for s in style_arrays],
                         [f"style image {p}" for p in styles]) if content_array is not None else None
    settings, plan = announce(settings, plan, console, race=True)

    # 2. the long work
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4g}"), TextColumn("{task.fields[spi]:.2f} s/it"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    tracer = TraceWriter(trace, plan.to_json())
    failures: list[str] = []
    total = plan.iterations  # over all scales of a coarse-to-fine run
    done: list[Any] = []
    try:
        with progress:
            task = progress.add_task("texture" if texture else "stylise", total=total, loss=float("nan"), spi=0.0)

            def on_iteration(record: Any, current: Callable[[], Any]) -> None:
                progress.update(task, advance=1, loss=record.loss, spi=record.seconds)
                tracer.write(record)
                if settings.print_every and record.iteration % settings.print_every == 0:
                    progress.console.print(f"iteration {record.iteration} / {total}: loss {record.loss:.6g} (content "
                                           f"{record.content_loss:.4g}, style {record.style_loss:.4g}, tv "
                                           f"{record.tv_loss:.4g})", highlight=False, soft_wrap=True)
                every = settings.save_every
                if every and record.iteration % every == 0 and record.iteration < total:
                    path = numbered(output, record.iteration, total)
                    try:
                        problem = snapshot_problem(path, output)  # checked at the start; one put there since
                        if problem is not None:
                            raise ImageError(f"cannot write {path}: {problem} (put there during the run; not "
                                             f"replaced)")
                        # at its own name: a link there to an earlier snapshot (which the mark passes) is replaced
                        images.save_image(current(), path, text={SNAPSHOT: snapshot_mark(output)}, through=False)
                    except ImageError as e:  # a lost snapshot is no reason to lose the run
                        if not failures:
                            failures.append(f"{e}; later snapshots were still tried")

            done += stylise(content_array, style_arrays, settings, callback=on_iteration, init_image=init_image,
                            plan=plan, masks=regions)
    except KeyboardInterrupt:
        if not done:
            raise
        done[1] = interrupted(done[1])  # in the progress bar's end: the loop's result stands
    finally:
        with signals.shielded(deliver=False):  # the trace's last lines are flushed whatever comes
            tracer.close()
    if tracer.failure:
        failures.append(tracer.failure)
    return done[0], done[1], failures
