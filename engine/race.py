"""auto's race: a run's first steps at each new size class taken in turn by the candidates, the fastest kept.

A default run is coarse to fine, so it spends about as long at 128 px as at
its full size, and the fastest candidate differs between sizes. A trial
before the run (engine/trial.py) would time each candidate on a picture of
its own, work the run then does again. Here the candidates' timed steps ARE
the run's steps: each is a validated implementation of the same loss and
gradient, so L-BFGS takes the evaluation from whichever candidate's turn it
is. What the race costs is what the slower candidates lose in their turns
(one warm-up and at most ROUNDS timed steps each, the slow ones dropped
early, trial.prune) and building their steps; a reduced precision must still
keep the look (trial.look_check) before it wins. Each size class's pick is
kept in the tuning record (engine/autotune), so later runs race no more.

What racing costs is held to RACE_SHARE of the time of the runs that raced
here (a per-settings account in the record), and never more than RACE_CAP of
one run: a race that does not fit one short run is carried over, the next run
racing only the candidates still in it, and a look check that does not fit
waits for a run that can pay for it. Look verdicts are kept in the account.

Candidate steps are built only for a scale that races (and then kept for
the run); a scale whose class is in the record uses its pick. Tiled scales
never race (memory is short there): they run the step in use.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from styleengine.engine.autotune import (MEASURED_AT, Partial, Race, _apply, _key, _read, _read_partial, _why, _write,
                                         add_to_account, read_account, trial_side)
from styleengine.engine.losses import LossConfig, Targets
from styleengine.engine.settings import Settings
from styleengine.engine.steps import Step, StepBase, StepResult
from styleengine.engine.trial import (DROP_AFTER_WARMUP, LOOK_ITERS, LOOK_SIDE, ROUNDS, Trial, look_check,
                                      pick_fastest, prune, trial_pixels)
from styleengine.errors import ConfigError, ExportValidationError, UserError, first_line

log = logging.getLogger(__name__)

Option = tuple[str, str, str]  # (backend, precision, conv)

# at a later size class of the same run, only the candidates within this of the fastest at the class measured
# before it race again: ratios this far apart did not flip between neighbouring classes on a 2-core EPYC (what
# did flip, ORT vs torch fp32 and bf16 vs Winograd, were 6-12% apart), and each slower turn is the run's time
PRIOR_WITHIN = 1.25
# what racing may cost: the other candidates' builds, their turns beyond the fastest's and the look checks, over
# the time of the runs that raced here (the account) and over one run's estimated time at most; a race cut short
# is carried over to the next run
RACE_SHARE = 0.03
RACE_CAP = 0.05  # the "never more than ~5% of a default run"
LOOK_OVER_BUDGET = "its look check does not fit this run's share for racing"
NO_REFERENCE = "no fp32 step to compare with"  # a verdict on this run's candidates, not on the precision
LOOK_STEPS = LOOK_ITERS + 3  # a look run's steps: targets (two passes), the step compared, the iterations


def _option(trial: Trial) -> Option:
    return trial.backend, trial.precision, trial.conv


def _carried(trial: Trial) -> Trial:
    """An earlier run's verdict on a candidate, kept out of this run's timings (another load, another scale)."""
    if trial.status == "skipped" or trial.note.startswith("an earlier run"):
        return trial
    return dataclasses.replace(trial, status="skipped", note=f"an earlier run: {trial.note or trial.status}")


def _ratios(trials: dict[Option, Trial]) -> dict[Option, float]:
    """Each timed candidate's median over the fastest's (skipped ones left out, but for one whose look check
    waits: its time counts)."""
    timed = {o: t.median for o, t in trials.items() if t.seconds and (
        t.status in ("ok", "dropped") or t.note.startswith(LOOK_OVER_BUDGET))}
    best = min(timed.values(), default=math.inf)
    return {o: m / best for o, m in timed.items()}


@dataclass(frozen=True)
class Decision:
    """One size class's pick in this run: raced now, or read from the record."""

    side: int  # the class's trial side (autotune.trial_side)
    pick: Option
    why: str
    raced: bool


