"""Issue 23, stop 57: probe 57's findings (on 4172d7f)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

try:
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import _pictures
    from test_reliability_stop43 import three_jobs_batch
    from test_reliability_stop55 import signal_at_json_write, told_as_a_zip
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import _pictures
    from tests.test_reliability_stop43 import three_jobs_batch
    from tests.test_reliability_stop55 import signal_at_json_write, told_as_a_zip

FAST = ["--weights", "random", "--size", "40", "--iters", "3", "--backend", "torch"]


def test_a_limit_probe_shown_is_in_json(tmp_path, monkeypatch, capsys, machine_once):
    """bench --limit said each probe's line before --json held it: a signal then lost a row shown (probe 57a, 1;
    stop 55 held back only run_all's round lines). A probe's line is said once --json holds it."""
    from styleengine.benchmarks import analysis

    path = tmp_path / "b.json"
    signal_at_json_write(monkeypatch, 2)  # the second probe's partial document

    def search_limit(probe, *, start):  # two small probes, not the search from 512 px
        probes = [probe(32), probe(24)]
        return 32, probes

    monkeypatch.setattr(analysis, "search_limit", search_limit)
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--limit", "--backends", "naive", "--devices", "cpu",
                           "--precision", "fp32", "--iters", "1", "--warmup", "0", "--time-budget", "60",
                           "--json", path)
    assert code == 143, err
    assert "naive cpu fp32 32x32: ok" in err and "24x24" not in err, err
    assert f"{path} holds the 1 row done" in err and len(json.loads(path.read_text())["rows"]) == 1, err


def test_another_tools_manifest_a_power_cut_zeroed_is_refused_not_cut(tmp_path, monkeypatch, capsys):
    """Another tool's one-line manifest.jsonl whose tail a power cut zeroed was cut to nothing and taken over as
    'torn', exit 0 (probe 57a, 2): any line holding a power cut's NULs counted as ours. The text before the NULs is
    judged: nothing, or the start of a line of ours."""
    from styleengine.engine import manifest as module

    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(b'{"file": "x.png", "label": 3}' + b"\0" * 4096)
    before = manifest.read_bytes()
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 1 and "is not a manifest styleengine wrote" in err, err
    assert manifest.read_bytes() == before
    line = b'{"batch": 1, "device": "cpu", "id": "a", "status": "ok"}'
    assert not module._written_by_us(b'{"file": "x.png"}\n' + b"\0" * 4096 + b"\n")
    assert module._written_by_us(line + b"\n" + line[:30] + b"\0" * 4096)  # ours, its last line cut
    assert module._written_by_us(b"\xef\xbb\xbf" + line[:5] + b"\0" * 4096)  # ours, saved with a BOM, then cut
    assert module._written_by_us(line + b"\0" * 4096)  # ours whole, its newline lost
    # another's whole line that starts as ours do (probe 58a, 3)
    assert not module._written_by_us(b'{"batch": 3, "device": "cpu", "note": "kept"}' + b"\0" * 4096)


def test_a_zip_whose_records_are_at_its_root_is_told_as_a_zip(tmp_path, monkeypatch, capsys):
    """A .pth zip with data.pkl and version at its root (a checkpoint unzipped and zipped again from inside its
    folder) was torch's '[enforce fail at inline_container.cc:180] ... not in a subdirectory', and the dry run
    passed it (probe 57a, 3). torch reads both records in the first name's folder."""
    from styleengine.paths import weights_kind

    told_as_a_zip(tmp_path, monkeypatch, capsys, ["data.pkl", "version"])
    for names, kind in ((["a/data.pkl", "b/version"], "zip"), (["a/b/data.pkl", "a/b/version"], "zip"),
                        (["a/data.pkl", "a/version", "other/data.pkl"], "zip"),  # a second folder last (58a, 4)
                        (["archive/data.pkl", "archive/.data/version"], "torch")):
        with zipfile.ZipFile(tmp_path / "x.pth", "w") as z:
            for name in names:
                z.writestr(name, b"3\n")
        assert weights_kind(tmp_path / "x.pth") == kind, names


