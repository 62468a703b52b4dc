"""Issue 23, stop 36: what stop 35 left out and could mend, and probe 18's findings (on 2e8d09b)."""
from __future__ import annotations

import logging
import signal

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from serve_helpers import serve_process
    from test_cli import run_cli
    from test_reliability_batch import manifest_lines, one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.serve_helpers import serve_process
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import manifest_lines, one_error_line
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

    from styleengine.console import warnings_on

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
    for job_id in (queued, unrecorded):  # the uploads of each: removed only once its line is written
        (root / "uploads" / job_id).mkdir()
        (root / "uploads" / job_id / "content").write_bytes(b"an upload")
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



# ------------------------------------------------------------------ probe 18a: names

@pytest.mark.parametrize("field", ["output", "content", "init", "weights"])
def test_a_lone_surrogate_in_a_jobs_file_path_fails_its_job_in_one_line(tmp_path, monkeypatch, capsys, field):
    """A JSON "\ud800" in a jobs-file path was a UnicodeEncodeError traceback (the batch's identities encode
    every path); it is a path no file system takes, said as such for that job."""
    _pictures(tmp_path)
    job = {"content": "c.png", "style": "s.png", "id": "a", field: "x\\ud800.png"}
    (tmp_path / "j.jsonl").write_text(__import__("json").dumps(job).replace("\\\\ud800", "\\ud800") + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST)
    assert code == 1 and "Traceback" not in err, err  # a failed job
    [line] = manifest_lines(tmp_path / "b")
    assert line["status"] == "failed" and "lone surrogate" in line["reason"] and "NUL" not in line["reason"], line


@pytest.mark.parametrize("name", ["content", "style", "init", "weights", "content_masks"])
def test_the_api_says_a_lone_surrogate_in_a_path_as_a_user_error(tmp_path, name):
    """The API raised a bare UnicodeEncodeError for a content, style or mask path holding "\ud800", and called it
    "a path cannot hold a NUL byte" for init and weights."""
    from styleengine import api
    from styleengine.errors import UserError

    _pictures(tmp_path)
    given = {"content": tmp_path / "c.png", "style": tmp_path / "s.png"}
    bad = str(tmp_path / "x\ud800.png")
    kwargs = {name: [bad] if name == "content_masks" else bad} if name not in given else {}
    content = bad if name == "content" else given["content"]
    style = bad if name == "style" else given["style"]
    kwargs.setdefault("weights", "random")
    if name == "content_masks":
        kwargs["style_masks"] = None
    with pytest.raises(UserError, match="lone surrogate") as e:
        api.stylise(content, [style], size=40, iterations=1, **kwargs)
    assert "NUL" not in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_nul_in_a_jobs_content_is_said_of_the_content_not_the_output(tmp_path, monkeypatch, capsys):
    """The output named after the content took the blame: "output 'z/c\x00__s.png': a path cannot hold a NUL byte"."""
    _pictures(tmp_path)
    (tmp_path / "z.jsonl").write_text('{"content": "c\\u0000.png", "style": "s.png", "id": "ab"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "z.jsonl", "--out", tmp_path / "z", *FAST)
    [line] = manifest_lines(tmp_path / "z")
    assert line["status"] == "failed" and "content image '" in line["reason"] and "output" not in line["reason"]
    assert "c\\x00.png': a path cannot hold a NUL byte" in line["reason"], line


def test_a_raw_control_character_in_a_jsonl_line_says_its_column(tmp_path, monkeypatch, capsys):
    """"not JSON (Invalid control character at)": json's message without the place it names."""
    _pictures(tmp_path)
    (tmp_path / "k.jsonl").write_text('{"content": "c.png", "style": "s.png", "weights": "n\x1bo.pth"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "k.jsonl", "--out", tmp_path / "k", *FAST)
    line = one_error_line(code, err)
    assert "Invalid control character at: column 53" in line, line


def test_a_name_with_a_no_break_space_or_a_latin1_byte_is_a_name_not_a_control_character(tmp_path, monkeypatch,
                                                                                          capsys):
    """`--styles` folders refused 'a\xa0b.png' (a no-break space), a joiner emoji and a Latin-1 'caf\xe9.png' (its
    undecodable byte shown as '\udce9') as "a control character"; they are names as they are, shown escaped."""
    import os

    _pictures(tmp_path)
    (tmp_path / "C").mkdir()
    (tmp_path / "D").mkdir()
    os.replace(tmp_path / "c.png", tmp_path / "C" / "c.png")
    for name in ("a\xa0b.png", "fam\u200d.png", os.fsdecode(b"caf\xe9.png")):
        (tmp_path / "D" / name).write_bytes((tmp_path / "s.png").read_bytes())
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "C", "--styles", tmp_path / "D",
                           "--out", tmp_path / "o", *FAST)
    assert code == 0 and "3 ok" in err, err
    assert "c__a\\xa0b" in err and "c__caf\\udce9" in err and "\xa0" not in err, err
    assert (tmp_path / "o" / os.fsdecode(b"c__caf\xe9.png")).is_file()
    (tmp_path / "D" / "tab\tx.png").write_bytes(b"")  # a control character still names no job
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "C", "--styles", tmp_path / "D",
                           "--out", tmp_path / "o2", *FAST)
    assert "control character ('\\t')" in one_error_line(code, err)


