"""Issue 23, stop 42: probe 35's findings (on e476fb8)."""
from __future__ import annotations

import errno
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures


def _png(path, depth: int, colour: int, rows: list[bytes], key: bytes) -> None:
    """A PNG PIL cannot write (2- or 4-bit greyscale, 16-bit RGB) with a tRNS key, unfiltered rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = len(rows), {0: 8 // depth, 2: 1}[colour] * len(rows[0]) // (1 if colour == 0 else 6 * depth // 16)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    body = zlib.compress(b"".join(b"\0" + row for row in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", key) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [2, 4])
def test_a_low_bit_greyscale_pngs_transparent_key_is_transparent(tmp_path, depth):
    """PIL stretches 2- and 4-bit grey levels to 0-255 but leaves the tRNS key as the file holds it: a mask's
    transparent half read as its grey (two such masks were refused as an overlap; probe 35a, 5). The key is
    stretched as the pixels are."""
    from styleengine.engine import images

    top, keyed = (1 << depth) - 1, (1 << depth) // 2 - 1  # white, and a mid grey that is the key
    per_byte = 8 // depth
    pack = lambda level: sum(level << (8 - depth * (i + 1)) for i in range(per_byte))  # noqa: E731
    row = bytes([pack(top)] * (32 // per_byte) + [pack(keyed)] * (32 // per_byte))
    _png(tmp_path / "k.png", depth, 0, [row] * 40, struct.pack(">H", keyed))
    for backdrop in (0.0, 1.0):  # a mask's, a picture's
        read = images.load_image(tmp_path / "k.png", backdrop=backdrop)
        assert np.array_equal(read[:, :32], np.ones((40, 32, 3), np.float32)), backdrop
        assert np.array_equal(read[:, 32:], np.full((40, 32, 3), backdrop, np.float32)), backdrop
    lazy = images.from_picture(Image.open(tmp_path / "k.png"), "content")  # the API's PIL image, not decoded yet
    assert np.array_equal(lazy[:, 32:], np.ones((40, 32, 3), np.float32))


def test_a_16_bit_rgb_pngs_transparent_key_is_refused_not_guessed(tmp_path, monkeypatch, capsys):
    """PIL keeps a 16-bit RGB PNG's high bytes only, so its 16-bit key matched no pixel or the wrong ones (a mask's
    key read as grey; a pixel (0, 0, 200) of key (0, 0, 0) as transparent; probe 35a, 5). Refused in one line."""
    from styleengine.engine import images
    from styleengine.errors import ImageError

    row = struct.pack(">96H", *([65535] * 48 + [30000] * 48))
    _png(tmp_path / "k.png", 16, 2, [row] * 40, struct.pack(">3H", 30000, 30000, 30000))
    with pytest.raises(ImageError, match="16-bit RGB PNG with a transparent colour"):
        images.load_image(tmp_path / "k.png")
    with pytest.raises(ImageError, match="16-bit RGB PNG with a transparent colour"):
        images.from_picture(Image.open(tmp_path / "k.png"), "content")
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "k.png", tmp_path / "s.png", *FAST, "-o",
                           tmp_path / "o.png")
    assert "save it with an alpha channel" in one_error_line(code, err)


@pytest.mark.parametrize("when", ["at the open", "at the rename"])
def test_an_atomic_write_is_said_of_its_file_not_its_temp_file(tmp_path, when):
    """`invert -o d/o.png --distances d/dist.json`, d removed mid-run, said "... not written either: [Errno 2] No
    such file or directory: 'd/.dist.json.69989e9e.tmp'" (probe 35a, 7): a name the user never gave. An atomic
    write's fault names the file asked for."""
    from styleengine import paths

    folder = tmp_path / "d"
    folder.mkdir()
    target = folder / "dist.json"
    with pytest.raises(FileNotFoundError) as caught:
        if when == "at the open":
            shutil.rmtree(folder)
            paths.atomic_write(target, b"{}")
        else:
            with paths.atomic_writer(target) as f:
                f.write(b"{}")
                shutil.rmtree(folder)
    assert caught.value.filename == os.fspath(target) and caught.value.errno == errno.ENOENT


def test_a_snapshot_that_is_an_input_is_called_a_snapshot(tmp_path, monkeypatch, capsys):
    """`run o_2.png sty -o o.png --save-every 2` said "output .../o_2.png is the content image": the clash is a
    snapshot's (probe 35a, 8)."""
    _pictures(tmp_path)
    shutil.copy(tmp_path / "c.png", tmp_path / "o_2.png")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "o_2.png", tmp_path / "s.png", *FAST, "--iters", "4",
                           "--save-every", "2", "-o", tmp_path / "o.png")
    assert one_error_line(code, err).startswith("error: --save-every snapshot ") and "is the content image" in err
    assert not (tmp_path / "o.png").exists()


