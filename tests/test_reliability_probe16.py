"""Issue 23, probe 16 (on dc9f497): the neighbours of probe 15's fixes, and what the last stop left out and could
mend cheaply. The defects are tests here (the video ones are in test_video.py, beside their fixtures)."""
from __future__ import annotations

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line

FAST = ["--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch"]


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


# ------------------------------------------------------------------ a weights file named like a word

@pytest.mark.parametrize("dry", [False, True])
def test_a_weights_file_named_like_a_word_says_what_was_typed(tmp_path, monkeypatch, capsys, dry):
    """`--weights ./random` said "weights file random was not found" (Path drops the "./"), and the dry run said
    it in other words ("weights file not found (or not a file)")."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "-o", out, *FAST[2:], "--weights",
                           "./random", *(["--dry-run"] if dry else []))
    line = one_error_line(code, err)
    assert "weights file ./random was not found" in line and "'random'" in line, line
    assert not out.exists()


def test_the_api_says_the_weights_file_as_given(tmp_path):
    from styleengine import api
    from styleengine.errors import WeightsError

    _pictures(tmp_path)
    with pytest.raises(WeightsError, match=r"weights file \./imagenet was not found \(the imagenet weights"):
        api.stylise(tmp_path / "c.png", [tmp_path / "s.png"], weights="./imagenet", iterations=1, size=40)
