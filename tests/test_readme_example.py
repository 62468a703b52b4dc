"""The README's notebook example runs as written (random weights, 40 px, 2 iterations: only the settings line
is swapped)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS_LINE = "settings = dict(size=512, iterations=300)"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if "styleengine.stylise(" in b]
    assert len(found) == 1, "the README has one notebook example calling styleengine.stylise"
    return found[0]


def test_readme_notebook_example_runs(tmp_path, monkeypatch):
    code = python_example()
    assert SETTINGS_LINE in code
    code = code.replace(SETTINGS_LINE, 'settings = dict(size=40, iterations=2, weights="random", model="vgg16", '
                                       'device="cpu", backend="torch")')
    rng = np.random.default_rng(0)
    for name in ("photo.jpg", "painting.jpg"):
        Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})
    with Image.open(tmp_path / "photo_painted.png") as out:
        assert out.size == (40, 34) and out.mode == "RGB"