@pytest.mark.parametrize("command", ["run", "batch-interrupted"])
def test_a_name_is_said_escaped_in_every_line_not_only_errors(tmp_path, monkeypatch, capsys, command):
    """The "wrote" line, the dry run's plan and batch's interrupted line printed a name's escape raw (it drove
    the terminal) or its line break (the line was cut in two): only UserErrors were escaped."""
    import os
    import signal

    _pictures(tmp_path)
    odd = "o\x1b[31m\nx"
    if command == "batch-interrupted":
        from styleengine.engine import batch as engine_batch

        real = engine_batch.record

        def record_then_signal(*args, **kwargs):
            done = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            return done

        monkeypatch.setattr(engine_batch, "record", record_then_signal)
        (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png"}\n'
                                          '{"content": "c.png", "style": "s.png", "output": "b.png"}\n')
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / odd, *FAST,
                               "--batch-size", "1")
        assert code == 143, err
    else:
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / f"{odd}.png", *FAST)
        assert code == 0, err
    said = [line for line in err.splitlines() if "o\\x1b[31m\\nx" in line]
    assert said and "\x1b" not in err, err


@pytest.mark.parametrize("flag, value", [("--tv-weight", "3e38"), ("--content-weight", "3e38"),
                                         ("--content-weight", "1e-40"), ("--style-weight", "1e38")])
