"""`styleengine bench`: per-iteration time, memory and FLOP/s of the step, per
backend, size and device; `--limit` finds the largest size that fits.

styleengine.benchmarks measures (config, runner, analysis, report); this module parses
flags, shows progress and the table, and writes the files it is asked for.
Registered by src/styleengine/cli.py; `python -m styleengine.cli_bench` runs it alone.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from styleengine.benchmarks.analysis import find_limit
from styleengine.benchmarks.config import (DEFAULT_BACKENDS, DEFAULT_DEVICES, DEFAULT_ITERS, DEFAULT_MODEL,
                                           DEFAULT_POOLING, DEFAULT_PRECISIONS, DEFAULT_PROVIDERS, DEFAULT_RES,
                                           DEFAULT_ROUNDS, DEFAULT_TIMEOUT_S, DEFAULT_TIME_BUDGET_S, DEFAULT_WARMUP,
                                           DEVICES, BENCH_BACKENDS, PAPER_RES, SPEEDUP_NOTE, Config, expand,
                                           MAX_SECONDS, parse_choices, parse_resolutions, parse_tiles, positive,
                                           series_name, split_iters, COLUMNS)
from styleengine.benchmarks.report import (PLOT_TITLE, REPORT_HEAD, SPREAD_NOTE, document, fmt, fmt_time, gib,
                                           limit_sentence, table_rows, write_csv, write_json, write_plot, write_report)
from styleengine.benchmarks.runner import Runner, add_speedups, availability, default_mem_budget, machine_info
from styleengine.choices import CONV_ALGOS, MODELS, POOLINGS, PRECISIONS, PROVIDER_NAMES, PROVIDERS
from styleengine import paths
from styleengine.errors import ConfigError, first_line, printable
from styleengine.paths import cache_root, check_cache_dir, check_writable, named_file, same_file

WEIGHTS_NOTE = "weights: random (seeded), offline; timing does not depend on weight values"


def _resolve_auto(chosen: list[str], auto: list[str]) -> list[str]:
    """`auto` in a device or provider list stands for what this machine has."""
    out: list[str] = []
    for item in chosen:
        out += auto if item == "auto" else [item]
    return list(dict.fromkeys(out))


def _own_csv(text: str) -> bool:
    """bench's CSV: a header of its columns."""
    header = text.split("\n", 1)[0].strip().split(",")
    return "median_s" in header and set(header) <= set(COLUMNS)


def _own_report(text: str) -> bool:
    return text.split("\n", 1)[0].rstrip("\r") == REPORT_HEAD


def _own_plot(data: bytes) -> bool:
    return data.startswith(b"\x89PNG") and b"tEXtTitle\x00" + PLOT_TITLE.encode() in data[:1 << 16]


# what each output is: its suffixes, and what an earlier one holds (its text's or its bytes' judge); a file there
# of another suffix, or not an earlier output, is the user's (`--json photo.png`, `--json package.json`)
WRITES: dict[str, tuple[tuple[str, ...], Callable[[str], bool] | None, Callable[[bytes], bool] | None]] = {
    "--json": ((".json",), paths.own_object({"machine", "rows", "notes"}), None),
    "--csv": ((".csv",), _own_csv, None),
    "--plot": ((".png",), None, _own_plot),
    "--report": ((".md", ".markdown"), _own_report, None)}


def _check_writable(path: Path | None, flag: str) -> None:
    """Before row 1: the folder exists and takes a new file, the name is not a directory's (see paths), and a
    file already there is an earlier output of this flag's."""
    if path is None:
        return
    check_writable(path, flag)
    suffixes = WRITES[flag][0]
    if flag == "--plot" and Path(path).suffix.lower() != ".png":  # PNG bytes under another suffix
        raise ConfigError(f"--plot {path}: the plot is a PNG; name a .png file")
    if os.path.lexists(path) and Path(path).suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: a file is there and it is no {suffixes[0]} file; name a "
                          f"{' or '.join(suffixes)} file (bench replaces only its own kind)")
    _check_own(path, flag)


def _check_own(path: Path, flag: str) -> None:
    """ConfigError unless a file at `path` is an earlier output of `flag`'s (said again before each write: a
    user's file put there during a run of hours is not replaced)."""
    _, ours, binary = WRITES[flag]
    paths.check_own(path, f"bench {flag}", ours, binary=binary)


