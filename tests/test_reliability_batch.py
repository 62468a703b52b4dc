"""Issue 23: `batch` under a careless or hostile user. Outputs stay inside --out and never replace an input,
signals are honoured at every point, the manifest survives torn and short writes and bad lines, a second
batch on one --out is refused, jobs-file values are strict and their paths relative to the file.

`no_step` makes building the step a test failure: a check that passes it came too late. Signal tests that
need a real process bound every wait, so a hang fails the test instead of blocking the run.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine.engine import batch as engine
from styleengine.engine import manifest as manifest_module
from styleengine.model.weights import random_state

from fakes import unblock_later

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability import no_step  # noqa: F401 (a fixture)
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability import no_step  # noqa: F401 (a fixture)

FAST = ["--weights", "random", "--model", "vgg16", "--size", "40", "--iters", "2", "--device", "cpu",
        "--batch-size", "1"]


def picture(path: Path, seed: int, shape=(40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    picture(tmp_path / "c1.png", 1)
    picture(tmp_path / "c2.png", 2)
    picture(tmp_path / "s1.png", 3)
    return tmp_path


def batch(monkeypatch, capsys, jobs: Path, out: Path, *flags) -> tuple[int, str]:
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *FAST, *flags)
    return code, err


def one_error_line(code: int, err: str) -> str:
    assert code == 1 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / engine.MANIFEST).read_text().splitlines()]


# ------------------------------------------------------------------ 1. outputs confined to --out, never an input

@pytest.mark.parametrize("how", ["dotdot", "absolute", "inner_dotdot", "symlinked_folder", "the_folder"])
def test_output_outside_out_is_refused_before_work(folder, monkeypatch, capsys, no_step, how):
    victim = picture(folder / "victim" / "holiday.png", 9)
    before = victim.read_bytes()
    out = folder / "a" / "b" / "out"
    out.mkdir(parents=True)
    (out / "escape").symlink_to(folder / "victim")
    output = {"dotdot": "../../../victim/holiday.png", "absolute": str(victim),
              "inner_dotdot": "sub/../../../../victim/holiday.png", "symlinked_folder": "escape/holiday.png",
              "the_folder": "."}[how]
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "x", "content": "c1.png", "style": "s1.png", "output": output}])
    line = one_error_line(*batch(monkeypatch, capsys, jobs, out))
    assert "line 1" in line and ("outside" in line and str(out) in line or "names no file" in line
                                 or "is a folder" in line)
    assert victim.read_bytes() == before
    assert not (out / engine.MANIFEST).exists()


def test_output_that_is_another_jobs_content_is_refused(folder, monkeypatch, capsys, no_step):
    """`--out .` with one job's output being another job's content: the user's photo would be replaced."""
    before = (folder / "c2.png").read_bytes()
    jobs = write_jobs(folder / "jobs.jsonl", [
        {"id": "a", "content": "c1.png", "style": "s1.png", "output": "c2.png"},
        {"id": "b", "content": "c2.png", "style": "s1.png", "output": "b_out.png"}])
    line = one_error_line(*batch(monkeypatch, capsys, jobs, folder))
    assert "c2.png" in line and "content image" in line and "line 1" in line
    assert (folder / "c2.png").read_bytes() == before


def test_output_that_is_another_jobs_hard_linked_style_is_refused(folder, monkeypatch, capsys, no_step):
    out = folder / "out"
    out.mkdir()
    os.link(folder / "s1.png", out / "linked.png")
    jobs = write_jobs(folder / "jobs.jsonl", [
        {"id": "a", "content": "c1.png", "style": "s1.png", "output": "linked.png"}])
    line = one_error_line(*batch(monkeypatch, capsys, jobs, out))
    assert "style image" in line


@pytest.mark.parametrize("which", ["manifest", "lock"])
def test_output_onto_the_manifest_or_lock_is_refused(folder, monkeypatch, capsys, no_step, which):
    name = engine.MANIFEST if which == "manifest" else engine.LOCK_FILE
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png", "output": name}])
    one_error_line(*batch(monkeypatch, capsys, jobs, folder / "out"))


def test_two_outputs_resolving_to_one_file_are_refused(folder, monkeypatch, capsys, no_step):
    out = folder / "out"
    (out / "sub").mkdir(parents=True)
    (out / "link").symlink_to(out / "sub")
    jobs = write_jobs(folder / "jobs.jsonl", [
        {"id": "a", "content": "c1.png", "style": "s1.png", "output": "sub/a.png"},
        {"id": "b", "content": "c2.png", "style": "s1.png", "output": "link/a.png"}])
    line = one_error_line(*batch(monkeypatch, capsys, jobs, out))
    assert "a.png" in line and "line 2" in line


