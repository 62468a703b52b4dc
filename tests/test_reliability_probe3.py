"""Issue 23, probe 3: the neighbours of probe 2's fixes and the race's carried-over records (partial races and
the per-settings account in <cache>/tune.json). Each defect it found, as the damaged record a careless or
hostile user (or a half-copied cache) left: measured again, never trusted, never a traceback."""
from __future__ import annotations

import json

import pytest

from styleengine.engine import autotune, capability
from styleengine.engine.autotune import Partial, Trial, choose
from styleengine.engine.settings import Settings

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_autotune import CPU, FakeTrial
    from test_race import BF16, DIRECT, WINO, _run_scale, fresh, racer  # noqa: F401 (fixtures)
    from test_reliability_probe2 import FAST, one_line, pics, run_cli  # noqa: F401 (pics: a fixture)
except ModuleNotFoundError:
    from tests.test_autotune import CPU, FakeTrial
    from tests.test_race import BF16, DIRECT, WINO, _run_scale, fresh, racer  # noqa: F401
    from tests.test_reliability_probe2 import FAST, one_line, pics, run_cli  # noqa: F401

FP16 = ("torch", "fp16", "direct")  # no candidate on a CPU: torch has no fp16 there
WHERE = capability.Placement("cpu", "cpu", "cpu")


def _carry(step, side: int, trials: list[Trial], racing: tuple, pick: tuple, pixels) -> None:
    """A partial race for `side` in the record, as an earlier run (or a hand) left it."""
    key = step._key(side)
    assert autotune._write(key, tuple(trials), pick, Partial(tuple(trials), racing, 1, pick))
    path = autotune.record_path()
    data = json.loads(path.read_text())
    data["entries"][autotune._key_id(key)]["pixels"] = pixels
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------ a carried race that names what cannot run here

@pytest.mark.parametrize("looks_pending, iterations", [(False, 30), (True, 3000)])
def test_a_carried_race_naming_a_candidate_that_cannot_run_here_is_raced_again(racer, tiny_image, looks_pending,
                                                                              iterations):
    """A partial whose pick (and a raced candidate) is torch fp16 on a CPU, consistent in itself: a run that
    waited for the race used it (built it: on the fake builder a KeyError, on a real one fp16 on a CPU), a run
    finishing its look check picked it by its figure and kept it as a finished record. The finished record's
    check (probe 2: 'its pick cannot run here') was never made on a carried one."""
    # 30 iterations: too short to race on, the run waits using the record's pick; 3000: the look check is paid
    step, built = racer(iterations=iterations)
    trials = [Trial(*WINO, seconds=(1.0,)), Trial(*BF16, seconds=(0.6,)),
              Trial(*DIRECT, seconds=(3.0,), status="dropped"), Trial(*FP16, seconds=(0.1,))]
    _carry(step, 128, trials, () if looks_pending else (WINO, BF16, FP16), FP16, 96 * 128)
    built.clear()
    _run_scale(step, 128, tiny_image)
    assert FP16 not in built
    assert all(d.pick in (WINO, DIRECT, BF16) for d in step.decisions)
    step.close()
    assert "fp16" not in json.dumps(json.loads(autotune.record_path().read_text())["entries"])  # replaced


def test_a_carried_race_whose_pick_was_never_timed_is_raced_again_not_forever_skipped(racer, tiny_image):
    """A partial with nothing left to race (racing []) whose candidates were all skipped: each run 'finished
    its look check' with no figure, raced nothing, kept nothing, so no run here ever measured again."""
    step, _ = racer()
    trials = [Trial(*o, status="skipped", note="an earlier run: ok") for o in (WINO, DIRECT, BF16)]
    _carry(step, 128, trials, (), WINO, 96 * 128)
    _run_scale(step, 128, tiny_image)
    step.close()
    assert [d.raced for d in step.decisions] == [True]
    assert autotune._read(step._key(128)) is not None  # raced and kept


@pytest.mark.parametrize("pixels", ["12288", True, 12288.5, 10 ** 30])
def test_a_carried_race_with_pixels_that_are_no_scale_is_damaged(racer, pixels):
    """`"pixels": "12288"` (a text), true, a fraction or 10**30 were taken as the scale's pixels (int())."""
    step, _ = racer()
    _carry(step, 128, [Trial(*WINO, seconds=(1.0,)), Trial(*BF16, seconds=(0.6,))], (WINO, BF16), BF16, pixels)
    assert autotune._read_partial(step._key(128)) is None
    step.close()


