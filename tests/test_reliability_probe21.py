"""Issue 23, stop 37: what stop 36 left out and could mend, and probe 21's findings (on 8635e3d)."""
from __future__ import annotations

import json

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import manifest_lines
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import manifest_lines
    from tests.test_reliability_probe13 import FAST, _pictures


@pytest.mark.parametrize("size", ["1", "2"])
def test_a_jobs_first_loss_that_is_not_finite_is_said_in_the_runs_words(tmp_path, monkeypatch, capsys, size):
    """A job whose first loss was non-finite was "the loss became non-finite after 0 iterations", where run says
    "the loss is not finite at the first iteration" (stop 36's left-out)."""
    from styleengine.engine import loop, stylise as stylise_module

    _pictures(tmp_path)
    real = loop.Result

    def never_finite(image, iterations, stopped, records, distances=None, **kwargs):
        return real(image, 0, "non-finite loss", [], distances, **kwargs)

    monkeypatch.setattr(stylise_module, "Result", never_finite)
    monkeypatch.setattr(loop, "Result", never_finite)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"content": "c.png", "styles": ["s.png"], "output": f"{n}.png"}) + "\n"
                            for n in range(int(size))))
    code, _, _ = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "out", "--batch-size", size,
                         *FAST)
    lines = manifest_lines(tmp_path / "out")
    assert code == 1 and [line["status"] for line in lines] == ["failed"] * int(size), lines
    assert all(line["reason"].startswith("the loss is not finite at the first iteration") for line in lines), lines


@pytest.mark.parametrize("argv, said", [
    (["--tv-weight", "-1"], "error: --tv-weight must be a finite number >= 0"),
    (["--iters", "-3"], "error: --iters must be >= 0"),
    (["--optimizer", "adam", "--lr", "0"], "error: --lr must be a finite number > 0"),
    (["--seed", "-1"], "error: --seed must be at least 0"),
])
def test_a_settings_fault_names_the_flag(tmp_path, monkeypatch, capsys, argv, said):
    """One setting's fault was said by the setting's name ("tv weight must be ...", "learning rate ..."), not the
    flag the user typed (stop 36's left-out)."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, *argv)
    assert code == 1 and err.startswith(said), err


@pytest.mark.parametrize("row, said", [
    ('{"content": "c.png", "styles": ["s.png"], "tv-weight": -1}', "line 1: tv-weight must be"),
    ('{"content": "c.png", "styles": ["s.png"], "iters": -1}', "line 1: iters must be"),
    ('{"content": "c.png", "styles": ["s.png"], "iterations": -1}', "line 1: iterations must be"),
])
def test_a_jobs_settings_fault_names_the_key_as_typed(tmp_path, monkeypatch, capsys, row, said):
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(row + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST)
    reasons = [line["reason"] for line in manifest_lines(tmp_path / "b")]
    assert code == 1 and len(reasons) == 1 and said in reasons[0] and said in out + err, (reasons, out, err)


def test_the_apis_settings_fault_names_the_keyword(tmp_path):
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    with pytest.raises(ConfigError, match=r"^iterations must be >= 0"):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=-1)


def test_a_jobs_recipe_weight_is_said_by_its_key_as_typed(tmp_path):
    from styleengine.engine.jobs import load_jobs
    from styleengine.errors import ConfigError

    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "recipe": "neural-style-pt", '
                                      '"tv-weight": 3e38}\n')
    with pytest.raises(ConfigError, match=r"line 1: tv-weight 3e\+38 \(in neural-style-pt's units\)"):
        load_jobs(tmp_path / "j.jsonl", tmp_path / "out")
