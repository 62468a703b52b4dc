"""The optimisation loop on random weights: it lowers the loss, moves the Grams
toward the style's, is reproducible, and stops cleanly on a non-finite loss."""
from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from styleengine.errors import ConfigError
from styleengine.engine.loop import optimise
from styleengine.engine.losses import LossConfig, gram
from styleengine.engine.steps import TorchStep, make_targets

from fakes import QuadraticStep

SIZE = (32, 40)
CONFIG = LossConfig(content_weight=1.0, style_weight=1e4)


@pytest.fixture(scope="module")
def setup(random_weights):
    gen = torch.Generator().manual_seed(5)
    content = torch.rand(1, 3, *SIZE, generator=gen)
    # a smooth, structured style (not noise) so its Grams differ from the content's
    yy, xx = torch.meshgrid(torch.linspace(0, 6.28, SIZE[0]), torch.linspace(0, 6.28, SIZE[1]), indexing="ij")
    style = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), torch.sin(xx + yy)])[None] * 0.4 + 0.5
    step = TorchStep(random_weights("vgg16", 0), CONFIG)
    step.set_targets(make_targets(step, CONFIG, content, [style]))
    noise = torch.rand(1, 3, *SIZE, generator=gen)
    return step, content, style, noise


def style_distance(step, image) -> float:
    """sum_l w_l E_l of `image` against the style targets (unweighted by beta)."""
    feats = step.features(image, list(CONFIG.style_layers))
    total = 0.0
    for name, wl in zip(CONFIG.style_layers, CONFIG.layer_weights()):
        f = feats[name]
        n, m = f.shape[1], f.shape[2] * f.shape[3]
        total += wl * ((gram(f) - step.targets.grams[name]) ** 2).sum().item() / (4 * n**2 * m**2)
    return total


@pytest.fixture(scope="module")
def lbfgs_run(setup):
    step, _, _, noise = setup
    return optimise(step, noise, iterations=30, optimizer="lbfgs")


def test_lbfgs_lowers_the_loss(lbfgs_run):
    losses = [r.loss for r in lbfgs_run.records]
    assert lbfgs_run.stopped is None and lbfgs_run.iterations == 30 and len(losses) == 30
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    non_increasing = sum(b <= a for a, b in zip(losses, losses[1:])) / (len(losses) - 1)
    print(f"\nL-BFGS: loss {losses[0]:.4g} -> {losses[-1]:.4g}, {non_increasing:.0%} of steps non-increasing")
    assert non_increasing >= 0.8, losses


def test_grams_move_toward_the_style(setup, lbfgs_run):
    step, _, _, noise = setup
    before, after = style_distance(step, noise), style_distance(step, lbfgs_run.image)
    print(f"\nGram distance to style: {before:.4g} -> {after:.4g}")
    assert after < 0.5 * before
    # and the records' style term agrees with an independent evaluation of the same quantity
    assert lbfgs_run.records[0].style_loss == pytest.approx(CONFIG.style_weight * before, rel=1e-4)


def test_adam_lowers_the_loss(setup):
    step, _, _, noise = setup
    result = optimise(step, noise, iterations=30, optimizer="adam", lr=0.02)
    losses = [r.loss for r in result.records]
    print(f"\nAdam: loss {losses[0]:.4g} -> {losses[-1]:.4g}")
    assert result.iterations == 30
    assert losses[-1] < 0.5 * losses[0], losses
    assert style_distance(step, result.image) < style_distance(step, noise)


def test_records_and_callback(setup):
    step, *_ , noise = setup
    seen = []
    result = optimise(step, noise, iterations=3, callback=lambda rec, img: seen.append((rec, img.clone())))
    assert [r.iteration for r, _ in seen] == [1, 2, 3]
    assert seen[0][0] == result.records[0]
    rec = result.records[0]
    assert (rec.height, rec.width) == SIZE and rec.seconds > 0
    assert rec.loss == pytest.approx(rec.content_loss + rec.style_loss + rec.tv_loss, rel=1e-6)
    assert torch.equal(seen[-1][1], result.image)  # the callback saw the final image


def test_noise_init_same_seed_is_reproducible(setup):
    from styleengine.engine.stylise import Prepared, Settings, make_init

    step, *_ = setup
    prepared = Prepared(None, [], *SIZE)
    a = make_init(Settings(init="noise", seed=3), prepared)
    b = make_init(Settings(init="noise", seed=3), prepared)
    c = make_init(Settings(init="noise", seed=4), prepared)
    assert a.shape == (1, 3, *SIZE) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    ra = optimise(step, a, iterations=4)
    rb = optimise(step, b, iterations=4)
    assert torch.equal(ra.image, rb.image)
    assert [r.loss for r in ra.records] == [r.loss for r in rb.records]


def FakeStep(nan_at: int | None = 3) -> QuadraticStep:
    """loss = sum (x - 0.25)^2; the `nan_at`-th call returns NaN."""
    return QuadraticStep(bad_call=nan_at, target=0.25)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_nan_stops_and_keeps_last_finite_image(make_image, optimizer):
    fake = FakeStep(nan_at=3)
    init = make_image(8, 8)
    # check_every=1: the non-finite flag is read every iteration, so the loop stops at once
    result = optimise(fake, init, iterations=10, optimizer=optimizer, lr=0.1, check_every=1)
    assert result.stopped == "non-finite loss"
    assert fake.calls == 3
    assert result.iterations == len(result.records) == 2
    assert all(math.isfinite(r.loss) for r in result.records)
    # the image of the 2nd call (finite loss), not the 3rd (NaN) nor the init
    assert torch.equal(result.image, fake.seen[1])
    assert not torch.equal(result.image, fake.seen[2])
    assert not torch.equal(result.image, init)


