"""Issue 23, stop 40: stop 39's known limits mended, and probe 30's findings (on c005f36)."""
from __future__ import annotations

import json

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import manifest_lines, one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import manifest_lines, one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures


def _clip(tmp_path, frames: int):
    """c.png, s.png and in.mp4 (`frames` grey frames, 64x48) in tmp_path; skipped without the video extra."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    import numpy as np

    from styleengine.benchmarks.video_clips import write_clip

    _pictures(tmp_path)
    write_clip(tmp_path / "in.mp4", [np.full((48, 64, 3), v / 8, np.float32) for v in range(frames)], fps=12)
    return tmp_path / "in.mp4"


@pytest.mark.parametrize(("key", "value", "said"), [
    ("Style", 5, "bad Style 5"), ("STYLES", {"a": 1}, "bad STYLES {'a': 1}"), ("Content", 5, "bad Content 5"),
    ("Output", [1], "bad Output [1]"), ("Id", 1.5, "bad Id 1.5"), ("Output", "  ", "Output is empty")])
def test_a_jobs_files_content_style_output_or_id_key_is_said_as_typed(tmp_path, monkeypatch, capsys, key, value,
                                                                      said):
    """A jobs file's `Content`, `Style` or `Styles` key of a bad value was said lower-cased (`bad styles 5` for
    `"Style": 5`; stop 39's known limit), unlike the setting keys: each is said as the file has it."""
    _pictures(tmp_path)
    row = {"content": "c.png", "style": "s.png", "output": "a.png"}
    row = {k: v for k, v in row.items() if k != key.lower().rstrip("s")}
    row[key] = value
    (tmp_path / "j.jsonl").write_text(json.dumps(row) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    assert f"line 1: {said}" in one_error_line(code, err), err


@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_videos_weights_replaced_after_its_hash_are_said(tmp_path, monkeypatch, capsys, where):
    """`video --weights w` with w replaced after the video's hash was taken: the frames were the new file's under
    the old file's hash, and a rerun with the old file back resumed over them (probe 28b). The local run checked
    the bytes it loaded; `--ray`'s workers did not (stop 39's known limit): each checks them now. The video stops
    saying so, nothing written, and the rerun runs."""
    from safetensors.torch import save_file

    from styleengine.engine import manifest
    from styleengine.model.weights import random_state

    if where == "ray":
        pytest.importorskip("ray", reason="Ray is not installed")
        from styleengine.engine import video_ray

        class InProcess:  # the runner's contract, one VideoWorker in this process (no cluster)
            workers = 1

            def __init__(self, address, **_):
                self.worker = video_ray.VideoWorker()

            def run(self, work, styles, settings, plan, key, weights_sha256=None, init_image=None):
                for chunk, frames in work:
                    done, why = self.worker.stylise(chunk, frames, styles, settings, plan, key, weights_sha256,
                                                    init_image)
                    yield chunk, done, why

            def stop(self):
                pass

            def close(self):
                pass

        monkeypatch.setattr(video_ray, "VideoRayRunner", InProcess)
    _clip(tmp_path, 3)
    save_file(random_state("vgg16", 2), tmp_path / "w.safetensors")
    real = manifest.file_digest

    def hashed_then_replaced(path, cache=None, role="file"):
        digest = real(path, cache, role)
        if role == "weights file":
            save_file(random_state("vgg16", 3), tmp_path / "w.safetensors")
        return digest

    argv = ["video", tmp_path / "in.mp4", tmp_path / "s.png", "-o", tmp_path / "v.mp4", *FAST, "--size", "64",
            "--model", "vgg16", "--weights", tmp_path / "w.safetensors", *(["--ray", "auto"] if where == "ray" else [])]
    with monkeypatch.context() as patch:
        patch.setattr(manifest, "file_digest", hashed_then_replaced)
        code, _, err = run_cli(monkeypatch, capsys, *argv)
    said = one_error_line(code, err)  # the local run says it at the start, --ray once a worker has loaded them
    assert "changed after the video started: its bytes are not those its hash holds; run it again" in said, err
    assert not (tmp_path / "v.mp4").exists()
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 0 and (tmp_path / "v.mp4").is_file(), err


def test_the_dry_run_checks_the_convention_with_a_files_own_metadata(tmp_path, monkeypatch, capsys):
    """`--dry-run` did not read the weights, so an input convention past float32 with the file's own values was
    said by the run only (stop 39's known limit): a .safetensors file's header says its convention without a
    tensor read, and the dry run says the run's line."""
    from safetensors.torch import save_file

    from styleengine.model.weights import random_state

    _pictures(tmp_path)
    caffe = {"channel_order": "BGR", "pixel_range": "0-255", "mean": "103.939,116.779,123.68", "std": "1,1,1"}
    save_file(random_state("vgg16", 2), tmp_path / "w.safetensors", metadata=caffe)
    argv = ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST, "--model", "vgg16",
            "--weights", tmp_path / "w.safetensors", "--std", "1e-3,1e-3,1e-3"]
    said = [one_error_line(*run_cli(monkeypatch, capsys, *argv, *dry)[::2]) for dry in (["--dry-run"], [])]
    assert said[0] == said[1] and said[0].startswith("error: --std 0.001,0.001,0.001 with the weights' pixel range "
                                                     "255 and mean 103.939,116.779,123.68 scales pixels by"), said
    code, _, err = run_cli(monkeypatch, capsys, *argv[:-2], "--pixel-range", "1e5", "--dry-run")
    assert code == 0, err  # a scale of 1e5 with the file's std of 1: taken, as the run takes it


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_a_videos_frames_folder_removed_mid_run_is_one_line(tmp_path, monkeypatch, capsys, how):
    """`rm -rf o.mp4.frames` (or a move) while a video ran ended in a FileNotFoundError traceback from the tidy-up
    of a run that wrote nothing (probe 30b, 6 of 6): one line, and a rerun makes the video."""
    import shutil

    from styleengine import cli_video

    _clip(tmp_path, 3)
    real = cli_video.FrameStore.save

    def gone_after_the_first(store, index, image):
        if index == 1:
            if how == "removed":
                shutil.rmtree(store.folder)
            else:
                store.folder.rename(tmp_path / "elsewhere")
        return real(store, index, image)

    argv = ["video", tmp_path / "in.mp4", tmp_path / "s.png", "-o", tmp_path / "v.mp4", *FAST, "--size", "64"]
    with monkeypatch.context() as patch:
        patch.setattr(cli_video.FrameStore, "save", gone_after_the_first)
        code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert one_error_line(code, err).endswith("nothing written"), err
    code, _, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 0 and (tmp_path / "v.mp4").is_file(), err


