"""Bench documents and files: the JSON document, CSV, plot, markdown report,
and the text cells and sentences the CLI and the README table share.
Writes only where it is told."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from styleengine.benchmarks.analysis import fit_slopes
from styleengine.units import fmt_time  # noqa: F401  (the tables and the CLI read it from here)
from styleengine.benchmarks.config import (COLUMNS, DEFAULT_MODEL, MIN_RESOLUTION, PAPER_RES, QUANTUM, SPEEDUP_NOTE,
                                           series_name)

# ---------------------------------------------------------------- documents and files

def document(machine: dict, rows: list[dict], *, limits: list[dict] | None = None, command: str = "") -> dict:
    """The JSON document: {"machine": ..., "rows": [...]} plus the fits, limits and notes."""
    return {
        "machine": {**machine, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command},
        "rows": [{k: row.get(k) for k in COLUMNS} for row in rows],
        "fits": fit_slopes(rows + [p for lim in (limits or []) for p in _limit_points(lim)]),
        "limits": limits or [],
        "notes": {
            "weights": "random (seeded); timing does not depend on weight values",
            "speedup": SPEEDUP_NOTE,
            "peak_fraction": "achieved GFLOP/s over the device's measured fp32 conv peak (bf16/fp16 may exceed 1, "
                             "and Winograd rows: they do fewer multiplications than the direct FLOP count)",
            "gflop_per_iter": "convolutions forward + input gradient + Gram terms, from the layer table",
            "tile": ("tiled rows (engine/tiled.py: exact, two passes over tiles with a halo) count the untiled "
                     "step's GFLOP, the useful work, so their GFLOP/s and speed-up show the tiling overhead; "
                     "their targets are random of the right shapes (the time does not depend on their values)"),
        },
    }


PLOT_TITLE = "styleengine bench"  # in bench's plot, the PNG's Title: an earlier plot is told by it
REPORT_HEAD = "# styleengine bench"  # a report's first line, likewise


def save_figure(fig, path: Path, title: str | None = None) -> None:
    """A matplotlib figure as PNG, atomically; no version stamp, so the same figures give the same bytes
    (`title`: the PNG's Title text)."""
    import matplotlib.pyplot as plt

    from styleengine.paths import atomic_writer

    try:
        with atomic_writer(Path(path)) as f:
            fig.savefig(f, format="png", dpi=110, metadata={"Software": None, "Title": title})
    finally:
        plt.close(fig)


def write_json(path: Path, doc: dict) -> None:
    from styleengine.paths import atomic_write

    atomic_write(Path(path), (json.dumps(doc, indent=1) + "\n").encode("utf-8"))


def write_csv(path: Path, rows: list[dict]) -> None:
    import io

    from styleengine.paths import atomic_write

    with io.StringIO(newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(row.get(k), sort_keys=True) if isinstance(row.get(k), (dict, list))
                             else ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        atomic_write(Path(path), f.getvalue().encode("utf-8"))


def write_plot(path: Path, doc: dict) -> None:
    """Time and memory per iteration against megapixels, per series, log-log; the
    FLOP floor (GFLOP / measured fp32 peak) dashed; 512 px marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from styleengine.engine.losses import LossConfig
    from styleengine.model.vgg import gflop

    machine = doc["machine"]
    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    for lim in doc.get("limits", []):  # the probes add points between the table's sizes
        rows += [p for p in _limit_points(lim)]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(series_name(r), []).append(r)
    for name, rs in series.items():
        rs = sorted({(r["height"], r["width"]): r for r in rs}.values(), key=lambda r: r["height"] * r["width"])
        mp = [r["height"] * r["width"] / 1e6 for r in rs]
        ax_t.plot(mp, [r["median_s"] for r in rs], "o-", label=name)
        mem = [(r["peak_device_bytes"] if r["device"] == "cuda" else r["peak_rss_bytes"]) or float("nan") for r in rs]
        ax_m.plot(mp, [m / 2**30 for m in mem], "o-", label=name)
    if rows:
        loss = LossConfig()
        sizes = sorted({r["height"] for r in rows} | {PAPER_RES})
        grid = sorted({max(QUANTUM, round(sizes[0] * (sizes[-1] / sizes[0]) ** (i / 40) / QUANTUM) * QUANTUM)
                       for i in range(41)})
        model = rows[0].get("model") or DEFAULT_MODEL
        for device, peak in (("cpu", machine.get("fp32_peak_gflops")),
                             ("cuda", (machine.get("gpus") or [{}])[0].get("fp32_peak_gflops"))):
            if peak and any(r["device"] == device for r in rows):
                floor = [gflop(model, list(loss.content_layers), list(loss.style_layers), int(s), int(s))["total"]
                         / peak for s in grid]
                ax_t.plot([s * s / 1e6 for s in grid], floor, "k--", lw=1,
                          label=f"FLOP floor {device} ({peak:.0f} GFLOP/s fp32 peak)")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(PAPER_RES**2 / 1e6, color="grey", ls=":", lw=1)
        ax.text(PAPER_RES**2 / 1e6, 0.02, " 512 px (paper)", transform=ax.get_xaxis_transform(), fontsize=8,
                color="grey")
        ax.set_xlabel("megapixels")
        ax.grid(True, which="both", alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax_t.set_ylabel("seconds per iteration (median)")
    ax_m.set_ylabel("peak memory, GiB (host RSS; GPU: device)")
    ax_t.legend(fontsize=7)
    ax_m.legend(fontsize=7)
    fig.suptitle(f"styleengine step: {machine.get('cpu', '')}"
                 + (f" / {machine['gpus'][0]['name']}" if machine.get("gpus") else ""), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, PLOT_TITLE)


def _limit_points(limit: dict) -> list[dict]:
    """Probe results as plot points (ok probes that ran to completion)."""
    base = {k: limit.get(k) for k in ("backend", "provider", "device", "precision", "model", "tile")}
    return [{**base, "height": p["res"], "width": p["res"], "median_s": p["median_s"],
             "peak_rss_bytes": p["peak_rss_bytes"], "peak_device_bytes": p["peak_device_bytes"],
             "base_rss_bytes": p.get("base_rss_bytes"), "status": "ok"}
            for p in limit["probes"] if p["median_s"] is not None]


def fmt(value: Any, spec: str = ".3g") -> str:
    """A figure for a table cell: None as '-', floats by `spec`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def spread(row: dict) -> str:
    """The lowest and highest round's median when the row took turns, else its p10-p90, in one unit."""
    if row["status"] != "ok":
        return "-"
    rounds = row.get("round_s") or []
    lo, hi = (min(rounds), max(rounds)) if len(rounds) > 1 else (row["p10_s"], row["p90_s"])
    if hi < 1:
        return f"{lo * 1e3:.2f}-{hi * 1e3:.2f} ms"
    return f"{lo:.2f}-{hi:.2f} s"


SPREAD_NOTE = ("spread: the fastest and slowest round's median when the rows took turns (--rounds), else the "
               "10th-90th percentile of the iterations")


def table_rows(rows: list[dict], *, reasons: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the console table and the markdown report."""
    header = ["configuration", "size", "status", "time/iter", "spread", "GFLOP/it", "GFLOP/s", "of peak",
              "RSS GiB", "device GiB", "speed-up"] + (["reason"] if reasons else [])
    cells = []
    for r in rows:
        cells.append([
            series_name(r), f"{r['height']}x{r['width']}", r["status"], fmt_time(r["median_s"]),
            spread(r), fmt(r["gflop_per_iter"], ".0f"),
            fmt(r["gflops"], ".1f"), f"{r['peak_fraction']:.0%}" if r["peak_fraction"] is not None else "-",
            gib(r["peak_rss_bytes"]), gib(r["peak_device_bytes"]),
            f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-",
        ] + ([r["reason"] or ""] if reasons else []))
    return header, cells


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in esc])


def limit_sentence(lim: dict) -> str:
    """One line per searched configuration: the limit, the figures there, and 512 px."""
    name = series_name(lim)
    if lim["limit_px"] is None:
        return f"{name}: not even {MIN_RESOLUTION} px fits ({lim['limited_by']})"
    row = lim["at_limit"] or {}
    mem = row.get("peak_device_bytes") if lim["device"] == "cuda" else row.get("peak_rss_bytes")
    text = (f"{name}: limit {lim['limit_px']} px ({lim['limit_px'] ** 2 / 1e6:.2f} MP) at "
            f"{fmt_time(row.get('median_s'))}/iteration and {gib(mem)} GiB "
            f"(budgets {lim['time_budget_s']:g} s, {gib(lim['mem_budget_bytes'])} GiB; next size up: "
            f"{lim['limited_by']})")
    paper = lim.get("paper_512")
    if paper and paper["median_s"] is not None:
        text += (f"; the paper's 512 px takes {fmt_time(paper['median_s'])} and {gib(paper['peak_bytes'])} GiB "
                 f"({paper['time_fraction_of_budget']:.0%} of the time budget), and the limit holds "
                 f"{paper['limit_pixels_over_512'] or 0:.1f}x its pixels")
    return text


def write_report(path: Path, doc: dict, plot_path: Path | None = None) -> None:
    m = doc["machine"]
    lines = [REPORT_HEAD, "",
             f"- machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs, "
             f"{gib(m.get('memory_total_bytes'))} GiB), torch threads {m.get('torch_threads')}, "
             f"load average {fmt(m.get('load_avg_1m'), '.2f')} at start",
             f"- GPUs: {', '.join(g['name'] for g in m.get('gpus', [])) or 'none'}",
             f"- fp32 peak (measured): {fmt(m.get('fp32_peak_gflops'), '.1f')} GFLOP/s ({m.get('fp32_peak_method')})",
             f"- versions: {json.dumps(m.get('versions'), sort_keys=True)}",
             f"- command: `{m.get('command')}`", f"- weights: {doc['notes']['weights']}", ""]
    if doc["rows"]:
        lines += ["## Per-iteration figures", "", markdown_table(*table_rows(doc["rows"])), "",
                  f"speed-up: {doc['notes']['speedup']}.", "", f"{SPREAD_NOTE}.", ""]
        lines += [f"- {series_name(r)} at {r['height']}x{r['width']}: {r['why']}" for r in doc["rows"]
                  if r.get("why") and not r.get("loop")] + [""]
    if doc.get("fits"):
        lines += ["## Scaling with the pixel count (log-log slopes; 1 = linear)", "",
                  markdown_table(["series", "points", "sizes", "time slope", "memory slope", "memory slope (net)"],
                                 [[f["series"], str(f["points"]), f"{f['min_px']}-{f['max_px']}",
                                   fmt(f["time_slope"], ".2f"), fmt(f["mem_slope"], ".2f"),
                                   fmt(f["mem_slope_net"], ".2f")] for f in doc["fits"]]), ""]
    if doc.get("limits"):
        lines += ["## Resolution limit", ""] + [f"- {limit_sentence(lim)}" for lim in doc["limits"]] + [""]
    if plot_path is not None:
        rel = Path(os.path.relpath(Path(plot_path).resolve(), Path(path).resolve().parent))
        lines += ["## Plot", "", f"![time and memory against megapixels]({rel.as_posix()})", ""]
    from styleengine.paths import atomic_write

    atomic_write(Path(path), "\n".join(lines).encode("utf-8"))
