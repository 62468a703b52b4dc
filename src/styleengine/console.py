"""The CLI's rich Console: the text it prints shows every unprintable character escaped (errors.printable), so a
file's name never breaks a line or drives the terminal ("wrote o<ESC>[31m.png" coloured it), and a line of text
is never wrapped at the terminal's width (piped, a long warning came out as three lines)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Iterator

from rich.console import Console as _RichConsole
from rich.measure import Measurement

from styleengine.errors import UserError, printable


WIDEST = 1000  # a table's cells measured up to this many columns


def _silenced(stream: Any) -> None:
    """Later writes to `stream`'s file go nowhere (a last line, Python's flush at exit), not to a traceback."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's captured stream)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _cannot_write(stream: Any, error: OSError, talk: bool) -> None:
    """A write to stdout or stderr failed. Talk (stderr: lines beside the work) stops and the work goes on: a run
    whose `2>&1 | head -1` ended lost its finished picture. A command's output (stdout) read by none (`| head`)
    ends quietly; one that cannot be written (a full disk) is one error line, not a traceback."""
    if talk or isinstance(error, BrokenPipeError):
        _silenced(stream)
        return
    raise UserError(f"cannot write the standard output: {error.strerror or error}")


def say(line: str) -> None:
    """One line of a command's output on stdout (a dry run's plan, tune's choice)."""
    try:
        print(line, flush=True)
    except OSError as e:
        _cannot_write(sys.stdout, e, talk=False)


class Console(_RichConsole):
    def on_broken_pipe(self) -> None:
        """Its reader went away (rich's own exits 1): see _cannot_write."""
        self.quiet = True
        _cannot_write(self.file, BrokenPipeError(), talk=self.stderr)

    def _check_buffer(self) -> None:
        try:  # rich's catches only a broken pipe (a full disk was a traceback)
            super()._check_buffer()
        except OSError as e:
            self.quiet = True
            _cannot_write(self.file, e, talk=self.stderr)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        from rich.table import Table

        if objects and all(isinstance(o, str) for o in objects):  # a line is one line, piped or not (not a table)
            kwargs.setdefault("soft_wrap", True)
        shown = tuple(printable(o) if isinstance(o, str) else o for o in objects)
        tables = [o for o in objects if isinstance(o, Table)]
        # a table is as wide as its cells, piped or on a narrow terminal (which wraps its lines): fitted to the
        # width, rich cut names to "…" and gave a last column no width at all, its cells gone
        needed = max((Measurement.get(self, self.options.update_width(WIDEST), t).maximum for t in tables), default=0)
        if needed <= self.width:
            return super().print(*shown, **kwargs)
        kept = self._width  # print's width= is capped at the console's own (COLUMNS, else 80)
        self.width = needed
        try:
            super().print(*shown, **kwargs)
        finally:
            self._width = kept


class _ConsoleWarnings(logging.Handler):
    """The engine's warnings as one 'warning: ...' line each on the console (above a progress bar)."""

    def __init__(self, console: Any):
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"warning: {printable(record.getMessage())}", highlight=False, soft_wrap=True,
                           markup=False)  # any console: one line, escaped


def _logged(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
            line: str | None = None) -> None:
    logging.getLogger("styleengine.warnings").warning("%s", message)  # no library's path and source line


@contextlib.contextmanager
def warnings_on(console: Any) -> Iterator[None]:
    """Show the styleengine loggers' warnings, and Python's (a library's), on `console` for the duration: one
    `warning:` line each, escaped."""
    logger, handler = logging.getLogger("styleengine"), _ConsoleWarnings(console)
    logger.addHandler(handler)
    shown, warnings.showwarning = warnings.showwarning, _logged
    try:
        yield
    finally:
        warnings.showwarning = shown
        logger.removeHandler(handler)
