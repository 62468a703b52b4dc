"""Issue 23, stop 38: stop 37's known limits mended, and probe 24's findings (on af79380)."""
from __future__ import annotations

import json
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

NORMALIZED = ("5e-37 divided by relu1_1's 64 channels ({}) is 7.8125e-39, past float32, where the loss is "
              "computed")


def test_a_normalized_style_layer_weight_is_said_as_given(tmp_path, monkeypatch, capsys):
    """--style-layer-weights under --normalize-weights was checked and said after the division ("1.5625e-46 is
    past float32" for 1e-44 typed; stop 37's known limit): the value given is said, then what the division made."""
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    weights = ["--normalize-weights", "--style-layer-weights", "5e-37,1,1,1,1"]
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, *weights, *dry)
        said = NORMALIZED.format("--normalize-weights")
        assert one_error_line(code, err) == f"error: --style-layer-weights {said} (0, or 1.18e-38 to 3.4e+38)"
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--normalize-weights", "--style-layer-weights", "1e-44,1,1,1,1")
    assert one_error_line(code, err).startswith("error: --style-layer-weights 1e-44 is past float32"), err
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "a.png",
                                                  "Style-Layer-Weights": [5e-37, 1, 1, 1, 1],
                                                  "normalize_weights": True}) + "\n")
    code, _, _ = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    keyed = NORMALIZED.format("normalize_weights")  # the key, the keyword
    assert code == 1 and f"Style-Layer-Weights {keyed}" in manifest_lines(tmp_path / "o")[0]["reason"]
    with pytest.raises(ConfigError, match="^" + re.escape(f"style_layer_weights {keyed}")):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=1, size=40,
                            normalize_weights=True, style_layer_weights=(5e-37, 1, 1, 1, 1))


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_a_jobs_key_is_said_as_typed_in_its_case(tmp_path, monkeypatch, capsys, kind):
    """A jobs file's key was said lower-cased ("tv-weight" for "TV-Weight"; stop 37's known limit): a bad value, a
    recipe's weight under it, a key that is no setting, each says the key as the file has it (trimmed)."""
    _pictures(tmp_path)
    rows = [{"content": "c.png", "style": "s.png", "output": "a.png", " TV-Weight ": "-1"},
            {"content": "c.png", "style": "s.png", "output": "b.png", "Style-Weight": "-2",
             "recipe": "neural-style-pt"}]
    line = 1 if kind == "jsonl" else 2  # a CSV's first row is its line 2

    def batch(rows):
        if kind == "jsonl":
            (tmp_path / "j.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        else:
            header = list(dict.fromkeys(k for row in rows for k in row))
            lines = [",".join(header)] + [",".join(str(row.get(k, "")) for k in header) for row in rows]
            (tmp_path / "j.csv").write_text("\n".join(lines) + "\n")
        return run_cli(monkeypatch, capsys, "batch", tmp_path / f"j.{kind}", "--out", tmp_path / "o", *FAST)

    code, _, err = batch(rows[:1])
    reasons = [line["reason"] for line in manifest_lines(tmp_path / "o")]
    assert code == 1 and "TV-Weight must be a finite number >= 0, got -1.0" in reasons[0], reasons
    code, _, err = batch(rows[1:])  # a recipe's units are checked as the file is read
    assert f"line {line}: Style-Weight must be a finite number >= 0 (in neural-style-pt's" in one_error_line(code,
                                                                                                          err)
    code, _, err = batch([{**rows[0], " TV-Weight ": "1", "Colour": "yes"}])
    assert f"line {line}: 'Colour' is not a per-job setting" in one_error_line(code, err), err


def test_a_message_about_two_settings_names_each_as_it_was_given(tmp_path, monkeypatch, capsys):
    """A fault of two settings at once named both by their flags whichever way they came in (stop 37's known
    limit): the API says keywords, a jobs file its keys as typed (a batch's own flag stays a flag), serve its form
    fields (the server's own flags stay flags), the CLI flags."""
    import dataclasses

    from PIL import Image

    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    whole = "needs each layer's whole gradient, which the tiled step"
    with pytest.raises(ConfigError, match=re.escape(f"normalize_gradients {whole} (tile, mem_budget_gib) never")):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=1, size=40,
                            normalize_gradients=True, tile=32)
    with pytest.raises(ConfigError, match=re.escape("give one layer a weight > 0, or set style_weight 0")):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=1, size=40,
                            style_layer_weights=(0, 0, 0, 0, 0))
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, "--normalize-gradients", "--tile", "32")
    assert one_error_line(code, err) == f"error: --normalize-gradients {whole} (--tile, --mem-budget) never holds; " \
                                        f"drop one of them"
    rows = [{"content": "c.png", "style": "s.png", "output": "a.png", "Tile": 32, "Normalize-Gradients": True},
            {"content": "c.png", "style": "s.png", "output": "b.png", "Tile": 32}]
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, _, _ = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                         "--normalize-gradients")
    reasons = [line["reason"] for line in manifest_lines(tmp_path / "o")]
    assert code == 1 and f"line 1: Normalize-Gradients {whole} (Tile, --mem-budget) never" in reasons[0], reasons
    assert f"line 2: --normalize-gradients {whole} (Tile, --mem-budget) never" in reasons[1], reasons

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    Image.new("L", (40, 32), 255).save(tmp_path / "m.png")
    settings = dataclasses.replace(SETTINGS, content_masks=(str(tmp_path / "m.png"),) * 2).resolved()
    with TestClient(create_app(Config(settings=settings, root=tmp_path / "srv"))) as client:
        response = client.post("/api/jobs", files=files(png(32, 40), png(40, 40, 1), png(40, 40, 2)),
                               data={"style_blend": "1,2"})
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("style_blend does not apply with --content-mask: "), response.text


