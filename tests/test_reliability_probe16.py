"""Issue 23, probe 16 (on dc9f497): the neighbours of probe 15's fixes, and what the last stop left out and could
mend cheaply. The defects are tests here (the video ones are in test_video.py, beside their fixtures)."""
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


# ------------------------------------------------------------------ 16a: inputs, settings, non-finite

def _no_weights(monkeypatch) -> None:
    """Loading weights fails the test: what is refused must be refused before it."""
    from styleengine.model import weights

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded before the refusal")

    monkeypatch.setattr(weights, "load_weights", never)


@pytest.mark.parametrize("value", ["$NOPE_P16/x", " /tmp/padded "])
def test_a_cache_folder_variable_that_names_no_folder_is_one_line_before_the_weights(tmp_path, monkeypatch, capsys,
                                                                                    value):
    """With tuning on, STYLEENGINE_CACHE_DIR='$NOPE/x' was refused after the weights had loaded, and failed every
    batch job on it; ' /tmp/c ' made './ /tmp/c /tune.json' in the working folder."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NOPE_P16", raising=False)
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", value)
    _no_weights(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "run", "c.png", "s.png", "-o", "o.png", *FAST)
    assert "STYLEENGINE_CACHE_DIR" in one_error_line(code, err)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"]}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", "j.jsonl", "--out", "b", *FAST)
    assert "STYLEENGINE_CACHE_DIR" in one_error_line(code, err) and not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "j.jsonl", "s.png"]


@pytest.mark.parametrize("lr", ["1e39", "1e-46"])
def test_a_learning_rate_past_float32_is_one_line(tmp_path, monkeypatch, capsys, lr):
    """--lr 1e39 was a traceback from the optimiser (every command; a batch stopped part-way), --lr 1e-46 was 0 in
    float32 and wrote the content unstyled, exit 0."""
    _pictures(tmp_path)
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out, *FAST,
                           "--lr", lr)
    assert "--lr must be from" in one_error_line(code, err) and not out.exists()


def test_a_jobs_files_learning_rate_past_float32_fails_its_job_alone(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "lr": 1e39, "output": "a.png"}\n'
                                      '{"content": "c.png", "styles": ["s.png"], "output": "b.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST)
    assert code == 1 and "Traceback" not in err and "line 1: lr must be from" in err, err
    assert (tmp_path / "b" / "b.png").is_file() and not (tmp_path / "b" / "a.png").exists()


@pytest.mark.parametrize("weight, says", [("1e-40", "--feature-weight 1e-40 is past float32"),
                                          ("3.3e38", "--feature-weight 3.3e+38 over conv1_2's feature energy")])
def test_invert_names_the_feature_weight_it_refuses(tmp_path, monkeypatch, capsys, weight, says):
    """It said "content weight 7.56e+38 is past float32", a name and a value the user never gave."""
    Image.new("RGB", (40, 40), (90, 140, 60)).save(tmp_path / "p.png")
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "p.png", "--layer", "conv1_2", "-o",
                           tmp_path / "o.png", "--size", "32", "--iters", "2", "--weights", "random", "--model",
                           "vgg16", "--backend", "torch", "--feature-weight", weight)
    line = one_error_line(code, err)
    assert says in line and "content weight" not in line, line


@pytest.mark.parametrize("dry", [False, True])
def test_a_trace_that_is_a_broken_link_is_refused_before_work(tmp_path, monkeypatch, capsys, dry):
    """The check looked at the link's folder; the trace then followed the link: "trace stopped at iteration 1",
    exit 0, no trace."""
    _pictures(tmp_path)
    (tmp_path / "t.jsonl").symlink_to(tmp_path / "nowhere" / "x.jsonl")
    out = tmp_path / "o.png"
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", out, *FAST,
                           "--trace", tmp_path / "t.jsonl", *(["--dry-run"] if dry else []))
    assert "is a broken symbolic link" in one_error_line(code, err) and not out.exists()


def test_a_dry_run_says_a_weights_name_too_long_in_one_line(tmp_path, monkeypatch, capsys):
    """dry_plan's is_file() raised "OSError: File name too long" (a traceback)."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", "--weights", "a" * 260 + ".pth", "--dry-run")
    assert "weights file" in one_error_line(code, err)


