"""Probe 34b: folders compared by identity, not by spelling. A bind mount (`mount --bind sty bsty`) is another
name of a folder that realpath cannot see; every check that a file lies in a folder, or that two names are one
file, got past it. The mount tests skip where `mount --bind` is not permitted (not root, or a container)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability import hooked
    from test_reliability_batch import manifest_lines, one_error_line
    from test_reliability_probe13 import FAST, _pictures
    from test_reliability_stop40 import _clip, serve_refuses_its_init
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability import hooked
    from tests.test_reliability_batch import manifest_lines, one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures
    from tests.test_reliability_stop40 import _clip, serve_refuses_its_init

STYLES_SAID = "whose images are styles: the next run would read it as one"


@pytest.fixture
def bind():
    """bind(source, target): `mount --bind source target` (target made), unmounted after the test, failed or not."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mount --bind needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount command here")
    mounted: list[Path] = []

    def mount(source: Path, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mount --bind is not permitted here: {done.stderr.strip() or done.returncode}")
        mounted.append(target)
        return target

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)  # busy: detached all the same


@pytest.mark.parametrize("case", ["output", "trace", "texture"])
def test_run_and_texture_write_nothing_into_a_style_folder_by_its_bind(tmp_path, monkeypatch, capsys, bind, case):
    """`run c.png sty -o bsty/new.png` (bsty a bind of sty), or `--trace bsty/t.png`, wrote into the style folder
    and the next run read the picture as a style (probe 34b a). Refused before any work, as sty/new.png is."""
    _pictures(tmp_path)
    sty = tmp_path / "sty"
    sty.mkdir()
    (tmp_path / "s.png").rename(sty / "s.png")
    bsty = bind(sty, tmp_path / "bsty")
    argv = {"output": ("run", tmp_path / "c.png", sty, "-o", bsty / "new.png"),
            "trace": ("run", tmp_path / "c.png", sty, "-o", tmp_path / "o.png", "--trace", bsty / "t.png"),
            "texture": ("texture", bsty, "-o", sty / "t.png")}[case]
    code, _, err = run_cli(monkeypatch, capsys, *argv, *FAST)
    assert STYLES_SAID in one_error_line(code, err), err
    assert sorted(p.name for p in sty.iterdir()) == ["s.png"]


def test_rescue_beside_a_trace_never_lands_in_a_style_folder_by_its_bind(tmp_path, monkeypatch, capsys, bind):
    """`run c.png sty -o out/o.png --trace bsty/t.jsonl`, out/ gone at the write: the picture was rescued into
    bsty, next to the trace, that is into the style folder (probe 34b a). It goes to the temp folder."""
    _pictures(tmp_path)
    sty, folder, elsewhere = tmp_path / "sty", tmp_path / "out", tmp_path / "elsewhere"
    for made in (sty, folder, elsewhere):
        made.mkdir()
    (tmp_path / "s.png").rename(sty / "s.png")
    bsty = bind(sty, tmp_path / "bsty")
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    hooked(monkeypatch, {2: folder.rmdir})
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", sty, "-o", folder / "o.png", *FAST,
                           "--iters", "3", "--trace", bsty / "t.jsonl")
    assert code == 1 and f"saved the image to {elsewhere}" in err, err
    assert sorted(p.name for p in sty.iterdir()) == ["s.png", "t.jsonl"]


def test_batch_output_in_a_style_folder_by_its_bind_is_refused(tmp_path, monkeypatch, capsys, bind):
    """A job `{"styles": "out/sty", "output": "bsty/new.png"}` (out/bsty a bind of out/sty) ran, and every rerun
    was refused for good: its output was now a style (probe 34b a). Refused before any work."""
    _pictures(tmp_path)
    out = tmp_path / "out"
    (out / "sty").mkdir(parents=True)
    (tmp_path / "s.png").rename(out / "sty" / "s.png")
    bind(out / "sty", out / "bsty")
    line = {"content": str(tmp_path / "c.png"), "styles": str(out / "sty"), "output": "bsty/new.png"}
    (tmp_path / "j.jsonl").write_text(json.dumps(line) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    assert STYLES_SAID in one_error_line(code, err), err
    assert sorted(p.name for p in (out / "sty").iterdir()) == ["s.png"]


def test_a_video_keeps_no_frames_among_its_styles_by_a_bind(tmp_path, monkeypatch, capsys, bind):
    """`mount --bind fr paint.mp4.frames` with fr a style folder: the frames were written among the styles (probe
    34b b). Refused before any work."""
    _clip(tmp_path, 2)
    fr = tmp_path / "fr"
    fr.mkdir()
    (tmp_path / "s.png").rename(fr / "s.png")
    bind(fr, tmp_path / "paint.mp4.frames")
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", fr, "-o", tmp_path / "paint.mp4",
                           *FAST, "--size", "64")
    assert one_error_line(code, err).endswith("is inside paint.mp4.frames/, where the finished frames are kept; "
                                              "choose another output"), err
    assert sorted(p.name for p in fr.iterdir()) == ["s.png"]


def test_a_videos_trace_over_its_record_by_a_bind_is_refused(tmp_path, monkeypatch, capsys, bind):
    """`--trace bfr/video.json` (bfr a bind of paint.mp4.frames) replaced the resume record (probe 34b b). Refused
    before any work, the record untouched."""
    _clip(tmp_path, 2)
    frames = tmp_path / "paint.mp4.frames"
    frames.mkdir()
    (frames / "video.json").write_text("{}")
    bfr = bind(frames, tmp_path / "bfr")
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "paint.mp4", *FAST, "--size", "64", "--trace", bfr / "video.json")
    assert "is inside paint.mp4.frames/, where the finished frames are kept" in one_error_line(code, err), err
    assert (frames / "video.json").read_text() == "{}"


