"""Issue 23, probe 5: the issue's own areas (batch outputs, signals, manifests, traces and snapshots, exports,
caches, messages) probed again on 1e49160, as its first probe did: 270 cases (239 held) on tiny runs (40-64 px, random
weights, 2 iterations; read-only and 200 kB tmpfs mounts; SIGTERM/SIGINT/SIGHUP/SIGKILL at chosen moments).
Each defect it found is a test here, as the case a careless or hostile user tried.

    area (cases)             held  what was tried
    batch outputs (29+6)      26   ../, absolute, links in --out (folder, file, chain, dangling), '.', NUL, 250/300
                                   bytes, trailing dot/space, NFC/NFD and case twins, one output twice, --out . onto
                                   a content, outputs onto init/weights/masks via $VAR and ~ (job and batch), hard
                                   links, style folders, an appended job, a folder swapped for a link mid-run
    lock and signals (88)     82   second batch (also via a linked --out), stale lock after SIGKILL, SIGTERM/INT/HUP
                                   in run/batch/invert/texture/visualize/video set-up and loop, a 200k-line jobs file
                                   being checked, a batch recording 300 skips; 51 SIGTERMs swept over set-up
    odd inputs (46)           40   FIFO, /dev/zero, a folder as jobs file, content, style, init, mask, weights (run,
                                   batch job, batch flag: also missing, export, video)
    manifests (31)            27   torn tail, garbage line, 12 wrong-typed lines, a folder, FIFO, link out, hard
                                   link, CRLF, empty, 50k bad lines, lock as folder/FIFO/link, full disk, no newline
    traces, snapshots (19)    18   onto weights (~), masks, init (link), a snapshot, the output (hard link), content
                                   ($VAR), full and read-only disks; invert --distances onto its weights
    exports (16)              15   earlier export, Ctrl-C/SIGTERM/SIGHUP at 1.5/3/4.5 s, user's step.onnx, its own
                                   weights, a folder in the way, full and read-only disks, -o a file, odd weights
    caches (18)               16   graphs swapped with the record updated, truncated, folders for files, exports a
                                   file, cache dir a file/ro/relative/~/$VAR/loop/FIFO/empty/full, SIGKILL mid-export
    messages (17)             15   --out ro//dev/null/a file, -o /dev/null or a folder, --trace and --distances a
                                   folder or ro, missing/odd jobs files, --batch-size 0, --content-mask=~/m.png
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability import no_step  # noqa: F401 (a fixture)
    from test_reliability_batch import (FAST, batch, folder, manifest_lines, one_error_line,  # noqa: F401
                                        picture, write_jobs)
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability import no_step  # noqa: F401
    from tests.test_reliability_batch import (FAST, batch, folder, manifest_lines, one_error_line,  # noqa: F401
                                              picture, write_jobs)

RUN_FAST = [*FAST[:FAST.index("--batch-size")], "--backend", "torch"]  # run takes no --batch-size


# ------------------------------------------------------------------ invert: --distances onto its own weights file

def test_invert_distances_onto_the_weights_file_is_refused(tmp_path, monkeypatch, capsys, vgg16_random):
    """`invert pic.png -o o.png --weights w.pth --distances w.pth` wrote the distances' JSON over the weights
    (exit 0): --distances was compared with the image and the output only, not the weights it reads."""
    picture(tmp_path / "c.png", 1)
    torch.save(vgg16_random.state, tmp_path / "w.pth")
    before = (tmp_path / "w.pth").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", "--distances",
                           tmp_path / "w.pth", "--weights", tmp_path / "w.pth", "--model", "vgg16", "--size", "40",
                           "--iters", "2", "--device", "cpu")
    assert "is the weights file" in one_error_line(code, err)
    assert (tmp_path / "w.pth").read_bytes() == before and not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ batch: an output inside a job's style folder

@pytest.mark.parametrize("whose", ["another job's", "its own"])
def test_an_output_inside_a_style_folder_is_refused_before_any_work(folder, monkeypatch, capsys, no_step, whose):
    """A job's "styles": "out/sty" (a folder, read for its images) and an output "sty/new.png": the first run
    was ok, and every rerun was refused (the output had become a style image of that job), so the batch could
    neither resume nor skip; with over a chunk of jobs before it, a job read another's output as a style."""
    out = folder / "out"
    picture(out / "sty" / "st.png", 7)
    jobs = [{"content": "c1.png", "styles": "out/sty", "output": "a.png" if whose != "its own" else "sty/new.png"}]
    if whose != "its own":
        jobs.append({"content": "c2.png", "styles": "s1.png", "output": "sty/new.png"})
    code, err = batch(monkeypatch, capsys, write_jobs(folder / "jobs.jsonl", jobs), out)
    line = one_error_line(code, err)
    assert "style folder" in line and "sty" in line, line
    assert not (out / "sty" / "new.png").exists() and not (out / "manifest.jsonl").exists()


