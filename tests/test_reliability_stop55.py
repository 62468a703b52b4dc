"""Issue 23, stop 55: probe 55's findings (on d5ca44a)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings

import pytest

try:
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import _pictures

SNAPSHOTS = ["--weights", "random", "--size", "40", "--iters", "3", "--backend", "torch", "--save-every", "1"]


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_a_fifo_at_any_snapshots_name_is_refused_at_once(tmp_path, suffix):
    """A FIFO at o_1.png (not the last snapshot's name, which was checked as an output) hung `run` before any work,
    no word: the mark's check opened it and waited for a writer (probe 55a, 1). At o_1.bmp, which carries no mark,
    it was said 'put there during the run' at the end (55a, 2). Each is refused at the start."""
    _pictures(tmp_path)
    os.mkfifo(tmp_path / f"o_1{suffix}")
    done = subprocess.run([sys.executable, "-m", "styleengine", "run", "c.png", "s.png", "-o", f"o{suffix}",
                           *SNAPSHOTS], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "STYLEENGINE_TUNE": "off"})
    assert one_error_line(done.returncode, done.stderr) == (
        f"error: cannot write --save-every snapshot o_1{suffix}: it is a FIFO (a named pipe), not a regular file; "
        f"move it, or choose another -o"), done.stderr


def test_a_users_picture_put_at_a_snapshots_name_during_the_run_is_kept(tmp_path, monkeypatch, capsys):
    """A user's o_2.png put there after the run's start was replaced by the snapshot, exit 0, no word: the mark was
    read only at the start (probe 55a, 3). The write looks again, keeps it and says so."""
    from PIL import Image

    from styleengine.engine import images

    _pictures(tmp_path)
    mine, real = tmp_path / "o_2.png", images.save_image

    def save_image(image, path, *args, **kwargs):
        if not mine.exists():
            Image.new("RGB", (40, 40), (1, 2, 3)).save(mine)
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(images, "save_image", save_image)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *SNAPSHOTS)
    before = Image.open(mine).getpixel((0, 0))
    assert code == 0 and (tmp_path / "o.png").is_file() and (tmp_path / "o_1.png").is_file(), err
    assert before == (1, 2, 3), err
    assert (f"cannot write {mine}: a file is there that is not an earlier snapshot of o.png (put there during the "
            f"run; not replaced)") in err, err


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".apng"])
def test_a_users_picture_at_a_snapshots_name_is_kept_for_every_png_and_jpeg_suffix(tmp_path, monkeypatch, capsys,
                                                                                  suffix):
    """o.jfif, o.jpe and o.apng are JPEG and PNG, and their snapshots carry the mark, yet a user's o_2.jfif was
    replaced, exit 0 (probe 55a, 4): the check went by a list of suffixes, not by the format written."""
    from PIL import Image

    _pictures(tmp_path)
    mine = tmp_path / f"o_2{suffix}"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(mine, format="PNG" if suffix == ".apng" else "JPEG")
    before = mine.read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / f"o{suffix}", *SNAPSHOTS)
    assert one_error_line(code, err) == (f"error: cannot write --save-every snapshot {mine}: a file is there that is "
                                         f"not an earlier snapshot of o{suffix}; move it, or choose another -o"), err
    assert mine.read_bytes() == before


@pytest.mark.parametrize("name", ["a\udcffb.png", "a\udcffb.jpg", "a\u2028b.jpg", "a\x1cb.jpg", "a\nb.jpg"])
def test_snapshots_of_an_output_of_any_name_are_written_and_a_rerun_replaces_them(tmp_path, monkeypatch, capsys,
                                                                                   name):
    """An output named with a byte that is not UTF-8 got none of its snapshots ("surrogates not allowed"), and a
    rerun over a JPEG's own snapshots was refused where its name holds a character that str.splitlines splits on
    (probe 55a, 5, 6). The mark holds the name's bytes; a JPEG's comment is read whole."""
    _pictures(tmp_path)
    output = tmp_path / name
    for _ in range(2):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", output,
                               *SNAPSHOTS)
        assert code == 0 and "warning" not in err, err
        assert all(output.with_name(f"{output.stem}_{i}{output.suffix}").is_file() for i in (1, 2)), err


def signal_at_json_write(monkeypatch, at: int) -> None:
    """SIGTERM to this process as bench writes its `at`-th --json document (1 the first)."""
    from styleengine import cli_bench

    real, calls = cli_bench.write_json, []

    def write_json(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_bench, "write_json", write_json)


def test_every_bench_row_shown_as_ok_is_in_json(tmp_path, monkeypatch, capsys, machine_once):
    """A size's rows take turns, so every row's last line came before any row was done, and all of them were said
    at the first row's partial --json: a signal during the second's write lost a row shown 'ok' (probe 55a, 7;
    stop 53's fix, incomplete). Each row's line is said once --json holds that row."""
    path = tmp_path / "b.json"
    signal_at_json_write(monkeypatch, 2)  # the second row's partial document
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--res", "32", "--backends", "naive,torch", "--devices",
                           "cpu", "--precision", "fp32", "--conv", "direct", "--iters", "1", "--rounds", "1",
                           "--warmup", "0", "--json", path)
    assert code == 143, err
    assert "naive cpu fp32 32x32: ok" in err and "torch cpu fp32 direct 32x32: ok" not in err, err
    assert f"{path} holds the 1 row done" in err, err


def test_lines_appended_with_cr_line_ends_are_counted_as_the_reader_splits_them(tmp_path):
    """Two jobs appended with \\r line ends to a file read to its end were 'got a line' (probe 55a, 9): counted by
    \\n alone, where the reader takes \\r as a line end too."""
    from styleengine.engine.jobs import iter_jobs

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    job = '{"content": "c.png", "styles": ["s.png"], "output": "%s.png"}\r'
    path = tmp_path / "j.jsonl"
    path.write_text(job % "a", newline="")
    read: list = []
    assert len(list(iter_jobs(path, tmp_path / "out", read))) == 1
    with open(path, "a", newline="") as f:
        f.write(job % "b" + job % "c" + "\r\n")
    assert read[0].since(path) == ("got 2 lines after the batch had read it to its end; the same command runs the "
                                   "jobs added")


@pytest.mark.parametrize("lines", [1, 2])
def test_another_tools_utf16_manifest_is_refused_not_cut(tmp_path, monkeypatch, capsys, lines):
    """A manifest.jsonl in UTF-16 (PowerShell's Out-File) was taken for ours: one NUL in every two bytes read as a
    power cut's, so a one-line file was cut to nothing and a longer one cut by a byte and appended to, exit 0
    (probe 55a, 10). A power cut's NULs are the file's end; NULs among the text are another's."""
    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch
    from styleengine.engine import manifest as module

    text = "\r\n".join(['{"file": "x.png", "label": 3}', '{"file": "y.png", "label": 4}'][:lines])
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_bytes(("\ufeff" + text + "\r\n" * (lines - 1)).encode("utf-16-le"))
    before = manifest.read_bytes()
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 1 and "is not a manifest styleengine wrote" in err, err
    assert manifest.read_bytes() == before
    line = b'{"batch": 1, "device": "cpu", "id": "a", "status": "ok"}'
    assert module._written_by_us(line + b"\n" + line[:20] + b"\0" * 4096)  # a power cut's, still ours
    assert module._written_by_us(line[:20] + b"\0" * 5)  # the file's last block, lost
    assert module._written_by_us(b"\0" * 512)
    assert not module._written_by_us("{}".encode("utf-16-le"))


def _bad_headers(tmp_path):
    import json
    import struct
    import zipfile

    made = {"huge.safetensors": struct.pack("<Q", 2**63) + b"{}",
            "nonjson.safetensors": struct.pack("<Q", 20) + b"this is not json!!!!" + bytes(10)}
    header = json.dumps({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}).encode()
    made["short.safetensors"] = struct.pack("<Q", len(header)) + header + bytes(10)
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
    zipfile.ZipFile(tmp_path / "empty.pth", "w").close()
    return [*made, "empty.pth"]


def test_the_dry_run_tells_weights_the_run_refuses_from_their_header(tmp_path, monkeypatch, capsys):
    """--dry-run passed a safetensors file whose header's length is 2**63, whose header is not JSON or names more
    bytes than the file holds, and an empty zip named .pth; the run refused each at once (probe 55a, 12). The dry
    run says the run's line."""
    _pictures(tmp_path)
    for name in _bad_headers(tmp_path):
        lines = []
        for dry in (["--dry-run"], []):
            code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                                   tmp_path / "o.png", "--weights", tmp_path / name, "--size", "40", "--iters", "2",
                                   "--backend", "torch", *dry)
            lines.append(one_error_line(code, err))
        assert lines[0] == lines[1], (name, lines)
    assert not (tmp_path / "o.png").exists()


def test_serve_refuses_a_token_no_header_carries_and_knows_mapped_loopback(monkeypatch, capsys):
    """A non-ASCII --token was taken, and curl's header (its UTF-8 bytes, read as Latin-1) was 401 'a token is
    required' (probe 55a, 13); --host ::ffff:127.0.0.1, the loopback, was 'reachable from other machines' (55a,
    14)."""
    from styleengine.cli_serve import _loopback

    uvicorn = pytest.importorskip("uvicorn")

    def never(*args, **kwargs):  # the server the token was taken for
        raise AssertionError("served")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    monkeypatch.delenv("STYLEENGINE_TOKEN", raising=False)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--token", "pässwörd-long-enough-123456", "--weights",
                           "random")
    assert one_error_line(code, err) == ("error: --token (STYLEENGINE_TOKEN) must be ASCII, as an Authorization "
                                         "header carries it; got 2 other characters"), err
    assert _loopback("::ffff:127.0.0.1") and _loopback("::FFFF:127.0.0.2") and not _loopback("::ffff:10.0.0.1")


@pytest.mark.parametrize("target", ["victim.json", "elsewhere/made.json"])
def test_a_link_at_the_tuning_record_is_never_written_through(tmp_path, monkeypatch, target):
    """A symbolic link at <cache>/tune.json: the user's file it led to was replaced by the tuning record, exit 0;
    a dangling one made a file outside the cache (probe 55b, 5). A record of ours is a file: the link is damage,
    replaced, and what it leads to is left as it was. The bench's peak figure, beside it, alike."""
    from styleengine.benchmarks import machine as bench_machine
    from styleengine.engine import autotune

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(cache))
    (tmp_path / "elsewhere").mkdir()
    victim = tmp_path / target
    if target == "victim.json":
        victim.write_text('{"my": "settings"}\n')
    record = autotune.record_path()
    record.symlink_to(victim)
    autotune._update(lambda data: data["entries"].__setitem__("x", {"pick": ["torch", "fp32", "direct"]}))
    assert not record.is_symlink() and "x" in autotune._load_all()["entries"]
    assert (victim.read_text() == '{"my": "settings"}\n') if target == "victim.json" else not victim.exists()
    peak = bench_machine._peak_cache_path()
    peak.parent.mkdir(parents=True, exist_ok=True)
    peak.symlink_to(tmp_path / "peak_victim.json")
    (tmp_path / "peak_victim.json").write_text("[1, 2]")
    monkeypatch.setattr(bench_machine, "measure_fp32_peak", lambda device: 7.0)
    assert bench_machine.cached_fp32_peak("cpu", "k") == (7.0, False)
    assert (tmp_path / "peak_victim.json").read_text() == "[1, 2]" and not peak.is_symlink()