def test_said_as_renames_a_flag_only_where_it_stands_alone():
    """A flag inside a longer flag, a path or a word is no mention of the setting; a file's error names none."""
    from styleengine.engine.settings import said_as
    from styleengine.errors import ConfigError, ImageError, SettingError

    error = ConfigError("--tile 32 with --tile-x, ./--tile, /a/--tile.png, x--tile and (--tile)")
    assert str(said_as(error, {"tile": "Tile"})) == "Tile 32 with --tile-x, ./--tile, /a/--tile.png, x--tile and (Tile)"
    assert said_as(error, {"size": "size"}) is error
    image = ImageError("content image --tile.png was not found")
    assert said_as(image, {"tile": "tile"}) is image
    named = said_as(SettingError("tv_weight", "tv weight", "must be >= 0"), {"tv_weight": "TV"})
    assert str(named) == "TV must be >= 0"


def test_a_finished_job_is_skipped_however_out_is_spelled(tmp_path, monkeypatch, capsys):
    """Keyed by its output as written, a finished job ran again when --out was spelled another way (`o`, then
    `/abs/o/`, `./o`, a link to it, or `.` from inside): stop 37's skip rule (own finding, stop 38). A line is
    keyed by its output's place in --out; one written before lines said it, by its output from here."""
    import os

    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "sub/a.png"}) + "\n")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to("o")

    def batch(out, jobs="j.jsonl"):
        return run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *FAST)[0]

    assert batch("o") == 0
    for out in (f"{tmp_path}/o/", "./o", "link"):
        assert batch(out) == 0
    monkeypatch.chdir(tmp_path / "o")
    assert batch(".", "../j.jsonl") == 0
    lines = manifest_lines(tmp_path / "o")
    assert [line["status"] for line in lines] == ["ok"] + ["skipped"] * 4, lines
    assert {line["file"] for line in lines} == {os.path.join("sub", "a.png")}
    monkeypatch.chdir(tmp_path)  # a line without its place (written before lines had one): its output from here
    old = {key: value for key, value in lines[0].items() if key != "file"}
    (tmp_path / "o" / "manifest.jsonl").write_text(json.dumps(old) + "\n")
    assert batch("o") == 0 and manifest_lines(tmp_path / "o")[-1]["status"] == "skipped"


def _two_jobs_one_output(folder) -> None:
    """x.jsonl and y.jsonl: jobs X and Y, other pictures, both to a.png."""
    from PIL import Image

    _pictures(folder)
    Image.new("RGB", (48, 40), (30, 200, 30)).save(folder / "c2.png")
    for job_id, content in (("X", "c.png"), ("Y", "c2.png")):
        (folder / f"{job_id.lower()}.jsonl").write_text(json.dumps({"id": job_id, "content": content, "style": "s.png",
                                                                    "output": "a.png"}) + "\n")


