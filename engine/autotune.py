"""`auto` for every choice a user leaves open (backend, precision, convolutions), measured on this machine.

Interface (stable; the measured trial lands behind it): choose(settings, height, width) -> Choice.
"""
from __future__ import annotations

from dataclasses import dataclass

from styleengine.engine.stylise import Settings


@dataclass(frozen=True)
class Choice:
    """The settings with every `auto` made concrete, and one line saying why."""

    settings: Settings
    why: str


def choose(settings: Settings, height: int, width: int) -> Choice:
    """What `auto` resolves to for an image of height x width with these settings."""
    resolved = settings.resolved()
    return Choice(resolved, f"precision {resolved.precision} by rule")
