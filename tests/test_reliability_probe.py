"""Issue 23, the probe after the last one: each defect it found, as the case a careless or hostile user
tried (D7, D8a-g, the cache on a full disk, and what the fresh probe turned up)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from styleengine.export import cache

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_cli_export import NO_CHECK, PORTABLE
    from test_reliability_batch import picture
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_cli_export import NO_CHECK, PORTABLE
    from tests.test_reliability_batch import picture


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


# ------------------------------------------------------------------ D8a: a weights file that is no file

@pytest.fixture
def pics(tmp_path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, shape in (("content", (48, 40, 3)), ("style", (56, 56, 3))):
        out[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(out[name])
    return out


FAST = ["--model", "vgg16", "--size", "48", "--iters", "2", "--device", "cpu"]


@pytest.mark.parametrize("kind,says", [("device", "is a character device"), ("fifo", "is a FIFO"),
                                       ("folder", "is a directory"), ("dangling", "broken symbolic link"),
                                       ("missing", "was not found")])
def test_weights_that_are_not_a_file_say_what_they_are(tmp_path, monkeypatch, capsys, pics, kind, says):
    where = {"device": Path("/dev/zero"), "fifo": tmp_path / "w.pth", "folder": tmp_path,
             "dangling": tmp_path / "link.pth", "missing": tmp_path / "missing.pth"}[kind]
    if kind == "fifo":
        os.mkfifo(where)
    if kind == "dangling":
        where.symlink_to(tmp_path / "gone.pth")
    out = tmp_path / "out.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", out, *FAST,
                           "--weights", where)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert says in lines[0] and str(where) in lines[0] and not out.exists()


# ------------------------------------------------------------------ batch: messages, paths, signals, files

def batch_folder(tmp_path: Path) -> Path:
    picture(tmp_path / "c1.png", 1)
    picture(tmp_path / "c2.png", 2)
    picture(tmp_path / "s1.png", 3)
    return tmp_path


BATCH_FAST = ["--weights", "random", "--model", "vgg16", "--size", "40", "--iters", "2", "--device", "cpu",
              "--batch-size", "1"]


def run_batch(monkeypatch, capsys, jobs: Path, out: Path, *flags) -> tuple[int, str]:
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *BATCH_FAST, *flags)
    return code, err


def jobs_file(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def test_interrupted_before_anything_was_recorded_does_not_point_at_a_manifest(tmp_path, monkeypatch, capsys):
    """D8b: 'the manifest has the rest' was said before the manifest existed."""
    from styleengine.engine import batch as engine

    folder = batch_folder(tmp_path)
    jobs = jobs_file(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png"}])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "stylise_batch", interrupted)
    code, err = run_batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 130 and "Traceback" not in err, err
    [line] = [x for x in err.splitlines() if x.startswith("error: ")]
    assert not (folder / "out" / engine.MANIFEST).exists()
    assert engine.MANIFEST not in line and "nothing was recorded" in line


def test_interrupted_after_a_job_was_recorded_points_at_the_manifest(tmp_path, monkeypatch, capsys):
    from styleengine.engine import batch as engine

    folder = batch_folder(tmp_path)
    jobs = jobs_file(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png"},
                                             {"id": "b", "content": "c2.png", "style": "s1.png"}])
    real, calls = engine.stylise_batch, []

    def second_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "stylise_batch", second_interrupted)
    code, err = run_batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 130 and "Traceback" not in err, err
    [line] = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "1 of 2 jobs left" in line and str(folder / "out" / engine.MANIFEST) in line


def test_an_output_whose_dotdot_stays_inside_out_is_taken(tmp_path, monkeypatch, capsys):
    """D8c: `nosub/../a.png` is out/a.png, not 'outside --out'; no stray `nosub` folder is made."""
    from styleengine.engine import batch as engine

    folder = batch_folder(tmp_path)
    jobs = jobs_file(folder / "jobs.jsonl", [{"content": "c1.png", "style": "s1.png", "output": "nosub/../a.png"}])
    out = folder / "out"
    code, err = run_batch(monkeypatch, capsys, jobs, out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.png", engine.MANIFEST]
    [line] = [json.loads(x) for x in (out / engine.MANIFEST).read_text().splitlines()]
    assert line["id"] == "a" and line["output"] == str(out / "a.png") and line["status"] == "ok"


def test_a_dotdot_through_a_symlink_that_leaves_out_is_refused(tmp_path, monkeypatch, capsys):
    folder = batch_folder(tmp_path)
    out, elsewhere = folder / "out", folder / "elsewhere" / "deep"
    out.mkdir()
    elsewhere.mkdir(parents=True)
    (out / "link").symlink_to(elsewhere)  # out/link/../a.png is elsewhere/a.png to the OS
    jobs = jobs_file(folder / "jobs.jsonl", [{"content": "c1.png", "style": "s1.png", "output": "link/../a.png"}])
    code, err = run_batch(monkeypatch, capsys, jobs, out)
    assert code == 1 and "Traceback" not in err and "symbolic link" in err, err
    assert not (folder / "elsewhere" / "a.png").exists() and not (out / "a.png").exists()


@pytest.mark.parametrize("flag", ["--init", "--weights"])
def test_a_batch_input_that_is_a_jobs_output_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, flag):
    """D8d: `--init out/a.png` with a job writing out/a.png failed every job, one by one, after set-up."""
    from styleengine.engine import batch as engine, stylise as stylise_module

    def make_step(*args, **kwargs):
        raise AssertionError("the step was built: the check came too late")

    monkeypatch.setattr(stylise_module, "make_step", make_step)
    folder = batch_folder(tmp_path)
    out = folder / "out"
    out.mkdir()
    shutil.copy(folder / "c2.png", out / "a.png")  # an earlier run's output, now the batch's --init
    jobs = jobs_file(folder / "jobs.jsonl", [{"content": "c1.png", "style": "s1.png", "output": "b.png"},
                                             {"content": "c1.png", "style": "s1.png", "output": "a.png"}])
    before = (out / "a.png").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *without(BATCH_FAST, flag), flag,
                           out / "a.png")
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    role = {"--init": "init image", "--weights": "weights file"}[flag]  # the run's words (probe 19)
    assert "line 2" in lines[0] and f"the batch's {role}" in lines[0]
    assert (out / "a.png").read_bytes() == before and not (out / engine.MANIFEST).exists()


def without(flags: list[str], flag: str) -> list[str]:
    """`flags` less `flag` and its value."""
    at = flags.index(flag) if flag in flags else None
    return flags if at is None else flags[:at] + flags[at + 2:]


# ------------------------------------------------------------------ D8e: a second signal

def test_a_repeated_signal_is_absorbed_while_the_first_unwinds(monkeypatch):
    from styleengine.cli import signals

    with signals.installed():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary: the handler runs here
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # `timeout` and a scheduler, both: must not interrupt the unwinding
            os.kill(os.getpid(), signal.SIGINT)
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
        except KeyboardInterrupt:
            pytest.fail("a repeated signal interrupted the orderly exit")
        assert signals.name == "SIGTERM" and signals.exit_code == 143  # the first one is what is reported
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # in-process callers get their handlers back


def test_two_sigterms_to_a_real_run_end_it_in_order(tmp_path, pics):
    """D8e: a second SIGTERM 0.05 s after the first killed the process by signal (-15) while it exited."""
    import subprocess
    import sys
    import time

    out, trace = tmp_path / "out.png", tmp_path / "t.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "styleengine", "run", str(pics["content"]), str(pics["style"]),
                             "-o", str(out), "--weights", "random", "--model", "vgg16", "--size", "40",
                             "--iters", "100000", "--device", "cpu", "--trace", str(trace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (trace.exists() and trace.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)  # the second arrives while the first unwinds (or while the interpreter shuts down)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "(SIGTERM); wrote" in err and out.exists()


# ------------------------------------------------------------------ D8f, D8g: jobs files that say a thing twice

def jobs_error(tmp_path: Path, name: str, text: str) -> str:
    from styleengine.engine import jobs
    from styleengine.errors import ConfigError

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        list(jobs.iter_jobs(path, tmp_path / "out"))
    return str(e.value)


@pytest.mark.parametrize("line,says", [
    ('{"content": "c.png", "style": "s.png", "iters": 5, "iters": 500}', "'iters' appears twice"),
    ('{"content": "c.png", "content": "d.png", "style": "s.png"}', "'content' appears twice"),
    ('{"content": "c.png", "Content": "d.png", "style": "s.png"}', "'content' appears twice"),
    ('{"content": "c.png", "style": "s.png", "iters": 5, "iterations": 500}', "one setting (iterations)"),
    ('{"content": "c.png", "style": "s.png", "style-weight": 5, "style_weight": 9}', "one setting (style_weight)"),
    ('{"content": "c.png", "style": "s.png", "styles": ["t.png"]}', "'style' and 'styles'"),
])
def test_a_jsonl_job_that_gives_a_key_twice_is_refused_with_its_line(tmp_path, line, says):
    message = jobs_error(tmp_path, "jobs.jsonl", '{"content": "c.png", "style": "s.png"}\n' + line + "\n")
    assert "jobs.jsonl line 2" in message and says in message


@pytest.mark.parametrize("header,says", [("content,style,iters,iters", "'iters' appears twice"),
                                         ("content,style,Content", "'content' appears twice"),
                                         ("content,style,iters,iterations", "one setting (iterations)")])
def test_a_csv_header_that_names_a_column_twice_is_refused(tmp_path, header, says):
    cells = ",".join(["c.png", "s.png"] + ["5"] * (header.count(",") - 1))
    message = jobs_error(tmp_path, "jobs.csv", f"{header}\n{cells}\n")
    assert "jobs.csv line" in message and says in message


def test_a_tab_separated_csv_names_the_delimiter(tmp_path):
    """D8g: a TSV saved as .csv said 'a job needs a content image'."""
    message = jobs_error(tmp_path, "jobs.csv", "content\tstyle\nc.png\ts.png\n")
    assert "jobs.csv line 1" in message and "separated by tabs" in message and "',' or ';'" in message


def test_a_csv_without_a_content_column_says_so(tmp_path):
    message = jobs_error(tmp_path, "jobs.csv", "image,style\nc.png,s.png\n")
    assert "no 'content' column" in message and "'image'" in message


# ------------------------------------------------------------------ the cache on a full disk

def _disk_full_on(monkeypatch, module, when=lambda src, dst: True):
    """module.os.replace (every atomic write's and publish's last step) raising ENOSPC where `when` says."""
    real = module.os.replace

    def replace(src, dst, *args, **kwargs):
        if when(str(src), str(dst)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(module.os, "replace", replace)


def _leftovers(root: Path) -> list[str]:
    """Anything in the cache but entries, their records and lock files: staging folders, temp files."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith(".") and not p.name.endswith(".lock"))