def test_a_job_is_not_skipped_over_another_jobs_picture_however_out_is_spelled(tmp_path, monkeypatch, capsys):
    """X wrote a.png with --out o, then Y with --out /abs/o: X was skipped over Y's picture (probe 24a: the writer
    rule keyed outputs as written). Each is one place now, and the file is checked against the line's picture."""

    _two_jobs_one_output(tmp_path)
    monkeypatch.chdir(tmp_path)

    def batch(jobs, out):
        return run_cli(monkeypatch, capsys, "batch", jobs, "--out", out, *FAST)[0]

    assert batch("x.jsonl", "o") == 0
    mine = (tmp_path / "o" / "a.png").read_bytes()
    assert batch("y.jsonl", f"{tmp_path}/o") == 0
    assert batch("x.jsonl", "o") == 0
    assert manifest_lines(tmp_path / "o")[-1]["status"] == "ok" and (tmp_path / "o" / "a.png").read_bytes() == mine


def test_a_picture_written_without_its_line_is_no_other_jobs_finished_picture(tmp_path, monkeypatch, capsys):
    """The manifest refused X's line after X's picture replaced Y's: the error did not say so, and Y was then
    skipped over X's picture (probe 24a). The error says it; the file is checked against Y's line, and Y runs."""

    from styleengine.engine import manifest as manifest_module
    from styleengine.errors import UserError

    _two_jobs_one_output(tmp_path)
    argv = ["--out", tmp_path / "o", *FAST]
    assert run_cli(monkeypatch, capsys, "batch", tmp_path / "y.jsonl", *argv)[0] == 0
    ys = (tmp_path / "o" / "a.png").read_bytes()

    def refused(self, entry):
        raise UserError(f"cannot write the manifest {self.path}: No space left on device")

    for old in (False, True):  # Y's line as this version writes it, and as one from before lines said the hash
        if old:
            line = {k: v for k, v in manifest_lines(tmp_path / "o")[-1].items() if k not in ("file", "output_sha256")}
            (tmp_path / "o" / "manifest.jsonl").write_text(json.dumps(line) + "\n")
        with monkeypatch.context() as patch:
            patch.setattr(manifest_module.Manifest, "append", refused)
            code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "x.jsonl", *argv)
        said = one_error_line(code, err)
        assert said.startswith(f"error: cannot write the manifest {tmp_path / 'o' / 'manifest.jsonl'}: No space left "
                               f"on device; job X's picture is not left in {tmp_path / 'o' / 'a.png'} with no line for "
                               f"it: saved it to {tmp_path / 'o'}/a-rescued-"), said
        assert not (tmp_path / "o" / "a.png").exists() and list((tmp_path / "o").glob("a-rescued-*.png"))
        assert run_cli(monkeypatch, capsys, "batch", tmp_path / "y.jsonl", *argv)[0] == 0
        lines = manifest_lines(tmp_path / "o")
        assert [line["status"] for line in lines][-1] == "ok", lines  # Y ran again, not skipped
        assert (tmp_path / "o" / "a.png").read_bytes() == ys


def test_serve_says_its_own_setting_as_its_flag_not_as_a_field_the_request_never_sent(tmp_path):
    """`serve --style-blend 1,1` and a one-style request: "style_blend has 2 weights for 1 style images", a field
    the request never sent (probe 24a). The server's own setting is its flag; a field the request sent is said as
    that field."""
    import dataclasses

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    settings = dataclasses.replace(SETTINGS, style_blend=(1.0, 1.0)).resolved()
    with TestClient(create_app(Config(settings=settings, root=tmp_path / "srv"))) as client:
        response = client.post("/api/jobs", files=files(png(32, 40), png(40, 40, 1)))
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == "the server's --style-blend has 2 weights for 1 style images"
        response = client.post("/api/jobs", files=files(png(32, 40), png(40, 40, 1)), data={"style_blend": "1,2,3"})
        assert response.json()["detail"] == "style_blend has 3 weights for 1 style images", response.text