def test_a_batch_signalled_after_its_out_was_moved_says_where_its_lines_went(tmp_path, monkeypatch, capsys):
    """`mv out out2` after a job was recorded, then SIGTERM: "nothing was recorded yet; the same command starts
    again", where out2/manifest.jsonl held the job's line (probe 35b, 4)."""
    import signal

    from styleengine.engine import batch as engine

    real, calls = engine.record, []

    def record(*args, **kwargs):
        written = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the first job's line is written: its folder goes, then a signal
            (tmp_path / "out").rename(tmp_path / "out2")
            os.kill(os.getpid(), signal.SIGTERM)  # held by the shield around the record, then raised
        return written

    monkeypatch.setattr(engine, "record", record)
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "a.png"}\n'
                                      '{"content": "c.png", "styles": ["s.png"], "output": "b.png"}\n'
                                      '{"content": "c.png", "styles": ["s.png"], "output": "c.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST,
                           "--batch-size", "1")
    assert code == 143 and "nothing was recorded" not in err, err
    assert "is not there any more (moved or removed during the run)" in err, err
    assert (tmp_path / "out2" / "manifest.jsonl").read_text().count('"status": "ok"') >= 1


def test_a_batch_out_named_through_a_link_and_dotdot_is_where_the_file_system_goes(tmp_path, monkeypatch, capsys):
    """`--out LQ/..` (LQ a link to Q/sub) refused every output as outside --out, "through a symbolic link to
    ./c__s.png": '..' was folded by its spelling, where the file system goes up from Q/sub (probe 35b, 5)."""
    _pictures(tmp_path)
    (tmp_path / "Q" / "sub").mkdir(parents=True)
    (tmp_path / "LQ").symlink_to(tmp_path / "Q" / "sub")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "x.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", f"{tmp_path}/LQ/..", *FAST)
    assert code == 0, err
    assert (tmp_path / "Q" / "x.png").is_file() and not (tmp_path / "x.png").exists()


def test_a_trace_cut_short_by_a_full_disk_ends_on_a_whole_line(tmp_path):
    """A trace stopped by a full disk kept its torn last line (`{"iteratio`), where a manifest's is cut (probe 35b,
    7): every line left parses."""
    import json

    from styleengine.cli_job import TraceWriter

    trace = TraceWriter(tmp_path / "t.jsonl")
    for i in range(3):
        trace.write_object({"iteration": i, "loss": 1.5}, f"iteration {i}")
    real = trace.file

    class Full:
        def write(self, text):
            real.write(text[:7])  # what fits, then the disk is full
            real.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            real.flush()

        def close(self):
            real.close()

    trace.file = Full()
    trace.write_object({"iteration": 3, "loss": 1.5}, "iteration 3")
    assert trace.failure and "stopped at iteration 3" in trace.failure
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 2]


def test_the_api_says_a_cache_folder_that_is_a_file_as_the_command_does(tmp_path, monkeypatch):
    """STYLEENGINE_CACHE_DIR naming a file: the API said "cannot write in the cache folder .../exports (Not a
    directory); free some space ..." after its set-up; the command says "it is a file" before any work (probe
    35b, 8)."""
    from styleengine import api
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "c.png"))
    with pytest.raises(ConfigError, match="it is a file"):
        api.stylise(tmp_path / "c.png", tmp_path / "s.png", size=40, iterations=1, weights="random",
                    backend="ort", model="vgg16")


def test_a_loaded_pil_png_with_a_transparent_key_is_refused_not_guessed(tmp_path):
    """A PIL image loaded (or copied, cropped: probe 39) before it was passed keeps no bit depth: a 2-bit key read as
    an 8-bit level (the keyed half grey, exit 0), a 16-bit RGB key of small values taken (probe 36a, 1). Refused in
    one line; the path and the image Image.open gives are read exactly."""
    from styleengine.engine import images
    from styleengine.errors import ImageError

    row = bytes([0x55] * 8 + [0xFF] * 8)  # 2-bit: level 1 (the key) left, white right
    _png(tmp_path / "g2.png", 2, 0, [row] * 40, struct.pack(">H", 1))
    row16 = struct.pack(">96H", *([0] * 48 + [65535] * 48))
    _png(tmp_path / "k16.png", 16, 2, [row16] * 40, struct.pack(">3H", 0, 0, 0))
    assert np.array_equal(images.from_picture(Image.open(tmp_path / "g2.png"), "content")[:, :32],
                          np.ones((40, 32, 3), np.float32))
    for name in ("g2.png", "k16.png"):
        loaded = Image.open(tmp_path / name)
        loaded.load()
        # and what PIL derives from it, keeping the key (probe 39: a copy, a crop or a resize was read as 8 bits)
        for picture in (loaded, Image.open(tmp_path / name).copy(), Image.open(tmp_path / name).crop((0, 0, 40, 40))):
            with pytest.raises(ImageError, match="loaded, copied or changed before it was passed"):
                images.from_picture(picture, "content")
    plain = Image.new("L", (40, 40), 3)  # not a file's: what its key means is the caller's to say
    plain.info["transparency"] = 3
    with pytest.raises(ImageError, match="convert"):
        images.from_picture(plain, "content")
    assert images.from_picture(plain.convert("RGBA"), "content").min() == 1.0


