"""How a time reads: with the unit that shows its figure (torch-free: the bench's parent process imports it)."""
from __future__ import annotations


def fmt_time(seconds: float | None) -> str:
    """A per-iteration time: ms below a second (GPU rows: 5.66 ms, not 0.01 s), else s; "-" for none."""
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"