def _metadata_file(path, **fields):
    from safetensors.torch import save_file

    from styleengine.model.weights import random_state

    meta = {"channel_order": "RGB", "pixel_range": "0-1", "mean": "0,0,0", "std": "0.25,0.25,0.25", **fields}
    save_file(random_state("vgg16", 2), path, metadata=meta)
    return path


def test_a_metadata_pixel_range_with_an_exponent_is_read_as_written():
    """A metadata pixel range of "1e-2" ran as 2 (its exponent's minus was taken for the "0-255" dash), and
    "0-1e-400" as 400 (probe 30b): the span is "0-" and a number; a number a float reads as 0 is refused."""
    from styleengine.errors import WeightsError
    from styleengine.model.convention import convention_from_metadata

    meta = {"channel_order": "RGB", "mean": "0,0,0", "std": "0.25,0.25,0.25"}
    for given, read in (("1e-2", 0.01), ("0-255", 255.0), ("0.0-1.0", 1.0), ("0 - 1e2", 100.0), ("4", 4.0)):
        assert convention_from_metadata({**meta, "pixel_range": given}).pixel_range == read, given
    for given in ("0-1e-400", "-5", "1-"):
        with pytest.raises(WeightsError, match="metadata has an un(readable|usable) input convention"):
            convention_from_metadata({**meta, "pixel_range": given})
    with pytest.raises(WeightsError, match="1e-400 reads as 0"):
        convention_from_metadata({**meta, "std": "1e-400,1,1"})


