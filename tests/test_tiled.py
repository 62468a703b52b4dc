"""The exactly tiled step equals the untiled one; coarse-to-fine scales; the CLI's --tile and --scales paths."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from styleengine.engine.loss_config import TV_UNIT  # the weights below in the old units
from styleengine import cli
from styleengine.errors import ConfigError
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import TorchStep, make_targets
from styleengine.engine.schedule import scale_sizes
from styleengine.engine.stylise import Settings, stylise
from styleengine.engine.tiled import TiledStep, halo_for, tile_for_budget, tiles
from styleengine.engine.winograd import winograd_available

# a short loss so the halo is small: conv3_1 has a receptive field of 24 px -> halo 16
SHORT = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "conv3_1"), tv_weight=0.5 / TV_UNIT)


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def pair(weights, loss, pooling, make_image, height, width, tile, halo=None, conv="direct"):
    """(untiled result, tiled result) of one step on the same image and targets. The exactness of tiling
    is checked with the direct convolutions: Winograd's rounding depends on where its blocks fall."""
    base = TorchStep(weights, loss, pooling=pooling, conv=conv)
    content, style, x = (make_image(height, width, seed=s) for s in (1, 2, 3))
    targets = make_targets(base, loss, content, [style])
    base.set_targets(targets)
    ref = base(x)
    tiled = TiledStep(base, loss, weights.model, tile=tile, halo=halo)
    tiled.set_targets(targets)
    return ref, tiled(x)


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("shape", [(96, 80), (90, 75), (45, 100)])  # square-ish, off the 16 grid, one tile row
def test_tiled_equals_untiled(vgg19_random, make_image, pooling, shape):
    ref, out = pair(vgg19_random, SHORT, pooling, make_image, *shape, tile=48 if shape[0] > 64 else 32)
    assert abs(out.loss - ref.loss) / abs(ref.loss) <= 1e-5
    for part in ("content", "style", "tv"):
        assert out.parts[part] == pytest.approx(ref.parts[part], rel=1e-5)
    assert rel(out.grad, ref.grad) <= 1e-4
    assert out.grad.shape == ref.grad.shape


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_tiled_equals_untiled_paper_layers(vgg19_random, make_image, pooling):
    """The default loss (relu4_2; relu1_1..relu5_1): halo 80, tiles aligned to the stride 16."""
    loss = LossConfig()
    ref, out = pair(vgg19_random, loss, pooling, make_image, 176, 144, tile=96)
    assert halo_for("vgg19", loss.layers) == 80
    assert abs(out.loss - ref.loss) / abs(ref.loss) <= 1e-5
    assert rel(out.grad, ref.grad) <= 1e-4


def test_tiled_winograd_is_close_to_untiled(vgg19_random, make_image):
    """Winograd convolutions (the CPU fp32 default) tile too, within their own rounding: the tiled step is
    no further from the untiled one than Winograd is from the direct convolutions (random weights and
    images make the gradient ill-conditioned: both gaps are ~1e-3 here, ~5e-5 with real ones)."""
    if not winograd_available():
        pytest.skip("no NNPACK in this torch build / CPU")
    loss = LossConfig()
    ref, out = pair(vgg19_random, loss, "avg", make_image, 176, 144, tile=96, conv="winograd")
    direct, _ = pair(vgg19_random, loss, "avg", make_image, 176, 144, tile=96, conv="direct")
    assert abs(out.loss - ref.loss) / abs(ref.loss) <= 1e-5
    assert rel(out.grad, ref.grad) <= 2 * rel(ref.grad, direct.grad)


def test_a_short_halo_is_not_exact(vgg19_random, make_image):
    """The check above has teeth: without the halo, tile borders change the gradient."""
    ref, out = pair(vgg19_random, SHORT, "avg", make_image, 96, 80, tile=32, halo=0)
    assert rel(out.grad, ref.grad) > 1e-2


