"""Issue 23, stop 43: stop 42's named nits and probe 40's findings (on f5d181a)."""
from __future__ import annotations

import errno
import os
import shutil

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures


def _three_jobs(tmp_path, monkeypatch, capsys, after_record) -> tuple[int, str]:
    """`batch` of jobs a, b, c (one at a time) into tmp_path/out, `after_record()` as each job's line is written:
    (exit code, stderr)."""
    from styleengine.engine import batch as engine

    real = engine.record

    def record(*args, **kwargs):
        written = real(*args, **kwargs)
        after_record()
        return written

    monkeypatch.setattr(engine, "record", record)
    return three_jobs_batch(tmp_path, monkeypatch, capsys)


def three_jobs_batch(tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    """`batch` of jobs a, b, c (one at a time) into tmp_path/out: (exit code, stderr)."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text("".join(f'{{"content": "c.png", "styles": ["s.png"], "output": "{n}.png"}}\n'
                                              for n in "abc"))
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST,
                           "--batch-size", "1")
    return code, err


@pytest.mark.parametrize("case", ["removed", "full", "read-only"])
def test_a_cache_folder_that_cannot_take_an_entry_says_what_to_do_for_its_cause(tmp_path, monkeypatch, case):
    """`tune` with its cache folder removed mid-run skipped ORT with "(No such file or directory); free some space"
    (stop 42's nit): the advice follows the cause."""
    from styleengine.export import cache

    real = cache.tempfile.mkdtemp
    folder = tmp_path / "cache" / "exports" / "key"

    def mkdtemp(prefix, dir):
        if case == "removed":  # the user's `rm -r` of the cache between the folder's mkdir and the staging's
            shutil.rmtree(tmp_path / "cache")
            return real(prefix=prefix, dir=dir)
        code = errno.ENOSPC if case == "full" else errno.EROFS
        raise OSError(code, {"full": "No space left on device", "read-only": "Read-only file system"}[case])

    monkeypatch.setattr(cache.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(cache.CacheWriteError) as caught, cache.staging_folder(folder):
        pass
    said = str(caught.value)
    assert said.startswith(f"cannot write in the cache folder {folder.parent} ("), said
    advice = {"removed": "it was removed while this ran; run again",
              "full": "free some space or set STYLEENGINE_CACHE_DIR to another folder",
              "read-only": "make it writable or set STYLEENGINE_CACHE_DIR to a writable folder"}[case]
    assert said.endswith(advice), said


def test_nothing_is_written_outside_the_outputs_and_the_cache_by_onnxruntime(tmp_path):
    """ONNX Runtime 1.29+ wrote a device id and a database under ~/.cache/Microsoft/DeveloperTools and a `.ses` file
    in $TMPDIR as it was imported, even by `run --backend torch` (probe 40b, 1): its telemetry is off unless the user
    turned it on."""
    import subprocess
    import sys

    home, temp = tmp_path / "home", tmp_path / "temp"
    home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), TMPDIR=str(temp), XDG_CACHE_HOME=str(home / ".cache"))
    subprocess.run([sys.executable, "-c", "import styleengine.engine.ort_step, onnxruntime"], env=env, check=True)
    assert not list(home.rglob("*")) and not list(temp.iterdir())


def _keyed_pictures():
    """PIL images whose transparency PIL's convert('RGBA') refuses."""
    from PIL import Image

    palette = Image.new("P", (64, 64))
    palette.info["transparency"] = 300  # an index past the palette (a 16-bit grey key kept through convert('P'))
    grey = Image.new("L", (64, 64))
    grey.info["transparency"] = "x"
    rgb = Image.new("RGB", (64, 64))
    rgb.info["transparency"] = b"ab"
    huge = Image.new("RGB", (64, 64))
    huge.info["transparency"] = 2**70  # past a C long: OverflowError (probe 41a, 5)
    return {"palette index past the palette": palette, "a grey key of another type": grey,
            "an rgb key of bytes": rgb, "a key past a C long": huge}


@pytest.mark.parametrize("case", sorted(_keyed_pictures()))
def test_a_pil_transparency_pil_cannot_apply_is_one_line(case):
    """`convert('P')` of a 16-bit keyed grey PNG keeps the key (32767) as a palette index, and a key set by hand may be
    of any type: PIL's own ValueError or TypeError came out of `styleengine.stylise` as a traceback (probe 40a, 2)."""
    from styleengine.engine import images
    from styleengine.errors import ImageError

    with pytest.raises(ImageError, match="refusing content image: it has a transparency PIL cannot apply") as caught:
        images.from_picture(_keyed_pictures()[case], "content image")
    assert "\n" not in str(caught.value)


def test_a_pil_integer_image_of_no_known_scale_is_refused_not_read_as_16_bits(tmp_path):
    """`picture.convert('I')` (or 'I;16') of an 8-bit picture holds 0-255 and was read on a 0-65535 scale: a black
    picture stylised, exit 0 (probe 40a, 3). A loaded or derived integer image with no value past 255 is refused in
    one line (a value past 255 says 16 bits); a 16-bit file, by path or as Image.open gives it, is read exactly."""
    import numpy as np
    from PIL import Image

    from styleengine.engine import images
    from styleengine.errors import ImageError

    grey = Image.fromarray((np.arange(4096).reshape(64, 64) % 256).astype(np.uint8), "L")
    for mode in ("I", "I;16"):
        with pytest.raises(ImageError, match=f"is a PIL image of mode {mode} with values 0-255 only that was "
                                             f"loaded, copied or made"):
            images.from_picture(grey.convert(mode), "content image")
    levels = (np.arange(4096).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")  # a 16-bit greyscale PNG
    want = np.repeat((levels / 65535.0)[..., None], 3, axis=2)
    loaded = Image.open(tmp_path / "g16.png")
    loaded.load()
    for given in (tmp_path / "g16.png", Image.open(tmp_path / "g16.png"), loaded, Image.fromarray(levels), levels):
        assert np.abs(images.from_picture(given, "content image") - want).max() < 1e-6


def test_a_frame_the_file_system_refuses_is_said_in_its_words(tmp_path, monkeypatch):
    """A read-only frames folder said "cannot write F: [Errno 30] Read-only file system: 'F'" (probe 40a, 4): the
    path twice and Python's errno text, where every other write says "cannot write F: Read-only file system"."""
    import numpy as np

    from styleengine import paths
    from styleengine.engine import images
    from styleengine.errors import ImageError

    def refused(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(paths, "atomic_writer", refused)
    with pytest.raises(ImageError) as caught:
        images.save_image(np.zeros((8, 8, 3), np.float32), tmp_path / "f.png")
    assert str(caught.value) == f"cannot write {tmp_path / 'f.png'}: Read-only file system"


def test_a_float_array_with_nan_is_not_told_to_divide_by_255():
    """"content image has NaN or infinite pixel values; for 0-255 values pass a uint8 array or divide by 255" (probe
    40a, 5): dividing keeps the NaN. The advice is for a range only."""
    import numpy as np

    from styleengine.engine import images
    from styleengine.errors import ImageError

    with pytest.raises(ImageError) as caught:
        images.from_picture(np.full((64, 64, 3), np.nan, np.float32), "content image")
    assert str(caught.value) == "content image has NaN or infinite pixel values"
    with pytest.raises(ImageError, match="from 0 to 255; .* for 0-255 values pass a uint8 array or divide by 255"):
        images.from_picture(np.full((64, 64, 3), 255.0, np.float32) * np.eye(64)[..., None], "content image")


@pytest.mark.parametrize("replacement", ["a folder", "a link"])
def test_a_batch_writes_nothing_into_a_folder_put_in_its_outs_place(tmp_path, monkeypatch, capsys, replacement):
    """`mv out out.moved; mkdir out` (or `ln -s elsewhere out`) after a job was recorded: the batch went on writing
    pictures and a new manifest there, with no lock in it, so a second batch on `--out out` ran every job at once,
    and a link sent them outside the folder it had checked (probe 40b, 3). It stops, its picture kept elsewhere."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"

    def replace():
        if not (tmp_path / "out.moved").exists():  # the first job's line is written
            out.rename(tmp_path / "out.moved")
            elsewhere.mkdir()
            out.symlink_to(elsewhere) if replacement == "a link" else out.mkdir()

    code, err = _three_jobs(tmp_path, monkeypatch, capsys, replace)
    line = one_error_line(code, err)
    assert "was moved, removed or replaced during the run" in line and "saved it to" in line, line
    assert list(elsewhere.iterdir()) == [] and (out.is_symlink() or list(out.iterdir()) == [])
    assert sorted(p.name for p in (tmp_path / "out.moved").iterdir()) == ["a.png", "manifest.jsonl"]


def test_the_api_says_a_missing_device_as_its_keyword():
    """`stylise(..., device='cuda:9')` said "--device cuda:9 needs an NVIDIA GPU ...; use --device cpu", the
    command's flag, where every other setting is said as its keyword (probe 40b, 4)."""
    import numpy as np
    import torch

    import styleengine
    from styleengine.errors import UnavailableError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    picture = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(UnavailableError) as caught:
        styleengine.stylise(picture, picture, size=48, iterations=2, weights="random", device="cuda:9")
    said = str(caught.value)
    assert said.startswith("device cuda:9 needs an NVIDIA GPU") and said.endswith("use device cpu"), said


def test_a_bench_json_whose_final_write_fails_says_it_holds_the_partial_document(tmp_path, monkeypatch, machine_once):
    """`bench --json full/r.json` on a disk that filled after the partial documents: "cannot write full/r.json (No
    space left on device)" while the file was there, a valid partial document (probe 40b, 5). The line says what is
    on disk."""
    import json

    from typer.testing import CliRunner

    from styleengine import paths
    from styleengine.cli import app
    from styleengine.errors import ConfigError

    real, calls = paths.atomic_write, []

    def fills(path, data):
        calls.append(path)
        if len(calls) > 1:  # the first row's partial document fits, nothing after it
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(paths, "atomic_write", fills)
    target = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["bench", "--res", "32,40", "--backends", "torch", "--iters", "1", "--warmup",
                                      "0", "--json", str(target)])
    assert isinstance(result.exception, ConfigError), result.output
    assert str(result.exception).startswith(f"cannot write {target} (No space left on device); it holds the partial "
                                            f"document (1 row, machine.partial: true)")
    held = json.loads(target.read_text())
    assert held["machine"]["partial"] is True and len(held["rows"]) == 1


@pytest.mark.parametrize("text, says", [
    ("\ncontent,styles,output\nc.png,s.png,a.png\n", "line 1: the header is blank (line 2 follows it)"),
    (" \n\ncontent,styles,output\nc.png,s.png,a.png\n", "line 1: the header is blank (line 3 follows it)"),
    ("content,styles,output,\nc.png,s.png,a.png,x\n", "line 2: cell 4 is under a column the header (line 1) does "
                                                      "not name"),
])
def test_a_csv_header_fault_is_said_at_the_header(tmp_path, monkeypatch, capsys, text, says):
    """A blank line above the header said "line 2: more cells than the header has columns" (line 2 was the header),
    and a header ending in ',' said "line 2: '' is not a per-job setting" for an empty cell (probe 40b, 7)."""
    _pictures(tmp_path)
    (tmp_path / "j.csv").write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.csv", "--out", tmp_path / "out", *FAST)
    assert says in one_error_line(code, err), err


def test_a_csv_with_a_trailing_comma_on_every_line_runs(tmp_path, monkeypatch, capsys):
    """What spreadsheets export: `content,styles,output,` and rows ending in ',' (an unnamed column, empty)."""
    _pictures(tmp_path)
    (tmp_path / "j.csv").write_text("content,styles,output,\nc.png,s.png,a.png,\n\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.csv", "--out", tmp_path / "out", *FAST)
    assert code == 0 and (tmp_path / "out" / "a.png").is_file(), err


def test_a_gpu_asked_for_on_a_machine_without_one_is_told_what_to_change():
    """`--provider cuda` and `--devices cuda:0,cuda:1` without CUDA were told "use --device cpu", which the next run
    refused ("--device cpu and --provider cuda disagree", "--devices ... disagree: drop --device"; probe 41a, 6)."""
    from styleengine.engine import capability
    from styleengine.engine.autotune import open_options
    from styleengine.engine.settings import Settings
    from styleengine.errors import UnavailableError

    cpu = capability.Machine(cuda=False, ort_providers=("cpu",), nnpack=True)
    for (backend, device, provider), advice in {
            ("ort", "auto", "cuda"): "--provider cuda needs an NVIDIA GPU, and torch sees no CUDA device here; use "
                                     "--provider cpu (or leave it at auto)",
            ("tensorrt", "auto", "auto"): "the tensorrt backend needs an NVIDIA GPU, and torch sees no CUDA device "
                                          "here; use --backend torch or ort",
            ("torch", "cuda", "auto"): "--device cuda needs an NVIDIA GPU, and torch sees no CUDA device here; use "
                                       "--device cpu"}.items():
        with pytest.raises(UnavailableError) as caught:
            capability.place(backend, device, provider, cpu)
        assert str(caught.value) == advice
    with pytest.raises(UnavailableError) as caught:
        open_options(Settings(devices=("cuda:0", "cuda:1")), cpu)
    assert str(caught.value) == ("--devices cuda:0,cuda:1 needs NVIDIA GPUs, and torch sees no CUDA device here; drop "
                                 "--devices")


def test_a_batch_signalled_after_its_out_was_replaced_says_where_its_lines_went(tmp_path, monkeypatch, capsys):
    """`mv out out.moved; mv prev out` (another batch's folder) after a job was recorded, then SIGTERM: "the same
    command resumes (out/manifest.jsonl records what is done)", naming the other folder's manifest (probe 41a, 2)."""
    import signal

    out = tmp_path / "out"

    def replace():
        if not (tmp_path / "out.moved").exists():  # the first job's line is written
            out.rename(tmp_path / "out.moved")
            (tmp_path / "prev").rename(out)
            os.kill(os.getpid(), signal.SIGTERM)  # held by the shield around the record, then raised

    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / "manifest.jsonl").write_text("{}\n")  # another batch's lines
    code, err = _three_jobs(tmp_path, monkeypatch, capsys, replace)
    assert code == 143 and "resumes" not in err, err
    assert (f"{out} was replaced during the run by another folder or a link; the lines of the 1 jobs done went with "
            f"the folder that was there") in err, err


def test_a_batch_with_the_graph_backend_asked_for_on_a_fresh_cache_runs(tmp_path, monkeypatch, capsys):
    """`batch --backend ort` (conv auto) on a fresh cache failed every job: "no candidate for auto ran here: ... not
    exported: over the trial's budget" (probe 41a, 10; video and serve alike). Where no candidate can run without an
    export, the rule's pick is exported."""
    from styleengine.engine import autotune
    from styleengine.engine.trial import exports_that_fit

    graphs = [("ort", "fp32", "winograd"), ("ort", "fp32", "direct")]
    assert exports_that_fit(graphs, set(graphs), 384 * 512) == {graphs[0]}
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    autotune._memo.clear()
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "a.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", "--size",
                           "48", "--iters", "2", "--weights", "random", "--model", "vgg16", "--backend", "ort",
                           "--device", "cpu")
    assert code == 0 and (tmp_path / "out" / "a.png").is_file(), err


