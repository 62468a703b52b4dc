"""Issue 23, stop 37: what stop 36 left out and could mend, and probe 21's findings (on 8635e3d)."""
from __future__ import annotations

import json

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import manifest_lines
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import manifest_lines
    from tests.test_reliability_probe13 import FAST, _pictures


@pytest.mark.parametrize("size", ["1", "2"])
def test_a_jobs_first_loss_that_is_not_finite_is_said_in_the_runs_words(tmp_path, monkeypatch, capsys, size):
    """A job whose first loss was non-finite was "the loss became non-finite after 0 iterations", where run says
    "the loss is not finite at the first iteration" (stop 36's left-out)."""
    from styleengine.engine import loop, stylise as stylise_module

    _pictures(tmp_path)
    real = loop.Result

    def never_finite(image, iterations, stopped, records, distances=None, **kwargs):
        return real(image, 0, "non-finite loss", [], distances, **kwargs)

    monkeypatch.setattr(stylise_module, "Result", never_finite)
    monkeypatch.setattr(loop, "Result", never_finite)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"content": "c.png", "styles": ["s.png"], "output": f"{n}.png"}) + "\n"
                            for n in range(int(size))))
    code, _, _ = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "out", "--batch-size", size,
                         *FAST)
    lines = manifest_lines(tmp_path / "out")
    assert code == 1 and [line["status"] for line in lines] == ["failed"] * int(size), lines
    assert all(line["reason"].startswith("the loss is not finite at the first iteration") for line in lines), lines


@pytest.mark.parametrize("argv, said", [
    (["--tv-weight", "-1"], "error: --tv-weight must be a finite number >= 0"),
    (["--iters", "-3"], "error: --iters must be >= 0"),
    (["--optimizer", "adam", "--lr", "0"], "error: --lr must be a finite number > 0"),
    (["--seed", "-1"], "error: --seed must be at least 0"),
])
def test_a_settings_fault_names_the_flag(tmp_path, monkeypatch, capsys, argv, said):
    """One setting's fault was said by the setting's name ("tv weight must be ...", "learning rate ..."), not the
    flag the user typed (stop 36's left-out)."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, *argv)
    assert code == 1 and err.startswith(said), err


@pytest.mark.parametrize("row, said", [
    ('{"content": "c.png", "styles": ["s.png"], "tv-weight": -1}', "line 1: tv-weight must be"),
    ('{"content": "c.png", "styles": ["s.png"], "iters": -1}', "line 1: iters must be"),
    ('{"content": "c.png", "styles": ["s.png"], "iterations": -1}', "line 1: iterations must be"),
])
def test_a_jobs_settings_fault_names_the_key_as_typed(tmp_path, monkeypatch, capsys, row, said):
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(row + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST)
    reasons = [line["reason"] for line in manifest_lines(tmp_path / "b")]
    assert code == 1 and len(reasons) == 1 and said in reasons[0] and said in out + err, (reasons, out, err)


def test_the_apis_settings_fault_names_the_keyword(tmp_path):
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    with pytest.raises(ConfigError, match=r"^iterations must be >= 0"):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=-1)


def test_a_jobs_recipe_weight_is_said_by_its_key_as_typed(tmp_path):
    from styleengine.engine.jobs import load_jobs
    from styleengine.errors import ConfigError

    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "recipe": "neural-style-pt", '
                                      '"tv-weight": 3e38}\n')
    with pytest.raises(ConfigError, match=r"line 1: tv-weight 3e\+38 \(in neural-style-pt's units\)"):
        load_jobs(tmp_path / "j.jsonl", tmp_path / "out")


# ------------------------------------------------------------------ probe 21a: inputs

def _truncated_jpeg(path) -> None:
    import io

    import numpy as np
    from PIL import Image

    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(data, "JPEG")
    path.write_bytes(data.getvalue()[:len(data.getvalue()) // 2])


@pytest.mark.parametrize("flag, make, said", [
    ("--init", "cut", "cannot decode init image"),
    ("--content-mask", "cut", "cannot decode content mask 1"),
    ("--content-mask", "black", "content mask 1"),
])
def test_a_batchs_own_file_cut_short_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, flag, make, said):
    """A JPEG cut short (its header whole) as a batch's own --init or mask passed the start's header check and
    failed every job (probe 21a): the start reads them whole, as every job would."""
    from PIL import Image

    try:
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_reliability_batch import one_error_line
    _pictures(tmp_path)
    bad = tmp_path / "bad.jpg"
    if make == "cut":
        _truncated_jpeg(bad)
    else:
        bad = tmp_path / "black.png"
        Image.new("L", (48, 40), 0).save(bad)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST, flag,
                           bad)
    assert one_error_line(code, err).startswith(f"error: {said}"), err
    assert not (tmp_path / "o").exists()


def test_a_server_refuses_an_init_cut_short_at_its_start(tmp_path):
    import subprocess
    import sys

    _truncated_jpeg(tmp_path / "t.jpg")
    proc = subprocess.run([sys.executable, "-m", "styleengine", "serve", "--port", "1", "--results-dir",
                           str(tmp_path / "srv"), "--weights", "random", "--init", str(tmp_path / "t.jpg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot decode init image"), proc.stderr
    assert not (tmp_path / "srv").exists()


def _bad_exif_jpeg(path) -> None:
    import io
    import struct

    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(data, "JPEG")
    jpeg = data.getvalue()
    app1 = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40  # an IFD that ends too soon
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])


@pytest.mark.parametrize("dry", [False, True])
def test_pils_warning_is_a_warning_line_naming_the_image(tmp_path, monkeypatch, capsys, dry):
    """PIL's "Corrupt EXIF data" went raw to stderr: two lines, a site-packages path, no file named (probe 21a)."""
    _pictures(tmp_path)
    _bad_exif_jpeg(tmp_path / "x.jpg")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "x.jpg", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, *(["--dry-run"] if dry else []))
    said = [line for line in err.splitlines() if "EXIF" in line]
    assert code == 0 and said == [f"warning: content image {tmp_path / 'x.jpg'}: Corrupt EXIF data. Expecting to "
                                  f"read 12 bytes but only got 2."], err
    assert "warnings.warn" not in err and "site-packages" not in err