class RaceStep(StepBase):
    """The Step a run with open `auto` choices uses (module doc). stylise calls begin_scale(height, width)
    before each scale's targets; the loop sees one step."""

    def __init__(self, race: Race, build: Callable[[Settings], Step], loss: LossConfig,
                 scales: list[tuple[int, int, int]], uncached: Callable[[Option], bool] = lambda option: False):
        """scales: the run's (long side, pixels, iterations) per scale, coarse to fine."""
        self._race = race
        self._scales = scales
        # per size class, the run's scale (long side) nearest it: the one that races for the class
        self._racing_side: dict[int, int] = {}
        for side, _, _ in scales:
            cls = trial_side(side, race.where.place)
            best = self._racing_side.get(cls)
            if best is None or abs(math.log(side / cls)) <= abs(math.log(best / cls)):
                self._racing_side[cls] = side
        self._build = build  # concrete settings -> a built step
        self._uncached = uncached  # a graph candidate whose export is not cached: not raced (an export costs
        # more than the race saves)
        self.loss = loss
        self._steps: dict[Option, Step] = {}
        self._skipped: dict[Option, str] = {}  # candidates that did not build, with why
        self._current: Option = race.first
        self._targets: Targets | list[Targets] | None = None
        self._trials: dict[Option, Trial] = {}
        self._queue: list[Option] = []  # turns left in this round
        self._round = 0  # 0: warm-ups, then timed rounds
        self._warm: dict[Option, float] = {}  # each one's first step at this size
        self._racing = False
        self._side = 0  # the class being raced
        self._settled: set[int] = set()  # classes read from the record or raced in this run
        # the last class measured (raced or read) in this run and its trials: a later class races only the
        # candidates that came close there
        self._prior: tuple[int, dict[Option, Trial]] | None = None
        self._prior_kept = False  # the prior is in the record: what follows from it may be kept too
        self._looks: dict[str, str | None] = {}  # precision -> why it does not keep the look (None: it does)
        # what racing cost this run so far, in seconds: the other candidates' builds, their turns beyond the
        # fastest's, the look check; held to RACE_SHARE of the run (_budget)
        self._spent = 0.0
        self._turns: list[float] = []  # this race's timed and warm-up turns, seconds each
        self._pixels = 0  # this scale's
        self._race_pixels = 0  # the scale's the last race timed its candidates at
        self._cut = False  # this race was cut short by the budget: its pick is not kept
        self.decisions: list[Decision] = []
        # the runs before this one: what they may still spend on racing, and the look verdicts they reached
        self._began = time.perf_counter()
        self._ending = False
        account = read_account(self._key(scales[-1][0]))
        self._banked = max(0.0, RACE_SHARE * account.run_s - account.race_s)
        self._looks.update(account.looks)

    # --- what stylise calls ---

    @property
    def current(self) -> Step:
        """The step in use (a tiled scale wraps this one), built on first need."""
        step = self._step_for(self._current)
        assert step is not None  # the step in use always built: the first is built or raises
        # what the loop reads of the step, as of the one in use (no CUDA graph while candidates take turns)
        self.device, self.capturable = step.device, step.capturable and not self._racing
        return step

    def begin_scale(self, height: int, width: int, *, tiled: bool = False) -> None:
        """A new scale: settle the one before, then take this size class's recorded pick, or race here if
        this scale is the run's nearest to the class's size, or else keep the step in use."""
        self._settle()
        self._targets = None  # the last scale's: this scale sets its own
        long_side = max(height, width)
        self._pixels = height * width
        side = trial_side(long_side, self._race.where.place)
        if side not in self._settled:
            recorded = self._recorded(side)
            if recorded is not None:
                trials, pick = recorded
                self._prior = (side, {(t.backend, t.precision, t.conv): t for t in trials})
                self._prior_kept = True
                self._settled.add(side)
                self._use(pick)
                self.decisions.append(Decision(side, pick, _why(pick, trials, self._race.where, cached=True),
                                               False))
            elif not tiled and self._racing_side.get(side) == long_side:
                self._settled.add(side)  # raced once a run, complete or not
                self._start(side)
        self.current  # noqa: B018 (built now: the scale's targets come from it)

    def _start(self, side: int) -> None:
        partial = _read_partial(self._key(side), self._race.options)
        carried: dict[Option, Trial] = {}
        if partial is not None:  # an earlier run's race, cut short: its verdicts stand, the rest race on
            if not partial.racing:
                self._finish_looks(side, partial)
                return
            carried = {_option(t): _carried(t) for t in partial.trials if _option(t) not in partial.racing}
        if partial is not None and self._waits(side, partial, [o for o in partial.racing if o not in self._skipped]):
            return  # decided before building the others: a build is racing's cost too
        live = [o for o in self._race.options if o not in carried and self._step_for(o) is not None]
        if self._prior is not None:  # a class this run measured already: only the close ones race again
            source, trials = self._prior
            ratios = _ratios(trials)
            close = [o for o in live if ratios.get(o, math.inf) <= PRIOR_WITHIN]
            if any(trials[o].status == "skipped" for o in close):  # a look check waits: the fastest sure one too
                sure = [o for o in live if o in ratios and trials[o].status != "skipped"]
                fallback = min(sure, key=ratios.__getitem__, default=None)
                close += [fallback] if fallback is not None and fallback not in close else []
            live = close
            if len(live) == 1:
                self._inherit(side, source, trials, live[0])
                return
        if len(live) < (1 if partial is not None else 2):  # the last one of a carried race is timed alone
            return
        self._side = side
        self._trials = {o: Trial(*o) for o in self._race.options}
        self._trials.update(carried)
        for option, why in self._skipped.items():
            self._trials[option] = Trial(*option, status="skipped", note=why)
        if self._prior is not None:
            for option in self._race.options:
                before = self._prior[1].get(option)
                if option not in live and option not in self._skipped and option not in carried \
                        and before is not None:
                    # skipped, not dropped: its figure is another scale's, which pick_fastest must not compare
                    self._trials[option] = before if option not in _ratios(self._prior[1]) else dataclasses.replace(
                        before, status="skipped", note=f"over {PRIOR_WITHIN}x the fastest at {self._prior[0]} px")
        self._queue, self._round, self._racing, self._warm = live, 0, True, {}
        self._turns, self._cut, self._race_pixels = [], False, self._pixels
        self.capturable = False
        log.info("auto: racing %s in the first steps at %d px%s", ", ".join(" ".join(o) for o in live), side,
                 " (carried over from an earlier run)" if partial is not None else "")

    def _waits(self, side: int, partial: Partial, live: list[Option]) -> bool:
        """Whether a carried race waits for a later run: by its figures so far, racing on to the end (the
        warm-ups and ROUNDS timed rounds) would take this run past what it may spend. A race that cannot
        finish would spend without deciding; waiting banks this run's share for a run that can."""
        scale = self._pixels / partial.pixels
        figures = {_option(t): t.median * scale for t in partial.trials if _option(t) in live and t.seconds}
        if len(live) < 2 or len(figures) < len(live):
            return False
        best = min(figures.values())
        need = sum(figures.values()) - best + ROUNDS * sum(f - best for f in figures.values())
        allowed = self._budget(best, self._pixels)
        if self._wasted() + need <= allowed:
            return False
        pick = partial.pick if partial.pick in live else min(figures, key=figures.__getitem__)
        self._use(pick)
        ordered = tuple(partial.trials)
        self.decisions.append(Decision(side, pick, _why(pick, ordered, self._race.where, cached=True) + (
            f" (not kept yet: racing {', '.join(' '.join(o) for o in live)} to the end needs about {need:.1f} s, "
            f"this run may spend {max(0.0, allowed - self._wasted()):.1f} s; a later run goes on with it)"), True))
        log.info("auto: at %d px %s", side, self.decisions[-1].why)
        return True

    def _finish_looks(self, side: int, partial: Partial) -> None:
        """An earlier run timed every candidate here but could not pay for the pick's look check: settle with
        its figures now, checking the look if this run can."""
        self._side, self._race_pixels, self._turns, self._cut = side, partial.pixels, [], False
        self._trials = {_option(t): (dataclasses.replace(t, status="ok", note="") if
                                     t.note.startswith(LOOK_OVER_BUDGET) else t) for t in partial.trials}
        self._racing, self._queue, self._warm = True, [], {}
        self._settle(earlier=True)

    def _inherit(self, side: int, source: int, trials: dict[Option, Trial], pick: Option) -> None:
        """No other candidate came within PRIOR_WITHIN of `pick` at the `source` px class: `pick` here too,
        kept in the record with the figures it was chosen by."""
        ordered = tuple(dataclasses.replace(t, note=t.note or f"{MEASURED_AT} {source} px") for t in trials.values())
        if pick != pick_fastest(ordered):
            return  # the source's figures do not back this pick (its pick did not keep the look): race later
        kept = self._prior_kept and _write(self._key(side), ordered, pick)
        self._use(pick)
        self.decisions.append(Decision(side, pick, _why(pick, ordered, self._race.where, cached=False) +
                                       f" (from the race at {source} px: no other candidate within "
                                       f"{PRIOR_WITHIN}x there{'' if kept else '; not kept, as that race was not'})",
                                       True))

    # --- the Step ---

    @property
    def conv(self) -> str:
        return self.current.conv

    def _features(self, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        return self.current.features(image, names)

    def set_loss(self, loss: LossConfig) -> None:
        super().set_loss(loss)
        for step in self._steps.values():
            step.set_loss(loss)
        self._targets = None

    def _set_targets(self, targets: Targets | list[Targets]) -> None:
        self._targets = targets
        for option in self._live():
            self._steps[option].set_targets(targets)

    def _step(self, image: torch.Tensor) -> StepResult:
        if not self._racing:
            return self.current(image)
        option = self._queue.pop(0)
        t0 = time.perf_counter()
        result = self._steps[option](image)
        float(result.losses.reshape(-1)[0])  # waits for the device
        seconds = time.perf_counter() - t0
        self._turns.append(seconds)
        trial = self._trials[option]
        if self._round:  # round 0 is each one's first step at this size: kernel choice, arenas
            self._trials[option] = dataclasses.replace(trial, seconds=trial.seconds + (seconds,))
        else:
            self._warm[option] = seconds
        if not self._queue:
            self._end_round()
        return result

    def _trim(self) -> None:
        self._settle()
        for step in self._steps.values():
            step.trim()

    def _close(self) -> None:
        self._ending = True  # an interrupted race is carried over as it stands: no look check on the way out
        self._settle()
        for step in self._steps.values():
            step.close()
        self._steps.clear()
        looks = {p: why for p, why in self._looks.items() if why != NO_REFERENCE}
        add_to_account(self._key(self._scales[-1][0]), time.perf_counter() - self._began, self._wasted(), looks)

    # --- the race ---

    def _live(self) -> list[Option]:
        if not self._racing:
            return [self._current]
        return [o for o, t in self._trials.items() if t.status == "ok" and o in self._steps]

    def _end_round(self) -> None:
        trials = list(self._trials.values())
        if self._round == 0:
            warm = {o: self._warm[o] for o, t in self._trials.items() if t.status == "ok" and o in self._warm}
            best = min(warm.values())
            for option, seconds in warm.items():
                if seconds > DROP_AFTER_WARMUP * best:
                    self._trials[option] = dataclasses.replace(self._trials[option], status="dropped", seconds=(
                        seconds,), note=f"warm-up over {DROP_AFTER_WARMUP}x the fastest")
            if len(self._live()) < 2:  # the one left is the pick: its warm-up is its figure
                self._trials.update({o: dataclasses.replace(self._trials[o], seconds=(warm[o],))
                                     for o in self._live()})
        else:
            self._trials = dict(zip(self._trials, prune(trials, self._round)))
        self._round += 1
        live = self._live()
        if self._round > ROUNDS or len(live) < 2:
            self._settle()
            return
        best = self._best()
        coming = sum(self._estimate(o) - best for o in live)  # the next round's turns beyond the fastest's
        if self._wasted() + coming > self._budget():
            self._cut = True
            log.info("auto: the race at %d px stops: another round would take it past %.0f%% of the run (%.1f s "
                     "spent, %.1f s more, %.1f s allowed)", self._side, 100 * RACE_SHARE, self._wasted(), coming,
                     self._budget())
            self._settle()
        else:
            self._queue = live

    def cost(self) -> str:
        """What racing cost this run, for a person: '' when nothing raced."""
        if not any(d.raced for d in self.decisions):
            return ""
        return (f"racing cost about {self._spent:.1f} s beyond the fastest candidate's steps (builds, slower "
                f"turns, the look check), held to {RACE_SHARE:.0%} of the runs that raced here and "
                f"{RACE_CAP:.0%} of one")

    def _estimate(self, option: Option) -> float:
        """A candidate's seconds a step at this scale: its timed median, else its warm-up."""
        trial = self._trials[option]
        return trial.median if trial.seconds else self._warm.get(option, math.inf)

    def _best(self) -> float:
        """The fastest live or timed candidate's seconds a step at this scale."""
        return min((self._estimate(o) for o, t in self._trials.items() if t.status in ("ok", "dropped")
                    and (t.seconds or o in self._warm)), default=math.inf)

    def _wasted(self) -> float:
        """What racing cost this run so far: the closed races, builds and look checks, and this race's turns
        beyond what the fastest would have taken (one first step at a new size, slower than the rest, the run
        pays without a race too: the fastest warm-up's excess is not racing's)."""
        best = self._best()
        if not (self._turns and math.isfinite(best)):
            return self._spent
        extra = sum(self._turns) - best * len(self._turns) - max(0.0, min(self._warm.values(), default=best) - best)
        return self._spent + max(0.0, extra)

    def _budget(self, best: float | None = None, at: int | None = None) -> float:
        """What racing may cost this run in all: RACE_SHARE of its estimated time (its iterations at every scale
        at the fastest's time, by pixels) plus what earlier runs here left unspent, RACE_CAP of it at most.
        best: seconds a step at `at` pixels (default: the fastest timed at the last race's scale)."""
        best, at = (self._best(), self._race_pixels) if best is None else (best, at)
        if not (math.isfinite(best) and at):
            return math.inf
        run = best * sum(iterations * pixels / at for _, pixels, iterations in self._scales)
        return min(RACE_CAP * run, RACE_SHARE * run + self._banked)

    def _settle(self, earlier: bool = False) -> None:
        """End this scale's race with what it measured: the fastest that keeps the look, kept in the record
        when every candidate still in it was timed at least once."""
        if not self._racing:
            return
        self._racing, self._queue = False, []
        self.current  # noqa: B018 (capturable again)
        # one stopped before its timed turns: its warm-up is the figure it has (such a race is not kept)
        trials = {o: (t if t.status != "ok" or t.seconds else
                      dataclasses.replace(t, seconds=(self._warm[o],), note="its warm-up only") if o in self._warm
                      else dataclasses.replace(t, status="dropped", note="not timed before the scale ended"))
                  for o, t in self._trials.items()}
        timed = [t for t in trials.values() if t.seconds]
        if not timed:
            log.info("auto: the scale at %d px ended before the race: %s kept", self._side, " ".join(self._current))
            return
        timed_all = not self._cut and all(t.seconds or t.status == "skipped" for t in self._trials.values())
        complete = timed_all
        # what a later run races on when this one is carried over: every candidate still in it
        racing = [o for o, t in self._trials.items() if t.status == "ok"]
        self._spent, self._turns = self._wasted(), []
        while True:
            try:
                pick = pick_fastest(list(trials.values()))
            except ConfigError:
                return
            why = self._look(pick, trials[pick].median)
            if why is None:
                break
            if why.startswith(LOOK_OVER_BUDGET):  # not a verdict on the precision: a later run checks it
                complete = False
                racing += [] if pick in racing else [pick]
            trials[pick] = dataclasses.replace(trials[pick], status="skipped", note=why)
            log.info("auto: %s skipped: %s", " ".join(pick), why)
        self._use(pick, force=True)  # the look check's short run may have set its own targets
        ordered = tuple(trials.values())
        self._prior = (self._side, dict(trials))
        kept = self._prior_kept = complete and _write(self._key(self._side), ordered, pick)
        carried = not complete and _write(self._key(self._side), ordered, pick, Partial(
            ordered, tuple(racing) if not timed_all else (), self._race_pixels, pick))
        if kept or (complete and not carried):
            note = "" if kept else " (not kept: the record could not be written)"
        else:
            note = (" (not kept yet: the look check waits for a run that can pay for it" if timed_all else
                    " (not kept yet: the race stopped within its share of the run" if self._cut else
                    " (not kept yet: the scale ended before every candidate was timed")
            note += "; a later run goes on with it)" if carried else ")"
        self.decisions.append(Decision(self._side, pick, _why(pick, ordered, self._race.where, cached=earlier) +
                                       note, True))
        log.info("auto: at %d px %s", self._side, self.decisions[-1].why)

    def _look(self, pick: Option, seconds: float) -> str | None:
        """Why a reduced precision does not keep fp32's look (None: it does, or the pick is fp32); once a run.
        seconds: the pick's step here; a check that would take the race past its budget is not made."""
        precision = pick[1]
        if precision == "fp32":
            return None
        cost = 2 * LOOK_STEPS * seconds * trial_pixels(LOOK_SIDE) / max(1, self._race_pixels)  # both runs
        if precision not in self._looks and (self._ending or self._wasted() + cost > self._budget()):
            return f"{LOOK_OVER_BUDGET} ({cost:.1f} s; a longer run checks it)"
        if self._step_for(pick) is None:  # a carried-over figure whose step does not build here any more
            return self._skipped[pick]
        if precision not in self._looks:
            started = time.perf_counter()
            reference = next((o for o in self._race.options if o[1] == "fp32" and o[0] == pick[0]
                              and self._step_for(o) is not None), None) or \
                next((o for o in self._race.options if o[1] == "fp32" and self._step_for(o) is not None), None)
            self._looks[precision] = NO_REFERENCE if reference is None else look_check(
                self._steps[pick], self._steps[reference], precision, self._race.settings, self.loss)
            if reference is not None and self._targets is not None:
                self._steps[reference].set_targets(self._targets)
            self._spent += time.perf_counter() - started
        return self._looks[precision]

    def _use(self, pick: Option, force: bool = False) -> None:
        """Make `pick` the step in use, with the scale's targets. The others stay built: a later scale of
        another size class may race them again (VGG's weights once more per candidate)."""
        step = self._step_for(pick)
        if step is None:
            return  # a recorded pick that no longer builds here: keep the one in use
        if (force or pick != self._current) and self._targets is not None:
            step.set_targets(self._targets)
        self._current = pick
        self.current  # noqa: B018 (its device and capturable)

    def _step_for(self, option: Option) -> Step | None:
        """The candidate's step, built on first need; None (and why, in _skipped) when it is not raced."""
        if option in self._steps:
            return self._steps[option]
        if option in self._skipped:
            return None
        if option != self._race.first and self._uncached(option):
            self._skipped[option] = "not exported yet (a run with --backend ort caches it)"
            return None
        settings = _apply(self._race.settings, *option, self._race.where)
        started = time.perf_counter()
        try:
            step = self._build(settings)
        except (ExportValidationError, UserError) as e:  # a graph that does not hold here, a missing provider
            if option == self._race.first:
                raise
            self._skipped[option] = first_line(e)
            log.info("auto: %s skipped: %s", " ".join(option), self._skipped[option])
            return None
        if option != self._race.first:  # the first the run builds anyway
            self._spent += time.perf_counter() - started
        self._steps[option] = step
        return step

    def _key(self, side: int) -> dict:
        return _key(dataclasses.replace(self._race.settings, size=side), self._race.where)

    def _recorded(self, side: int) -> tuple[tuple[Trial, ...], Option] | None:
        found = _read(self._key(side), self._race.options)
        if found is None:
            return None
        trials, pick = found
        # a graph skipped as not exported then is raced once its export is cached
        if any(t.note.startswith("not exported") and not self._uncached((t.backend, t.precision, t.conv))
               for t in trials):
            return None
        return trials, pick