@pytest.mark.parametrize("stage", ["record_validation", "publish"])
def test_a_full_disk_while_caching_an_export_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, vgg16_random,
                                                                             stage):
    from styleengine.engine.losses import LossConfig
    from styleengine.engine.ort_step import ensure_export
    from styleengine.errors import ConfigError

    root = tmp_path / "cache"
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(root))
    metas: list[str] = []

    def second_export_json(src: str, dst: str) -> bool:  # written by write_export, then with the validation
        metas.extend([dst] if dst.endswith(cache.META_FILE) else [])
        return dst.endswith(cache.META_FILE) and len(metas) == 2

    if stage == "record_validation":
        _disk_full_on(monkeypatch, cache, second_export_json)
    else:  # the staging folder renamed into place
        _disk_full_on(monkeypatch, cache, lambda src, dst: Path(dst).parent.name == "exports")
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1",))
    with pytest.raises(ConfigError, match="No space left on device.*STYLEENGINE_CACHE_DIR") as e:
        ensure_export(vgg16_random, loss, "avg")
    assert len(str(e.value).splitlines()) == 1
    assert not [p for p in (root / "exports").iterdir() if not p.name.endswith(".lock")]
    assert _leftovers(root) == []


def test_a_full_disk_while_caching_ort_optimised_graph_runs_without_it(tmp_path, monkeypatch, vgg16_random,
                                                                       make_image, caplog):
    import logging

    from styleengine.engine.losses import LossConfig
    from styleengine.engine.ort_step import OrtStep, ensure_export, graph_spec
    from styleengine.engine.steps import make_targets

    root = tmp_path / "cache"
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(root))
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1",))
    export = ensure_export(vgg16_random, loss, "avg")
    for entry in (root / "ort-optimised").glob("*/*"):  # the validation's optimised graphs: made again below
        if entry.is_dir():
            shutil.rmtree(entry)
    _disk_full_on(monkeypatch, cache, lambda src, dst: "ort-optimised" in dst)
    with caplog.at_level(logging.WARNING, logger="styleengine"):
        step = OrtStep(export, graph_spec(vgg16_random, loss, "avg", "fp32"), loss)
        step.set_targets(make_targets(step, loss, make_image(40, 40, 1), [make_image(40, 40, 2)]))
        result = step(make_image(40, 40, 3))
        step.close()
    assert result.grad.isfinite().all()
    assert any("optimising it for this run only" in r.getMessage() and "No space left" in r.getMessage()
               for r in caplog.records)
    assert not [p for p in (root / "ort-optimised").glob("*/*") if not p.name.endswith(".lock")]
    assert _leftovers(root) == []