def test_a_librarys_warning_is_one_warning_line(capsys):
    import warnings

    from styleengine.console import Console, warnings_on

    with warnings_on(Console(stderr=True, markup=False)):
        warnings.warn("a library's\nnotice", UserWarning, stacklevel=1)
    assert capsys.readouterr().err.strip() == "warning: a library's\\nnotice"


@pytest.mark.parametrize("command", ["run", "dry", "batch"])
@pytest.mark.parametrize("word, said", [("noise", "was not found"), ("content", "is not an image")])
def test_an_init_that_spells_a_start_is_said_with_its_dot(tmp_path, monkeypatch, capsys, command, word, said):
    """`--init ./noise` was said as "init image noise was not found (the named starts: noise, ...)": the "./" that
    makes it a file was dropped from the name (probe 21a)."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    if word == "content":
        (tmp_path / "content").write_text("not an image")
    if command == "batch":
        (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png"}\n')
        argv = ["batch", "j.jsonl", "--out", "o"]
    else:
        argv = ["run", "c.png", "s.png", "-o", "o.png", *(["--dry-run"] if command == "dry" else [])]
    code, _, err = run_cli(monkeypatch, capsys, *argv, *FAST, "--init", f"./{word}")
    assert code == 1 and err.startswith(f"error: init image ./{word} {said}"), err


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("width", [20, 40, 300])
def test_a_table_never_cuts_a_name(terminal, width):
    """tune's and export's tables came out all "…" with COLUMNS=20 piped, bench's rows were cut on an 80-column
    terminal ("torch cpu fp32 wi…"; probe 21a), and a narrow terminal gave a last column no width, its cells gone
    (probe 22a): a table is as wide as its cells."""
    import io

    from rich.table import Table

    from styleengine.console import Console

    out = io.StringIO()
    table = Table(title="step times")
    for name in ("candidate", "median", "rounds", "status", "device GiB"):
        table.add_column(name, no_wrap=True)
    table.add_row("torch fp32 winograd (chosen)", "113.20 ms", "113.20 ms 114.00 ms", "ok", "12.5")
    Console(file=out, width=width, force_terminal=terminal, color_system=None).print(table)
    text = out.getvalue()
    assert "…" not in text, text
    for cell in ("torch fp32 winograd (chosen)", "113.20 ms 114.00 ms", "device GiB", "12.5"):
        assert cell in text, text


def test_a_servers_mask_of_another_aspect_is_the_requests_422(tmp_path):
    """`serve --content-mask` of another aspect ratio than an upload took the job (202) and failed it, naming the
    server's path; README says it is that job's 422 (probe 21a)."""
    import dataclasses

    from PIL import Image

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    Image.new("L", (128, 40), 255).save(tmp_path / "wide.png")
    settings = dataclasses.replace(SETTINGS, content_masks=(str(tmp_path / "wide.png"),)).resolved()
    with TestClient(create_app(Config(settings=settings, root=tmp_path / "srv"))) as client:
        response = client.post("/api/jobs", files=files(png(32, 40), png(40, 40, 1)))
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("the server's content mask 1 wide.png is 128x40 px and the content image 40x32")
        assert str(tmp_path) not in detail


def test_the_run_and_the_dry_run_say_the_same_first_of_two_mask_faults(tmp_path, monkeypatch, capsys):
    """Content mask 2 of another aspect and a missing style mask 1: the run said the first, the dry run the second
    (it read every mask's header before any aspect; probe 21a)."""
    from PIL import Image

    _pictures(tmp_path)
    Image.new("L", (48, 40), 255).save(tmp_path / "m.png")
    Image.new("L", (128, 40), 255).save(tmp_path / "wide.png")
    said = []
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", tmp_path / "c.png",
                               "-o", tmp_path / "o.png", *FAST, "--content-mask",
                               f"{tmp_path / 'm.png'},{tmp_path / 'wide.png'}", "--style-mask",
                               f"{tmp_path / 'nosuch.png'},{tmp_path / 'm.png'}", *dry)
        said.append((code, err))
    assert said[0] == said[1] and said[0][1].startswith("error: content mask 2"), said


