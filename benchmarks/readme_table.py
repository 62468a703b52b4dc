"""Regenerate the README's performance table from benchmarks/results/*.json.

    python -m styleengine.benchmarks.readme_table            # rewrite README.md between the markers
    python -m styleengine.benchmarks.readme_table --print    # only print the table
    python -m styleengine.benchmarks.readme_table --check    # exit 1 if README.md is out of date

Only the text between `<!-- perf-table:start -->` and `<!-- perf-table:end -->`
is touched; the figures come from the committed JSON, never typed by hand.
A maintainer's tool for this repository, so its paths are the repository's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from styleengine.benchmarks.config import series_name
from styleengine.benchmarks.report import fmt, gib, limit_sentence
from styleengine.paths import atomic_write

START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def _machine_label(machine: dict, row: dict) -> str:
    if row["device"] == "cuda":
        return row.get("device_name") or "GPU"
    notes = [machine["cpu_isa"]] if machine.get("cpu_isa") else []
    notes += [f"{row['threads']} threads"] if row.get("threads") else []
    if machine.get("load_avg_1m") is not None:  # other work on the machine slows every figure
        notes.append(f"load {machine['load_avg_1m']:.1f}")
    return f"{machine.get('cpu', 'CPU')} ({', '.join(notes)})" if notes else machine.get("cpu", "CPU")


def _time(seconds: float | None) -> str:
    """A per-iteration time: ms below a second (GPU rows), else s."""
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _interleaved(doc: dict, name: str) -> list[str]:
    """Rows of benchmarks/interleaved.py's document: each method's median and its ratio to the first."""
    out = []
    for r in doc["results"]:
        kind = f"loop ({r['loop']} iterations a turn)" if r.get("loop") else "step"
        for method, median in r["median_s"].items():
            ratio = "1.00x" if method == r["ratio_to"] else f"{r['ratio_median'][method]:.3f}x"
            out.append(f"| {r.get('cpu_isa', '-')}, {r['threads']} threads, load {r['load_avg_1m']:.1f} | "
                       f"{r['height']}x{r['width']} | {kind} | {method} | {_time(median)} | {ratio} | {name} |")
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
    tiled = ["| machine | configuration | size | status | s/iter | peak memory GiB | tiles | vs untiled | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc.get("results"), list) and all("ratio_median" in r and "median_s" in r
                                                        and isinstance(r["median_s"], dict) for r in doc["results"]):
            turns += _interleaved(doc, path.name)  # benchmarks/interleaved.py: methods taking turns
            continue
        if not isinstance(doc.get("rows"), list) or not all("device" in r for r in doc["rows"]):
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
                    f"{status} | {fmt(row['median_s'], '.2f')} | {gib(mem)} | {row.get('tiles') or 1} | "
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
                    f"{_time(row['median_s'])} | {gib(mem)} | "
                    f"{'-' if row.get('speedup') is None else format(row['speedup'], '.2f') + 'x'} | {path.name} |")
                continue
            lines.append(
                f"| {_machine_label(machine, row)} | {series_name(row)} | {row['height']}x{row['width']} | "
                f"{_time(row['median_s'])} | {row['gflops']:.0f} | "
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


def splice(readme: str, body: str) -> str:
    """README text with `body` between the markers; ValueError if they are missing."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} ... {END} markers")
    return readme[: start + len(START)] + "\n" + body + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table, change nothing")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args(argv)
    body = table()
    if args.print:
        print(body)
        return 0
    try:
        old = README.read_text(encoding="utf-8")
        new = splice(old, body)
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