def _styleengine(tmp_path, *argv, **streams) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "styleengine", *argv], cwd=tmp_path, timeout=300,
                          env={**os.environ, "STYLEENGINE_TUNE": "off", "STYLEENGINE_CACHE_DIR": str(tmp_path / "c")},
                          **streams)


@pytest.mark.parametrize("command, stderr", [("run", "gone"), ("batch", "gone"), ("run", "full")])
def test_stderr_that_cannot_be_written_costs_no_picture(tmp_path, command, stderr):
    """A run whose stderr reader went away (`2>&1 | head -1`, a log pipe that died) or whose stderr is a full disk
    lost its finished picture, exit 1, no word anywhere: rich's console exits at a broken pipe, and a full disk was
    an OSError (probe 57b, 1). The talk stops; the work goes on."""
    if stderr == "full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "a.png"}\n')
    argv = {"run": ["run", "c.png", "s.png", "-o", "o.png"], "batch": ["batch", "j.jsonl", "--out", "out"]}[command]
    if stderr == "gone":
        read, write = os.pipe()
        os.close(read)  # the reader gone before the first line
    else:
        write = os.open("/dev/full", os.O_WRONLY)
    try:
        done = _styleengine(tmp_path, *argv, *FAST, stderr=write, stdout=subprocess.PIPE)
    finally:
        os.close(write)
    assert done.returncode == 0
    assert (tmp_path / ("o.png" if command == "run" else "out/a.png")).is_file()


@pytest.mark.parametrize("argv", [["run", "c.png", "s.png", "-o", "o.png", "--dry-run", *FAST[:4]],
                                  ["bench", "--res", "32", "--backends", "naive", "--devices", "cpu", "--iters",
                                   "1", "--warmup", "0", "--rounds", "1"]])
def test_stdout_on_a_full_disk_is_one_line(tmp_path, argv):
    """A dry run's plan or bench's table onto a full disk (`> /dev/full`) was an OSError traceback (probe 57b, 2):
    a command's output that cannot be written is one error line, exit 1; one read by none (`| head`) ends
    quietly."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    _pictures(tmp_path)
    with open("/dev/full", "w") as full:
        done = _styleengine(tmp_path, *argv, stdout=full, stderr=subprocess.PIPE, text=True)
    assert one_error_line(done.returncode, done.stderr) == ("error: cannot write the standard output: No space left "
                                                            "on device"), done.stderr
    read, write = os.pipe()
    os.close(read)
    try:
        done = _styleengine(tmp_path, *argv, stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def _auto_picks(monkeypatch, conv):
    """auto picks `conv` (as a measurement here could)."""
    import dataclasses

    from styleengine.engine import autotune

    real = autotune.choose

    def choose(settings, *args, **kwargs):
        choice = real(settings, *args, **kwargs)
        picked = conv if settings.conv == "auto" else settings.conv
        return dataclasses.replace(choice, settings=dataclasses.replace(choice.settings, conv=picked))

    monkeypatch.setattr(autotune, "choose", choose)


@pytest.mark.parametrize("then, now, picks, skipped", [("winograd", "auto", "winograd", True),
                                                       ("auto", "winograd", "winograd", False),
                                                       ("winograd", "auto", "direct", False)])
def test_a_batch_job_made_with_a_way_auto_picks_now_is_done(tmp_path, monkeypatch, capsys, then, now, picks,
                                                            skipped):
    """Jobs made with --conv winograd ran again without it where auto picks winograd: the hash held each way as
    asked, given and auto unlike (probe 57a, 7). A way given then and auto picking it now is alike; auto then and
    a way given now is not (whatever auto picked then: the flag asks for that way, review 3), nor a way given and
    auto picking another."""
    _auto_picks(monkeypatch, picks)
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text("".join(f'{{"content": "c.png", "styles": ["s.png"], "output": "{n}.png"}}\n'
                                              for n in "ab"))
    for conv in (then, now):
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out",
                               *FAST, "--conv", conv)
        assert code == 0, err
    assert ("0 ok, 2 skipped, 0 failed" if skipped else "2 ok, 0 skipped, 0 failed") in err, err


def test_a_video_made_with_a_way_auto_picks_now_continues(tmp_path, monkeypatch, capsys):
    """A video made with --conv winograd was refused on resume without it, 'other settings or another video ...
    move it away', where auto picks winograd (probe 57a, 7)."""
    results = _video_runs(tmp_path, monkeypatch, capsys, [("winograd", "0:2"), ("auto", "0:4")])
    assert all(code == 0 for code, _, _ in results), results
    err = results[1][2]
    assert f"resuming: frames 0-1 are in {tmp_path / 'o.mp4.frames'}\n" in err, err