def test_a_style_folder_named_after_the_output_inside_it_is_refused(folder, monkeypatch, capsys, no_step):
    """The same, the job naming the folder coming second (the check looks both ways)."""
    out = folder / "out"
    picture(out / "sty" / "st.png", 7)
    jobs = [{"content": "c2.png", "styles": "s1.png", "output": "sty/new.png"},
            {"content": "c1.png", "styles": f"{out / 'sty'}", "output": "a.png"}]
    code, err = batch(monkeypatch, capsys, write_jobs(folder / "jobs.jsonl", jobs), out)
    assert "style folder" in one_error_line(code, err)


# ------------------------------------------------------------------ batch: its own --init, --weights, masks

@pytest.mark.parametrize("flag, name, kind", [("--init", "missing.png", "missing"), ("--init", "dir.png", "folder"),
                                              ("--weights", "missing.pth", "missing"), ("--weights", "f.pth", "fifo"),
                                              ("--content-mask", "m.png", "folder")])
def test_the_batchs_own_input_files_are_checked_before_any_work(folder, monkeypatch, capsys, no_step, flag, name,
                                                                kind):
    """`batch jobs.jsonl --weights missing.pth` (or an --init that is a folder, a FIFO as weights) ran every job to
    the same 'cannot read' failure, a manifest line each, exit 1: a bad flag of the batch is one line before any
    work and nothing written, as run's is."""
    path = folder / name
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png", "output": f"o{i}.png"}
                                              for i in range(3)])
    out = folder / "out"
    code, err = batch(monkeypatch, capsys, jobs, out, flag, path)
    line = one_error_line(code, err)
    # the run's words ("content mask 1 m.png is a directory"; probe 19 found "--content mask 1")
    assert flag.lstrip("-").replace("-", " ") in line and str(path) in line and " --" not in line, line
    assert not (out / "manifest.jsonl").exists()


# ------------------------------------------------------------------ batch: a hard-linked manifest

def test_a_hard_linked_manifest_is_refused_and_the_other_name_untouched(folder, monkeypatch, capsys, no_step):
    """`cp -al out backup` (a snapshot by hard links) and the same batch again: each line appended to
    out/manifest.jsonl went into backup/manifest.jsonl too (a file outside --out); a symbolic link was refused."""
    out = folder / "out"
    out.mkdir()
    (folder / "backup.jsonl").write_text("")
    os.link(folder / "backup.jsonl", out / "manifest.jsonl")
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert "hard link" in one_error_line(code, err)
    assert (folder / "backup.jsonl").read_text() == ""


# ------------------------------------------------------------------ export: something --force cannot replace

@pytest.mark.parametrize("name", ["tile_step.onnx", "export.json"])
def test_export_force_onto_a_folder_in_the_way_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, name):
    """`export -o e --force` where e/tile_step.onnx is a folder: step.onnx and features.onnx were replaced, then
    'Is a directory', leaving the new graphs beside the old export.json, whose hashes no longer matched."""
    out = tmp_path / "e"
    out.mkdir()
    for other in ("step.onnx", "features.onnx", "tile_step.onnx", "export.json"):
        (out / other).mkdir() if other == name else (out / other).write_bytes(b"earlier " + other.encode())
    monkeypatch.setattr("styleengine.export.cache.write_export", lambda *a, **k: pytest.fail("the export started"))
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, "--model", "vgg16", "--weights", "random",
                           "--no-validate", "--force")
    line = one_error_line(code, err)
    assert name in line and "is a directory" in line, line
    assert all((out / o).read_bytes() == b"earlier " + o.encode() for o in ("step.onnx", "features.onnx")
               if o != name)


# ------------------------------------------------------------------ mask flags: ~ and $VARS as --init's are

