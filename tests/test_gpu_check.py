"""benchmarks/gpu_check.py's profile part, run on the CPU (its figures come from a lent GPU)."""
from __future__ import annotations

import pytest

from styleengine.benchmarks import gpu_check


def test_profile_attributes_the_step_time_to_kernels_and_ops(vgg19_random):
    out = gpu_check.profile(vgg19_random, device="cpu", sides=(32,), steps=2, top=4)
    prof = out["profile"]
    assert set(prof) == {"torch fp32 32", "torch bf16 32", "ort fp32 32"}
    assert set(out["errors"]) == {"ort fp16 32"}  # the CPU provider refuses fp16: reported, not raised
    for name, p in prof.items():
        assert p["total_ms"] > 0 and len(p["top"]) == 4, name
        assert p["by_kind_ms"]["convolution"] > 0 or p["by_kind_ms"]["matmul"] > 0, name
        assert sum(p["by_kind_ms"].values()) == pytest.approx(p["total_ms"])
        assert [t["ms"] for t in p["top"]] == sorted((t["ms"] for t in p["top"]), reverse=True)
    ort = prof["ort fp32 32"]
    # only the timed runs' nodes: their sum cannot exceed the runs' own time
    assert 0 < ort["total_ms"] <= 1.05 * ort["run_ms"]
    assert all(t["name"].endswith("[CPUExecutionProvider]") for t in ort["top"])


@pytest.mark.parametrize("name, kind", [("aten::mkldnn_convolution", "convolution"),
                                        ("sm90_xmma_fprop_implicit_gemm_bf16", "convolution"),
                                        ("ampere_sgemm_128x64_nn", "matmul"), ("aten::mm", "matmul"),
                                        ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"),
                                        ("Memcpy HtoD (Pageable -> Device)", "copy"),
                                        ("void at::native::vectorized_elementwise_kernel<4, ...>",
                                         "elementwise/other")])
def test_kernel_families(name, kind):
    assert gpu_check._kind(name) == kind