def test_the_apis_texture_under_a_recipe_starts_where_the_recipe_says(tmp_path, monkeypatch, capsys):
    """stylise(None, style, recipe="neural-style-pt") started from noise where `texture --recipe` starts from the
    recipe's randn (probe 24a: the API's texture default counted as a value given). The two pictures are one."""
    import numpy as np
    from PIL import Image

    from styleengine.api import stylise

    _pictures(tmp_path)
    common = ["--size", "40", "--iters", "2", "--weights", "random", "--backend", "torch", "--recipe",
              "neural-style-pt"]
    code, _, err = run_cli(monkeypatch, capsys, "texture", tmp_path / "s.png", "-o", tmp_path / "t.png", *common)
    assert code == 0, err
    picture = stylise(None, tmp_path / "s.png", recipe="neural-style-pt", size=40, iterations=2, weights="random",
                      backend="torch")
    assert np.array_equal(np.asarray(picture), np.asarray(Image.open(tmp_path / "t.png")))
    noise = stylise(None, tmp_path / "s.png", size=40, iterations=2, weights="random", backend="torch")
    code, _, _ = run_cli(monkeypatch, capsys, "texture", tmp_path / "s.png", "-o", tmp_path / "n.png",
                         *common[:-2])  # no recipe: both from noise
    assert np.array_equal(np.asarray(noise), np.asarray(Image.open(tmp_path / "n.png")))


def _halves(folder):
    """left.png and right.png (48x40, white on one half), the content's aspect; a black one; a wide one."""
    import numpy as np
    from PIL import Image

    left = np.zeros((40, 48), np.uint8)
    left[:, :24] = 255
    Image.fromarray(left).save(folder / "left.png")
    Image.fromarray(255 - left).save(folder / "right.png")
    Image.new("L", (48, 40), 0).save(folder / "black.png")
    Image.new("L", (128, 40), 255).save(folder / "wide.png")


def test_overlapping_content_masks_are_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """Overlapping content masks were caught only once a batch's jobs or a server's request ran (every one
    failed, --out made), and the dry run passed them and a black mask (probe 24a). They are a batch's and a
    server's start check, and the dry run reads the masks as the run does, so both say the same first fault."""
    import subprocess
    import sys

    _pictures(tmp_path)
    _halves(tmp_path)
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "styles": ["s.png", "s.png"]}) + "\n")
    overlap = "the content masks sum to 2.00 at pixel ("
    masks = ["--content-mask", f"{tmp_path / 'left.png'},{tmp_path / 'left.png'}"]
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST, *masks)
    assert one_error_line(code, err).startswith(f"error: {overlap}") and not (tmp_path / "o").exists()
    proc = subprocess.run([sys.executable, "-m", "styleengine", "serve", "--port", "1", "--results-dir",
                           str(tmp_path / "srv"), "--weights", "random", *masks],
                          capture_output=True, text=True, timeout=120)
    assert one_error_line(proc.returncode, proc.stderr).startswith(f"error: {overlap}")
    assert not (tmp_path / "srv").exists()
    pictures = [tmp_path / "c.png", tmp_path / "s.png", tmp_path / "s.png", tmp_path / "s.png"]
    for given, said in ((masks, overlap), (["--content-mask", f"{tmp_path / 'black.png'},{tmp_path / 'right.png'}"],
                                           f"content mask 1 {tmp_path / 'black.png'} is black everywhere")):
        for dry in (["--dry-run"], []):
            code, _, err = run_cli(monkeypatch, capsys, "run", *pictures[:3], "-o", tmp_path / "r.png", *FAST,
                                   *given, *dry)
            assert one_error_line(code, err).startswith(f"error: {said}"), (dry, err)
    both = ["--content-mask", ",".join(str(tmp_path / n) for n in ("left.png", "right.png", "left.png")),
            "--style-mask", ",".join(str(tmp_path / n) for n in ("left.png", "left.png", "wide.png"))]
    said = set()
    for dry in (["--dry-run"], []):  # an overlap and style mask 3's aspect: the run's first, said by both
        code, _, err = run_cli(monkeypatch, capsys, "run", *pictures, "-o", tmp_path / "r.png", *FAST, *both, *dry)
        said.add(one_error_line(code, err))
    assert len(said) == 1 and said.pop().startswith("error: the content masks sum to 2.00"), said
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("flag, value, key, problem", [
    ("--scales", "0", "scales", "must be >= 1, got 0"),
    ("--start-size", "10", "start_size", "must be between 32 and the size 40 px, got 10"),
    ("--pixel-range", "-1", "pixel_range", "must be a finite number > 0, got -1.0"),
    ("--std", "0,1,1", "std", "must be > 0, got 0,1,1"),
    ("--mean", "1,2", "mean", "needs three finite numbers, one per channel, got 1,2"),
    ("--channel-order", "XYZ", "channel_order", "must be RGB or BGR, got 'XYZ'")])
