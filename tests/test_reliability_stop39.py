"""Issue 23, stop 39: stop 38's known limits mended, and probe 27's findings (on 70127af)."""
from __future__ import annotations

import re

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import manifest_lines, one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import manifest_lines, one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures

BOUNDS = "past what float32 features hold (scales 0.001 to 100000, shifts up to 100000)"


def test_the_convention_range_is_checked_on_the_weights_own_values(tmp_path, monkeypatch, capsys,
                                                                   shared_vgg16_file):
    """The float32 check of the input convention assumed torchvision's values until the weights were read, and
    never looked again: caffe weights (0-255) with --std 1e-3 scale pixels by 2.55e5 and ran (exit 0), while
    --pixel-range 1e5, which they take (a scale of 1e5), was refused for torchvision's std."""
    _pictures(tmp_path)
    weights = ["--weights", str(shared_vgg16_file), "--model", "vgg16", "--size", "40", "--iters", "1"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *weights, "--std", "1e-3,1e-3,1e-3")
    assert one_error_line(code, err) == (
        "error: --std 0.001,0.001,0.001 with the weights' pixel range 255 and mean 103.939,116.779,123.68 scales "
        "pixels by 2.55e+05,2.55e+05,2.55e+05 and shifts them by -1.24e+05,-1.17e+05,-1.04e+05: " + BOUNDS)
    assert not (tmp_path / "o.png").exists()
    (tmp_path / "j.csv").write_text("content,style,output\nc.png,s.png,a.png\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.csv", "--out", tmp_path / "b", *weights,
                           "--std", "1e-3,1e-3,1e-3")
    assert "--std 0.001,0.001,0.001 with the weights'" in one_error_line(code, err)
    assert not (tmp_path / "b").exists()  # said at the batch's start
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *weights, "--pixel-range", "1e5")
    assert code == 0 and (tmp_path / "o.png").is_file(), err


def test_the_convention_range_names_each_value_by_whom_it_came_from(tmp_path, monkeypatch, capsys):
    """It said "input pixel range 1, mean ... and std ..." in words, and torchvision's mean and std "assumed" for
    random weights, which run with their own (0.5 and 0.25; stop 38's known limit): the values given are said by
    the names given (flag, keyword), the others as the weights' or the given convention's."""
    import styleengine
    from styleengine.errors import ConfigError
    from styleengine.model.convention import Convention

    _pictures(tmp_path)
    said = {}
    for given in (["--pixel-range", "1e-37"], ["--pixel-range", "1", "--mean", "0,0,0", "--std", "1e-9,1e-9,1e-9"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, *given)
        said[given[1]] = one_error_line(code, err)
    assert said["1e-37"].startswith("error: --pixel-range 1e-37 with the random weights' mean 0.5,0.5,0.5 and "
                                    "std 0.25,0.25,0.25 scales pixels by 4e-37,"), said
    assert said["1"] == ("error: --pixel-range 1, --mean 0,0,0 and --std 1e-09,1e-09,1e-09 scale pixels by "
                         "1e+09,1e+09,1e+09 and shift them by 0,0,0: " + BOUNDS)  # 0, not -0
    from safetensors.torch import save_file

    from styleengine.model.weights import random_state

    save_file(random_state("vgg16", 3), tmp_path / "w.safetensors")  # no metadata, not a known file
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--model", "vgg16", "--weights", tmp_path / "w.safetensors",
                           "--std", "1e-9,1e-9,1e-9")
    assert one_error_line(code, err).startswith("error: --std 1e-09,1e-09,1e-09 with torchvision's (assumed for the "
                                                "weights) pixel range 1 and mean 0.485,0.456,0.406 scales"), err
    content = tmp_path / "c.png"
    with pytest.raises(ConfigError, match="^" + re.escape("std 1e-09,1e-09,1e-09 with the random weights' pixel "
                                                          "range 1 and mean 0.5,0.5,0.5 scales pixels by 1e+09")):
        styleengine.stylise(content, tmp_path / "s.png", weights="random", iterations=1, size=40, std=(1e-9,) * 3)
    whole = Convention("RGB", 1.0, (0.0, 0.0, 0.0), (1e-3,) * 3)
    with pytest.raises(ConfigError, match="^" + re.escape("pixel_range 100000 with the convention's mean 0,0,0 "
                                                          "and std 0.001,0.001,0.001 scales pixels by 1e+08")):
        styleengine.stylise(content, tmp_path / "s.png", weights="random", iterations=1, size=40, convention=whole,
                            pixel_range=1e5)


