"""The device-resident L-BFGS against torch.optim.LBFGS, and a loop that does not wait for the device.

torch's LBFGS (max_iter=1, no line search, tolerances off) is the reference:
the paper's optimiser as neural-style and the popular implementations run it.
"""
from __future__ import annotations

import pytest
import torch

from styleengine.engine.lbfgs import DeviceLBFGS
from styleengine.engine.loop import lbfgs_grad_scale, optimise
from styleengine.engine.losses import LossConfig
from styleengine.engine.steps import TorchStep, make_targets

from fakes import QuadraticStep


def torch_lbfgs_iterates(evaluate, x0: torch.Tensor, iterations: int, history: int, scale: bool) -> list[torch.Tensor]:
    """The reference: torch.optim.LBFGS as the loop used it before (the gradient scaled as optimise does)."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=-1.0, tolerance_change=-1.0)
    factor: list[torch.Tensor] = []

    def closure():
        loss, grad = evaluate(x.detach())
        if scale and not factor:
            factor.append(lbfgs_grad_scale(grad))
        x.grad = grad * factor[0] if scale else grad
        return loss

    out = []
    for _ in range(iterations):
        opt.step(closure)
        out.append(x.detach().clone())
    return out


def device_lbfgs_iterates(evaluate, x0: torch.Tensor, iterations: int, history: int,
                          static: bool = False) -> list[torch.Tensor]:
    x = x0.clone().reshape(-1)
    opt = DeviceLBFGS(x, history, static=static)
    out = []
    for _ in range(iterations):
        _, grad = evaluate(x.view_as(x0))
        opt.step(x, grad.reshape(-1))
        out.append(x.view_as(x0).clone())
    return out


def nonconvex(n: int = 40, seed: int = 0):
    """A float64 problem with negative curvature in places (rejected pairs) and a full ring for small histories."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)

    def evaluate(x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = 0.5 * x @ a @ x + 0.01 * (x**4).sum() + torch.sin(3 * x).sum()
            (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    return evaluate, torch.randn(n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("static", [False, True])  # products over the written slots / the whole ring
@pytest.mark.parametrize("history", [1, 3, 100])
def test_same_iterates_as_torch_in_float64(history, static):
    evaluate, x0 = nonconvex()
    ref = torch_lbfgs_iterates(evaluate, x0, 60, history, scale=False)
    got = device_lbfgs_iterates(evaluate, x0, 60, history, static)
    worst = max(float((r - g).norm() / r.norm()) for r, g in zip(ref, got))
    assert worst < 1e-10


def test_rejected_pairs_change_nothing():
    """y.s <= 1e-10 (here: a linear function, y = 0) leaves history and scaling as they were, as in torch."""
    slope = torch.linspace(-1, 1, 10, dtype=torch.float64)
    evaluate = lambda x: ((slope * x).sum(), slope.clone())  # noqa: E731
    x0 = torch.zeros(10, dtype=torch.float64)
    ref = torch_lbfgs_iterates(evaluate, x0, 5, 3, scale=False)
    opt = DeviceLBFGS(x0.clone(), 3)
    x = x0.clone()
    for r in ref:
        opt.step(x, slope.clone())
        torch.testing.assert_close(x, r, rtol=1e-12, atol=1e-12)
    assert int((opt.ro != 0).sum()) == 0


def real_problem(random_weights, dtype):
    """The real loss (VGG16, random weights, 20x24) as evaluate(x) -> (loss, grad), in fp32 or float64."""
    import copy

    from styleengine.engine.losses import Targets, total_loss

    gen = torch.Generator().manual_seed(1)
    content, style, x0 = (torch.rand(1, 3, 20, 24, generator=gen) for _ in range(3))
    loss = LossConfig(style_weight=1e4)
    step = TorchStep(random_weights("vgg16", 0), loss)
    targets = make_targets(step, loss, content, [style])
    step.set_targets(targets)
    if dtype == torch.float32:
        def evaluate(x):
            result = step(x)
            return result.losses[0].clone(), result.grad.clone()
        return evaluate, x0, step
    net = copy.deepcopy(step.net).double()
    t64 = Targets({k: v.double() for k, v in targets.content.items()},
                  {k: v.double() for k, v in targets.grams.items()})
    scale, shift = step.scale.double(), step.shift.double()

    def evaluate(x):
        x = x.detach().double().requires_grad_(True)
        with torch.enable_grad():
            terms = total_loss(loss, net((x * scale + shift)[:, step.perm], loss.layers), t64, x)
            (grad,) = torch.autograd.grad(terms["loss"], x)
        return terms["loss"].detach(), grad

    return evaluate, x0.double(), None


@pytest.mark.parametrize("history", [5, 100])
def test_same_iterates_as_torch_on_the_real_loss(random_weights, history):
    """50 iterations on the real loss. In float64 the iterates equal torch's (the same maths). In fp32 the
    trajectory is chaotic (a ReLU that flips on or off bends it): torch's own fp32 loop with a 1e-6
    relative noise on its gradient lands up to 3% away from the float64 one by iteration 50, which is
    what fp32 tolerance means here; the loop (optimise) must stay as close to float64 as that."""
    n = 50
    evaluate64, x64, _ = real_problem(random_weights, torch.float64)
    ref64 = torch_lbfgs_iterates(evaluate64, x64, n, history, scale=True)
    x = x64.clone()
    scale = lbfgs_grad_scale(evaluate64(x64)[1])
    opt = DeviceLBFGS(x.view(-1), history)
    for r in ref64:
        opt.step(x.view(-1), (evaluate64(x)[1] * scale).view(-1))
        # 1.3e-9 seen at history 100: float64 rounding, amplified over 50 iterations
        assert float((x - r).norm() / r.norm()) < 5e-9

    evaluate, x0, step = real_problem(random_weights, torch.float32)
    gen = torch.Generator().manual_seed(5)

    def noisy(x):
        loss, grad = evaluate(x)
        return loss, grad * (1 + 1e-6 * torch.randn(grad.shape, generator=gen))

    fp32_runs = [torch_lbfgs_iterates(evaluate, x0, n, history, scale=True),
                 torch_lbfgs_iterates(noisy, x0, n, history, scale=True)]
    for i in (10, n):
        exact = ref64[i - 1].float()
        distance = lambda image: float((image - exact).norm() / exact.norm())  # noqa: E731
        ours = distance(optimise(step, x0, iterations=i, history=history).image)
        assert ours <= 3 * max(distance(run[i - 1]) for run in fp32_runs) + 1e-6, (i, ours)


def count_host_syncs(fn) -> int:
    """Host reads of tensor values (`.item()`, `.tolist()`, `float(t)`, `if t:`) seen by the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::_local_scalar_dense", "aten::item"))


def test_iterations_without_a_reader_do_not_sync(random_weights):
    """No host read inside the loop's iterations (the records come in one .tolist() per read, which the CPU
    profiler does not see); torch's LBFGS, the loop before this one, reads the device every iteration."""
    evaluate, x0, step = real_problem(random_weights, torch.float32)
    optimise(step, x0, iterations=2)  # warm-up outside the count
    assert count_host_syncs(lambda: optimise(step, x0, iterations=12, history=5, read_interval_s=1e9)) == 0
    assert count_host_syncs(lambda: torch_lbfgs_iterates(evaluate, x0, 12, 5, scale=True)) >= 12


def test_late_non_finite_check_gives_todays_result(make_image):
    """Checked every 16 iterations, a NaN at call 5 still ends with the image of call 4 and 4 records."""
    fake = QuadraticStep(bad_call=5, target=0.25)
    late = optimise(fake, make_image(8, 8), iterations=40, read_interval_s=1e9)
    assert late.stopped == "non-finite loss" and late.iterations == 4
    torch.testing.assert_close(late.image, fake.seen[3])
    assert fake.calls == 16  # at most one check period past the NaN


def test_max_step_caps_every_move_and_keeps_the_pairs_consistent():
    """max_step (not in torch): no entry of x moves more than it in one step; the pair formed is the step
    actually taken (s = t d), so the curvature pairs stay true. Off (None), the iterates are torch's (above)."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    hessian = a @ a.T + 0.1 * torch.eye(40, dtype=torch.float64)
    x = torch.randn(40, generator=gen, dtype=torch.float64) * 3  # the first steps want moves over 0.25
    opt = DeviceLBFGS(x, history=5, max_step=0.25)
    losses, capped = [], 0
    for _ in range(100):
        g = hessian @ x
        losses.append(float(0.5 * x @ g))
        before = x.clone()
        opt.step(x, g)
        moved = float((x - before).abs().max())
        assert moved <= 0.25 + 1e-12
        capped += moved > 0.25 - 1e-12
    assert capped >= 3  # the cap did act
    assert losses[-1] < 1e-3 * losses[0]  # still converges on a convex quadratic
