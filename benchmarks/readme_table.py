"""Regenerate the README's performance tables (and its plot) from benchmarks/results/*.json.

    python -m styleengine.benchmarks.readme_table            # rewrite README.md between the markers
    python -m styleengine.benchmarks.readme_table --plot     # ... and redraw docs/bench.png
    python -m styleengine.benchmarks.readme_table --print    # only print the table
    python -m styleengine.benchmarks.readme_table --check    # exit 1 if README.md is out of date

Only the text between `<!-- perf-table:start -->` and `<!-- perf-table:end -->`
(and between `<!-- serve-table:start -->` and `<!-- serve-table:end -->`) is
touched; the figures come from the committed JSON, never typed by hand.
A maintainer's tool for this repository, so its paths are the repository's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from styleengine.benchmarks.config import series_name
from styleengine.benchmarks.report import fmt_time, gib, limit_sentence, save_figure
from styleengine.paths import atomic_write

START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
SERVE_START, SERVE_END = "<!-- serve-table:start -->", "<!-- serve-table:end -->"
SERVE_MODES = (("loop", "the loop alone (warm step, iterations only)"),
               ("server", "warm server, POST to the PNG's last byte (the photo and painting sent before)"),
               ("server_new", "warm server, a photo it has not seen (the same painting)"),
               ("run", "`styleengine run` (a process per picture)"))
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
PLOT = ROOT / "docs" / "bench.png"


def _machine_label(machine: dict, row: dict) -> str:
    if row["device"] == "cuda":
        return row.get("device_name") or "GPU"
    notes = [machine["cpu_isa"]] if machine.get("cpu_isa") else []
    notes += [f"{row['threads']} threads"] if row.get("threads") else []
    if machine.get("load_avg_1m") is not None:  # other work on the machine slows every figure
        notes.append(f"load {machine['load_avg_1m']:.1f}")
    return f"{machine.get('cpu', 'CPU')} ({', '.join(notes)})" if notes else machine.get("cpu", "CPU")


def _interleaved(doc: dict, name: str) -> list[str]:
    """Rows of benchmarks/interleaved.py's document: each method's median and its ratio to the first."""
    out = []
    for r in doc["results"]:
        kind = f"loop ({r['loop']} iterations a turn)" if r.get("loop") else "step"
        for method, median in r["median_s"].items():
            ratio = "1.00x" if method == r["ratio_to"] else f"{r['ratio_median'][method]:.3f}x"
            out.append(f"| {r.get('cpu_isa', '-')}, {r['threads']} threads, load {r['load_avg_1m']:.1f} | "
                       f"{r['height']}x{r['width']} | {kind} | {method} | {fmt_time(median)} | {ratio} | {name} |")
    return out


def table(results: Path = RESULTS) -> str:
    """The markdown table (and limit lines) from every JSON document in `results`."""
    lines = ["| machine | configuration | size | time/iteration (median) | GFLOP/s | of fp32 peak | peak memory GiB | "
             "speed-up | source |", "|---|---|---|---|---|---|---|---|---|"]
    limits = []
    loops = ["| machine | configuration | size | time/iteration (median) | peak memory GiB | vs naive loop | source |",
             "|---|---|---|---|---|---|---|"]
    turns = ["| CPU | size | timed | method | time/iteration (median) | vs first (median of rounds) | source |",
             "|---|---|---|---|---|---|---|"]
    tiled = ["| machine | configuration | size | status | time/iteration | peak memory GiB | tiles | vs untiled | "
             "source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc.get("results"), list) and all("ratio_median" in r and "median_s" in r
                                                        and isinstance(r["median_s"], dict) for r in doc["results"]):
            turns += _interleaved(doc, path.name)  # benchmarks/interleaved.py: methods taking turns
            continue
        if not _is_bench(doc):
            continue  # another script's results (tiling, interleaved): not `styleengine bench` rows
        machine = doc.get("machine", {})
        for lim in doc.get("limits", []):
            limits.append(f"- {limit_sentence(lim)} ({path.name})")
        if any(row.get("tile") for row in doc["rows"]):  # a --tile run: its own table, failures included
            untiled = {(series_name(r), r["height"], r["width"]): r["median_s"] for r in doc["rows"]
                       if not r.get("tile") and r["status"] == "ok"}
            for row in doc["rows"]:
                if row["status"] == "unavailable":
                    continue
                mem = row["peak_device_bytes"] if row["device"] == "cuda" else row["peak_rss_bytes"]
                status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
                base = untiled.get((series_name({**row, "tile": None}), row["height"], row["width"]))
                ratio = f"{row['median_s'] / base:.2f}x" if row.get("tile") and base and row["median_s"] else "-"
                tiled.append(
                    f"| {_machine_label(machine, row)} | {series_name(row)} | {row['height']}x{row['width']} | "
                    f"{status} | {fmt_time(row['median_s'])} | {gib(mem)} | {row.get('tiles') or 1} | "
                    f"{ratio} | "
                    f"{path.name} |")
            continue
        for row in doc.get("rows", []):
            if row.get("status") != "ok":
                continue
            if path.name.endswith("-limit.json"):
                continue  # the limit document's rows are one-iteration probes; its sentence says more
            mem = row["peak_device_bytes"] if row["device"] == "cuda" else row["peak_rss_bytes"]
            if row.get("loop"):
                loops.append(
                    f"| {_machine_label(machine, row)} | {series_name(row)} | {row['height']}x{row['width']} | "
                    f"{fmt_time(row['median_s'])} | {gib(mem)} | "
                    f"{'-' if row.get('speedup') is None else format(row['speedup'], '.2f') + 'x'} | {path.name} |")
                continue
            lines.append(
                f"| {_machine_label(machine, row)} | {series_name(row)} | {row['height']}x{row['width']} | "
                f"{fmt_time(row['median_s'])} | {row['gflops']:.0f} | "
                f"{'-' if row['peak_fraction'] is None else format(row['peak_fraction'], '.0%')} | {gib(mem)} | "
                f"{'-' if row.get('speedup') is None else format(row['speedup'], '.2f') + 'x'} | {path.name} |")
    text = "\n".join(lines)
    if len(lines) == 2:
        text += "\n\n(no results committed yet)"
    if limits:
        text += "\n\nLargest square size within the budgets (`styleengine bench --limit`):\n\n" + "\n".join(limits)
    if len(loops) > 2:
        text += ("\n\nThe whole loop (`styleengine bench --loop N`: N iterations of step + L-BFGS update with a "
                 "100-pair history + bookkeeping, after the step rows of the same run; 'vs naive loop' is the "
                 "naive row's time over this row's, at the same size in the same run):\n\n" + "\n".join(loops))
    if len(turns) > 2:
        text += ("\n\nThe same methods taking turns in one process (`python -m styleengine.benchmarks.interleaved`: "
                 "every method under the same load; the ratio is the median over rounds of each round's time "
                 "over the first method's):\n\n" + "\n".join(turns))
    if len(tiled) > 2:
        text += ("\n\nThe exact tiled step (`styleengine bench --tile`; one iteration, tiles of the given core "
                 "size plus the halo; 'vs untiled' is this row's time over the same backend's untiled row at "
                 "its size in the same run):\n\n" + "\n".join(tiled))
    note = ("Generated by `python -m styleengine.benchmarks.readme_table` from `benchmarks/results/`; random "
            "weights (timing does not depend on weight values); speed-up is against the first row of the same size "
            "and kind in the same run: the naive loop where it ran, else torch on the CPU at fp32.")
    return text + "\n\n" + note


def serve_table(results: Path = RESULTS) -> str:
    """The serve latency table (benchmarks/serve_latency.py's documents in `results`) and its target line."""
    out = []
    for path in sorted(results.glob("serve-latency-*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        m, s, cpu = doc["machine"], doc["settings"], doc["cpu_median"]
        rounds = len(doc["latency_seconds"]["server"])
        out += [f"{m['cpu']} {m['isa']}, {m['threads']} threads, load average {m['load_after']} after the run "
                f"([{path.name}](benchmarks/results/{path.name})):", "",
                f"| {s['size']} px, {s['iterations']} iterations, {s['model'].upper()} | wall s (median of {rounds}) "
                f"| CPU s (median of {rounds}) |", "| --- | --- | --- |"]
        out += [f"| {label} | {doc['latency_median'][mode]:.1f} | {cpu[mode]:.2f} |" for mode, label in SERVE_MODES
                if mode in cpu]
        allowed = 1.1 * cpu["loop"] + 0.3
        out += ["", f"The issue's target, warm server <= 1.1x the loop + 0.3 s, in CPU seconds: {cpu['server']:.2f} "
                f"against {allowed:.2f} ({'met' if cpu['server'] <= allowed else 'missed'}; server / loop "
                f"{cpu['server'] / cpu['loop']:.3f}). In wall seconds: {doc['latency_median']['server']:.1f} against "
                f"{1.1 * doc['latency_median']['loop'] + 0.3:.1f}."]
        if "server_minus_allowed_by_own_loop" in doc:  # against each job's own loop, timed inside the server
            margins = doc["server_minus_allowed_by_own_loop"]
            worst = max(max(v) for v in margins.values())
            out += ["", "Against each server job's own loop (its iterations timed inside the server, the same moment), "
                    f"wall seconds over 1.1x that loop + 0.3 s, every job of {rounds} rounds: "
                    + "; ".join(f"{mode} " + ", ".join(f"{v:+.2f}" for v in values) for mode, values in margins.items())
                    + f" ({'met by every job' if worst <= 0 else 'missed'})."]
        out.append("")
    return "\n".join(out).rstrip("\n")


def _is_bench(doc: dict) -> bool:
    """A `styleengine bench` document (not another script's results)."""
    return isinstance(doc.get("rows"), list) and all("device" in r for r in doc["rows"])


def plot_series(results: Path = RESULTS) -> dict[str, list[dict]]:
    """The README plot's series, label -> step rows by size: the naive loop, `auto`, and every GPU row, from
    the bench documents in `results` (untiled step rows that ran; limit probes left out). A CPU document
    without an auto row (made before it existed) gives the rows of the engine's default then: torch, fp32,
    the convolutions `auto` chose, until the machine has auto rows. Where documents share a series and size,
    the newest one's row is kept."""
    series: dict[tuple[str, str, bool], dict[tuple, tuple[str, dict]]] = {}  # (machine, name, before auto)
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not _is_bench(doc) or path.name.endswith("-limit.json"):
            continue
        machine = doc.get("machine", {})
        rows = [r for r in doc["rows"] if r.get("status") == "ok" and not r.get("loop") and not r.get("tile")]
        has_auto = any(r["backend"] == "auto" for r in rows)
        for row in rows:
            gpu = row["device"] == "cuda"
            before = (not has_auto and not gpu and row["backend"] == "torch" and row["precision"] == "fp32"
                      and row.get("conv") != "direct")
            if not (gpu or row["backend"] in ("naive", "auto") or before):
                continue
            isa = f"{machine['cpu_isa']}, " if machine.get("cpu_isa") else ""
            where = (row.get("device_name") or "GPU") if gpu else (
                f"{machine.get('cpu', 'CPU')} ({isa}{row.get('threads')} threads)")
            newest = series.setdefault((where, series_name(row), before), {})
            size, created = (row["height"], row["width"]), machine.get("created") or ""
            if size not in newest or created >= newest[size][0]:
                newest[size] = (created, row)
    with_auto = {where for where, name, _ in series if name.startswith("auto")}
    return {f"{where}: {name}" + (" (the default before auto)" if before else ""):
            sorted((row for _, row in rows.values()), key=lambda r: r["height"] * r["width"])
            for (where, name, before), rows in series.items() if not (before and where in with_auto)}


def draw_plot(path: Path, results: Path = RESULTS) -> int:
    """Seconds per iteration against megapixels for plot_series(results), log-log, as a PNG at `path`;
    returns the number of series drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = plot_series(results)
    fig, ax = plt.subplots(figsize=(9, 5))
    for label, rows in series.items():
        gpu = rows[0]["device"] == "cuda"
        naive = rows[0]["backend"] == "naive"
        ax.plot([r["height"] * r["width"] / 1e6 for r in rows], [r["median_s"] for r in rows],
                marker="s" if gpu else "o", ls=":" if naive else "-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("megapixels")
    ax.set_ylabel("seconds per iteration (median)")
    ax.grid(True, which="both", alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    if series:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no bench results", transform=ax.transAxes, ha="center")
    ax.set_title("one loss-and-gradient iteration: the naive loop, `auto` and the GPU rows "
                 "(styleengine bench; benchmarks/results)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return len(series)


def splice(readme: str, body: str, start_mark: str = START, end_mark: str = END) -> str:
    """README text with `body` between the markers; ValueError if they are missing."""
    start, end = readme.find(start_mark), readme.find(end_mark)
    if start < 0 or end < start:
        raise ValueError(f"README has no {start_mark} ... {end_mark} markers")
    return readme[: start + len(start_mark)] + "\n" + body + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table, change nothing")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    parser.add_argument("--plot", nargs="?", const=PLOT, type=Path, metavar="PATH",
                        help=f"also draw the README's plot (default {PLOT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if args.plot is not None and not (args.print or args.check):
        draw_plot(args.plot)
    body, serve = table(), serve_table()
    if args.print:
        print(body + "\n\n" + serve)
        return 0
    try:
        old = README.read_text(encoding="utf-8")
        new = splice(splice(old, body), serve, SERVE_START, SERVE_END)
    except (OSError, ValueError) as e:
        print(f"error: {e}; the table is:\n\n{body}", file=sys.stderr)
        return 1
    if args.check:
        if new != old:
            print("error: README.md's performance table is out of date; run "
                  "python -m styleengine.benchmarks.readme_table", file=sys.stderr)
            return 1
        return 0
    if new != old:
        atomic_write(README, new.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