def test_fake_step_converges(make_image):
    # the loop itself (not the VGG) solves a quadratic: a check the loop can fail
    result = optimise(FakeStep(nan_at=None), make_image(8, 8), iterations=5, optimizer="lbfgs")
    torch.testing.assert_close(result.image, torch.full((1, 3, 8, 8), 0.25), rtol=0, atol=1e-4)


def test_zero_iterations_returns_init(make_image):
    fake = FakeStep(nan_at=None)
    init = make_image(8, 8)
    result = optimise(fake, init, iterations=0)
    assert torch.equal(result.image, init)
    assert result.image is not init  # a copy, the caller's tensor is not aliased
    assert result.iterations == 0 and result.records == [] and result.stopped is None
    assert fake.calls == 0


def test_bad_arguments(make_image):
    with pytest.raises(ConfigError, match="iterations"):
        optimise(FakeStep(), make_image(8, 8), iterations=-1)
    with pytest.raises(ConfigError, match="sgd"):
        optimise(FakeStep(), make_image(8, 8), iterations=1, optimizer="sgd")


def test_interrupt_in_callback_keeps_image(make_image):
    def stop(rec, img):
        if rec.iteration == 2:
            raise KeyboardInterrupt

    fake = FakeStep(nan_at=None)
    result = optimise(fake, make_image(8, 8), iterations=10, callback=stop)
    assert result.stopped == "interrupted" and result.iterations == 2
    assert torch.isfinite(result.image).all()


def test_lbfgs_keeps_only_the_history_asked_for(make_image):
    from styleengine.engine.lbfgs import DeviceLBFGS

    x = torch.zeros(50)
    target = torch.linspace(-1, 1, 50)
    scales = torch.linspace(1, 10, 50)  # ill-conditioned, so L-BFGS keeps accepting curvature pairs
    opt = DeviceLBFGS(x, history=2)
    for _ in range(6):
        opt.step(x, scales * (x - target))
    assert int((opt.ro != 0).sum()) == 2  # pairs in use
    assert opt.pairs.shape == (1, 2 * 3, 50)  # one vector (a batch of one): history + 1 slots of s and y
    with pytest.raises(ConfigError, match="history"):
        optimise(FakeStep(), make_image(8, 8), iterations=1, history=0)


def test_auto_lbfgs_history_fits_a_quarter_of_the_budget():
    from styleengine.engine.memory import MIN_AUTO_HISTORY, lbfgs_history
    from styleengine.engine.stylise import Settings

    pair = 2 * 3 * 4  # bytes per pixel of one curvature pair
    assert lbfgs_history(7, 1.0, 4096, 4096) == 7  # asked for: kept
    assert lbfgs_history(None, 64 * 2**30, 512, 512) == 100  # plenty: neural-style's 100
    budget = 4 * 2**30
    expected = int(0.25 * budget // (pair * 2048 * 2048))
    assert 3 < expected < 100
    assert lbfgs_history(None, budget, 2048, 2048) == expected
    assert lbfgs_history(None, 0.5 * 2**30, 8192, 8192) == MIN_AUTO_HISTORY
    with pytest.raises(ConfigError, match="history"):
        Settings(lbfgs_history=0).validate()


def _tiles(settings, height, width, memory=None):
    from styleengine.engine.plan import make_plan

    settings = dataclasses.replace(settings, size=max(height, width), scales=1)
    return make_plan(settings, (height, width), [(64, 64)], memory=memory).scales[0].tile


def test_tile_per_scale_from_the_budget():
    from styleengine.engine.stylise import Settings

    assert _tiles(Settings(), 4096, 4096, memory=2**40) is None  # no tile, no budget: untiled
    assert _tiles(Settings(tile=256, mem_budget_gib=1), 4096, 4096) == 256  # --tile wins
    budget = Settings(mem_budget_gib=8, model="vgg16")
    assert _tiles(budget, 724, 724) is None  # an early scale that fits runs untiled
    tile = _tiles(budget, 2048, 2048)
    assert tile is not None and tile % 16 == 0 and tile < 2048
    # the L-BFGS history counts against the budget: a fixed long history leaves a smaller tile
    assert _tiles(Settings(mem_budget_gib=8, model="vgg16", lbfgs_history=60), 2048, 2048) < tile
    with pytest.raises(ConfigError, match="too small"):
        _tiles(Settings(mem_budget_gib=1), 4096, 4096)


def test_the_memory_is_probed_once_a_run_and_its_plan_is_what_runs(monkeypatch):
    """The default L-BFGS history comes from the memory free when the run is planned, once: it was computed
    again from the memory free at each later moment (the check, the loop), so one run could plan one history
    and run another."""
    import numpy as np

    from styleengine.engine import plan as plan_module, stylise as stylise_module
    from styleengine.engine.stylise import Settings

    free = iter([2**40, 6 * 2**20, 6 * 2**20])  # plenty when planned; later far less
    probes = []

    def free_memory(device):
        probes.append(device)
        return next(free)

    histories = []
    real = stylise_module.optimise_batch

    def optimise_batch(*args, **kwargs):
        histories.append(kwargs["history"])
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_module, "free_memory", free_memory)
    monkeypatch.setattr(stylise_module, "optimise_batch", optimise_batch)
    rng = np.random.default_rng(0)
    content, style = rng.random((48, 64, 3)).astype(np.float32), rng.random((48, 64, 3)).astype(np.float32)
    stylise_module.stylise(content, [style], Settings(size=64, iterations=2, weights="random", backend="torch",
                                                     device="cpu", precision="fp32", conv="direct"))
    assert len(probes) == 1 and histories == [100]
