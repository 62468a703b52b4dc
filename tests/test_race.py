"""auto's race (engine/race.py): a run's first steps at each size class taken in turn by the candidates, the
fastest that keeps the look used from then on and kept in the tuning record; later runs build only the pick."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from styleengine.engine import autotune, capability, race as race_mod
from styleengine.engine.autotune import Race, choose
from styleengine.engine.race import RaceStep
from styleengine.engine.settings import Settings
from styleengine.engine.steps import make_targets
from styleengine.engine.stylise import build_step, stylise
from styleengine.errors import ExportValidationError

CPU = capability.Machine(cuda=False, ort_providers=("cpu",), nnpack=True)
WHERE = capability.Placement("cpu", "cpu", "cpu")
WINO, DIRECT, BF16 = ("torch", "fp32", "winograd"), ("torch", "fp32", "direct"), ("torch", "bf16", "direct")
ORT = ("ort", "fp32", "direct")
COST = {WINO: 1.0, DIRECT: 1.5, BF16: 0.6, ORT: 0.5}  # seconds a step, on the fake clock


class Clock:
    now = 0.0

    def perf_counter(self) -> float:
        return self.now


class Timed:
    """A real step that takes COST[option] seconds of the fake clock a call."""

    def __init__(self, step, seconds: float, clock: Clock):
        self._inner, self._seconds, self._clock = step, seconds, clock

    def __call__(self, image):
        self._clock.now += self._seconds
        return self._inner(image)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "fingerprint", lambda: {"cpu": "test cpu", "threads": 2})
    clock = Clock()
    monkeypatch.setattr(race_mod, "time", clock)
    monkeypatch.setattr(race_mod, "look_check", lambda *a: None)
    autotune._memo.clear()
    yield clock
    autotune._memo.clear()


@pytest.fixture
def racer(fresh, vgg16_random, tiny_image):
    """make(options, sides, ...) -> (RaceStep, the options built in order)."""
    settings = Settings(model="vgg16", weights="random", size=512)
    loss = settings.loss_config()
    built: list = []

    def make(options=(WINO, DIRECT, BF16), sides=(128,), failing=(), uncached=(), cost=COST, iterations=3000):
        def build(concrete):
            option = (concrete.backend, concrete.precision, concrete.conv)
            built.append(option)
            if option in failing:
                raise ExportValidationError("graph disagrees with torch: grad rel L2 9e-2")
            real = dataclasses.replace(concrete, backend="torch", precision="fp32" if option == ORT else
                                       concrete.precision, conv="direct" if option == ORT else concrete.conv)
            return Timed(build_step(real, vgg16_random, loss), cost[option], fresh)

        race = Race(settings, WHERE, tuple(options), options[0])
        scales = [(side, side * side * 3 // 4, iterations) for side in sides]
        return RaceStep(race, build, loss, scales, uncached=lambda o: o in uncached), built

    return make


def _run_scale(step, side, image, calls=12, tiled=False):
    step.begin_scale(side * 3 // 4, side, tiled=tiled)
    step.set_targets(make_targets(step, step.loss, image, [image.flip(-1)]))
    for _ in range(calls):
        step(image)


def test_the_fastest_candidate_wins_and_is_kept(racer, tiny_image):
    step, built = racer()
    _run_scale(step, 128, tiny_image)
    assert [d.pick for d in step.decisions] == [BF16] and step.decisions[0].raced
    record = autotune._read(step._key(128))
    assert record is not None and record[1] == BF16
    step.close()


def test_a_later_run_builds_only_the_recorded_pick(racer, tiny_image):
    first, _ = racer()
    _run_scale(first, 128, tiny_image)
    first.close()
    second, built = racer()
    built.clear()
    _run_scale(second, 128, tiny_image)
    assert built == [BF16] and not second.decisions[0].raced
    second.close()


def test_each_size_class_races_once_at_the_runs_nearest_scale(racer, tiny_image):
    sides = [128, 181, 256, 362, 512]
    step, _ = racer(sides=sides)
    raced_at = []
    for side in sides:
        before = len(step.decisions)
        _run_scale(step, side, tiny_image, calls=8)
        if len(step.decisions) > before:
            raced_at.append(side)
    assert raced_at == [128, 256, 512]
    step.close()


def test_a_tiled_scale_never_races(racer, tiny_image):
    step, built = racer()
    _run_scale(step, 128, tiny_image, tiled=True)
    assert step.decisions == [] and built == [WINO]
    step.close()


def test_a_candidate_that_does_not_build_is_skipped_with_why(racer, tiny_image):
    step, _ = racer(options=(WINO, ORT, DIRECT), failing=(ORT,))
    _run_scale(step, 128, tiny_image)
    trials, pick = autotune._read(step._key(128))
    assert pick == WINO
    assert {(t.backend, t.precision, t.conv): t.status for t in trials}[ORT] == "skipped"
    assert "disagrees" in next(t.note for t in trials if (t.backend, t.conv) == ("ort", "direct"))
    step.close()


def test_a_reduced_precision_that_loses_the_look_is_not_picked(racer, tiny_image, monkeypatch):
    monkeypatch.setattr(race_mod, "look_check", lambda *a: "style distance 0.9 vs fp32's 0.5")
    step, _ = racer()
    _run_scale(step, 128, tiny_image)
    trials, pick = autotune._read(step._key(128))
    assert pick == WINO
    assert next(t for t in trials if t.precision == "bf16").status == "skipped"
    step.close()


def test_an_uncached_graph_is_not_raced_until_its_export_is_there(racer, tiny_image):
    step, built = racer(options=(WINO, ORT, DIRECT), uncached=(ORT,))
    _run_scale(step, 128, tiny_image)
    step.close()
    assert ORT not in built and step.decisions[0].pick == WINO
    again, built = racer(options=(WINO, ORT, DIRECT), uncached=())  # exported since, e.g. by a --backend ort run
    built.clear()
    _run_scale(again, 128, tiny_image)
    assert ORT in built and again.decisions[0].raced and again.decisions[0].pick == ORT
    again.close()


def test_a_scale_that_ends_mid_race_keeps_no_record(racer, tiny_image):
    step, _ = racer()
    _run_scale(step, 128, tiny_image, calls=4)  # three warm-ups and one timed step
    step.trim()
    assert autotune._read(step._key(128)) is None
    step.close()


def test_slow_candidates_leave_after_their_first_turns(racer, tiny_image):
    slow = {**COST, DIRECT: 5.0}
    step, _ = racer(cost=slow)
    _run_scale(step, 128, tiny_image, calls=20)
    trials, _ = autotune._read(step._key(128))
    direct = next(t for t in trials if t.conv == "direct" and t.precision == "fp32")
    assert direct.status == "dropped" and len(direct.seconds) <= 1
    step.close()


def test_a_raced_run_is_the_same_picture_as_its_pick_run_alone(fresh, monkeypatch, vgg16_random):
    """The race's steps are the run's steps: fp32 candidates agree to rounding, so the picture does too;
    the record is written and named in the result."""
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    monkeypatch.setattr(race_mod, "time", __import__("time"))
    gen = np.random.default_rng(0)
    content, style = gen.random((48, 64, 3)), gen.random((48, 64, 3))
    settings = Settings(model="vgg16", weights="random", size=64, iterations=15, backend="torch", precision="fp32",
                        style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",))
    raced, result = stylise(content, [style], settings)
    assert result.auto and "measured now" in result.auto[0]
    pick = choose(settings, machine=CPU).settings
    alone, _ = stylise(content, [style], pick)
    assert np.abs(raced - alone).max() < 2e-3


def test_one_left_after_the_warm_ups_is_the_pick_and_kept(racer, tiny_image):
    step, _ = racer(options=(DIRECT, WINO), cost={**COST, DIRECT: 5.0})
    _run_scale(step, 128, tiny_image, calls=3)  # two warm-ups: direct is over 2x, winograd alone is left
    assert not step._racing
    trials, pick = autotune._read(step._key(128))
    assert pick == WINO and next(t for t in trials if t.conv == "direct").status == "dropped"
    step.close()


def test_a_later_class_races_only_what_came_close_at_the_one_before(racer, tiny_image, fresh):
    close = {**COST, BF16: 0.9}  # within 1.25x of winograd; direct 1.5x is not
    step, _ = racer(sides=[128, 256], cost=close)
    _run_scale(step, 128, tiny_image)
    calls = dict.fromkeys((WINO, DIRECT, BF16), 0)
    step._steps = {o: _Counting(s, calls, o) for o, s in step._steps.items()}
    _run_scale(step, 256, tiny_image)
    assert calls[DIRECT] == 0 and calls[WINO] > 0 and calls[BF16] > 0
    trials, pick = autotune._read(step._key(256))
    direct = next(t for t in trials if t.conv == "direct" and t.precision == "fp32")
    assert direct.status == "skipped" and "at 128 px" in direct.note
    step.close()


def test_a_candidate_left_out_by_the_class_before_is_never_the_pick_on_that_class_figure(racer, tiny_image):
    """Its figure is the smaller class's: at 256 px direct's 128 px time (1.2 s) beat the racers' 256 px ones
    (2.5+ s here), so a run used a candidate not raced there (seen on the EPYC: torch fp32 direct at '96 ms')."""
    costs = {128: {WINO: 1.0, DIRECT: 1.3, BF16: 0.9}, 256: {WINO: 2.5, DIRECT: 5.0, BF16: 2.8}}
    step, _ = racer(sides=[128, 256], cost=costs[128])
    _run_scale(step, 128, tiny_image)
    for option, timed in step._steps.items():
        timed._seconds = costs[256][option]
    _run_scale(step, 256, tiny_image)
    assert step.decisions[-1].pick == WINO, step.decisions[-1].why
    step.close()


class _Counting:
    def __init__(self, inner, calls, option):
        self._inner, self._calls, self._option = inner, calls, option

    def __call__(self, image):
        self._calls[self._option] += 1
        return self._inner(image)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_a_clear_winner_at_one_class_is_taken_at_the_next_without_a_race(racer, tiny_image):
    step, built = racer(sides=[128, 256])
    _run_scale(step, 128, tiny_image)  # bf16 0.6 s: winograd 1.67x, direct 2.5x
    _run_scale(step, 256, tiny_image)
    assert [d.pick for d in step.decisions] == [BF16, BF16]
    assert "from the race at 128 px" in step.decisions[1].why
    assert "/step at 128 px (measured now" in step.decisions[1].why  # the figure is not this class's
    assert autotune._read(step._key(256))[1] == BF16  # kept: a later run reads it
    step.close()
    again, _ = racer(sides=[128, 256])
    _run_scale(again, 256, tiny_image)
    assert "/step at 128 px (measured earlier here" in again.decisions[0].why
    again.close()


def test_the_race_stays_within_its_share_of_a_short_run(racer, tiny_image):
    """A 30-iteration run at 0.6 s a step has ~0.5 s to spare (RACE_SHARE): after the warm-ups the race stops,
    bf16 is not taken on an unchecked look, and nothing is kept, so a longer run races again."""
    step, _ = racer(iterations=30)
    _run_scale(step, 128, tiny_image)
    assert step.decisions[0].pick == WINO and "not kept" in step.decisions[0].why  # bf16's look unchecked
    assert "look check does not fit" in step.decisions[0].why
    assert autotune._read(step._key(128)) is None
    step.close()
    roomy, _ = racer(iterations=3000)
    _run_scale(roomy, 128, tiny_image)
    assert autotune._read(roomy._key(128))[1] == BF16
    roomy.close()


def test_what_follows_from_a_race_not_kept_is_not_kept(racer, tiny_image):
    step, _ = racer(sides=[128, 256], iterations=30)  # the 128 px race is cut by its share
    _run_scale(step, 128, tiny_image)
    _run_scale(step, 256, tiny_image)
    assert autotune._read(step._key(128)) is None and autotune._read(step._key(256)) is None
    assert all("not kept" in d.why for d in step.decisions)
    step.close()


def test_a_race_cut_short_is_carried_over_and_the_next_run_races_only_whats_left(racer, tiny_image, fresh):
    step, _ = racer(iterations=30)  # warm-ups: direct over 2x bf16 (dropped), then the share is spent
    _run_scale(step, 128, tiny_image)
    step.close()
    assert autotune._read(step._key(128)) is None
    partial = autotune._read_partial(step._key(128))
    assert partial is not None and set(partial.racing) == {WINO, BF16}
    again, built = racer(iterations=3000)
    built.clear()
    _run_scale(again, 128, tiny_image)
    assert DIRECT not in built  # its verdict stands: not built, not timed again
    trials, pick = autotune._read(again._key(128))
    assert pick == BF16
    assert next(t for t in trials if t.conv == "direct" and t.precision == "fp32").note.startswith("an earlier run")
    assert autotune._read_partial(again._key(128)) is None
    again.close()


def test_a_look_check_too_dear_for_one_run_is_paid_by_the_runs_after(racer, tiny_image, fresh, monkeypatch):
    """800 iterations at 0.6 s: the race fits its 3% but bf16's look check (about 21 s here) does not; the
    figures are carried over, and once the runs here have earned it the next run checks the look and keeps
    the record, without racing again."""
    checks = []
    monkeypatch.setattr(race_mod, "look_check", lambda *a: checks.append(a[2]))
    step, _ = racer(iterations=800)
    _run_scale(step, 128, tiny_image)
    assert step.decisions[0].pick == WINO and "does not fit" in step.decisions[0].why and not checks
    fresh.now += 480  # the rest of the run
    step.close()
    partial = autotune._read_partial(step._key(128))
    assert partial is not None and partial.racing == ()
    again, built = racer(iterations=800)
    calls = dict.fromkeys((WINO, DIRECT, BF16), 0)
    _run_scale(again, 128, tiny_image, calls=0)
    assert checks == ["bf16"]
    again._steps = {o: _Counting(s, calls, o) for o, s in again._steps.items()}
    for _ in range(4):
        again(tiny_image)
    assert calls[BF16] == 4 and calls[WINO] == calls[DIRECT] == 0  # no race: bf16 from the start
    assert autotune._read(again._key(128))[1] == BF16
    again.close()


def test_one_run_never_spends_more_than_its_cap_whatever_the_earlier_runs_earned(racer, tiny_image, fresh,
                                                                                monkeypatch):
    autotune.add_to_account(race_mod.RaceStep._key(racer()[0], 128), 1e6, 0.0, {})  # a long history here
    checks = []
    monkeypatch.setattr(race_mod, "look_check", lambda *a: checks.append(a[2]))
    step, _ = racer(iterations=30)  # 18 s: 5% is 0.9 s, the look check about 21 s
    _run_scale(step, 128, tiny_image)
    assert not checks and "does not fit" in step.decisions[0].why
    step.close()


def test_look_verdicts_are_kept_for_the_runs_after(racer, tiny_image, monkeypatch):
    checks = []

    def lost(*a):
        checks.append(a[2])
        return "style distance 0.9 vs fp32's 0.5"
    monkeypatch.setattr(race_mod, "look_check", lost)
    step, _ = racer()
    _run_scale(step, 128, tiny_image)
    step.close()
    assert checks == ["bf16"]
    later, _ = racer(sides=[256])  # another size class, another run: the verdict stands
    _run_scale(later, 256, tiny_image)
    assert checks == ["bf16"] and later.decisions[0].pick == WINO and "0.9" in later.decisions[0].why
    later.close()


@pytest.mark.parametrize("damage", ['{"version": 4, "entries": {}, "accounts": 5}',
                                    '{"version": 4, "entries": {}, "accounts": {"%s": {"key": null}}}',
                                    '{"version": 4, "entries": {}, "accounts": {"%s": {"key": %s, "run_s": "x"}}}'])
def test_a_damaged_account_starts_again(racer, tiny_image, fresh, damage, caplog):
    step, _ = racer()
    key = autotune._account_key(step._key(128))
    step.close()
    autotune.record_path().write_text(damage.replace("%s", autotune._key_id(key), 1).replace(
        "%s", __import__("json").dumps(key)))
    assert autotune.read_account(step._key(128)) == autotune.Account()
    again, _ = racer()
    _run_scale(again, 128, tiny_image)
    again.close()
    assert autotune.read_account(again._key(128)).run_s > 0


def test_a_carried_race_that_cannot_finish_in_this_run_waits_for_one_that_can(racer, tiny_image, fresh):
    first, _ = racer(iterations=30)
    _run_scale(first, 128, tiny_image)
    first.close()
    assert set(autotune._read_partial(first._key(128)).racing) == {WINO, BF16}
    short, _ = racer(iterations=30)  # 18 s: may spend 0.9 s, racing on to the end needs about 2.2 s
    _run_scale(short, 128, tiny_image, calls=0)
    calls = dict.fromkeys((WINO, DIRECT, BF16), 0)
    short._steps = {o: _Counting(s, calls, o) for o, s in short._steps.items()}
    for _ in range(6):
        short(tiny_image)
    assert calls[BF16] == 0 and calls[WINO] == 6 and "needs about" in short.decisions[0].why
    fresh.now += 100  # the rest of that run: its share is banked
    short.close()
    longer, _ = racer(iterations=100)  # 60 s: 5% is 3 s
    _run_scale(longer, 128, tiny_image)
    longer.close()
    partial = autotune._read_partial(longer._key(128))  # raced to the end; only bf16's look check is left
    assert partial is not None and partial.racing == () and BF16 in {_o(t) for t in partial.trials if t.seconds}


def _o(trial):
    return trial.backend, trial.precision, trial.conv


def test_a_precision_whose_look_check_waits_still_races_at_the_next_class(racer, tiny_image):
    """bf16 fastest at 128 px but its look check not paid for: it is not 'over 1.25x' there, so the 256 px
    class races it (it was left out, and that class's record kept without it)."""
    step, _ = racer(sides=[128, 256], iterations=100)  # 9 s to spend: the race fits, bf16's look check (21 s) not
    calls = dict.fromkeys((WINO, DIRECT, BF16), 0)
    _run_scale(step, 128, tiny_image)
    assert "does not fit" in step.decisions[0].why
    step._steps = {o: _Counting(s, calls, o) for o, s in step._steps.items()}
    _run_scale(step, 256, tiny_image)
    assert calls[BF16] > 0
    bf16 = next(t for t in autotune._read_partial(step._key(256)).trials if t.precision == "bf16")
    assert "over 1.25x" not in bf16.note
    step.close()
