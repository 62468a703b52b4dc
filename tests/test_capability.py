"""What runs where (engine/capability.py), every combination once: tests/data/capability_table.txt is the
table (regenerate with STYLEENGINE_WRITE_TABLE=1 and read the diff), and the rules the issues named."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from styleengine.choices import BACKENDS, CONV_ALGOS, DEVICES, PRECISIONS, PROVIDERS
from styleengine.engine import capability
from styleengine.engine.autotune import choose
from styleengine.engine.stylise import Settings
from styleengine.errors import ConfigError, UnavailableError, UserError

TABLE = Path(__file__).parent / "data" / "capability_table.txt"
CPU_ONLY = capability.Machine(cuda=False, ort_providers=("cpu",), nnpack=True)
GPU = capability.Machine(cuda=True, ort_providers=("cpu", "cuda", "tensorrt"), nnpack=True, tensorrt=True)


def outcome(machine: capability.Machine, backend, device, provider, precision, conv) -> str:
    settings = Settings(size=64, backend=backend, device=device, provider=provider, precision=precision, conv=conv)
    try:
        settings.validate()
    except UserError as e:
        return f"refused before the machine: {type(e).__name__}: {e}"
    try:
        got = choose(settings, machine=machine, tune=False).settings
    except UserError as e:
        return f"refused here: {type(e).__name__}: {e}"
    return f"{got.backend} {got.device}/{got.provider} {got.precision} {got.conv}"


def table() -> str:
    lines = []
    for name, machine in (("cpu-only", CPU_ONLY), ("gpu", GPU)):
        for combo in itertools.product(("auto",) + BACKENDS, DEVICES, ("auto",) + PROVIDERS, ("auto",) + PRECISIONS,
                                       CONV_ALGOS):
            lines.append(f"{name} {' '.join(combo)} -> {outcome(machine, *combo)}")
    return "\n".join(lines) + "\n"


def test_every_combination_resolves_or_is_refused_as_the_table_says():
    got = table()
    if os.environ.get("STYLEENGINE_WRITE_TABLE"):
        TABLE.parent.mkdir(exist_ok=True)
        TABLE.write_text(got)
    assert got.splitlines() == TABLE.read_text().splitlines()


def test_rules_named_in_the_issues():
    # tensorrt's auto precision is fp16, as the README says (it was fp32: the GPU rule written twice)
    assert outcome(GPU, "tensorrt", "auto", "auto", "auto", "auto") == "tensorrt cuda/tensorrt fp16 direct"
    # --device cuda with a graph backend runs the CUDA provider, not the CPU one
    assert outcome(GPU, "ort", "cuda", "auto", "auto", "auto") == "ort cuda/cuda fp16 direct"
    assert outcome(GPU, "ort", "auto", "auto", "fp32", "auto") == "ort cuda/cuda fp32 direct"
    # a provider that is not there is one line
    assert "needs an NVIDIA GPU" in outcome(CPU_ONLY, "ort", "cuda", "auto", "auto", "auto")
    assert "provider is not available" in outcome(
        capability.Machine(cuda=True, ort_providers=("cpu",)), "ort", "auto", "cuda", "auto", "auto")
    # device and provider that disagree
    assert "disagree" in outcome(GPU, "ort", "cuda", "cpu", "auto", "auto")
    assert "disagree" in outcome(GPU, "ort", "cpu", "cuda", "auto", "auto")
    # bf16 on ORT's GPU providers, fp16 on its CPU provider, Winograd in 16 bits
    assert "fp16" in outcome(GPU, "ort", "cuda", "auto", "bf16", "auto")
    assert "CPU provider" in outcome(CPU_ONLY, "ort", "auto", "auto", "fp16", "auto")
    assert "fp32" in outcome(CPU_ONLY, "torch", "auto", "auto", "bf16", "winograd")
    # the CPU by rule: torch fp32 Winograd (today's default); explicit settings always win
    assert outcome(CPU_ONLY, "auto", "auto", "auto", "auto", "auto") == "torch cpu/cpu fp32 winograd"
    assert outcome(CPU_ONLY, "torch", "cpu", "auto", "bf16", "auto") == "torch cpu/cpu bf16 direct"
    assert outcome(GPU, "torch", "cpu", "auto", "auto", "auto") == "torch cpu/cpu fp32 winograd"
    # no NNPACK: Winograd by auto falls back to direct, asked for it is unavailable
    no_nnpack = capability.Machine(nnpack=False)
    assert outcome(no_nnpack, "torch", "cpu", "auto", "auto", "auto") == "torch cpu/cpu fp32 direct"
    assert "no NNPACK" in outcome(no_nnpack, "torch", "cpu", "auto", "auto", "winograd")


def test_settings_are_checked_without_torch():
    """Settings.validate reads the table only: it imports neither torch nor ONNX Runtime."""
    import subprocess
    import sys

    code = ("import sys; from styleengine.engine.capability import check_settings; "
            "check_settings('ort', 'auto', 'auto', 'fp16', 'auto'); "
            "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_a_missing_gpu_is_unavailable_not_a_traceback(device):
    with pytest.raises(UnavailableError):
        choose(Settings(backend="torch", device="cuda"), machine=CPU_ONLY, tune=False)
    with pytest.raises(ConfigError):
        Settings(backend="tensorrt", device="cpu").validate()