def test_a_setting_error_crosses_a_process_whole():
    import pickle

    from styleengine.errors import SettingError

    error = pickle.loads(pickle.dumps(SettingError("tv_weight", "tv weight", "must be >= 0")))
    assert (str(error), str(error.named("--tv-weight"))) == ("tv weight must be >= 0", "--tv-weight must be >= 0")


# ------------------------------------------------------------------ probe 21b: signals

def test_a_server_started_under_nohup_ignores_a_hangup(tmp_path):
    """`nohup styleengine serve` stopped on SIGHUP: serve put its own SIGHUP handler over nohup's SIG_IGN (3 of 3)."""
    import signal
    import time

    import httpx

    try:
        from serve_helpers import serve_process
    except ModuleNotFoundError:
        from tests.serve_helpers import serve_process
    server, url = serve_process(tmp_path / "srv", nohup=True)
    try:
        server.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert server.poll() is None and httpx.get(url + "/api/health", timeout=5).status_code == 200
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    finally:
        server.kill()


@pytest.mark.parametrize("where", ["returned", "raised"])
def test_a_signal_before_a_later_scales_first_iteration_keeps_the_last_scale(tmp_path, monkeypatch, capsys, where):
    """run --scales 2, a SIGTERM early in scale 2 (its loop stopped before an iteration): scale 2's start image, scale
    1's result upsampled, was written and said as the 64 px result (8 of 14; probe 21b). The last finished scale's
    picture is written at its size, and said so."""
    from PIL import Image

    from styleengine.engine import stylise as stylise_module
    from styleengine.engine.loop import Result

    _pictures(tmp_path)
    real, calls = stylise_module.optimise_at_size, []

    def second_scale_stopped(step, loss, settings, prepared, inits, callback, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real(step, loss, settings, prepared, inits, callback, **kwargs)
        from styleengine.cli import signals

        signals.received = 15
        stopped = [Result(init, 0, "interrupted", []) for init in inits]
        if where == "raised":  # the loop had put its start pictures in `kept` when the signal came
            kwargs["kept"].extend(stopped)
            raise KeyboardInterrupt
        return stopped

    monkeypatch.setattr(stylise_module, "optimise_at_size", second_scale_stopped)
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out,
                           *FAST, "--size", "64", "--scales", "2", "--iters", "2")
    size = Image.open(out).size
    assert code == 143 and max(size) < 64 and "earlier scale's image" in err, (size, err)


