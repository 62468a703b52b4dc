"""Issue 23, stop 36: what stop 35 left out and could mend, and probe 18's findings (on 2e8d09b)."""
from __future__ import annotations

import logging
import signal

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from serve_helpers import serve_process
except ModuleNotFoundError:
    from tests.serve_helpers import serve_process


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
