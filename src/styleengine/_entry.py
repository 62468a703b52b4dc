"""The console script's first code. SIGINT, SIGTERM and SIGHUP are kept from here: cli.py's handlers come a
quarter second later (its imports), and a signal before them was a traceback or a silent death. cli's main says
one kept here as any signal in set-up (`_Signals.take_early`)."""
from __future__ import annotations

import signal
from typing import Any

EARLY: list[int] = []  # the signals that came before cli's handlers, in the order they were handled


def _keep(signum: int, frame: Any) -> None:
    EARLY.append(signum)


def keep_early() -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and not (name == "SIGHUP" and signal.getsignal(number) is signal.SIG_IGN):  # nohup
            signal.signal(number, _keep)


def console() -> None:
    """The console script and `python -m styleengine`."""
    keep_early()
    from styleengine import cli

    cli.console()