def test_a_recipes_weight_past_float32_is_said_as_typed(tmp_path, monkeypatch, capsys, flag, value):
    """With --recipe neural-style-pt, `--tv-weight 3e38` was refused as "tv weight 1.17504e+41" (and 1e-40 as
    "2e-40"): the value mapped into this engine's units, a number the user never typed."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--recipe", "neural-style-pt", flag, value)
    line = one_error_line(code, err)
    assert line.startswith(f"error: {flag} {float(value):g} (in neural-style-pt's units)") and "at 40 px" in line, line
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ probe 18b: signals

def test_two_signals_pending_together_say_the_first_that_came():
    """SIGTERM then SIGINT 5 ms apart during a long C call (a torch step) said "Ctrl-C" and exited 130 (2 of 10):
    Python runs pending handlers in signal-number order, not arrival order."""
    import hashlib
    import os
    import threading
    import time

    from styleengine.cli import _Signals

    signals = _Signals()

    def send() -> None:
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    with signals.installed():
        sender = threading.Thread(target=send)
        began = time.monotonic()
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            while True:  # C calls that check no signal: both are pending when one returns
                hashlib.pbkdf2_hmac("sha256", b"p", b"s", 400_000)
        sender.join()
    if time.monotonic() - began < 0.06:
        pytest.skip("the first C call ended between the two signals")
    assert signals.received == signal.SIGTERM and signals.exit_code == 143


def test_a_signal_as_the_loops_no_grad_block_closes_keeps_its_result(tmp_path, monkeypatch, capsys):
    """A signal in `torch.no_grad()`'s exit (Python code) after the last iteration escaped the loop: run said
    "before the first iteration; nothing written" with 5 iterations traced (a coarse-to-fine run wrote the
    scale before)."""
    import os
    import sys

    import torch

    real = torch.no_grad

    class SignalledOnExit:
        def __init__(self):
            self.inner = real()

        def __enter__(self):
            return self.inner.__enter__()

        def __exit__(self, *exc):
            done = self.inner.__exit__(*exc)
            if sys._getframe(1).f_code.co_name == "optimise_batch":
                os.kill(os.getpid(), signal.SIGTERM)
                (lambda: None)()  # a call: the handler runs here, inside the exit
            return done

    _pictures(tmp_path)
    monkeypatch.setattr(torch, "no_grad", SignalledOnExit)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST[:-4], "--iters", "5", "--scales", "1")
    assert code == 143 and "interrupted after 5 iterations (SIGTERM)" in err, err
    assert (tmp_path / "o.png").is_file() and torch.is_grad_enabled()


# ------------------------------------------------------------------ probe 18a: one wording for one fault

_FAULTS = [  # (the style argument, extra flags, the words every way in says)
    ("nos.png", [], "style image {d}/nos.png was not found"),
    ("/dev/null", [], "style image /dev/null is a character device, not a regular file"),
    ("bad.png", [], "style image {d}/bad.png is not an image (or a format PIL cannot read)"),
    ("s.png", ["--init", "nope.png"], "init image {d}/nope.png was not found (the named starts:"),
    ("s.png", ["--init", "S1"], "init image {d}/S1 is a directory, not a regular file"),
    ("s.png", ["--content-mask", "nom.png"], "content mask 1 {d}/nom.png was not found"),
]


@pytest.mark.parametrize("style, extra, words", _FAULTS)
def test_one_fault_is_said_in_one_wording_by_the_run_the_dry_run_and_a_batch(tmp_path, monkeypatch, capsys, style,
                                                                              extra, words):
    """A missing style was "image not found: nos.png" (run), "style image not found (or not a file): nos.png"
    (dry run) and "cannot read nos.png: it was not found" (a batch's manifest); a folder as --init, a missing
    mask, a file that is no image: each in two or three wordings."""
    import json

    _pictures(tmp_path)
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "S1").mkdir()
    d = tmp_path
    name = lambda v: v if v.startswith("/") else str(d / v)  # noqa: E731
    flags = [name(v) if i % 2 else v for i, v in enumerate(extra)]
    expected = words.format(d=d)
    said = []
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", d / "c.png", name(style), "-o", d / "o.png", *FAST,
                               *flags, *dry)
        said.append(one_error_line(code, err))
    job = {"content": str(d / "c.png"), "style": name(style),
           **{flag.lstrip("-").replace("-", "_") + ("s" if "mask" in flag else ""): value
              for flag, value in zip(flags[::2], flags[1::2])}}
    (d / "j.jsonl").write_text(json.dumps(job) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", d / "j.jsonl", "--out", d / "b", *FAST)
    said += [line["reason"] for line in manifest_lines(d / "b")]
    assert len(said) == 3 and all(expected in line for line in said), said
    assert said[2].startswith(f"{d / 'j.jsonl'} line 1: "), said


# ------------------------------------------------------------------ probe 19a: the neighbours of probe 18's fixes

def test_the_dry_run_numbers_the_mask_it_refuses_as_the_run_does(tmp_path, monkeypatch, capsys):
    """The dry run's header checks said "content mask notimg.png" where the run says "content mask 2"."""
    _pictures(tmp_path)
    Image.new("L", (48, 40), 255).save(tmp_path / "m.png")
    (tmp_path / "n.png").write_text("not an image")
    said = []
    for dry in ([], ["--dry-run"]):
        styles, masks = (",".join(str(tmp_path / n) for n in names)
                         for names in (("s.png", "s.png"), ("m.png", "n.png")))
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", styles, "-o", tmp_path / "o.png", *FAST,
                               "--content-mask", masks, *dry)
        said.append(one_error_line(code, err))
    assert said[0] == said[1] and f"content mask 2 {tmp_path / 'n.png'} is not an image" in said[0], said