def test_a_finished_job_is_skipped_however_its_files_are_spelled(tmp_path, monkeypatch, capsys):
    """The hash kept a job's init, weights and mask paths as typed beside their bytes: the jobs file read from
    another folder (its paths resolved from there), `--init ./i.png` after `--init i.png` or a weights file by its
    absolute path ran a finished job again (probe 27a, 6 of 6)."""
    import json

    from safetensors.torch import save_file

    from styleengine.model.weights import random_state

    _pictures(tmp_path)
    (tmp_path / "i.png").write_bytes((tmp_path / "c.png").read_bytes())
    save_file(random_state("vgg16", 2), tmp_path / "w.safetensors")
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "init": "i.png",
                                                  "content_mask": "c.png"}) + "\n")
    monkeypatch.chdir(tmp_path)
    fast = [*FAST, "--model", "vgg16"]

    def batch(*args, out="o", jobs="j.jsonl"):
        return run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *fast, *args)[0]

    assert batch() == 0
    assert batch(jobs=str(tmp_path / "j.jsonl")) == 0
    monkeypatch.chdir(tmp_path / "o")
    assert batch(out=".", jobs="../j.jsonl") == 0
    monkeypatch.chdir(tmp_path)
    assert [line["status"] for line in manifest_lines(tmp_path / "o")] == ["ok", "skipped", "skipped"]
    (tmp_path / "k.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png"}) + "\n")
    for given in (["--init", "i.png", "--weights", "w.safetensors"],
                  ["--init", "./i.png", "--weights", str(tmp_path / "w.safetensors")]):
        assert batch(*[a for a in given if a != "random"], out="p", jobs="k.jsonl") == 0
    assert [line["status"] for line in manifest_lines(tmp_path / "p")] == ["ok", "skipped"]


