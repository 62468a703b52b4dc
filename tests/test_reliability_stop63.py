"""Stop 63: probe 62a's two findings (an .avi whose B-frames start late, a zeroed manifest's end that is no status)."""

from __future__ import annotations

import json

import pytest

try:
    from test_reliability_stop43 import three_jobs_batch
except ModuleNotFoundError:
    from tests.test_reliability_stop43 import three_jobs_batch

LINE = json.dumps({"boxes": [[i, i, i + 9, i + 9] for i in range(30)], "label": "cat"}).encode()


@pytest.mark.parametrize("data", [b"\0" * 4096 + LINE[-6:] + b"\n", b"\0" * 4096 + b"z" * 30 + b'"}\n',
                                  b"\0" * 4096 + b'"status": "cat"}\n'], ids=["cat", "letters", "status-cat"])
def test_a_zeroed_manifest_ending_in_a_word_no_status_of_ours_is_refused(tmp_path, monkeypatch, capsys, data):
    """After a zeroed first block, any lower-case word, a quote and a brace was taken as the end of a line of
    ours: another tool's file was appended to (probe 62a, 2). Ours end in a status (ok, failed, skipped)."""
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(data)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 1 and "is not a manifest styleengine wrote" in err, err
    assert manifest.read_bytes() == data
