"""`styleengine batch`: jobs files, the manifest, skipping, resuming, warm steps (CPU, tiny images, random weights)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine.engine import batch as engine
from styleengine.engine.stylise import Settings

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
except ModuleNotFoundError:
    from tests.test_cli import run_cli

FAST = ["--weights", "random", "--model", "vgg16", "--size", "40", "--iters", "3", "--device", "cpu"]


def picture(path: Path, shape: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two contents, two styles, an unreadable 'image' and a jobs file of 6 jobs (one with the bad image)."""
    picture(tmp_path / "c1.png", (40, 48), 1)
    picture(tmp_path / "c2.png", (48, 40), 2)
    picture(tmp_path / "s1.png", (44, 44), 3)
    picture(tmp_path / "s2.png", (44, 52), 4)
    (tmp_path / "bad.png").write_text("not an image")
    jobs = [
        {"id": "one", "content": "c1.png", "styles": ["s1.png"]},
        {"id": "two", "content": "c1.png", "styles": ["s1.png", "s2.png"], "blend": [0.7, 0.3]},
        {"id": "three", "content": "c2.png", "style": "s2.png", "style_weight": 1e3},
        {"id": "four", "content": "c2.png", "style": "s1.png", "output": "sub/four.jpg", "iters": 2},
        {"id": "bad", "content": "bad.png", "style": "s1.png"},
        {"id": "six", "content": "c1.png", "style": "s2.png", "init": "noise"},
    ]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return tmp_path


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / engine.MANIFEST).read_text().splitlines()]


def by_id(lines: list[dict]) -> dict[str, dict]:
    return {line["id"]: line for line in lines}


