"""Issue 23: what probes 6-9 left as known (the lead's list at the end of stop 32), each a test that failed on
6f8deaf."""
from __future__ import annotations

import json

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


@pytest.mark.parametrize("key", ["id", "recipe", "blend", "lr", "style_weight"])
def test_a_jsonl_jobs_empty_text_is_refused_where_a_csv_blank_is_the_batchs_value(tmp_path, monkeypatch, capsys, key):
    """`"id": ""`, `"recipe": ""` and `"blend": ""` quietly meant the default in a JSONL job (left from probe 7):
    a JSON "" is a value given as nothing, as `"init": ""` and `"output": ""` already said."""
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", key: " "}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
    line = one_error_line(code, err)
    assert "line 1" in line and f"{key} is empty" in line
    (tmp_path / "jobs.csv").write_text(f"content,styles,{key}\nc.png,s.png,\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.csv", "--out", tmp_path / "out2",
                           "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
    assert code == 0, err


def test_a_batch_whose_jobs_all_bring_weights_never_loads_the_base_weights(tmp_path, monkeypatch, capsys):
    """`batch` measured `auto` on the base --weights (imagenet: a download) before any job, even when every job
    gives its own weights: offline it failed at start (left from probe 9)."""
    import styleengine.model.weights as weights
    from styleengine.engine import autotune

    def no_download(model):
        raise AssertionError(f"the base weights ({model}) were loaded")

    monkeypatch.setattr(weights, "imagenet_checkpoint", no_download)
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    monkeypatch.setattr(autotune, "_memo", {})
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", "weights": "random"}))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--size", "40", "--iters", "1", "--backend", "torch", "--precision", "fp32")
    assert code == 0, err
    assert "auto: torch fp32" in err and "1 ok" in err


def test_a_jobs_settings_mistake_names_its_line(tmp_path, monkeypatch, capsys):
    """A job whose settings do not go together (a style mask without a content mask, two styles with one mask)
    failed with a reason that did not say which line of the jobs file it came from (left from probe 9)."""
    _pictures(tmp_path)
    Image.new("L", (48, 40), 255).save(tmp_path / "m.png")
    lines = [{"content": "c.png", "styles": "s.png"},
             {"content": "c.png", "styles": ["s.png", "s.png"], "content_mask": "m.png", "output": "two.png"}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
    assert code == 1 and "1 ok" in err
    failed = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
              if json.loads(line)["status"] == "failed"]
    assert len(failed) == 1 and f"{tmp_path / 'jobs.jsonl'} line 2: " in failed[0]["reason"]
    assert "mask" in failed[0]["reason"]


def test_tune_says_why_its_record_was_not_kept(tmp_path, monkeypatch, capsys):
    """A FIFO where the record's lock belongs: tune said "tune.json cannot be written", which was not the problem
    (left from probe 8); it now names the lock and what it is."""
    import os

    from styleengine.engine import autotune

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    os.mkfifo(tmp_path / "cache" / ".tune.json.lock")
    autotune._memo.clear()
    code, out, err = run_cli(monkeypatch, capsys, "tune", "--size", "40", "--weights", "random", "--model", "vgg16",
                             "--backend", "torch", "--precision", "fp32", "--device", "cpu")
    assert code == 0, err
    assert "could not keep the tuning record in" in err and ".tune.json.lock: not a regular file" in err, err
    assert err.count("tune.json") <= 3, err  # one line, paths whole (stop 39: autotune's warning, not tune's too)