# ------------------------------------------------------------------ figures of the wrong type or past any run's

@pytest.mark.parametrize("damage", ["seconds as texts", "seconds a text", "seconds as bools", "huge seconds",
                                    "note a number"])
def test_a_record_with_figures_no_trial_writes_is_measured_again(fresh, damage):
    settings = Settings(size=512, weights="random")
    choose(settings, measure=FakeTrial(), machine=CPU, tune=True)
    path = autotune.record_path()
    data = json.loads(path.read_text())
    entry = next(iter(data["entries"].values()))
    for t in entry["trials"]:
        if damage == "seconds as texts":  # what a hand-edit in a text editor leaves
            t["seconds"] = [str(s) for s in t["seconds"]]
        elif damage == "seconds a text":  # float() of each character: "2" read as (2.0,), the ranking kept
            t["seconds"] = str(round(5 * t["seconds"][0]))
        elif damage == "seconds as bools":  # true read as 1.0: the pick still the fastest
            picked = [t["backend"], t["precision"], t["conv"]] == entry["pick"]
            t["seconds"] = [True if picked else 2] * len(t["seconds"])
        elif damage == "huge seconds":  # finite, the ranking kept: 10**300 s a step is no figure of this machine
            t["seconds"] = [s * 1e300 for s in t["seconds"]]
        else:
            t["note"] = 5
    path.write_text(json.dumps(data))
    autotune._memo.clear()
    again = FakeTrial()
    choice = choose(settings, measure=again, machine=CPU, tune=True)
    assert len(again.calls) == 1 and not choice.cached


@pytest.mark.parametrize("account", [
    {"run_s": "1e6", "race_s": 0.0, "looks": {}},  # a text
    {"run_s": True, "race_s": False, "looks": {}},
    {"run_s": 1e300, "race_s": 0.0, "looks": {}},  # finite, past any machine's runs: a standing 5% a run
    {"run_s": 10.0, "race_s": 50.0, "looks": {}},  # racing cannot cost more than the runs it was part of
    {"run_s": 10.0, "race_s": 0.0, "looks": {"bf16": 5}},  # a verdict is a text or null
])
def test_a_damaged_account_is_started_again_never_trusted(fresh, account):
    key = autotune._key(Settings(size=512, weights="random"), WHERE)
    ident = autotune._account_key(key)
    path = autotune.record_path()
    path.write_text(json.dumps({"version": autotune.TUNE_VERSION, "entries": {},
                                "accounts": {autotune._key_id(ident): {"key": ident, **account}}}))
    assert autotune.read_account(key) == autotune.Account()


# ------------------------------------------------------------------ the dry run reads the record as the run does

def test_a_dry_run_does_not_trust_an_entry_the_run_measures_again(fresh, monkeypatch):
    """`run --dry-run` said 'measured earlier here (the tuning record)' and named the pick of an entry whose
    pick is not the fastest of its own figures; the run itself called it damaged and measured again."""
    from styleengine.engine import machine

    monkeypatch.setattr(machine, "cpu_name", lambda: "test cpu")
    monkeypatch.setattr(machine, "kernel_flags", lambda: ["avx2"])
    settings = Settings(size=512, weights="random")
    options = [WINO, DIRECT, BF16]
    key = {**autotune._run_key(settings, WHERE), "machine": {"cpu": "test cpu", "flags": ["avx2"]}}
    trials = (Trial(*WINO, seconds=(1.0,)), Trial(*DIRECT, seconds=(3.0,)), Trial(*BF16, seconds=(0.6,)))
    assert autotune._write(key, trials, BF16)
    assert autotune.recorded_pick(settings, WHERE, options) == BF16  # whole: the dry run reads it
    assert autotune._write(key, trials, DIRECT)  # the slowest, called the pick
    assert autotune._read(key, options) is None
    assert autotune.recorded_pick(settings, WHERE, options) is None


# ------------------------------------------------------------------ other parsers of a comma list

@pytest.mark.parametrize("flag", ["--style-layers", "--content-layers"])
def test_export_reads_a_list_of_only_separators_as_a_slip_as_run_does(tmp_path, monkeypatch, capsys, flag):
    """`export --style-layers ,` exported (and published) graphs with no style term, exit 0: export split the
    list itself and ',' meant none, where run says it is a slip (probe 2)."""
    out = tmp_path / "graphs"
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, "--model", "vgg16", "--weights", "random",
                           "--no-validate", flag, " , ")
    assert flag in one_line(code, err) and not out.exists()