# ------------------------------------------------------------------ the fresh probe's findings

def test_a_fifo_in_place_of_the_tuning_record_is_measured_again_not_waited_on(tmp_path, monkeypatch, caplog):
    """`tune` blocked for ever reading a FIFO at <cache>/tune.json (no writer ever comes)."""
    import logging

    from fakes import unblock_later
    from styleengine.engine import autotune
    from styleengine.engine.stylise import Settings

    try:
        from test_autotune import CPU, FakeTrial
    except ModuleNotFoundError:
        from tests.test_autotune import CPU, FakeTrial

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "fingerprint", lambda: {"cpu": "test cpu", "threads": 2})
    monkeypatch.setattr(autotune, "_memo", {})
    path = autotune.record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    fed = unblock_later(path)
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.autotune"):
        choice = autotune.choose(Settings(size=512, weights="random"), measure=FakeTrial(), machine=CPU, tune=True)
    assert not fed.is_set() and choice.measured
    assert any("FIFO" in r.getMessage() and "measuring again" in r.getMessage() for r in caplog.records)


def test_a_symlink_loop_as_an_input_is_one_line(tmp_path, monkeypatch, capsys, pics):
    """`run loop.png ...` with loop.png -> loop.png: a RuntimeError traceback from Path.resolve."""
    (tmp_path / "loop.png").symlink_to("loop.png")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "loop.png", pics["style"], "-o",
                           tmp_path / "out.png", "--weights", "random", *FAST)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "loop.png" in lines[0] and "symbolic links" in lines[0]


