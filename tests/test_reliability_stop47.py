"""Issue 23, stop 47: probe 46a's last minor findings and probe 47's (on 064bbf4)."""
from __future__ import annotations

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


def test_tune_says_what_this_machine_cannot_run_before_timing(monkeypatch, capsys):
    """`tune --precision fp16 --backend ort` on a machine without a GPU printed "timing the candidates ..."
    and then the refusal: two lines for a user error (probe 46a, 12). It is one line, as run says it."""
    from styleengine.engine import machine

    monkeypatch.setattr(machine, "probe", lambda: machine.Machine(cuda=False, ort_providers=("cpu",),
                                                                  nnpack=True, tensorrt=False))
    monkeypatch.setattr("styleengine.engine.autotune.probe", machine.probe)
    code, out, err = run_cli(monkeypatch, capsys, "tune", "--size", "40", "--weights", "random", "--model", "vgg16",
                             "--precision", "fp16", "--backend", "ort")
    assert "no fp16 convolutions" in one_error_line(code, err) and not out
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text, name", [("", "e.jsonl"), ("\n\n", "b.jsonl"), ("content,style\n", "h.csv")])
def test_a_jobs_file_with_no_jobs_is_refused_as_an_empty_contents_is(tmp_path, monkeypatch, capsys, text, name):
    """An empty jobs file (or blank lines, or a CSV header) made --out and ended "0 ok ...; manifest
    out/manifest.jsonl", a manifest never written (probe 47b, 1); an empty --contents is refused in one line."""
    (tmp_path / name).write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / name, "--out", tmp_path / "out", "--size", "40",
                           "--iters", "2", "--weights", "random")
    assert one_error_line(code, err).endswith("holds no jobs") and not (tmp_path / "out").exists()