def test_an_empty_content_layer_list_with_a_content_weight_is_refused(tmp_path, monkeypatch, capsys):
    """`--content-layers "$LAYERS"` with LAYERS unset ran with no content term, exit 0, where the style's twin is
    refused (probe 55b, 6); a jobs file's [] and the API's content_layers=[] alike. --content-weight 0 runs."""
    import numpy as np

    import styleengine
    from styleengine.errors import UserError

    _pictures(tmp_path)
    flags = ["--weights", "random", "--size", "40", "--iters", "2", "--backend", "torch"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *flags, "--content-layers", "")
    assert one_error_line(code, err) == ("error: --content-layers names no layer, so the content image would not be "
                                         "followed; name one (default: relu4_2), or set --content-weight 0"), err
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *flags, "--content-layers", "", "--content-weight", "0")
    assert code == 0, err
    picture = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
    with pytest.raises(UserError, match="names no layer, so the content image would not be followed"):
        styleengine.stylise(picture, picture, size=40, iterations=2, weights="random", content_layers=[])


def test_a_recipe_with_another_weighting_is_refused(tmp_path, monkeypatch, capsys):
    """`--recipe neural-style-pt --weighting paper` ran the recipe's weights, mapped for invariant weighting (means),
    on sums: the content term 12 000 times neural-style-pt's at 48 px, no word, exit 0 (probe 55b, 3)."""
    from styleengine.engine.recipes import recipe_values
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", "--weights", "random", "--size", "40", "--iters", "2",
                           "--recipe", "neural-style-pt", "--weighting", "paper", "--dry-run")
    assert one_error_line(code, err) == ("error: --weighting paper is not neural-style-pt's: its weights are mapped "
                                         "for invariant weighting; drop --weighting, or the recipe"), err
    with pytest.raises(ConfigError, match="^weighting paper is not neural-style-pt's"):
        recipe_values("neural-style-pt", {"weighting": "paper"}, flags=False)
    assert recipe_values("neural-style-pt", {"weighting": "invariant"})["weighting"] == "invariant"


