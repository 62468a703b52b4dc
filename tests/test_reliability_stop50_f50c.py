"""Issue 23, stop 50: probe 50b's minor findings (visualize, image limits, the API)."""
from __future__ import annotations

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import _pictures


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine whose torch sees no CUDA device, on any machine."""
    import torch

    from styleengine.engine import machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "probe", lambda: machine.Machine(cuda=False, ort_providers=("cpu",), nnpack=True))
    monkeypatch.setattr("styleengine.engine.autotune.probe", machine.probe)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("weights", ["random", "imagenet"])
def test_visualize_refuses_a_missing_cuda_device_before_the_weights(tmp_path, monkeypatch, capsys, no_cuda,
                                                                     device, weights):
    """`visualize --device cuda` without a GPU loaded the weights (or downloaded VGG16's 528 MB) and then said
    "this torch build or machine has no CUDA device", where run, texture and invert refuse at once in other words
    (probe 50b, 1). It is texture's line, before any weights are read."""
    from styleengine.model import classifier, weights as weights_module

    def read(*args, **kwargs):
        raise AssertionError("weights read before the device was checked")

    monkeypatch.setattr(classifier, "load_classifier", read)
    monkeypatch.setattr(weights_module, "load_weights", read)
    monkeypatch.setattr(weights_module, "imagenet_checkpoint", read)
    _pictures(tmp_path)
    flags = ["--size", "40", "--iters", "1", "--model", "vgg16", "--weights", weights, "--device", device]
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "--class", "3", *flags, "-o", tmp_path / "v.png")
    said = one_error_line(code, err)
    assert len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(monkeypatch, capsys, "texture", tmp_path / "s.png", *flags, "--backend", "torch",
                           "-o", tmp_path / "t.png")
    assert said == one_error_line(code, err) == (f"error: --device {device} needs an NVIDIA GPU, and torch sees no "
                                                 f"CUDA device here; use --device cpu"), said
    assert not (tmp_path / "v.png").exists()