def test_a_schedule_or_convention_fault_is_said_by_the_name_given(tmp_path, monkeypatch, capsys, flag, value, key,
                                                                   problem):
    """--scales 0, --start-size 10, --pixel-range -1, --std 0,1,1 ... were said in the engine's words ("scales",
    "start size", "input pixel range") whichever way they came in (probe 24a): by the flag, the key, the keyword."""
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    extra = ["--scales", "2"] if flag == "--start-size" else []
    for dry in ([], ["--dry-run"]):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, flag, value, *extra, *dry)
        assert one_error_line(code, err) == f"error: {flag} {problem}", err
    typed = key.replace("_", "-").title()  # the input convention is the batch's, not a job's
    job = {"content": "c.png", "style": "s.png", "output": "a.png", typed: value.split(",") if "," in value else value}
    if extra:
        job["scales"] = 2
    (tmp_path / "j.jsonl").write_text(json.dumps(job) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    lines = manifest_lines(tmp_path / "o") if (tmp_path / "o" / "manifest.jsonl").exists() else []
    said = lines[0]["reason"] if lines else one_error_line(code, err)
    if key in ("scales", "start_size"):
        assert said.endswith(f"line 1: {typed} {problem}"), (said, err)
    else:
        assert f"line 1: {typed!r} is not a per-job setting" in said, (said, err)
    kwargs = {key: value.split(",") if "," in value else value, **({"scales": 2} if extra else {})}
    with pytest.raises(ConfigError, match="^" + re.escape(f"{key} {problem}")):
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=1, size=40,
                            **kwargs)


def test_a_count_no_folder_job_can_fit_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """`batch --contents DIR --styles DIR --style-blend 1,1` (or two content masks) can fit no job, each has one
    style image: --out was made and every job failed (probe 24a). One line first, nothing made."""
    _pictures(tmp_path)
    _halves(tmp_path)
    for folder, name in (("cs", "c.png"), ("ss", "s.png")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes((tmp_path / name).read_bytes())
    folders = ["--contents", tmp_path / "cs", "--styles", tmp_path / "ss", "--out", tmp_path / "o", *FAST]
    why = "(each job of --contents with --styles has one style image)"
    code, _, err = run_cli(monkeypatch, capsys, "batch", *folders, "--style-blend", "1,1")
    assert one_error_line(code, err) == f"error: --style-blend has 2 weights for 1 style images {why}"
    code, _, err = run_cli(monkeypatch, capsys, "batch", *folders, "--content-mask",
                           f"{tmp_path / 'left.png'},{tmp_path / 'right.png'}")
    assert one_error_line(code, err) == f"error: 2 --content-mask files for 1 style images: one mask per style " \
                                        f"image, in order {why}"
    assert not (tmp_path / "o").exists()


def test_a_setting_that_leaves_the_plan_as_it_was_runs_nothing_again(tmp_path, monkeypatch, capsys):
    """`--scales 1` or `--mem-budget 4` where auto plans the same made another hash: a finished job ran again, to
    the same bytes (probe 24a). What only decides the plan is hashed as the plan; another plan still runs again."""
    _pictures(tmp_path)
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "a.png"}) + "\n")

    def batch(*flags):
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST,
                               *flags)
        assert code == 0, err
        return manifest_lines(tmp_path / "o")[-1]["status"]

    assert batch() == "ok"
    assert [batch("--scales", "1"), batch("--mem-budget", "4"), batch("--iters-per-scale", "1")] == ["skipped"] * 3
    assert [batch("--tile", "512"), batch("--tile", "48")] == ["skipped"] * 2  # one tile: the picture (probe 25a)
    assert batch("--tile", "16") == "ok"  # tiles
    assert batch("--scales", "2", "--size", "64") == "ok"


