"""Errors a user can fix (bad files, bad flags, missing providers).

The CLI prints a UserError as one line on stderr and exits 1; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; its message is one line."""


class ImageError(UserError):
    pass


class WeightsError(UserError):
    pass


class ConfigError(UserError):
    """A bad setting: unknown layer, backend, provider, precision..."""


class UnavailableError(UserError):
    """A backend, provider or device this machine does not have."""


class ExportValidationError(Exception):
    """An exported graph disagrees with the torch reference (a bug, not a user error)."""


def first_line(error: BaseException, text: str | None = None) -> str:
    """An exception's message (or `text`, its formatted form) as one line: a UserError's whole message with its
    line breaks shown as \\n, another's first non-empty line, else the exception's type name."""
    if isinstance(error, UserError) and text is None and str(error).strip():
        # ours, one line by construction but for the names in it: 'a\nb.png' was said as "image not found: a"
        return str(error).strip().replace("\r", "\\r").replace("\n", "\\n")
    lines = [line for line in (str(error) if text is None else text).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__