def test_tiles_cover_the_image_once():
    height, width, tile, halo = 90, 75, 32, 16
    owned = torch.zeros(height, width, dtype=torch.int32)
    for t in tiles(height, width, tile, halo):
        assert t.top % 16 == 0 and t.left % 16 == 0 and t.core_top % 16 == 0 and t.core_left % 16 == 0
        assert t.top >= 0 and t.left >= 0 and t.bottom <= height and t.right <= width
        owned[t.core_top:t.core_bottom, t.core_left:t.core_right] += 1
    assert bool((owned == 1).all())


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_tiled_features_and_targets(vgg19_random, make_image, pooling):
    base = TorchStep(vgg19_random, SHORT, pooling=pooling, conv="direct")
    tiled = TiledStep(base, SHORT, "vgg19", tile=32)
    x = make_image(90, 75, seed=4)
    names = ["relu1_1", "pool1", "relu2_2", "conv3_1"]
    ref, out = base.features(x, names), tiled.features(x, names)
    for n in names:
        assert out[n].shape == ref[n].shape
        assert rel(out[n], ref[n]) <= 1e-5, n
    styles = [make_image(80, 96, seed=5)]
    want, got = make_targets(base, SHORT, x, styles), make_targets(tiled, SHORT, x, styles)
    for n in SHORT.style_layers:
        assert rel(got.grams[n], want.grams[n]) <= 1e-5
    assert rel(got.content["relu2_2"], want.content["relu2_2"]) <= 1e-5


def test_bad_tile_is_a_config_error(vgg19_random):
    base = TorchStep(vgg19_random, SHORT)
    for tile in (40, 0, -16):
        with pytest.raises(ConfigError, match="multiple of 16"):
            TiledStep(base, SHORT, "vgg19", tile=tile)
    with pytest.raises(ConfigError, match="halo"):
        TiledStep(base, SHORT, "vgg19", tile=32, halo=8)
    with pytest.raises(ConfigError, match="multiple of 16"):
        Settings(tile=100).validate()


def test_tile_for_budget():
    loss = LossConfig()
    assert tile_for_budget(64, "vgg19", loss, 512, 512) is None  # the untiled step fits
    tile = tile_for_budget(4, "vgg19", loss, 4096, 4096)
    assert tile is not None and tile % 16 == 0 and 256 <= tile < 4096
    assert tile_for_budget(8, "vgg19", loss, 4096, 4096) > tile
    with pytest.raises(ConfigError, match="too small"):
        tile_for_budget(0.6, "vgg19", loss, 8192, 8192)


def test_scale_sizes():
    assert scale_sizes(128) == [128]
    assert scale_sizes(512) == [128, 181, 256, 362, 512]
    assert scale_sizes(2048) == [128, 181, 256, 362, 512, 724, 1024, 1448, 2048]
    auto = scale_sizes(1100)
    assert auto[-1] == 1100 and auto[0] == 128 and len(auto) == 7
    assert scale_sizes(8192)[0] == 128
    assert scale_sizes(1024, scales=3) == [512, 724, 1024]
    assert scale_sizes(2048, scales=1) == [2048]
    assert scale_sizes(1024, start_size=512) == [512, 724, 1024]
    assert scale_sizes(1000, scales=2, start_size=250) == [250, 1000]
    for sizes in (scale_sizes(4096), scale_sizes(3000, start_size=600)):
        ratios = [b / a for a, b in zip(sizes, sizes[1:])]
        assert all(1.25 < r < 1.6 for r in ratios), sizes
    with pytest.raises(ConfigError):
        scale_sizes(64, scales=5)  # would start below the minimum side
    with pytest.raises(ConfigError):
        scale_sizes(512, start_size=1024)
    with pytest.raises(ConfigError):
        scale_sizes(512, scales=0)


def tiny_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((60, 50, 3), dtype=np.float32), rng.random((56, 56, 3), dtype=np.float32)


def short_settings(**changes) -> Settings:
    return Settings(size=64, iterations=3, weights="random", device="cpu", content_layers=SHORT.content_layers,
                    style_layers=SHORT.style_layers, tv_weight=SHORT.tv_weight, **changes)


def test_coarse_to_fine_stylise(vgg19_random):
    content, style = tiny_arrays()
    settings = short_settings(scales=2, iters_per_scale=2)
    seen = []
    image, result = stylise(content, [style], settings, weights=vgg19_random,
                            callback=lambda r, current: seen.append((r.iteration, r.height, r.width)))
    assert image.shape == (64, 53, 3)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]  # counted across scales
    assert {(h, w) for _, h, w in seen[:2]} == {(45, 38)} and {(h, w) for _, h, w in seen[2:]} == {(64, 53)}
    assert result.iterations == 5 and [r.iteration for r in result.records] == [1, 2, 3, 4, 5]


