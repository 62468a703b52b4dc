"""`auto` for every choice a user leaves open (backend, precision, convolutions), measured on this machine.

capability.py says what may run here; this module says which of it is
fastest here. On first use for a machine (engine/machine.fingerprint: CPU
model and kernel flags, threads, GPU, library versions), model, pooling,
place and size class, a short trial times every candidate that builds
(interleaved rounds of a few steps each), checks that a reduced precision
keeps the look (its step against fp32's, then a short run's distances),
keeps the choice in the user cache and reuses it. Explicit settings always
win: only what is `auto` is a candidate. A record that does not parse or
whose key differs is measured again, never trusted.

STYLEENGINE_TUNE=off resolves by rule (capability.rule) without measuring:
the tests do, and so can a user who wants the same path on every machine.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from styleengine.engine import capability
from styleengine.engine.machine import fingerprint, probe
from styleengine.engine.stylise import Settings
from styleengine.errors import ConfigError, UserError, first_line
from styleengine.units import fmt_time

log = logging.getLogger(__name__)

TUNE_VERSION = 2  # bump when the trial or the record changes meaning: older records are measured again
RECORD_NAME = "tune.json"
ROUNDS = 3  # interleaved rounds (A B C A B C ...): a drifting machine shifts every candidate alike
DROP_AFTER_FIRST = 1.4  # a candidate this much slower than the best after round one is not timed again
DROP_AFTER_WARMUP = 2.0  # nor one whose warm-up took this much longer than the best warm-up
# a reduced precision must beat fp32 by more than this to be chosen: fp32 is exact, and on a 2-core EPYC a trial's
# 9% lead for bf16 at 384x512 was a 6% loss at 512x512 in the interleaved bench
FP32_MARGIN = 0.10
LOOK_TOLERANCE = 0.05  # a reduced precision's style and content distances within 5% of fp32's after LOOK_ITERS
LOOK_ITERS = 8
LOOK_SIDE = 160  # px, long side of the look check's short run
SIZE_CLASSES = (128, 256, 512, 1024, 2048)  # a run is tuned at the class nearest its size (log scale)
# the trial's long side at most (3:4): the ranking moves with the size (on a 2-core EPYC ORT led torch fp32 at
# 192x256 and trailed at 384x512; bf16 trailed Winograd by 6% at 512 and 12% at 1024), so a class is timed at its
# own size; above 1024 px runs start coarse-to-fine at 512-724 px and share the 1024 px trial
TRIAL_SIDE = {"cpu": 1024, "cuda": 1024}


@dataclass(frozen=True)
class Trial:
    """One candidate's part in a trial."""

    backend: str
    precision: str
    conv: str
    seconds: tuple[float, ...] = ()  # per timed step, one per round it took part in
    status: str = "ok"  # "ok", "dropped" (slower than DROP_AFTER_FIRST x the best), "skipped" (did not build,
    # or did not keep the look), "failed"
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} {self.conv}"

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.inf


@dataclass(frozen=True)
class Choice:
    """The settings with every `auto` made concrete, and one line saying why."""

    settings: Settings
    why: str
    trials: tuple[Trial, ...] = ()
    measured: bool = False  # by a trial (now or cached), not by rule
    cached: bool = False  # the trial was read from the record, not run now
    key: dict = field(default_factory=dict)
    kept: bool = False  # the trial's pick is in the record (read from it, or written to it now)


Measure = Callable[[Settings, capability.Placement, list[tuple[str, str, str]], int], list[Trial]]


def tuning_enabled() -> bool:
    return os.environ.get("STYLEENGINE_TUNE", "on").lower() not in ("off", "0", "no", "rules")


def size_class(size: int) -> int:
    """The SIZE_CLASSES entry nearest `size` on a log scale."""
    return min(SIZE_CLASSES, key=lambda c: abs(math.log2(size / c)))


def trial_side(size: int, where: str) -> int:
    return min(size_class(size), TRIAL_SIDE[where])


def record_path() -> Path:
    from styleengine.export.cache import cache_root

    return cache_root() / RECORD_NAME


_memo: dict[Settings, Choice] = {}  # one resolution per settings a process: run, stylise and batch ask alike


def choose(settings: Settings, height: int | None = None, width: int | None = None, *, refresh: bool = False,
           measure: Measure | None = None, machine: capability.Machine | None = None,
           tune: bool | None = None) -> Choice:
    """What `auto` resolves to for these settings here (height, width: unused, the size class comes from
    settings.size). refresh: measure again even if a record exists. measure, machine, tune: stand-ins for
    the trial, the probe and STYLEENGINE_TUNE (tests, --dry-run)."""
    plain = measure is None and machine is None and tune is None
    if not refresh and plain and settings in _memo:
        return _memo[settings]
    choice = _choose(settings, refresh=refresh, measure=measure or measure_candidates, machine=machine or probe(),
                     tune=tuning_enabled() if tune is None else tune)
    if plain:
        _memo[settings] = choice
    log.info("auto: %s", choice.why)
    return choice


