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