def _holds_partial(path: Path, rows: int) -> bool:
    """Whether --json still holds the partial document of `rows` rows written last (a user's file put there, or
    the file removed, holds none of them)."""
    try:
        with os.fdopen(paths.open_regular(path, follow=True), "rb") as f:  # never a FIFO's wait
            doc = json.loads(f.read(paths.OWN_LIMIT))
    except (OSError, ValueError, RecursionError):
        doc = None
    machine = doc.get("machine") if isinstance(doc, dict) else None
    return isinstance(machine, dict) and machine.get("partial") is True and len(doc.get("rows") or ()) == rows


def _partial_lost(path: Path, rows: int) -> str:
    return f"{path} no longer holds the {_rows(rows)} done (removed or replaced during the run): not kept"


def _rows(count: int) -> str:
    return f"{count} {'row' if count == 1 else 'rows'}"


def _console_table(rows: list[dict], title: str):
    """The rows as a rich table; reasons go below it as numbered notes to keep it narrow."""
    from rich.table import Table

    header, cells = table_rows(rows, reasons=False)
    show_speedup = sum(r["status"] == "ok" for r in rows) > len({(r["height"], r["width"]) for r in rows})
    keep = [i for i, name in enumerate(header) if name != "speed-up" or show_speedup]
    caption = SPREAD_NOTE + ("; speed-up: " + SPEEDUP_NOTE if show_speedup else "")
    table = Table(title=title, caption=caption)
    for i in keep:
        table.add_column(header[i], justify="left" if i < 3 else "right", no_wrap=True)
    styles = {"ok": "green", "oom": "red", "error": "red", "timeout": "yellow", "unavailable": "dim"}
    notes: dict[str, int] = {}
    for row, cell in zip(rows, cells):
        cell = [cell[i] for i in keep]
        if row["status"] != "ok" and row["reason"]:
            number = notes.setdefault(row["reason"], len(notes) + 1)
            cell[2] = f"{cell[2]} [{number}]"
        table.add_row(*cell, style=styles.get(row["status"]))
    return table, [f"[{n}] {reason}" for reason, n in notes.items()]