def test_flags_that_replace_a_files_metadata_past_float32_run(tmp_path, monkeypatch, capsys):
    """A file whose metadata std is 1e-9 was refused even with --pixel-range, --mean and --std replacing all of it
    (probe 30b, run, dry run, batch, serve, API): the range is checked on what the network is fed, each value
    named by whom it came from; without the flags the file's own values are refused, said as the weights'."""
    import styleengine
    from styleengine.errors import ConfigError
    from styleengine.model.convention import TORCHVISION

    _pictures(tmp_path)
    weights = _metadata_file(tmp_path / "w.safetensors", std="1e-9,1e-9,1e-9")
    argv = ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST, "--model", "vgg16",
            "--weights", weights]
    flags = ["--pixel-range", "1", "--mean", "0,0,0", "--std", "1,1,1"]
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(monkeypatch, capsys, *argv, *flags, *dry)
        assert code == 0, err
        code, _, err = run_cli(monkeypatch, capsys, *argv, *dry)
        assert one_error_line(code, err).startswith("error: the weights' pixel range 1, mean 0,0,0 and std "
                                                    "1e-09,1e-09,1e-09 scale pixels by 1e+09"), err
    styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights=weights, model="vgg16", iterations=1,
                        size=40, convention=TORCHVISION)
    with pytest.raises(ConfigError, match="^the weights' pixel range 1"):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights=weights, model="vgg16", iterations=1,
                            size=40)


def test_a_masks_transparent_pixels_paint_nothing(tmp_path, monkeypatch, capsys):
    """A content mask with alpha was blended over white: opaque white on the left and transparent on the right
    read as white everywhere, so the run was the unmasked one (exit 0), and two such halves were refused as an
    overlap never drawn (probe 30b). Transparent reads as black: the RGBA and LA masks run as their grey twin."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(tmp_path / "c.png")
    left = np.zeros((40, 48), np.uint8)
    left[:, :24] = 255
    grey = {"l": left, "r": 255 - left}
    for side, alpha in grey.items():
        Image.fromarray(alpha).save(tmp_path / f"{side}.png")
        rgba = np.full((40, 48, 4), 255, np.uint8)
        rgba[..., 3] = alpha
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{side}_rgba.png")
        Image.fromarray(np.stack([np.full_like(alpha, 255), alpha], -1), "LA").save(tmp_path / f"{side}_la.png")

    def run(name, *masks):
        flags = ["--content-mask", ",".join(str(tmp_path / m) for m in masks)] if masks else []
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png",
                               *([tmp_path / "s.png"] * max(1, len(masks))), "-o", tmp_path / name, *FAST,
                               "--iters", "3", *flags)
        assert code == 0, err
        return np.asarray(Image.open(tmp_path / name))

    assert not np.array_equal(run("none.png"), run("grey.png", "l.png"))  # the mask shows at this size
    for kind in ("rgba", "la"):
        assert np.array_equal(run(f"{kind}.png", f"l_{kind}.png"), run("grey.png", "l.png")), kind
        assert np.array_equal(run(f"{kind}2.png", f"l_{kind}.png", f"r_{kind}.png"), run("grey2.png", "l.png",
                                                                                          "r.png")), kind
    for dry in (["--dry-run"], []):  # a mask transparent everywhere paints nothing: said, by the dry run too
        Image.fromarray(np.zeros((40, 48, 4), np.uint8) + np.uint8([255, 255, 255, 0]), "RGBA").save(
            tmp_path / "clear.png")
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "x.png", *FAST, "--content-mask", tmp_path / "clear.png", *dry)
        assert one_error_line(code, err).endswith("is black everywhere: its style would paint nothing"), err


def test_a_thin_mask_is_resized_straight_to_each_scale_and_the_advice_works(tmp_path, monkeypatch, capsys):
    """A 2048 px mask with one white pixel over a 48 px content faded at the content's own size first, so every
    --size was refused with "use a larger size" (probe 30b): content masks are resized once, straight from their
    own size to each scale's, and the advice names what keeps the pixel (a larger size, or first scale)."""
    import numpy as np
    from PIL import Image

    dot = np.zeros((2048, 2048), np.uint8)
    dot[1000, 1000] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    argv = ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST, "--content-mask",
            tmp_path / "dot.png"]
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(monkeypatch, capsys, *argv, *dry)
        assert one_error_line(code, err).endswith("fades to black at 40x40 px, where the run resizes it: too little "
                                                  "of it is white; widen its white or run at a larger size"), err
        code, _, err = run_cli(monkeypatch, capsys, *argv, "--size", "200", "--scales", "2", "--start-size", "40",
                               *dry)
        assert one_error_line(code, err).endswith("widen its white or start the run larger (its first scale)"), err
    code, _, err = run_cli(monkeypatch, capsys, *argv, "--size", "200")
    assert code == 0 and (tmp_path / "o.png").is_file(), err


