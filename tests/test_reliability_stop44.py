"""Issue 23, stop 44: the limits stop 43 left in README, closed (on c99ac9c)."""
from __future__ import annotations

import os

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
    from test_reliability_stop43 import three_jobs_batch
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures
    from tests.test_reliability_stop43 import three_jobs_batch


def _swap(out) -> None:
    """`mv out out.moved; mkdir out; echo mine > out/b.png`."""
    out.rename(out.parent / "out.moved")
    out.mkdir()
    (out / "b.png").write_text("the user's")


def test_a_folder_swapped_between_the_check_and_the_picture_takes_nothing(tmp_path, monkeypatch, capsys):
    """A batch checks that --out holds its lock, then wrote the picture by its name: a folder put there within
    that moment took the picture, over the user's file of that name (probe 41a forced it; a README limit). The
    picture is written at the locked folder, wherever it went."""
    from styleengine.engine import batch as engine

    real = engine.images.save_image
    out = tmp_path / "out"

    def save_image(image, path, *args, **kwargs):
        if os.path.basename(path) == "b.png" and not (tmp_path / "out.moved").exists():
            _swap(out)  # after the check, before the write
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(engine.images, "save_image", save_image)
    line = one_error_line(*three_jobs_batch(tmp_path, monkeypatch, capsys))
    assert "job b's picture is in the folder that was at" in line, line
    assert (out / "b.png").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert {"a.png", "b.png"} <= {p.name for p in (tmp_path / "out.moved").iterdir()}


def test_a_folder_swapped_between_the_check_and_the_line_takes_nothing(tmp_path, monkeypatch):
    """The same moment before a manifest line: the line went into the folder put at --out's name."""
    from styleengine.engine import manifest

    out = tmp_path / "out"
    out.mkdir()
    with manifest.locked(out) as lock:
        m = manifest.Manifest(out / "manifest.jsonl")
        m.pin(lock)
        real = m.check_home

        def check_home():
            real()
            _swap(out)

        monkeypatch.setattr(m, "check_home", check_home)
        m.append({"id": "b", "status": "ok"})
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert (tmp_path / "out.moved" / "manifest.jsonl").read_text().count('"id": "b"') == 1


@pytest.mark.parametrize("data", [b" " * 16, b"\t" * 16, b"\x0b\x0c\x1c\x1d\x1e\x1f", b"\n\nbatch   \t\t",
                                  b"batch\x0b\x0c", b"\r\r\rserver\r\r\r"])
def test_a_lock_file_of_blanks_of_any_kind_is_a_users_file(tmp_path, data):
    """A file of up to 16 bytes of tabs, form feeds or spaces, or a holder's name padded with them, at a lock's
    name was taken, emptied and removed (Python's strip() takes every ASCII blank; probe 44a, 1). Only a holder's
    name, with the line end an editor adds, is a lock."""
    from styleengine.engine import manifest
    from styleengine.errors import UserError

    (tmp_path / manifest.LOCK_FILE).write_bytes(data)
    with pytest.raises(UserError, match="is a file of other data, not a lock; move it away"):
        manifest.take_lock(tmp_path, "batch", "--out")
    assert (tmp_path / manifest.LOCK_FILE).read_bytes() == data


@pytest.mark.parametrize("data", [b"", b"batch", b"batch\n", b"server\r\n", b"\n"])
def test_a_lock_file_as_a_holder_or_an_editor_left_it_is_taken(tmp_path, data):
    from styleengine.engine import manifest

    (tmp_path / manifest.LOCK_FILE).write_bytes(data)
    with manifest.locked(tmp_path):
        assert (tmp_path / manifest.LOCK_FILE).read_bytes() == b"batch"
    assert not (tmp_path / manifest.LOCK_FILE).exists()


