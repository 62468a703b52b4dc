"""A warm engine's targets of pictures it has seen (steps.TargetCache): the same step and the same pixels give
the same features and Grams, so a repeat costs no forward pass and changes nothing."""
from __future__ import annotations

import numpy as np
import torch

from styleengine.engine.batch import Warm
from styleengine.engine.steps import TargetCache, make_targets
from styleengine.engine.stylise import Picture, Settings, build_step, stylise_batch


class Counting:
    """A step whose features and Grams calls are counted."""

    def __init__(self, step):
        self.inner, self.calls = step, 0

    def features(self, image, names):
        self.calls += 1
        return self.inner.features(image, names)

    def grams(self, image, names):
        self.calls += 1
        return self.inner.grams(image, names)


def test_the_same_pixels_through_the_same_step_are_computed_once(vgg16_random, tiny_image):
    settings = Settings(model="vgg16", weights="random", backend="torch", precision="fp32", conv="direct")
    loss = settings.loss_config()
    with build_step(settings, vgg16_random, loss) as built:
        step, cache = Counting(built), TargetCache()
        style = tiny_image.flip(-1)
        first = make_targets(step, loss, tiny_image, [style], cache=cache)
        assert step.calls == 2
        again = make_targets(step, loss, tiny_image, [style], cache=cache)
        assert step.calls == 2 and cache.hits == 2
        plain = make_targets(built, loss, tiny_image, [style])
        for name in plain.content:
            assert torch.equal(again.content[name], plain.content[name])
        for name in plain.grams:
            assert torch.equal(again.grams[name], plain.grams[name]) and torch.equal(first.grams[name],
                                                                                    plain.grams[name])
        next(iter(again.content.values())).mul_(0)  # the caller's copy: the cache keeps its own
        changed = tiny_image.clone()
        changed[0, 0, 0, 0] += 1e-3  # one pixel: another picture
        make_targets(step, loss, changed, [style], cache=cache)
        assert step.calls == 3  # the content again, the style from the cache
        third = make_targets(step, loss, tiny_image, [style], cache=cache)
        assert torch.equal(next(iter(third.content.values())), next(iter(plain.content.values())))


def test_a_cache_keeps_its_latest_entries_only(vgg16_random, make_image):
    settings = Settings(model="vgg16", weights="random", backend="torch", precision="fp32", conv="direct")
    loss = settings.loss_config()
    with build_step(settings, vgg16_random, loss) as built:
        step, cache = Counting(built), TargetCache(entries=2)
        pictures = [make_image(20, 24, seed=i) for i in range(3)]
        for picture in pictures:
            cache.get(step, "grams", ["relu1_1"], picture, lambda p=picture: built.grams(p, ["relu1_1"]))
        cache.get(step, "grams", ["relu1_1"], pictures[0], lambda: built.grams(pictures[0], ["relu1_1"]))
        assert cache.misses == 4 and cache.hits == 0  # the first was pushed out by the third


def test_a_warm_engine_gives_the_same_picture_with_its_cache(vgg16_random):
    """The server's and batch's path: a second job with the same photo and painting reads its targets from
    the cache and ends on the same pixels as the first."""
    gen = np.random.default_rng(0)
    content, style = gen.random((48, 64, 3)), gen.random((48, 64, 3))
    settings = Settings(model="vgg16", weights="random", size=64, iterations=4, backend="torch", precision="fp32",
                        conv="direct").resolved()
    with Warm() as warm:
        runs = [stylise_batch([Picture(content, [style], settings)], weights=warm.weights(settings),
                              step=warm.step(settings), cache=warm.targets)[0][0] for _ in range(2)]
        assert warm.targets.hits > 0 and warm.targets.misses > 0
    assert np.array_equal(runs[0], runs[1])
