"""styleengine bench: schema, failure rows, bad input, limit search, slopes.

Fast: tiny sizes, one iteration, no warm-up, random weights; no assertion
on how long anything takes.
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from styleengine.benchmarks.analysis import Probe, find_limit, fit_slopes, judge, loglog_slope, search_limit
from styleengine.benchmarks.config import COLUMNS, ROW_KEYS, STATUSES, Config, expand, parse_tiles, series_name
from styleengine.benchmarks.report import limit_sentence
from styleengine.benchmarks.runner import Runner, add_speedups, availability, percentile
from styleengine.cli import app  # the project's CLI, which registers `bench`
from styleengine.engine.winograd import winograd_available

# the torch rows name the convolutions "auto" resolved to (Winograd where NNPACK runs)
TORCH_CPU = "torch cpu fp32 winograd" if winograd_available() else "torch cpu fp32 direct"

CPU_MACHINE = {  # a machine description as the worker reports it, without running one
    "cpu": "test cpu", "torch_threads": 2, "cuda": False, "cuda_reason": "no CUDA here", "gpus": [],
    "ort_providers": ["CPUExecutionProvider"], "ort_reason": "", "tensorrt": False,
    "tensorrt_reason": "tensorrt not importable", "fp32_peak_gflops": 100.0, "memory_available_bytes": 8 * 2**30,
    "versions": {"torch": "x"},
}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real run through the command: torch at 32 and 48 px on cpu and cuda, every output file."""
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(app, [
        "bench", "--res", "32,48", "--backends", "torch", "--devices", "cpu,cuda", "--iters", "1", "--warmup", "0",
        "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--plot", str(out / "r.png"),
        "--report", str(out / "r.md")])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def doc(cli_run):
    return json.loads((cli_run[0] / "r.json").read_text())


@pytest.fixture(scope="module")
def machine(doc):
    return doc["machine"]


@pytest.fixture(scope="module")
def torch_rows(doc):
    return doc["rows"]


# ---------------------------------------------------------------- real runs (torch, tiny)

def test_rows_have_the_stable_keys_and_raw_floats(torch_rows, machine):
    assert len(torch_rows) == 4
    for row in torch_rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["status"] in STATUSES
        assert isinstance(row["versions"], dict) and "torch" in row["versions"]
    ok = [r for r in torch_rows if r["device"] == "cpu"]
    assert [r["status"] for r in ok] == ["ok", "ok"], [r["reason"] for r in ok]
    for row in ok:
        for key in ("median_s", "p10_s", "p90_s", "gflop_per_iter", "gflops", "peak_fraction", "iters_per_s"):
            assert isinstance(row[key], float) and row[key] > 0, key
        assert isinstance(row["peak_rss_bytes"], int) and row["peak_rss_bytes"] > row["base_rss_bytes"] > 0
        assert row["p10_s"] <= row["median_s"] <= row["p90_s"]
        assert row["threads"] >= 1 and row["iters"] == 1
        assert row["speedup"] == pytest.approx(1.0)
        assert math.isclose(row["gflops"] * row["median_s"], row["gflop_per_iter"])
    assert machine["fp32_peak_gflops"] > 0


def test_cuda_rows_are_unavailable_with_a_reason(torch_rows, machine):
    if machine["cuda"]:
        pytest.skip("this machine has CUDA")
    cuda = [r for r in torch_rows if r["device"] == "cuda"]
    assert [r["status"] for r in cuda] == ["unavailable", "unavailable"]
    assert all("CUDA" in r["reason"] for r in cuda)
    assert all(r["median_s"] is None and r["gflops"] is None for r in cuda)


