"""Issue 23, stop 52: probe 52's findings (on e81b01a)."""
from __future__ import annotations

import os
import signal

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_reliability_stop43 import _three_jobs
except ModuleNotFoundError:
    from tests.test_reliability_stop43 import _three_jobs


@pytest.mark.parametrize("change", ["replaced", "emptied"])
def test_a_signal_after_the_manifest_changed_says_where_its_lines_are(tmp_path, monkeypatch, capsys, change):
    """SIGTERM after a user's file was moved onto the manifest said "the same command resumes (out/manifest.jsonl
    records what is done)" of the user's file; one emptied in place was "not there any more" (probe 52a, 1)."""
    manifest, calls = tmp_path / "out" / "manifest.jsonl", []

    def after_record():
        calls.append(1)
        if len(calls) == 1:
            if change == "replaced":
                (tmp_path / "mine").write_text("my notes\n")
                (tmp_path / "mine").rename(manifest)
            else:
                manifest.write_text("")
            os.kill(os.getpid(), signal.SIGTERM)  # held by the shield around the record, then raised

    code, err = _three_jobs(tmp_path, monkeypatch, capsys, after_record)
    assert code == 143 and "records what is done" not in err, err
    said = {"replaced": "out/manifest.jsonl is not the manifest written (replaced during the run); the lines of the "
                        "1 jobs done went with the file that was there",
            "emptied": "out/manifest.jsonl was emptied during the run, with the lines of the 1 jobs done"}[change]
    assert said in err, err


def test_a_folder_below_a_videos_frames_folder_is_refused(tmp_path, monkeypatch, capsys):
    """`batch --out base.mp4.frames/sub` (and `video -o base.mp4.frames/sub/x.mp4`) was taken: moving the frames
    folder away, as the video's own refusal advises, took the batch's pictures with it (probe 52a, 7). Only folders
    named as a video's frames folders count: a user's video.json up the tree is not one."""
    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_probe13 import FAST, _pictures

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "o.png"}\n')
    for folder in ("base.mp4.frames", "project"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "video.json").write_text("{}")
    out = tmp_path / "base.mp4.frames" / "sub" / "deeper"
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    line = one_error_line(code, err)
    assert f"is inside {tmp_path / 'base.mp4.frames'}, a video's frames folder" in line, line
    assert "give another --out" in line and not out.exists(), line
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "project" / "sub",
                           *FAST)
    assert code == 0, err


def test_rows_of_empty_cells_appended_to_a_csv_jobs_file_are_no_jobs_added(tmp_path):
    """A spreadsheet's rows of empty cells (`,,,`) appended after the read were said as "got 2 lines ... the same
    command runs the jobs added"; the reader skips them, so the same command ran none (probe 52a, 3)."""
    from styleengine.engine.jobs import iter_jobs

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "j.csv"
    path.write_text("id,content,styles,output\na,c.png,s.png,a.png\n")
    read: list = []
    assert len(list(iter_jobs(path, tmp_path / "out", read))) == 1
    with open(path, "a") as f:
        f.write(',,,\n;;;\n"","",,\n')
    assert read[0].since(path) is None
    with open(path, "a") as f:
        f.write("b,c.png,s.png,b.png\n")
    assert read[0].since(path) == ("got a line after the batch had read it to its end; the same command runs the "
                                   "jobs added")


@pytest.mark.parametrize("line, said", [
    ("[" * 200_000, "line 1: not a job (JSON nested too deeply)"),
    ('{"content": "c.png", "styles": ["s.png"], "iters": ' + "9" * 5000 + "}",
     "line 1: not a job (an integer of more than 4300 digits)"),
    ('{"content": "c.png", "styles": ["s.png"], "id": "' + "y" * 5000 + '"}',
     "line 1: id 'yyyyyyyyyyyyyyyyyyyyyyyy'... is 5000 characters long; an id is a name (at most 1024)")])
def test_a_jobs_line_past_pythons_limits_or_an_id_of_thousands_of_characters_is_one_line(tmp_path, line, said):
    """`'[' * 200000` was "not a job (RecursionError: maximum recursion depth exceeded while decoding a JSON
    array from a unicode string)"; a 100 MB id was taken, printed whole on its progress line, 73 s and 1.3 GB
    (probe 52b, 2, 3)."""
    from styleengine.engine.jobs import iter_jobs
    from styleengine.errors import ConfigError

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "j.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as caught:
        list(iter_jobs(path, tmp_path / "out"))
    assert str(caught.value) == f"{path} {said}"


