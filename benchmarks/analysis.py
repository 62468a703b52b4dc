"""What the rows say: log-log slopes against the pixel count, and the search for
the largest square size within a time and a memory budget."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from styleengine.benchmarks.config import MIN_FIT_SPAN, MIN_RESOLUTION, PAPER_RES, QUANTUM, Config, series_name
from styleengine.benchmarks.runner import Runner, default_mem_budget

# ---------------------------------------------------------------- fits

def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def fit_slopes(rows: list[dict]) -> list[dict]:
    """Per backend/provider/device/precision: the log-log slopes of time and memory against pixels.

    mem_slope uses the peak RSS (or device peak on a GPU); mem_slope_net
    subtracts the process's RSS before the first image-sized tensor (torch,
    the weights, the runtime), which is constant in the size.
    """
    groups: dict[str, dict[tuple, dict]] = {}
    for row in rows:  # one point per series and size (a limit's probes repeat its table row)
        if row["status"] == "ok":
            groups.setdefault(series_name(row), {}).setdefault((row["height"], row["width"]), row)
    fits = []
    for name, points in groups.items():
        rs = list(points.values())
        px = [r["height"] * r["width"] for r in rs]
        mem = [r["peak_device_bytes"] if r["device"] == "cuda" else r["peak_rss_bytes"] for r in rs]
        net = [(r["peak_rss_bytes"] - r["base_rss_bytes"]) if r["device"] == "cpu" and r.get("base_rss_bytes")
               else r["peak_device_bytes"] for r in rs]
        if max(px) < MIN_FIT_SPAN * min(px):  # a slope over a few percent of pixels is noise
            continue
        fits.append({"series": name, "points": len(rs), "min_px": min(r["height"] for r in rs),
                     "max_px": max(r["height"] for r in rs),
                     "time_slope": loglog_slope(px, [r["median_s"] for r in rs]),
                     "mem_slope": loglog_slope(px, mem), "mem_slope_net": loglog_slope(px, net)})
    return fits


# ---------------------------------------------------------------- limit search

@dataclass
class Probe:
    res: int
    fits: bool
    why: str  # "fits", or which budget (or failure) stopped it
    row: dict | None = None


def search_limit(probe: Callable[[int], Probe], *, start: int = PAPER_RES, floor: int = MIN_RESOLUTION,
                 ceiling: int = 32768, quantum: int = QUANTUM) -> tuple[int | None, list[Probe]]:
    """The largest multiple of `quantum` in [floor, ceiling] whose probe fits.

    Brackets from `start` (doubling up while it fits, halving down while it
    does not), then bisects the bracket down to `quantum`. Assumes fitting
    is monotone in the size. Returns (limit or None, the probes in order).
    """
    def snap(r: int) -> int:
        return max(floor, min(ceiling, (r // quantum) * quantum))

    done: dict[int, Probe] = {}
    order: list[Probe] = []

    def fits(r: int) -> bool:
        if r not in done:
            done[r] = probe(r)
            order.append(done[r])
        return done[r].fits

    r = snap(start)
    lo: int | None
    hi: int | None
    if fits(r):
        lo, hi = r, None
        while hi is None:
            nxt = snap(lo * 2)
            if nxt == lo:
                return lo, order  # fits at the ceiling
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        lo, hi = None, r
        while lo is None:
            nxt = snap(hi // 2)
            if nxt == hi:
                return None, order  # not even the floor fits
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    while hi - lo > quantum:
        mid = snap((lo + hi) // 2)
        if mid <= lo:
            mid = lo + quantum
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, order


def judge(row: dict, mem_budget: int, time_budget: float) -> Probe:
    """Does one probe row fit both budgets?"""
    res = row["height"]
    if row["status"] != "ok":
        return Probe(res, False, f"{row['status']}: {row['reason']}", row)
    mem = row["peak_device_bytes"] if row["device"] == "cuda" else row["peak_rss_bytes"]
    if mem is not None and mem > mem_budget:
        return Probe(res, False, f"memory {mem / 2**30:.2f} GiB > budget {mem_budget / 2**30:.2f} GiB", row)
    if row["median_s"] > time_budget:
        return Probe(res, False, f"{row['median_s']:.1f} s/iteration > budget {time_budget:g} s", row)
    return Probe(res, True, "fits", row)


def find_limit(runner: Runner, config: Config, *, mem_budget_bytes: int | None, time_budget_s: float,
               start: int = PAPER_RES) -> dict:
    """Search one configuration's largest square size; each probe is one worker process
    (one warm-up and one timed iteration; the worker stops it once it passes either budget)."""
    mem_budget = mem_budget_bytes or default_mem_budget(config, runner.machine)

    def probe(res: int) -> Probe:
        # one warm-up: ORT's CPU arena keeps growing after the first run, so a
        # single iteration would understate the memory at the limit
        row = runner.run(config.at(res, res), iters=1, warmup=1, mem_budget_bytes=mem_budget,
                         time_limit_s=time_budget_s)
        return judge(row, mem_budget, time_budget_s)

    limit, probes = search_limit(probe, start=start)
    at_limit = next((p.row for p in probes if p.res == limit), None)
    paper = next((p for p in probes if p.res == PAPER_RES), None)
    first_fail = min((p for p in probes if not p.fits), key=lambda p: p.res, default=None)
    result = {
        "backend": config.backend, "provider": config.provider, "device": config.device,
        "precision": config.precision, "model": config.model, "pooling": config.pooling, "tile": config.tile,
        "conv": at_limit.get("conv") if at_limit else config.conv,
        "resolved": at_limit.get("resolved") if at_limit else None,  # an auto row's configuration at the limit
        "mem_budget_bytes": mem_budget, "time_budget_s": time_budget_s, "limit_px": limit,
        "limited_by": first_fail.why if first_fail else "the search ceiling",
        "at_limit": at_limit,
        "probes": [{"res": p.res, "fits": p.fits, "why": p.why,
                    "median_s": p.row["median_s"] if p.row else None,
                    "peak_rss_bytes": p.row["peak_rss_bytes"] if p.row else None,
                    "peak_device_bytes": p.row["peak_device_bytes"] if p.row else None,
                    "base_rss_bytes": p.row.get("base_rss_bytes") if p.row else None} for p in probes],
        "paper_512": None,
    }
    if paper is not None and paper.row is not None:
        row = paper.row
        mem = row["peak_device_bytes"] if row["device"] == "cuda" else row["peak_rss_bytes"]
        result["paper_512"] = {
            "fits": paper.fits, "median_s": row["median_s"], "peak_bytes": mem,
            "time_fraction_of_budget": row["median_s"] / time_budget_s if row["median_s"] else None,
            "mem_fraction_of_budget": mem / mem_budget if mem else None,
            "limit_pixels_over_512": (limit * limit) / (PAPER_RES * PAPER_RES) if limit else None,
        }
    return result