@pytest.mark.parametrize("where", ["--weights", "style", "--init", "--init dry", "jobs init", "api"])
def test_a_files_name_ending_as_a_folder_is_refused_everywhere(tmp_path, monkeypatch, capsys, where):
    """`c.png/` named the file c.png for --weights, a style, a mask, a jobs file's fields and the API (Path drops
    the "/"), and --init's dry run took it where the run refused it; the content argument alone was refused."""
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    w = tmp_path / "w.pth"
    w.write_bytes(b"not read")
    base = ["c.png", "s.png", "-o", "o.png", *FAST]
    if where == "api":
        from styleengine import api

        with pytest.raises(Exception, match="ends as a folder's name"):
            api.stylise("c.png/", ["s.png"], weights="random", iterations=1, size=40)
        return
    args = {"--weights": ["run", *base, "--weights", f"{w}/"],
            "style": ["run", "c.png", "s.png/", "-o", "o.png", *FAST],
            "--init": ["run", *base, "--init", "c.png/"],
            "--init dry": ["run", *base, "--init", "c.png/", "--dry-run"],
            "jobs init": ["batch", "j.jsonl", "--out", "b", *FAST]}[where]
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "init": "c.png/"}\n')
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert "ends as a folder's name" in one_error_line(code, err)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "b").exists()


def test_a_line_break_in_a_name_is_said_not_cut(tmp_path, monkeypatch, capsys):
    """'a\\nb.png' was said as "image not found: a" (the one-line rule cut the message at the name's break)."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "a\nb.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST)
    assert "a\\nb.png" in one_error_line(code, err)


@pytest.mark.parametrize("name", ["invert", "visualize"])
def test_a_signal_in_set_up_is_said_as_nothing_written(tmp_path, monkeypatch, capsys, name):
    """invert and visualize said only "error: interrupted (SIGTERM)" for a signal in set-up (run says what it
    did: nothing written); -o stays the user's."""
    import os
    import signal

    from styleengine.model import weights

    real = weights.load_weights

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(weights, "load_weights", signalled)
    monkeypatch.setattr("styleengine.engine.stylise.load_weights", signalled)  # imported by name there
    args = _command(name, tmp_path)
    (tmp_path / "o.png").write_bytes(b"the user's")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 143 and "before the first iteration; nothing written" in err, err
    assert (tmp_path / "o.png").read_bytes() == b"the user's"


def _bench_or_tune(name: str, folder) -> list:
    return {"bench": ["bench", "--res", "32", "--backends", "torch", "--iters", "1", "--rounds", "1", "--warmup",
                      "0", "--json", folder / "b.json"],
            "tune": ["tune", "--size", "32", "--weights", "random", "--model", "vgg16", "--device", "cpu"]}[name]


@pytest.mark.parametrize("name, last", [("bench", "wrote "), ("tune", "kept in ")])
def test_bench_and_tune_let_a_signal_after_their_last_line_be(tmp_path, monkeypatch, capsys, name, last):
    """probe 17: bench exited 143 for a SIGTERM after "wrote b.json" (9 of 15), tune after "kept in ..." (11 of
    12), with "error: interrupted (SIGTERM)" under the line."""
    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    _signal_after_the_line(monkeypatch, last)
    code, _, err = run_cli(monkeypatch, capsys, *_bench_or_tune(name, tmp_path))
    assert code == 0 and "interrupted" not in err, err


@pytest.mark.parametrize("name", ["bench", "tune"])
def test_bench_and_tune_say_a_signal_before_their_last_line(tmp_path, monkeypatch, capsys, name):
    """One that came after their work, as they print it, is said under their last lines, the work whole."""
    import os
    import signal

    from rich.table import Table

    real = Table.add_row

    def add_row_then_signal(self, *cells, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *cells, **kwargs)

    monkeypatch.setenv("STYLEENGINE_TUNE", "on")
    monkeypatch.setattr(Table, "add_row", add_row_then_signal)

    from styleengine.engine import autotune

    real_choose, real_path, state = autotune.choose, autotune.record_path, {"chosen": False, "sent": False}

    def choose(*args, **kwargs):
        value = real_choose(*args, **kwargs)
        state["chosen"] = True
        return value

    def record_path_then_signal():  # tune's first call after the measuring (at 32 px it may print no table)
        if state["chosen"] and not state["sent"]:
            state["sent"] = True
            os.kill(os.getpid(), signal.SIGTERM)
        return real_path()

    monkeypatch.setattr(autotune, "choose", choose)
    monkeypatch.setattr(autotune, "record_path", record_path_then_signal)
    code, _, err = run_cli(monkeypatch, capsys, *_bench_or_tune(name, tmp_path))
    assert code == 143 and "as the command ended" in err.rstrip().splitlines()[-1], err
    if name == "bench":
        assert "wrote " in err and (tmp_path / "b.json").stat().st_size > 0


