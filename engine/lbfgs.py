"""L-BFGS that never waits for the device: the same iterates as torch.optim.LBFGS, no host sync.

torch.optim.LBFGS(max_iter=1, no line search) is what the paper and the
popular implementations run, but its two-loop recursion does a dot product
and an `add_(..., alpha=tensor)` per curvature pair, each a host sync, and
branches in Python on `y.s > 1e-10`: 16-18 ms per iteration at 384x512 on an
H200 with 100 pairs, for a 4-6 ms step.

Here every decision is a tensor:
- The pairs live in one preallocated (2 * slots, n) buffer [S; Y] with
  slots = history + 1: a ring whose free slot `head` takes each new pair
  before it is judged. Accepting it (y.s > 1e-10, as torch) moves `head` on,
  which frees the oldest pair once the ring holds `history`; rejecting it
  leaves everything as it was. One spare slot of memory buys a branch-free
  update.
- The two loops only need dot products of the pairs with each other and
  with the gradient, so they run as two triangular solves on (slots, slots)
  matrices kept up to date one row and column per iteration (S Y^T, Y Y^T)
  and one (2 * slots, n) x (n, 3) product per iteration; the direction is
  one more (n, 2 * slots) x (2 * slots,) product. Two passes over the
  history per iteration instead of torch's four, and about 30 small kernels
  instead of 4 * history (the CUDA-graph capture in the loop removes their
  launch cost).

Maths as torch 2.x's LBFGS step with max_iter=1 and line_search_fn=None:
first step t = lr * min(1, 1 / |g|_1) along -g, later steps t = lr along the
two-loop direction with H0 = (s.y / y.y) of the newest accepted pair; the
update is skipped when g.d > -tolerance_change (torch's early `break`), the
pair is still formed from (d, t) at the next step, as torch does.
"""
from __future__ import annotations

import torch

CURVATURE_EPS = 1e-10  # torch.optim.LBFGS accepts a pair when y.s > 1e-10


