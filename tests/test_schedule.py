"""The default coarse-to-fine schedule (engine/schedule.py): every size above 181 px starts at 128 px."""
import pytest

from styleengine.engine.schedule import scale_plan, scale_sizes
from styleengine.engine.settings import Settings
from styleengine.errors import ConfigError


def pixel_cost(plan: list[tuple[int, int]], size: int) -> float:
    """Iterations of the plan in units of one iteration at `size` (an iteration's time grows with its pixels)."""
    return sum(n * (s / size) ** 2 for s, n in plan)


def test_small_sizes_run_one_scale():
    assert scale_sizes(128) == [128]
    assert scale_sizes(181) == [181]
    assert scale_plan(128, 300) == [(128, 300)]


def test_default_plans_at_the_measured_sizes():
    assert scale_plan(384, 300) == [(128, 300), (185, 150), (266, 75), (384, 38)]
    assert scale_plan(1024, 300) == [(128, 300), (181, 150), (256, 75), (362, 38), (512, 19), (724, 10),
                                     (1024, 10)]
    assert Settings(size=512).scale_plan() == [(128, 300), (181, 150), (256, 75), (362, 38), (512, 19)]


@pytest.mark.parametrize("size", [182, 200, 256, 300, 384, 500, 512, 777, 1024, 2048, 4096, 8192])
def test_every_default_run_above_181_px_starts_at_128_px_in_about_sqrt2_steps(size):
    # the same first scale at every size: the 128 px run is where every size's look is set
    sizes = scale_sizes(size)
    assert sizes[0] == 128 and sizes[-1] == size and len(sizes) >= 2
    assert all(1.19 < b / a < 1.68 for a, b in zip(sizes, sizes[1:]))  # sqrt(2) ** (1 +- 0.5)


@pytest.mark.parametrize("size", [182, 200, 215, 220, 256, 384, 512, 1024, 2048, 4096])
def test_default_plan_costs_less_than_one_scale(size):
    # the first scale does --iters, each finer one half as many: the whole run costs at most a single scale's
    assert pixel_cost(scale_plan(size, 300), size) <= 300


def test_explicit_flags_keep_their_meaning():
    assert scale_sizes(1024, scales=1) == [1024]
    assert scale_sizes(1024, scales=3) == [512, 724, 1024]
    assert scale_sizes(1024, start_size=512) == [512, 724, 1024]
    assert scale_plan(1024, 5, scales=3, iters_per_scale=7) == [(512, 7), (724, 7), (1024, 5)]
    assert scale_plan(384, 40, start_size=384) == [(384, 40)]
    with pytest.raises(ConfigError):
        scale_sizes(64, scales=5)