@pytest.mark.parametrize("how", ["itself", "symlink"])
def test_a_jobs_file_that_is_its_outs_manifest_is_refused_and_left_as_it_was(tmp_path, monkeypatch, capsys, how):
    """`batch o/manifest.jsonl --out o` appended the job's `ok` line to the user's jobs file, and the next run
    was refused for that line (probe 30a, 4 of 4; a symbolic link to it too). Refused before any work."""
    _pictures(tmp_path)
    (tmp_path / "o").mkdir()
    line = json.dumps({"content": str(tmp_path / "c.png"), "style": str(tmp_path / "s.png"), "output": "a.png"})
    (tmp_path / "o" / "manifest.jsonl").write_text(line + "\n")
    jobs = tmp_path / "o" / "manifest.jsonl"
    if how == "symlink":
        (tmp_path / "j.jsonl").symlink_to(jobs)
        jobs = tmp_path / "j.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, "batch", jobs, "--out", tmp_path / "o", *FAST)
    assert one_error_line(code, err).endswith("which the batch writes; give the jobs in another file"), err
    assert (tmp_path / "o" / "manifest.jsonl").read_text() == line + "\n"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["manifest.jsonl"]


def test_run_and_texture_write_nothing_into_a_style_folder_they_read(tmp_path, monkeypatch, capsys):
    """`run c.png SF -o SF/out.png` (or `--trace SF/t.png`, or `texture SF`) wrote into the style folder it read,
    exit 0: the next run read the picture as a second style and refused it as an input (probe 30a, 5 of 5).
    Refused before any work, as batch refuses it; a file of SF named, not the folder, is a style like another."""
    _pictures(tmp_path)
    (tmp_path / "SF").mkdir()
    (tmp_path / "s.png").rename(tmp_path / "SF" / "s.png")
    SF = tmp_path / "SF"
    cases = [("run", tmp_path / "c.png", SF, "-o", SF / "out.png"),
             ("run", tmp_path / "c.png", SF, "-o", tmp_path / "o.png", "--trace", SF / "t.png"),
             ("texture", SF, "-o", SF / "sub" / ".." / "t.png")]
    for argv in cases:
        for dry in (["--dry-run"], []):
            code, _, err = run_cli(monkeypatch, capsys, *argv, *FAST, *dry)
            assert "whose images are styles: the next run would read it as one" in one_error_line(code, err), argv
    assert sorted(p.name for p in SF.iterdir()) == ["s.png"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", SF / "s.png", "-o", SF / "o.png", *FAST)
    assert code == 0, err  # the style named as a file: the folder is no style argument


def test_a_video_keeps_no_frames_among_its_inputs(tmp_path, monkeypatch, capsys):
    """`video v.mp4 paint.mp4.frames -o paint.mp4` wrote its frames among the style images, and the rerun was
    refused (probe 30a, 2 of 2). An input inside the frames folder is refused before any work."""
    _clip(tmp_path, 2)
    kept = tmp_path / "paint.mp4.frames"
    kept.mkdir()
    (tmp_path / "s.png").rename(kept / "starry.png")
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", kept, "-o", tmp_path / "paint.mp4",
                           *FAST, "--size", "64")
    assert one_error_line(code, err).endswith("is inside paint.mp4.frames/, where the finished frames are kept; "
                                              "choose another output"), err
    assert sorted(p.name for p in kept.iterdir()) == ["starry.png"]