def _auto_picks_the_other_conv(monkeypatch):
    """auto, measured again, picks the other convolution from now on (a fresh record, another load)."""
    import dataclasses

    from styleengine.engine import autotune

    real = autotune.choose

    def choose(settings, *args, **kwargs):
        choice = real(settings, *args, **kwargs)
        other = "winograd" if choice.settings.conv != "winograd" else "direct"
        return dataclasses.replace(choice, settings=dataclasses.replace(choice.settings, conv=other))

    monkeypatch.setattr(autotune, "choose", choose)


def _as_before(monkeypatch):
    """The hash as it was before it held `auto` as asked: the way auto picked."""
    from styleengine.engine.settings import Settings

    monkeypatch.setattr(Settings, "as_asked", lambda self, asked: self)


@pytest.mark.parametrize("first", ["now", "before"])
def test_a_video_continues_when_auto_picks_another_way(tmp_path, monkeypatch, capsys, first):
    """A video's resume was refused, 'holds frames of other settings or another video', after auto measured again
    and picked the other convolution, the user's command unchanged; its advice, moving the frames away, threw the
    work out (probe 55b, 1). Its hash holds `auto` as asked; a folder recorded before that, by the way auto picks
    still, continues too."""
    try:
        from test_video import FAST, moving_window, photo, write_clip
    except ModuleNotFoundError:
        from tests.test_video import FAST, moving_window, photo, write_clip

    frames, _ = moving_window(photo(), 4, (48, 64))
    write_clip(tmp_path / "in.mp4", frames, fps=12)
    _pictures(tmp_path)
    flags = [f for f in FAST if f not in ("--backend", "torch")]
    with monkeypatch.context() as m:
        if first == "before":
            _as_before(m)
        code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                               tmp_path / "o.mp4", *flags, "--size", "64", "--frames", "0:2")
        assert code == 0, err
    if first == "now":
        _auto_picks_the_other_conv(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "o.mp4", *flags, "--size", "64", "--frames", "0:4")
    assert code == 0 and f"resuming: frames 0-1 are in {tmp_path / 'o.mp4.frames'}\n" in err, err
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "o.mp4", *flags, "--size", "64", "--frames", "2:4")
    assert one_error_line(code, err) == (
        f"error: {tmp_path / 'o.mp4.frames'} holds frames that follow from frame 0, and this run's start at frame 2; "
        f"give --frames from 0 to continue them, or choose another output"), err
    # other settings as well: said as other settings, not as a first frame whose advice is refused again (review)
    code, _, err = run_cli(monkeypatch, capsys, "video", tmp_path / "in.mp4", tmp_path / "s.png", "-o",
                           tmp_path / "o.mp4", *flags, "--size", "64", "--frames", "2:4", "--temporal-weight", "3")
    assert "holds frames of other settings or another video" in one_error_line(code, err), err