class DeviceLBFGS:
    """L-BFGS on one flat fp32 vector, every state tensor on its device.

    step(x, g) updates x in place from g = dL/dx at x. The first call is
    host-known (no history yet), so `step` has no data-dependent Python
    branch: each call after the first issues the same kernels, which is
    what CUDA-graph capture needs.
    """

    def __init__(self, x: torch.Tensor, history: int, lr: float = 1.0, tolerance_change: float = -1.0, *,
                 static: bool = False, max_step: float | None = None):
        if history < 1:
            raise ValueError(f"L-BFGS history must be >= 1, got {history}")
        n = x.numel()
        self.slots = slots = history + 1
        self.history, self.lr = history, lr
        zeros = lambda *shape: torch.zeros(*shape, device=x.device, dtype=x.dtype)  # noqa: E731
        # [S; Y]: rows 0..slots-1 are s, slots.. are y. Not static: rows are zeroed as they come into use,
        # so the memory of a run that has few pairs yet is not touched (resident) before it is needed
        self.pairs = zeros(2 * slots, n) if static else torch.empty(2 * slots, n, device=x.device, dtype=x.dtype)
        # rows [0, _zeroed) of S and of Y hold zeros or pairs (set below)
        self.sy = zeros(slots, slots)  # sy[i, j] = s_i . y_j
        self.yy = zeros(slots, slots)  # yy[i, j] = y_i . y_j
        self.ro = zeros(slots)  # 1 / (y.s) of the pairs in use, 0 for the free and the evicted slots
        self.head = torch.zeros(1, device=x.device, dtype=torch.long)  # the free slot
        self.h_diag = torch.ones((), device=x.device, dtype=x.dtype)
        self.d = zeros(n)  # the last direction
        self.t = torch.zeros((), device=x.device, dtype=x.dtype)  # the last step length
        self.g_prev = zeros(n)
        self._work = zeros(3, n)  # (g, s_new, y_new) of the current call: no image-sized allocation per call
        self.threshold = -tolerance_change  # torch skips the update when g.d > -tolerance_change
        # not in torch: the step t d is shortened so that no entry of x moves more than this (None: never)
        self.max_step = max_step
        self.steps = 0
        # before the ring is full only the first `steps` slots can hold a pair: the products skip the
        # rest (the first 100 iterations of a 100-pair run read a growing part of the history, as torch's
        # do). static: always the whole ring, one kernel sequence for every call (a CUDA graph's replay)
        self.static = static
        self._zeroed = slots if static else 0
        self._ages = torch.arange(1, slots + 1, device=x.device)  # newest first: head - 1, head - 2, ...
        self._eye = torch.eye(slots, device=x.device, dtype=x.dtype)

    def pair_bytes(self) -> int:
        return self.pairs.element_size() * self.pairs.shape[1] * 2

    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """One L-BFGS iteration: x (flat, updated in place) and g = dL/dx at x, both (n,).

        Every state tensor is written in place, so a CUDA graph of a later call replays it."""
        if self.steps == 0:
            torch.neg(g, out=self.d)
            # torch: t = min(1, 1 / |g|_1) * lr on the first iteration
            self.t.copy_(torch.clamp(g.abs().sum().reciprocal(), max=1.0) * self.lr)
        else:
            self._add_pair(g)
            self._direction(g)  # into self.d
            self.t.fill_(self.lr)
        if self.max_step is not None:
            # per image when batched: each row of d is one picture's direction
            self.t.copy_(torch.minimum(self.t, self.max_step / self.d.abs().amax(dim=-1).clamp_min(1e-30)))
        self.steps += 1
        self.g_prev.copy_(g)
        gtd = torch.dot(g, self.d)
        # torch breaks before updating when g.d > -tolerance_change (never with a positive-definite H)
        x.addcmul_(self.d, torch.where(gtd > self.threshold, 0.0, self.t))

    def _add_pair(self, g: torch.Tensor) -> None:
        slots, head = self.slots, self.head
        live = self._live()
        if self._zeroed < live:  # a slot comes into use: zeros until a pair lands there
            self.pairs[self._zeroed:live].zero_()
            self.pairs[slots + self._zeroed:slots + live].zero_()
            self._zeroed = live
        work = self._work
        work[0].copy_(g)
        torch.mul(self.d, self.t, out=work[1])  # s = t d
        torch.sub(g, self.g_prev, out=work[2])  # y = g - g_prev
        # the new pair always goes to the free slot; whether it counts is decided below
        self.pairs.index_copy_(0, torch.cat((head, head + slots)), work[1:])
        vectors = work.T  # (n, 3)
        if live == slots:
            dots = torch.mm(self.pairs, vectors)  # (2 * slots, 3): [S; Y] . (g, s, y)
        else:  # the unused slots are zeros: their products are too
            dots = torch.zeros(2 * slots, 3, device=g.device, dtype=g.dtype)
            torch.mm(self.pairs[:live], vectors, out=dots[:live])
            torch.mm(self.pairs[slots:slots + live], vectors, out=dots[slots:slots + live])
        self._gs, self._gy = dots[:slots, 0], dots[slots:, 0]  # s_i . g, y_i . g
        self.sy.index_copy_(1, head, dots[:slots, 2:3])  # s_i . y_new
        self.sy.index_copy_(0, head, dots[slots:, 1:2].T)  # s_new . y_j
        self.yy.index_copy_(1, head, dots[slots:, 2:3])
        self.yy.index_copy_(0, head, dots[slots:, 2:3].T)
        new = dots.index_select(0, head + slots)  # (1, 3): y_new . (g, s_new, y_new)
        ys, yy = new[:, 1], new[:, 2]
        accept = ys > CURVATURE_EPS
        self.ro.index_copy_(0, head, torch.where(accept, ys.reciprocal(), torch.zeros_like(ys)))
        following = torch.remainder(head + 1, slots)
        # accepting frees the next slot: the oldest pair when the ring is full, an unused slot before
        self.ro.index_copy_(0, following, torch.where(accept, torch.zeros_like(ys), self.ro.index_select(0, following)))
        self.h_diag.copy_(torch.where(accept, ys / yy, self.h_diag.view(1)).view(()))
        self.head.copy_(torch.where(accept, following, head))

    def _direction(self, g: torch.Tensor) -> None:
        """The two-loop recursion of torch's LBFGS as two triangular solves over the pairs' dot products;
        the direction is written into self.d."""
        slots = self.slots
        order = torch.remainder(self.head - self._ages, slots)  # slot of the k-th newest pair
        ro = self.ro.index_select(0, order)
        used = ro != 0
        mask = used[:, None] & used[None, :]
        sy = torch.where(mask, self.sy.index_select(0, order).index_select(1, order), 0.0)
        yy = torch.where(mask, self.yy.index_select(0, order).index_select(1, order), 0.0)
        gs = torch.where(used, self._gs.index_select(0, order), 0.0)
        gy = torch.where(used, self._gy.index_select(0, order), 0.0)
        # first loop, newest to oldest: a_k = ro_k s_k . (-g - sum_{l newer} a_l y_l)
        lower = self._eye + ro[:, None] * torch.tril(sy, -1)
        alpha = torch.linalg.solve_triangular(lower, (-ro * gs)[:, None], upper=False, unitriangular=True)[:, 0]
        # r0 = H0 q with q = -g - sum a_l y_l; y_k . r0 from the dot products
        y_r0 = self.h_diag * (-gy - yy @ alpha)
        # second loop, oldest to newest: c_k = a_k - ro_k y_k . (r0 + sum_{l older} c_l s_l)
        upper = self._eye + ro[:, None] * torch.triu(sy.T, 1)
        c = torch.linalg.solve_triangular(upper, (alpha - ro * y_r0)[:, None], upper=True, unitriangular=True)[:, 0]
        # d = H0 (-g - sum a_l y_l) + sum c_l s_l, in slot order for one product with [S; Y]
        coeffs = torch.zeros(2 * slots, device=g.device, dtype=g.dtype)
        coeffs.index_copy_(0, order, c)
        coeffs.index_copy_(0, order + slots, -self.h_diag * alpha)
        live = self._live()
        d = torch.mul(g, -self.h_diag, out=self.d)
        if live == slots:
            d.addmv_(self.pairs.T, coeffs)
        else:
            d.addmv_(self.pairs[:live].T, coeffs[:live])
            d.addmv_(self.pairs[slots:slots + live].T, coeffs[slots:slots + live])

    def _live(self) -> int:
        """Slots that may hold a pair: the step-th call has written at most `steps` pairs, from slot 0."""
        return self.slots if self.static else min(self.steps, self.slots)