@pytest.mark.parametrize(("signum", "code", "name"), [(2, 130, "Ctrl-C"), (15, 143, "SIGTERM")])
def test_a_signal_then_a_write_that_fails_says_both_with_the_signals_exit(tmp_path, monkeypatch, capsys, signum,
                                                                          code, name):
    """A signal in the loop, then a full disk at the picture's write: exit 1 and the rescue's line, the signal
    never said, so the rescued picture read as a finished one and a scheduler's 143 was lost (probe 30a, 6 of 6).
    One line says both, with the signal's exit."""
    import tempfile

    try:
        from test_reliability import hooked, self_signal
    except ModuleNotFoundError:
        from tests.test_reliability import hooked, self_signal

    _pictures(tmp_path)
    folder, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    hooked(monkeypatch, {2: folder.rmdir, 3: self_signal(signum)})
    got, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                          folder / "o.png", *FAST, "--iters", "10")
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code and not any(line.startswith("error:") for line in lines), err
    assert lines[-1].startswith(f"interrupted after 2 iterations ({name}); cannot write {folder / 'o.png'}"), err
    assert f"saved the image to {elsewhere}" in lines[-1] and len(list(elsewhere.iterdir())) == 1


@pytest.mark.parametrize("row", ["c.png,s.png,,a.png", "c.png,,s.png,a.png"])
def test_a_csv_with_style_and_styles_columns_takes_the_one_filled(tmp_path, monkeypatch, capsys, row):
    """A CSV with both columns and `style` filled, `styles` blank, said "a job needs ... at least one style
    image" (its mirror ran; probe 31a); a JSON null is no value either."""
    _pictures(tmp_path)
    (tmp_path / "j.csv").write_text(f"content,Style,styles,output\n{row}\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.csv", "--out", tmp_path / "o", *FAST)
    assert code == 0 and (tmp_path / "o" / "a.png").is_file(), err
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "Style": 5, "styles": None}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "p", *FAST)
    assert "line 1: bad Style 5" in one_error_line(code, err), err


def test_a_style_masks_fade_is_checked_where_the_run_resizes_it(tmp_path, monkeypatch, capsys):
    """A style mask's fade was checked at its style image's own size: a 2048 px style passed a one-pixel mask the
    run then resized to 40 px (faded as for a 64 px style, which was refused; probe 31a). It is checked at the
    style's size in the run's first scale, and resized straight to it."""
    import numpy as np
    from PIL import Image

    dot = np.zeros((2048, 2048), np.uint8)
    dot[0, 0] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(tmp_path / "all.png")
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "c.png")
    said = set()
    for side in (64, 2048):
        Image.new("RGB", (side, side), (20, 30, 230)).save(tmp_path / f"s{side}.png")
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / f"s{side}.png", "-o",
                               tmp_path / "o.png", *FAST, "--content-mask", tmp_path / "all.png", "--style-mask",
                               tmp_path / "dot.png")
        said.add(one_error_line(code, err).split(" fades")[1])
    assert said == {" to black at 40x40 px, where the run resizes it: too little of it is white; widen its white, "
                    "run at a larger size or raise the style scale"}, said


