"""Test doubles shared by the test modules (import: `from fakes import QuadraticStep`)."""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from pathlib import Path

import torch

from styleengine.engine.steps import StepBase, StepResult


class QuadraticStep(StepBase):
    """loss = sum (x - target)^2, gradient 2 (x - target): a problem the loop itself must solve.

    Call number `bad_call` (1-based) returns a NaN loss (failure "nan") or
    raises KeyboardInterrupt (failure "interrupt"). `seen` keeps every image.
    """

    device = torch.device("cpu")

    def __init__(self, bad_call: int | None = None, failure: str = "nan", target: float = 0.0):
        self.calls, self.bad_call, self.failure, self.target, self.seen = 0, bad_call, failure, target, []

    def __call__(self, image: torch.Tensor) -> StepResult:
        self.calls += 1
        self.seen.append(image.clone())
        d = image - self.target
        loss = d.pow(2).sum().item()
        if self.calls == self.bad_call:
            if self.failure == "interrupt":
                raise KeyboardInterrupt
            loss = math.nan
        return StepResult.from_floats(loss, 2 * d, {"content": loss, "style": 0.0, "tv": 0.0})


class WrappedStep(StepBase):
    """A real step with faults injected by call number: `hooks[n]()` runs before the n-th call (raise
    KeyboardInterrupt there, say), and call `nan_at` returns a NaN loss with the real gradient."""

    def __init__(self, inner, hooks: dict | None = None, nan_at: int | None = None):
        self.inner, self.device, self.hooks, self.nan_at, self.calls = inner, inner.device, hooks or {}, nan_at, 0

    def features(self, image, names):
        return self.inner.features(image, names)

    def set_targets(self, targets):
        self.inner.set_targets(targets)

    def close(self):
        self.inner.close()

    def __call__(self, image):
        self.calls += 1
        if self.calls in self.hooks:
            self.hooks[self.calls]()
        result = self.inner(image)
        if self.calls == self.nan_at:
            return StepResult.from_floats(math.nan, result.grad, result.parts)
        return result


def unblock_later(fifo: Path, after: float = 3.0, until: float = 30.0) -> threading.Event:
    """Whoever opens `fifo` for reading blocks until a writer comes: from `after` s to `until` s, feed junk
    to every reader, so a test of code that blocks (once or more) fails instead of hanging. The event
    returned is set once a reader was fed: the code under test opened the FIFO."""
    fed = threading.Event()

    def feed():
        time.sleep(after)
        end = time.monotonic() + until - after
        while time.monotonic() < end:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader now (ENXIO)
                time.sleep(0.05)
                continue
            fed.set()
            with contextlib.suppress(OSError):
                os.write(fd, b"junk\n")
            os.close(fd)
            time.sleep(0.05)

    threading.Thread(target=feed, daemon=True).start()
    return fed


class FullAfter:
    """A text file opened for writing whose disk fills up after `whole` writes (OSError ENOSPC from then on):
    stands in for `open(path, "w")` where a module opens its trace (monkeypatch the module's `open`)."""

    def __init__(self, path: Path, whole: int):
        self.inner = open(path, "w", encoding="utf-8")
        self.whole, self.writes = whole, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > self.whole:
            raise OSError(28, "No space left on device")
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
