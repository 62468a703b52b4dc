"""--precision auto: fp32 on the CPU, the fastest validated precision on a GPU; refused nowhere."""
from __future__ import annotations

import pytest

from styleengine.engine.stylise import Settings, auto_precision
from styleengine.errors import ConfigError, UnavailableError


def test_auto_is_fp32_on_the_cpu_and_fast_on_a_gpu():
    assert Settings().precision == "auto"
    assert Settings(device="cpu").resolved().precision == "fp32"
    assert Settings(backend="ort", provider="cpu").resolved().precision == "fp32"
    assert auto_precision("ort", "cuda", "auto") == "fp16"  # graph backends: fp16 on GPU providers
    assert auto_precision("tensorrt", "tensorrt", "auto") == "fp16"
    assert Settings(precision="bf16").resolved().precision == "bf16"  # a precision asked for is kept


def test_auto_passes_validation_where_fixed_precisions_would_not():
    Settings(backend="ort", provider="cpu").validate()  # auto on the CPU provider is fine (fp32)
    with pytest.raises(ConfigError, match="CPU provider"):
        Settings(backend="ort", provider="cpu", precision="fp16").validate()
    with pytest.raises(ConfigError, match="precision"):
        Settings(precision="fp8").validate()


def test_torch_on_a_missing_gpu_is_unavailable(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UnavailableError):
        auto_precision("torch", "cpu", "cuda")
    assert auto_precision("torch", "cpu", "auto") == "fp32"


def test_bf16_on_ort_cuda_is_refused_with_the_reason():
    """The bf16 step graph loads nowhere in ONNX Runtime: the CUDA provider lacks bf16 Resize/Greater kernels
    (seen on an H200); the run is refused before any work, pointing at fp16 and the torch backend."""
    with pytest.raises(ConfigError, match="fp16"):
        Settings(backend="ort", provider="cuda", precision="bf16").validate()