def test_the_apis_path_settings_expand_as_their_flags_do(tmp_path, monkeypatch):
    """`stylise(..., init="~/start.png")` said "init image ~/start.png was not found" (and a mask, and
    `weights="$HOME/w.pth"`), where `--init=~/start.png` runs: a notebook's string is not shell-expanded either
    (probe 44b, 3)."""
    import numpy as np

    import styleengine
    from styleengine.api import settings_of
    from styleengine.errors import ConfigError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PICS", str(tmp_path / "pics"))
    config = settings_of({"init": "~/start.png", "content_masks": ["$PICS/m.png"], "weights": "$HOME/w.pth",
                          "style_masks": ("~/s.png",)})
    assert config.init == str(tmp_path / "start.png") and config.weights == str(tmp_path / "w.pth")
    assert config.content_masks == (str(tmp_path / "pics" / "m.png"),)
    assert config.style_masks == (str(tmp_path / "s.png"),)
    assert settings_of({"init": "content", "weights": "random"}).init == "content"
    with pytest.raises(ConfigError, match=r"^init '\$NOPE/x.png': the variable \$NOPE is not set"):
        settings_of({"init": "$NOPE/x.png"})
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(pixels).save(tmp_path / "start.png")
    out = styleengine.stylise(pixels, pixels, size=32, iterations=1, weights="random", model="vgg16",
                              backend="torch", init="~/start.png")
    assert out.size == (32, 32)


@pytest.mark.parametrize("callback", [lambda record: None, lambda: None, lambda a, b, c: None])
def test_the_api_refuses_a_callback_of_the_wrong_arguments_before_any_work(callback, monkeypatch):
    """`callback=lambda record: ...` was a raw TypeError at the first iteration, after the weights were loaded and
    the step built (probe 44b, 4)."""
    import numpy as np

    import styleengine
    from styleengine import api

    monkeypatch.setattr(api, "run", lambda *a, **k: pytest.fail("work began"))
    pixels = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match=r"^callback must take two arguments \(record, current\); a lambda takes"):
        styleengine.stylise(pixels, pixels, size=32, iterations=1, weights="random", callback=callback)


@pytest.mark.parametrize("kind", ["file", "fifo", "broken link"])
def test_a_file_in_the_way_of_a_cache_folder_is_said_as_that_before_any_work(tmp_path, monkeypatch, capsys, kind):
    """`<cache>/exports` a file, FIFO or broken link: "(File exists); make it writable", after the weights were
    loaded (probe 44b, 2). It is said before any work, with what to remove; the cache's own write says it too."""
    from styleengine.export import cache

    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(root))
    made = {"file": lambda p: p.write_text("mine"), "fifo": os.mkfifo,
            "broken link": lambda p: p.symlink_to(tmp_path / "nowhere")}
    made[kind](root / "exports")
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--backend", "ort")
    line = one_error_line(code, err)
    assert f"cannot use the cache folder {root}: {root / 'exports'} is" in line and "remove it" in line, line
    assert "stylise" not in err and "writable" not in line
    error = cache._cannot_write(root / "exports" / "key", FileExistsError(17, "File exists"))
    assert f"{root / 'exports'} is" in str(error) and "remove it" in str(error), error


def test_a_dry_run_makes_no_cache_folder(tmp_path, monkeypatch, capsys):
    """`run --dry-run --backend ort` made the cache folder and its parents: a dry run writes nothing (probe 44b,
    5). A cache that cannot be made is refused all the same."""
    _pictures(tmp_path)
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "drc" / "deep" / "c"))
    code, out, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                             tmp_path / "o.png", *FAST, "--backend", "ort", "--dry-run")
    assert code == 0, err
    assert not (tmp_path / "drc").exists()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "deep").write_text("a file")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "ro" / "deep" / "c"))
    code, out, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                             tmp_path / "o.png", *FAST, "--backend", "ort", "--dry-run")
    assert f"{tmp_path / 'ro' / 'deep'} is a file" in one_error_line(code, err)