def _video_runs(tmp_path, monkeypatch, capsys, runs: list[tuple[str, ...]]) -> list[tuple[int, str, str]]:
    """`video` of a 4-frame clip into o.mp4 with each (--conv, --frames, more flags) in turn, auto picking
    winograd."""
    try:
        from test_video import FAST as VIDEO, moving_window, photo, write_clip
    except ModuleNotFoundError:
        from tests.test_video import FAST as VIDEO, moving_window, photo, write_clip

    _auto_picks(monkeypatch, "winograd")
    frames, _ = moving_window(photo(), 4, (48, 64))
    write_clip(tmp_path / "in.mp4", frames, fps=12)
    _pictures(tmp_path)
    return [run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o", tmp_path / "o.mp4",
                    *VIDEO, "--size", "64", "--frames", selected, "--conv", conv, *more)
            for conv, selected, *more in runs]


def test_the_engines_stylise_refuses_arrays_load_image_never_gives():
    """README's other Python entry, styleengine.engine.stylise.stylise, read any array as it was: a uint8
    picture gave a near-white result, a masked array its hidden values, a 0-255 float a clipped one, no word
    (probe 57a, 4). Each is refused in one line naming the entry that takes it; load_image's arrays run."""
    import numpy as np

    from styleengine.engine.stylise import Settings, stylise
    from styleengine.errors import ImageError

    picture = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    floats = picture / 255.0
    settings = Settings(size=40, iterations=1, weights="random", backend="torch")
    for array, said in ((picture, r"content image: the engine takes float \(H, W, 3\) arrays in \[0, 1\]"),
                        (picture * 1.0, r"content image has values from 0 to 255; the engine takes float arrays "
                                        r"in \[0, 1\] \(0-255 values: divide by 255\)$"),
                        (np.ma.masked_array(floats, mask=picture > 200), r"content image: a masked array's"),
                        (floats[..., 0], r"content image: the engine takes float")):
        with pytest.raises(ImageError, match="^" + said):
            stylise(array, [floats], settings)
    with pytest.raises(ImageError, match=r"^style image 1 has NaN"):
        stylise(floats, [np.full_like(floats, np.nan)], settings)
    out, _ = stylise(floats.astype(np.float32), [floats], settings)
    assert out.shape == (33, 40, 3) and out.dtype == np.float32  # --size 40: the long side