def test_a_signal_as_ray_workers_start_closes_what_started(monkeypatch):
    """batch --ray, a signal as the actors were made: no caller had a pool to close, Ray was never shut down and
    the interpreter's exit crashed (SIGSEGV, 4 of 4; probe 21b). The pool closes what it made and re-raises."""
    import types

    from styleengine.engine import batch_ray

    made, killed, shut = [], [], []

    class Actor:
        def remote(self, *args):  # the driver's folder
            if len(made) == 1:
                raise KeyboardInterrupt
            made.append(object())
            return made[-1]

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: None,
                                 cluster_resources=lambda: {"CPU": 8}, remote=lambda **kw: lambda body: Actor(),
                                 kill=killed.append, shutdown=lambda: shut.append(1))
    monkeypatch.setattr(batch_ray, "import_ray", lambda: fake)
    monkeypatch.setattr(batch_ray, "check_address", lambda address, connect=True: None)
    with pytest.raises(KeyboardInterrupt):
        batch_ray.ActorPool(object, "auto", cpus_per_worker=2)
    assert killed == made and len(made) == 1 and shut == [1]


def test_a_process_that_used_ray_leaves_without_finalisation_after_a_signal(tmp_path):
    """After a signal, a process that used Ray ends with os._exit once its lines are said and its finally blocks
    ran: the interpreter's finalisation crashed with Ray's threads (exit 139 after the interrupted line)."""
    import subprocess
    import sys

    script = ("import atexit, signal, sys, types\n"
              "sys.modules['ray'] = types.SimpleNamespace(is_initialized=lambda: True,\n"
              "                                           shutdown=lambda: print('ray shut down', flush=True))\n"
              "atexit.register(lambda: print('finalised', flush=True))\n"
              "from styleengine import _entry\n"
              "_entry.EARLY.append(signal.SIGTERM)\n"
              "sys.argv = ['styleengine', 'run', 'c.png', 's.png', '-o', 'o.png']\n"
              "_entry.console()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143 and proc.stdout.splitlines() == ["ray shut down"], (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == ["error: interrupted (SIGTERM)"], proc.stderr


def test_a_signal_during_ray_init_is_raised_once_it_returns():
    """A SIGTERM while ray.init ran went to Ray's handler, whose SystemExit was lost inside logging's at-fork hook:
    the batch ran every job and exited 0 (1 of 16; probe 21b). Ray's handlers are not set; the signal is kept and
    raised to the caller's handler once ray.init is done."""
    import os
    import signal

    from styleengine.cli import _Signals
    from styleengine.engine.batch_ray import _keeping_signal_handlers

    signals, after = _Signals(), []
    with signals.installed():
        with pytest.raises(KeyboardInterrupt):
            with _keeping_signal_handlers():
                signal.signal(signal.SIGTERM, lambda n, f: None)  # Ray's, which lost it: not set
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the rest of ray.init runs on, the signal kept
                    after.append(1)
        assert signals.received == signal.SIGTERM and len(after) == 1000
        assert signal.getsignal(signal.SIGTERM) == signals._handle


# ------------------------------------------------------------------ probe 22a: inputs

@pytest.mark.parametrize("backend, extra", [("torch", ["--tile", "32"]), ("ort", []), ("torch", [])])
def test_a_tv_weight_past_float32_at_the_size_is_a_non_finite_loss_on_every_step(tmp_path, monkeypatch, capsys,
                                                                                  backend, extra):
    """--tv-weight 1e38 (float32 itself) times the TV unit at 64 px is past float32: the tiled step and the ORT
    step raised "value cannot be converted to type float without overflow" (a traceback that ended a batch);
    the untiled step's float32 product was inf, said as a loss that is not finite (probe 22a)."""
    try:
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_reliability_batch import one_error_line
    if backend == "ort":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", "--weights", "random", "--iters", "1", "--size", "64", "--backend",
                           backend, "--tv-weight", "1e38", *extra)
    assert "the loss is not finite at the first iteration" in one_error_line(code, err), err


