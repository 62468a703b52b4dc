"""Stop 59: probe 59a's and 59b's findings (on 589f682) outside serve and video: Ray's news of a raylet's end said
twice as a 3.7 KB line of its log (59b, 2); a zip whose record names differ in case from one another passed for a
checkpoint (59a, 4); another tool's manifest taken over at the edges of the power-cut rule (59a, 5)."""
from __future__ import annotations

import json
import logging
import zipfile

import pytest

try:
    from test_cli import run_cli
    from test_reliability_probe13 import _pictures
    from test_reliability_stop43 import three_jobs_batch
    from test_reliability_stop55 import told_as_a_zip
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_probe13 import _pictures
    from tests.test_reliability_stop43 import three_jobs_batch
    from tests.test_reliability_stop55 import told_as_a_zip


def test_a_raylets_end_is_said_once_in_its_first_sentences(capsys, caplog):
    """A raylet killed mid-batch: Ray published 'Raylet is terminated ...' with its log's last 20 lines, twice;
    each became one warning of 3.7 KB with the log's line ends escaped."""
    pytest.importorskip("ray")
    from styleengine.engine import batch_ray

    batch_ray.import_ray()
    from ray._private import worker

    dump = "".join(f"    [state-dump] NodeManager line {i}\n" for i in range(20))
    text = ("Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL by the user or "
            "system OOM killer, (2) Invalid memory access from Raylet causing SIGSEGV or SIGBUS, (3) Other "
            "termination signals. Last 20 lines of the Raylet logs:\n" + dump)
    message = {"lines": [text], "pid": "raylet", "is_err": False}
    batch_ray._CLOSING.clear()
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.batch_ray"):
        worker.print_to_stdstream(message, ignore_prefix=False)
        worker.print_to_stdstream(message, ignore_prefix=False)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["Ray: Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL "
                    "by the user or system OOM killer, (2) Invalid memory access from Raylet causing SIGSEGV or "
                    "SIGBUS, (3) Other termination signals. (the rest is in Ray's logs)"]
    assert capsys.readouterr().out == ""
    # review of stop 59, 6: a first line that announces a traceback was cut to nothing, and different messages
    # within 10 s were said once, as nothing
    caplog.clear()
    failures = ["The autoscaler failed with the following error:\nTraceback (most recent call last):\n  x\n"
                "RuntimeError: boom",
                "Traceback (most recent call last):\n  File \"w.py\"\nRuntimeError: Version mismatch: 2.60 and 2.59"]
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.batch_ray"):
        for text in failures:
            worker.print_to_stdstream({"lines": [text], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    # probe 61b, 2: a worker's death, one line of 1 KB of advice and ids
    caplog.clear()
    died = ("A worker died or was killed while executing a task by an unexpected system error. To troubleshoot the "
            "problem, check the logs for the dead worker. Lease ID: 00a42 Worker ID: 5394 Node ID: 87cd Worker IP "
            "address: 192.0.2.2 Worker port: 39419 Worker PID: 3021 Worker exit type: SYSTEM_ERROR. " * 3)
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.batch_ray"):
        worker.print_to_stdstream({"lines": [died], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert [r.getMessage() for r in caplog.records] == [
        "Ray: A worker died or was killed while executing a task by an unexpected system error. To troubleshoot the "
        "problem, check the logs for the dead worker. (the rest is in Ray's logs)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.batch_ray"):
        for text in failures:
            worker.print_to_stdstream({"lines": [text + " "], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert [r.getMessage() for r in caplog.records] == [
        "Ray: The autoscaler failed with the following error: RuntimeError: boom (the rest is in Ray's logs)",
        "Ray: Traceback (most recent call last): RuntimeError: Version mismatch: 2.60 and 2.59 (the rest is in "
        "Ray's logs)"]


def test_a_zip_whose_names_differ_in_case_from_one_another_is_told_as_a_zip(tmp_path, monkeypatch, capsys):
    """torch finds its records whatever their case, but reads every name in the first name's folder as spelled:
    `REAL/` names and one `real/data/0` passed the dry run, and the run said torch's '[enforce fail at
    inline_container.cc:340] ... not in a subdirectory REAL/'. All upper-cased, torch loads it."""
    import torch

    from styleengine.paths import weights_kind

    told_as_a_zip(tmp_path, monkeypatch, capsys, ["REAL/DATA.PKL", "REAL/VERSION", "real/data/0"])
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "real.pth")
    with zipfile.ZipFile(tmp_path / "real.pth") as z:
        for name, rename in (("mixed.pth", lambda n: n if n.endswith("/data/0") else n.upper()),
                             ("upper.pth", str.upper)):
            with zipfile.ZipFile(tmp_path / name, "w") as out:
                for record in z.namelist():
                    out.writestr(rename(record), z.read(record))
    try:
        torch.load(tmp_path / "mixed.pth", weights_only=True)
    except RuntimeError as e:
        assert "not in a subdirectory" in str(e)  # what torch says of it, as this test holds
    else:
        raise AssertionError("torch loads a zip whose names differ in case")
    assert torch.load(tmp_path / "upper.pth", weights_only=True)["features.0.weight"].shape == (2,)
    assert (weights_kind(tmp_path / "mixed.pth"), weights_kind(tmp_path / "upper.pth")) == ("zip", "torch")
    # probe 60a, 8: str.lower() reads KELVIN SIGN as k; torch's miniz compares ASCII letters only
    with zipfile.ZipFile(tmp_path / "real.pth") as z, zipfile.ZipFile(tmp_path / "kelvin.pth", "w") as out:
        for record in z.namelist():
            out.writestr(record.replace("data.pkl", "data.p\u212al"), z.read(record))
    with pytest.raises(RuntimeError):
        torch.load(tmp_path / "kelvin.pth", weights_only=True)
    assert weights_kind(tmp_path / "kelvin.pth") == "zip"


FOREIGN = [b"\0" * 4096 + b'{"file": "x.png", "label": 3}\n',  # a power cut zeroed its first block
           b"\0" * 512 + b'{"batch": 3, "device": "cpu", "note": "kept"}',
           b'{"batch": 3, "device": "cpu", "note": "kept",}',  # starts as ours do, goes wrong before its end
           b'{"batch": 3, "device": "cpu", "note": "kept",}' + b"\0" * 4096,
           b'{"batch": 3, "device": "cpu", "note": "kept"} # mine' + b"\0" * 4096,
           # probe 60a, 7; review of stop 59, 5
           b'{"batch": 3, "device": "cpu", "note": "kept"}.',  # whole, then text json stops at as extra
           b"\0" * 4096 + b"hello, this is my file\n",  # not JSON after a zeroed first block
           b"\0" * 4096 + b'{"file": "x.png"}' + b"\0" * 4096,  # between two zeroed blocks
           b"\0" * 4096 + b"hello}\n",  # an end not ours (probe 61a, 4)
           # a word, a quote and a brace: no status of ours (ok, failed, skipped) or its tail (probe 62a, 2)
           b"\0" * 4096 + b'"label": "cat"}\n', b"\0" * 4096 + b"z" * 30 + b'"}\n',
           b"\0" * 4096 + b'"status": "cat"}\n']


@pytest.mark.parametrize("data", FOREIGN, ids=["nuls-first", "nuls-first-ours-start", "trailing-comma",
                                               "trailing-comma-nuls", "comment-nuls", "extra-data",
                                               "nuls-first-text", "between-nuls", "nuls-first-brace",
                                               "nuls-first-cat", "nuls-first-letters", "nuls-first-status-cat"])
def test_another_tools_manifest_at_the_power_cut_rules_edges_is_refused(tmp_path, monkeypatch, capsys, data):
    """Another tool's manifest.jsonl whose first block a power cut zeroed had our lines appended to it; one whose
    line starts as ours do but is no JSON's start was cut as 'torn' and taken over, exit 0."""
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(data)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 1 and "is not a manifest styleengine wrote" in err, err
    assert manifest.read_bytes() == data


def test_a_line_of_ours_cut_anywhere_is_still_ours():
    """The other side of the rule above: a line of ours cut anywhere, with or without a power cut's NULs or a BOM,
    or zeroed at its start. A cut within a \\uXXXX escape (json.dumps writes non-ASCII so: an id, an output) was
    another tool's, and so was every cut of a failed job's line past `"device": n` (its device is null)."""
    from styleengine.engine.manifest import _written_by_us

    # as Manifest.append writes a batch's line (JobResult.manifest_line and "file", keys sorted, ASCII)
    ok = {"batch": 1, "device": "cpu", "distances": {"style": 0.5}, "file": "caf\u00e9.png",
          "id": "caf\u00e9 \U0001f600", "iterations": 2, "losses": {"total": -1.5e-3},
          "output": "out/caf\u00e9_\u65e5\u672c.png", "reason": None, "seconds": 0.25, "settings_hash": "ab12",
          "status": "ok"}
    failed = {**ok, "device": None, "distances": None, "losses": None, "status": "failed", "reason": "gone \u00e9"}
    zeros = b"\0" * 4096
    for entry in (ok, failed):
        line = json.dumps(entry, sort_keys=True).encode()
        assert b"\\u00e9" in line
        for end in range(len(b'{"batch": 1, "device": '), len(line)):
            for torn in (line[:end], line[:end] + zeros, b"\xef\xbb\xbf" + line[:end] + zeros):
                assert _written_by_us(torn), torn
        for start in range(1, len(line) - 2):  # to its status's last letter
            assert _written_by_us(zeros + line[start:] + b"\n"), line[start:]


def test_a_legacy_checkpoint_cut_short_says_what_its_reader_found(tmp_path):
    """Said as '(error)', struct.error's class name (probe 59a, a note)."""
    import torch

    from styleengine.errors import WeightsError
    from styleengine.model.weights import read_checkpoint

    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "legacy.pth").read_bytes()[:18])
    with pytest.raises(WeightsError) as caught:
        read_checkpoint(tmp_path / "cut.pth")
    assert "damaged or cut short (" in str(caught.value) and not str(caught.value).endswith("(error)"), caught.value


def test_the_engines_stylise_batch_of_no_pictures_is_an_empty_result():
    """An IndexError (probe 59a, a note)."""
    from styleengine.engine.stylise import stylise_batch

    assert stylise_batch([]) == []


def test_a_rescue_never_lands_in_a_style_folder_that_is_a_temp_folder(tmp_path, monkeypatch, capsys):
    """A picture whose output cannot be written went to the temp folder, which may be the styles' own ($TMPDIR,
    /tmp): the next run read it as a second style, exit 0 (probe 61b, 1). run and batch pass such a folder over."""
    import tempfile

    from styleengine.engine import images

    _pictures(tmp_path)
    styles, other = tmp_path / "styles", tmp_path / "other"
    styles.mkdir()
    other.mkdir()
    (tmp_path / "s.png").rename(styles / "s.png")
    monkeypatch.setattr(tempfile, "tempdir", str(styles))
    monkeypatch.setenv("TMPDIR", str(styles))
    monkeypatch.setattr(images, "TEMP_FOLDERS", (str(other),))
    save_image = images.save_image

    def refused(image, path, *args, **kwargs):  # the output's disk is full
        if "rescued" not in str(path):
            raise images.ImageError(f"cannot write {path}: No space left on device")
        return save_image(image, path, *args, **kwargs)

    mkstemp = tempfile.mkstemp

    def full(*args, dir=None, **kwargs):  # and --out's, where a batch saves it first
        if dir is not None and str(dir).startswith(str(tmp_path / "out")):
            raise OSError(28, "No space left on device")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(images, "save_image", refused)
    monkeypatch.setattr(images.tempfile, "mkstemp", full)
    flags = ["--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", styles, "-o", tmp_path / "o.png", *flags)
    assert code == 1 and f"saved the image to {other}" in err, err
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": str(tmp_path / "c.png"), "styles": str(styles),
                                                  "output": "x.png"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *flags)
    assert f"saved it to {other}" in err or f"saved the image to {other}" in err, err
    assert [p.name for p in styles.iterdir()] == ["s.png"]
    # --contents as the temp folder: the next run stylised the rescued picture as a job of its own (probe 62b, 1)
    contents = tmp_path / "contents"
    contents.mkdir()
    (tmp_path / "c.png").rename(contents / "c.png")
    monkeypatch.setattr(tempfile, "tempdir", str(contents))
    monkeypatch.setenv("TMPDIR", str(contents))
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", contents, "--styles", styles, "--out",
                           tmp_path / "out", *flags)
    assert f"saved it to {other}" in err or f"saved the image to {other}" in err, err
    assert [p.name for p in contents.iterdir()] == ["c.png"]