def test_an_animated_style_is_said_once_a_batch_without_the_video_advice(tmp_path, monkeypatch, capsys):
    """An animated style said `styleengine video` stylises every frame (video reads a style as one picture too),
    and a batch said its two lines again for every job (probe 57a, 5). A file is said once a process; the video
    advice is a content image's."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    (tmp_path / "j.jsonl").write_text("".join(f'{{"content": "a.gif", "styles": ["a.gif"], "output": "{n}.png"}}\n'
                                              for n in "xyz"))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    said = " ".join(err.split())
    content = (f"content image {tmp_path / 'a.gif'} is an animation of 3 frames: only its first is used "
               f"(`styleengine video` stylises every frame)")
    style = f"style image {tmp_path / 'a.gif'} is an animation of 3 frames: only its first is used"
    assert said.count(content) == 1 and said.count(style) == 1, err
    assert f"{style} (`styleengine video`" not in said, err


@pytest.mark.parametrize("then, now, told", [("winograd", "direct", "--conv winograd"),
                                             ("auto", "direct", "--conv auto")])
def test_a_video_made_with_another_way_given_names_its_flag(tmp_path, monkeypatch, capsys, then, now, told):
    """Frames made with --conv winograd (or by auto) and resumed with --conv direct were told 'other settings or
    another video ... move it away', throwing the work out for a flag (review of stop 57, 2): the flag is named."""
    results = _video_runs(tmp_path, monkeypatch, capsys, [(then, "0:2"), (now, "0:4"), (told.split()[1], "0:4")])
    assert one_error_line(results[1][0], results[1][2]) == (
        f"error: {tmp_path / 'o.mp4.frames'} holds frames made with {told}; give {told} to continue them, or choose "
        f"another output"), results[1][2]
    assert results[2][0] == 0 and "resuming: frames 0-1" in results[2][2], results[2][2]


def test_a_bare_command_listing_onto_a_full_disk_is_one_line(tmp_path):
    """A bare `styleengine` (its listing on stdout, typer's plain help) onto a full disk was three chained
    tracebacks: the stdout error was raised inside the except clause meant for it (review of stop 57, 1)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "styleengine"], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=120, env={**os.environ, "TYPER_USE_RICH": "0"})
    assert one_error_line(done.returncode, done.stderr) == ("error: cannot write the standard output: No space left "
                                                            "on device"), done.stderr


def test_probe_58bs_findings(tmp_path, monkeypatch, capsys):
    """Probe 58b: frames two ways of running apart were told only 'move it away' (1); the engine's stylise ran a
    zero-size array into a ZeroDivisionError (2); a legacy checkpoint cut short, or a zip whose data.pkl is half
    written, was torch's unpickler's struct.error traceback (3); a checkpoint whose records a zip tool upper-cased
    loads in torch but was told as a zip (4)."""
    import zipfile

    import numpy as np
    import torch

    from styleengine.engine.stylise import Settings, stylise
    from styleengine.errors import ImageError
    from styleengine.paths import weights_kind

    two_apart = [("direct", "0:2"), ("winograd", "0:4", "--precision", "fp32")]  # precision auto, then given
    results = _video_runs(tmp_path, monkeypatch, capsys, two_apart)
    assert "give the flags they were made with" in one_error_line(results[1][0], results[1][2]), results[1][2]
    floats = np.random.default_rng(0).random((40, 40, 3))
    with pytest.raises(ImageError, match=r"^content image is 40x0 px"):
        stylise(np.zeros((0, 40, 3)), [floats], Settings(size=40, iterations=1, weights="random"))
    state = {"features.0.weight": torch.zeros(2)}
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "legacy.pth").read_bytes()[:18])
    torch.save(state, tmp_path / "real.pth")
    with zipfile.ZipFile(tmp_path / "real.pth") as z, zipfile.ZipFile(tmp_path / "half.pth", "w") as half, \
            zipfile.ZipFile(tmp_path / "upper.pth", "w") as upper:
        for name in z.namelist():
            data = z.read(name)
            half.writestr(name, data[:len(data) // 2] if name.endswith("data.pkl") else data)
            upper.writestr(name.upper(), data)  # every name: torch reads every name in the first's folder as spelled
    assert weights_kind(tmp_path / "upper.pth") == "torch"
    for name in ("cut.pth", "half.pth"):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--weights", tmp_path / name, "--size", "40", "--iters", "1",
                               "--backend", "torch")
        assert one_error_line(code, err).startswith(f"error: cannot read checkpoint {tmp_path / name}: "), err
