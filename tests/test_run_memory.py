"""benchmarks/run_memory.py: whole `styleengine run` children, each child's own peak RSS."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from styleengine.benchmarks import run_memory


def test_each_run_is_measured_as_its_own_child(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("content", "style"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    out = tmp_path / "memory.json"
    assert run_memory.main([str(tmp_path / "content.png"), str(tmp_path / "style.png"), "--backends", "torch,ort",
                            "--rounds", "1", "--json", str(out), "--weights", "random", "--model", "vgg16",
                            "--size", "48", "--iters", "1", "--device", "cpu"]) == 0
    doc = json.loads(out.read_text())
    for backend in ("torch", "ort"):
        [peak] = doc["peak_rss_bytes"][backend]
        assert 100 * 2**20 < peak < 8 * 2**30  # a Python process with torch loaded, not this one's or 0
        assert doc["wall_s"][backend][0] > 0
    assert doc["command"][:2] == ["styleengine", "run"] and "--weights" in doc["command"]


def test_a_failed_run_says_why_and_keeps_what_was_measured(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="exited 1"):
        run_memory.run_once([str(tmp_path / "missing.png"), str(tmp_path / "missing.png"), "-o",
                             str(tmp_path / "o.png"), "--weights", "random"])
    out = tmp_path / "memory.json"
    assert run_memory.main([str(tmp_path / "missing.png"), str(tmp_path / "missing.png"), "--rounds", "1",
                            "--json", str(out), "--weights", "random"]) == 1
    doc = json.loads(out.read_text())
    assert "not found" in doc["error"] and doc["peak_rss_bytes"]["torch"] == []
    assert capsys.readouterr().err.startswith("error: styleengine run")