def test_json_and_csv_files(cli_run, doc):
    assert {"machine", "rows"} <= set(doc)
    assert all(tuple(row)[: len(ROW_KEYS)] == ROW_KEYS for row in doc["rows"])
    assert doc["machine"]["cpu"] and doc["machine"]["fp32_peak_gflops"] > 0
    assert "--res 32,48" in doc["machine"]["command"]
    with open(cli_run[0] / "r.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == len(doc["rows"])
    assert json.loads(rows[0]["versions"])["torch"]
    fit = next(f for f in doc["fits"] if f["series"].startswith("torch cpu fp32"))
    assert fit["points"] == 2 and isinstance(fit["time_slope"], float)


def test_console_output_report_and_plot(cli_run):
    out, text = cli_run
    assert "timing does not depend on weight values" in text and "torch cpu fp32" in text
    assert (out / "r.png").stat().st_size > 1000
    report = (out / "r.md").read_text()
    assert f"| {TORCH_CPU} | 32x32 | ok |" in report and "](r.png)" in report


# ---------------------------------------------------------------- failures become rows

@pytest.mark.parametrize("fault,status", [("error", "error"), ("oom", "oom"), ("kill", "oom")])
def test_a_failing_worker_is_a_row(fault, status):
    runner = Runner(CPU_MACHINE, iters=1, warmup=0, timeout_s=120, env={"STYLEENGINE_BENCH_FAULT": fault})
    row = runner.run(Config("torch", None, "cpu", "fp32", 32, 32))
    assert row["status"] == status and row["reason"]
    assert row["median_s"] is None and row["gflop_per_iter"] > 0


def test_a_hanging_worker_is_a_timeout_row():
    runner = Runner(CPU_MACHINE, iters=1, warmup=0, timeout_s=3, env={"STYLEENGINE_BENCH_FAULT": "hang"})
    row = runner.run(Config("torch", None, "cpu", "fp32", 32, 32))
    assert row["status"] == "timeout" and "3 s" in row["reason"]


def test_the_worker_enforces_the_memory_budget():
    runner = Runner(CPU_MACHINE, iters=1, warmup=0, timeout_s=120, mem_budget_bytes=50 * 2**20)
    row = runner.run(Config("torch", None, "cpu", "fp32", 32, 32))
    assert row["status"] == "oom" and "memory budget" in row["reason"]


def test_missing_backend_module_is_unavailable():
    from styleengine.benchmarks.worker import classify
    from styleengine.errors import ConfigError

    err = ModuleNotFoundError("No module named 'styleengine.engine.ort_step'", name="styleengine.engine.ort_step")
    assert classify(err)[0] == "unavailable"
    assert classify(ModuleNotFoundError("No module named 'numpyy'", name="numpyy"))[0] == "error"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert classify(ValueError("bad"))[0] == "error"
    assert classify(ConfigError("the torch backend runs fp32 or bf16, not 'fp16'")) == (
        "unavailable", "the torch backend runs fp32 or bf16, not 'fp16'")


def test_availability_without_running_anything():
    m = CPU_MACHINE
    assert availability(Config("torch", None, "cpu", "fp32", 64, 64), m) is None
    assert availability(Config("torch", None, "cuda", "fp32", 64, 64), m) == "no CUDA here"
    assert "CUDAExecutionProvider" in availability(Config("ort", "cuda", "cuda", "fp32", 64, 64), m)
    gpu = {**m, "cuda": True, "gpus": [{"name": "gpu", "memory_free_bytes": 2**30, "fp32_peak_gflops": 1.0}]}
    assert "tensorrt" in availability(Config("tensorrt", "tensorrt", "cuda", "fp32", 64, 64), gpu)
    assert availability(Config("torch", None, "cuda", "fp32", 64, 64), gpu) is None


def test_expand_orders_sizes_then_backends():
    configs = expand([(64, 64), (32, 32)], ["torch", "ort", "tensorrt"], ["cpu", "cuda"], ["cpu"], ["fp32"])
    assert [(c.backend, c.provider, c.device, c.height) for c in configs[:4]] == [
        ("torch", None, "cpu", 64), ("ort", "cpu", "cpu", 64), ("ort", "cuda", "cuda", 64),
        ("tensorrt", "tensorrt", "cuda", 64)]
    assert len(configs) == 8


def test_expand_times_auto_and_direct_once_where_they_are_one_configuration():
    """Winograd is fp32 only: bf16 with --conv auto,direct is one configuration (auto resolves to direct)."""
    configs = expand([(64, 64)], ["torch", "ort"], ["cpu"], ["cpu"], ["fp32", "bf16"], convs=["auto", "direct"])
    assert [(c.backend, c.precision, c.conv) for c in configs] == [
        ("torch", "fp32", "auto"), ("torch", "bf16", "auto"), ("torch", "fp32", "direct"),
        ("ort", "fp32", "auto"), ("ort", "bf16", "auto"), ("ort", "fp32", "direct")]
    alone = expand([(64, 64)], ["torch"], ["cpu"], ["cpu"], ["bf16"], convs=["direct"])
    assert [c.conv for c in alone] == ["direct"]


def test_speedups_against_the_first_ok_row_per_size():
    rows = [{"height": 64, "width": 64, "model": "vgg19", "pooling": "avg", "status": s, "median_s": t}
            for s, t in (("ok", 4.0), ("ok", 1.0), ("error", None))]
    add_speedups(rows)
    assert [r["speedup"] for r in rows] == [1.0, 4.0, None]


def test_percentiles_match_numpy():
    import numpy as np
    values = [3.0, 1.0, 2.0, 10.0]
    for q in (10, 50, 90):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


# ---------------------------------------------------------------- limit search (stubbed probes)

def _stub(limit: int):
    calls = []

    def probe(res: int) -> Probe:
        calls.append(res)
        return Probe(res, res <= limit, "fits" if res <= limit else "too big")

    return probe, calls


@pytest.mark.parametrize("limit", [32, 48, 500, 512, 1000, 1776, 4096, 5000])
def test_search_finds_the_largest_fitting_multiple_of_16(limit):
    probe, calls = _stub(limit)
    found, probes = search_limit(probe)
    assert found == limit // 16 * 16
    assert calls[0] == 512 and len(calls) == len(set(calls)) and len(calls) <= 16
    assert all(r % 16 == 0 for r in calls)
    assert [p.res for p in probes] == calls


def test_search_when_nothing_fits_or_everything_fits():
    assert search_limit(_stub(10)[0])[0] is None
    found, probes = search_limit(_stub(10**9)[0], ceiling=2048)
    assert found == 2048 and probes[-1].res == 2048


def test_judge_applies_both_budgets():
    row = {"height": 256, "status": "ok", "reason": "", "device": "cpu", "peak_rss_bytes": 2 * 2**30,
           "peak_device_bytes": None, "median_s": 5.0}
    assert judge(row, 4 * 2**30, 10.0).fits
    assert "memory" in judge(row, 1 * 2**30, 10.0).why
    assert "s/iteration" in judge(row, 4 * 2**30, 1.0).why
    assert not judge({**row, "status": "oom", "reason": "killed"}, 4 * 2**30, 10.0).fits


def test_find_limit_with_a_fake_runner():
    class FakeRunner:  # time ~ pixels: 512 px takes 1 s
        machine = CPU_MACHINE
        budgets = set()

        def run(self, config, *, iters, warmup, mem_budget_bytes, time_limit_s):
            self.budgets.add((mem_budget_bytes, time_limit_s))
            t = (config.height / 512) ** 2
            return {"height": config.height, "width": config.width, "status": "ok", "reason": "", "device": "cpu",
                    "peak_rss_bytes": 2**30, "peak_device_bytes": None, "median_s": t}

    runner = FakeRunner()
    result = find_limit(runner, Config("torch", None, "cpu", "fp32", 512, 512), mem_budget_bytes=None,
                        time_budget_s=4.0)
    assert runner.budgets == {(int(0.8 * 8 * 2**30), 4.0)}  # every probe gets the budgets as arguments
    assert result["limit_px"] == 1024 and result["at_limit"]["height"] == 1024
    assert result["paper_512"]["time_fraction_of_budget"] == pytest.approx(0.25)
    assert result["paper_512"]["limit_pixels_over_512"] == pytest.approx(4.0)
    assert "1024 px" in limit_sentence(result)


# ---------------------------------------------------------------- slopes

def test_loglog_slope():
    px = [512**2, 1024**2, 2048**2]
    assert loglog_slope(px, [2.0 * p for p in px]) == pytest.approx(1.0)
    assert loglog_slope(px, [p**0.5 for p in px]) == pytest.approx(0.5)
    assert loglog_slope([4.0, 4.0], [1.0, 2.0]) is None


def test_fit_slopes_groups_by_series():
    rows = [{"backend": "torch", "provider": None, "device": "cpu", "precision": "fp32", "status": "ok",
             "height": s, "width": s, "median_s": s * s * 1e-6, "peak_rss_bytes": 10**8 + s * s * 100,
             "base_rss_bytes": 10**8, "peak_device_bytes": None} for s in (256, 512, 1024)]
    (fit,) = fit_slopes(rows)
    assert fit["series"] == "torch cpu fp32" and fit["time_slope"] == pytest.approx(1.0)
    assert fit["mem_slope"] < 1.0 and fit["mem_slope_net"] == pytest.approx(1.0)


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("args,needle", [
    (["--res", "16"], "32 px"), (["--res", "abc"], "512x768"), (["--res", ","], "at least one"),
    (["--backends", "jax"], "unknown backend"), (["--providers", "rocm"], "unknown provider"),
    (["--precision", "fp64"], "unknown precision"), (["--backends", ""], "at least one"),
    (["--mem-budget", "0"], "--mem-budget"), (["--time-budget", "0"], "--time-budget"),
    (["--iters", "0"], "--iters"), (["--tile", "100"], "multiple of 16"), (["--tile", "big"], "not a size"),
])
def test_bad_input_is_a_config_error(args, needle):
    from styleengine.errors import ConfigError

    result = CliRunner().invoke(app, ["bench", *args])
    assert isinstance(result.exception, ConfigError) and needle in str(result.exception)


def test_bad_input_via_the_cli_is_one_line_and_exit_1():
    proc = subprocess.run([sys.executable, "-m", "styleengine", "bench", "--res", "16"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")


def test_tiled_and_untiled_rows_in_one_run(tmp_path, machine_once):
    """--tile none,32 at 64 px: both steps time in one run; the tiled row says its tile and tile count,
    counts the untiled GFLOP and takes the untiled row as its speed-up baseline."""
    result = CliRunner().invoke(app, [
        "bench", "--res", "64", "--backends", "torch", "--tile", "none,32", "--iters", "1", "--warmup", "0",
        "--json", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    untiled, tiled = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert untiled["status"] == tiled["status"] == "ok", (untiled["reason"], tiled["reason"])
    assert untiled["tile"] is None and untiled["tiles"] is None
    assert tiled["tile"] == 32 and tiled["tiles"] == 4
    assert tiled["gflop_per_iter"] == untiled["gflop_per_iter"]
    assert tiled["speedup"] == pytest.approx(untiled["median_s"] / tiled["median_s"])
    assert series_name(tiled) == f"{TORCH_CPU} tile 32" and series_name(untiled) == TORCH_CPU
    assert "tile 32" in result.output


def test_parse_tiles_and_expand():
    from styleengine.errors import ConfigError

    assert parse_tiles(None) == [None]
    assert parse_tiles("none,1024,None,1024") == [None, 1024]
    with pytest.raises(ConfigError, match="'none' for the untiled"):  # as `run --tile 0` (probe 6: bench took it)
        parse_tiles("0")
    configs = expand([(512, 512)], ["ort"], ["cpu"], ["cpu"], ["fp32"], tiles=[None, 256])
    assert [c.tile for c in configs] == [None, 256]
    assert configs[1].key != configs[0].key and configs[1].at(64, 64).tile == 256


# ---------------------------------------------------------------- the README table

def test_readme_table_from_result_files(cli_run, tmp_path):
    from styleengine.benchmarks import readme_table

    (tmp_path / "cpu-test.json").write_text((cli_run[0] / "r.json").read_text())
    body = readme_table.table(tmp_path)
    assert f"| {TORCH_CPU} | 32x32 |" in body and "cpu-test.json" in body
    readme = f"# x\n\nbefore\n{readme_table.START}\nold\n{readme_table.END}\nafter\n"
    new = readme_table.splice(readme, body)
    assert new.startswith("# x\n\nbefore\n") and new.endswith(f"{readme_table.END}\nafter\n") and "old" not in new
    assert readme_table.splice(new, body) == new
    with pytest.raises(ValueError):
        readme_table.splice("# no markers\n", body)


def test_readme_serve_table_from_its_result_file(tmp_path):
    from styleengine.benchmarks import readme_table

    doc = {"machine": {"cpu": "AMD EPYC", "isa": "avx512", "threads": 2, "load_after": 3.5},
           "settings": {"size": 256, "iterations": 10, "model": "vgg16"},
           "latency_seconds": {"server": [7.0, 7.2], "run": [9.0, 9.1], "loop": [6.0, 6.1]},
           "latency_median": {"server": 7.1, "run": 9.05, "loop": 6.05},
           "cpu_median": {"server": 6.0, "run": 9.0, "loop": 5.5}}
    (tmp_path / "serve-latency-cpu-avx512.json").write_text(json.dumps(doc))
    body = readme_table.serve_table(tmp_path)
    assert "| warm server, POST to the PNG's last byte (the photo and painting sent before) | 7.1 | 6.00 |" in body
    assert "(median of 2)" in body and "a photo it has not seen" not in body  # a document without that mode
    assert "6.00 against 6.35 (met" in body and "serve-latency-cpu-avx512.json" in body
    readme = f"a\n{readme_table.SERVE_START}\nold\n{readme_table.SERVE_END}\nb\n"
    new = readme_table.splice(readme, body, readme_table.SERVE_START, readme_table.SERVE_END)
    assert "old" not in new and body in new and new.endswith(f"{readme_table.SERVE_END}\nb\n")


def test_readme_table_puts_tiled_runs_in_their_own_table(tmp_path):
    from styleengine.benchmarks import readme_table

    def row(tile, size, median, status="ok", reason=""):
        return {"backend": "ort", "provider": "cpu", "device": "cpu", "precision": "fp32", "threads": 2,
                "height": size, "width": size, "status": status, "reason": reason, "median_s": median,
                "peak_rss_bytes": 2**30, "peak_device_bytes": None, "gflops": 1.0, "peak_fraction": None,
                "speedup": None, "tile": tile, "tiles": 4 if tile else None}

    doc = {"machine": {"cpu": "test cpu"},
           "rows": [row(None, 2048, 30.0), row(1024, 2048, 51.0),
                    row(None, 4096, None, "oom", "over the memory budget"), row(1024, 4096, 240.0)]}
    (tmp_path / "tiled.json").write_text(json.dumps(doc))
    body = readme_table.table(tmp_path)
    tiled_part = body.split("exact tiled step")[1]
    assert "| ort cpu fp32 tile 1024 | 2048x2048 | ok | 51.00 s | 1.00 | 4 | 1.70x |" in tiled_part
    assert "oom: over the memory budget" in tiled_part  # the untiled failure is part of the story
    assert "| ort cpu fp32 tile 1024 | 4096x4096 | ok | 240.00 s | 1.00 | 4 | - |" in tiled_part
