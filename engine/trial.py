"""auto's trial: time each candidate step on a synthetic picture of the size class, within a budget.

engine/autotune.py decides what is a candidate and keeps the pick; this module measures. A candidate is
built, warmed up with one step, then timed at the trial's size in interleaved rounds (A B C A B C):
a drifting machine shifts every candidate alike. The trial costs about TRIAL_SHARE of a default run:
slow candidates leave after round one, one that trails the leader in every round leaves after that,
no round starts that would end past the budget (the best so far is the pick), and a graph candidate
whose export is not cached is exported only when the export fits. A reduced precision that would be
picked must keep the look (look_check).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import cast

from styleengine.engine import capability
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError, UserError, first_line

log = logging.getLogger(__name__)

ROUNDS = 3  # interleaved rounds at most
DROP_AFTER_FIRST = 1.4  # a candidate this much slower than the leader after round one is not timed again
# after round two, one slower than the leader by this much in every round so far is not timed again: on a
# 2-core EPYC the steps of one candidate taken in one trial varied by up to 25% under load, the ratio of two
# candidates timed side by side far less
TRAILS_BY = 0.05
# a reduced precision must beat fp32 by more than this to be chosen: fp32 is exact, and on a 2-core EPYC a trial's
# 9% lead for bf16 at 384x512 was a 6% loss at 512x512 in the interleaved bench
FP32_MARGIN = 0.10
# a candidate whose warm-up step (at the trial's size) took this much longer than the fastest warm-up is not timed:
# the first step at a size is no measure (on a 2-core EPYC, after a warm-up on a 96x128 picture, the first 384x512
# step took 1.3-1.9x the later ones, ORT's the most: benchmarks/results/trial-warmup-cpu-amd-epyc-avx512-2t.json)
DROP_AFTER_WARMUP = 2.0
# the trial's budget: this share of a default run (DEFAULT_STEPS steps of the fastest candidate at the trial's size)
TRIAL_SHARE = 0.025
DEFAULT_STEPS = Settings().iterations
ROUND_FLOOR_S = 0.5  # a round this short is taken whatever the budget (a GPU's steps take milliseconds)
# an export and validation of a step graph not yet in the cache cost about 4 steps of a 384x512 picture on a
# 2-core EPYC (3.5 s with VGG19 quiet, 16-20 s with VGG16 under a load of 12): fixed work, not the picture's
EXPORT_STEPS, EXPORT_PIXELS = 4.0, 384 * 512
LOOK_TOLERANCE = 0.05  # a reduced precision's style and content distances within 5% of fp32's after LOOK_ITERS
LOOK_ITERS = 8
# px, long side of the look check's short run. At 96 px it cost a third as much but failed bf16 with the
# shared VGG16 (style distance 0.613 vs fp32's 0.874 after 8 iterations: eight steps on a picture that small
# diverge whatever the precision), which passes at 160 px; the race holds its cost to its share instead
LOOK_SIDE = 160


@dataclass(frozen=True)
class Trial:
    """One candidate's part in a trial."""

    backend: str
    precision: str
    conv: str
    seconds: tuple[float, ...] = ()  # per timed step, one per round it took part in
    status: str = "ok"  # "ok", "dropped" (slower than the leader), "skipped" (did not build, not exported within
    # the budget, or did not keep the look), "failed"
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} {self.conv}"

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.inf


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


def handicap(trial: Trial, trials: list[Trial]) -> float:
    """What a candidate's time counts for against the others: a reduced precision must beat fp32 by
    FP32_MARGIN (pick_fastest), so where an fp32 candidate runs its times count 1 / (1 - FP32_MARGIN)."""
    reduced = trial.precision != "fp32" and any(t.precision == "fp32" and t.seconds for t in trials)
    return 1 / (1 - FP32_MARGIN) if reduced else 1.0


