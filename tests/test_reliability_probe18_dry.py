"""Issue 23, probe 18 (on 28e4d5e): the dry run and bench refuse what the run refuses: an --init or a mask the
run finds unusable from its size, a weights suffix no loader reads, a cache folder that is a file or a broken
symbolic link."""
from __future__ import annotations

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

BENCH = ["bench", "--res", "40", "--backends", "ort", "--iters", "1", "--rounds", "1", "--warmup", "0"]


def _refused_alike(tmp_path, monkeypatch, capsys, *flags: str) -> str:
    """The run's and the dry run's one error line for `run c.png s.png -o o.png FAST FLAGS`: the same, nothing
    written."""
    out = tmp_path / "o.png"
    lines = []
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out, *FAST,
                               *flags, *dry)
        lines.append(one_error_line(code, err))
        assert not out.exists()
    return lines[1]


@pytest.mark.parametrize("what", ["not_an_image", "too_small"])
def test_the_dry_run_refuses_an_init_image_the_run_refuses(tmp_path, monkeypatch, capsys, what):
    """`--init bad.png --dry-run` (a text file) and `--init t.png` (10x10 px) exited 0; the run refused both."""
    _pictures(tmp_path)
    init = tmp_path / "i.png"
    if what == "not_an_image":
        init.write_text("notimage\n")
    else:
        Image.new("RGB", (10, 10)).save(init)
    line = _refused_alike(tmp_path, monkeypatch, capsys, "--init", str(init))
    wanted = (f"init image {init} is not an image (or a format PIL cannot read)" if what == "not_an_image"
              else "is 10x10 px; both sides must be")
    assert wanted in line, line


@pytest.mark.parametrize("what", ["too_small", "other_aspect"])
def test_the_dry_run_refuses_a_mask_the_run_refuses_by_its_size(tmp_path, monkeypatch, capsys, what):
    """A 10x10 mask, or one of another aspect ratio than its image, passed the dry run; the run refused them."""
    _pictures(tmp_path)  # c.png 48x40, s.png 48x48
    Image.new("L", (48, 40), 255).save(tmp_path / "m.png")
    bad = tmp_path / "bad.png"
    Image.new("L", (10, 10) if what == "too_small" else (64, 32), 255).save(bad)
    line = _refused_alike(tmp_path, monkeypatch, capsys, "--content-mask", str(bad))
    assert ("10x10 px; both sides" if what == "too_small" else "64x32 px and the content image 48x40") in line, line
    line = _refused_alike(tmp_path, monkeypatch, capsys, "--content-mask", str(tmp_path / "m.png"), "--style-mask",
                          str(bad))
    assert ("10x10 px; both sides" if what == "too_small" else "64x32 px and style image") in line, line


def test_the_dry_run_refuses_a_weights_suffix_no_loader_reads(tmp_path, monkeypatch, capsys):
    """`--weights c.png --dry-run` exited 0; the run said "unsupported weights file" (its suffix alone)."""
    _pictures(tmp_path)
    flags = [f for f in FAST if f not in ("--weights", "random")]
    out = tmp_path / "o.png"
    lines = []
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out, *flags,
                               "--weights", tmp_path / "c.png", *dry)
        lines.append(one_error_line(code, err))
    assert lines[0] == lines[1] == (f"error: unsupported weights file {tmp_path / 'c.png'}: use .safetensors, .pth, "
                                    f".pt or .bin")


def test_bench_refuses_a_cache_folder_that_is_a_file_before_timing(tmp_path, monkeypatch, capsys):
    """bench --backends ort with STYLEENGINE_CACHE_DIR a file exited 0 with an "unavailable (... Not a
    directory ...)" row over three lines; `run --backend ort` refuses it in one line."""
    (tmp_path / "f").touch()
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "f"))
    code, out, err = run_cli(monkeypatch, capsys, *BENCH)
    line = one_error_line(code, err)
    assert f"cache folder {tmp_path / 'f'}" in line and "it is a file" in line, line
    assert "unavailable" not in out + err


@pytest.mark.parametrize("command", ["run", "dry_run", "tune", "bench"])
def test_a_cache_folder_that_is_a_broken_link_is_said_so(tmp_path, monkeypatch, capsys, command):
    """A broken symbolic link as STYLEENGINE_CACHE_DIR was "File exists" (mkdir's words) in `run --backend ort`,
    its dry run, `tune` and bench's row."""
    _pictures(tmp_path)
    (tmp_path / "bc").symlink_to("/nonexistent/c")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(tmp_path / "bc"))
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    argv = {"run": ["run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png", *FAST[:-1], "ort"],
            "tune": ["tune", "--size", "40", "--weights", "random"], "bench": BENCH}
    argv["dry_run"] = [*argv["run"], "--dry-run"]
    code, _, err = run_cli(monkeypatch, capsys, *argv[command])
    line = one_error_line(code, err)
    assert f"cache folder {tmp_path / 'bc'}" in line and "it is a broken symbolic link" in line, line
    assert "timing" not in err and not (tmp_path / "o.png").exists()
