"""The CLI's rich Console: the text it prints shows every unprintable character escaped (errors.printable), so a
file's name never breaks a line or drives the terminal ("wrote o<ESC>[31m.png" coloured it), and a line of text
is never wrapped at the terminal's width (piped, a long warning came out as three lines)."""
from __future__ import annotations

from typing import Any

from rich.console import Console as _RichConsole

from styleengine.errors import printable


class Console(_RichConsole):
    def print(self, *objects: Any, **kwargs: Any) -> None:
        if objects and all(isinstance(o, str) for o in objects):  # a line is one line, piped or not (not a table)
            kwargs.setdefault("soft_wrap", True)
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)