def prune(trials: list[Trial], round_: int) -> list[Trial]:
    """The sequential rule after round `round_` (1-based) of the live ("ok") candidates, on handicapped times:
    after round one, one over DROP_AFTER_FIRST x the leader is dropped; after a later round, one that trailed
    the leader by over TRAILS_BY in every round both ran."""
    live = [t for t in trials if t.status == "ok" and t.seconds]
    if len(live) < 2:
        return trials
    scored = {id(t): [s * handicap(t, trials) for s in t.seconds] for t in live}
    leader = min(live, key=lambda t: statistics.median(scored[id(t)]))
    lead = scored[id(leader)]
    out = []
    for t in trials:
        mine = scored.get(id(t))
        if mine is not None and t is not leader:
            if round_ == 1 and mine[0] > DROP_AFTER_FIRST * lead[0]:
                t = dataclasses.replace(t, status="dropped", note=f"over {DROP_AFTER_FIRST}x the fastest")
            elif round_ > 1 and all(a > (1 + TRAILS_BY) * b for a, b in zip(mine[-round_:], lead[-round_:])):
                t = dataclasses.replace(t, status="dropped",
                                        note=f"behind the fastest by over {TRAILS_BY:.0%} in every round")
        out.append(t)
    return out


def next_round(trials: list[Trial], spent: float) -> bool:
    """Whether another round is taken: two or more candidates live, and the round (each live one's median)
    ends within the budget, TRIAL_SHARE x DEFAULT_STEPS steps of the leader, counted from the trial's start
    (`spent` seconds ago), or is shorter than ROUND_FLOOR_S, or a reduced precision would be picked on the
    strength of one round (its look check, 2 x LOOK_ITERS L-BFGS iterations, cost more than a round)."""
    live = [t for t in trials if t.status == "ok" and t.seconds]
    if len(live) < 2:
        return False
    pick = pick_fastest(live)
    if pick[1] != "fp32" and min(len(t.seconds) for t in live) < 2:
        return True  # a reduced precision about to be picked is confirmed first: its look check costs more
    cost = sum(t.median for t in live)
    return cost < ROUND_FLOOR_S or spent + cost <= TRIAL_SHARE * DEFAULT_STEPS * min(t.median for t in live)


def exports_that_fit(options: list[tuple[str, str, str]], uncached: set[tuple[str, str, str]], pixels: int
                     ) -> set[tuple[str, str, str]]:
    """The uncached graph candidates (in the candidates' order) whose export fits the trial's budget of
    TRIAL_SHARE x DEFAULT_STEPS steps: two steps per candidate (warm-up, round one), one for the targets, and
    EXPORT_STEPS (at EXPORT_PIXELS, fewer steps of a larger picture) per export."""
    budget = TRIAL_SHARE * DEFAULT_STEPS
    export = EXPORT_STEPS * EXPORT_PIXELS / pixels
    planned = 2.0 * (len(options) - len(uncached)) + 1
    fit = set()
    for option in options:
        if option in uncached and planned + 2 + export <= budget:
            fit.add(option)
            planned += 2 + export
    if options and not fit and uncached >= set(options):  # `--backend ort` on a fresh cache: nothing else could
        fit.add(options[0])  # run, so the rule's pick is exported whatever the budget (a run of it would export it)
    return fit


def trial_pixels(side: int) -> int:
    """Pixels of trial_images(side)."""
    return max(32, round(side * 3 / 4)) * side


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


def uncached_graphs(settings: Settings, weights, loss, options, where: capability.Placement):
    """The graph candidates whose export is not in the cache yet (on the CPU: a GPU's step is too short
    for any export to fit a share of a run, and its graphs are the candidates the issue is about)."""
    if where.place != "cpu":
        return set()
    from styleengine.engine.ort_step import graph_spec
    from styleengine.export.cache import export_folder
    from styleengine.model.vgg import Pooling

    pooling = cast(Pooling, settings.pooling)  # settings are checked: avg or max
    return {o for o in options if o[0] == "ort" and
            not export_folder(weights, graph_spec(weights, loss, pooling, o[1], o[2])).is_dir()}