@pytest.mark.parametrize("how", ["a png's exif chunk", "set by hand"])
def test_exif_that_cannot_be_read_is_a_warning_not_a_traceback(tmp_path, caplog, how):
    """A PNG whose eXIf chunk is not TIFF data, or `info['exif'] = 12345`: a SyntaxError or TypeError traceback from
    the API, and "cannot decode ... (truncated or corrupt?)" by path though the pixels are whole (probe 41a, 11).
    The picture is used as stored, with a warning, as PIL's own corrupt-EXIF warning leaves it."""
    import logging

    import numpy as np
    from PIL import Image

    from styleengine.engine import images

    pixels = np.full((48, 64, 3), 120, np.uint8)
    if how == "set by hand":
        given = [Image.fromarray(pixels)]
        given[0].info["exif"] = 12345
    else:
        Image.fromarray(pixels).save(tmp_path / "e.png", exif=b"garbage")
        given = [Image.open(tmp_path / "e.png"), tmp_path / "e.png"]
    for picture in given:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = images.from_picture(picture, "content image")
        assert np.abs(got - 120 / 255).max() < 1e-6
        assert "its EXIF data cannot be read" in caplog.text and "used as stored" in caplog.text


def test_a_folder_swapped_between_a_picture_and_its_line_loses_no_file(tmp_path, monkeypatch, capsys):
    """`mv out out.moved; mkdir out; echo mine > out/b.png` right after job b's picture was written: the refused
    line removed out/b.png by its name (the user's file) and said the batch's picture was not left, though it was,
    in out.moved (probe 41a, 12)."""
    from styleengine.engine import batch as engine

    real = engine.images.save_image
    out = tmp_path / "out"

    def save_image(image, path, *args, **kwargs):
        written = real(image, path, *args, **kwargs)
        if os.path.basename(path) == "b.png" and not (tmp_path / "out.moved").exists():
            out.rename(tmp_path / "out.moved")
            out.mkdir()
            (out / "b.png").write_text("the user's")
        return written

    monkeypatch.setattr(engine.images, "save_image", save_image)
    line = one_error_line(*three_jobs_batch(tmp_path, monkeypatch, capsys))
    assert "job b's picture is in the folder that was at" in line and "saved a copy to" in line, line
    assert (out / "b.png").read_text() == "the user's" and (tmp_path / "out.moved" / "b.png").is_file()


