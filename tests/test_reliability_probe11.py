"""Issue 23, probe 11 (on 6f8deaf): crash consistency, measured. 297 trials of run, batch, video, export, serve and
tune, each sent SIGKILL / SIGTERM / SIGINT / SIGHUP after a seeded random delay, then resumed; outputs, temp files,
manifests, exit codes and exit times checked. The defects it found are tests here."""
from __future__ import annotations

import pytest

from styleengine.engine import trial as trial_mod
from styleengine.engine.settings import Settings


# ------------------------------------------------------------------ D1: a signal during tune's look check

def test_a_signal_during_the_look_check_ends_it_never_a_verdict(vgg16_random):
    """SIGTERM while `tune` ran its look check: the check's loop caught it, the cut-short run's distances made
    bf16 "not keep the look", fp32 was kept in tune.json and tune exited 0 (6 of 6 signals at 12-15 s)."""
    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig

    settings = Settings(size=64, model="vgg16", weights="random")
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"))
    reference = make_step("torch", vgg16_random, loss, device="cpu", precision="fp32", conv="direct")
    bf16 = make_step("torch", vgg16_random, loss, device="cpu", precision="bf16", conv="direct")

    class Stopped:
        """bf16's step, interrupted on its fourth call: inside the look check's loop, past the first step."""

        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __call__(self, image):
            self.calls += 1
            if self.calls == 4:
                raise KeyboardInterrupt
            return self.inner(image)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(KeyboardInterrupt):
        trial_mod.look_check(Stopped(bf16), reference, "bf16", settings, loss)