@pytest.mark.parametrize("word", ["random", "image"])
@pytest.mark.parametrize("exists", [True, False])
def test_a_jobs_init_that_spells_neural_styles_word_is_the_file(tmp_path, monkeypatch, capsys, word, exists):
    """A jobs file's `"init": "./random"` ran from noise (and "./image" from the content) even with no such file:
    the path joined to the jobs file's folder became neural-style's word (probe 22a)."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    if exists:
        Image.new("RGB", (48, 40), (0, 255, 0)).save(tmp_path / word, format="PNG")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png", "init": "./%s"}\n'
                                      % word)
    code, out, err = run_cli(monkeypatch, capsys, "batch", "j.jsonl", "--out", "o", "--weights", "random",
                             "--size", "40", "--iters", "0", "--backend", "torch")
    [line] = manifest_lines(tmp_path / "o")
    if exists:
        assert line["status"] == "ok", line
        green = np.asarray(Image.open(tmp_path / "o" / "a.png").convert("RGB"), dtype=float).mean(axis=(0, 1))
        assert green[1] > 200 and green[0] < 60, green  # the file's picture, not noise or the content
    else:
        assert line["status"] == "failed" and f"init image ./{word} was not found" in line["reason"], line


def test_pils_warning_about_a_batchs_own_init_is_said_once(tmp_path, monkeypatch, capsys):
    """A batch's --init with corrupt EXIF was warned of twice at the start and once per job (probe 22a)."""
    _pictures(tmp_path)
    _bad_exif_jpeg(tmp_path / "x.jpg")
    (tmp_path / "j.jsonl").write_text("".join('{"content": "c.png", "style": "s.png", "output": "%s.png"}\n' % n
                                              for n in "abc"))
    code, out, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                             "--init", tmp_path / "x.jpg")
    said = [line for line in (out + err).splitlines() if "EXIF" in line]
    assert code == 0 and said == [f"warning: init image {tmp_path / 'x.jpg'}: Corrupt EXIF data. Expecting to read "
                                  f"12 bytes but only got 2."], out + err