def test_a_video_resumes_however_its_files_are_spelled(tmp_path, monkeypatch, capsys):
    """`video ... --init c.png` then `--init /abs/c.png` refused: "holds frames of other settings" (probe 27a)."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    import numpy as np

    from styleengine.benchmarks.video_clips import write_clip

    _pictures(tmp_path)
    write_clip(tmp_path / "in.mp4", [np.full((48, 64, 3), v / 8, np.float32) for v in range(3)], fps=12)
    monkeypatch.chdir(tmp_path)
    for init, frames in (("c.png", "0:2"), (str(tmp_path / "c.png"), "0:3")):
        code, _, err = run_cli(monkeypatch, capsys, "video", "in.mp4", "s.png", "-o", "v.mp4", *FAST, "--size", "64",
                               "--init", init,
                               "--frames", frames)
        assert code == 0, err
    assert "1 stylised" in err, err  # the two frames of the first run kept


def test_a_refused_line_loses_no_picture_of_its_optimisation(tmp_path, monkeypatch, capsys):
    """Two jobs optimised together, the manifest full at the first's line: the first was rescued, the second,
    finished with it, was neither written nor said (probe 27a, 4 of 4). Each is rescued and the line says both;
    a signal held while the first is recorded keeps the second too."""
    import json
    import os
    import signal

    from styleengine.engine import batch as engine
    from styleengine.engine import manifest as manifest_module
    from styleengine.errors import UserError

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text("".join(json.dumps({"content": "c.png", "style": style, "id": name}) + "\n"
                                              for name, style in (("A", "s.png"), ("B", "c.png"))))
    argv = ["--out", tmp_path / "o", *FAST, "--batch-size", "2"]

    def refused(self, entry):
        raise UserError(f"cannot write the manifest {self.path}: No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(manifest_module.Manifest, "append", refused)
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", *argv)
    said = one_error_line(code, err)
    assert "job A's picture is not left in" in said and "; job B's too (finished with it): saved it to " in said
    assert len(list((tmp_path / "o").glob("*-rescued-*.png"))) == 2, said
    real = engine.record

    def record_then_signal(result, *args, **kwargs):  # SIGTERM as the first of the two is recorded
        done = real(result, *args, **kwargs)
        if result.job.id == "A":
            os.kill(os.getpid(), signal.SIGTERM)
        return done

    monkeypatch.setattr(engine, "record", record_then_signal)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "p", *FAST,
                           "--batch-size", "2")
    assert code == 143, err
    assert [line["status"] for line in manifest_lines(tmp_path / "p")] == ["ok", "ok"], err


def test_content_masks_are_checked_as_given_by_the_run_and_the_start_alike(tmp_path, monkeypatch, capsys):
    """Three content masks summing to exactly 1 (two 1-px columns and the rest) were refused by `run` ("sum to 1.09
    at pixel (81, 1)") whenever it resized them: a picture's bicubic rings at an edge, and each mask was clipped
    on its own (probe 27b). Masks whose stray pixel overlaps another were taken by runs at some sizes, refused at
    others, and a batch's start refused some a run took (48 sets). Masks are resized with weights that are never
    negative, and checked as given, at their own size, by the run and the start alike."""
    import json

    import numpy as np
    from PIL import Image

    line = np.zeros((96, 96), np.uint8)
    line[:, 40] = 255
    beside = np.roll(line, 1, axis=1)
    for name, mask in (("a", line), ("b", beside), ("c", 255 - line - beside)):
        Image.fromarray(mask).save(tmp_path / f"p{name}.png")
    given = ["--content-mask", ",".join(str(tmp_path / f"p{n}.png") for n in "abc")]
    for side in (48, 64, 192):
        Image.new("RGB", (side, side), (200, 30, 30)).save(tmp_path / f"c{side}.png")
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / f"c{side}.png", *[tmp_path / "c48.png"] * 3,
                               "-o", tmp_path / f"o{side}.png", *FAST, "--size", "64", *given)
        assert code == 0, err
    half, band, rest = (np.zeros((128, 128), np.uint8) for _ in range(3))
    half[:, :64], band[:, 64:72], rest[:, 72:], rest[32, 20] = 255, 255, 255, 5
    for name, mask in (("a", half), ("b", band), ("c", rest)):
        Image.fromarray(mask).save(tmp_path / f"q{name}.png")
    stray = ["--content-mask", ",".join(str(tmp_path / f"q{n}.png") for n in "abc")]
    said = set()
    for side in (48, 192):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / f"c{side}.png", *[tmp_path / "c48.png"] * 3,
                               "-o", tmp_path / "r.png", *FAST, *stray)
        said.add(one_error_line(code, err))
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c48.png", "styles": ["c48.png"] * 3}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                           *stray)
    said.add(one_error_line(code, err))
    assert said == {"error: the content masks sum to 1.02 at pixel (20, 32); a pixel's weights must sum to at most 1 "
                    "(each mask is one style's region)"}, said  # where the masks' files have it
    assert not (tmp_path / "o").exists()


def test_the_dry_run_says_a_mask_fault_before_a_missing_weights_file(tmp_path, monkeypatch, capsys):
    """Overlapping masks and a missing weights file: the run said the masks, the dry run the weights (probe 27b)."""
    _pictures(tmp_path)
    from PIL import Image

    Image.new("L", (48, 40), 255).save(tmp_path / "white.png")
    said = set()
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", tmp_path / "s.png",
                               "-o", tmp_path / "o.png", *FAST, "--weights", tmp_path / "nope.safetensors",
                               "--content-mask", f"{tmp_path / 'white.png'},{tmp_path / 'white.png'}", *dry)
        said.add(one_error_line(code, err))
    assert len(said) == 1 and said.pop().startswith("error: the content masks sum to 2.00"), said


@pytest.mark.parametrize("folder", [".srv", "-srv", "srv.d"])
def test_a_servers_folder_of_any_name_is_never_shown_to_clients(tmp_path, monkeypatch, folder):
    """`serve --results-dir .srv` (or -srv) said ".srv/uploads is no longer the server's folder" to clients, and an
    OSError's quoted 'srv/uploads/ID' kept its path (probe 27b): the rule's word boundary needs a letter."""
    pytest.importorskip("fastapi")
    from pathlib import Path

    from styleengine.serve.jobs import JobStore

    monkeypatch.chdir(tmp_path)
    store = JobStore(Path(folder))
    try:
        for said in (f"{folder}/uploads is no longer the server's folder (it is a file)",
                     f"cannot write '{folder}/uploads/1a/content': [Errno 28] No space left on device",
                     f"cannot write ./{folder}/results/1a.png (\"{folder}/results/1a.png\")"):
            shown = store.for_clients(said)
            assert folder not in shown and "<server folder>/" in shown, shown
        assert store.for_clients(f"my{folder}/results/a.png") == f"my{folder}/results/a.png"
    finally:
        store.close()


def test_a_jobs_weights_file_removed_as_it_is_read_fails_that_job_in_one_line(tmp_path, monkeypatch, capsys):
    """A job's own weights file removed mid-batch, between its read and its hash: a FileNotFoundError traceback
    ended the batch (probe 27b, 3 of 3). The job fails saying so; the batch goes on."""
    import errno
    import json

    from safetensors.torch import save_file

    from styleengine.model import weights as weights_module
    from styleengine.model.weights import random_state

    _pictures(tmp_path)
    save_file(random_state("vgg16", 2), tmp_path / "w2.safetensors")
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(job) + "\n" for job in (
        {"content": "c.png", "style": "s.png", "output": "b.png", "weights": "w2.safetensors"},
        {"content": "c.png", "style": "s.png", "output": "a.png"})))

    def gone(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(weights_module, "file_sha256", gone)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                           "--model", "vgg16")
    assert code == 1 and "Traceback" not in err, err
    lines = manifest_lines(tmp_path / "o")
    assert [line["status"] for line in lines] == ["failed", "ok"], lines
    assert lines[0]["reason"] == f"cannot read weights file {tmp_path / 'w2.safetensors'}: No such file or directory"


def test_a_users_fault_in_a_ray_worker_is_said_in_its_own_words(monkeypatch):
    """A worker's WeightsError reached the driver as Ray's RayTaskError, whose first line is Ray's header
    ("\\x1b[36mray::VideoWorker.stylise()\\x1b[39m (pid=..."): the error line said that and no cause (probe 27b)."""
    pytest.importorskip("ray")
    import types

    import ray.exceptions

    from styleengine.engine import batch_ray
    from styleengine.errors import WeightsError

    cause = WeightsError("cannot read weights file w.safetensors: No such file or directory")
    raised = ray.exceptions.RayTaskError("stylise", "Traceback ...", cause).as_instanceof_cause()

    class Method:
        def remote(self, *args):
            return "ref"

    class Actor:
        run = Method()

        def remote(self, *args):  # the driver's folder
            return self

    def get(ref):
        raise raised

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: None,
                                 cluster_resources=lambda: {"CPU": 2}, remote=lambda **kw: lambda body: Actor(),
                                 kill=lambda actor: None, shutdown=lambda: None, exceptions=ray.exceptions,
                                 wait=lambda refs, num_returns, timeout=None: (refs[:1], refs[1:]), get=get)
    monkeypatch.setattr(batch_ray, "import_ray", lambda: fake)
    monkeypatch.setattr(batch_ray, "check_address", lambda address, connect=True: None)
    pool = batch_ray.ActorPool(object, "auto", cpus_per_worker=2)
    try:
        with pytest.raises(WeightsError) as caught:
            list(pool.map("run", [("job",)]))
        assert str(caught.value) == str(cause) and not isinstance(caught.value, ray.exceptions.RayTaskError)
    finally:
        pool.close()


def test_a_video_that_cannot_write_a_frame_says_what_it_wrote(tmp_path, monkeypatch, capsys):
    """A full disk as the third frame was saved: the line said the frame only, while a 2-frame video was written
    (probe 27a, 2 of 2); a signal's line says both."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    import errno

    import numpy as np

    from styleengine import cli_video
    from styleengine.benchmarks.video_clips import write_clip
    from styleengine.errors import UserError

    _pictures(tmp_path)
    write_clip(tmp_path / "in.mp4", [np.full((48, 64, 3), v / 8, np.float32) for v in range(4)], fps=12)
    real = cli_video.FrameStore.save

    def save(self, index, image):
        if index == 2:
            raise UserError(f"cannot write {self.path(index)}: {errno.errorcode[errno.ENOSPC]}")
        return real(self, index, image)

    monkeypatch.setattr(cli_video.FrameStore, "save", save)
    out = tmp_path / "v.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o", out, *FAST,
                           "--size", "64")
    assert one_error_line(code, err).endswith(f"; wrote {out} (2 of 4 frames); rerun to continue"), err
    assert out.is_file()


