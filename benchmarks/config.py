"""Bench configurations: the defaults, flag parsing, `Config`, the row schema.

Torch-free and quick to import, so bad flags fail before anything runs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

from styleengine.choices import BACKENDS, MAX_SIDE
from styleengine.engine.settings import OutOfRange, whole
from styleengine.errors import ConfigError

# the engine's backends, `naive`: the loop popular implementations run (benchmarks/naive.py), the baseline
# every speed-up is against, and `auto`: what `styleengine run` runs without flags (resolved by
# engine/autotune.choose in the worker); dict.fromkeys: BACKENDS may come to hold "auto" itself
BENCH_BACKENDS = tuple(dict.fromkeys(("naive", "auto") + BACKENDS))

DEVICES = ("cpu", "cuda")  # a bench row names the device it ran on: no "auto"
STATUSES = ("ok", "oom", "error", "timeout", "unavailable")
MIN_RESOLUTION = 32
QUANTUM = 16  # the limit search works on multiples of this
PAPER_RES = 512  # "images of about 512x512 pixels" (Gatys et al.)
MIN_FIT_SPAN = 2.0  # slopes need sizes spanning at least this ratio of pixel counts

# Defaults, written once; the CLI reads them from here. 3 rounds of 1 warm-up + 1 timed iteration per row
# (a process each): the rows take turns, so a drifting machine shifts every row alike; each round pays its
# own warm-up, about twice the iterations of the single 1 + 2 run this replaced (--rounds 1: that run).
DEFAULT_RES = "512,1024"
DEFAULT_BACKENDS = "naive,auto,torch,ort"
DEFAULT_PROVIDERS = "auto"  # cpu, and cuda where ONNX Runtime has it and a GPU is here
DEFAULT_DEVICES = "auto"  # cpu, and cuda where a GPU is here: CPU against GPU is what bench is for
DEFAULT_PRECISIONS = "fp32"
DEFAULT_MODEL = "vgg19"  # the paper's network
DEFAULT_POOLING = "avg"  # the paper's choice
DEFAULT_ITERS = 3  # timed iterations per row in all, shared out among the rounds
DEFAULT_WARMUP = 1  # untimed iterations per round (each round is a fresh process)
DEFAULT_ROUNDS = 3
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_TIME_BUDGET_S = 60.0  # per iteration; ~1000 L-BFGS iterations in under a day
DEFAULT_MEM_FRACTION = 0.8  # of the memory available when the run starts

# the stable row schema a user scripts against; the CSV has the same columns
ROW_KEYS = ("backend", "provider", "device", "precision", "threads", "height", "width", "status", "reason",
            "median_s", "p10_s", "p90_s", "peak_rss_bytes", "peak_device_bytes", "gflop_per_iter", "gflops",
            "peak_fraction", "versions")
# rounds: how many turns the row took; round_s: each round's median per-iteration time (the spread);
# times_s: every timed iteration, in round order; resolved / why: what an `auto` row ran and why
EXTRA_KEYS = ("device_name", "model", "pooling", "iters", "warmup", "iters_per_s", "base_rss_bytes", "speedup",
              "tile", "tiles", "loop", "conv", "rounds", "round_s", "times_s", "resolved", "why")
COLUMNS = ROW_KEYS + EXTRA_KEYS
RESOLVED_KEYS = ("backend", "provider", "device", "precision", "conv")  # what an `auto` row records it ran
SPEEDUP_NOTE = ("the first ok row's time at the same size and kind (step or loop) over this row's, the median of "
                "the rounds' ratios when the rows took turns: the naive loop on cpu at fp32 when it ran, so every "
                "row against what users run today, and GPU vs CPU")
# --loop N: N whole iterations (step + L-BFGS update + bookkeeping, history 100) timed per iteration
LOOP_HISTORY = 100



# ---------------------------------------------------------------- parsing

def _items(text: str, flag: str) -> list[str]:
    items = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one value, got {text!r}")
    return list(dict.fromkeys(items))


def parse_choices(text: str, allowed: Iterable[str], flag: str) -> list[str]:
    allowed = tuple(allowed)
    items = _items(text, flag)
    for item in items:
        if item not in allowed:
            raise ConfigError(f"unknown {flag.lstrip('-').rstrip('s')} {item!r} in {flag}; choose from {', '.join(allowed)}")
    return items


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    """'512,1024' or '512x768' (height x width) -> [(h, w), ...]; each side an integer >= 32."""
    out = []
    for item in _items(text, "--res"):
        parts = item.split("x")
        try:
            if len(parts) not in (1, 2):
                raise ValueError
            h, w = (whole(parts[0]), whole(parts[-1]))  # int() took "64_0" as 640
        except OutOfRange:  # digits past 2**63: a side past any picture
            raise ConfigError(f"--res {item}: the largest side is {MAX_SIDE} px") from None
        except ValueError:
            raise ConfigError(f"--res takes sizes like 512 or 512x768 (height x width), got {item!r}") from None
        if min(h, w) < MIN_RESOLUTION:
            raise ConfigError(f"--res {item}: the smallest size is {MIN_RESOLUTION} px (VGG pools 4 times)")
        if max(h, w) > MAX_SIDE:
            raise ConfigError(f"--res {item}: the largest side is {MAX_SIDE} px")
        out.append((h, w))
    return list(dict.fromkeys(out))


def parse_tiles(text: str | None) -> list[int | None]:
    """--tile: comma-separated core sizes (multiples of 16); `none` is the untiled step (0 is refused, as `run
    --tile 0` is). "none,1024" times both in the same run, so the overhead is a ratio of one run's rows."""
    if text is None:
        return [None]
    out: list[int | None] = []
    for item in _items(text, "--tile"):
        if item.lower() == "none":
            out.append(None)
            continue
        try:
            tile = whole(item)  # int() took "1_6" as 16
        except ValueError:
            raise ConfigError(f"--tile: {item!r} is not a size in px (or none)") from None
        if tile <= 0 or tile % QUANTUM:
            raise ConfigError(f"--tile: {tile} is not a positive multiple of {QUANTUM} px ('none' for the untiled "
                              f"step)")
        out.append(tile)
    return list(dict.fromkeys(out))