@pytest.mark.parametrize("key", [30000, 0])
def test_the_dry_run_refuses_a_16_bit_rgb_pngs_key_as_the_run_does(tmp_path, monkeypatch, capsys, key):
    """`--dry-run` passed a 16-bit RGB PNG with a tRNS key (exit 0, a plan) that the run refuses (probe 36a, 5): its
    header says so; a key of small values (black) too, read before getexif decodes the PNG (probe 38, 1)."""
    _pictures(tmp_path)
    row = struct.pack(">96H", *([65535] * 48 + [key] * 48))
    _png(tmp_path / "k.png", 16, 2, [row] * 40, struct.pack(">3H", key, key, key))
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "k.png", tmp_path / "s.png", *FAST, "-o",
                           tmp_path / "o.png", "--dry-run")
    assert "16-bit RGB PNG with a transparent colour" in one_error_line(code, err)


def test_a_batch_leaves_a_folder_the_user_made_where_its_out_was(tmp_path, monkeypatch, capsys):
    """`mv out moved; mkdir out`, then SIGTERM: the batch removed the user's new empty `out/` as the folder it had
    made (probe 36a, 4). It removes only the folder it made."""
    import signal

    from styleengine.engine import batch as engine

    real = engine.record

    def record(*args, **kwargs):
        written = real(*args, **kwargs)
        if not (tmp_path / "moved").exists():
            (tmp_path / "out").rename(tmp_path / "moved")
            (tmp_path / "out").mkdir()
            os.kill(os.getpid(), signal.SIGTERM)  # held by the shield around the record, then raised
        return written

    monkeypatch.setattr(engine, "record", record)
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "a.png"}\n'
                                      '{"content": "c.png", "styles": ["s.png"], "output": "b.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST,
                           "--batch-size", "1")
    assert code == 143 and (tmp_path / "out").is_dir(), err


def test_a_tuning_record_under_a_cache_that_is_a_file_says_so(tmp_path, monkeypatch, caplog):
    """STYLEENGINE_CACHE_DIR naming a file or a broken link: "could not keep the tuning record in ...: File
    exists", after "unreadable ([Errno 20] Not a directory ...)" (probe 36a, nit). It says what is in the way."""
    import logging

    from styleengine.engine import autotune

    _pictures(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    for cache, said in (("c.png", "is a file"), ("dangling", "is a broken symbolic link")):
        monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / cache))
        monkeypatch.setattr(autotune, "_SAID", set())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=autotune.log.name):
            assert said in autotune._update(lambda data: None)
        assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()] == []


def test_a_folder_lock_on_a_full_disk_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """The lock's holder name, refused by a full disk, stayed in the file's buffer and failed again at the lock's
    release: a traceback after the batch's line, and a signal's 143 lost to exit 1 (probe 38, 2). It is written
    unbuffered, or not at all."""
    from styleengine import paths
    from styleengine.engine import manifest

    real = paths.open_lock

    class Full:  # a lock file on a full disk: what is written waits in a buffer that no flush empties
        def __init__(self, f):
            self.f, self.kept = f, b""

        def fileno(self):
            return self.f.fileno()

        def write(self, data):
            self.kept += data
            return len(data)

        def flush(self):
            if self.kept:
                raise OSError(errno.ENOSPC, "No space left on device")

        def truncate(self, size=None):
            return self.f.truncate(size)

        def seek(self, *args):
            return self.f.seek(*args)

        def close(self):
            self.f.close()
            self.flush()

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.close()

    monkeypatch.setattr(paths, "open_lock", lambda path: Full(real(path)))
    (tmp_path / "out").mkdir()
    with manifest.locked(tmp_path / "out"):
        pass
    assert not (tmp_path / "out" / manifest.LOCK_FILE).exists()


def test_an_out_below_a_broken_link_says_the_link(tmp_path, monkeypatch, capsys):
    """`--out dl/new` (dl a broken link) said "cannot make the output folder dl/new: File exists" (probe 38, 3)."""
    _pictures(tmp_path)
    (tmp_path / "dl").symlink_to(tmp_path / "nothing" / "x")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "a.png"}\n')
    for out in ("dl/new", "dl/../new"):
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", f"{tmp_path}/{out}", *FAST)
        assert "dl is a broken symbolic link" in one_error_line(code, err), out