def test_folder_vanishing_before_the_write_rescues_the_image(folder, monkeypatch, capsys):
    """A batch job whose folder vanished keeps its image, as `run` does: saved elsewhere, said where."""
    out = folder / "out"
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png",
                                               "output": "gone/a.png"}])
    real = engine.stylise_batch

    def vanish(*args, **kwargs):
        result = real(*args, **kwargs)
        (out / "gone").rmdir()
        return result

    monkeypatch.setattr(engine, "stylise_batch", vanish)
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert code == 1 and "Traceback" not in err
    [line] = manifest_lines(out)
    assert line["status"] == "failed" and "saved the image to" in line["reason"]
    rescued = Path(line["reason"].split("saved the image to ")[1].split(" instead")[0])
    assert rescued.is_file() and rescued.parent == out
    rescued.unlink()


# ------------------------------------------------------------------ 2. signals and FIFOs

def test_sigterm_while_recording_is_acted_on(folder, monkeypatch, capsys):
    """A signal held back while a result is recorded stops the batch right after that write."""
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": f"j{i}", "content": "missing.png", "style": "s1.png",
                                               "output": f"o{i}.png"}
                                              for i in range(5)])
    real = engine.record

    def record(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # held until the line is written
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 143 and "Traceback" not in err, err
    assert "interrupted (SIGTERM)" in err
    assert len(manifest_lines(folder / "out")) == 1


def test_sigterm_to_a_real_batch_recording_many_jobs(folder):
    """10 000 jobs, all failing at planning, so the process spends its time recording: SIGTERM ends it."""
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": f"j{i}", "content": "missing.png", "style": "s1.png",
                                               "output": f"o{i}.png"}
                                              for i in range(10_000)])
    out = folder / "out"
    proc = subprocess.Popen([sys.executable, "-m", "styleengine", "batch", str(jobs), "--out", str(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / engine.MANIFEST).exists() and (out / engine.MANIFEST).stat().st_size > 2000):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)  # a held signal is acted on after the line being written
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted (SIGTERM)" in err
    assert len(manifest_lines(out)) < 10_000


def test_fifo_jobs_file_is_refused(folder, monkeypatch, capsys, no_step):
    fifo = folder / "jobs.jsonl"
    os.mkfifo(fifo)
    fed = unblock_later(fifo)
    line = one_error_line(*batch(monkeypatch, capsys, fifo, folder / "out"))
    assert "not a regular file" in line and not fed.is_set()


def test_fifo_content_image_fails_that_job(folder, monkeypatch, capsys, no_step):
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    fed = unblock_later(fifo)
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "fifo.png", "style": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 1 and "Traceback" not in err
    [line] = manifest_lines(folder / "out")
    assert line["status"] == "failed" and "not a regular file" in line["reason"]
    assert not fed.is_set()  # nothing opened it (and waited for a writer)


# ------------------------------------------------------------------ 3. the manifest

def test_torn_last_line_is_cut_before_appending(folder, monkeypatch, capsys):
    out = folder / "out"
    out.mkdir()
    (out / engine.MANIFEST).write_text('{"id": "old", "status": "ok", "settings_hash": "0"}\n{"id": "x", "sta')
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert code == 0, err
    assert "torn" in err and "line 2" in err
    assert [line["id"] for line in manifest_lines(out)] == ["old", "a"]  # every line parses


def test_short_writes_are_completed(folder, monkeypatch, capsys):
    real = os.write

    def short(fd, data):
        return real(fd, bytes(data)[:max(1, len(data) // 3)])  # what a nearly full disk or a signal may do

    monkeypatch.setattr(manifest_module.os, "write", short)
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": f"j{i}", "content": "missing.png", "style": "s1.png",
                                               "output": f"o{i}.png"}
                                              for i in range(2)])
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 1 and "Traceback" not in err
    assert [line["id"] for line in manifest_lines(folder / "out")] == ["j0", "j1"]


def test_disk_full_on_the_manifest_is_one_line_and_leaves_no_torn_line(folder, monkeypatch, capsys):
    real, calls = os.write, []

    def full(fd, data):
        calls.append(fd)
        if len(calls) == 1:
            return real(fd, bytes(data)[:5])  # part of the first line, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module.os, "write", full)
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "j0", "content": "missing.png", "style": "s1.png"}])
    line = one_error_line(*batch(monkeypatch, capsys, jobs, folder / "out"))
    assert "No space left on device" in line and engine.MANIFEST in line
    assert (folder / "out" / engine.MANIFEST).read_bytes() == b""  # the partial line was cut off again


