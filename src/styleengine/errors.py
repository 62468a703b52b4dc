"""Errors a user can fix (bad files, bad flags, missing providers).

The CLI prints a UserError as one line on stderr and exits 1; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import logging


def printable(text: str) -> str:
    """`text` with every character that is not printable (a line break, an escape that would drive the terminal,
    U+2028) shown escaped, as repr shows it."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineFormatter(logging.Formatter):
    """A log line is one line whatever a name in it holds (a traceback after it keeps its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


class UserError(Exception):
    """Something the user can fix; its message is one line: a character that is not printable (a name's
    line break, an escape that would drive the terminal, U+2028) is shown escaped, as repr shows it."""

    def __str__(self) -> str:
        return printable(super().__str__().strip())  # a message's own edges are no part of it


class ImageError(UserError):
    pass


class WeightsError(UserError):
    pass


class ConfigError(UserError):
    """A bad setting: unknown layer, backend, provider, precision..."""


class SettingError(ConfigError):
    """A bad value of one setting, "LABEL PROBLEM": a front end says it by the name the user gave it (`named`:
    a flag, a jobs file's key, a keyword argument, a form field) where it knows that name."""

    def __init__(self, setting: str, label: str, problem: str):
        super().__init__(f"{label} {problem}")
        self.setting, self.label, self.problem = setting, label, problem  # setting: a Settings field

    def __reduce__(self) -> tuple:  # pickled whole (a Ray worker's error): the default passes only the message
        return type(self), (self.setting, self.label, self.problem)

    def named(self, name: str) -> SettingError:
        return SettingError(self.setting, name, self.problem)


class UnavailableError(UserError):
    """A backend, provider or device this machine does not have."""


class ExportValidationError(Exception):
    """An exported graph disagrees with the torch reference (a bug, not a user error)."""


def first_line(error: BaseException, text: str | None = None) -> str:
    """An exception's message (or `text`, its formatted form) as one line: its first non-empty line (a UserError's
    is its whole message, its line breaks escaped by __str__), else the exception's type name."""
    lines = [line for line in (str(error) if text is None else text).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__