def test_a_number_too_small_to_hold_is_refused_not_read_as_zero(tmp_path, monkeypatch, capsys):
    """`--style-weight 1e-400` ran with no style (content distance 0, exit 0) where 1e-50 is refused, and so did a
    jobs file's 1e-400 (as a JSON number or a text), the API's "1e-400" and a layer weight in a list (probe 27a)."""
    import json

    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    run = ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST]
    code, _, err = run_cli(monkeypatch, capsys, *run, "--style-weight", "1e-400")
    assert "'1e-400' is too small: it reads as 0" in one_error_line(code, err)
    code, _, err = run_cli(monkeypatch, capsys, *run, "--style-layer-weights", "1e-400,1,1,1,1")
    assert one_error_line(code, err) == ("error: --style-layer-weights '1e-400,1,1,1,1': a number in it is too small: "
                                         "it reads as 0")
    for value, out in (("1e-400", "b"), ("1e-300", "b2")):  # a JSON number past what a float holds, one that holds
        (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png"}).replace(
            "}", f', "style_weight": {value}}}') + "\n")
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / out, *FAST)
        assert code == 1, err
        if out == "b":
            assert one_error_line(code, err).endswith("line 1: bad style_weight 1e-400 (too small: it reads as 0)")
    (tmp_path / "1e-400").write_bytes((tmp_path / "c.png").read_bytes())  # a text key takes no number (probe 28a)
    (tmp_path / "k.jsonl").write_text('{"content": "c.png", "style": "s.png", "init": 1e-400}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "k.jsonl", "--out", tmp_path / "b", *FAST)
    assert one_error_line(code, err).endswith("line 1: bad init 1e-400 (not a text)")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "b").exists()
    assert "style_weight 1e-300 is past float32" in manifest_lines(tmp_path / "b2")[0]["reason"]  # the number it is
    with pytest.raises(ConfigError, match="^style_weight '1e-400': too small: it reads as 0$"):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", style_weight="1e-400")