def _choose(settings: Settings, *, refresh: bool, measure: Measure, machine: capability.Machine, tune: bool
            ) -> Choice:
    where = capability.place(settings.backend, settings.device, settings.provider, machine)
    backend = settings.backend
    if backend != "auto":
        capability.check(backend, where.place, settings.precision, settings.conv, machine)
    concrete = dataclasses.replace(settings, device=where.device, provider=where.provider)
    options = capability.candidates(backend, where.place, settings.precision, settings.conv, machine)
    if backend == "auto":  # a backend whose provider is missing here is no candidate
        options = [o for o in options if o[0] != "ort" or where.provider in machine.ort_providers]
    if not options:
        reasons = [capability.refusal(b, where.place, settings.precision, settings.conv, machine) or
                   f"ONNX Runtime's {where.provider} provider is not available here" for b in capability.AUTO_BACKENDS]
        raise ConfigError(capability.no_backend(settings.precision, settings.conv, reasons))
    if len(options) == 1 or not tune:
        b, p, c = options[0]
        if backend == "auto" and any(o[0] == "torch" for o in options):
            b = "torch"  # by rule: the reference backend, no export needed
            p, c = capability.rule(b, where.place, settings.precision, settings.conv, machine)
        reason = "the only option" if len(options) == 1 else "by rule (STYLEENGINE_TUNE=off)"
        return Choice(_apply(concrete, b, p, c, where), f"{b} {p} {c} on the {where.place}: {reason}")
    key = _key(settings, where)
    if not refresh:
        cached = _read(key)
        if cached is not None:
            trials, pick = cached
            return Choice(_apply(concrete, *pick, where), _why(pick, trials, where, cached=True), trials, True, True,
                          key, True)
    started = time.perf_counter()
    trials = tuple(measure(settings, where, options, trial_side(settings.size, where.place)))
    pick = pick_fastest(trials)
    log.info("auto: trial of %d candidates took %.1f s", len(options), time.perf_counter() - started)
    kept = _write(key, trials, pick)
    return Choice(_apply(concrete, *pick, where), _why(pick, trials, where, cached=False), trials, True, False, key,
                  kept)


def _apply(settings: Settings, backend: str, precision: str, conv: str, where: capability.Placement) -> Settings:
    provider = where.provider if backend != "torch" else where.place
    return dataclasses.replace(settings, backend=backend, precision=precision, conv=conv, device=where.device,
                               provider=provider)


def pick_fastest(trials: tuple[Trial, ...] | list[Trial]) -> tuple[str, str, str]:
    """The fastest candidate that ran and kept the look; fp32 unless a reduced precision beats the fastest fp32
    one by more than FP32_MARGIN. ConfigError naming each candidate's fate when none ran."""
    ok = [t for t in trials if t.status in ("ok", "dropped") and t.seconds]
    if not ok:
        raise ConfigError("no candidate for auto ran here: " + "; ".join(f"{t.label}: {t.note or t.status}"
                                                                         for t in trials))
    best = min(ok, key=lambda t: t.median)
    fp32 = [t for t in ok if t.precision == "fp32"]
    if best.precision != "fp32" and fp32:
        best32 = min(fp32, key=lambda t: t.median)
        if best.median > best32.median * (1 - FP32_MARGIN):
            best = best32
    return best.backend, best.precision, best.conv


def _why(pick: tuple[str, str, str], trials: tuple[Trial, ...], where: capability.Placement, *, cached: bool) -> str:
    chosen = next(t for t in trials if (t.backend, t.precision, t.conv) == pick)
    others = [t for t in trials if t is not chosen]
    parts = [f"{t.label} {_ratio(t, chosen)}" for t in others]
    source = "measured earlier here" if cached else "measured now"
    provider = f" ({where.provider} provider)" if pick[0] != "torch" and where.place != "cpu" else ""
    text = (f"{chosen.label} on the {where.place}{provider}: "
            f"fastest valid, {fmt_time(chosen.median)}/step ({source}")
    return text + (f"; {', '.join(parts)})" if parts else ")")


def _ratio(trial: Trial, chosen: Trial) -> str:
    if trial.status in ("skipped", "failed"):
        return f"{trial.status}: {trial.note}" if trial.note else trial.status
    return f"{trial.median / chosen.median:.2f}x"


# --- the record ---