@pytest.mark.parametrize("body", [
    b'{"audio_filepath": "a.wav", "duration": 1.2}\n{"audio_filepath": "b.wav", "duration": 3.4}',
    b"my notes\nline two without newline",
    b"{}",
    b'{"audio_filepath": "a.wav", "duration": 1.0}',  # one whole line: no newline, yet no torn line of ours
    # one line that does not parse is no torn line of ours either (probe 53a, 1): ours starts '{"batch": '
    b'{"a": 1}{"b": 2}', b'{"text": "caf\xe9"}', b'{"a": 1,}', b'{"id": "x", "status": "ok"} // a comment',
    # nor one that starts as ours and goes on as no line of ours does (probe 54a, 2)
    b'{"batch": 1, "path": "x.png"}{"batch": 2, "path": "y.png"}', b'{"batch": 1, "path": "x.png",}'])
def test_another_tools_manifest_jsonl_in_out_is_neither_cut_nor_appended_to(tmp_path, monkeypatch, capsys, body):
    """A dataset's manifest.jsonl in --out (NeMo writes one per folder) lost its last record, "torn (a write cut
    short); cut off", and took the batch's line, exit 0 (probe 52b, 5): a file with no job's line is refused before
    any work, and a last line that parses is whole."""
    try:
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_reliability_batch import one_error_line

    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(body)
    code, err = _three_jobs(tmp_path, monkeypatch, capsys, lambda: None)
    line = one_error_line(code, err)
    assert "is not a manifest styleengine wrote (no line of it is a job's)" in line and "random" not in err, line
    assert manifest.read_bytes() == body


@pytest.mark.parametrize("body, kept", [
    (b'{"id": "x", "status": "failed", "error": "e"}\n5', True),  # whole: said and skipped, not cut
    (b'{"id": "x", "status": "failed", "error": "e"}\n{"id": "y", "sta', False),  # torn: cut
    (b'{"batch": 1, "device": "cpu", "distances": {}, "file": "a.png", "id": "a", "sta', False),  # a first line torn
    (b"\0" * 4096, False),  # a power cut's zeros: cut
    (b"\0" * 100 + b'us": "ok"}', False)])  # a lost block, then the torn rest of the first line
def test_a_manifests_last_line_is_cut_only_where_torn(tmp_path, monkeypatch, capsys, body, kept):
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(body)
    code, err = _three_jobs(tmp_path, monkeypatch, capsys, lambda: None)
    assert code == 0, err
    assert manifest.read_bytes().startswith(body if kept else body[:body.rfind(b"\n") + 1]), err
    assert ("was torn (a write cut short); cut off" in err) == (not kept), err


def test_a_manifest_moved_away_during_a_batch_is_said_moved_with_its_lines(tmp_path, monkeypatch, capsys):
    """`mv out/manifest.jsonl out/manifest.bak` mid-run was "not there any more (removed during the run, with its
    lines)": the lines were in manifest.bak, and moving it back resumes (probe 52a, 13)."""
    manifest, calls = tmp_path / "out" / "manifest.jsonl", []

    def after_record():
        calls.append(1)
        if len(calls) == 1:
            manifest.rename(manifest.with_name("manifest.bak"))

    code, err = _three_jobs(tmp_path, monkeypatch, capsys, after_record)
    assert code == 1 and "it was moved away during the run, with its lines (put it back to resume)" in err, err
    assert "removed" not in err, err