def test_a_size_or_memory_refusal_names_what_to_change(tmp_path, monkeypatch, capsys):
    """Coarse to fine, a style too small at the first scale was said as "--size x --style-scale 43" where --size
    was 64 already (the start size decides it); 100 million L-BFGS pairs were "use a smaller --size"; and a budget
    of 0.52 GiB was "too small ... alone need 0.5 GiB", rounded under it (probe 27a). The figure then said was
    worked out with the short L-BFGS history of the budget given and for one scale (probe 28a): it is the least
    budget that runs every scale, with the history it gives."""
    from PIL import Image

    _pictures(tmp_path)
    Image.new("RGB", (64, 48), (20, 30, 230)).save(tmp_path / "wide.png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "square.png")
    run = ["run", tmp_path / "square.png", tmp_path / "wide.png", "-o", tmp_path / "o.png", *FAST, "--size", "64"]
    code, _, err = run_cli(monkeypatch, capsys, *run, "--scales", "3", "--dry-run")
    line = one_error_line(code, err)
    assert "at the style size 32 px (start size x style scale)" in line and "(--start-size x --style-scale 42)" in line
    code, _, err = run_cli(monkeypatch, capsys, *run, "--lbfgs-history", "100000000")
    assert one_error_line(code, err).endswith("100000000 L-BFGS pairs alone); use a smaller --lbfgs-history"), err
    for size in ("64", "128", "1024"):  # one scale, and coarse to fine (probe 28a: 0.58, then 0.6, then 0.68 ...)
        sized = [*run, "--size", size, "--dry-run"]
        code, _, err = run_cli(monkeypatch, capsys, *sized, "--mem-budget", "0.01")
        needs = float(one_error_line(code, err).split("it needs ")[1].split(" GiB")[0])
        assert run_cli(monkeypatch, capsys, *sized, "--mem-budget", f"{needs - 0.01:.2f}")[0] == 1
        assert run_cli(monkeypatch, capsys, *sized, "--mem-budget", f"{needs:g}")[0] == 0, size


def test_an_export_removes_no_folder_of_the_users(tmp_path, monkeypatch, capsys):
    """`export` removed any folder beside its output named .styleengine-export-* older than a minute and not
    locked: a user's .styleengine-export-mine with their notes went (probe 27a). Only a folder named as an export
    names its staging folder, holding only what an export writes, is one it removes."""
    import os
    import time

    from styleengine.cli_export import STAGING_PREFIX, UNOWNED_AGE_S

    try:
        from test_cli_export import NO_CHECK
    except ModuleNotFoundError:
        from tests.test_cli_export import NO_CHECK

    kept = {"mine": "notes.txt", "0123456789ab": "notes.txt", "0123456789cd": ".export.json.notes",
            "0123456789ef": "step.onnx/notes.txt"}  # the last two: names an export's own begin with (probe 28a)
    for name, inside in (*kept.items(), ("ba9876543210", ".step.onnx.1a2b3c4d.tmp")):
        folder = tmp_path / f"{STAGING_PREFIX}{name}"
        (folder / inside).parent.mkdir(parents=True)
        (folder / inside).write_text("x")
        old = time.time() - UNOWNED_AGE_S - 10
        os.utime(folder, (old, old))
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", tmp_path / "out", *NO_CHECK)
    assert code == 0, err
    assert all((tmp_path / f"{STAGING_PREFIX}{name}" / inside).is_file() for name, inside in kept.items())
    assert not (tmp_path / f"{STAGING_PREFIX}ba9876543210").exists()


def test_serve_refuses_save_every_which_it_would_ignore(tmp_path, monkeypatch, capsys):
    """`serve --save-every 1` started and wrote no snapshot, without a word (probe 27a)."""
    pytest.importorskip("fastapi")
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--results-dir", tmp_path / "srv", "--weights", "random",
                           "--save-every", "1", "--port", "59997")
    assert one_error_line(code, err).startswith("error: --save-every writes snapshots beside a run's output")
    assert not (tmp_path / "srv").exists()