@pytest.mark.parametrize("spelled", ["~/m.png", "$MASKS/m.png"])
def test_a_mask_flag_after_equals_is_expanded_as_init_and_weights_are(tmp_path, monkeypatch, capsys, spelled):
    """`--content-mask=~/m.png` (no shell expands after '='): 'image not found: ~/m.png', where --init=~/i.png and
    --weights=~/w.pth are expanded, and a jobs file's masks too."""
    picture(tmp_path / "c.png", 1)
    picture(tmp_path / "s.png", 2)
    Image.new("L", (48, 40), 255).save(tmp_path / "m.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MASKS", str(tmp_path))
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png",
                           *RUN_FAST, f"--content-mask={spelled}")
    assert code == 0, err
    assert (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ the cache folder's setting

def test_a_cache_dir_setting_with_a_variable_is_expanded_not_made_in_the_working_directory(tmp_path, monkeypatch):
    """STYLEENGINE_CACHE_DIR='$SCRATCH/cache' (an env file or a systemd unit, which expand no variables) made a
    folder named '$SCRATCH' in the working directory and cached ~270 MB there; '~' was expanded."""
    from styleengine.paths import cache_root

    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", "$SCRATCH/cache")
    assert cache_root() == tmp_path / "scratch" / "cache"


# ------------------------------------------------------------------ a manifest of many bad lines

def test_many_bad_manifest_lines_are_a_few_warnings_and_a_count(folder, monkeypatch, capsys, no_step):
    """50 000 lines of garbage appended to a manifest (a log redirected into it by mistake) printed 50 000
    warning lines before the first job."""
    out = folder / "out"
    out.mkdir()
    # appended to a manifest's line (a file of garbage alone is no manifest of ours: refused, stop 52)
    (out / "manifest.jsonl").write_text('{"id": "x", "status": "failed", "error": "e"}\n' + "garbage\n" * 5000)
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "nope.png"}])  # fails at once
    code, err = batch(monkeypatch, capsys, jobs, out)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) <= 11, len(warnings)
    assert "line 2:" in warnings[0] and "4990 more" in warnings[-1], warnings[-1]


def test_a_bad_batch_size_names_its_flag(folder, monkeypatch, capsys, no_step):
    """'batch size must be >= 1, got 0' named no flag (every other bad value names its flag)."""
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, folder / "out", "--batch-size", "0")
    assert "--batch-size" in one_error_line(code, err)


# ------------------------------------------------------------------ batch: the jobs file changed while it runs

def _while_running(monkeypatch, action) -> None:
    """Call `action()` once, as the first chunk of jobs starts running (after every check)."""
    from styleengine.engine import batch as engine

    real, calls = engine.run_groups, []

    def run_groups(*args, **kwargs):
        if not calls:
            action()
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "run_groups", run_groups)


@pytest.mark.parametrize("appended, says", [
    ({"content": "c2.png", "styles": "s1.png", "output": "pic.png"}, "is the content image"),
    ({"content": "c2.png", "styles": "s1.png", "output": "o0.png", "id": "again"}, "is the output of job o0"),
])
def test_a_job_appended_while_the_batch_runs_is_checked_across_jobs(folder, monkeypatch, capsys, appended, says):
    """A jobs file used as a queue (a line appended while the batch runs): the file is read twice, the checks
    across jobs made on the first reading only, so the appended job overwrote a content image kept in --out (or
    wrote a second 'ok' picture over job o0's, one of them lost)."""
    out = folder / "out"
    picture(out / "pic.png", 9)
    before = (out / "pic.png").read_bytes()
    monkeypatch.setattr("styleengine.engine.batch.CHUNK", 1)  # the new line is read after the first job ran
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "out/pic.png", "styles": "s1.png", "output": f"o{i}.png"}
                                              for i in range(2)])

    def append() -> None:
        with open(jobs, "a") as f:
            f.write(json.dumps(appended) + "\n")

    _while_running(monkeypatch, append)
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert says in one_error_line(code, err)
    assert (out / "pic.png").read_bytes() == before
    assert [line["id"] for line in manifest_lines(out) if line["output"].endswith("o0.png")] == ["o0"]


@pytest.mark.parametrize("when", ["before its write", "before its folder is made"])
def test_a_folder_swapped_for_a_link_out_of_out_during_the_run_is_not_written_through(folder, monkeypatch, capsys,
                                                                                      when):
    """out/sub checked as a folder inside --out, then replaced by a symbolic link to a folder outside while the
    batch ran (as its job ran, or as its chunk was planned): the picture was written through it, and its folders
    made there, outside --out."""
    from styleengine.engine import batch as engine

    out, victim = folder / "out", folder / "victim"
    victim.mkdir()
    (out / "sub").mkdir(parents=True)
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png", "output": "sub/deeper/a.png"}])

    def swap() -> None:
        shutil.rmtree(out / "sub")
        (out / "sub").symlink_to(victim)

    if when == "before its write":
        _while_running(monkeypatch, swap)
    else:  # after the checks across jobs, before the job's own checks
        real_plan = engine.plan
        monkeypatch.setattr(engine, "plan", lambda *a, **k: (swap(), real_plan(*a, **k))[1])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert code == 1 and "Traceback" not in err
    assert list(victim.iterdir()) == []
    (line,) = manifest_lines(out)
    assert line["status"] == "failed" and "outside --out" in line["reason"], line
    if when == "before its write":
        assert "saved the image to" in line["reason"]