def test_an_interrupted_coarse_to_fine_picture_rescued_says_its_size(tmp_path, monkeypatch, capsys):
    """A signal at the first of two scales, then a failed write: the rescue's line dropped "an earlier scale's
    image, not --size" that the written picture's line says (probe 31b, 3 of 3)."""
    import tempfile

    from PIL import Image

    try:
        from test_reliability import hooked, self_signal
    except ModuleNotFoundError:
        from tests.test_reliability import hooked, self_signal
    import signal

    _pictures(tmp_path)
    Image.new("RGB", (96, 80), (200, 30, 30)).save(tmp_path / "c.png")
    folder, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    hooked(monkeypatch, {2: folder.rmdir, 3: self_signal(signal.SIGTERM)})
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           folder / "o.png", *FAST, "--size", "96", "--scales", "2", "--iters", "20")
    last = err.strip().splitlines()[-1]
    assert code == 143 and last.startswith("interrupted after 2 iterations (SIGTERM); cannot write"), err
    assert last.endswith("px: an earlier scale's image, not --size 96)"), err


def test_a_signal_then_a_full_disk_at_a_videos_encode_says_both(tmp_path, monkeypatch, capsys):
    """SIGTERM mid-video, then a full disk as the frames were encoded: exit 143 and only the disk's line, the
    signal never said (probe 31b, 3 of 3; run and the others say both since probe 30a)."""
    import errno
    import os
    import signal

    from styleengine import cli_video
    from styleengine.engine import video_io

    _clip(tmp_path, 3)
    real = cli_video.FrameStore.save

    def signalled(store, index, image):
        real(store, index, image)
        if index == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli_video.FrameStore, "save", signalled)
    monkeypatch.setattr(video_io, "write_video", full)
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "v.mp4", *FAST, "--size", "64")
    last = err.strip().splitlines()[-1]
    assert code == 143 and last.startswith("interrupted (SIGTERM) after 1 new frames; cannot write"), err
    assert "No space left on device; frames 0-0 are kept in" in last, err


@pytest.mark.parametrize("which", ["c.png", "s.png"])
def test_an_image_replaced_after_the_plan_is_no_other_files_picture(tmp_path, monkeypatch, capsys, which):
    """A job's content or style replaced between the plan (its hash) and its load: the picture was the new file's
    under the old bytes' hash, and with the old file back the rerun skipped it (probe 31b, local 3 of 3, Ray 1 of
    1; probe 28b had mended it for weights). The job fails saying so; the rerun runs it."""
    from PIL import Image

    from styleengine.engine import batch as engine

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "a.png"}) + "\n")
    real = engine.run_groups

    def replaced_then_run(*args, **kwargs):  # after the plan, before the first load
        Image.new("RGB", (48, 40), (1, 2, 3)).save(tmp_path / which)
        return real(*args, **kwargs)

    argv = ["batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST]
    with monkeypatch.context() as patch:
        patch.setattr(engine, "run_groups", replaced_then_run)
        code, _, err = run_cli(monkeypatch, capsys, *argv)
    line = manifest_lines(tmp_path / "o")[0]
    assert code == 1 and line["status"] == "failed" and "changed after the job was planned" in line["reason"], err
    assert not (tmp_path / "o" / "a.png").exists()
    assert run_cli(monkeypatch, capsys, *argv)[0] == 0
    assert manifest_lines(tmp_path / "o")[-1]["status"] == "ok"


@pytest.mark.parametrize("own", ["init", "content_masks"])
def test_a_servers_own_file_gone_is_a_one_line_503(tmp_path, own):
    """A server's --init removed after its start made every POST a 500 with a traceback (its hash read the file),
    and its --content-mask a 422 that called it a corrupt upload (probe 31b): a 503 naming the file only."""
    import dataclasses

    from PIL import Image

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    Image.new("L", (40, 40), 255).save(tmp_path / "own.png")
    value = str(tmp_path / "own.png") if own == "init" else (str(tmp_path / "own.png"),)
    settings = dataclasses.replace(SETTINGS, **{own: value}).resolved()
    with TestClient(create_app(Config(settings=settings, root=tmp_path / "srv"))) as client:
        (tmp_path / "own.png").rename(tmp_path / "moved.png")
        response = client.post("/api/jobs", files=files(png(40, 40), png(40, 40, 1)))
        assert response.status_code == 503, response.text
        role = "init image" if own == "init" else "content mask 1"
        assert response.json()["detail"] == (f"the server's {role} own.png was not found; it cannot run jobs until "
                                             f"the file is back")


@pytest.mark.parametrize("where", ["results", "uploads"])
def test_a_servers_own_file_inside_its_folders_is_refused_at_its_start(tmp_path, monkeypatch, capsys, where):
    """`serve --results-dir r --init r/results/<a job id>.png`: the start's sweep of what a crash left removed the
    user's init as an unrecorded job's picture, and recorded a job no one sent (probe 31b, 3 of 3); a folder of
    uploads went whole. Refused at the start, the file untouched."""
    (tmp_path / "r" / where).mkdir(parents=True)
    serve_refuses_its_init(monkeypatch, capsys, tmp_path / "r", tmp_path / "r" / where)


def serve_refuses_its_init(monkeypatch, capsys, root, folder):
    """`serve --results-dir root --init folder/<a job id>.png` is refused at its start, the init untouched."""
    pytest.importorskip("fastapi")
    from PIL import Image

    from styleengine.serve import app

    def started(*args, **kwargs):  # a server started is this test failing: never one that waits
        raise AssertionError("the server started")

    monkeypatch.setattr(app, "open_store", started)
    init = folder / "0123456789abcdef01234567.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(init)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--results-dir", root, "--init", init,
                           "--weights", "random", "--size", "40", "--port", "1")
    assert one_error_line(code, err).endswith("where the server keeps its jobs' files and removes what a crash "
                                              "left; move it out"), err
    assert init.is_file()