def test_a_plain_pickle_as_weights_is_one_line(tmp_path, monkeypatch, capsys):
    """A pickle of protocol 4 as --weights printed torch's "Detected pickle protocol 4 ... please file an issue"
    as a warning line before the refusal (probe 27a)."""
    import pickle

    _pictures(tmp_path)
    with open(tmp_path / "w.pth", "wb") as f:
        pickle.dump({"features.0.weight": [1.0]}, f, protocol=4)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--weights", tmp_path / "w.pth")
    assert code == 1 and err.strip().splitlines() == [f"error: {tmp_path / 'w.pth'} is a plain Python pickle "
                                                      f"(pickle.dump), not a PyTorch checkpoint; save the weights "
                                                      f"with torch.save or safetensors"], err


def test_a_tuning_record_that_cannot_be_kept_is_said_once(tmp_path, monkeypatch, caplog):
    """On a full disk with STYLEENGINE_TUNE=on, "could not keep the tuning record ..." was said twice in one run
    (its race carried over, then its pick; probe 27a); then twice again, each naming its own temp file (probe
    28a)."""
    import errno
    import logging

    from styleengine.engine import autotune

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))

    def full(path, data, through=True):  # as atomic_write's: of the record itself (it named a temp file each time)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(autotune.paths, "atomic_write", full)
    with caplog.at_level(logging.WARNING, logger=autotune.log.name):
        assert autotune._update(lambda data: None) and autotune._update(lambda data: None)
    said = [r.getMessage() for r in caplog.records if "could not keep the tuning record" in r.getMessage()]
    path = autotune.record_path()
    assert said == [f"could not keep the tuning record in {path}: No space left on device; set "
                    f"STYLEENGINE_CACHE_DIR to a writable folder (later runs will measure again)"], said