def test_bad_manifest_lines_are_reported_and_skipped(folder, monkeypatch, capsys):
    out = folder / "out"
    out.mkdir()
    (out / engine.MANIFEST).write_bytes(
        b'5\n{"id": "a", "status": "ok"}\n{"id": [1], "status": "ok", "settings_hash": "x"}\n'
        b'\xff\xfe{"id": "b"}\n{"id": "c", "status": "ok", "settings_hash": 7}\n')
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "j0", "content": "missing.png", "style": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert code == 1 and "Traceback" not in err, err
    for number in range(1, 6):
        assert f"{engine.MANIFEST} line {number}" in err
    assert json.loads((out / engine.MANIFEST).read_bytes().splitlines()[-1])["id"] == "j0"


def test_second_batch_on_one_out_is_refused(folder, monkeypatch, capsys, no_step):
    out = folder / "out"
    out.mkdir()
    with open(out / engine.LOCK_FILE, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another batch holds it
        jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png"}])
        line = one_error_line(*batch(monkeypatch, capsys, jobs, out))
    assert "another batch" in line and str(out) in line
    assert not (out / engine.MANIFEST).exists()


# ------------------------------------------------------------------ 4. jobs-file paths and types

def test_init_and_weights_paths_are_relative_to_the_jobs_file(folder, monkeypatch, capsys):
    here = folder / "jobs"
    picture(here / "c.png", 1)
    picture(here / "s.png", 2)
    picture(here / "init.png", 3)
    torch.save(random_state("vgg16", seed=1), here / "w.pth")
    jobs = write_jobs(here / "jobs.jsonl", [{"id": "a", "content": "c.png", "style": "s.png", "init": "init.png",
                                            "weights": "w.pth"}])
    elsewhere = folder / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 0, err
    assert manifest_lines(folder / "out")[0]["status"] == "ok"


@pytest.mark.parametrize("raw, word", [
    ('"iters": true', "iters"), ('"iters": 2.7', "iters"), ('"iters": Infinity', "iters"),
    ('"iters": 1e20', "iters"), ('"seed": 1e20', "seed"), ('"size": "64.5"', "size"),
    ('"styles": 5', "styles"), ('"style_weight": NaN', "style_weight"), ('"style_weight": true', "style_weight"),
    ('"preserve_colors": 2', "preserve_colors"), ('"id": [1]', "id"), ('"seed": 100000000000000000000', "seed"),
])
def test_jobs_file_values_are_strict(folder, monkeypatch, capsys, no_step, raw, word):
    jobs = folder / "jobs.jsonl"
    jobs.write_text('{"id": "ok", "content": "c1.png", "style": "s1.png"}\n'
                    '{"content": "c2.png", "style": "s1.png", ' + raw + '}\n')
    line = one_error_line(*batch(monkeypatch, capsys, jobs, folder / "out"))
    assert "line 2" in line and word in line


def test_csv_overrides_are_strict(folder, monkeypatch, capsys, no_step):
    jobs = folder / "jobs.csv"
    jobs.write_text("content,style,iters\nc1.png,s1.png,2.5\n")
    line = one_error_line(*batch(monkeypatch, capsys, jobs, folder / "out"))
    assert "line 2" in line and "iters" in line


# ------------------------------------------------------------------ 7. CSV dialects and per-job path errors

@pytest.mark.parametrize("text", [
    "\ufeffcontent,style\nc1.png,s1.png\n",
    "Content , Style\nc1.png,s1.png\n",
    "content;style\nc1.png;s1.png\n",
])
def test_csv_as_spreadsheets_write_it_is_read(folder, monkeypatch, capsys, text):
    jobs = folder / "jobs.csv"
    jobs.write_text(text, encoding="utf-8")
    parsed = engine.load_jobs(jobs, folder / "out")
    assert [(j.content.name, [s.name for s in j.styles]) for j in parsed] == [("c1.png", ["s1.png"])]


def test_csv_unterminated_quote_says_so(folder, monkeypatch, capsys, no_step):
    jobs = folder / "jobs.csv"
    jobs.write_text('content,style\n"c1.png,s1.png\n')
    line = one_error_line(*batch(monkeypatch, capsys, jobs, folder / "out"))
    assert "quote is not closed" in line and "line 2" in line


@pytest.mark.parametrize("where", ["content", "output_nul", "output_long"])
def test_bad_path_fails_that_job_only(folder, monkeypatch, capsys, where):
    bad = {"content": {"content": "c\u0000.png", "style": "s1.png", "id": "bad"},
           "output_nul": {"content": "c1.png", "style": "s1.png", "output": "x\u0000.png", "id": "bad"},
           "output_long": {"content": "c1.png", "style": "s1.png", "output": "y" * 300 + ".png", "id": "bad"}}[where]
    jobs = write_jobs(folder / "jobs.jsonl", [bad, {"id": "good", "content": "c2.png", "style": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 1 and "Traceback" not in err, err
    lines = {line["id"]: line for line in manifest_lines(folder / "out")}
    assert lines["bad"]["status"] == "failed" and lines["good"]["status"] == "ok"
    assert ("NUL" in lines["bad"]["reason"]) if "nul" in where or where == "content" else (
        "too long" in lines["bad"]["reason"])


# ------------------------------------------------------------------ 8. jobs files streamed

def test_jobs_are_planned_and_run_a_chunk_at_a_time(folder, monkeypatch, capsys):
    """A long jobs file: the first picture starts after a chunk is planned, not after the whole file."""
    count = 2000
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": f"j{i}", "content": "c1.png", "style": "s1.png",
                                               "output": f"o{i}.png"} for i in range(count)])
    hashed, planned_at_first_run = [], []
    real_hash = engine.settings_hash

    def counting_hash(*args, **kwargs):
        hashed.append(None)
        return real_hash(*args, **kwargs)

    def first_run(*args, **kwargs):
        planned_at_first_run.append(len(hashed))
        raise KeyboardInterrupt  # enough: the test is about what came before

    monkeypatch.setattr(engine, "settings_hash", counting_hash)
    monkeypatch.setattr(engine, "stylise_batch", first_run)
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert code == 130 and "Traceback" not in err, err
    assert planned_at_first_run and planned_at_first_run[0] <= engine.CHUNK < count
    assert f"of {count} jobs left" in err


# ------------------------------------------------------------------ found by the probe after the fixes above

def test_a_symlinked_manifest_is_refused_and_its_target_untouched(folder, monkeypatch, capsys, no_step):
    out, victim = folder / "out", folder / "notes.txt"
    out.mkdir()
    victim.write_text("user notes\n")
    (out / engine.MANIFEST).symlink_to(victim)
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "c1.png", "style": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert "symbolic link" in one_error_line(code, err)
    assert victim.read_text() == "user notes\n"


@pytest.mark.parametrize("line", ["[" * 100000 + "]" * 100000, '{"id": "a", "batch": ' + "9" * 5000 + "}"])
def test_json_too_deep_or_too_long_is_a_bad_line_not_a_traceback(folder, monkeypatch, capsys, no_step, line):
    out = folder / "out"
    out.mkdir()
    # after a line of its own (a file of that line alone is no manifest of ours: refused, stop 52)
    (out / engine.MANIFEST).write_text('{"id": "x", "status": "failed", "error": "e"}\n' + line + "\n")
    jobs = write_jobs(folder / "jobs.jsonl", [{"id": "a", "content": "missing.png", "style": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert "Traceback" not in err and "line 2" in err  # the manifest's bad line, reported and skipped
    bad_jobs = folder / "bad.jsonl"
    bad_jobs.write_text(line + "\n")
    code, err = batch(monkeypatch, capsys, bad_jobs, folder / "out2")
    assert "line 1" in one_error_line(code, err)


@pytest.mark.parametrize("flag", ["--contents", "--styles"])
def test_out_that_is_an_input_folder_is_refused_on_the_first_run(tmp_path, monkeypatch, capsys, no_step, flag):
    """The first run was accepted and every later one refused its own outputs as inputs: never resumable."""
    (tmp_path / "cont").mkdir()
    (tmp_path / "sty").mkdir()
    picture(tmp_path / "cont" / "c.png", 1)
    picture(tmp_path / "sty" / "s.png", 2)
    out = tmp_path / ("cont" if flag == "--contents" else "sty")
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "cont", "--styles", tmp_path / "sty",
                           "--out", out, *FAST)
    assert "give another --out" in one_error_line(code, err)
    assert sorted(p.name for p in out.iterdir()) == ["c.png" if flag == "--contents" else "s.png"]