def measure_candidates(settings: Settings, where: capability.Placement, options: list[tuple[str, str, str]],
                       side: int, export_all: bool = False) -> list[Trial]:
    """Time each candidate's step on a side-px picture in interleaved rounds after a warm-up step, within
    the trial's budget (module doc); a reduced-precision candidate that would be picked must then keep the
    look (look_check). export_all: every graph not cached yet is exported first, whatever the budget (asked
    for: `styleengine tune`)."""
    import torch

    from styleengine.engine.steps import Step, make_targets
    from styleengine.engine.stylise import build_step, load_run_weights
    from styleengine.errors import ExportValidationError

    started = time.perf_counter()
    weights = load_run_weights(settings)  # with the convention the run feeds them
    loss = settings.loss_config()
    content, style = trial_images(side)
    pixels = content.shape[-2] * content.shape[-1]
    uncached = uncached_graphs(settings, weights, loss, options, where)
    exported = set(uncached) if export_all else exports_that_fit(options, uncached, pixels)
    steps: dict[tuple[str, str, str], Step] = {}
    trials: dict[tuple[str, str, str], Trial] = {}
    targets = None
    warmups: dict[tuple[str, str, str], float] = {}
    cuda = where.place == "cuda"

    def timed(step, image) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = step(image)
        float(result.losses[0])  # waits for the device
        return time.perf_counter() - t0

    from styleengine.export.cache import CacheWriteError

    refused: str | None = None  # why the cache took no export: the later ones would fail the same way
    try:
        for option in options:
            b, p, c = option
            if option in uncached and (option not in exported or refused):
                note = (f"not exported: {refused}" if refused else "not exported: over the trial's budget "
                        f"(`styleengine tune` exports it, as does a run that names it: --backend {b} --precision {p} "
                        f"--conv {c})")
                trials[option] = Trial(b, p, c, status="skipped", note=note)
                log.info("auto: %s %s %s skipped: %s", b, p, c, trials[option].note)
                continue
            candidate = dataclasses.replace(settings, backend=b, precision=p, conv=c, device=where.device,
                                            provider=where.provider if b != "torch" else where.place)
            try:
                step = build_step(candidate, weights, loss)
                # one set of targets for every candidate: the time does not depend on their values (each
                # step's own targets cost two forward passes per candidate)
                targets = targets or make_targets(step, loss, content, [style], None, output_positions=pixels)
                step.set_targets(targets)
                for _ in range(2 if cuda else 1):  # warm-up: kernel choice, arenas, lazy sessions
                    warm = timed(step, content)
            except (ExportValidationError, UserError) as e:
                first = first_line(e)
                if isinstance(e, CacheWriteError):
                    refused = "the cache cannot take an export (said above)"
                trials[option] = Trial(b, p, c, status="skipped", note=first)
                log.info("auto: %s %s %s skipped: %s", b, p, c, first)
                continue
            steps[option] = step
            trials[option] = Trial(b, p, c)
            warmups[option] = warm
        best_warm = min(warmups.values(), default=0.0)
        for option, warm in warmups.items():
            if warm > DROP_AFTER_WARMUP * best_warm:
                trials[option] = dataclasses.replace(trials[option], seconds=(warm,), status="dropped",
                                                     note=f"warm-up over {DROP_AFTER_WARMUP}x the fastest")
        for round_ in range(1, ROUNDS + 1):
            if round_ > 1 and not next_round(list(trials.values()), time.perf_counter() - started):
                break  # the best so far is the pick
            for option in [o for o in steps if trials[o].status == "ok"]:
                t = trials[option]
                trials[option] = dataclasses.replace(t, seconds=t.seconds + (timed(steps[option], content),))
            trials = dict(zip(trials, prune(list(trials.values()), round_)))
        _check_looks(trials, steps, settings, loss)
    finally:
        for step in steps.values():
            step.close()
    return list(trials.values())


def _check_looks(trials: dict, steps: dict, settings: Settings, loss) -> None:
    """The look check for the reduced precisions pick_fastest would choose, fastest first, until one holds."""
    while any(t.status in ("ok", "dropped") and t.seconds for t in trials.values()):
        pick = pick_fastest(list(trials.values()))
        if pick[1] == "fp32" or pick not in steps:
            return
        reference = next((o for o in steps if o[1] == "fp32" and o[0] == pick[0]), None) or \
            next((o for o in steps if o[1] == "fp32"), None)
        why = look_check(steps[pick], steps[reference], pick[1], settings, loss) if reference \
            else "no fp32 step to compare with"
        if why is None:
            return
        trials[pick] = dataclasses.replace(trials[pick], status="skipped", note=why)
        log.info("auto: %s %s %s skipped: %s", *pick, why)


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
        result = optimise(step, content.clone(), iterations=LOOK_ITERS,
                          max_step=settings.lbfgs_max_step or None).finished()
        got.append(distances(reference, result.image.to(torch.float32), ref_targets, loss))
    ref, cand = got
    for name in ("style", "content"):
        a, b = getattr(ref, name), getattr(cand, name)
        if a is not None and math.isfinite(a) and a > 0 and abs(b - a) / a > LOOK_TOLERANCE:  # None: no such layers
            return f"{name} distance {b:.3f} vs fp32's {a:.3f} after {LOOK_ITERS} iterations"
    return None
