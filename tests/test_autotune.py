"""The measured `auto` (engine/autotune.py): the fastest candidate that runs and keeps the look, kept per
machine and size class, measured again when the machine changes or the record is damaged."""
from __future__ import annotations

import json
import logging

import pytest

from styleengine.engine import autotune, capability, trial as trial_mod
from styleengine.engine.autotune import Trial, choose, pick_fastest
from styleengine.engine.trial import exports_that_fit, measure_candidates, next_round, prune
from styleengine.engine.stylise import Settings

CPU = capability.Machine(cuda=False, ort_providers=("cpu",), nnpack=True)
GPU = capability.Machine(cuda=True, ort_providers=("cpu", "cuda"), nnpack=True)
TIMES = {("torch", "fp32", "winograd"): 1.0, ("torch", "fp32", "direct"): 1.4, ("torch", "bf16", "direct"): 0.5,
         ("ort", "fp32", "winograd"): 0.8, ("ort", "fp32", "direct"): 1.2}


class FakeTrial:
    """measure_candidates' stand-in: fixed times, some candidates skipped, every call counted."""

    def __init__(self, times=TIMES, skipped=()):
        self.times, self.skipped, self.calls = times, skipped, []

    def __call__(self, settings, where, options, side):
        self.calls.append((where.place, tuple(options), side))
        return [Trial(*o, status="skipped", note="disagrees with fp32") if o in self.skipped
                else Trial(*o, seconds=(self.times[o],) * 3) for o in options]


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache and no memo: every test starts on a machine that has measured nothing."""
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "fingerprint", lambda: {"cpu": "test cpu", "threads": 2})
    autotune._memo.clear()
    yield tmp_path
    autotune._memo.clear()


def test_picks_the_fastest_valid_candidate(fresh):
    trial = FakeTrial()
    choice = choose(Settings(size=512, weights="random"), measure=trial, machine=CPU, tune=True)
    assert (choice.settings.backend, choice.settings.precision, choice.settings.conv) == ("torch", "bf16", "direct")
    assert choice.measured and not choice.cached
    assert "0.50" not in choice.why and "torch bf16 direct" in choice.why and "2.00x" in choice.why
    assert trial.calls == [("cpu", tuple(TIMES), 512)]  # the trial at the run's size class


def test_a_candidate_that_fails_validation_or_the_look_is_skipped(fresh):
    trial = FakeTrial(skipped=[("torch", "bf16", "direct")])
    choice = choose(Settings(size=512, weights="random"), measure=trial, machine=CPU, tune=True)
    assert (choice.settings.backend, choice.settings.conv) == ("ort", "winograd")
    assert "skipped: disagrees with fp32" in choice.why


def test_fp32_stays_where_a_reduced_precision_barely_wins():
    trials = [Trial("torch", "fp32", "winograd", (1.0,)), Trial("torch", "bf16", "direct", (0.92,))]
    assert pick_fastest(trials) == ("torch", "fp32", "winograd")
    trials[1] = Trial("torch", "bf16", "direct", (0.85,))
    assert pick_fastest(trials) == ("torch", "bf16", "direct")


def test_explicit_settings_win_and_only_what_is_auto_is_measured(fresh):
    trial = FakeTrial()
    choice = choose(Settings(size=512, weights="random", backend="torch", precision="fp32"), measure=trial,
                    machine=CPU, tune=True)
    assert trial.calls[0][1] == (("torch", "fp32", "winograd"), ("torch", "fp32", "direct"))
    assert (choice.settings.backend, choice.settings.precision, choice.settings.conv) == ("torch", "fp32", "winograd")
    choice = choose(Settings(size=512, weights="random", backend="torch", precision="fp32", conv="direct"),
                    measure=trial, machine=CPU, tune=True)
    assert len(trial.calls) == 1 and choice.settings.conv == "direct" and not choice.measured


def test_the_record_is_reused_then_measured_again_on_another_machine(fresh, monkeypatch):
    settings = Settings(size=500, weights="random")
    first = FakeTrial()
    choose(settings, measure=first, machine=CPU, tune=True)
    again = FakeTrial(times={**TIMES, ("ort", "fp32", "winograd"): 0.1})
    choice = choose(settings, measure=again, machine=CPU, tune=True)
    assert again.calls == [] and choice.cached and choice.settings.backend == "torch"
    # another size class is another trial; the classes above 1024 px share the 1024 px trial
    choose(Settings(size=1024, weights="random"), measure=again, machine=CPU, tune=True)
    assert len(again.calls) == 1
    choose(Settings(size=2048, weights="random"), measure=again, machine=CPU, tune=True)
    assert len(again.calls) == 1
    # another machine (threads, CPU, versions: the fingerprint) is measured again
    monkeypatch.setattr(autotune, "fingerprint", lambda: {"cpu": "test cpu", "threads": 16})
    choice = choose(settings, measure=again, machine=CPU, tune=True)
    assert len(again.calls) == 2 and not choice.cached and choice.settings.backend == "ort"


@pytest.mark.parametrize("damage", ["garbage", "not a dict", "pick not the fastest", "pick unknown", "no trials",
                                    "nested too deep", "pick cannot run here", "seconds past float",
                                    "negative seconds"])
def test_a_damaged_record_is_measured_again_never_trusted(fresh, damage, caplog):
    settings = Settings(size=512, weights="random")
    choose(settings, measure=FakeTrial(), machine=CPU, tune=True)
    path = autotune.record_path()
    data = json.loads(path.read_text())
    entry = next(iter(data["entries"].values()))
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "nested too deep":
        path.write_text("[" * 100000 + "]" * 100000)
    else:
        if damage == "not a dict":
            data = [1, 2]
        elif damage == "pick not the fastest":
            entry["pick"] = ["torch", "fp32", "direct"]
        elif damage == "pick unknown":
            entry["pick"] = ["tensorrt", "fp8", "magic"]
        elif damage == "pick cannot run here":  # consistent in itself, but torch has no fp16 on a CPU
            picked = next(t for t in entry["trials"] if [t["backend"], t["precision"], t["conv"]] == entry["pick"])
            picked["precision"] = entry["pick"][1] = "fp16"
        elif damage == "seconds past float":
            entry["trials"][0]["seconds"] = [10 ** 400]
        elif damage == "negative seconds":
            for t in entry["trials"]:
                t["seconds"] = [-s for s in t["seconds"]]
        else:
            del entry["trials"]
        path.write_text(json.dumps(data))
    again = FakeTrial()
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.autotune"):
        choice = choose(settings, measure=again, machine=CPU, tune=True)
    assert len(again.calls) == 1 and not choice.cached
    assert any("measuring again" in r.message for r in caplog.records)
    assert json.loads(path.read_text())["entries"]  # and the record is whole again


def test_an_unwritable_cache_costs_the_record_not_the_run(fresh, monkeypatch, caplog):
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(fresh / "file"))
    (fresh / "file").write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.autotune"):
        choice = choose(Settings(size=512, weights="random"), measure=FakeTrial(), machine=CPU, tune=True)
    assert choice.settings.precision == "bf16" and choice.measured and not choice.kept
    assert any("could not keep" in r.message for r in caplog.records)


def test_gpu_candidates_are_the_gpu_options(fresh):
    trial = FakeTrial(times={("torch", "bf16", "direct"): 0.004, ("torch", "fp32", "direct"): 0.005,
                             ("ort", "fp16", "direct"): 0.0035, ("ort", "fp32", "direct"): 0.005,
                             ("ort", "fp32", "winograd"): 0.006})
    choice = choose(Settings(size=2048, weights="random"), measure=trial, machine=GPU, tune=True)
    assert trial.calls[0][0] == "cuda" and trial.calls[0][2] == autotune.TRIAL_SIDE["cuda"]
    assert (choice.settings.backend, choice.settings.provider, choice.settings.precision) == ("ort", "cuda", "fp16")
    assert "3.50 ms" in choice.why


def test_the_real_trial_times_builds_and_skips(fresh, monkeypatch):
    """measure_candidates on tiny random VGG16 steps: every candidate timed in interleaved rounds; one whose
    graph fails validation is skipped with the reason, not raised."""
    from styleengine.engine import stylise
    from styleengine.errors import ExportValidationError

    real = stylise.build_step

    def build(settings, weights, loss):
        if settings.backend == "ort":
            raise ExportValidationError("fp16 step graph disagrees with torch at 64x64: grad rel L2 9.45e-02")
        return real(settings, weights, loss)

    monkeypatch.setattr(stylise, "build_step", build)
    monkeypatch.setattr(trial_mod, "uncached_graphs", lambda *a: set())  # as if exported: built, and fails
    settings = Settings(size=64, model="vgg16", weights="random", style_layers=("relu1_1", "relu2_1"),
                        content_layers=("relu2_2",))
    where = capability.place("auto", "cpu", "auto", CPU)
    options = [("torch", "fp32", "direct"), ("torch", "bf16", "direct"), ("ort", "fp16", "direct")]
    trials = {(t.backend, t.precision, t.conv): t for t in measure_candidates(settings, where, options, 64)}
    assert trials[("ort", "fp16", "direct")].status == "skipped"
    assert "9.45e-02" in trials[("ort", "fp16", "direct")].note
    timed = [trials[("torch", "fp32", "direct")], trials[("torch", "bf16", "direct")]]
    assert all(t.status in ("ok", "dropped") and t.seconds and min(t.seconds) > 0 for t in timed)
    # rounds this short are taken whatever the budget, until one candidate is left
    assert 1 <= max(len(t.seconds) for t in timed) <= trial_mod.ROUNDS


def test_an_uncached_export_over_the_budget_is_skipped_unbuilt(fresh, monkeypatch):
    """At 64 px a graph's export would cost hundreds of the trial's steps: skipped, never built."""
    from styleengine.engine import stylise

    real, built = stylise.build_step, []

    def build(settings, weights, loss):
        built.append(settings.backend)
        return real(settings, weights, loss)

    monkeypatch.setattr(stylise, "build_step", build)
    settings = Settings(size=64, model="vgg16", weights="random", style_layers=("relu1_1",),
                        content_layers=("relu2_2",))
    where = capability.place("auto", "cpu", "auto", CPU)
    options = [("torch", "fp32", "direct"), ("ort", "fp32", "direct")]
    trials = {(t.backend, t.precision, t.conv): t for t in measure_candidates(settings, where, options, 64)}
    assert built == ["torch"]
    assert trials[("ort", "fp32", "direct")].status == "skipped"
    assert "not exported" in trials[("ort", "fp32", "direct")].note
    assert trials[("torch", "fp32", "direct")].seconds


def test_exports_fit_the_budget_by_the_pictures_size():
    """An export costs EXPORT_STEPS steps of a 384x512 picture, a candidate two (warm-up, round one): none fit
    beside five candidates at 384x512 or 768x1024, the first graph candidate (the rule's pick) beside one
    torch candidate at 768x1024, none at 384x512."""
    five = [("torch", "fp32", "winograd"), ("torch", "fp32", "direct"), ("torch", "bf16", "direct"),
            ("ort", "fp32", "winograd"), ("ort", "fp32", "direct")]
    graphs = {o for o in five if o[0] == "ort"}
    assert exports_that_fit(five, graphs, 384 * 512) == set()
    assert exports_that_fit(five, graphs, 768 * 1024) == set()
    three = [five[0]] + sorted(graphs, reverse=True)
    assert exports_that_fit(three, graphs, 768 * 1024) == {("ort", "fp32", "winograd")}
    assert exports_that_fit(three, graphs, 384 * 512) == set()
    assert exports_that_fit(five, set(), 384 * 512) == set()


def _trials(times, status=None):
    """Trials with the given per-round seconds, keyed by label."""
    return [Trial(*label.split(), seconds=tuple(s), status=(status or {}).get(label, "ok"))
            for label, s in times.items()]


def _fates(trials):
    return {t.label: t.status for t in trials}


def test_round_one_drops_the_far_slower():
    trials = prune(_trials({"torch fp32 winograd": [1.0], "torch fp32 direct": [1.45], "ort fp32 winograd": [1.3]}),
                   1)
    assert _fates(trials) == {"torch fp32 winograd": "ok", "torch fp32 direct": "dropped", "ort fp32 winograd": "ok"}


def test_a_later_round_drops_one_behind_in_every_round_only():
    times = {"torch fp32 winograd": [1.0, 1.0], "ort fp32 winograd": [1.1, 1.08], "ort fp32 direct": [1.2, 0.98]}
    assert _fates(prune(_trials(times), 2)) == {"torch fp32 winograd": "ok", "ort fp32 winograd": "dropped",
                                                "ort fp32 direct": "ok"}
    # a 4% lag is a tie: both stay
    assert _fates(prune(_trials({"a fp32 x": [1.0, 1.0], "b fp32 y": [1.04, 1.04]}), 2)) == {
        "a fp32 x": "ok", "b fp32 y": "ok"}


def test_a_reduced_precision_must_lead_by_the_fp32_margin_to_stay():
    """bf16 5% faster than fp32 could never be picked (FP32_MARGIN): dropped after round two; 20% faster: it
    leads and fp32 stays only while within the margin's reach."""
    close = {"torch fp32 winograd": [1.0, 1.0], "torch bf16 direct": [0.95, 0.95]}
    assert _fates(prune(_trials(close), 2))["torch bf16 direct"] == "dropped"
    ahead = {"torch fp32 winograd": [1.0, 1.0], "torch bf16 direct": [0.8, 0.8]}
    assert _fates(prune(_trials(ahead), 2)) == {"torch fp32 winograd": "dropped", "torch bf16 direct": "ok"}
    # without an fp32 candidate there is no margin to beat
    assert _fates(prune(_trials({"torch bf16 direct": [0.97, 0.97], "ort fp16 direct": [1.0, 1.0]}), 2)) == {
        "torch bf16 direct": "ok", "ort fp16 direct": "ok"}


def test_another_round_only_within_the_budget(monkeypatch):
    monkeypatch.setattr(trial_mod, "DEFAULT_STEPS", 300)
    two = _trials({"torch fp32 winograd": [1.0], "ort fp32 winograd": [1.02]})
    assert next_round(two, spent=5.0)  # 5 s + a 2 s round within 7.5 steps of 1 s
    assert not next_round(two, spent=6.0)  # would end past the budget: the best so far is the pick
    alone = _trials({"torch fp32 winograd": [1.0], "ort fp32 winograd": [2.0]}, {"ort fp32 winograd": "dropped"})
    assert not next_round(alone, spent=0.0)
    gpu = _trials({"torch bf16 direct": [0.004], "ort fp16 direct": [0.0035]})
    assert next_round(gpu, spent=30.0)  # milliseconds: nothing to save
    # bf16 ahead by 20% in one round: confirmed in a second before its look check, whatever the budget
    bf16 = _trials({"torch fp32 winograd": [1.0], "torch bf16 direct": [0.8]})
    assert next_round(bf16, spent=7.0)
    assert not next_round(_trials({"torch fp32 winograd": [1.0, 1.0], "torch bf16 direct": [0.8, 0.8]}), spent=7.0)


def test_the_look_is_checked_only_for_a_reduced_precision_that_would_be_picked(monkeypatch):
    checked = []

    def look(candidate, reference, precision, settings, loss):
        checked.append((candidate, reference))
        return "style distance 0.9 vs fp32's 0.5 after 8 iterations"

    monkeypatch.setattr(trial_mod, "look_check", look)
    steps = {("torch", "fp32", "winograd"): "fp32 step", ("torch", "bf16", "direct"): "bf16 step"}
    behind = {o: t for o, t in zip(steps, _trials({"torch fp32 winograd": [1.0], "torch bf16 direct": [0.95]}))}
    trial_mod._check_looks(behind, steps, None, None)
    assert checked == []
    ahead = {o: t for o, t in zip(steps, _trials({"torch fp32 winograd": [1.0], "torch bf16 direct": [0.8]}))}
    trial_mod._check_looks(ahead, steps, None, None)
    assert checked == [("bf16 step", "fp32 step")]
    assert ahead[("torch", "bf16", "direct")].status == "skipped"
    assert pick_fastest(list(ahead.values())) == ("torch", "fp32", "winograd")


def test_the_look_check_passes_bf16_and_catches_a_wrong_step(vgg16_random):
    """look_check compares a candidate with fp32: bf16 keeps the look; a step whose gradient is off does not."""
    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig

    settings = Settings(size=64, model="vgg16", weights="random")
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"))
    reference = make_step("torch", vgg16_random, loss, device="cpu", precision="fp32", conv="direct")
    bf16 = make_step("torch", vgg16_random, loss, device="cpu", precision="bf16", conv="direct")
    assert trial_mod.look_check(bf16, reference, "bf16", settings, loss) is None

    class Off:
        """bf16's step with its gradient a third too large: what a broken reduced precision looks like."""

        def __init__(self, inner):
            self.inner = inner

        def set_targets(self, targets):
            self.inner.set_targets(targets)

        def __call__(self, image):
            r = self.inner(image)
            return type(r)(r.losses, r.grad * 1.3)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    assert "grad rel L2" in trial_mod.look_check(Off(bf16), reference, "bf16", settings, loss)


def test_off_resolves_by_rule_without_measuring(fresh, monkeypatch):
    monkeypatch.setenv("STYLEENGINE_TUNE", "off")
    trial = FakeTrial()
    choice = choose(Settings(size=512, weights="random"), measure=trial, machine=CPU)
    assert trial.calls == [] and not choice.measured
    assert (choice.settings.backend, choice.settings.precision, choice.settings.conv) == ("torch", "fp32", "winograd")


def test_the_look_check_of_a_loss_without_style_layers(vgg16_random):
    """An inversion's loss (engine/invert.py: content only) has no style distance to compare: only content's."""
    from styleengine.engine import trial
    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig

    settings = Settings(size=64, model="vgg16", weights="random")
    loss = LossConfig(content_layers=("conv1_2",), style_layers=(), style_weight=0.0)
    reference = make_step("torch", vgg16_random, loss, device="cpu", precision="fp32", conv="direct")
    bf16 = make_step("torch", vgg16_random, loss, device="cpu", precision="bf16", conv="direct")
    assert trial.look_check(bf16, reference, "bf16", settings, loss) is None