@pytest.mark.parametrize("command", ["run", "texture", "invert"])
def test_a_json_output_never_replaces_a_users_picture(tmp_path, monkeypatch, capsys, command):
    """`--trace holiday.png` (a slip of the flag) replaced the photo with JSON lines, as did `invert --distances`;
    `bench --json` refused the same slip (probe 44b, 8). A JSON output replaces only JSON text: an earlier trace,
    torn or whole, is replaced."""
    import shutil

    _pictures(tmp_path)
    shutil.copy(tmp_path / "s.png", tmp_path / "holiday.png")
    photo = (tmp_path / "holiday.png").read_bytes()
    flag = "--distances" if command == "invert" else "--trace"
    args = {"run": ["run", tmp_path / "c.png", tmp_path / "s.png"], "texture": ["texture", tmp_path / "s.png"],
            "invert": ["invert", tmp_path / "c.png"]}[command]
    code, _, err = run_cli(monkeypatch, capsys, *args, "-o", tmp_path / "o.png", *FAST, flag,
                           tmp_path / "holiday.png")
    line = one_error_line(code, err)
    assert "a file is there that is not an earlier" in line and "name another file" in line, line
    assert (tmp_path / "holiday.png").read_bytes() == photo and not (tmp_path / "o.png").exists()
    earlier = ('{"layer": "relu4_2", "feature_distance": 0.5, "pixel_rmse": 0.1, "iterations": 1, "model": "vgg16", '
               '"weights": "random"}\n' if command == "invert" else
               '{"iteration": 1, "loss": 2.0, "content_loss": 1.0, "style_loss": 1.0, "tv_loss": 0.0, "seconds": 0.1}'
               '\n{"iter')  # an earlier one (a trace torn)
    (tmp_path / "t.jsonl").write_text(earlier)
    code, _, err = run_cli(monkeypatch, capsys, *args, "-o", tmp_path / "o.png", *FAST, flag, tmp_path / "t.jsonl")
    assert code == 0, err
    assert (tmp_path / "t.jsonl").read_text().lstrip().startswith("{")


def test_an_output_that_is_a_link_is_written_through_it(tmp_path, monkeypatch, capsys):
    """`invert --distances /dev/stdout > out.json` replaced the system's /dev/stdout link with a file holding the
    JSON, out.json left empty: the checks followed the link, the atomic write renamed over it (probe 44b, 13). The
    file the link leads to is replaced, never the link."""
    _pictures(tmp_path)
    (tmp_path / "out.json").write_text("")
    (tmp_path / "so").symlink_to(tmp_path / "out.json")
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", *FAST,
                           "--distances", tmp_path / "so")
    assert code == 0, err
    assert (tmp_path / "so").is_symlink() and os.readlink(tmp_path / "so") == str(tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text().lstrip().startswith("{")


def test_a_graph_removed_from_the_cache_as_the_run_begins_is_one_line(tmp_path, monkeypatch):
    """`rm -rf` of the cache a second after a `--backend ort` run exported into it: two chained ONNX Runtime
    NoSuchFile tracebacks (probe 44b, 11). One line: the graph was removed while this ran; run again."""
    pytest.importorskip("onnxruntime")
    from styleengine.engine import ort_step
    from styleengine.export.cache import CacheWriteError

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    gone = tmp_path / "cache" / "exports" / "key" / "step.onnx"
    with pytest.raises(CacheWriteError, match="was removed from the cache while this ran .*; run again$"):
        ort_step.create_session(gone, "cpu", sha256="0" * 64)


def test_an_export_the_full_cache_refused_is_said_for_the_graphs_after_it(monkeypatch):
    """`--backend ort` on a full cache: the first graph's export failed for the disk, and the next was "over the
    trial's budget (... a run with --backend ort exports it)", advice to do what the run did (probe 44b, 9)."""
    from styleengine.engine import capability, stylise
    from styleengine.engine import trial as trial_mod
    from styleengine.engine.settings import Settings
    from styleengine.export.cache import CacheWriteError

    options = [("ort", "fp32", "winograd"), ("ort", "fp32", "direct")]
    built: list[tuple[str, str]] = []

    def build(settings, weights, loss):
        built.append((settings.precision, settings.conv))
        raise CacheWriteError("cannot write in the cache folder c/exports (No space left on device); free some space")

    monkeypatch.setattr(stylise, "build_step", build)
    monkeypatch.setattr(trial_mod, "uncached_graphs", lambda *a: set(options))
    settings = Settings(size=64, model="vgg16", weights="random", backend="ort", style_layers=("relu1_1",),
                        content_layers=("relu2_2",))
    where = capability.place("ort", "cpu", "auto", capability.Machine())
    trials = {(t.backend, t.precision, t.conv): t for t in trial_mod.measure_candidates(settings, where, options,
                                                                                         64)}
    assert built == [("fp32", "winograd")]
    assert "No space left" in trials[options[0]].note
    assert trials[options[1]].note == "not exported: the cache cannot take an export (said above)"
    with pytest.raises(Exception, match="no candidate") as raised:
        trial_mod.pick_fastest(list(trials.values()))
    assert "a run with --backend ort exports it" not in str(raised.value)


def test_two_jobs_of_one_output_name_say_where_the_name_came_from(tmp_path, monkeypatch, capsys):
    """Folder mode's `p/c.png` and `p/c.jpg` said "two jobs have the id c__a; each job needs its own", naming no
    file; a jobs file's `x.png` and `x.jpg` outputs did not say the id came from them (probe 44b, 7)."""
    import shutil

    _pictures(tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "st").mkdir()
    shutil.copy(tmp_path / "c.png", tmp_path / "p" / "c.png")
    from PIL import Image

    Image.open(tmp_path / "c.png").convert("RGB").save(tmp_path / "p" / "c.jpg")
    shutil.copy(tmp_path / "s.png", tmp_path / "st" / "a.png")
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "p", "--styles", tmp_path / "st",
                           "--out", tmp_path / "o", *FAST)
    line = one_error_line(code, err)
    assert "c.jpg with a.png and c.png with a.png both make c__a.png" in line and "rename one picture" in line, line
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "x.png"}\n'
                                      '{"content": "c.png", "style": "s.png", "output": "x.jpg"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    line = one_error_line(code, err)
    assert "two jobs have the id x (from the outputs x.png and x.jpg" in line and 'give one an "id"' in line, line