def test_export_with_a_seed_beyond_what_torch_takes_is_one_line(tmp_path, monkeypatch, capsys):
    """`export --seed 99999999999999999999`: a ValueError traceback ('Overflow when unpacking long long')."""
    out = tmp_path / "graphs"
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK, "--seed", "99999999999999999999")
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "seed must be at most" in lines[0].replace("at least 0 and ", "") and not out.exists()


@pytest.mark.parametrize("what", ["file", "device", "loop"])
def test_batch_out_that_is_not_a_folder_says_so(tmp_path, monkeypatch, capsys, what):
    """`--out FILE` (or a symbolic link loop) said 'cannot make the output folder FILE: File exists'."""
    folder = batch_folder(tmp_path)
    out = folder / "o" if what != "device" else Path("/dev/null")
    if what == "file":
        out.write_text("the user's")
    if what == "loop":
        out.symlink_to("o")
    jobs = jobs_file(folder / "jobs.jsonl", [{"content": "c1.png", "style": "s1.png"}])
    code, err = run_batch(monkeypatch, capsys, jobs, out)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "exists and is not a folder" in lines[0] and str(out) in lines[0]


@pytest.mark.parametrize("name,data", [("jobs.jsonl", b'{"content": "c.png", "style": "s.png"}\n'
                                                      b'{"content": "c\xff.png", "style": "s.png"}\n'),
                                       ("jobs.csv", b"content,style\nc.png,s.png\nc\xe9.png,s.png\n")])
