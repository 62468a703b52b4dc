"""Issue 23, the probe after the last one: each defect it found, as the case a careless or hostile user
tried (D7, D8a-g, the cache on a full disk, and what the fresh probe turned up)."""
from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from styleengine.export import cache

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_cli_export import NO_CHECK, PORTABLE
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_cli_export import NO_CHECK, PORTABLE


# ------------------------------------------------------------------ D7: export, a signal after publishing

def test_sigterm_after_the_export_is_published_is_a_success(tmp_path, monkeypatch, capsys):
    from styleengine import cli_export

    real = cli_export._publish

    def publish_then_signal(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the folder is whole: `timeout` fired a moment too late

    monkeypatch.setattr(cli_export, "_publish", publish_then_signal)
    out = tmp_path / "graphs"
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK)
    assert code == 0 and "Traceback" not in err, err
    assert "the export is complete" in " ".join(err.split())
    meta = json.loads((out / cache.META_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == PORTABLE and cache.files_match(out, meta["files"])
    assert not [p for p in tmp_path.rglob(".*")]  # no staging folder left


# ------------------------------------------------------------------ D8a: a weights file that is no file

@pytest.fixture
def pics(tmp_path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, shape in (("content", (48, 40, 3)), ("style", (56, 56, 3))):
        out[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(out[name])
    return out


FAST = ["--model", "vgg16", "--size", "48", "--iters", "2", "--device", "cpu"]


@pytest.mark.parametrize("kind,says", [("device", "is a character device"), ("fifo", "is a FIFO"),
                                       ("folder", "is a directory"), ("dangling", "broken symbolic link"),
                                       ("missing", "was not found")])
def test_weights_that_are_not_a_file_say_what_they_are(tmp_path, monkeypatch, capsys, pics, kind, says):
    where = {"device": Path("/dev/zero"), "fifo": tmp_path / "w.pth", "folder": tmp_path,
             "dangling": tmp_path / "link.pth", "missing": tmp_path / "missing.pth"}[kind]
    if kind == "fifo":
        os.mkfifo(where)
    if kind == "dangling":
        where.symlink_to(tmp_path / "gone.pth")
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--weights", where)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert says in lines[0] and str(where) in lines[0] and not out.exists()