@pytest.mark.parametrize("left", [10, 0])
def test_a_jobs_file_cut_short_while_its_batch_reads_it_is_said(tmp_path, left):
    """A jobs file cut to its first 10 lines (or emptied) while the batch ran: "line 70: not JSON (Unterminated
    string ...)", a line it no longer had; at a buffer's edge the read would end early with no word (probe 44b,
    12)."""
    from styleengine.engine.jobs import iter_jobs
    from styleengine.errors import ConfigError

    pad = "x" * 200  # 70 lines past a read buffer's 8 KiB
    lines = [f'{{"content": "c.png", "style": "s.png", "output": "o{n}{pad}.png"}}\n' for n in range(70)]
    jobs_file = tmp_path / "j.jsonl"
    jobs_file.write_text("".join(lines))
    jobs = iter_jobs(jobs_file, tmp_path / "out")
    read = [next(jobs) for _ in range(5)]
    with open(jobs_file, "r+") as f:
        f.truncate(len("".join(lines[:left])))
    with pytest.raises(ConfigError, match=r"j.jsonl was cut short \(or rewritten shorter\) while the batch read it "
                                          r"\(\d+ bytes now, \d+ read, to line \d+\): the jobs not in the manifest "
                                          r"were not run"):
        read += list(jobs)
    assert len(read) >= 5


