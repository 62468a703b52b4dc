"""What `bench --loop` and the `naive` backend time inside a worker (benchmarks/worker.py).

- the engine's loop: `warmup` untimed iterations, then one optimise() call of
  N iterations with a 100-pair L-BFGS history; each iteration's time is its
  record's (on a GPU, iterations read together share their time evenly);
- the naive loop (benchmarks/naive.py): in step mode its closure alone
  (zero_grad, forward with the loss modules, backward), in loop mode one
  torch.optim.LBFGS(max_iter=warmup + N) call, its first `warmup` closures
  untimed.

Our DeviceLBFGS costs the same from the second iteration on, whatever the
history holds; torch's LBFGS gets dearer as its history fills (4 passes over
each pair per iteration), so a short N times the naive loop at its cheapest.
"""
from __future__ import annotations

import time

from styleengine.benchmarks.config import LOOP_HISTORY


def time_engine_loop(step, image, iterations: int, warmup: int, dog, sync, after_warmup=lambda: None
                     ) -> list[float]:
    """`after_warmup()` runs between the warm-up and the timed loop (the device peak is reset there)."""
    from styleengine.engine.loop import optimise

    if warmup:
        dog.start_phase("loop warm-up", max(2, warmup) * 3.0)
        optimise(step, image, iterations=max(2, warmup), history=LOOP_HISTORY).finished()  # Ctrl-C ends the bench
        sync()
        dog.end_phase()
    after_warmup()
    dog.start_phase(f"{iterations} loop iterations", iterations)
    result = optimise(step, image, iterations=iterations, history=LOOP_HISTORY).finished()
    sync()
    dog.end_phase()
    if result.stopped:
        raise RuntimeError(f"the loop stopped early: {result.stopped}")
    return [r.seconds for r in result.records]


def time_naive(weights, image, content, style, *, loop: int, iters: int, warmup: int, pooling: str,
               device: str, dog, sync, after_warmup=lambda: None) -> list[float]:
    """`after_warmup()` runs once the `warmup` untimed closures are done (the device peak is reset there)."""
    from styleengine.benchmarks import naive

    if loop:
        dog.start_phase(f"{warmup + loop} naive loop iterations", warmup * 3.0 + loop)
        _, _, seconds = naive.run(weights, image, content, style, iterations=warmup + loop, pooling=pooling,
                                  device=device, history=LOOP_HISTORY,
                                  after=lambda n: after_warmup() if n == warmup else None)
        dog.end_phase()
        return seconds[warmup:]
    img, closure = naive.prepare(weights, image, content, style, pooling=pooling, device=device)
    times = []
    for i in range(warmup + iters):
        if i == warmup:
            after_warmup()
        dog.start_phase(f"naive closure {i + 1}", 3.0 if i < warmup else 1.0)
        sync()
        t0 = time.perf_counter()
        closure()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        dog.end_phase()
    return times