def test_the_api_reads_a_comma_list_as_the_flags_do():
    """`stylise(..., style_layer_weights="1,1,1,1,1")` kept the texts and failed with a TypeError deep in the
    checks; `style_layers="relu1_1, relu2_1"` kept the space and named no layer ' relu2_1'."""
    from styleengine.api import settings_of
    from styleengine.errors import ConfigError

    settings = settings_of({"style_layers": "relu1_1, relu2_1", "style_layer_weights": "1,2", "style_blend": "1"})
    assert settings.style_layers == ("relu1_1", "relu2_1") and settings.style_layer_weights == (1.0, 2.0)
    assert settings.style_blend == (1.0,)
    settings.validate()
    with pytest.raises(ConfigError, match="style_layers"):
        settings_of({"style_layers": " , "})


def test_the_api_synthesises_a_texture_without_being_told_its_start():
    """`styleengine.stylise(None, style)` was refused ('--init content: a texture has no content image'): the
    API took Settings' default start, content, which probe 2 made a texture refuse (the CLI's texture starts from
    noise)."""
    import numpy as np

    import styleengine

    style = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    image = styleengine.stylise(None, style, size=40, iterations=2, weights="random", model="vgg16", device="cpu",
                                backend="torch", precision="fp32", conv="direct")
    assert image.size == (40, 40)


# ------------------------------------------------------------------ a jobs file spells --init as the flag does

@pytest.mark.parametrize("init", ["random", "image"])
def test_a_jobs_files_init_takes_neural_styles_words_as_init_does(tmp_path, monkeypatch, capsys, pics, init):
    """`run --init random` starts from noise (neural-style's spelling); a jobs file's `"init": "random"` was a
    file `random` beside the jobs file, and the job failed: 'init image not found'."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"content": "content.png", "style": "style.png", "init": init}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "out", *FAST)
    assert code == 0 and (tmp_path / "out" / "content__style.png").exists(), err


# ------------------------------------------------------------------ a path with brackets is printed as it is

@pytest.mark.parametrize("name", ["a[/b].png", "[draft]/out.png"])
def test_an_output_path_with_brackets_is_printed_as_it_is(tmp_path, monkeypatch, capsys, pics, name):
    """rich read paths as markup: `-o 'a[/b].png'` (a folder 'a[') wrote the picture, then its 'wrote' line was a
    MarkupError traceback, exit 1; `-o '[draft]/out.png'` said 'wrote .../out.png', the folder's name gone."""
    out = tmp_path / name
    out.parent.mkdir(exist_ok=True)
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST)
    assert code == 0 and "Traceback" not in err and f"wrote {out}" in err, err


# ------------------------------------------------------------------ serve --ray without a cluster

@pytest.mark.parametrize("address, says", [("127.0.0.1:1", "nothing answers there"), ("bogus", "HOST:PORT")])
def test_serve_on_a_ray_address_where_nothing_answers_is_one_line(tmp_path, monkeypatch, capsys, address, says):
    """`serve --ray 127.0.0.1:1` waited in ray.init (over two minutes here, then still waiting) where `batch` and
    `video --ray` say at once that nothing answers; `--ray bogus` went to ray.init too."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")

    def init(*args, **kwargs):
        raise AssertionError("ray.init was called on an address nothing answers at")

    monkeypatch.setattr(ray, "init", init)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--ray", address, "--results-dir", tmp_path / "results",
                           "--weights", "random", "--device", "cpu")
    assert says in one_line(code, err) and "--ray" in err


@pytest.mark.parametrize("init", ["random", "image"])
def test_a_serve_form_init_takes_neural_styles_words_as_init_does(tmp_path, init):
    """A form's `init=random` was 422 'not one of noise, content, style, randn' where --init and (now) a jobs
    file take neural-style's spelling."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from styleengine.serve.app import Config, create_app

    try:
        from serve_helpers import SETTINGS, files, png, wait_for
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png, wait_for

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_size=256, max_iters=50)
    with TestClient(create_app(config)) as client:
        response = client.post("/api/jobs", files=files(None, png(40, 40, 1)),
                               data={"init": init, "iters": "2", "size": "40"})
        assert response.status_code == 202, response.text
        assert wait_for(client, response.json()["id"])["status"] == "done"