def test_a_jobs_line_that_is_not_utf8_is_named(tmp_path, name, data):
    """A Latin-1 name in a jobs file said only 'utf-8 codec can't decode byte 0xff in position 14'."""
    from styleengine.engine import jobs
    from styleengine.errors import ConfigError

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        list(jobs.iter_jobs(path, tmp_path / "out"))
    assert f"{name} line {2 if name.endswith('jsonl') else 3}" in str(e.value) and "not UTF-8" in str(e.value)


def test_export_into_a_symlink_loop_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    """`export -o LOOP` built everything, then said 'cannot move the export into LOOP: Not a directory'."""
    out = tmp_path / "g"
    out.symlink_to("g")
    monkeypatch.setattr(cache, "write_export", lambda *a, **k: pytest.fail("the check came after the work"))
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "exists and is not a folder" in lines[0] and "symbolic links" in lines[0]


def test_a_huge_cell_is_shown_cut_short(tmp_path):
    """A 5000-digit `iters` cell was printed whole in the error line."""
    message = jobs_error(tmp_path, "jobs.csv", f"content,style,iters\nc.png,s.png,{'9' * 5000}\n")
    assert "jobs.csv line 2: bad iters" in message and "out of range" in message and len(message) < 300


@pytest.mark.parametrize("flags,says", [(["--scales", "99999999999999999999"], "use fewer scales"),
                                        (["--start-size", "32", "--scales", "99999999999999999999"], "at most 9"),
                                        (["--style-scale", "1e300"], "--size x --style-scale must be at most")])
def test_huge_scale_settings_are_one_line(tmp_path, monkeypatch, capsys, pics, flags, says):
    """`--scales 1e20`: an OverflowError traceback (with --start-size, a list of 1e20 sizes); `--style-scale
    1e300`: 'int too large to convert to float'."""
    from styleengine.engine import stylise as stylise_module

    monkeypatch.setattr(stylise_module, "make_step", lambda *a, **k: pytest.fail("the check came after the work"))
    code, _, err = run_cli(monkeypatch, capsys, "run", pics["content"], pics["style"], "-o", tmp_path / "o.png",
                           "--weights", "random", *FAST[:2], "--size", "40", "--iters", "2", *flags)
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert says in lines[0]


# ------------------------------------------------------------------ issue 25's probe: control characters in ids

@pytest.mark.parametrize("job", [
    {"id": "a\nok  b.png  done", "content": "c.png", "style": "s.png"},  # a fake line in the progress output
    {"id": "a\rb", "content": "c.png", "style": "s.png"},
    {"id": "a\x1b[2Jb", "content": "c.png", "style": "s.png"},  # a terminal escape
    {"content": "c.png", "style": "s.png", "output": "a\nb.png"},  # the id taken from the output's name
])
def test_a_job_id_with_a_control_character_is_refused(tmp_path, job):
    message = jobs_error(tmp_path, "jobs.jsonl", json.dumps(job) + "\n")
    assert "control character" in message and "\n" not in message


@pytest.mark.parametrize("weights, texture", [((0.0, 0.0, 0.0), False), ((5.0, 0.0, 0.0), True)])
def test_all_zero_loss_weights_are_one_line_before_any_work(weights, texture):
    """All-zero weights ran and gave back the start image with exit 0 (issue 23; the serve probe saw it too)."""
    from styleengine.engine.settings import Settings
    from styleengine.errors import ConfigError

    content, style, tv = weights
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        Settings(content_weight=content, style_weight=style, tv_weight=tv).validate(texture=texture)
    Settings(content_weight=content, style_weight=1.0, tv_weight=tv).validate(texture=texture)