def test_masks_of_two_sizes_that_share_the_picture_are_taken(tmp_path, monkeypatch, capsys):
    """A 64 px left half and a 128 px right half were refused ("sum to 1.25 at pixel (64, 0)"): the check blurred
    the smaller one's edge as it enlarged it (probe 28a, every front end). Its pixels are taken as they are."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    left, right = np.zeros((40, 48), np.uint8), np.zeros((80, 96), np.uint8)
    left[:, :24], right[:, 48:] = 255, 255
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(right).save(tmp_path / "right.png")
    both = f"{tmp_path / 'left.png'},{tmp_path / 'right.png'}"
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", tmp_path / "s.png",
                               "-o", tmp_path / "o.png", *FAST, "--content-mask", both, *dry)
        assert code == 0, err
    right[:, 46:48] = 255  # two columns of the large one over the small one's half: an overlap the files have
    Image.fromarray(right).save(tmp_path / "right.png")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", tmp_path / "s.png",
                           "-o", tmp_path / "o.png", *FAST, "--content-mask", both)
    assert one_error_line(code, err).startswith("error: the content masks sum to 2.00 at pixel (46, 0)"), err


def test_a_mask_that_fades_at_the_runs_size_is_said_so_whatever_its_contents_size(tmp_path, monkeypatch, capsys):
    """One white pixel in a 1024 px mask: with a 48 px content "is black everywhere" (it is not); with a 1024 px
    content, a run at 40 px ran, its style painting nothing (probe 28a). Both say it fades at the run's size."""
    import numpy as np
    from PIL import Image

    dot = np.zeros((1024, 1024), np.uint8)
    dot[500, 500] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    said = set()
    for side in (48, 1024):
        Image.new("RGB", (side, side), (200, 30, 30)).save(tmp_path / f"c{side}.png")
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / f"c{side}.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, "--content-mask", tmp_path / "dot.png")
        said.add(one_error_line(code, err).split(" fades")[0] if " fades to black at 40x40 px" in err else err)
    assert said == {f"error: content mask 1 {tmp_path / 'dot.png'}"}, said


