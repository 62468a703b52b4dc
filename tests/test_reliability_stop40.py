"""Issue 23, stop 40: stop 39's known limits mended, and probe 30's findings (on c005f36)."""
from __future__ import annotations

import json

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures


@pytest.mark.parametrize(("key", "value", "said"), [
    ("Style", 5, "bad Style 5"), ("STYLES", {"a": 1}, "bad STYLES {'a': 1}"), ("Content", 5, "bad Content 5"),
    ("Output", [1], "bad Output [1]"), ("Id", 1.5, "bad Id 1.5"), ("Output", "  ", "Output is empty")])
def test_a_jobs_files_content_style_output_or_id_key_is_said_as_typed(tmp_path, monkeypatch, capsys, key, value,
                                                                      said):
    """A jobs file's `Content`, `Style` or `Styles` key of a bad value was said lower-cased (`bad styles 5` for
    `"Style": 5`; stop 39's known limit), unlike the setting keys: each is said as the file has it."""
    _pictures(tmp_path)
    row = {"content": "c.png", "style": "s.png", "output": "a.png"}
    row = {k: v for k, v in row.items() if k != key.lower().rstrip("s")}
    row[key] = value
    (tmp_path / "j.jsonl").write_text(json.dumps(row) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    assert f"line 1: {said}" in one_error_line(code, err), err