# ------------------------------------------------------------------ 17a: the neighbours of 16a's fixes

def test_the_api_refuses_a_weights_file_named_as_a_folder(tmp_path):
    """weights='w.safetensors/' read the file (the command line refused it)."""
    from styleengine import api

    _pictures(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"not read")
    with pytest.raises(Exception, match="ends as a folder's name"):
        api.stylise(tmp_path / "c.png", [tmp_path / "s.png"], weights=f"{tmp_path / 'w.pth'}/", iterations=1,
                    size=40)


def test_export_reads_the_cache_variable_before_its_weights(tmp_path, monkeypatch, capsys):
    """export read (or downloaded) its weights first, and said their error, not the variable's."""
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", " /tmp/padded ")
    _no_weights(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", tmp_path / "g", "--weights", tmp_path / "w.pth")
    assert "STYLEENGINE_CACHE_DIR" in one_error_line(code, err)


def test_a_folder_of_pictures_with_a_control_character_in_a_name_is_one_line(tmp_path, monkeypatch, capsys):
    """--contents/--styles made job ids of such names: progress lines cut by a newline, an escape printed raw."""
    _pictures(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.png").write_bytes((tmp_path / "c.png").read_bytes())
    (tmp_path / "in" / "e\x1b]0;x\x07.png").write_bytes((tmp_path / "c.png").read_bytes())
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", tmp_path / "in", "--styles", tmp_path / "in",
                           "--out", tmp_path / "b", *FAST)
    line = one_error_line(code, err)
    assert "control character" in line and "\x1b" not in err and not (tmp_path / "b").exists(), line


def test_invert_names_the_tv_weight_as_given(tmp_path, monkeypatch, capsys):
    """--tv-weight 1.2e-38 was "tv weight 1.2e-43 is past float32" (divided by TV_UNIT first)."""
    Image.new("RGB", (40, 40), (90, 140, 60)).save(tmp_path / "p.png")
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "p.png", "-o", tmp_path / "o.png", "--size",
                           "32", "--iters", "2", "--weights", "random", "--model", "vgg16", "--tv-weight", "1.2e-38")
    line = one_error_line(code, err)
    assert "--tv-weight 1.2e-38" in line and "e-43" not in line, line


def test_a_pixel_range_refusal_says_which_numbers_are_assumed(tmp_path, monkeypatch, capsys):
    """It named torchvision's mean and std as if given, for weights that run with others (stop 39: it says the
    random weights' own, which they run with)."""
    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--pixel-range", "1e-37")
    assert "--pixel-range 1e-37 with the random weights' mean 0.5,0.5,0.5" in one_error_line(code, err)


@pytest.mark.parametrize("name", ["x\x1b[31my.png", "x\u2028y.png", "x\ty.png"])
def test_a_name_with_any_unprintable_character_is_said_escaped(tmp_path, monkeypatch, capsys, name):
    """Only \\n and \\r were escaped: an escape sequence reached the terminal, U+2028 broke the line."""
    from styleengine import api
    from styleengine.errors import ImageError

    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / name, tmp_path / "s.png", "-o", tmp_path / "o.png",
                           *FAST)
    line = one_error_line(code, err)
    assert repr(name)[1:-1] in line and name not in err, line
    with pytest.raises(ImageError) as caught:  # the API's message is one line too
        api.stylise(tmp_path / name, [tmp_path / "s.png"], weights="random", iterations=1, size=40)
    assert str(caught.value).isprintable()


def test_a_batch_interrupted_as_its_last_job_is_recorded_says_none_is_left(tmp_path, monkeypatch, capsys):
    """It said "with 0 of 2 jobs left; the same command resumes": there is nothing to resume."""
    import os
    import signal

    from styleengine.engine import batch as engine

    real, calls = engine.record, []

    def record(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # held by the shield around the record, then raised
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["s.png"], "output": "a.png"}\n'
                                      '{"content": "c.png", "styles": ["s.png"], "output": "b.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "b", *FAST)
    assert code == 143 and "with 0 of 2 jobs left; every job is recorded" in err and "resumes" not in err, err
