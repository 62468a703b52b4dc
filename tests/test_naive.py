"""The bench's `naive` baseline (the popular PyTorch loop) computes the same loss as the engine."""
from __future__ import annotations

import pytest
import torch

from styleengine.benchmarks import naive
from styleengine.engine.loop import optimise
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import TorchStep, make_targets


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_naive_loop_gives_the_engines_losses(random_weights, pooling):
    weights = random_weights("vgg16", 0)
    gen = torch.Generator().manual_seed(3)
    content, style, init = (torch.rand(1, 3, 32, 40, generator=gen) for _ in range(3))
    # the popular loop sums the content term over positions, as the paper does, with its beta 1e5
    loss = LossConfig(weighting="paper", style_weight=1e5)
    step = TorchStep(weights, loss, pooling=pooling, conv="direct")  # oneDNN's, as the naive loop's
    step.set_targets(make_targets(step, loss, content, [style]))
    ours = [r.loss for r in optimise(step, init, iterations=4).records]
    image, theirs, seconds = naive.run(weights, init, content, style, iterations=4, pooling=pooling)
    assert len(theirs) == len(seconds) == 4 and all(s > 0 for s in seconds)
    # same loss at the start; then the same L-BFGS path (the engine's gradient scaling leaves it unchanged
    # while |scaled g|_1 >= 1, true of any real image), so the same losses up to fp32 rounding
    assert theirs == pytest.approx(ours, rel=1e-4)
    assert theirs[-1] < theirs[0]
    assert torch.isfinite(image).all()


def test_naive_model_holds_the_loaded_weights_once(random_weights):
    """As the tutorial adds the loaded VGG's own modules: the model's convolutions are the loaded
    tensors, not a second copy (which would add to the baseline's memory what its users never pay)."""
    weights = random_weights("vgg16", 0)
    image = torch.rand(1, 3, 32, 32)
    model, _, _ = naive.build_model(weights, "avg", ["relu4_2"], ["relu1_1", "relu5_1"], image, image, 1.0, 1.0,
                                    torch.device("cpu"))
    loaded = {v.data_ptr() for v in weights.state.values()}
    params = list(model.parameters())
    assert params and all(p.data_ptr() in loaded and not p.requires_grad for p in params)