def test_a_users_file_at_the_manifests_name_with_the_lock_removed_before_any_line_holds_none(tmp_path, monkeypatch,
                                                                                           capsys):
    """The lock removed and a user's file put at the manifest's name before the first line: "its lines so far are
    in out/manifest.jsonl", of the user's file (probe 52a, 11)."""
    from styleengine.engine import batch as engine

    real, out = engine.record, tmp_path / "out"

    def record(*args, **kwargs):
        if not (out / "manifest.jsonl").exists():
            (out / ".batch.lock").unlink()
            (out / "manifest.jsonl").write_text("my notes\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    code, err = _three_jobs(tmp_path, monkeypatch, capsys, lambda: None)
    assert code == 1 and "no line was written yet" in err and "its lines so far are in" not in err, err
    assert (out / "manifest.jsonl").read_text() == "my notes\n"


def _follow(settings, advice: str):
    """`settings` with the flags of a thin image's advice given (a style's "--size x --style-scale N" as --size N:
    these cases run at style scale 1)."""
    import dataclasses
    import re

    found = re.findall(r"--([a-z-]+)(?: x --style-scale)? (\d+)", advice)
    assert found, advice
    return dataclasses.replace(settings, **{flag.replace("-", "_"): int(value) for flag, value in found})


@pytest.mark.parametrize("content, style, given", [
    ((40, 400), (48, 48), dict(size=48)),  # one scale at 48 px; 315 px starts at 128
    ((40, 400), (48, 48), dict(size=300)),  # coarse to fine at 300 px, the content needs 315 at every scale
    ((40, 400), (48, 48), dict(size=1000)),  # needs only a later start
    ((40, 400), (48, 48), dict(size=1000, scales=8)),  # a start of 315 leaves too few px for 8 scales
    ((48, 48), (40, 400), dict(size=64)),  # a thin style
    ((48, 48), (40, 400), dict(size=300)),
    ((40, 400), (48, 48), dict(size=200, start_size=64))])
def test_a_thin_images_advice_works_when_followed(content, style, given):
    """`--size 315` for a 400x40 image at --size 48 was refused again at 315's first scale, 128 px, naming
    --start-size; a style's the same way, and a start size past the size could not be given at all (probe 52a, 6;
    52b, 4). Following the advice now runs."""
    from styleengine.engine.plan import TooThin, make_plan
    from styleengine.engine.settings import Settings

    settings = Settings(iterations=4, **given)
    with pytest.raises(TooThin) as caught:
        make_plan(settings, content, [style], memory=2**34)
    make_plan(_follow(settings, caught.value.advice), content, [style], memory=2**34)


def test_a_thin_images_advice_names_a_jobs_key_and_the_apis_keywords(tmp_path, monkeypatch, capsys):
    """A job's `"size": 48` was told `--size 315`, which its key overrides; `stylise(size=48)` was told flags
    (probe 52a, 10)."""
    import numpy as np

    import styleengine
    from styleengine.errors import UserError

    try:
        from test_cli import run_cli
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
    from PIL import Image

    Image.fromarray(np.full((40, 400, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(tmp_path / "s.png")
    (tmp_path / "j.jsonl").write_text('{"content": "wide.png", "styles": "s.png", "output": "w.png", "Size": 48}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--iters", "1", "--backend", "torch")
    assert code == 1 and "(Size 315 and --scales 1)" in err, err
    with pytest.raises(UserError) as caught:
        styleengine.stylise(tmp_path / "wide.png", tmp_path / "s.png", size=48, iterations=1, weights="random")
    assert "(size 315 and scales 1)" in str(caught.value), caught.value


def test_invert_tells_a_thin_image_to_crop_not_a_flag_it_does_not_have(tmp_path, monkeypatch, capsys):
    """invert advised `--size 315`, then `--start-size 315`, an option it does not have; no --size makes such an
    image run there (probe 52a, 14)."""
    import numpy as np
    from PIL import Image

    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line

    Image.fromarray(np.full((40, 400, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    for size in ("48", "315"):
        code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "wide.png", "-o", tmp_path / "i.png",
                               "--size", size, "--weights", "random", "--iters", "1")
        line = one_error_line(code, err)
        assert line.endswith("which invert cannot give (it starts any --size over 181 px at 128 px): crop the image")
        assert "--start-size" not in line and "--scales" not in line, line


def _weights_files(tmp_path):
    """Files that are no weights, by name: (file, the line's words)."""
    import io
    import pickle
    import zipfile

    import numpy as np
    from PIL import Image

    made = {}
    with zipfile.ZipFile(tmp_path / "plain.zip.safetensors", "w") as z:
        z.writestr("notes.txt", "hello")
    made["plain.zip.safetensors"] = ("is a zip archive, not a PyTorch checkpoint (torch.save's zip holds a data.pkl "
                                     "and a version record)")
    (tmp_path / "plain.zip.pth").write_bytes((tmp_path / "plain.zip.safetensors").read_bytes())
    made["plain.zip.pth"] = made["plain.zip.safetensors"]
    for suffix in ("safetensors", "pth"):
        (tmp_path / f"p4.{suffix}").write_bytes(pickle.dumps({"a": 1}, protocol=4))
        made[f"p4.{suffix}"] = "is a plain Python pickle (pickle.dump), not a PyTorch checkpoint"
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG")
        (tmp_path / f"png.{suffix}").write_bytes(buffer.getvalue())
        made[f"png.{suffix}"] = "is a PNG image, not weights"
    return made


def test_weights_that_are_another_kind_of_file_are_told_what_they_are(tmp_path):
    """Any zip or binary pickle named .safetensors was "a PyTorch checkpoint ...; name it .pth", and the rename
    then read torch's "[enforce fail at inline_container.cc:180]"; a PNG was "header too large" (probe 52a, 4).
    The run, and --dry-run's check, say what the file is."""
    from styleengine import paths
    from styleengine.errors import UserError
    from styleengine.model.weights import read_checkpoint

    for name, words in _weights_files(tmp_path).items():
        with pytest.raises(UserError) as caught:
            read_checkpoint(tmp_path / name)
        assert str(caught.value) == f"{tmp_path / name} {words}" or words in str(caught.value), caught.value
        assert "enforce fail" not in str(caught.value) and "name it" not in str(caught.value)
        assert words in (paths.named_as_another(tmp_path / name) or ""), name


def test_a_torch_checkpoint_of_either_format_is_still_one(tmp_path):
    import torch

    from styleengine import paths

    for legacy in (False, True):
        path = tmp_path / f"w{legacy}.safetensors"
        torch.save({"a": torch.zeros(2)}, path, _use_new_zipfile_serialization=not legacy)
        assert paths.weights_kind(path) == "torch"
        assert paths.named_as_another(path) == f"{path} is a PyTorch checkpoint, not a safetensors file; name it .pth"


def test_weights_refused_for_their_tensors_are_one_line_without_torchs_warnings(tmp_path):
    """A quantized checkpoint's one line came after torch's TypedStorage and quantize_per_tensor deprecation
    warnings (a sparse CSR one after "Sparse CSR tensor support is in beta state"; probe 52a, 5). In a process
    of its own: torch says each of them once per process."""
    import os
    import subprocess
    import sys
    import warnings

    import torch

    try:
        from test_reliability_probe13 import _pictures
    except ModuleNotFoundError:
        from tests.test_reliability_probe13 import _pictures
    from styleengine.model.vgg import conv_weight_keys

    _pictures(tmp_path)
    state = {k: torch.randn(shape) * 0.1 for k, (_, shape) in conv_weight_keys("vgg16").items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state["features.0.weight"] = torch.quantize_per_tensor(state["features.0.weight"], 0.01, 0, torch.qint8)
    torch.save(state, tmp_path / "q.pth")
    done = subprocess.run([sys.executable, "-m", "styleengine", "run", "c.png", "s.png", "-o", "o.png", "--size", "40",
                           "--iters", "1", "--model", "vgg16", "--weights", "q.pth", "--backend", "torch"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STYLEENGINE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "is quantized (torch.qint8)" in done.stderr, done.stderr


def test_a_fifo_put_at_the_pictures_name_during_a_run_is_not_replaced(tmp_path, monkeypatch, capsys):
    """`mkfifo o.png` while `run -o o.png` ran: the picture replaced the FIFO, where the start refuses one and
    the other outputs refuse one put there mid-run (probe 52a, 12). The picture is saved beside, as said."""
    import stat

    try:
        from test_cli import run_cli
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_probe13 import FAST, _pictures
    from styleengine.engine import images

    _pictures(tmp_path)
    output, real = tmp_path / "o.png", images.to_pil

    def to_pil(image):  # the loop is over: its picture is being written
        if not output.exists():
            os.mkfifo(output)
        return real(image)

    monkeypatch.setattr(images, "to_pil", to_pil)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", output, *FAST)
    assert code == 1 and "is a FIFO (a named pipe)" in err and "(put there during the run; not replaced)" in err, err
    assert stat.S_ISFIFO(os.lstat(output).st_mode)
    saved = err.split("saved the image to ")[1].split(" instead")[0]
    assert os.path.isfile(saved), err


def test_a_long_manifests_read_is_said_before_it(tmp_path, monkeypatch, capsys):
    """A manifest of 300 000 lines (a 10 000-job batch resumed 30 times: each skipped job adds a line) was read for
    22 s before any line was said (probe 52b, 1). Said first, past LONG_MANIFEST bytes (lowered here)."""
    from styleengine import cli_batch

    monkeypatch.setattr(cli_batch, "LONG_MANIFEST", 10)
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text('{"id": "x", "status": "failed", "error": "e"}\n')
    code, err = _three_jobs(tmp_path, monkeypatch, capsys, lambda: None)
    assert code == 0 and f"reading {manifest} (0 MiB) for the jobs done" in err.splitlines()[0] + err, err


def test_invert_advises_a_size_it_runs_in_one_scale(tmp_path, monkeypatch, capsys):
    """invert --size 512 of a 500x100 image failed at its 128 px first scale and was told to crop, though --size 158
    runs (one scale up to 181 px; review of stop 52)."""
    import re

    import numpy as np
    from PIL import Image

    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line

    Image.fromarray(np.full((100, 500, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "wide.png", "-o", tmp_path / "i.png",
                           "--size", "512", "--weights", "random", "--iters", "1")
    line = one_error_line(code, err)
    advised = re.search(r"\(--size (\d+)\): crop the image or use a larger size$", line)
    assert advised is not None, line
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "wide.png", "-o", tmp_path / "i.png",
                           "--size", advised.group(1), "--weights", "random", "--iters", "1")
    assert code == 0, err