def test_the_engines_stylise_says_a_settings_fault_by_its_field(tmp_path):
    """README's engine-level example, `stylise(c, [s], Settings(lr=0.0, ...))`, said "learning rate", "memory
    budget", "L-BFGS history" (probe 24a): its caller set a Settings field, and that is the name said."""
    import numpy as np

    from styleengine.engine.stylise import Settings, stylise
    from styleengine.errors import SettingError

    picture = np.full((40, 48, 3), 0.5, np.float32)
    for given, said in ((dict(optimizer="adam", lr=0.0), "lr must be a finite number > 0, got 0.0"),
                        (dict(mem_budget_gib=-1.0), "mem_budget_gib must be a finite number of GiB > 0, got -1.0"),
                        (dict(lbfgs_history=0), "lbfgs_history must be >= 1, got 0")):
        with pytest.raises(SettingError) as caught:
            stylise(picture, [picture], Settings(size=40, iterations=1, weights="random", **given))
        assert str(caught.value) == said


def test_what_ray_tells_the_driver_is_a_warning_and_nothing_once_the_pool_closes(capsys, caplog):
    """Ray's driver printed the errors it was told of raw on stdout, in colour ("(raylet) Task _Worker.run failed.
    There are 2 retries remaining, so the task will be retried"), and after a signal below the command's last line,
    of the actors it had just killed (probe 24b). They are warnings while the work runs, and nothing once it stops."""
    pytest.importorskip("ray")
    import logging

    from styleengine.engine import batch_ray

    batch_ray.import_ray()
    from ray._private import worker

    message = {"lines": ["Task _Worker.run failed. There are 2 retries remaining"], "pid": "raylet", "is_err": False}
    batch_ray._CLOSING.clear()
    with caplog.at_level(logging.WARNING, logger="styleengine.engine.batch_ray"):
        worker.print_to_stdstream(message, ignore_prefix=False)
        batch_ray._CLOSING.set()
        worker.print_to_stdstream(message, ignore_prefix=False)
    assert [r.getMessage() for r in caplog.records] == ["Ray: Task _Worker.run failed. There are 2 retries remaining"]
    assert capsys.readouterr().out == ""
    batch_ray._CLOSING.clear()


def test_a_start_check_refuses_no_masks_a_run_takes(tmp_path, monkeypatch, capsys):
    """A batch's and a server's start summed the content masks at their own size and refused a stray pixel that
    the run's resize to its content smooths away (probe 25a: "sum to 1.02 at pixel (40, 40)", while run wrote its
    picture); and it named a black style mask before the overlap the run says first. (Stop 39: the run checks
    masks as given too, whatever its size, so both refuse that pixel, in one line.)"""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    _halves(tmp_path)
    left = np.zeros((256, 256), np.uint8)
    left[:, :128] = 255
    right = 255 - left
    right[40, 40] = 6
    Image.fromarray(left).save(tmp_path / "pa.png")
    Image.fromarray(right).save(tmp_path / "pb.png")
    Image.new("RGB", (48, 48), (200, 30, 30)).save(tmp_path / "sq.png")  # the masks' aspect
    masks = ["--content-mask", f"{tmp_path / 'pa.png'},{tmp_path / 'pb.png'}"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "sq.png", tmp_path / "s.png", tmp_path / "s.png",
                           "-o", tmp_path / "r.png", *FAST, *masks)
    said = one_error_line(code, err)
    assert said.startswith("error: the content masks sum to 1.02 at pixel (40, 40)"), said
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "sq.png", "styles": ["s.png", "s.png"]}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST, *masks)
    assert one_error_line(code, err) == said
    both = ["--content-mask", f"{tmp_path / 'left.png'},{tmp_path / 'left.png'}",
            "--style-mask", f"{tmp_path / 'left.png'},{tmp_path / 'black.png'}"]
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o2", *FAST, *both)
    assert one_error_line(code, err).startswith("error: the content masks sum to 2.00"), err


@pytest.mark.parametrize("init", ["content", "image"])
def test_a_texture_from_the_content_is_said_by_the_name_given(tmp_path, monkeypatch, capsys, init):
    """The API's texture with init='image' (or 'content') said "--init content: ..." (probe 25a): its keyword, and
    the word typed, whichever of neural-style's two it was."""
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    said = "content (or image): a texture has no content image"
    with pytest.raises(ConfigError, match=re.escape(f"init {said}")) as caught:
        styleengine.stylise(None, tmp_path / "s.png", size=40, iterations=1, weights="random", init=init)
    assert not str(caught.value).startswith("--")
    code, _, err = run_cli(monkeypatch, capsys, "texture", tmp_path / "s.png", "-o", tmp_path / "t.png", *FAST,
                           "--init", init)
    assert one_error_line(code, err).startswith(f"error: --init {said}")