@pytest.mark.parametrize("first", ["now", "before"])
def test_a_batch_job_done_is_skipped_when_auto_picks_another_way(tmp_path, monkeypatch, capsys, first):
    """A batch rerun after auto picked another way ran its finished jobs again, their pictures replaced (probe
    55b, 1): the hash holds `auto` as asked; a line written before that, by the way auto picks still, is the
    job's."""
    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch

    with monkeypatch.context() as m:
        if first == "before":
            _as_before(m)
        code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
        assert code == 0, err
    if first == "now":
        _auto_picks_the_other_conv(monkeypatch)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 0 and "0 ok, 3 skipped, 0 failed" in err, err


def test_a_masked_array_is_refused_and_a_matrix_read_as_its_array():
    """The API read a numpy masked array's masked pixels as they were (values past 1: another picture, no word),
    and an np.matrix was a raw ValueError (probe 55b, 2)."""
    import numpy as np

    from styleengine.engine.images import from_picture
    from styleengine.errors import ImageError

    picture = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with pytest.raises(ImageError, match=r"^content image: a masked array's masked pixels are not a picture's"):
        from_picture(np.ma.masked_array(picture, mask=picture > 200), "content image")
    gray = picture[:, :, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # numpy's word on np.matrix itself
        matrix = np.asmatrix(gray)
    assert np.array_equal(from_picture(matrix, "content image"), from_picture(gray, "content image"))


def test_the_review_of_stop_55s_mends(tmp_path, monkeypatch, capsys):
    """(review of stop 55, 3-5) A snapshot marked before stop 55 (the name as text) is ours; a masked array with
    nothing masked is its data, as before; a misspelt --weighting beside a recipe is said as unknown."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from styleengine.engine.images import from_picture
    from styleengine.engine.recipes import recipe_values
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    info = PngInfo()
    info.add_text("styleengine-snapshot", "caf\u00e9.png")  # as stop 53 wrote it
    Image.new("RGB", (40, 40)).save(tmp_path / "caf\u00e9_1.png", pnginfo=info)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "caf\u00e9.png", *SNAPSHOTS)
    assert code == 0, err
    picture = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert np.array_equal(from_picture(np.ma.masked_array(picture), "content image"),
                          from_picture(picture, "content image"))
    with pytest.raises(ConfigError, match="invarient"):
        recipe_values("neural-style-pt", {"weighting": "invarient"})
    try:
        recipe_values("neural-style-pt", {"weighting": "invarient"})
    except ConfigError as e:
        assert "is not neural-style-pt's" not in str(e), e


def test_an_animated_content_image_says_only_its_first_frame_is_used(tmp_path, monkeypatch, capsys):
    """An animated GIF, APNG or WebP as the content image: its first frame alone was stylised, exit 0, no word,
    where `video` takes every frame of the same file (probe 56b, 1)."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "a.gif", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", "--weights", "random", "--size", "40", "--iters", "2", "--backend",
                           "torch")
    assert code == 0, err
    assert (f"content image {tmp_path / 'a.gif'} is an animation of 3 frames: only its first is used "
            f"(`styleengine video` stylises every frame)") in " ".join(err.split()), err


