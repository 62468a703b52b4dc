"""The CLI's rich Console: the text it prints shows every unprintable character escaped (errors.printable), so a
file's name never breaks a line or drives the terminal ("wrote o<ESC>[31m.png" coloured it)."""
from __future__ import annotations

from typing import Any

from rich.console import Console as _RichConsole

from styleengine.errors import printable


class Console(_RichConsole):
    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)
