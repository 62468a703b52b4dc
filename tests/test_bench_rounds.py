"""styleengine bench, issue 21: rows take turns, the `auto` row, units that show the figure, the device peak
of the timed iterations, and the README plot. Fake timings and a fake torch.cuda: no timed assertion."""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from styleengine.benchmarks import worker
from styleengine.benchmarks.config import Config, expand, series_name, split_iters
from styleengine.benchmarks.interleaved import take_turns
from styleengine.benchmarks.report import fmt_time, spread, table_rows, write_csv
from styleengine.benchmarks.runner import Outcome, Runner, add_speedups, make_row
from styleengine.cli import app
from styleengine.errors import ConfigError

CPU_MACHINE = {"cpu": "test cpu", "torch_threads": 2, "cuda": False, "gpus": [], "ort_providers":
               ["CPUExecutionProvider"], "fp32_peak_gflops": 100.0, "memory_available_bytes": 8 * 2**30,
               "versions": {"torch": "x"}}
GIB = 2**30


def ok(times, **data) -> Outcome:
    return Outcome("ok", "", {"times_s": list(times), "peak_rss_bytes": GIB, "base_rss_bytes": GIB // 2, **data})


# ---------------------------------------------------------------- taking turns

def test_take_turns_goes_round_robin_and_drops_a_failure():
    calls = []

    def turn(name, r):
        calls.append((name, r))
        return "fail" if (name, r) == ("B", 0) else "ok"

    out = take_turns(["A", "B", "C"], turn, 3, drop=lambda result: result == "fail")
    assert calls == [("A", 0), ("B", 0), ("C", 0), ("A", 1), ("C", 1), ("A", 2), ("C", 2)]
    assert out == {"A": ["ok"] * 3, "B": ["fail"], "C": ["ok"] * 3}


def test_split_iters_shares_the_timed_iterations_among_rounds():
    assert split_iters(3, 3) == [1, 1, 1]
    assert split_iters(7, 3) == [3, 2, 2]
    assert split_iters(2, 1) == [2]
    with pytest.raises(ConfigError, match="--rounds"):
        split_iters(2, 3)


class FakeRunner(Runner):
    """A Runner whose worker processes are replaced by `script`: (config, round) -> Outcome."""

    def __init__(self, script, **kw):
        super().__init__(CPU_MACHINE, **kw)
        self.script, self.calls, self.round_of = script, [], {}

    def outcome(self, config, *, iters, warmup, mem_budget_bytes, time_limit_s):
        r = self.round_of[config] = self.round_of.get(config, -1) + 1
        self.calls.append((config.backend, config.height, r, iters, warmup))
        return self.script(config, r)


def test_rows_take_turns_per_size_and_report_the_median_over_rounds():
    """A machine that slows down 4x over the run: naive and torch alternate, so torch's speed-up is the
    2x of every round, and its median is over all rounds' iterations."""
    drift = [1.0, 2.0, 4.0]

    def script(config, r):
        base = 1.0 if config.backend == "naive" else 0.5
        return ok([base * drift[r], base * drift[r] * 1.1][: 2 if r == 0 else 1])

    configs = expand([(64, 64), (32, 32)], ["naive", "torch"], ["cpu"], ["cpu"], ["fp32"])
    runner = FakeRunner(script, iters=4, warmup=1, rounds=3)
    rows = runner.run_all(configs)
    assert [(b, h, r, n) for b, h, r, n, _ in runner.calls] == [
        ("naive", 64, 0, 2), ("torch", 64, 0, 2), ("naive", 64, 1, 1), ("torch", 64, 1, 1),
        ("naive", 64, 2, 1), ("torch", 64, 2, 1),
        ("naive", 32, 0, 2), ("torch", 32, 0, 2), ("naive", 32, 1, 1), ("torch", 32, 1, 1),
        ("naive", 32, 2, 1), ("torch", 32, 2, 1)]
    assert all(w == 1 for *_, w in runner.calls)  # every round (a fresh process) warms up
    naive, torch_row = rows[0], rows[1]
    assert naive["times_s"] == [1.0, 1.1, 2.0, 4.0] and naive["median_s"] == pytest.approx(1.55)
    assert naive["round_s"] == pytest.approx([1.05, 2.0, 4.0]) and naive["rounds"] == 3 and naive["iters"] == 4
    assert torch_row["speedup"] == pytest.approx(2.0)
    assert spread(naive) == "1.05-4.00 s"


def test_a_round_that_fails_fails_the_row_and_keeps_what_it_measured():
    def script(config, r):
        if config.backend == "torch" and r == 1:
            return Outcome("oom", "killed by SIGKILL")
        return ok([0.2])

    configs = expand([(64, 64)], ["naive", "torch"], ["cpu"], ["cpu"], ["fp32"])
    runner = FakeRunner(script, iters=3, warmup=0, rounds=3)
    naive, torch_row = runner.run_all(configs)
    assert [c[:3] for c in runner.calls] == [("naive", 64, 0), ("torch", 64, 0), ("naive", 64, 1),
                                             ("torch", 64, 1), ("naive", 64, 2)]  # not retried in round 3
    assert torch_row["status"] == "oom" and torch_row["reason"] == "round 2 of 3: killed by SIGKILL"
    assert torch_row["median_s"] is None and torch_row["speedup"] is None and torch_row["times_s"] == [0.2]
    assert naive["status"] == "ok" and naive["rounds"] == 3


def test_speedups_are_the_median_of_paired_round_ratios():
    def row(rounds):
        return {"height": 8, "width": 8, "model": "vgg19", "pooling": "avg", "status": "ok",
                "median_s": statistics.median(rounds), "round_s": rounds}

    rows = [row([1.0, 3.0, 9.0]), row([0.5, 1.0, 9.0])]
    add_speedups(rows)
    # ratios 2, 3, 1: median 2; the medians alone would say 3/1 = 3
    assert rows[1]["speedup"] == pytest.approx(2.0)
    single = [dict(rows[0], round_s=None), dict(rows[1], round_s=None)]
    add_speedups(single)
    assert single[1]["speedup"] == pytest.approx(3.0)


@pytest.mark.parametrize("args,needle", [(["--iters", "2", "--rounds", "3"], "--rounds"),
                                         (["--rounds", "0"], "--rounds")])
def test_bad_rounds_are_a_config_error(args, needle):
    result = CliRunner().invoke(app, ["bench", "--res", "32", *args])
    assert isinstance(result.exception, ConfigError) and needle in str(result.exception)


# ---------------------------------------------------------------- the auto row

def test_auto_is_one_row_per_size_after_naive_and_by_default():
    from styleengine.benchmarks.config import DEFAULT_BACKENDS

    assert DEFAULT_BACKENDS.split(",")[:2] == ["naive", "auto"]
    configs = expand([(64, 64)], ["naive", "auto", "torch"], ["cpu"], ["cpu"], ["fp32", "bf16"],
                     tiles=[None, 32], loop=4)
    autos = [c for c in configs if c.backend == "auto"]
    assert [(c.loop, c.tile, c.device, c.precision, c.conv) for c in autos] == [
        (0, None, "auto", "auto", "auto"), (4, None, "auto", "auto", "auto")]
    assert [c.backend for c in configs if not c.loop][:2] == ["naive", "auto"]


def test_an_auto_row_is_named_and_placed_by_what_it_resolved_to():
    resolved = {"backend": "ort", "provider": "cuda", "device": "cuda", "precision": "fp16", "conv": "direct"}
    config = Config("auto", None, "auto", "auto", 384, 512, conv="auto")
    machine = {**CPU_MACHINE, "gpus": [{"name": "gpu", "fp32_peak_gflops": 1000.0}]}
    row = make_row(config, [ok([0.00566], resolved=resolved, why="fastest of 4 measured"),
                            ok([0.00570], resolved=resolved, why="fastest of 4 measured")], machine, 2, 1)
    assert (row["backend"], row["device"], row["provider"], row["precision"]) == ("auto", "cuda", "cuda", "fp16")
    assert row["resolved"] == resolved and row["why"] == "fastest of 4 measured" and row["reason"] == ""
    assert row["peak_fraction"] == pytest.approx(row["gflops"] / 1000.0)  # the GPU's peak, not the CPU's
    assert series_name(row) == "auto (ort cuda fp16 direct)"
    assert series_name({**row, "loop": 5}) == "auto (ort cuda fp16 direct) loop"
    assert series_name({**row, "resolved": None}) == "auto"
    other = dict(resolved, precision="fp32")
    varied = make_row(config, [ok([0.1], resolved=resolved), ok([0.1], resolved=other)], machine, 2, 1)
    assert varied["status"] == "ok" and "differently between rounds" in varied["reason"]


def test_the_worker_resolves_auto_through_choose(monkeypatch, random_weights):
    from styleengine.engine import autotune
    from styleengine.engine.losses import LossConfig

    asked = []

    def choose(settings, height, width):
        asked.append((settings.backend, settings.device, settings.precision, settings.conv, height, width))
        return autotune.Choice(dataclasses.replace(settings, backend="torch", precision="bf16", conv="direct",
                                                   device="cpu", provider="cpu"), "bf16: 0.42x of fp32 in the trial")

    monkeypatch.setattr(autotune, "choose", choose)
    spec = {"backend": "auto", "model": "vgg19", "pooling": "avg", "height": 48, "width": 64}
    step, auto = worker.build(spec, random_weights("vgg19"), LossConfig())
    step.close()
    from styleengine.engine.stylise import Settings

    default = Settings()
    assert asked == [(default.backend, default.device, default.precision, default.conv, 48, 64)]
    assert auto == {"resolved": {"backend": "torch", "provider": None, "device": "cpu", "precision": "bf16",
                                 "conv": "direct"}, "why": "bf16: 0.42x of fp32 in the trial"}


def test_an_auto_row_through_the_command(tmp_path, machine_once):
    result = CliRunner().invoke(app, ["bench", "--res", "32", "--backends", "auto", "--iters", "1", "--warmup",
                                      "0", "--json", str(tmp_path / "a.json"), "--report", str(tmp_path / "a.md")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert row["status"] == "ok", row["reason"]
    assert row["backend"] == "auto" and row["resolved"]["backend"] in ("torch", "ort") and row["why"]
    assert row["device"] == row["resolved"]["device"] == "cpu" and row["precision"] == row["resolved"]["precision"]
    name = series_name(row)
    assert name.startswith("auto (") and name in result.output and row["why"] in result.output
    assert f"| {name} | 32x32 | ok |" in (tmp_path / "a.md").read_text()


# ---------------------------------------------------------------- units

def test_times_show_their_figure():
    assert fmt_time(0.00566) == "5.66 ms" and fmt_time(0.0001) == "0.10 ms"
    assert fmt_time(1.0) == "1.00 s" and fmt_time(5.78) == "5.78 s" and fmt_time(None) == "-"
    gpu = {"backend": "torch", "provider": None, "device": "cuda", "precision": "bf16", "height": 384,
           "width": 512, "status": "ok", "reason": "", "median_s": 0.00566, "p10_s": 0.0055, "p90_s": 0.0058,
           "round_s": [0.0056, 0.00566, 0.0057], "gflop_per_iter": 300.0, "gflops": 5e4, "peak_fraction": 0.5,
           "peak_rss_bytes": GIB, "peak_device_bytes": GIB, "speedup": 1.0}
    header, (cells,) = table_rows([gpu])
    assert cells[header.index("time/iter")] == "5.66 ms"
    assert cells[header.index("spread")] == "5.60-5.70 ms"
    assert spread({**gpu, "round_s": None}) == "5.50-5.80 ms"  # one round: p10-p90


def test_csv_keeps_lists_as_json(tmp_path):
    import csv

    row = {"backend": "naive", "times_s": [0.5, 0.25], "round_s": [0.5, 0.25], "resolved": None}
    write_csv(tmp_path / "r.csv", [row])
    with open(tmp_path / "r.csv", newline="") as f:
        (got,) = list(csv.DictReader(f))
    assert json.loads(got["times_s"]) == [0.5, 0.25] and got["resolved"] == ""


# ---------------------------------------------------------------- device memory of the timed iterations

class FakeAllocator:
    """torch.cuda's peak counter: what the fake step allocates, since the last reset."""

    def __init__(self):
        self.peak, self.resets = 0, []

    def allocate(self, nbytes: int) -> None:
        self.peak = max(self.peak, nbytes)

    def reset_peak_memory_stats(self, device=None) -> None:
        self.resets.append(device)
        self.peak = 0

    def max_memory_allocated(self, device=None) -> int:
        return self.peak


class FakeDog:
    def start_phase(self, *args):
        pass

    def end_phase(self):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    alloc = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", alloc.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", alloc.max_memory_allocated)
    return alloc


def test_the_device_peak_is_the_timed_iterations_not_the_warm_up(fake_cuda):
    """cuDNN's autotuning takes a 129 GiB workspace in the first call; the timed calls take 2 GiB."""
    calls = []

    def step(image):
        calls.append(image)
        fake_cuda.allocate(129 * GIB if len(calls) == 1 else 2 * GIB)

    peak = worker.DevicePeak(torch.device("cuda", 0), runtime=False)
    times = worker.time_iterations(step, "image", warmup=2, iters=3, dog=FakeDog(), sync=lambda: None,
                                   after_warmup=peak.reset)
    assert len(times) == 3 and len(calls) == 5
    assert peak.read() == 2 * GIB
    assert fake_cuda.resets == [torch.device("cuda", 0)]


def test_the_device_peak_off_cuda_is_none(fake_cuda):
    peak = worker.DevicePeak(torch.device("cpu"), runtime=False)
    peak.reset()
    assert peak.read() is None and fake_cuda.resets == []


def test_the_naive_rows_reset_the_peak_after_their_warm_up(monkeypatch):
    from styleengine.benchmarks import loops, naive

    events = []

    def prepare(*args, **kw):
        return None, lambda: events.append("closure")

    monkeypatch.setattr(naive, "prepare", prepare)
    loops.time_naive(None, None, None, None, loop=0, iters=2, warmup=3, pooling="avg", device="cpu",
                     dog=FakeDog(), sync=lambda: None, after_warmup=lambda: events.append("reset"))
    assert events == ["closure"] * 3 + ["reset"] + ["closure"] * 2


@pytest.mark.parametrize("warmup", [0, 2])
def test_the_naive_loop_calls_back_after_its_warm_up_evaluations(warmup, random_weights):
    from styleengine.benchmarks import naive

    gen = torch.Generator().manual_seed(0)
    content, style, image = (torch.rand(1, 3, 32, 32, generator=gen) for _ in range(3))
    seen = []
    _, losses, seconds = naive.run(random_weights("vgg19"), image, content, style, iterations=warmup + 2,
                                   after=lambda n: seen.append(n))
    assert seen == list(range(len(losses) + 1)) and len(seconds) == len(losses)


# ---------------------------------------------------------------- the README plot

def _bench_row(backend, device, size, median, **extra):
    return {"backend": backend, "provider": None, "device": device, "precision": "fp32", "threads": 2,
            "height": size, "width": size, "status": "ok", "reason": "", "median_s": median,
            "peak_rss_bytes": GIB, "peak_device_bytes": None, "gflops": 1.0, "peak_fraction": None,
            "speedup": None, "loop": 0, "tile": None, "device_name": "Fake GPU" if device == "cuda" else "cpu",
            **extra}


def test_the_readme_plot_is_drawn_from_the_result_files(tmp_path):
    from styleengine.benchmarks import readme_table

    resolved = {"backend": "torch", "provider": None, "device": "cpu", "precision": "bf16", "conv": "direct"}
    cpu = {"machine": {"cpu": "Test CPU", "cpu_isa": "amx", "created": "2026-12-04T10:00:00+0000"},
           "rows": [_bench_row("naive", "cpu", 512, 3.7), _bench_row("auto", "cpu", 512, 1.5, resolved=resolved),
                    _bench_row("torch", "cpu", 512, 5.8, conv="winograd"), _bench_row("naive", "cpu", 1024, 15.0),
                    _bench_row("auto", "cpu", 1024, 6.0, resolved=resolved),
                    _bench_row("naive", "cpu", 1024, 16.0, loop=5)]}
    old = {"machine": {"cpu": "Test CPU", "cpu_isa": "amx", "created": "2026-11-01T10:00:00+0000"},
           "rows": [_bench_row("naive", "cpu", 512, 9.9), _bench_row("torch", "cpu", 512, 5.8, conv="winograd")]}
    gpu = {"machine": {"cpu": "Host CPU", "created": "2026-12-04T11:00:00+0000"},
           "rows": [_bench_row("naive", "cuda", 512, 0.006), _bench_row("torch", "cuda", 512, 0.004),
                    _bench_row("torch", "cpu", 512, 0.9)]}
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    (tmp_path / "a-old.json").write_text(json.dumps(old))
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    (tmp_path / "other.json").write_text(json.dumps({"results": []}))  # another script's document
    series = readme_table.plot_series(tmp_path)
    assert {label: [(r["height"], r["median_s"]) for r in rows] for label, rows in series.items()} == {
        "Test CPU (amx, 2 threads): naive cpu fp32": [(512, 3.7), (1024, 15.0)],  # the newer document's
        "Test CPU (amx, 2 threads): auto (torch cpu bf16 direct)": [(512, 1.5), (1024, 6.0)],
        "Fake GPU: naive cuda fp32": [(512, 0.006)], "Fake GPU: torch cuda fp32": [(512, 0.004)],
        # the GPU box's own CPU had no auto row yet
        "Host CPU (2 threads): torch cpu fp32 (the default before auto)": [(512, 0.9)]}
    out = tmp_path / "bench.png"
    assert readme_table.draw_plot(out, tmp_path) == 5
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_machine_without_auto_rows_plots_the_default_before_it(tmp_path):
    from styleengine.benchmarks import readme_table

    old = {"machine": {"cpu": "Old CPU"}, "rows": [_bench_row("naive", "cpu", 512, 9.9),
                                                 _bench_row("torch", "cpu", 512, 5.8, conv="winograd"),
                                                 _bench_row("torch", "cpu", 512, 9.0, conv="direct"),
                                                 _bench_row("ort", "cpu", 512, 4.0, conv="winograd")]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert list(readme_table.plot_series(tmp_path)) == [
        "Old CPU (2 threads): naive cpu fp32",
        "Old CPU (2 threads): torch cpu fp32 winograd (the default before auto)"]


def test_the_readme_table_reads_old_and_new_rows(tmp_path):
    from styleengine.benchmarks import readme_table

    resolved = {"backend": "ort", "provider": "cuda", "device": "cuda", "precision": "fp16", "conv": "direct"}
    old = _bench_row("torch", "cuda", 384, 0.00566)  # no rounds, resolved or why: a file from before them
    new = _bench_row("auto", "cuda", 384, 0.0041, resolved=resolved, why="measured", rounds=3,
                     round_s=[0.004, 0.0041, 0.0042], provider="cuda")
    (tmp_path / "gpu.json").write_text(json.dumps({"machine": {"cpu": "x"}, "rows": [old, new]}))
    body = readme_table.table(tmp_path)
    assert "| Fake GPU | torch cuda fp32 | 384x384 | 5.66 ms |" in body
    assert "| Fake GPU | auto (ort cuda fp16 direct) | 384x384 | 4.10 ms |" in body


def test_a_full_disk_under_json_is_one_line_and_the_other_files_are_written(tmp_path, monkeypatch, machine_once):
    """Issue 23: `bench --json` onto a full disk was a traceback; now each file is written on its own, the
    failure is one line and exit 1, after the table."""
    import errno

    from styleengine import paths

    real = paths.atomic_write

    def full(path, data):
        if Path(path).suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(paths, "atomic_write", full)
    result = CliRunner().invoke(app, ["bench", "--res", "32", "--backends", "torch", "--iters", "1", "--warmup",
                                      "0", "--json", str(tmp_path / "a.json"), "--report", str(tmp_path / "a.md")])
    assert result.exit_code == 1  # a ConfigError: one line and exit 1 through main() (test_cli checks that path)
    assert isinstance(result.exception, ConfigError) and "No space left on device" in str(result.exception)
    assert "\n" not in str(result.exception) and "wrote" in result.output  # after the table and the other files
    assert (tmp_path / "a.md").is_file() and not (tmp_path / "a.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]  # no temp file left behind


@pytest.mark.parametrize("flags", [["--json", "same.out", "--csv", "same.out"],
                                   ["--json", "r.md", "--report", "./r.md"]])
def test_two_outputs_on_one_path_are_refused_before_work(tmp_path, monkeypatch, flags):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "--res", "32", "--backends", "torch", "--iters", "1", *flags])
    assert isinstance(result.exception, ConfigError) and "name the same file" in str(result.exception)
    assert list(tmp_path.iterdir()) == []