def test_bench_imports_no_torch_in_its_own_process(tmp_path):
    """A signal as a row's worker ended was acted on 2.5 to 4 s late: bench's own process imported torch for the
    row's GFLOP figure, and a signal waits for an import (probe 56b, 3). The figure comes from torch-free tables."""
    script = ("import sys\nfrom styleengine import cli\n"
              "sys.argv = ['styleengine', 'bench', '--res', '32', '--backends', 'torch', '--devices', 'cpu', "
              "'--precision', 'fp32', '--conv', 'direct', '--iters', '1', '--rounds', '1', '--warmup', '0', "
              "'--json', sys.argv[1]]\n"
              "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
              "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "b.json")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "STYLEENGINE_TUNE": "off"})
    assert "TORCH False" in done.stderr and (tmp_path / "b.json").is_file(), done.stderr


def test_a_snapshot_is_written_at_its_own_name_not_through_a_link(tmp_path, monkeypatch, capsys):
    """A link at o_2.png to an earlier snapshot kept elsewhere (which carries the mark): the snapshot was written
    through it, the kept picture replaced, no word (probe 56a, 1). A snapshot replaces a link at its name."""
    _pictures(tmp_path)
    output = tmp_path / "o.png"
    args = ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", output, *SNAPSHOTS]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    (tmp_path / "keep").mkdir()
    kept = (tmp_path / "o_1.png").rename(tmp_path / "keep" / "o_1.png")
    before = kept.read_bytes()
    (tmp_path / "o_2.png").unlink()
    (tmp_path / "o_2.png").symlink_to(kept)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and kept.read_bytes() == before, err
    assert not (tmp_path / "o_2.png").is_symlink() and (tmp_path / "o_1.png").is_file()


def test_a_failed_bench_row_shown_is_in_json(tmp_path, monkeypatch, capsys, machine_once):
    """A row that failed in round 1 of 2 is done, yet its line was said at once, before --json held it: a signal
    then lost three rows shown, 'b.json not written' (probe 56a, 2; stop 55's fix held only last rounds)."""
    path = tmp_path / "b.json"
    signal_at_json_write(monkeypatch, 1)  # the first row's partial document
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--res", "32", "--backends", "naive,torch", "--devices",
                           "cpu", "--precision", "fp32", "--conv", "direct", "--iters", "2", "--rounds", "2",
                           "--warmup", "0", "--time-budget", "0.000001", "--json", path)
    assert code == 143, err
    assert "timeout" not in err and f"{path} not written" in err, err