def test_an_absolute_output_inside_out_is_told_to_be_relative(tmp_path, monkeypatch, capsys):
    """`"output": "/abs/o/x.png"` with `--out o` said "is outside --out o", which it is not (probe 44b, 1)."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(f'{{"content": "c.png", "style": "s.png", "output": "{tmp_path}/o/x.png"}}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    line = one_error_line(code, err)
    assert "is an absolute path; outputs are paths relative to --out" in line and line.endswith("name it x.png")
    (tmp_path / "lnk").symlink_to(tmp_path / "o")  # the name it gives runs (probe 45a, 3)
    (tmp_path / "j.jsonl").write_text(f'{{"content": "c.png", "style": "s.png", "output": "{tmp_path}/lnk/z.png"}}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    assert one_error_line(code, err).endswith("name it z.png")


TRACE_LINE = ('{"iteration": 1, "loss": 2.0, "content_loss": 1.0, "style_loss": 1.0, "tv_loss": 0.0, "seconds": 0.1}'
              '\n')


@pytest.mark.parametrize("text", ['[build-system]\nrequires = ["x"]\n', "[section]\nx = 1\n",
                                  "[link](http://x) my notes\n", "{\\rtf1\\ansi hello}\n",
                                  '{\n  "name": "my-app",\n  "version": "1.0.0"\n}\n', '[{"id": 1, "label": "cat"}]\n',
                                  '{"a": 1}\nthis is my notes file\n', '{"user": "a", "score": 3}\n', "42\n",
                                  # probe 47a: text after one line with "loss", a training log, a user's tail
                                  '{"loss": 0.5}\nremember: the real notes are here', TRACE_LINE + "notes, no newline",
                                  '{"loss": 1}\n\0\0\0', '{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.4}\n',
                                  TRACE_LINE * 3 + "USER TAIL\n"])
def test_a_json_output_never_replaces_a_config_or_notes_that_start_as_json_does(tmp_path, monkeypatch, capsys,
                                                                                 text):
    """`--trace pyproject.toml` replaced it: a file was JSON text when its first byte was `{` or `[`, as TOML, INI,
    Markdown and RTF start too (probe 45a, 1); then any JSON document or a first line of JSON (a package.json, a
    user's JSON lines; probe 46a, 1 and 2); then any text after one line with "loss", a training log, a tail past
    the first MiB (probe 47a, 1 to 3). Only an earlier trace is replaced, judged whole: lines with a trace's keys."""
    _pictures(tmp_path)
    (tmp_path / "mine.txt").write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--trace", tmp_path / "mine.txt")
    assert "a file is there that is not an earlier trace file (only that is replaced)" in one_error_line(code, err)
    assert (tmp_path / "mine.txt").read_text() == text


@pytest.mark.parametrize("kind", ["fifo", "folder", "socket"])
def test_a_fifo_or_folder_at_a_locks_name_is_told_to_go(tmp_path, monkeypatch, kind):
    """A FIFO at a lock's name said only "not a regular file", a socket "No such device or address", where the
    other kinds say what to do (probes 45a and 46a, 6)."""
    import socket

    from styleengine.engine import manifest
    from styleengine.errors import UserError

    if kind == "socket":  # a short path: a socket's name has a length limit
        monkeypatch.chdir(tmp_path)
        socket.socket(socket.AF_UNIX).bind(manifest.LOCK_FILE)
    else:
        (os.mkfifo if kind == "fifo" else os.mkdir)(tmp_path / manifest.LOCK_FILE)
    for check in (lambda: manifest.take_lock(tmp_path, "batch", "--out"),
                  lambda: manifest.check_lock_file(tmp_path, "--out")):
        with pytest.raises(UserError, match=r"; remove it \(the lock is a file of --out\)$"):
            check()


def test_an_output_link_to_a_file_of_another_kind_is_refused(tmp_path, monkeypatch, capsys):
    """`-o o.jpg` a link to holiday.png: JPEG bytes went into holiday.png once writes went through links (probe
    46a, 4). A link to a file named as another kind is refused before any work, the file kept."""
    import shutil

    _pictures(tmp_path)
    shutil.copy(tmp_path / "s.png", tmp_path / "holiday.png")
    photo = (tmp_path / "holiday.png").read_bytes()
    (tmp_path / "o.jpg").symlink_to(tmp_path / "holiday.png")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.jpg", *FAST)
    line = one_error_line(code, err)
    assert f"it is a symbolic link to {tmp_path / 'holiday.png'}, a file of another kind" in line, line
    assert (tmp_path / "holiday.png").read_bytes() == photo and (tmp_path / "o.jpg").is_symlink()


def test_bench_through_a_link_to_a_file_of_another_kind_is_refused(tmp_path, monkeypatch, capsys):
    """`bench --json j.json`, j.json a link to notes.txt: bench's own-kind rule read the link's name and the write
    replaced the notes (probe 46a, 10)."""
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "j.json").symlink_to(tmp_path / "notes.txt")
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--res", "48", "--backends", "torch", "--json",
                           tmp_path / "j.json")
    assert "a file of another kind" in one_error_line(code, err)
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