def test_the_dry_run_plans_a_picture_whose_exif_cannot_be_read_as_the_run_does(tmp_path, monkeypatch, capsys):
    """`--dry-run` refused it, "cannot decode content image ... (truncated or corrupt?): not a TIFF file", where the
    run uses it as stored with a warning (probe 42a, 4)."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(tmp_path / "e.png", exif=b"not tiff")
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "e.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, *dry)
        assert code == 0 and "its EXIF data cannot be read" in err and "corrupt" not in err, err


def test_a_batch_whose_lock_file_was_removed_says_so(tmp_path, monkeypatch, capsys):
    """`rm out/.batch.lock` (it looks stale) under a running batch: it stopped saying `out` was "moved, removed or
    replaced ... its lines went with the folder that was there" (false: they are in out/manifest.jsonl) and put the
    next picture in the temp folder (probe 42a, 1). It says what happened and keeps the picture in `--out`."""
    from styleengine.engine import batch as engine

    out, real = tmp_path / "out", engine.record
    code, err = _three_jobs(tmp_path, monkeypatch, capsys, lambda: (out / ".batch.lock").unlink(missing_ok=True))
    line = one_error_line(code, err)
    assert f"{out / '.batch.lock'} was removed during the run" in line and "was moved" not in line, line
    assert f"saved it to {out}" in line, line
    monkeypatch.setattr(engine, "record", real)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    assert code == 0 and "2 ok, 1 skipped" in err, err  # resumed where it stopped


def test_the_tensorrt_backend_on_the_cpu_is_told_a_fix_the_next_run_takes():
    """`--backend tensorrt --device cpu` said "drop --device cpu or use --provider cpu": --provider cpu is refused for
    tensorrt on any machine (probe 42a, 5)."""
    from styleengine.engine import capability
    from styleengine.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        capability.place("tensorrt", "cpu", "auto", None)
    assert str(caught.value).endswith("drop --device cpu or use --backend torch or ort"), caught.value
    with pytest.raises(ConfigError) as caught:
        capability.place("ort", "cpu", "cuda", None)
    assert str(caught.value).endswith("drop --device cpu or use --provider cpu"), caught.value