def test_pils_warning_at_a_servers_start_is_a_warning_line(tmp_path):
    """serve --init with corrupt EXIF said PIL's warning through logging's last resort: no `warning:`, a name's
    escape raw on the terminal (probe 22a)."""
    import subprocess
    import sys

    init = tmp_path / "b\x1b[31mx.jpg"
    _bad_exif_jpeg(init)
    (tmp_path / "w.safetensors").write_bytes(b"not weights")  # refused after the own files: the server stops there
    proc = subprocess.run([sys.executable, "-m", "styleengine", "serve", "--port", "1", "--results-dir",
                           str(tmp_path / "srv"), "--weights", str(tmp_path / "w.safetensors"), "--init", str(init)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"warning: init image {tmp_path}/b\\x1b[31mx.jpg: Corrupt EXIF data. Expecting to read 12 " \
                       f"bytes but only got 2.", proc.stderr
    assert "\x1b" not in proc.stderr


def test_a_job_whose_loss_became_non_finite_keeps_its_last_finite_image(tmp_path, monkeypatch, capsys):
    """A batch job whose loss went non-finite after N > 0 iterations kept no picture, where run writes the last
    finite one (README: batch keeps run's promises; probe 22a). It is written and said; the job stays failed and
    runs again, and a third run after an ok one does not skip a job whose latest line failed."""
    from styleengine.engine import loop, stylise as stylise_module

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "a.png"}\n')
    argv = ["batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST]
    assert run_cli(monkeypatch, capsys, *argv)[0] == 0  # ok
    real = loop.Result

    def late(image, iterations, stopped, records, distances=None, **kwargs):
        return real(image, iterations, "non-finite loss", records, distances, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(stylise_module, "Result", late)
        patch.setattr(loop, "Result", late)
        (tmp_path / "o" / "a.png").unlink()
        code, _, _ = run_cli(monkeypatch, capsys, *argv)
    lines = manifest_lines(tmp_path / "o")
    assert code == 1 and lines[-1]["status"] == "failed", lines
    assert lines[-1]["reason"] == (f"the loss became non-finite after 1 iterations; its last finite image is in "
                                   f"{tmp_path / 'o' / 'a.png'}"), lines[-1]
    assert (tmp_path / "o" / "a.png").is_file()
    code, _, _ = run_cli(monkeypatch, capsys, *argv)  # its latest line failed: it runs again, ok
    assert code == 0 and [line["status"] for line in manifest_lines(tmp_path / "o")] == ["ok", "failed", "ok"]
    code, _, _ = run_cli(monkeypatch, capsys, *argv)  # and is then skipped, and again
    code, _, _ = run_cli(monkeypatch, capsys, *argv)
    assert [line["status"] for line in manifest_lines(tmp_path / "o")] == ["ok", "failed", "ok", "skipped", "skipped"]


# ------------------------------------------------------------------ probe 23a

def _batch_run(monkeypatch, capsys, tmp_path, lines):
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, _, _ = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    return code, [(line["id"], line["status"]) for line in manifest_lines(tmp_path / "o")]


def test_a_job_is_not_skipped_when_another_job_wrote_its_output_since(tmp_path, monkeypatch, capsys):
    """Job a wrote a.png, then job b wrote a.png, then a was `skipped` with b's picture in a.png; two jobs that
    swapped outputs were both skipped (probe 23a). A job is skipped only where its ok line last wrote its output."""
    from PIL import Image

    _pictures(tmp_path)
    Image.new("RGB", (48, 48), (20, 230, 30)).save(tmp_path / "s2.png")
    a = {"id": "a", "content": "c.png", "style": "s.png", "output": "a.png"}
    b = {"id": "b", "content": "c.png", "style": "s2.png", "output": "a.png"}
    _batch_run(monkeypatch, capsys, tmp_path, [a])
    _batch_run(monkeypatch, capsys, tmp_path, [b])
    code, lines = _batch_run(monkeypatch, capsys, tmp_path, [a])
    assert code == 0 and lines[-1] == ("a", "ok"), lines
    swap = [{**a, "output": "x.png"}, {**b, "output": "y.png"}]
    _batch_run(monkeypatch, capsys, tmp_path, swap)
    code, lines = _batch_run(monkeypatch, capsys, tmp_path, [{**a, "output": "y.png"}, {**b, "output": "x.png"}])
    assert lines[-2:] in ([("a", "ok"), ("b", "ok")], [("b", "ok"), ("a", "ok")]), lines


def test_a_job_whose_failure_wrote_nothing_is_skipped_after(tmp_path, monkeypatch, capsys):
    """A job that failed at its plan (a style missing for a while) ran again though its ok picture stood
    (probe 23a): only a failed job that wrote its last finite image makes its output another picture."""
    _pictures(tmp_path)
    job = {"id": "a", "content": "c.png", "style": "s.png", "output": "a.png"}
    _batch_run(monkeypatch, capsys, tmp_path, [job])
    (tmp_path / "s.png").rename(tmp_path / "s.bak")
    _batch_run(monkeypatch, capsys, tmp_path, [job])
    (tmp_path / "s.bak").rename(tmp_path / "s.png")
    code, lines = _batch_run(monkeypatch, capsys, tmp_path, [job])
    assert code == 0 and lines == [("a", "ok"), ("a", "failed"), ("a", "skipped")], lines


def test_a_style_blend_of_the_wrong_length_is_said_by_the_name_given(tmp_path):
    """The API and serve said "style blend has 2 weights for 1 style images": the check is the plan's, after
    the settings' (probe 23a)."""
    import styleengine
    from styleengine.errors import ConfigError

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    _pictures(tmp_path)
    with pytest.raises(ConfigError, match="^style_blend has 2 weights for 1 style images"):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", size=40, iterations=1,
                            style_blend=[1, 2])
    with TestClient(create_app(Config(settings=SETTINGS.resolved(), root=tmp_path / "srv"))) as client:
        response = client.post("/api/jobs", files=files(png(32, 40), png(40, 40, 1), png(40, 40, 2)),
                               data={"style_blend": "1,2,3"})
        assert response.status_code == 422 and response.json()["detail"].startswith("style_blend has 3 weights")


def test_pils_warning_about_one_file_in_two_roles_is_said_once(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    _bad_exif_jpeg(tmp_path / "x.jpg")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "x.jpg", tmp_path / "x.jpg", "-o",
                           tmp_path / "o.png", *FAST, "--init", tmp_path / "x.jpg")
    assert code == 0 and [line for line in err.splitlines() if "EXIF" in line] == [
        f"warning: content image {tmp_path / 'x.jpg'}: Corrupt EXIF data. Expecting to read 12 bytes but only got 2."]


def test_a_signal_put_off_in_an_import_is_not_lost_in_ray_init():
    """A signal put off during an import is raised again by SIGALRM; that retry fired inside a fork hook in
    ray.init, where the KeyboardInterrupt was printed as ignored, and the batch ran every job, exit 0 (4 of 21;
    probe 23b). The retry is kept through ray.init and raised once it returns."""
    import signal

    from styleengine.engine.batch_ray import _keeping_signal_handlers

    came = []
    previous = signal.signal(signal.SIGALRM, lambda n, f: came.append(n))  # the CLI's _again while an alarm is set
    try:
        with _keeping_signal_handlers():
            signal.raise_signal(signal.SIGALRM)  # in ray.init
            assert came == []
        assert came == [signal.SIGALRM]
    finally:
        signal.signal(signal.SIGALRM, previous)
