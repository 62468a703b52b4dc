"""Devices by name (--device cuda:N) and one picture's network spread over several (--devices, --split-at):
tested on the CPU with two device entries; on GPUs the same code moves activations between cards."""
from __future__ import annotations

import pytest
import torch

from styleengine.choices import device_kind, gpu_index
from styleengine.engine import capability
from styleengine.engine.autotune import open_options
from styleengine.engine.losses import LossConfig
from styleengine.engine.settings import Settings
from styleengine.engine.steps import TorchStep, make_targets, resolve_device
from styleengine.errors import ConfigError, UnavailableError

GPUS = capability.Machine(cuda=True, ort_providers=("cpu", "cuda"), nnpack=True)
CPU = capability.Machine(cuda=False, ort_providers=("cpu",), nnpack=True)


@pytest.mark.parametrize("name, kind, index", [("cpu", "cpu", 0), ("cuda", "cuda", 0), ("cuda:3", "cuda", 3),
                                               ("auto", "auto", 0)])
def test_device_names(name, kind, index):
    assert device_kind(name) == kind and gpu_index(name) == index


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1.5", "cuda:١", "cuda:99999", "cpu:0"])
def test_a_bad_device_name_is_one_line(name):
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        Settings(device=name).validate()


def test_cuda_n_places_the_run_on_that_gpu_for_every_backend():
    for backend in ("torch", "ort"):
        where = capability.place(backend, "cuda:1", "auto", GPUS)
        assert (where.place, where.device, where.provider) == ("cuda", "cuda:1", "cuda")
    with pytest.raises(UnavailableError, match="--device cuda:1 needs an NVIDIA GPU"):
        capability.place("torch", "cuda:1", "auto", CPU)


def test_a_gpu_index_past_the_machines_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UnavailableError, match=r"cuda:2: this machine has 2 GPUs \(cuda:0-cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("fields, message", [
    ({"devices": ("cpu",)}, "two or more devices of one kind"),
    ({"devices": ("cpu", "cuda:0")}, "two or more devices of one kind"),
    ({"devices": ("cpu", "auto")}, "two or more devices of one kind"),
    ({"devices": ("cpu", "cpu"), "backend": "ort"}, "a graph backend runs one graph on one device"),
    ({"devices": ("cpu", "cpu"), "device": "cuda"}, "disagree"),
    ({"split_at": ("relu3_1",)}, "--split-at needs --devices"),
    ({"devices": ("cpu", "cpu"), "split_at": ("relu9_9",)}, "relu9_9 is no layer of vgg19"),
    ({"devices": ("cpu", "cpu"), "split_at": ("relu3_1", "relu4_1")}, "takes 1 layer"),
    ({"devices": ("cpu", "cpu", "cpu"), "split_at": ("relu4_1", "relu3_1")}, "in network order"),
    ({"devices": ("cpu", "cpu"), "split_at": ("conv1_1",)}, "after the first"),
])
def test_bad_splits_are_one_line_before_any_work(fields, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**fields).validate()


def test_a_spread_run_is_the_torch_backend_on_its_first_device():
    settings = Settings(devices=("cpu", "cpu"))
    where, options = open_options(settings, GPUS)  # a GPU here, but the devices say cpu
    assert where.place == "cpu" and options and {o[0] for o in options} == {"torch"}


@pytest.mark.parametrize("split_at", [(), ("relu2_1",), ("conv3_1", "relu4_2")])
def test_a_spread_network_computes_what_one_device_does(vgg16_random, tiny_image, split_at):
    loss = LossConfig()
    devices = ("cpu",) * (len(split_at) + 1 if split_at else 2)
    one = TorchStep(vgg16_random, loss, conv="direct")
    spread = TorchStep(vgg16_random, loss, conv="direct", devices=devices, split_at=split_at)
    names = [layer.name for layer in spread.net.layers]
    starts = sorted(spread.net.hand_over)
    assert starts[0] == 0 and len(starts) == len(devices)
    if split_at:
        assert [names[i] for i in starts[1:]] == list(split_at)
    targets = make_targets(one, loss, tiny_image, [tiny_image.flip(-1)])
    for step in (one, spread):
        step.set_targets(targets)
    a, b = one(tiny_image), spread(tiny_image)
    assert torch.equal(a.losses, b.losses) and torch.equal(a.grad, b.grad)


def test_the_run_command_spreads_a_picture(tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("c", "s"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    run = [sys.executable, "-m", "styleengine", "run", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o",
           str(tmp_path / "o.png"), "--weights", "random", "--model", "vgg16", "--size", "48", "--iters", "3"]
    done = subprocess.run([*run, "--devices", "cpu,cpu", "--split-at", "relu3_1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.png").exists()
    done = subprocess.run([*run, "--devices", "cpu,cuda:0"], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "one kind" in done.stderr