@pytest.mark.parametrize("flag, value, key, typed, said", [
    ("--mem-budget", "0.000001", "mem_budget_gib", "Mem_Budget", "{} 1e-06 GiB is too small for a 40x33 image"),
    ("--style-scale", "1e9", "style_scale", "Style_Scale", "--size x {} must be at most 65536 px, got 40 x 1e+09")])
def test_a_memory_budget_or_style_scale_fault_is_said_by_the_name_given(tmp_path, monkeypatch, capsys, flag, value,
                                                                        key, typed, said):
    """"a memory budget of 1e-06 GiB is too small", "size x style scale must be at most ..." whichever way they
    came in (probe 25a): the flag, the key as typed, the keyword (the batch's own --size stays a flag)."""
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / "o.png", *FAST, flag, value)
    assert one_error_line(code, err).startswith("error: " + said.format(flag)), err
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "style": "s.png", "output": "a.png",
                                                  typed: float(value)}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST)
    assert "line 1: " + said.format(typed) in manifest_lines(tmp_path / "o")[0]["reason"], err
    with pytest.raises(ConfigError) as caught:
        styleengine.stylise(tmp_path / "c.png", tmp_path / "s.png", weights="random", iterations=1, size=40,
                            **{key: float(value)})
    assert str(caught.value).startswith(said.format(key).replace("--size", "size")), caught.value


def test_a_server_with_a_relative_folder_never_shows_it_to_clients(tmp_path, monkeypatch):
    """`serve --results-dir srv` said "cannot write srv/results/ID.png: ..." to clients, and after a restart with
    its folder spelled another way the earlier spelling stayed (probe 26)."""
    pytest.importorskip("fastapi")
    from pathlib import Path

    from styleengine.serve.jobs import JobStore

    monkeypatch.chdir(tmp_path)
    store = JobStore(Path("srv"))
    try:
        for said in ("cannot write srv/results/1a.png: [Errno 28] No space left on device",
                     f"cannot write {tmp_path}/srv/results/1a.png: [Errno 28] No space left on device",
                     "cannot write ../x/srv/uploads/1a/content: [Errno 28] No space left on device"):
            shown = store.for_clients(said)
            assert "srv" not in shown and shown.startswith("cannot write <server folder>/"), shown
        assert store.for_clients("mysrv/results/a.png, the srv") == "mysrv/results/a.png, the srv"
    finally:
        store.close()


def test_a_start_check_takes_bordering_masks_and_keeps_the_runs_order(tmp_path, monkeypatch, capsys):
    """The start's coarse overlap check refused two bordering masks (a half and a band beside it: the resize's
    ringing) that every run takes, and a missing style mask was said before the overlap the run says first (probe
    26). Overlap is refused where the masks overlap at their own size and at the coarsest."""
    import numpy as np
    from PIL import Image

    _pictures(tmp_path)
    _halves(tmp_path)
    band = np.zeros((40, 48), np.uint8)
    band[:, 24:26] = 255
    Image.fromarray(band).save(tmp_path / "band.png")
    (tmp_path / "j.jsonl").write_text(json.dumps({"content": "c.png", "styles": ["s.png", "s.png"]}) + "\n")
    masks = ["--content-mask", f"{tmp_path / 'left.png'},{tmp_path / 'band.png'}"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", tmp_path / "s.png",
                           "-o", tmp_path / "r.png", *FAST, *masks)
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "o", *FAST, *masks)
    assert code == 0, err
    both = ["--content-mask", f"{tmp_path / 'left.png'},{tmp_path / 'left.png'}",
            "--style-mask", f"{tmp_path / 'missing.png'},{tmp_path / 'left.png'}"]
    said = set()
    for command in (["run", tmp_path / "c.png", tmp_path / "s.png", tmp_path / "s.png", "-o", tmp_path / "r2.png"],
                    ["batch", tmp_path / "j.jsonl", "--out", tmp_path / "o2"]):
        code, _, err = run_cli(monkeypatch, capsys, *command, *FAST, *both)
        said.add(one_error_line(code, err).split(";")[0])
    assert said == {"error: the content masks sum to 2.00 at pixel (0, 0)"}, said