# ------------------------------------------------------------------ a whole last manifest line without its newline

def test_a_whole_last_manifest_line_without_a_newline_is_kept_not_cut(folder, monkeypatch, capsys):
    """A manifest saved by an editor that drops the final newline (VS Code's default): its last line, a whole
    record, was taken for a torn write and cut off, so that job ran again."""
    out = folder / "out"
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png", "output": f"o{i}.png"}
                                              for i in range(2)])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert code == 0, err
    path = out / "manifest.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert code == 0 and "0 ok, 2 skipped" in err, err
    assert "torn" not in err
    assert [line["status"] for line in manifest_lines(out)] == ["ok", "ok", "skipped", "skipped"]


def test_a_lock_file_that_is_a_link_out_of_out_is_refused_and_nothing_made_there(folder, monkeypatch, capsys, no_step):
    """out/.batch.lock a dangling symbolic link to a path outside --out: taking the lock created that file (the
    manifest, a link too, is refused)."""
    out = folder / "out"
    out.mkdir()
    (out / ".batch.lock").symlink_to(folder / "made-outside")
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png"}])
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert "symbolic link" in one_error_line(code, err)
    assert not (folder / "made-outside").exists()


# ------------------------------------------------------------------ batch: an output inside another output

@pytest.mark.parametrize("first, second", [("a.png", "a.png/b.png"), ("a.png/b.png", "a.png")])
def test_an_output_whose_folder_is_another_output_is_refused_before_any_work(folder, monkeypatch, capsys, no_step,
                                                                            first, second):
    """"a.png" and "a.png/b.png": the second job's folder a.png was made before the first wrote, so the first
    failed ('it is a directory') on every run: a batch that could never finish."""
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png", "output": first},
                                              {"content": "c2.png", "styles": "s1.png", "output": second}])
    out = folder / "out"
    code, err = batch(monkeypatch, capsys, jobs, out)
    assert "folder" in one_error_line(code, err)
    assert not (out / "a.png").exists()


# ------------------------------------------------------------------ batch: names one file where case is folded

@pytest.mark.parametrize("first, second", [("Holiday.png", "holiday.png"), ("caf\u00e9.png", "cafe\u0301.png")])
def test_outputs_one_file_on_a_case_folding_file_system_are_refused(folder, monkeypatch, capsys, no_step, first,
                                                                    second):
    """On macOS's or Windows' file systems "Holiday.png" and "holiday.png" (or an NFC and an NFD 'café') are one
    file: both jobs were 'ok', the second picture over the first, and every rerun skipped both."""
    from styleengine import paths

    monkeypatch.setattr(paths, "folds_names", lambda folder: True)  # as a probe of such a folder answers
    jobs = write_jobs(folder / "jobs.jsonl", [{"content": "c1.png", "styles": "s1.png", "output": first, "id": "1"},
                                              {"content": "c2.png", "styles": "s1.png", "output": second, "id": "2"}])
    code, err = batch(monkeypatch, capsys, jobs, folder / "out")
    assert "case" in one_error_line(code, err)


def test_a_folder_that_folds_names_is_told_from_one_that_does_not(tmp_path):
    """The probe: a file made with a lower-case name, looked up in upper case (here, Linux: not folded)."""
    from styleengine import paths

    assert paths.folds_names(tmp_path) is False and list(tmp_path.iterdir()) == []
    assert paths.folds_names(tmp_path / "missing") is False


# ------------------------------------------------------------------ a signal during an import

def test_a_signal_during_an_import_is_raised_once_the_import_is_done(tmp_path, monkeypatch):
    """SIGTERM 1.3 s into `invert` (or `run`, `texture`): raised inside onnxruntime's extension module's
    initialisation, it came out as 'ImportError: initialization failed', a traceback and exit 1; another time,
    the process exited by SIGINT (-2) after saying 'interrupted (SIGTERM)'. An import runs to its end first."""
    import signal
    import sys
    import time

    from styleengine.cli import signals

    (tmp_path / "probe5_slow_module.py").write_text(
        "import signal, time\nsignal.raise_signal(signal.SIGTERM)\nfor _ in range(20):\n    time.sleep(0.005)\n"
        "DONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with signals.installed():
        with pytest.raises(KeyboardInterrupt):
            import probe5_slow_module  # noqa: F401
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the held signal is raised here, soon after
                time.sleep(0.01)
        assert signals.exit_code == 143
    assert sys.modules["probe5_slow_module"].DONE
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # the timer's handler is handed back