def _key(settings: Settings, where: capability.Placement) -> dict:
    """What a measured choice depends on: the machine, the model and what the user left open."""
    return {"version": TUNE_VERSION, "machine": fingerprint(), "model": settings.model, "pooling": settings.pooling,
            "weights": _weights_kind(settings.weights), "trial_side": trial_side(settings.size, where.place),
            "place": where.place, "provider": where.provider, "backend": settings.backend,
            "precision": settings.precision, "conv": settings.conv,
            "layers": [list(settings.content_layers), list(settings.style_layers)]}


def _weights_kind(weights: str) -> str:
    """Speed does not depend on the weights' values, the look might: a file is named by its content's hash."""
    if weights in ("imagenet", "random"):
        return weights
    from styleengine.model.weights import file_sha256

    try:
        return file_sha256(Path(weights).expanduser())
    except OSError:
        return weights


def _key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _load_record() -> dict:
    path = record_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:
        log.warning("tuning record %s is unreadable (%s): measuring again", path, first_line(e))
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        log.warning("tuning record %s has an unknown shape: measuring again", path)
        return {}
    return data["entries"]


def _read(key: dict) -> tuple[tuple[Trial, ...], tuple[str, str, str]] | None:
    entry = _load_record().get(_key_id(key))
    try:
        if entry is None or entry["key"] != key:
            return None
        trials = tuple(Trial(t["backend"], t["precision"], t["conv"], tuple(float(s) for s in t["seconds"]),
                             str(t["status"]), str(t.get("note", ""))) for t in entry["trials"])
        pick = tuple(entry["pick"])
        if len(pick) != 3 or not any((t.backend, t.precision, t.conv) == pick for t in trials):
            raise ValueError("its pick is not one of its candidates")
        if pick != pick_fastest(trials):
            raise ValueError("its pick is not the fastest of its own figures")
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        log.warning("tuning record entry for %s px is damaged (%s): measuring again", key.get("trial_side"), e)
        return None
    return trials, pick


def _write(key: dict, trials: tuple[Trial, ...], pick: tuple[str, str, str]) -> bool:
    from styleengine.export.cache import atomic_write, make_folder

    path = record_path()
    entries = _load_record()
    entries[_key_id(key)] = {"key": key, "pick": list(pick), "trials": [dataclasses.asdict(t) for t in trials],
                             "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    try:
        make_folder(path.parent)
        atomic_write(path, json.dumps({"version": TUNE_VERSION, "entries": entries}, indent=1).encode())
    except (OSError, UserError) as e:  # a choice not kept is measured again next time; the run goes on
        log.warning("could not keep the tuning record in %s: %s", path, e)
        return False
    return True


# --- the trial ---

def trial_images(side: int, seed: int = 0):
    """A content-like and a style-like picture (1, 3, H, W) at a 3:4 shape of long side `side`: smooth
    shapes and edges, and a busy texture; deterministic."""
    import torch

    height, width = max(32, round(side * 3 / 4)), side
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    content = torch.stack([xx, yy, ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).float()])
    content = (0.8 * content + 0.2 * torch.rand(3, height, width, generator=gen)).unsqueeze(0)
    stripes = torch.sin(40 * xx + 25 * yy) * 0.5 + 0.5
    style = torch.stack([stripes, stripes.T.contiguous().T * 0.5 + 0.25, 1 - stripes])
    style = (0.7 * style + 0.3 * torch.rand(3, height, width, generator=gen)).unsqueeze(0)
    return content.clamp(0, 1), style.clamp(0, 1)


