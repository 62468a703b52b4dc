"""Issue 23, stop 36: what stop 35 left out and could mend, and probe 18's findings (on 2e8d09b)."""
from __future__ import annotations

import logging
import signal

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from serve_helpers import serve_process
    from test_cli import run_cli
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.serve_helpers import serve_process
    from tests.test_cli import run_cli
    from tests.test_reliability_probe13 import FAST, _pictures


def test_a_serve_log_line_is_one_line_whatever_the_results_folder_is_named(tmp_path):
    """A line break in `--results-dir` split serve's "serving ... from" log line in two (stop 35's left-out)."""
    server, _ = serve_process(tmp_path / "a\nb\x1b[31m")
    try:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    serving = [line for line in out.splitlines() if "earlier results from" in line]
    assert len(serving) == 1 and "a\\nb\\x1b[31m" in serving[0], out
    assert "\x1b[31m" not in out


def test_an_engine_warning_on_the_console_is_one_line(capsys):
    """The console's "warning: ..." said a name's line break raw (a path with a newline cut the line)."""
    from rich.console import Console

    from styleengine.cli_job import warnings_on

    with warnings_on(Console(stderr=True, markup=False)):
        logging.getLogger("styleengine.test").warning("could not remove %s: %s", "x\ny\x1b[2J", "Permission denied")
    err = capsys.readouterr().err
    assert err.strip() == "warning: could not remove x\\ny\\x1b[2J: Permission denied", err


def test_a_log_lines_traceback_keeps_its_lines():
    from styleengine.errors import OneLineFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed on %s", ("a\nb",), exc_info=True)
        record.exc_info = __import__("sys").exc_info()
    text = OneLineFormatter("%(message)s").format(record)
    assert text.splitlines()[0] == "failed on a\\nb" and "Traceback" in text and "ValueError: boom" in text


@pytest.mark.parametrize("side, stretched", [((48, 40), False), ((49, 40), False), ((40, 40), True)])
def test_an_init_of_another_aspect_is_said_to_be_stretched(tmp_path, monkeypatch, capsys, side, stretched):
    """An --init of another aspect ratio was stretched to the picture without a word (stop 35's left-out); one
    within 2% (a side rounded) is not worth one."""
    _pictures(tmp_path)  # c.png is 48x40
    Image.new("RGB", side, (90, 90, 90)).save(tmp_path / "i.png")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--init", tmp_path / "i.png")
    assert code == 0, err
    said = [line for line in err.splitlines() if "stretched" in line]
    assert len(said) == int(stretched), err
    if stretched:
        assert said[0].startswith("warning: init image") and "40x40 px" in said[0] and "40x33" in said[0], said


def test_a_job_a_killed_server_left_says_so_after_a_restart(tmp_path):
    """After a SIGKILL, a restarted server removed the uploads of the jobs in flight and answered 404 for them (stop
    35's left-out): a client polling its id never learnt what became of it. Now each is failed, and says why,
    in this server and the next."""
    from styleengine.serve.job import new_id
    from styleengine.serve.jobs import JobStore

    root = tmp_path / "srv"
    JobStore(root).close()
    queued, unrecorded = new_id(), new_id()  # one never ran; one killed between its PNG and its manifest line
    (root / "uploads" / queued).mkdir()
    (root / "uploads" / queued / "content").write_bytes(b"an upload")
    Image.new("RGB", (8, 8)).save(root / "results" / f"{unrecorded}.png")
    for _ in range(2):  # the next server reads it from the manifest
        store = JobStore(root)
        try:
            for job_id in (queued, unrecorded):
                job = store.jobs[job_id].to_json()
                assert job["status"] == "failed" and "server was killed" in job["reason"], job
        finally:
            store.close()
    assert not list((root / "uploads").iterdir()) and not (root / "results" / f"{unrecorded}.png").exists()