class Counting:
    """Wraps batch.stylise_batch: which job ids each call ran; `interrupt_at` (1-based call number) stops
    that call's loop after its first read, as Ctrl-C would."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        self.real, self.ids, self.interrupt_at = engine.stylise_batch, [], interrupt_at
        monkeypatch.setattr(engine, "stylise_batch", self)

    def __call__(self, pictures, **kwargs):
        self.ids.append(None)
        if len(self.ids) == self.interrupt_at:
            def stop(record, current):
                raise KeyboardInterrupt
            kwargs["callback"] = stop
        return self.real(pictures, **kwargs)


def test_jobs_file_manifest_and_skip(folder, monkeypatch, capsys):
    out = folder / "out"
    # an earlier run made job "one" with the same settings: the batch skips it and leaves its file alone
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST,
                           "--batch-size", "1")
    assert code == 1, err  # one job failed
    assert "auto: torch fp32 " in err  # what auto became, once for the batch
    lines = by_id(manifest(out))
    assert set(lines) == {"one", "two", "three", "four", "bad", "six"}
    assert lines["bad"]["status"] == "failed" and "bad.png" in lines["bad"]["reason"]
    assert "\n" not in lines["bad"]["reason"]
    for job_id in ("one", "two", "three", "four", "six"):
        line = lines[job_id]
        assert line["status"] == "ok" and line["reason"] is None, line
        assert Path(line["output"]).is_file()
        assert set(line["losses"]) == {"loss", "content", "style", "tv"} and line["device"] == "cpu"
        distances = line["distances"]  # the final image's (engine/quality.py), per picture
        assert 0 < distances["style"] < 10 and 0 <= distances["content"] < 10
        per_layer = distances["style_layers"]
        assert per_layer and abs(sum(per_layer.values()) / len(per_layer) - distances["style"]) < 1e-9
    assert lines["four"]["iterations"] == 2 and lines["one"]["iterations"] == 3
    assert (out / "sub" / "four.jpg").is_file()
    assert len({line["settings_hash"] for line in lines.values() if line["settings_hash"]}) == 6  # one per job
    first = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.png")}

    counting = Counting(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST,
                           "--batch-size", "1")
    assert code == 1, err
    again = manifest(out)[6:]
    assert {line["id"]: line["status"] for line in again} == {
        "one": "skipped", "two": "skipped", "three": "skipped", "four": "skipped", "six": "skipped",
        "bad": "failed"}
    assert counting.ids == []  # nothing optimised again
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*.png")} == first
    assert not [p for p in out.rglob(".*.tmp")]

    # a changed setting changes the hash: the jobs run again
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST,
                           "--batch-size", "1", "--tv-weight", "1")
    assert {line["status"] for line in manifest(out)[12:] if line["id"] != "bad"} == {"ok"}


def test_resume_after_interrupt(folder, monkeypatch, capsys):
    out = folder / "out"
    counting = Counting(monkeypatch, interrupt_at=3)
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST,
                           "--batch-size", "1")
    assert code == 130, err
    assert "resumes" in err
    first = manifest(out)
    done = [line["id"] for line in first if line["status"] == "ok"]
    assert done == ["one", "two"]  # the third call was interrupted: not recorded, no file
    assert not (out / "three.png").exists() and not list(out.rglob(".*.tmp"))

    counting.ids.clear()
    counting.interrupt_at = None
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", out, *FAST,
                           "--batch-size", "1")
    assert code == 1, err
    second = manifest(out)[len(first):]
    assert {line["id"]: line["status"] for line in second} == {
        "one": "skipped", "two": "skipped", "three": "ok", "four": "ok", "six": "ok", "bad": "failed"}
    assert len(counting.ids) == 3  # three, four, six: nothing that finished ran twice
    ok = [line["id"] for line in manifest(out) if line["status"] == "ok"]
    assert sorted(ok) == sorted(set(ok))  # each job written once


def test_pairs_and_csv(folder, monkeypatch, capsys):
    contents, styles = folder / "contents", folder / "styles"
    contents.mkdir(), styles.mkdir()
    for name in ("c1.png", "c2.png"):
        (contents / name).write_bytes((folder / name).read_bytes())
    (styles / "s1.png").write_bytes((folder / "s1.png").read_bytes())
    out = folder / "pairs"
    code, _, err = run_cli(monkeypatch, capsys, "batch", "--contents", contents, "--styles", styles, "--out", out,
                           *FAST)
    assert code == 0, err
    assert {line["id"] for line in manifest(out)} == {"c1__s1", "c2__s1"}
    assert (out / "c1__s1.png").is_file()

    (folder / "jobs.csv").write_text("content,styles,blend,output,size,content_weight\n"
                                     "c1.png,s1.png;s2.png,1;3,a.png,48,2\n"
                                     "c2.png,s2.png,,b.png,,\n")
    jobs = engine.load_jobs(folder / "jobs.csv", folder / "o")
    assert jobs[0].overrides == (("content_weight", 2.0), ("size", 48), ("style_blend", (1.0, 3.0)))
    assert jobs[1].overrides == () and jobs[1].styles == (folder / "s2.png",)
    assert jobs[0].settings(Settings()).size == 48


@pytest.mark.parametrize("text, message", [
    ('{"content": "c1.png"}\n', "needs a content image and at least one style"),
    ('{"content": "c1.png", "style": "s1.png", "backend": "ort"}\n', "not a per-job setting"),
    ('{"content": "c1.png", "style": "s1.png", "size": "big"}\n', "bad size"),
    ('{"content": "c1.png", "style": "s1.png"}\n{"content": "c1.png", "style": "s1.png"}\n', "two jobs"),
    ('not json\n', "not JSON"),
])
def test_bad_jobs_file(folder, monkeypatch, capsys, text, message):
    (folder / "jobs.jsonl").write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", folder / "out", *FAST)
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (folder / "out" / engine.MANIFEST).exists()


def test_warm_builds_each_step_once(folder):
    base = Settings(weights="random", model="vgg16", size=40, iterations=2, device="cpu")
    jobs = engine.load_jobs(folder / "jobs.jsonl", folder / "out")
    planned = engine.plan([j for j in jobs if j.id != "bad"], base, None)
    with engine.Warm() as warm:
        results = list(engine.run_jobs(planned, warm, batch_size=1))
    assert [r.status for r in results] == ["ok"] * 5
    assert warm.steps_built == 1  # five jobs, three loss weightings, one network


def test_warm_keeps_a_step_per_convolution_algorithm():
    """Jobs that differ only in --conv get their own steps (the key once left conv out: the second job ran
    the first one's convolutions)."""
    base = Settings(weights="random", model="vgg16", size=40, iterations=1, device="cpu")
    with engine.Warm() as warm:
        steps = [warm.step(dataclasses.replace(base, conv=conv).resolved()) for conv in ("direct", "auto", "direct")]
    assert steps[0] is steps[2] and steps[0] is not steps[1] and warm.steps_built == 2
    assert steps[0].conv == "direct"


# ------------------------------------------------------------------ batched == one by one

def test_batched_lbfgs_rows_are_independent_runs():
    """Each row of a batched DeviceLBFGS follows the iterates of a run on that row alone (float64), including
    a row whose curvature pairs are rejected (a flat direction: y.s = 0) while the others' are accepted."""
    from styleengine.engine.lbfgs import DeviceLBFGS

    gen = torch.Generator().manual_seed(0)
    n, rows = 12, 3
    scales = torch.rand(rows, n, generator=gen, dtype=torch.float64) * torch.tensor([[1.0], [10.0], [0.0]],
                                                                                     dtype=torch.float64)
    scales[2, 0] = 0.0  # row 2: linear (no curvature): every pair is rejected
    targets = torch.randn(rows, n, generator=gen, dtype=torch.float64)

    def grad(x, b):  # a separable quadratic per row (plus a linear term for row 2)
        return scales[b] * (x - targets[b]) + (0.1 if b == 2 else 0.0)

    x_batch = torch.zeros(rows, n, dtype=torch.float64)
    batched = DeviceLBFGS(x_batch, 4)
    alone = [(torch.zeros(n, dtype=torch.float64), None) for _ in range(rows)]
    alone = [(x, DeviceLBFGS(x, 4)) for x, _ in alone]
    for _ in range(8):
        g = torch.stack([grad(x_batch[b], b) for b in range(rows)])
        batched.step(x_batch, g)
        for b, (x, opt) in enumerate(alone):
            opt.step(x, grad(x, b))
    for b, (x, opt) in enumerate(alone):
        torch.testing.assert_close(x_batch[b], x, rtol=1e-10, atol=1e-12)
    assert int((batched.ro[2] != 0).sum()) == 0 and int((batched.ro[0] != 0).sum()) > 0


# two scales: 6 iterations at 40 px, then 1 at 56 from each picture's own result (measured: 7e-4 apart, the
# first scale's 2e-4 upsampled; three more L-BFGS steps on random weights' tiny losses amplify it to 1e-2)
@pytest.mark.parametrize("schedule, atol", [({}, 1e-3), ({"size": 56, "scales": 2, "start_size": 40,
                                                           "iters_per_scale": 6, "iterations": 1}, 2e-3)],
                         ids=["one-scale", "two"])
def test_batch_equals_one_by_one(folder, vgg16_random, schedule, atol):
    """Three pictures of one shape (different contents, styles, blends) optimised as one batch give the images
    and losses each gives alone, within fp32 tolerance; coarse to fine, the batch moves scale by scale."""
    from styleengine.engine import images
    from styleengine.engine.stylise import Picture, build_step, stylise, stylise_batch

    base = Settings(**{"weights": "random", "model": "vgg16", "size": 40, "iterations": 6, "device": "cpu", "seed": 0,
                       **schedule})
    load = images.load_image
    pictures = [
        Picture(load(folder / "c1.png"), [load(folder / "s1.png")], base),
        Picture(load(folder / "c1.png"), [load(folder / "s1.png"), load(folder / "s2.png")],
                dataclasses.replace(base, style_blend=(0.2, 0.8))),
        Picture(load(folder / "c2.png").transpose(1, 0, 2).copy(), [load(folder / "s2.png")],
                dataclasses.replace(base, preserve_colors=True)),
    ]
    # content inits: from noise (with random weights) the run is chaotic in fp32, a 1e-7 change of the
    # init moved the image by 4e-3 after 6 iterations, so no two fp32 runs of it agree to 1e-4
    step = build_step(base.resolved(), vgg16_random, base.loss_config())
    together = stylise_batch(pictures, weights=vgg16_random, step=step)
    for picture, (image, result) in zip(pictures, together):
        alone_image, alone = stylise(picture.content, picture.styles, picture.settings, weights=vgg16_random,
                                     step=step)
        assert result.iterations == alone.iterations == sum(n for _, n in base.scale_plan())
        assert result.stopped is None and image.shape[:2] == alone_image.shape[:2]
        np.testing.assert_allclose(image, alone_image, atol=atol)  # measured: 2e-4 (conv rounding, B=3 vs 1)
        for a, b in zip(result.records, alone.records):
            assert a.loss == pytest.approx(b.loss, rel=1e-4)
    # the three really differ (a batch that mixed them up would not pass the comparisons above)
    assert not np.allclose(together[0][0], together[1][0], atol=1e-3)


def test_cli_batched_equals_unbatched(folder, monkeypatch, capsys):
    jobs = [{"id": f"j{i}", "content": "c1.png", "styles": styles, "output": f"j{i}.png"}
            for i, styles in enumerate([["s1.png"], ["s2.png"], ["s1.png", "s2.png"]])]
    (folder / "same.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    counting = Counting(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "same.jsonl", "--out", folder / "b", *FAST)
    assert code == 0, err
    assert len(counting.ids) == 1  # one batch of three
    assert {line["batch"] for line in manifest(folder / "b")} == {3}
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "same.jsonl", "--out", folder / "u", *FAST,
                           "--batch-size", "1")
    assert code == 0, err
    assert len(counting.ids) == 4
    batched, alone = by_id(manifest(folder / "b")), by_id(manifest(folder / "u"))
    for job in jobs:
        assert batched[job["id"]]["settings_hash"] == alone[job["id"]]["settings_hash"]
        assert batched[job["id"]]["losses"]["loss"] == pytest.approx(alone[job["id"]]["losses"]["loss"], rel=1e-4)
        a = np.asarray(Image.open(folder / "b" / f"{job['id']}.png"), dtype=np.int16)
        b = np.asarray(Image.open(folder / "u" / f"{job['id']}.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of images equal within fp32


def test_ray_missing_is_one_line(folder, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = run_cli(monkeypatch, capsys, "batch", folder / "jobs.jsonl", "--out", folder / "out", *FAST,
                           "--ray", "auto")
    assert code == 1 and err.strip() == "error: --ray needs Ray: pip install 'styleengine[ray]'"
    assert not (folder / "out" / engine.MANIFEST).exists()


def test_batch_size_from_the_memory_budget():
    """The largest B whose B images (as one image of B times the pixels) and B L-BFGS histories fit the budget
    untiled by tile_for_budget's estimate; 1 when only one fits, MAX_BATCH at most."""
    from styleengine.engine.memory import lbfgs_pair_bytes
    from styleengine.engine.tiled import tile_for_budget

    def fits(settings, count, shape=(256, 192)):
        other = count * settings.lbfgs_history * lbfgs_pair_bytes(*shape)
        return tile_for_budget(settings.mem_budget_gib, settings.model, settings.loss_config(), shape[0] * count,
                               shape[1], other_bytes=other) is None

    assert engine.batch_size_for(Settings(mem_budget_gib=1000.0, lbfgs_history=10), (256, 192)) == engine.MAX_BATCH
    assert engine.batch_size_for(Settings(mem_budget_gib=0.6, lbfgs_history=10), (256, 192)) == 1
    middle = Settings(mem_budget_gib=1.5, lbfgs_history=10)
    count = engine.batch_size_for(middle, (256, 192))
    assert 1 < count < engine.MAX_BATCH
    assert fits(middle, count) and not fits(middle, count + 1)