def measure_candidates(settings: Settings, where: capability.Placement, options: list[tuple[str, str, str]],
                       side: int) -> list[Trial]:
    """Time each candidate's step on a side-px picture, ROUNDS interleaved rounds after a warm-up; a
    reduced-precision candidate must then keep the look (look_check)."""
    import torch

    from styleengine.engine.steps import Step, make_targets
    from styleengine.engine.stylise import build_step
    from styleengine.errors import ExportValidationError
    from styleengine.model.weights import load_weights

    weights = load_weights(settings.model, settings.weights, seed=settings.seed, convention=settings.convention,
                           strict=not settings.non_strict)
    loss = settings.loss_config()
    content, style = trial_images(side)
    height, width = content.shape[-2:]
    steps: dict[tuple[str, str, str], Step] = {}
    trials: dict[tuple[str, str, str], Trial] = {}
    warmups: dict[tuple[str, str, str], float] = {}
    targets = None
    cuda = where.place == "cuda"

    def timed(step, image) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = step(image)
        float(result.losses[0])  # waits for the device
        return time.perf_counter() - t0

    try:
        for option in options:
            b, p, c = option
            candidate = dataclasses.replace(settings, backend=b, precision=p, conv=c, device=where.device,
                                            provider=where.provider if b != "torch" else where.place)
            try:
                step = build_step(candidate, weights, loss)
                # one set of targets for every candidate: the time does not depend on their values (each
                # step's own targets cost two forward passes per candidate)
                targets = targets or make_targets(step, loss, content, [style], None, output_positions=height * width)
                step.set_targets(targets)
                for _ in range(2 if cuda else 1):  # warm-up: kernel choice, arenas, lazy sessions
                    warm = timed(step, content)
            except (ExportValidationError, UserError) as e:
                first = first_line(e)
                trials[option] = Trial(b, p, c, status="skipped", note=first)
                log.info("auto: %s %s %s skipped: %s", b, p, c, first)
                continue
            steps[option] = step
            trials[option] = Trial(b, p, c)
            warmups[option] = warm
        if warmups:
            best_warm = min(warmups.values())
            for option, warm in warmups.items():
                if warm > DROP_AFTER_WARMUP * best_warm:
                    trials[option] = dataclasses.replace(trials[option], seconds=(warm,), status="dropped",
                                                         note=f"warm-up over {DROP_AFTER_WARMUP}x the fastest")
        for round_ in range(ROUNDS):
            live = [o for o in steps if trials[o].status == "ok"]
            for option in live:
                t = trials[option]
                trials[option] = dataclasses.replace(t, seconds=t.seconds + (timed(steps[option], content),))
            if round_ == 0 and live:
                best = min(trials[o].median for o in live)
                for option in live:
                    if trials[option].median > DROP_AFTER_FIRST * best:
                        trials[option] = dataclasses.replace(trials[option], status="dropped",
                                                             note=f"over {DROP_AFTER_FIRST}x the fastest")
        for option in [o for o in steps if trials[o].status == "ok" and o[1] != "fp32"]:
            fastest32 = min((t.median for t in trials.values() if t.precision == "fp32" and t.seconds), default=None)
            if fastest32 is not None and trials[option].median > fastest32 * (1 - FP32_MARGIN):
                continue  # not chosen anyway: its look need not be checked
            reference = next((o for o in steps if o[1] == "fp32" and o[0] == option[0]), None) or \
                next((o for o in steps if o[1] == "fp32"), None)
            why = look_check(steps[option], steps[reference], option[1], settings, loss) if reference \
                else "no fp32 step to compare with"
            if why:
                trials[option] = dataclasses.replace(trials[option], status="skipped", note=why)
                log.info("auto: %s %s %s skipped: %s", *option, why)
    finally:
        for step in steps.values():
            step.close()
    return list(trials.values())


def look_check(candidate, reference, precision: str, settings: Settings, loss) -> str | None:
    """None if the candidate step keeps the look of the fp32 reference: its loss and gradient agree within
    the graph validation's tolerance for its precision, and LOOK_ITERS L-BFGS iterations from the same start
    end within LOOK_TOLERANCE of fp32's style and content distances; else what differed."""
    import torch

    from styleengine.engine.loop import optimise
    from styleengine.engine.quality import distances
    from styleengine.engine.steps import make_targets
    from styleengine.engine.validate import TOLERANCES

    content, style = trial_images(LOOK_SIDE, seed=1)
    height, width = content.shape[-2:]
    loss_tol, grad_tol = TOLERANCES.get(precision, TOLERANCES["bf16"])
    ends = []
    for step in (reference, candidate):
        targets = make_targets(step, loss, content, [style], None, output_positions=height * width)
        step.set_targets(targets)
        first = step(content)
        ends.append((first.losses.float().cpu(), first.grad.float().cpu(), targets, step))
    (ref_losses, ref_grad, *_), (losses, grad, *_) = ends
    loss_rel = float(abs(losses[0] - ref_losses[0]) / abs(ref_losses[0]).clamp_min(1e-30))
    grad_rel = float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30))
    if not (loss_rel <= loss_tol and grad_rel <= grad_tol):
        return f"step differs from fp32: loss rel {loss_rel:.1e} (tol {loss_tol:.0e}), grad rel L2 {grad_rel:.1e}"
    got = []
    ref_targets = ends[0][2]
    for _, _, _, step in ends:
        result = optimise(step, content.clone(), iterations=LOOK_ITERS, max_step=settings.lbfgs_max_step or None)
        got.append(distances(reference, result.image.to(torch.float32), ref_targets, loss))
    ref, cand = got
    for name in ("style", "content"):
        a, b = getattr(ref, name), getattr(cand, name)
        if a is not None and math.isfinite(a) and a > 0 and abs(b - a) / a > LOOK_TOLERANCE:  # None: no such layers
            return f"{name} distance {b:.3f} vs fp32's {a:.3f} after {LOOK_ITERS} iterations"
    return None