def test_an_image_swapped_after_its_bytes_were_checked_is_not_the_one_run(tmp_path, monkeypatch, capsys):
    """The check read a job's content to hash it, then decoded it from the disk again: a file swapped between the
    two reads ran another picture under the hash (probe 32, 4 of 4, with a loop swapping two files). The bytes
    hashed are the bytes decoded."""
    from PIL import Image

    from styleengine.engine import batch as engine

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "a.png"}) + "\n")
    real = engine._read_as_hashed

    def read_then_swapped(item):
        read = real(item)
        Image.new("RGB", (48, 64), (1, 2, 3)).save(tmp_path / "c.png")  # another shape: the picture tells
        return read

    monkeypatch.setattr(engine, "_read_as_hashed", read_then_swapped)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "a.png").size == (40, 33)  # 48x40 at 40 px: the bytes hashed


@pytest.mark.parametrize("style", ["folder", "link"])
def test_a_picture_rescued_beside_a_trace_never_lands_among_the_styles(tmp_path, monkeypatch, capsys, style):
    """`run c.png SF -o out/o.png --trace SF/t.jsonl` with out/ gone at the write rescued the picture into SF,
    next to the trace, and the next run read it as a style (probe 31a, 3 of 3); so did a style given as a link to
    SF/s.png (probe 32). It goes to the temp folder: a style's folder is its file's, links followed."""
    import tempfile

    try:
        from test_reliability import hooked
    except ModuleNotFoundError:
        from tests.test_reliability import hooked

    _pictures(tmp_path)
    SF, folder, elsewhere = tmp_path / "SF", tmp_path / "out", tmp_path / "elsewhere"
    for made in (SF, folder, elsewhere):
        made.mkdir()
    (tmp_path / "s.png").rename(SF / "s.png")
    (tmp_path / "sl.png").symlink_to(SF / "s.png")
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    hooked(monkeypatch, {2: folder.rmdir})
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", SF if style == "folder" else
                           tmp_path / "sl.png", "-o", folder / "o.png", *FAST, "--iters", "3", "--trace",
                           SF / "t.jsonl")
    assert code == 1 and f"saved the image to {elsewhere}" in err, err
    assert sorted(p.name for p in SF.iterdir()) == ["s.png", "t.jsonl"]