def _command_line(**values) -> str:
    """The flags that differ from their defaults, as a command line for the record."""
    import inspect

    defaults = {name.replace("_path", ""): p.default for name, p in inspect.signature(bench).parameters.items()}
    parts = ["styleengine bench"]
    for name, value in values.items():
        if value == defaults.get(name) or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def bench(
    res: Annotated[str, typer.Option("--res", help="Comma-separated sizes: 512 (square) or 512x768 (height x width).")
                   ] = DEFAULT_RES,
    backends: Annotated[str, typer.Option("--backends", help="Comma-separated: naive (the plain PyTorch loop "
                                                           "popular implementations run: the baseline), auto (what "
                                                           "`styleengine run` runs without flags; the row says what "
                                                           "it resolved to and why), torch, ort, tensorrt "
                                                           "(untested: not installable here).")
                        ] = DEFAULT_BACKENDS,
    providers: Annotated[str, typer.Option("--providers", help="ORT providers: cpu, cuda, tensorrt; auto: cpu, "
                                                             "and cuda when ONNX Runtime has it and a GPU is here.")
                         ] = DEFAULT_PROVIDERS,
    devices: Annotated[str, typer.Option("--devices", help="torch (and naive) devices: cpu, cuda; auto: cpu, and "
                                                         "cuda when a GPU is here.")] = DEFAULT_DEVICES,
    model: Annotated[str, typer.Option("--model", help="vgg19 (the paper's) or vgg16.")] = DEFAULT_MODEL,
    pooling: Annotated[str, typer.Option("--pooling", help="avg (the paper's) or max.")] = DEFAULT_POOLING,
    precision: Annotated[str, typer.Option("--precision", help="Comma-separated: fp32, bf16, fp16.")
                         ] = DEFAULT_PRECISIONS,
    conv: Annotated[str, typer.Option("--conv", help="Convolutions of the torch and ort rows, comma-separated: "
                                                     "auto (Winograd for fp32 on the CPU), direct, winograd.")
                    ] = "auto",
    tile: Annotated[Optional[str], typer.Option(
        "--tile", help="Time the exact tiled step with cores of SIZE px (a multiple of 16); comma-separated, "
                       "'none' for the untiled step: --tile none,1024 gives the overhead in one run.")] = None,
    iters: Annotated[int, typer.Option("--iters", help="Timed iterations per configuration, shared out among "
                                                       "the rounds.")] = DEFAULT_ITERS,
    rounds: Annotated[Optional[int], typer.Option(
        "--rounds", help="The configurations of a size take turns (A B C A B C ...) this many times, each turn a "
                         "fresh process with its own warm-up; a row's time is the median over every round, its "
                         "spread the rounds' range (1: one process each, one after another; --limit probes run "
                         f"once). Default {DEFAULT_ROUNDS}, or --iters if fewer.")] = None,
    loop: Annotated[int, typer.Option("--loop", help="Also time N whole iterations of the loop (step + L-BFGS "
                                                     "update with a 100-pair history + bookkeeping): a loop row "
                                                     "after each step row, speed-ups against the naive loop.")] = 0,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed iterations before them, in every round; the "
                                                         "device-memory peak counts from after them.")
                      ] = DEFAULT_WARMUP,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write {machine, rows, ...} JSON here.",
                                                                  parser=named_file("--json"))
                         ] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the rows as CSV here.",
                                                                parser=named_file("--csv"))] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw time and memory vs megapixels (PNG).",
                                                             parser=named_file("--plot"))
                    ] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a markdown report (table, plot).",
                                                               parser=named_file("--report"))
                      ] = None,
    limit: Annotated[bool, typer.Option("--limit", help="Search each configuration's largest square size "
                                                        "within the budgets (ignores --res).")] = False,
    mem_budget: Annotated[Optional[float], typer.Option(
        "--mem-budget", help="Memory budget in GiB (default: 80% of what is available on the device).")] = None,
    time_budget: Annotated[Optional[float], typer.Option(
        "--time-budget", help=f"Seconds one iteration may take (default: {DEFAULT_TIME_BUDGET_S:g} with "
                              f"--limit, none otherwise); a longer one is stopped and becomes a 'timeout' row.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before a configuration's process is "
                                                             "killed (a 'timeout' row).")] = DEFAULT_TIMEOUT_S,
) -> None:
    """Time the loss-and-gradient step across backends, sizes and devices."""
    from styleengine.console import Console

    # 1. every flag checked before anything runs
    sizes = parse_resolutions(res)
    backend_list = parse_choices(backends, BENCH_BACKENDS, "--backends")
    provider_list = parse_choices(providers, PROVIDERS + ("auto",), "--providers")
    device_list = parse_choices(devices, DEVICES + ("auto",), "--devices")
    if loop < 0 or loop == 1:
        raise ConfigError(f"--loop needs at least 2 iterations (0: no loop rows), got {loop}")
    if loop and limit:
        raise ConfigError("--loop and --limit do not go together: the limit search times the step")
    precision_list = parse_choices(precision, PRECISIONS, "--precision")
    model = parse_choices(model, MODELS, "--model")[0]
    pooling = parse_choices(pooling, POOLINGS, "--pooling")[0]
    tile_list = parse_tiles(tile)
    conv_list = parse_choices(conv, CONV_ALGOS, "--conv")
    if iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {iters}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {warmup}")
    if rounds is None:
        rounds = min(DEFAULT_ROUNDS, iters)  # --iters 2 alone: two rounds of one
    elif not limit:
        split_iters(iters, rounds)  # raises ConfigError unless every round times an iteration
    cache_root()  # a STYLEENGINE_CACHE_DIR it cannot use is one line here, not the worker's traceback
    if {"ort", "tensorrt"} & set(backend_list):  # they export into it before timing, as `run` (check_cache_for)
        check_cache_dir(cache_root(), "STYLEENGINE_CACHE_DIR")
    positive(mem_budget, "--mem-budget")
    positive(time_budget, "--time-budget", MAX_SECONDS)
    positive(timeout, "--timeout", MAX_SECONDS)
    named: list[tuple[Path, str]] = []  # each output file once: two flags on one path lost the first file's contents
    for path, flag in ((json_path, "--json"), (csv_path, "--csv"), (plot, "--plot"), (report, "--report")):
        _check_writable(path, flag)
        if path is not None:
            where = Path(os.path.expanduser(path))
            first = next((given for earlier, given in named if same_file(earlier, where)), None)
            if first is not None:
                raise ConfigError(f"{first} and {flag} name the same file {path}; give each its own")
            named.append((where, flag))
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'styleengine[plot]'") from None

    # piped or logged output gets room for every column (rich assumes 80 without a terminal)
    out = Console(markup=False)
    err = Console(stderr=True, markup=False)  # paths and names are printed as they are: '[/x]' is no markup
    err.print(WEIGHTS_NOTE, style="dim")
    started = time.perf_counter()
    machine = machine_info()
    err.print(f"{machine['cpu']}, {machine['torch_threads']} threads, fp32 peak "
              f"{machine['fp32_peak_gflops']:.1f} GFLOP/s ({'cached' if machine['fp32_peak_cached'] else 'measured'})"
              f", load average {machine['load_avg_1m']:.2f}", style="dim")

    device_list = _resolve_auto(device_list, ["cpu"] + (["cuda"] if machine.get("cuda") else []))
    provider_list = _resolve_auto(provider_list, ["cpu"] + (
        ["cuda"] if machine.get("cuda") and PROVIDER_NAMES["cuda"] in machine.get("ort_providers", []) else []))
    command = _command_line(res=res, backends=backends, providers=providers, devices=devices, model=model,
                            pooling=pooling, precision=precision, conv=conv, tile=tile, iters=iters, loop=loop,
                            rounds=rounds, warmup=warmup, json=json_path,
                            csv=csv_path, plot=plot, report=report, limit=limit, mem_budget=mem_budget,
                            time_budget=time_budget, timeout=timeout)
    finished: list[dict] = []
    partial_failed: list[OSError] = []
    partial_rows = [0]  # rows of the last partial document written: what --json holds if the final write fails

    shown: dict[Config, str] = {}  # a row's last round line, held until that row is in --json

    def progress(event: str, config: Config, row: dict | None) -> None:
        if row is None:
            return
        if event == "round" or (event == "done" and limit):  # run_all reports rounds, the limit search probes
            turn = f" round {row['round']}/{row['rounds']}" if event == "round" and row["rounds"] > 1 else ""
            detail = f"{fmt_time(row['median_s'])}/iter" if row["status"] == "ok" else row["reason"]
            line = f"  {series_name(row)} {config.height}x{config.width}{turn}: {row['status']} ({detail})"
            # a limit probe, a row's last round and a failed round (its row takes no more turns) are its last line
            if json_path is not None and (event == "done" or row["round"] == row["rounds"] or row["status"] != "ok"):
                shown[config] = line  # said once --json holds the row: a signal between lost a row shown as ok
            else:
                err.print(line, highlight=False)
        if event == "done":
            if json_path is not None:  # a partial document after every row: an interrupted run keeps its rows
                finished.append(dict(row))
                add_speedups(finished)
                partial = document(machine, finished, command=command)
                partial["machine"]["partial"] = True
                try:
                    _check_own(json_path, "--json")
                    write_json(json_path, partial)
                    partial_rows[0] = len(finished)
                except (OSError, ConfigError) as e:  # a full disk: the run goes on, the final write says so again
                    if not partial_failed:
                        said = (f"cannot write {json_path} ({e.strerror or e})" if isinstance(e, OSError) else
                                first_line(e))
                        err.print(f"warning: {said}; the run goes on", highlight=False, markup=False)
                    partial_failed.append(e)
            if config in shown:  # its own line only: a size's rows take turns, their lines come before any is done
                err.print(shown.pop(config), highlight=False)

    budget_bytes = int(mem_budget * 2**30) if mem_budget else None
    if limit and time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET_S
    runner = Runner(machine, iters=iters, warmup=warmup, timeout_s=timeout, time_limit_s=time_budget,
                    mem_budget_bytes=budget_bytes, progress=progress, rounds=1 if limit else rounds)
    limits: list[dict] = []
    try:
        if limit:
            kinds = expand([(PAPER_RES, PAPER_RES)], backend_list, provider_list, device_list, precision_list,
                           model, pooling, tile_list, convs=conv_list)
            rows = []
            for config in kinds:
                reason = availability(config, machine)
                if reason:
                    rows.append(runner.run(config))
                    continue
                err.print(f"searching the limit of {series_name(asdict(config))} (time budget {time_budget:g} s "
                          f"per iteration, memory budget {gib(budget_bytes or default_mem_budget(config, machine))} "
                          f"GiB) ...", highlight=False)
                found = find_limit(runner, config, mem_budget_bytes=budget_bytes, time_budget_s=time_budget)
                limits.append(found)
                if found["at_limit"]:
                    rows.append(found["at_limit"])
            add_speedups(rows)
        else:
            rows = runner.run_all(expand(sizes, backend_list, provider_list, device_list, precision_list,
                                         model, pooling, tile_list, loop, conv_list))
    except KeyboardInterrupt:  # said with what is kept, as run says its picture
        from styleengine.cli import signals as stopped

        stopped.reported = True
        kept = ("" if json_path is None else f"{json_path} not written" if not partial_rows[0] else
                f"{json_path} holds the {_rows(partial_rows[0])} done (machine.partial: true)"
                if _holds_partial(json_path, partial_rows[0]) else _partial_lost(json_path, partial_rows[0]))
        others = [str(p) for p in (csv_path, plot, report) if p is not None]
        kept = "; ".join(filter(None, [kept, f"{', '.join(others)} not written" if others else ""]))
        print(printable(f"error: interrupted ({stopped.name})" + (f"; {kept}" if kept else "")), file=sys.stderr)
        raise typer.Exit(stopped.exit_code) from None
    elapsed = time.perf_counter() - started

    from styleengine.cli import signals

    signals.hold()  # the timing is done: a signal from here is said with the last line, none after it
    doc = document(machine, rows, limits=limits, command=command)
    doc["machine"]["elapsed_s"] = elapsed
    title = ("styleengine bench: the size limit" if limit else "styleengine bench: one loss-and-gradient iteration"
             + (" and the whole loop" if loop else ""))
    table, notes = _console_table(doc["rows"], f"{title} ({machine['cpu']})")
    out.print(table)
    for note in notes:
        out.print(note, highlight=False)
    for row in doc["rows"]:
        if row.get("why") and not row.get("loop"):  # what `auto` resolved to, and why, one line per size
            out.print(f"{series_name(row)} at {row['height']}x{row['width']}: {row['why']}", highlight=False)
    for fit in doc["fits"]:
        if fit["time_slope"] is not None:
            out.print(f"scaling {fit['series']} ({fit['min_px']}-{fit['max_px']} px): time ~ pixels^"
                      f"{fit['time_slope']:.2f}, memory ~ pixels^{fmt(fit['mem_slope'], '.2f')} "
                      f"(pixels^{fmt(fit['mem_slope_net'], '.2f')} above the fixed base)")
    for found in limits:
        out.print(limit_sentence(found))

    failures, written = [], []  # each file on its own: a full disk for one loses none of the others, nor the table
    for path, flag, write in ((json_path, "--json", lambda p: write_json(p, doc)),
                              (csv_path, "--csv", lambda p: write_csv(p, doc["rows"])),
                              (plot, "--plot", lambda p: write_plot(p, doc)),
                              (report, "--report", lambda p: write_report(p, doc, plot))):
        if path is None:
            continue
        try:
            _check_own(path, flag)
            write(path)
        except (OSError, ConfigError) as e:
            held = ("" if path != json_path or not partial_rows[0] or not isinstance(e, OSError) else
                    f"; it holds the partial document ({_rows(partial_rows[0])}, machine.partial: true)"
                    if _holds_partial(path, partial_rows[0]) else f"; {_partial_lost(path, partial_rows[0])}")
            failures.append((f"cannot write {path} ({e.strerror or e})" if isinstance(e, OSError) else first_line(e))
                            + held)
            continue
        written.append(path)

    def last() -> None:
        out.print(f"{WEIGHTS_NOTE}; {elapsed:.0f} s in all", style="dim")
        for path in written:
            err.print(f"wrote {path}")
    if failures:
        last()
        raise ConfigError("; ".join(failures) + "; the table above is the run's result")
    signals.end(last, "the table and the files written above are whole")


def main() -> None:
    """`python -m styleengine.cli_bench ...`: the bench command alone (one-line errors, exit 1)."""
    from styleengine.errors import UserError, first_line

    try:
        typer.run(bench)
    except UserError as e:
        print(f"error: {printable(first_line(e))}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