def told_as_a_zip(tmp_path, monkeypatch, capsys, names: list[str]) -> None:
    """A zip w.pth holding `names` is told as a zip, not a checkpoint, by the run and its dry run."""
    import zipfile

    _pictures(tmp_path)
    with zipfile.ZipFile(tmp_path / "w.pth", "w") as z:
        for name in names:
            z.writestr(name, b"\x80\x02}q\x00." if name.endswith(".pkl") else b"3\n")
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--weights", tmp_path / "w.pth", "--size", "40", *dry)
        assert one_error_line(code, err) == (f"error: {tmp_path / 'w.pth'} is a zip archive, not a PyTorch checkpoint "
                                             f"(torch.save's zip holds a data.pkl and a version record)"), err


def test_a_zip_with_a_data_pkl_but_no_version_is_told_and_a_mapped_host_is_refused_at_once(tmp_path, monkeypatch,
                                                                                            capsys):
    """A zip named .pth holding a data.pkl but no version record got PyTorch's 'Expected hasRecord("version")...
    please report an enhancement request', and the dry run passed it (probe 56a, 6). serve --host ::ffff:127.0.0.1
    started, then uvicorn could not bind it: its own ERROR line, exit 3, folders made (56a, 7)."""

    told_as_a_zip(tmp_path, monkeypatch, capsys, ["archive/data.pkl"])
    uvicorn = pytest.importorskip("uvicorn")

    def never(*args, **kwargs):
        raise AssertionError("served")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    monkeypatch.delenv("STYLEENGINE_TOKEN", raising=False)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--host", "::ffff:127.0.0.1", "--port", "18799",
                           "--weights", "random", "--results-dir", tmp_path / "r")
    assert one_error_line(code, err).endswith("(an IPv4 address written as IPv6: give --host 127.0.0.1)"), err
    assert not (tmp_path / "r").exists()