def test_tiled_stylise_equals_untiled(vgg19_random):
    """The first iteration's picture to fp32 rounding, and the loss of later ones: past it the line search's
    branches turn rounding into different paths to the same loss (0.1 apart in iteration 2, 0.003 in 3 on an
    AVX2-only CPU, where the untiled and tiled convolutions round differently)."""
    import dataclasses

    content, style = tiny_arrays(1)
    for iterations in (1, 3):
        untiled, done = stylise(content, [style], dataclasses.replace(short_settings(conv="direct"),
                                                                      iterations=iterations), weights=vgg19_random)
        tiled, result = stylise(content, [style], dataclasses.replace(short_settings(tile=32, conv="direct"),
                                                                      iterations=iterations), weights=vgg19_random)
        assert result.stopped is None
        assert result.records[-1].loss == pytest.approx(done.records[-1].loss, rel=1e-4)
        if iterations == 1:
            assert np.abs(tiled - untiled).max() <= 1e-5


def test_ort_tile_step(vgg19_random, make_image):
    from styleengine.engine.backends import make_step

    base = make_step("ort", vgg19_random, SHORT, pooling="avg")
    content, style, x = (make_image(90, 75, seed=s) for s in (1, 2, 3))
    targets = make_targets(base, SHORT, content, [style])
    base.set_targets(targets)
    ref = base(x)
    # the same step, tiled, as a coarse-to-fine run does it: the untiled session's memory is handed back
    tiled = TiledStep(base, SHORT, "vgg19", tile=32)
    assert "step" not in base.sessions
    tiled.set_targets(targets)
    out = tiled(x)
    assert abs(out.loss - ref.loss) / abs(ref.loss) <= 1e-4
    assert rel(out.grad, ref.grad) <= 1e-4
    base.set_targets(targets)  # and the untiled step comes back when asked for
    again = base(x)
    assert again.loss == ref.loss and torch.equal(again.grad, ref.grad)


def test_cli_tile_and_scales(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("content", (48, 40, 3)), ("style", (56, 56, 3))):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    out, trace = tmp_path / "out.png", tmp_path / "trace.jsonl"
    monkeypatch.setattr(sys, "argv", [
        "styleengine", "run", *map(str, paths), "-o", str(out), "--weights", "random", "--model", "vgg16",
        "--size", "64", "--iters", "2", "--device", "cpu", "--content-layers", "relu2_2",
        "--style-layers", "relu1_1,relu2_1,conv3_1", "--tile", "32", "--scales", "2", "--iters-per-scale", "1",
        "--trace", str(trace)])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code or 0
    err = capsys.readouterr().err
    assert code == 0, err
    assert Image.open(out).size == (53, 64)
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(r["iteration"], r["height"]) for r in rows] == [(1, 45), (2, 64), (3, 64)]
    assert "3 iterations" in err


def test_cli_bad_tile_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["styleengine", "run", str(tmp_path / "c.png"), str(tmp_path / "s.png"),
                                      "-o", str(tmp_path / "o.png"), "--tile", "40"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.strip().count("\n") == 0 and "multiple of 16" in err


def test_scale_plan_halves_iterations_from_the_first_scale():
    from styleengine.engine.stylise import Settings

    assert Settings(size=2048).scale_plan() == [(128, 300), (181, 150), (256, 75), (362, 38), (512, 19),
                                                (724, 10), (1024, 10), (1448, 10), (2048, 10)]
    assert Settings(size=128).scale_plan() == [(128, 300)]
    assert Settings(size=512, start_size=128, iterations=40).scale_plan() == [
        (128, 40), (181, 20), (256, 10), (362, 10), (512, 10)]  # at least 10 each
    assert Settings(size=64, scales=2, iterations=2).scale_plan() == [(45, 2), (64, 2)]  # never over --iters
    plan = Settings(size=1024, scales=3, iters_per_scale=7, iterations=5).scale_plan()
    assert plan == [(512, 7), (724, 7), (1024, 5)]
