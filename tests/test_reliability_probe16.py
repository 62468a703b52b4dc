"""Issue 23, probe 16 (on dc9f497): the neighbours of probe 15's fixes, and what the last stop left out and could
mend cheaply. The defects are tests here (the video ones are in test_video.py, beside their fixtures)."""
from __future__ import annotations

import pytest
from PIL import Image

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line

FAST = ["--weights", "random", "--size", "40", "--iters", "1", "--backend", "torch"]


def _pictures(folder) -> None:
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / "c.png")
    Image.new("RGB", (48, 48), (20, 30, 230)).save(folder / "s.png")


# ------------------------------------------------------------------ a weights file named like a word

@pytest.mark.parametrize("dry", [False, True])
def test_a_weights_file_named_like_a_word_says_what_was_typed(tmp_path, monkeypatch, capsys, dry):
    """`--weights ./random` said "weights file random was not found" (Path drops the "./"), and the dry run said
    it in other words ("weights file not found (or not a file)")."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "-o", out, *FAST[2:], "--weights",
                           "./random", *(["--dry-run"] if dry else []))
    line = one_error_line(code, err)
    assert "weights file ./random was not found" in line and "'random'" in line, line
    assert not out.exists()


def test_the_api_says_the_weights_file_as_given(tmp_path):
    from styleengine import api
    from styleengine.errors import WeightsError

    _pictures(tmp_path)
    with pytest.raises(WeightsError, match=r"weights file \./imagenet was not found \(the imagenet weights"):
        api.stylise(tmp_path / "c.png", [tmp_path / "s.png"], weights="./imagenet", iterations=1, size=40)


@pytest.mark.parametrize("dry", [False, True])
def test_a_missing_init_is_said_alike_by_the_run_and_the_dry_run(tmp_path, monkeypatch, capsys, dry):
    """The run said "--init nois.png: no such image file (the named starts ...)", the dry run "init image nois.png
    was not found": one line now, with the starts."""
    _pictures(tmp_path)
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out, *FAST,
                           "--init", tmp_path / "nois.png", *(["--dry-run"] if dry else []))
    line = one_error_line(code, err)
    assert "init image" in line and "nois.png was not found (the named starts: noise, content" in line, line


def test_tune_says_a_missing_weights_file_before_it_times(tmp_path, monkeypatch, capsys):
    """`tune --weights missing.pth` printed "timing the candidates ..." and only then refused."""
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    code, _, err = run_cli(monkeypatch, capsys, "tune", "--weights", tmp_path / "missing.pth", "--size", "40")
    line = one_error_line(code, err)
    assert "missing.pth was not found" in line and "timing" not in err, err


# ------------------------------------------------------------------ 16b: signals at a command's end

def _signal_after_the_line(monkeypatch, starts: str) -> None:
    """A SIGTERM as soon as the console has printed a line starting with `starts`."""
    import os
    import signal

    from rich.console import Console

    real = Console.print

    def print_then_signal(self, *objects, **kwargs):
        real(self, *objects, **kwargs)
        if objects and str(objects[0]).startswith(starts):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Console, "print", print_then_signal)


def _command(name: str, folder) -> list:
    _pictures(folder)
    Image.new("RGB", (40, 40), (90, 140, 60)).save(folder / "p.png")
    o = folder / "o.png"
    return {"run": ["run", folder / "c.png", folder / "s.png", "-o", o, *FAST],
            "texture": ["texture", folder / "s.png", "-o", o, *FAST],
            "invert": ["invert", folder / "p.png", "--layer", "conv1_2", "-o", o, "--size", "32", "--iters", "2",
                       "--weights", "random", "--model", "vgg16", "--backend", "torch"],
            "visualize": ["visualize", "--class", "3", "-o", o, "--size", "32", "--iters", "2", "--weights",
                          "random"],
            "export": ["export", "-o", folder / "graphs", "--weights", "random", "--model", "vgg16",
                       "--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1"]}[name]


@pytest.mark.parametrize("name", ["run", "texture", "invert", "visualize", "export"])
def test_a_signal_after_the_last_line_changes_nothing(tmp_path, monkeypatch, capsys, name):
    """A SIGTERM just after "wrote ..." exited 143 and said "error: interrupted (SIGTERM)" under it (run 4 of
    17, visualize 8 of 9, invert 5 of 6 in probe 16's timed trials): the command had returned its work."""
    _signal_after_the_line(monkeypatch, "wrote ")
    code, _, err = run_cli(monkeypatch, capsys, *_command(name, tmp_path))
    assert code == 0 and "interrupted" not in err, err
    assert "arrived" not in err[err.rindex("wrote "):], err  # the last line is "wrote ...": nothing under it


@pytest.mark.parametrize("name", ["run", "invert", "visualize"])
def test_a_signal_before_the_last_line_is_said_with_where_the_picture_went(tmp_path, monkeypatch, capsys, name):
    """One held through the write is said in one line that names the picture: visualize said only
    "interrupted (SIGTERM) after 6 iterations", invert said it under its "wrote" line."""
    from styleengine.engine import images

    real = images.save_image

    def save(image, path):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)  # held until the file is whole
        real(image, path)

    monkeypatch.setattr(images, "save_image", save)
    code, _, err = run_cli(monkeypatch, capsys, *_command(name, tmp_path))
    last = err.rstrip().splitlines()[-1]
    assert code == 143 and "interrupted" in last and f"wrote {tmp_path / 'o.png'}" in last, err
    assert Image.open(tmp_path / "o.png").size[0] > 0


@pytest.mark.parametrize("where", ["the loop's end", "the scale's end"])
def test_a_signal_as_the_first_scale_returns_keeps_its_picture(tmp_path, monkeypatch, capsys, where):
    """Coarse to fine: a SIGTERM as scale 1's loop returned threw away its iterations and said "before the
    first iteration; nothing written" (3 of 21 timed trials); the first scale's picture is written now."""
    import os
    import signal

    from styleengine.engine import loop, stylise

    # the loop's end: as the loop makes its results (its Result); the scale's end: as the loop has returned them
    module, name = (loop, "Result") if where == "the loop's end" else (stylise, "optimise_at_size")
    real, calls = getattr(module, name), []

    def signalled(*args, **kwargs):
        value = real(*args, **kwargs)
        if not calls:
            os.kill(os.getpid(), signal.SIGTERM)
        calls.append(1)
        return value

    monkeypatch.setattr(module, name, signalled)
    _pictures(tmp_path)
    out = tmp_path / "o.png"
    out.write_bytes(b"the user's")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out,
                           "--weights", "random", "--backend", "torch", "--size", "64", "--iters", "4", "--scales",
                           "2", "--iters-per-scale", "2")
    assert code == 143 and "nothing written" not in err and "earlier scale's image" in err, err
    assert max(Image.open(out).size) < 64
