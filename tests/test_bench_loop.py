"""bench --loop and the naive backend: loop rows next to step rows, speed-ups against the naive loop."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from styleengine.benchmarks.config import Config, expand, series_name
from styleengine.cli import app
from styleengine.engine.winograd import winograd_available
from styleengine.errors import ConfigError

TORCH_CPU = "torch cpu fp32 winograd" if winograd_available() else "torch cpu fp32 direct"


def test_loop_rows_follow_step_rows_and_compare_with_naive(tmp_path, machine_once):
    result = CliRunner().invoke(app, [
        "bench", "--res", "32", "--backends", "naive,torch,ort", "--loop", "3", "--iters", "1", "--warmup", "1",
        "--json", str(tmp_path / "l.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "l.json").read_text())["rows"]
    names = [series_name(r) for r in rows]
    assert names == ["naive cpu fp32", TORCH_CPU, "ort cpu fp32 winograd",
                     "naive cpu fp32 loop", f"{TORCH_CPU} loop", "ort cpu fp32 winograd loop"]
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    step_naive, loop_naive = rows[0], rows[3]
    assert [r["loop"] for r in rows] == [0, 0, 0, 3, 3, 3]
    assert [r["iters"] for r in rows[3:]] == [3, 3, 3]  # a time per loop iteration
    for row in rows[1:3]:
        assert row["speedup"] == pytest.approx(step_naive["median_s"] / row["median_s"])
    for row in rows[4:]:
        assert row["speedup"] == pytest.approx(loop_naive["median_s"] / row["median_s"])
    assert "loop" in result.output


def test_expand_with_loop_and_naive_only_in_fp32_untiled():
    configs = expand([(64, 64)], ["naive", "torch"], ["cpu"], ["cpu"], ["fp32", "bf16"], tiles=[None, 32], loop=5)
    naive = [c for c in configs if c.backend == "naive"]
    assert [(c.precision, c.tile, c.loop) for c in naive] == [("fp32", None, 0), ("fp32", None, 5)]
    assert {c.loop for c in configs if c.backend == "torch"} == {0, 5}
    assert Config("torch", None, "cpu", "fp32", 64, 64, loop=5).key != Config("torch", None, "cpu", "fp32", 64, 64).key


@pytest.mark.parametrize("args, needle", [(["--loop", "1"], "--loop"), (["--loop", "-2"], "--loop"),
                                          (["--loop", "4", "--limit"], "--limit"),
                                          (["--backends", "plain"], "naive")])
def test_bad_loop_flags(args, needle):
    result = CliRunner().invoke(app, ["bench", "--res", "32", *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) or needle in result.output
    if isinstance(result.exception, ConfigError):
        assert needle in str(result.exception)


def test_conv_algorithms_are_a_torch_dimension():
    configs = expand([(64, 64)], ["naive", "torch", "ort"], ["cpu"], ["cpu"], ["fp32"], convs=["winograd", "direct"])
    assert [(c.backend, c.conv) for c in configs] == [("naive", None), ("torch", "winograd"), ("torch", "direct"),
                                                      ("ort", "winograd"), ("ort", "direct")]
    names = [series_name({"backend": c.backend, "provider": c.provider, "device": c.device, "precision": "fp32",
                          "conv": c.conv}) for c in configs]
    assert names == ["naive cpu fp32", "torch cpu fp32 winograd", "torch cpu fp32 direct", "ort cpu fp32 winograd",
                     "ort cpu fp32 direct"]


def test_a_failed_row_names_what_auto_would_have_run():
    from styleengine.benchmarks.runner import resolved_conv

    torch_cpu = Config("torch", None, "cpu", "fp32", 64, 64, conv="auto")
    assert resolved_conv(torch_cpu) == ("winograd" if winograd_available() else "direct")
    assert resolved_conv(Config("torch", None, "cpu", "bf16", 64, 64, conv="auto")) == "direct"
    assert resolved_conv(Config("ort", "cpu", "cpu", "fp32", 64, 64, conv="auto")) == "winograd"
    assert resolved_conv(Config("ort", "cuda", "cuda", "fp16", 64, 64, conv="auto")) == "direct"
    assert resolved_conv(Config("naive", None, "cpu", "fp32", 64, 64)) is None