def split_iters(iters: int, rounds: int) -> list[int]:
    """Timed iterations per round: `iters` shared out, the first rounds taking the remainder (7, 3: 3 2 2)."""
    if not 1 <= rounds <= iters:
        raise ConfigError(f"--iters ({iters}) must be at least --rounds ({rounds}), and --rounds at least 1: "
                          f"every round times one iteration or more")
    return [iters // rounds + (r < iters % rounds) for r in range(rounds)]


def positive(value: float | None, flag: str, at_most: float = math.inf) -> float | None:
    """`value` of `flag` if a finite number > 0 (and at most `at_most`); ConfigError otherwise."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a number > 0, got {value}")
    if value is not None and value > at_most:
        raise ConfigError(f"{flag} must be at most {at_most:g}, got {value:g}")
    return value


MAX_SECONDS = 1e6  # about 11 days: past it a --timeout is a typo (1e20 overflowed the process wait)


# ---------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    backend: str
    provider: str | None  # ORT's execution provider; None for torch
    device: str  # cpu or cuda: where the step's tensors live
    precision: str
    height: int
    width: int
    model: str = DEFAULT_MODEL
    pooling: str = DEFAULT_POOLING
    tile: int | None = None  # core size of the exact tiled step (engine/tiled.py); None: untiled
    loop: int = 0  # 0: time the step alone; N: time N whole iterations of the loop (step + optimiser)
    conv: str | None = None  # torch's and ORT's convolutions (auto, direct, winograd); None for the others

    @property
    def key(self) -> tuple:
        """What a limit search and a speed-up compare across (everything but the size)."""
        return (self.backend, self.provider, self.device, self.precision, self.model, self.pooling, self.tile,
                self.loop, self.conv)

    def at(self, height: int, width: int) -> "Config":
        return dataclasses.replace(self, height=height, width=width)


def expand(resolutions: list[tuple[int, int]], backends: list[str], providers: list[str], devices: list[str],
           precisions: list[str], model: str = DEFAULT_MODEL, pooling: str = DEFAULT_POOLING,
           tiles: list[int | None] = (None,), loop: int = 0, convs: list[str] = ("auto",)) -> list[Config]:
    """Every configuration, in table order: per size, the backends in the order given (torch devices,
    ORT providers, TensorRT), each untiled and/or tiled as `tiles` lists (None: untiled); with `loop` N,
    each step row is followed by the same configuration timed over N whole iterations of the loop.

    torch runs on each of `devices`, ort on each of `providers` (cpu -> cpu tensors, cuda/tensorrt -> cuda
    tensors), both with each of `convs`; tensorrt always on cuda. `auto` is one untiled row per size (and
    loop): device, precision and convolutions are the worker's to resolve, as `styleengine run` does.
    """
    kinds: list[tuple[str, str | None, str, str | None]] = []
    for backend in backends:
        if backend == "naive":
            kinds += [(backend, None, d, None) for d in devices]
        elif backend == "auto":
            kinds.append(("auto", None, "auto", "auto"))
        elif backend == "torch":
            kinds += [(backend, None, d, c) for d in devices for c in convs]
        elif backend == "ort":
            kinds += [("ort", p, "cpu" if p == "cpu" else "cuda", c) for p in providers for c in convs]
        else:
            kinds.append(("tensorrt", "tensorrt", "cuda", None))
    loops = (0, loop) if loop else (0,)
    # Winograd is fp32 only: in another precision "auto" is "direct", one configuration, timed once
    same_as_auto = {"direct"} if "auto" in convs else set()
    configs = []
    for (h, w) in resolutions:
        for n in loops:
            for (b, p, d, conv) in kinds:
                if b == "auto":
                    configs.append(Config("auto", None, "auto", "auto", h, w, model, pooling, None, n, "auto"))
                    continue
                configs += [Config(b, p, d, prec, h, w, model, pooling, tile, n, conv)
                            for prec in precisions for tile in tiles
                            if not (b == "naive" and (prec != "fp32" or tile))
                            and not (prec != "fp32" and conv in same_as_auto)]
    return configs


def series_name(row: dict) -> str:
    """torch cpu fp32, ort cpu fp32, ort cuda fp32, ort tensorrt fp16, tensorrt fp32, ort cpu fp32 tile 1024;
    an `auto` row with what it resolved to: auto (torch cpu bf16 direct), auto (ort cuda fp16 direct) loop."""
    backend, provider = row["backend"], row.get("provider")
    if backend == "auto":
        resolved = row.get("resolved")
        inner = f" ({series_name({**row, **resolved, 'loop': 0})})" if resolved else ""
        return f"auto{inner}" + (" loop" if row.get("loop") else "")
    where = row["device"] if backend in ("naive", "torch") else (provider if provider and provider != backend else "")
    tile = f"tile {row['tile']}" if row.get("tile") else ""
    loop = "loop" if row.get("loop") else ""
    conv = row.get("conv") if row.get("conv") not in (None, "auto") else ""  # auto: what it resolved to, once run
    return " ".join(p for p in (backend, where, row["precision"], conv, tile, loop) if p)