def test_a_csv_cell_of_spaces_is_blank_beside_the_other_style_column(tmp_path, monkeypatch, capsys):
    """`c.png, ,s.png` under `content,style,styles` said "'style' and 'styles' are one thing" where the spaces
    are a blank cell, as with one column (probe 32)."""
    _pictures(tmp_path)
    (tmp_path / "j.csv").write_text("content,style,styles,output\nc.png, ,s.png,a.png\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.csv", "--out", tmp_path / "o", *FAST)
    assert code == 0 and (tmp_path / "o" / "a.png").is_file(), err


def test_a_servers_own_file_is_shown_to_clients_by_its_name_only(tmp_path):
    """A queued job whose server --init went missing failed saying the init's whole path to clients, and a
    server's style mask that faded against an uploaded style was a 202, then a failed job with its path (probe
    32): the fade is the request's 422, and every reason names the server's files by their names."""
    import dataclasses

    import numpy as np
    from PIL import Image

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    Image.new("L", (40, 40), 255).save(tmp_path / "all.png")
    dot = np.zeros((1024, 1024), np.uint8)
    dot[500, 500] = 255
    Image.fromarray(dot).save(tmp_path / "dot.png")
    settings = dataclasses.replace(SETTINGS, content_masks=(str(tmp_path / "all.png"),),
                                   style_masks=(str(tmp_path / "dot.png"),)).resolved()
    with TestClient(create_app(Config(settings=settings, root=tmp_path / "srv"))) as client:
        response = client.post("/api/jobs", files=files(png(40, 40), png(1024, 1024, 1)))
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("the server's style mask 1 dot.png fades to black at"), detail
        assert str(tmp_path) not in detail, detail
    from styleengine.serve.jobs import JobStore

    store = JobStore(tmp_path / "srv2", own=[str(tmp_path / "i.png")])
    try:
        said = store.for_clients(f"init image {tmp_path / 'i.png'} was not found")
    finally:
        store.close()
    assert said == "init image i.png was not found"


def test_a_dotdot_after_a_link_is_another_file_in_the_hash(tmp_path, monkeypatch, capsys):
    """`photos/lnk/../a.png` (lnk a link to ../art/deep: the file art/a.png) and `photos/a.png` shared one hash
    key, the path's text with '..' folded: a job whose content changed was skipped beside the other (exit 0, the
    old picture), and a folder-mode job was refused for good as "changed after the job was planned" (probe 33)."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    (tmp_path / "art" / "deep").mkdir(parents=True)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "photos" / "a.png")
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "art" / "a.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(tmp_path / "s.png")
    (tmp_path / "photos" / "lnk").symlink_to("../art/deep")
    one = {"content": "photos/lnk/../a.png", "style": "s.png", "output": "j.png"}
    (tmp_path / "j1.jsonl").write_text(json.dumps(one) + "\n")
    argv = ["--out", tmp_path / "o", *FAST]
    assert run_cli(monkeypatch, capsys, "batch", tmp_path / "j1.jsonl", *argv)[0] == 0
    Image.new("RGB", (48, 40), (1, 200, 3)).save(tmp_path / "art" / "a.png")  # job j's content changes
    (tmp_path / "j2.jsonl").write_text(json.dumps({**one, "content": "photos/a.png", "output": "k.png"}) + "\n"
                                       + json.dumps(one) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j2.jsonl", *argv)
    statuses = {line["id"]: line["status"] for line in manifest_lines(tmp_path / "o")[1:]}
    assert code == 0 and statuses == {"k": "ok", "j": "ok"}, err
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "photos", "--styles",
                           tmp_path / "photos" / "lnk" / "..", "--out", tmp_path / "f", *FAST)
    assert code == 0, err