def test_two_batch_outputs_one_file_by_a_bind_are_refused(tmp_path, monkeypatch, capsys, bind):
    """Outputs `sub/a.png` and `bsub/a.png` (out/bsub a bind of out/sub) are one file: both jobs ran, one picture
    lost (probe 34b c). Refused before any work, as a symbolic link's twin is."""
    _pictures(tmp_path)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    bind(out / "sub", out / "bsub")
    rows = [{"id": "a", "content": str(tmp_path / "c.png"), "style": str(tmp_path / "s.png"), "output": "sub/a.png"},
            {"id": "b", "content": str(tmp_path / "c.png"), "style": str(tmp_path / "s.png"), "output": "bsub/a.png"}]
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    line = one_error_line(code, err)
    assert "line 2" in line and "is the output of job a" in line, err
    assert list((out / "sub").iterdir()) == []


def test_a_servers_own_file_in_its_results_by_a_bind_is_refused_at_its_start(tmp_path, monkeypatch, capsys, bind):
    """`serve --results-dir srv --init bres/<id>.png`, bres a bind of srv/results: the start's sweep removed the
    user's init as a crashed job's picture (probe 34b d). Refused at the start, the file untouched."""
    (tmp_path / "srv" / "results").mkdir(parents=True)
    serve_refuses_its_init(monkeypatch, capsys, tmp_path / "srv", bind(tmp_path / "srv" / "results",
                                                                       tmp_path / "bres"))


@pytest.mark.parametrize("case", ["output", "snapshot"])
def test_a_runs_trace_on_its_output_or_a_snapshot_by_a_bind_is_refused(tmp_path, monkeypatch, capsys, bind, case):
    """`-o d/o.png --trace bd/o.png` lost the trace; `-o d/p.png --save-every 2 --trace bd/p_2.png` a snapshot
    (bd a bind of d; probe 34b e). Two names not written yet are one file when their folders are one."""
    _pictures(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    bd = bind(d, tmp_path / "bd")
    flags, said = {"output": (["-o", d / "o.png", "--trace", bd / "o.png"], "is the output image"),
                   "snapshot": (["-o", d / "p.png", "--save-every", "2", "--trace", bd / "p_2.png"],
                                "is a --save-every snapshot")}[case]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", *FAST, "--iters", "4",
                           *flags)
    assert said in one_error_line(code, err), err
    assert list(d.iterdir()) == []


def test_benchs_two_outputs_one_file_by_a_bind_are_refused(tmp_path, monkeypatch, capsys, bind):
    """`bench --json d/r.json --csv bd/r.json` (bd a bind of d) wrote the file twice, the JSON lost (probe 34b f).
    Refused before any work."""
    d = tmp_path / "d"
    d.mkdir()
    bd = bind(d, tmp_path / "bd")
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--res", "32", "--backends", "torch", "--iters", "1",
                           "--json", d / "r.json", "--csv", bd / "r.json")
    assert "--json and --csv name the same file" in one_error_line(code, err), err
    assert list(d.iterdir()) == []


def test_a_batch_rescue_never_lands_in_a_jobs_style_folder(tmp_path, monkeypatch, capsys):
    """A job `{"styles": "out", "output": "r/x.png"}` with out/r gone at the write: the picture was rescued into
    --out, the job's style folder, and the rerun read it as a second style, exit 0 (probe 34b 1). It goes to the
    temp folder, as run's does."""
    from styleengine.engine import batch as engine

    _pictures(tmp_path)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "r").mkdir(parents=True)
    elsewhere.mkdir()
    (tmp_path / "s.png").rename(out / "s.png")
    line = {"content": str(tmp_path / "c.png"), "styles": str(out), "output": "r/x.png"}
    (tmp_path / "j.jsonl").write_text(json.dumps(line) + "\n")
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    real = engine.stylise_batch

    def vanish(*args, **kwargs):
        result = real(*args, **kwargs)
        shutil.rmtree(out / "r")
        return result

    monkeypatch.setattr(engine, "stylise_batch", vanish)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    assert code == 1 and "Traceback" not in err, err
    [done] = manifest_lines(out)
    assert done["status"] == "failed" and f"saved the image to {elsewhere}" in done["reason"], done
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.jsonl", "s.png"]


def test_inside_and_same_file_go_by_identity_and_keep_the_links_rules(tmp_path):
    """paths.inside and same_file's spot, with no mount: a link to a folder is the folder, a file not written yet
    is its folder's identity and its name, '..' below a missing folder folds, a folder not made yet is its path."""
    from styleengine import paths

    (tmp_path / "sty" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "sty")
    assert paths.inside(tmp_path / "link" / "new.png", tmp_path / "sty", directly=True)
    assert paths.inside(tmp_path / "sty" / "gone" / ".." / "t.png", tmp_path / "sty", directly=True)
    assert not paths.inside(tmp_path / "sty" / "sub" / "t.png", tmp_path / "sty", directly=True)
    assert paths.inside(tmp_path / "link" / "sub" / "no" / "t.png", tmp_path / "sty")
    assert not paths.inside(tmp_path / "t.png", tmp_path / "sty")
    assert paths.inside(tmp_path / "later" / "a" / "t.png", tmp_path / "later")  # not made yet: by its path
    assert paths.same_file(tmp_path / "link" / "x.png", tmp_path / "sty" / "x.png")
    assert not paths.same_file(tmp_path / "link" / "x.png", tmp_path / "sty" / "sub" / "x.png")
    assert paths.same_file(tmp_path / "no" / "x.png", tmp_path / "sty" / ".." / "no" / "x.png")
