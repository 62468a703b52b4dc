"""Issue 24, stop 42: probe 35b's serve findings (on e476fb8)."""
from __future__ import annotations

import fcntl
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures

from styleengine.engine import manifest as manifest_module  # noqa: E402
from styleengine.engine.batch import LOCK_FILE, MANIFEST  # noqa: E402
from styleengine.serve.jobs import FolderBusy, JobStore  # noqa: E402


def test_the_folder_lock_says_what_holds_it(tmp_path, monkeypatch, capsys):
    """`batch --out D/results` while a server held that folder said "another batch is running", and `serve
    --results-dir SV` while a batch ran on SV/results said "another server uses SV" (probe 35b). The lock file
    says what took it; one whose holder is not known says both."""
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png"}) + "\n")
    store = JobStore(tmp_path / "D")
    try:
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out",
                                 tmp_path / "D" / "results", *FAST)
        line = one_error_line(code, err)
        assert "another server is running on" in line and "stop it or use another --out" in line, line
    finally:
        store.close()
    (tmp_path / "SV" / "results").mkdir(parents=True)
    with manifest_module.locked(tmp_path / "SV" / "results"):
        with pytest.raises(FolderBusy, match="another batch is running on .*; wait for it to finish or use "
                                             "another --results-dir"):
            JobStore(tmp_path / "SV")
    (tmp_path / "SV" / "results" / LOCK_FILE).write_bytes(b"")
    with open(tmp_path / "SV" / "results" / LOCK_FILE, "rb") as held:  # a holder that has not said what it is
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FolderBusy, match="another batch or server is running on"):
            JobStore(tmp_path / "SV")
    assert not (tmp_path / "SV" / "results" / MANIFEST).exists()
