"""A jobs file's recipe, mask and loss-option keys (issue 24): parsed like the other per-job settings, paths
relative to the jobs file, bad values one line naming the line (CPU, tiny images, random weights)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleengine.engine import batch as engine
from styleengine.engine.manifest import settings_hash
from styleengine.engine.stylise import Settings
from styleengine.errors import ConfigError

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_batch import FAST, manifest, picture
    from test_cli import run_cli
except ModuleNotFoundError:
    from tests.test_batch import FAST, manifest, picture
    from tests.test_cli import run_cli


def _mask(path: Path, shape: tuple[int, int], left: bool) -> Path:
    """White on the left (or right) half, black elsewhere."""
    array = np.zeros(shape, np.uint8)
    half = shape[1] // 2
    array[:, :half] = 255 if left else 0
    array[:, half:] = 0 if left else 255
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """A content, two styles and two complementary masks in tmp_path/in (the jobs file's folder)."""
    where = tmp_path / "in"
    (where / "masks").mkdir(parents=True)
    picture(where / "c.png", (40, 48), 1)
    picture(where / "s1.png", (44, 44), 2)
    picture(where / "s2.png", (44, 52), 3)
    _mask(where / "masks" / "left.png", (40, 48), True)
    _mask(where / "masks" / "right.png", (40, 48), False)
    return where


def _one(folder: Path, job: dict, suffix: str = ".jsonl") -> engine.Job:
    path = folder / f"jobs{suffix}"
    job = {"content": "c.png", "styles": "s1.png", **job}
    if suffix == ".jsonl":
        path.write_text(json.dumps(job) + "\n")
    else:
        path.write_text(",".join(job) + "\n" + ",".join(map(str, job.values())) + "\n")
    (found,) = engine.load_jobs(path, folder.parent / "out")
    return found


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_the_loss_options_are_per_job(folder, suffix):
    job = _one(folder, {"luminance_only": "yes", "normalize_weights": "true", "normalize-gradients": 1}, suffix)
    s = job.settings(Settings())
    assert (s.luminance_only, s.normalize_weights, s.normalize_gradients) == (True, True, True)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_masks_are_relative_to_the_jobs_file(folder, suffix):
    masks = "masks/left.png;masks/right.png"
    job = _one(folder, {"styles": "s1.png;s2.png", "content_mask": masks, "style_masks": masks}, suffix)
    s = job.settings(Settings())
    expected = (str(folder / "masks" / "left.png"), str(folder / "masks" / "right.png"))
    assert s.content_masks == expected and s.style_masks == expected
    assert job.inputs()["content mask 2"] == folder / "masks" / "right.png"  # an output may not overwrite it


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_jobs_recipe_reads_its_weights_in_its_units(folder, suffix):
    job = _one(folder, {"recipe": "neural-style-pt", "style_weight": 200, "iters": 7}, suffix)
    s = job.settings(Settings(size=64))
    assert (s.iterations, s.pooling, s.init, s.lbfgs_max_step, s.size) == (7, "max", "randn", 0.0, 512)
    assert (s.content_weight, s.style_weight) == (10.0, 800.0)  # 5 and 200 in neural-style-pt's units
    plain = _one(folder, {"style_weight": 200}, suffix).settings(Settings())
    assert (plain.style_weight, plain.pooling) == (200.0, Settings().pooling)


@pytest.mark.parametrize("key, value, message", [
    ("recipe", 3, "bad recipe 3 (not a text)"),
    ("recipe", "neural-style", "neural-style-pt"),
    ("luminance_only", "maybe", "bad luminance_only 'maybe'"),
    ("normalize_weights", 2, "bad normalize_weights 2"),
    ("normalize_gradients", [True], "bad normalize_gradients"),
    ("content_mask", 5, "bad content_mask 5"),
    ("style_masks", {"a": 1}, "bad style_masks"),
])
def test_bad_values_are_one_line_with_the_line_number(folder, monkeypatch, capsys, key, value, message):
    good = {"content": "c.png", "style": "s1.png"}
    (folder / "jobs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "output": "b.png",
                                                                            key: value}) + "\n")
    with pytest.raises(ConfigError, match="jobs.jsonl line 2: ") as e:
        engine.load_jobs(folder / "jobs.jsonl", folder.parent / "out")
    assert message in str(e.value) and "\n" not in str(e.value)
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", folder.parent / "out", *FAST)
    assert code == 1 and "line 2" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_masked_job_runs_and_its_masks_decide_its_hash(folder, monkeypatch, capsys):
    jobs = [{"id": "masked", "content": "c.png", "styles": ["s1.png", "s2.png"],
             "content_mask": ["masks/left.png", "masks/right.png"]},
            {"id": "mistyped", "content": "c.png", "styles": ["s1.png", "s2.png"], "content_mask": "masks/left.png",
             "output": "m.png"}]
    (folder / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    out = folder.parent / "out"
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST)
    lines = {line["id"]: line for line in manifest(out)}
    assert code == 1 and lines["masked"]["status"] == "ok", err  # 1: the mistyped job failed, alone
    # said by the job's key, as the file has it
    assert lines["mistyped"]["status"] == "failed" and "1 content_mask files for 2 style images" in \
        lines["mistyped"]["reason"]
    assert (out / "c__s1+s2.png").exists()
    (job,) = [j for j in engine.load_jobs(folder / "jobs.jsonl", out) if j.id == "masked"]
    before = settings_hash(job, job.settings(Settings()), {})
    _mask(folder / "masks" / "left.png", (40, 48), False)
    assert settings_hash(job, job.settings(Settings()), {}) != before  # a changed mask is a changed picture


def test_the_batchs_masks_serve_every_job_and_are_its_inputs(folder, monkeypatch, capsys):
    masks = f"{folder / 'masks' / 'left.png'},{folder / 'masks' / 'right.png'}"
    (folder / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": ["s1.png", "s2.png"]}) + "\n")
    out = folder.parent / "out"
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST,
                           "--content-mask", masks)
    assert code == 0, err
    assert [line["status"] for line in manifest(out)] == ["ok"]
    (folder / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": ["s1.png", "s2.png"],
                                                   "output": "masks/left.png"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", folder, *FAST,
                           "--content-mask", masks)
    assert code == 1 and "content mask 1" in err and len(err.strip().splitlines()) == 1