def test_a_full_disk_as_a_video_is_encoded_prints_nothing_of_pyavs(tmp_path, capfd):
    """A disk full as the video's end was written: PyAV printed "PyAV library exception being dropped:" and a
    traceback before the command's one line (probe 28b, 4 of 4 at 44 KB free): its Python-file callbacks failed
    twice. FFmpeg writes the file by its name now; the error is one OSError, the temp file gone."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    import errno
    import os
    import subprocess
    from fractions import Fraction

    import numpy as np

    from styleengine.engine import video_io

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    full = tmp_path / "fs"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("this machine lets no tmpfs be mounted here")
    try:
        free = os.statvfs(full).f_bavail * os.statvfs(full).f_frsize
        (full / "filler").write_bytes(b"\0" * (free - 4096))  # 4 KB left: the frames fit, the end does not
        from PIL import Image
        from skimage import data

        photo = np.asarray(Image.fromarray(data.astronaut()).resize((64, 52)), np.float32) / 255
        with pytest.raises(OSError) as caught:
            video_io.write_video(full / "v.mp4", (np.roll(photo, 2 * i, axis=1) for i in range(40)), Fraction(8))
        assert caught.value.errno == errno.ENOSPC
        assert "dropped" not in capfd.readouterr().err
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_full_disk_loses_no_picture_of_an_optimisation_whose_writes_fail_too(tmp_path, monkeypatch, capsys):
    """A group of three on a full disk: the first's picture written and its line refused, the second's picture
    refused too (rescued elsewhere), and the third never written: the line said only "cannot write the manifest"
    (probe 28b, 5 of 5). Every picture is kept somewhere and the line says where."""
    import json
    from pathlib import Path

    from styleengine.engine import batch as engine
    from styleengine.engine import manifest as manifest_module
    from styleengine.errors import ImageError, UserError

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text("".join(json.dumps({"content": "c.png", "style": style, "id": name,
                                                          "output": f"{name}.png"}) + "\n"
                                              for name, style in (("A", "s.png"), ("B", "c.png"), ("C", "s.png"))))
    real_save = engine.images.save_image

    def refused(self, entry):
        raise UserError(f"cannot write the manifest {self.path}: No space left on device")

    def save(image, output, **kwargs):
        if Path(output).name == "B.png":
            raise ImageError(f"cannot write {output}: No space left on device")
        return real_save(image, output, **kwargs)

    monkeypatch.setattr(manifest_module.Manifest, "append", refused)
    monkeypatch.setattr(engine.images, "save_image", save)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                           "--batch-size", "3")
    said = one_error_line(code, err)
    assert "job A's picture is not left in" in said, said
    assert "; job B's too (finished with it): saved it to " in said and "; job C's too" in said, said
    assert said.count("-rescued-") == 3


def test_a_weights_file_replaced_after_the_plan_is_no_other_files_picture(tmp_path, monkeypatch, capsys):
    """A job's weights file replaced between its plan (its hash) and its first load ran with the new bytes under
    the old file's hash: with the old file back, the rerun skipped it over another network's picture (probe 28b,
    3 of 3). The job fails saying so; the rerun runs it."""
    import json

    from safetensors.torch import save_file

    from styleengine.engine import batch as engine
    from styleengine.model.weights import random_state

    _pictures(tmp_path)
    save_file(random_state("vgg16", 2), tmp_path / "w.safetensors")
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "a.png",
                                                  "weights": "w.safetensors"}) + "\n")
    real = engine.run_groups

    def replaced_then_run(*args, **kwargs):  # after the plan, before the first load
        save_file(random_state("vgg16", 3), tmp_path / "w.safetensors")
        return real(*args, **kwargs)

    argv = ["batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST, "--model", "vgg16"]
    with monkeypatch.context() as patch:
        patch.setattr(engine, "run_groups", replaced_then_run)
        code, _, err = run_cli(monkeypatch, capsys, *argv)
    line = manifest_lines(tmp_path / "o")[0]
    assert code == 1 and line["status"] == "failed" and "changed after the job was planned" in line["reason"], err
    assert run_cli(monkeypatch, capsys, *argv)[0] == 0
    assert manifest_lines(tmp_path / "o")[-1]["status"] == "ok"


def test_metadata_past_float32_is_said_unusable_not_unreadable():
    """A file whose metadata says std 1e-9 was "an unreadable input convention": it is read, and unusable."""
    from styleengine.errors import WeightsError
    from styleengine.model.weights import convention_from_metadata

    with pytest.raises(WeightsError, match="metadata has an unusable input convention: input pixel range 1, mean "):
        convention_from_metadata({"channel_order": "RGB", "pixel_range": "1", "mean": "0,0,0", "std": "1e-9,1e-9,1e-9"})


def test_masks_of_two_sizes_never_overlap_in_the_run(tmp_path):
    """A 64 px left part and a 33 px right part that meet as given passed the check, then overlapped in the run
    (1.26 at 64 px): each resized on its own blurs across the border (probe 29). A pixel's weights are scaled down
    where they would sum past 1."""
    import numpy as np
    from PIL import Image

    from styleengine.engine import masks
    from styleengine.engine.settings import Settings

    left, right = np.zeros((64, 64), np.uint8), np.zeros((33, 33), np.uint8)
    left[:, :33], right[:, 17:] = 255, 255
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(right).save(tmp_path / "right.png")
    settings = Settings(size=64, content_masks=(str(tmp_path / "left.png"), str(tmp_path / "right.png")))
    loaded = masks.load(settings, (64, 64), [(64, 64), (64, 64)])
    assert loaded is not None  # the masks are kept as given (stop 40), and summed at each scale's size
    for side in (32, 48, 64, 128):
        content, _ = loaded.at(side, side, [(64, 64), (64, 64)])
        assert float(content.sum(dim=0).max()) <= 1 + 1e-6, side


def test_a_full_disk_at_a_videos_end_names_no_temp_file(tmp_path, monkeypatch, capsys):
    """"cannot write n.mp4: [Errno 28] No space left on device: '.n.mp4.d3a71c74.tmp'": a file already gone
    (probe 29, 4 of 4)."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    import errno

    import numpy as np

    from styleengine.benchmarks.video_clips import write_clip
    from styleengine.engine import video_io

    _pictures(tmp_path)
    write_clip(tmp_path / "in.mp4", [np.full((48, 64, 3), v / 8, np.float32) for v in range(3)], fps=12)

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path.with_name(f".{path.name}.d3a71c74.tmp")))

    monkeypatch.setattr(video_io, "write_video", full)
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "v.mp4", *FAST, "--size", "64")
    line = one_error_line(code, err)
    assert line.startswith(f"error: cannot write {tmp_path / 'v.mp4'}: No space left on device; frames 0-2"), line
    assert ".tmp" not in line


def test_tune_says_a_record_it_cannot_keep_once(tmp_path, monkeypatch, capsys):
    """`tune` with tune.json a folder said it twice: autotune's warning and its own "not kept in" (probe 29)."""
    from styleengine.engine import autotune

    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "tune.json").mkdir(parents=True)
    autotune._memo.clear()
    code, _, err = run_cli(monkeypatch, capsys, "tune", "--size", "40", "--weights", "random", "--model", "vgg16",
                           "--backend", "torch", "--device", "cpu")
    assert code == 0 and err.count("could not keep the tuning record") == 1 and "not kept in" not in err, err
