"""Probe 18's weights findings (fix 18w): a weights file that `serve`, `batch` or `tune` cannot use for its model
(not readable, a suffix no loader takes, another network's) is one line before any work. They checked only that
the file was there: serve took every job (202) and failed it, batch failed every job into a manifest, and tune
printed "timing the candidates" first."""
from __future__ import annotations

import json
import os

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from conftest import shared_vgg16_path
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import _pictures
except ModuleNotFoundError:
    from tests.conftest import shared_vgg16_path
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import _pictures

QUICK = ["--size", "40", "--iters", "1", "--backend", "torch"]
BAD = ["garbage", "suffix", "vgg16 under vgg19"]


@pytest.fixture(params=BAD)
def bad_weights(request, tmp_path):
    """(a weights file the default model vgg19 cannot use, what its error line says)."""
    _pictures(tmp_path)
    if request.param == "garbage":
        path = tmp_path / "g.safetensors"
        path.write_bytes(os.urandom(1000))
        return path, "cannot read safetensors file"
    if request.param == "suffix":
        return tmp_path / "c.png", "use .safetensors, .pth, .pt or .bin"
    shared = shared_vgg16_path()
    if shared is None:
        pytest.skip("the shared VGG16 file (../shared/weights) is not on this machine")
    return shared, "missing key"


def test_serve_refuses_weights_its_model_cannot_use_at_its_start(tmp_path, monkeypatch, capsys, bad_weights):
    """`serve --weights g.safetensors` started and took every POST (202), each job then failing "cannot read
    safetensors file"; so did `--weights c.png` and the VGG16 file under the default vgg19."""
    from styleengine.serve import app

    def no_server(*args, **kwargs):
        raise SystemExit(99)  # got as far as opening the server's folder: the weights were taken

    monkeypatch.setattr(app, "open_store", no_server)
    weights, says = bad_weights
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--weights", weights, *QUICK, "--port", "59997",
                           "--results-dir", tmp_path / "srv")
    assert says in one_error_line(code, err)
    assert not (tmp_path / "srv").exists()


def test_batch_refuses_its_own_weights_its_model_cannot_use_before_any_work(tmp_path, monkeypatch, capsys,
                                                                         bad_weights):
    """`batch --weights g.safetensors` ran every job into that failure and made --out and its manifest."""
    weights, says = bad_weights
    (tmp_path / "C").mkdir()
    (tmp_path / "S").mkdir()
    (tmp_path / "c.png").rename(tmp_path / "C" / "c.png")
    (tmp_path / "s.png").rename(tmp_path / "S" / "s.png")
    if weights == tmp_path / "c.png":
        weights = tmp_path / "C" / "c.png"
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "C", "--styles", tmp_path / "S",
                           "--out", tmp_path / "b", "--weights", weights, *QUICK)
    assert says in one_error_line(code, err)
    assert not (tmp_path / "b").exists()


def test_tune_says_weights_its_model_cannot_use_before_it_times(tmp_path, monkeypatch, capsys, bad_weights):
    """`tune --weights g.safetensors` (or the VGG16 file under vgg19) printed "timing the candidates ..." and only
    then the error; README says it is said before."""
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    weights, says = bad_weights
    code, _, err = run_cli(monkeypatch, capsys, "tune", "--weights", weights, "--size", "40")
    assert says in one_error_line(code, err) and "timing" not in err, err


def test_a_jobs_files_own_bad_weights_fail_that_job_alone(tmp_path, monkeypatch, capsys):
    """The batch's --weights are checked at its start; a job's own weights stay that job's (the others run)."""
    _pictures(tmp_path)
    (tmp_path / "g.safetensors").write_bytes(os.urandom(1000))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"content": "c.png", "styles": "s.png", "output": "a.png"}) + "\n"
                    + json.dumps({"content": "c.png", "styles": "s.png", "output": "b.png",
                                  "weights": "g.safetensors"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "out", "--weights", "random",
                           *QUICK)
    assert code == 1 and "1 ok, 0 skipped, 1 failed" in err, err
    assert "cannot read safetensors file" in err and (tmp_path / "out" / "a.png").is_file()


def test_the_batchs_checked_weights_are_loaded_once(tmp_path, monkeypatch, capsys):
    """The start's check loads the file as the jobs would; the jobs use what it loaded, not a second copy."""
    shared = shared_vgg16_path()
    if shared is None:
        pytest.skip("the shared VGG16 file (../shared/weights) is not on this machine")
    from styleengine.engine import stylise

    loads = []
    real = stylise.load_weights

    def counted(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(stylise, "load_weights", counted)
    _pictures(tmp_path)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"content": "c.png", "styles": "s.png", "output": f"{n}.png"}) + "\n"
                            for n in "ab"))
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "out", "--weights", shared,
                           "--model", "vgg16", *QUICK)
    assert code == 0 and "2 ok" in err, err
    assert len(loads) == 1, loads


def test_a_servers_checked_weights_are_the_ones_its_jobs_use(tmp_path, monkeypatch, capsys):
    """serve hands the weights its start loaded to its job store's warm engine: they are not loaded again."""
    shared = shared_vgg16_path()
    if shared is None:
        pytest.skip("the shared VGG16 file (../shared/weights) is not on this machine")
    from styleengine.engine import batch
    from styleengine.engine.settings import Settings
    from styleengine.serve import app

    given = []

    def no_server(config, warm=None):
        given.append((config, warm))
        raise SystemExit(99)

    monkeypatch.setattr(app, "open_store", no_server)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--weights", shared, "--model", "vgg16", *QUICK,
                           "--port", "59996", "--results-dir", tmp_path / "srv")
    assert code == 99 and given, err
    config, warm = given[0]
    assert isinstance(warm, batch.Warm)

    def not_again(settings: Settings):
        raise AssertionError("loaded a second time")

    monkeypatch.setattr(batch, "load_run_weights", not_again)
    assert warm.weights(config.settings).source == str(shared)