@pytest.mark.parametrize("side, words", [(40, "refusing content image"), (64, "refusing content image")])
def test_the_dry_run_refuses_a_decompression_bomb_in_the_runs_words(tmp_path, monkeypatch, capsys, side, words):
    """A bomb (past PIL's limit) and a near-bomb (past its warning, which the run refuses too) were "not an
    image" to the dry run, or passed it (exit 0, with PIL's warning raw on stderr)."""
    from PIL import Image as PILImage

    _pictures(tmp_path)
    Image.new("RGB", (side, side), (9, 9, 9)).save(tmp_path / "b.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 40x40: past the warning; 64x64: past twice it
    said = []
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "b.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, *dry)
        said.append(one_error_line(code, err))
    assert all(words in line and "over the limit of 1000 past which" in line for line in said), said


def test_the_api_names_the_content_and_each_style_by_its_role(tmp_path):
    """The API said "image missing.png was not found" for the content and "image n.png" for the second style."""
    from styleengine import api
    from styleengine.errors import ImageError

    _pictures(tmp_path)
    (tmp_path / "n.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"^content image .*missing\.png was not found$"):
        api.stylise(tmp_path / "missing.png", [tmp_path / "s.png"], weights="random", size=40, iterations=1)
    with pytest.raises(ImageError, match=r"^style image 2 .*n\.png is not an image"):
        api.stylise(tmp_path / "c.png", [tmp_path / "s.png", tmp_path / "n.png"], weights="random", size=40,
                    iterations=1)


@pytest.mark.parametrize("flag, words", [("--content-mask", "content mask 1"), ("--init", "init image")])
def test_a_batchs_own_missing_file_is_said_in_the_runs_words(tmp_path, monkeypatch, capsys, flag, words):
    """batch said "--content mask 1 missing.png" and "--init image missing.png"."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "z.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST, flag,
                           tmp_path / "missing.png")
    line = one_error_line(code, err)
    assert line.startswith(f"error: {words} {tmp_path / 'missing.png'} was not found"), line


def test_a_batchs_engine_warning_is_a_warning_line_escaped(tmp_path, monkeypatch, capsys):
    """batch and video printed the engine's warnings through logging's last resort: no "warning:", a name's
    escape raw and its line break cutting the line."""
    _pictures(tmp_path)
    init = tmp_path / "w\x1b[31m\nq.png"
    Image.new("RGB", (64, 32), (9, 9, 9)).save(init)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "z.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST,
                           "--init", init)
    assert code == 0, err
    said = [line for line in err.splitlines() if "stretched" in line]
    assert len(said) == 1 and said[0].startswith("warning: init image") and "w\\x1b[31m\\nq.png" in said[0], err
    assert "\x1b" not in err


@pytest.mark.parametrize("key, value", [("tv_weight", 3e38), ("style_weight", 1e38), ("content_weight", 1e-40)])
def test_a_recipes_range_holds_the_bounds_it_shows(key, value):
    """The range said for a recipe's weight was rounded to nearest: its own ends (3e-41, 8.69e35) were refused."""
    from styleengine.engine.recipes import recipe_values
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        recipe_values("neural-style-pt", {key: value, "size": 64})
    low, high = str(e.value).split("0, or ")[1].split(" at ")[0].split(" to ")
    for bound in (float(low), float(high)):
        recipe_values("neural-style-pt", {key: bound, "size": 64})


def test_a_jobs_files_recipe_weight_is_said_by_its_key(tmp_path, monkeypatch, capsys):
    """A jobs file's `"tv_weight": 3e38` with a recipe was said as "--tv-weight", a flag the file does not have."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "recipe": "neural-style-pt", '
                                      '"tv_weight": 3e38, "output": "a.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST)
    line = one_error_line(code, err)
    assert "line 1: tv_weight 3e+38 (in neural-style-pt's units)" in line and "--tv-weight" not in line, line


# ------------------------------------------------------------------ probe 19b: signals

def test_a_signal_as_visualizes_loop_returns_keeps_its_picture(tmp_path, monkeypatch, capsys):
    """A signal between visualize's loop returning and its result being held said "before the first iteration;
    nothing written" after all its iterations (3 of 20 under load)."""
    import os

    from styleengine.engine import loop

    real = loop.optimise

    def signalled(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        (lambda: None)()  # a call: the handler runs here, after the loop returned
        return result

    monkeypatch.setattr(loop, "optimise", signalled)  # visualize imports it as it runs
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "-o", tmp_path / "v.png", "--class", "3", "--size", "40",
                           "--iters", "3", "--weights", "random")
    assert code == 143 and "interrupted after 3 iterations (SIGTERM)" in err, err
    assert (tmp_path / "v.png").is_file()


def test_a_sigterm_ray_takes_as_it_starts_is_the_commands():
    """ray.init puts its own SIGTERM handler (sys.exit(15)) in place while it starts a cluster: a SIGTERM then
    exited 15 with no line (`batch --ray auto`)."""
    import os

    from styleengine.cli import _Signals
    from styleengine.engine.batch_ray import _keeping_signal_handlers

    signals = _Signals()
    with signals.installed():
        with pytest.raises(KeyboardInterrupt):
            with _keeping_signal_handlers():
                signal.signal(signal.SIGTERM, lambda n, f: __import__("sys").exit(n))  # what ray.init does
                os.kill(os.getpid(), signal.SIGTERM)
                (lambda: None)()
        assert signals.received == signal.SIGTERM and signal.getsignal(signal.SIGTERM) == signals._handle


def test_two_signals_to_a_server_stop_it_once_without_a_traceback(tmp_path):
    """SIGTERM then SIGINT a few ms apart: uvicorn took the second as a forced exit and cancelled the app's
    shutdown (a CancelledError traceback, no "shutdown complete"; 3 of 3)."""
    import time

    server, _ = serve_process(tmp_path / "srv")
    try:
        server.send_signal(signal.SIGTERM)
        time.sleep(0.005)
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert "Traceback" not in out and "CancelledError" not in out and "Application shutdown complete" in out, out


def test_a_signal_in_the_interpreters_start_is_one_line(tmp_path):
    """A signal before cli.py's handlers (its imports take a quarter second) was a KeyboardInterrupt traceback
    (Ctrl-C) or a silent death (SIGTERM, SIGHUP): the console script keeps it from its first line."""
    import subprocess
    import sys

    _pictures(tmp_path)
    script = ("import os, signal, sys\n"
              "from styleengine import _entry\n"
              "_entry.keep_early()  # what the console script does first\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "sys.argv = ['styleengine', 'run', 'c.png', 's.png', '-o', 'o.png', '--weights', 'random']\n"
              "_entry.console()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143 and proc.stderr.strip() == "error: interrupted (SIGTERM)", proc.stderr
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ probe 20b: signals

def test_a_signal_as_the_handlers_are_installed_is_said_not_a_traceback(monkeypatch):
    """A signal between installed()'s first handler and its yield raised KeyboardInterrupt out of it, outside
    main's handling: a traceback, exit -2 whatever the signal (3 of 480 timed trials)."""
    import os

    from styleengine import cli

    signals = cli._Signals()
    real = signal.signal

    def installing(number, handler):
        previous = real(number, handler)
        if number == signal.SIGTERM and handler == signals._handle:
            os.kill(os.getpid(), signal.SIGTERM)
            (lambda: None)()  # a call: the handler runs here, inside installed()
        return previous

    monkeypatch.setattr(cli.signal, "signal", installing)
    with signals.installed():
        monkeypatch.setattr(cli.signal, "signal", real)
        with pytest.raises(KeyboardInterrupt):
            signals.take_early()  # what main does first
    assert signals.received == signal.SIGTERM


def test_an_ignored_hangup_stays_ignored(tmp_path):
    """`nohup styleengine run ...` was stopped by SIGHUP: the handlers replaced the SIG_IGN nohup had set."""
    import subprocess
    import sys

    _pictures(tmp_path)
    script = ("import os, signal, sys\n"
              "signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does\n"
              "from styleengine import _entry\n"
              "_entry.keep_early()\n"
              "os.kill(os.getpid(), signal.SIGHUP)\n"
              "sys.argv = ['styleengine', 'run', 'c.png', 's.png', '-o', 'o.png', '--weights', 'random',\n"
              "            '--size', '40', '--iters', '2', '--backend', 'torch']\n"
              "_entry.console()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (tmp_path / "o.png").is_file(), proc.stderr


def test_a_server_stopped_in_its_start_leaves_no_lock(tmp_path, monkeypatch):
    """serve interrupted while its store started (SIGTERM at 0.2-0.4 s) left results/.batch.lock (7 of 8)."""
    from styleengine.serve.jobs import JobStore

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(JobStore, "_restore", interrupted)
    with pytest.raises(KeyboardInterrupt):
        JobStore(tmp_path / "srv")
    assert not (tmp_path / "srv" / "results" / ".batch.lock").exists()


def _signal_after_a_loop(monkeypatch, returns: int) -> None:
    """SIGTERM right after the `returns`-th loop of the process returns (a frame's, a job's)."""
    import os

    from styleengine.engine import stylise, video

    seen = [0]

    def wrap(real):
        def signalled(*args, **kwargs):
            result = real(*args, **kwargs)
            seen[0] += 1
            if seen[0] == returns:
                os.kill(os.getpid(), signal.SIGTERM)
                (lambda: None)()  # a call: the handler runs here, as the loop returns
            return result
        return signalled

    monkeypatch.setattr(stylise, "optimise_batch", wrap(stylise.optimise_batch))
    monkeypatch.setattr(video, "optimise_batch", wrap(video.optimise_batch))


@pytest.mark.parametrize("returns", [1, 2])
def test_a_signal_as_a_frames_loop_returns_keeps_the_frame(tmp_path, monkeypatch, capsys, returns):
    """The frame whose loop had just finished was thrown away: "no frame finished; nothing written" at the first
    frame (4 of 4), one frame short after later ones."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    from styleengine.benchmarks.video_clips import moving_window, write_clip

    frames, _ = moving_window(__import__("numpy").random.default_rng(0).random((64, 80, 3)), 3, (48, 64))
    write_clip(tmp_path / "in.mp4", frames, fps=12)
    _pictures(tmp_path)
    _signal_after_a_loop(monkeypatch, returns)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o", out,
                           "--weights", "random", "--size", "64", "--iters", "2", "--frame-iters", "2",
                           "--backend", "torch")
    assert code == 143 and f"wrote {out} ({returns} of 3 frames)" in err, err


def test_a_signal_as_a_lone_jobs_loop_returns_records_the_job(tmp_path, monkeypatch, capsys):
    """batch --batch-size 1: a job whose loop had finished was lost ("2 of 2 jobs left; nothing was recorded
    yet", 7 of 7): the group rule (nothing of an interrupted batch recorded) now keeps the whole ones."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png"}\n'
                                      '{"content": "c.png", "style": "s.png", "output": "b.png"}\n')
    _signal_after_a_loop(monkeypatch, 1)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                           "--batch-size", "1")
    assert code == 143 and "with 1 of 2 jobs left" in err, err
    [line] = manifest_lines(tmp_path / "o")
    assert line["status"] == "ok" and (tmp_path / "o" / "a.png").is_file(), line


# ------------------------------------------------------------------ probe 20a: inputs

@pytest.mark.parametrize("flag, make", [("--init", "tiny"), ("--init", "text"), ("--content-mask", "text")])
def test_a_batchs_own_file_the_run_refuses_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, flag, make):
    """A batch's own --init of 20x20 px (or not an image, or such a mask) failed every job with the same reason
    and made --out and its manifest; the dry run already refused it from its header."""
    _pictures(tmp_path)
    bad = tmp_path / "bad.png"
    if make == "tiny":
        Image.new("RGB", (20, 20)).save(bad)
    else:
        bad.write_text("not an image")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST, flag,
                           bad)
    line = one_error_line(code, err)
    role = "init image" if flag == "--init" else "content mask 1"
    assert line.startswith(f"error: {role} {bad}"), line
    assert not (tmp_path / "o").exists()


def test_a_server_refuses_an_init_that_is_no_image_at_its_start(tmp_path):
    """serve started with `--init notimg.png`, took every job (202) and failed each."""
    import subprocess
    import sys

    (tmp_path / "n.png").write_text("not an image")
    proc = subprocess.run([sys.executable, "-m", "styleengine", "serve", "--port", "1", "--results-dir",
                           str(tmp_path / "srv"), "--weights", "random", "--init", str(tmp_path / "n.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: init image {tmp_path / 'n.png'} is not an image (or a format PIL cannot read)"], proc.stderr
    assert not (tmp_path / "srv").exists()


def test_a_video_init_that_is_no_image_is_refused_before_the_weights(tmp_path, monkeypatch, capsys):
    """`video --init notimg.png` was said after the weights had loaded and the progress bar had started."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    from styleengine.benchmarks.video_clips import moving_window, write_clip

    frames, _ = moving_window(__import__("numpy").random.default_rng(0).random((64, 80, 3)), 2, (48, 64))
    write_clip(tmp_path / "in.mp4", frames, fps=12)
    _pictures(tmp_path)
    (tmp_path / "n.png").write_text("not an image")
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "o.mp4", "--weights", "random", "--size", "64", "--init", tmp_path / "n.png")
    assert one_error_line(code, err) and err.strip().splitlines() == [
        f"error: init image {tmp_path / 'n.png'} is not an image (or a format PIL cannot read)"], err


def test_inverts_engine_warning_is_a_warning_line(tmp_path, monkeypatch, capsys):
    """invert, visualize and tune printed the engine's warnings raw (no "warning:", a name's break cutting it)."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", "--weights",
                           "random", "--size", "40", "--iters", "30", "--optimizer", "adam", "--lr", "5")
    said = [line for line in err.splitlines() if "saturates" in line]
    assert said and all(line.startswith("warning: Adam's learning rate") for line in said), err


def test_a_long_line_is_one_line_when_piped(capsys):
    """Piped (no terminal: 80 columns), a long warning came out as two or three lines (tune, export's note)."""
    from styleengine.console import Console

    Console(stderr=True, markup=False, width=40).print("warning: " + "a long line " * 20, highlight=False)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_serve_says_a_bomb_upload_in_the_runs_words(tmp_path, monkeypatch):
    """A bomb past PIL's limit was "refusing the style image 2" (413); one past its warning "refusing style image 2"
    (422)."""
    pytest.importorskip("fastapi")
    from fastapi import HTTPException
    from PIL import Image as PILImage

    from styleengine.serve.app import _check_pixels

    Image.new("RGB", (64, 64)).save(tmp_path / "b.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(HTTPException) as e:
        _check_pixels(tmp_path / "b.png", "style image 2", 10**9)
    assert e.value.status_code == 413 and str(e.value.detail).startswith("refusing style image 2: "), e.value.detail
