"""Issue 23: what probe 6 left, and what probes 7 and 8 found on 2a401fb. Each defect is a test here, as the case a
careless or hostile user tried."""
from __future__ import annotations

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


# ------------------------------------------------------------------ an empty path names its flag, not '.'

@pytest.mark.parametrize("argv, named", [
    (["run", "c.png", "s.png", "-o", ""], "--output"),
    (["run", "", "s.png", "-o", "x.png"], "the content image path"),
    (["run", "c.png", "s.png", "-o", "x.png", "--trace", " "], "--trace"),
    (["texture", "s.png", "-o", ""], "--output"),
    (["invert", "", "-o", "x.png"], "the picture path"),
    (["invert", "c.png", "-o", "x.png", "--distances", ""], "--distances"),
    (["visualize", "--class", "1", "-o", ""], "--output"),
    (["video", "", "s.png", "-o", "x.mp4"], "the input video path"),
    (["video", "v.mp4", "s.png", "-o", ""], "--output"),
    (["batch", "", "--out", "o"], "the jobs file path"),
    (["bench", "--json", ""], "--json"),
    (["bench", "--csv", ""], "--csv"),
    (["bench", "--plot", ""], "--plot"),
    (["bench", "--report", ""], "--report"),
])
def test_an_empty_path_is_refused_naming_its_flag(tmp_path, monkeypatch, capsys, argv, named):
    """`-o "$OUT"` with OUT unset said "cannot write .: unknown image suffix" and an empty content "cannot read
    image .: it is a directory": the working folder, which the user never named (probe 6)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    line = one_error_line(code, err)
    assert line == f"error: {named} is empty; name a file", line
