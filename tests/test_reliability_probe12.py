"""Issue 23, probe 12 (on a0b96e1), the last before closing: today's fixes from other angles, and ground no probe had
tried (signals at the exact end of each command, the form's extreme numbers, every PIL suffix, serve after SIGKILL,
empty layer lists, other scripts' digits). About 150 cases; the defects it found are tests here."""
from __future__ import annotations

import json
import os
import signal

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


# ------------------------------------------------------------------ D1: a signal just after a command's last line

def test_a_signal_right_after_a_commands_work_changes_no_exit_code(tmp_path, monkeypatch, capsys):
    """A SIGTERM sent as export's "wrote ..." line appeared exited 143 ("error: interrupted"), batch's after its
    summary 143 silently: the command had not returned yet. Every command now tells `signals` it has ended."""
    from rich.console import Console

    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png"}) + "\n")

    say = Console.print

    def print_then_signal(self, *args, **kwargs):
        say(self, *args, **kwargs)
        if args and str(args[0]).startswith("1 ok"):  # the summary: every job recorded
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Console, "print", print_then_signal)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch")
    assert code == 0 and "interrupted" not in err, err


# ------------------------------------------------------------------ D3: every command's own whole numbers

@pytest.mark.parametrize("argv", [["serve", "--port", "80_80"], ["visualize", "--class", "1_0", "-o", "v.png"],
                                  ["export", "--seed", "4_2", "-o", "e"], ["bench", "--iters", "1_0"],
                                  ["run", "c.png", "s.png", "-o", "o.png", "--lr", "1_0"],
                                  ["run", "c.png", "s.png", "-o", "o.png", "--size", "\u0664\u0668"]])
def test_every_number_option_is_read_as_a_jobs_file_reads_it(tmp_path, monkeypatch, capsys, argv):
    """`serve --port 80_80` listened on 8080, `visualize --class 1_0` ran class 10, `export --seed 4_2` wrote seed
    42 (the `--size 64_0` fix covered the settings' flags only); `--size` in Arabic-Indic digits ran at 48 px."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    extra = ["--weights", "random"] if argv[0] != "bench" else []
    code, _, err = run_cli(monkeypatch, capsys, *argv, *extra)
    assert "is not a" in one_error_line(code, err) and "number" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "s.png"]


def test_a_jobs_files_digits_of_another_script_are_refused(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", "iters": "\u0662"}))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "40")
    assert "line 1" in one_error_line(code, err) and "bad iters" in err


# ------------------------------------------------------------------ D4: export --force over an earlier export

def test_export_force_over_an_export_never_leaves_a_record_naming_other_graphs(tmp_path, monkeypatch, capsys):
    """SIGKILL while `export --force` replaced an earlier export file by file left the old export.json beside a
    new graph (1 of 17 kills): the record now goes first and comes back last."""
    from styleengine import cli_export
    from styleengine.export import cache

    try:
        from test_cli_export import NO_CHECK
    except ModuleNotFoundError:
        from tests.test_cli_export import NO_CHECK

    out = tmp_path / "e"
    assert run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK)[0] == 0
    staged = _staged(tmp_path, monkeypatch, capsys, NO_CHECK)
    real = os.replace

    def killed_after_the_first_graph(src, dst):
        real(src, dst)
        if str(dst).endswith(cache.GRAPH_FILES[0]):
            raise SystemExit("killed")  # what SIGKILL leaves: nothing after this line runs

    monkeypatch.setattr(cli_export.os, "replace", killed_after_the_first_graph)
    with pytest.raises(SystemExit, match="killed"):
        cli_export._publish(staged, out, (*cache.GRAPH_FILES, cache.META_FILE))
    assert not (out / cache.META_FILE).exists()  # no export, rather than a record of the other graphs


def _staged(tmp_path, monkeypatch, capsys, argv):
    """A second export (another seed) built in a folder of its own, as export's staging holds it."""
    other = tmp_path / "other"
    assert run_cli(monkeypatch, capsys, "export", "-o", other, *argv, "--seed", "3")[0] == 0
    return other


# ------------------------------------------------------------------ D5: an empty style layer list

@pytest.mark.parametrize("source", ["flag", "jsonl"])
def test_an_empty_style_layer_list_is_refused(tmp_path, monkeypatch, capsys, source):
    """`--style-layers "$LAYERS"` with LAYERS unset (or a JSONL `"style_layers": []`) ran with no style term at all
    and exit 0: the style images did nothing."""
    _pictures(tmp_path)
    fast = ["--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch"]
    if source == "flag":
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--style-layers", "", *fast)
        assert "--style-layers names no layer" in one_error_line(code, err)
        assert not (tmp_path / "o.png").exists()
        return
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"content": "c.png", "styles": "s.png", "style_layers": []}))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out", *fast)
    assert code == 1 and "line 1: style_layers names no layer" in err, err  # said by the key as typed
