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

Batched: x and g may be (B, n), B images optimised together (engine/batch.py).
Each row is its own L-BFGS: its own ring, head, pair acceptance, first-step
length and H0, all decided on the device per row, so row b's iterates are
the ones a (n,) run on that image alone would give (within fp32 rounding of
the batched products). A (n,) vector is a batch of one.
"""
from __future__ import annotations

import torch

CURVATURE_EPS = 1e-10  # torch.optim.LBFGS accepts a pair when y.s > 1e-10


class DeviceLBFGS:
    """L-BFGS on flat fp32 vectors, (n,) or a batch (B, n) of independent ones, every state tensor on
    their device.

    step(x, g) updates x in place from g = dL/dx at x. The first call is
    host-known (no history yet), so `step` has no data-dependent Python
    branch: each call after the first issues the same kernels, which is
    what CUDA-graph capture needs.
    """

    def __init__(self, x: torch.Tensor, history: int, lr: float = 1.0, tolerance_change: float = -1.0, *,
                 static: bool = False, max_step: float | None = None):
        if history < 1:
            raise ValueError(f"L-BFGS history must be >= 1, got {history}")
        rows, n = (1, x.numel()) if x.dim() == 1 else x.shape
        self.slots = slots = history + 1
        self.history, self.lr = history, lr
        zeros = lambda *shape: torch.zeros(*shape, device=x.device, dtype=x.dtype)  # noqa: E731
        # [S; Y] per row: rows 0..slots-1 are s, slots.. are y. Not static: rows are zeroed as they come into
        # use, so the memory of a run that has few pairs yet is not touched (resident) before it is needed
        self.pairs = (zeros(rows, 2 * slots, n) if static
                      else torch.empty(rows, 2 * slots, n, device=x.device, dtype=x.dtype))
        # pairs [0, _zeroed) of S and of Y hold zeros or pairs (set below)
        self.sy = zeros(rows, slots, slots)  # sy[b, i, j] = s_i . y_j
        self.yy = zeros(rows, slots, slots)  # yy[b, i, j] = y_i . y_j
        self.ro = zeros(rows, slots)  # 1 / (y.s) of the pairs in use, 0 for the free and the evicted slots
        self.head = torch.zeros(rows, device=x.device, dtype=torch.long)  # the free slot, per row
        self.h_diag = torch.ones(rows, device=x.device, dtype=x.dtype)
        self.d = zeros(rows, n)  # the last direction
        self.t = zeros(rows)  # the last step length
        self.g_prev = zeros(rows, n)
        self._work = zeros(rows, 3, n)  # (g, s_new, y_new) of the current call: no image-sized allocation per call
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
        self._rows = torch.arange(rows, device=x.device)

    def pair_bytes(self) -> int:
        """Memory of one curvature pair of every row."""
        return self.pairs.element_size() * self.pairs.shape[0] * self.pairs.shape[2] * 2

    def step(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """One L-BFGS iteration: x (updated in place) and g = dL/dx at x, both (n,) or (B, n).

        Every state tensor is written in place, so a CUDA graph of a later call replays it."""
        x2, g = x.view(self.d.shape), g.view(self.d.shape)
        if self.steps == 0:
            torch.neg(g, out=self.d)
            # torch: t = min(1, 1 / |g|_1) * lr on the first iteration, per row
            self.t.copy_(torch.clamp(g.abs().sum(1).reciprocal(), max=1.0) * self.lr)
        else:
            self._add_pair(g)
            self._direction(g)  # into self.d
            self.t.fill_(self.lr)
        if self.max_step is not None:
            # per image when batched: each row of d is one picture's direction
            self.t.copy_(torch.minimum(self.t, self.max_step / self.d.abs().amax(dim=-1).clamp_min(1e-30)))
        self.steps += 1
        self.g_prev.copy_(g)
        gtd = (g * self.d).sum(1)  # (B,)
        # torch breaks before updating when g.d > -tolerance_change (never with a positive-definite H)
        x2.addcmul_(self.d, torch.where(gtd > self.threshold, 0.0, self.t)[:, None])

    def _add_pair(self, g: torch.Tensor) -> None:
        slots, head, rows = self.slots, self.head, self.d.shape[0]
        live = self._live()
        if self._zeroed < live:  # a slot comes into use: zeros until a pair lands there
            self.pairs[:, self._zeroed:live].zero_()
            self.pairs[:, slots + self._zeroed:slots + live].zero_()
            self._zeroed = live
        work = self._work
        work[:, 0].copy_(g)
        torch.mul(self.d, self.t[:, None], out=work[:, 1])  # s = t d
        torch.sub(g, self.g_prev, out=work[:, 2])  # y = g - g_prev
        # the new pair always goes to the row's free slot; whether it counts is decided below
        self.pairs.index_put_((self._rows, head), work[:, 1])
        self.pairs.index_put_((self._rows, head + slots), work[:, 2])
        vectors = work.transpose(1, 2)  # (B, n, 3)
        if live == slots:
            dots = torch.bmm(self.pairs, vectors)  # (B, 2 * slots, 3): [S; Y] . (g, s, y)
        else:  # the unused slots are zeros: their products are too
            dots = torch.zeros(rows, 2 * slots, 3, device=g.device, dtype=g.dtype)
            dots[:, :live] = torch.bmm(self.pairs[:, :live], vectors)
            dots[:, slots:slots + live] = torch.bmm(self.pairs[:, slots:slots + live], vectors)
        self._gs, self._gy = dots[:, :slots, 0], dots[:, slots:, 0]  # s_i . g, y_i . g
        column = head.view(rows, 1, 1).expand(rows, slots, 1)
        row = head.view(rows, 1, 1).expand(rows, 1, slots)
        self.sy.scatter_(2, column, dots[:, :slots, 2:3])  # s_i . y_new
        self.sy.scatter_(1, row, dots[:, slots:, 1].unsqueeze(1))  # s_new . y_j
        self.yy.scatter_(2, column, dots[:, slots:, 2:3])
        self.yy.scatter_(1, row, dots[:, slots:, 2].unsqueeze(1))
        new = dots.gather(1, (head + slots).view(rows, 1, 1).expand(rows, 1, 3))[:, 0]  # y_new . (g, s_new, y_new)
        ys, yy = new[:, 1], new[:, 2]
        accept = ys > CURVATURE_EPS
        self.ro.scatter_(1, head[:, None], torch.where(accept, ys.reciprocal(), torch.zeros_like(ys))[:, None])
        following = torch.remainder(head + 1, slots)
        # accepting frees the next slot: the oldest pair when the ring is full, an unused slot before
        kept = self.ro.gather(1, following[:, None])[:, 0]
        self.ro.scatter_(1, following[:, None], torch.where(accept, torch.zeros_like(ys), kept)[:, None])
        self.h_diag.copy_(torch.where(accept, ys / yy, self.h_diag))
        self.head.copy_(torch.where(accept, following, head))

    def _direction(self, g: torch.Tensor) -> None:
        """The two-loop recursion of torch's LBFGS as two triangular solves over the pairs' dot products,
        per row; the direction is written into self.d."""
        slots, rows = self.slots, self.d.shape[0]
        order = torch.remainder(self.head[:, None] - self._ages, slots)  # (B, slots): slot of the k-th newest pair
        ro = self.ro.gather(1, order)
        used = ro != 0
        mask = used[:, :, None] & used[:, None, :]
        by_rows = order[:, :, None].expand(rows, slots, slots)
        by_cols = order[:, None, :].expand(rows, slots, slots)
        sy = torch.where(mask, self.sy.gather(1, by_rows).gather(2, by_cols), 0.0)
        yy = torch.where(mask, self.yy.gather(1, by_rows).gather(2, by_cols), 0.0)
        gs = torch.where(used, self._gs.gather(1, order), 0.0)
        gy = torch.where(used, self._gy.gather(1, order), 0.0)
        # first loop, newest to oldest: a_k = ro_k s_k . (-g - sum_{l newer} a_l y_l)
        lower = self._eye + ro[:, :, None] * torch.tril(sy, -1)
        alpha = torch.linalg.solve_triangular(lower, (-ro * gs)[:, :, None], upper=False, unitriangular=True)[..., 0]
        # r0 = H0 q with q = -g - sum a_l y_l; y_k . r0 from the dot products
        y_r0 = self.h_diag[:, None] * (-gy - torch.bmm(yy, alpha[:, :, None])[..., 0])
        # second loop, oldest to newest: c_k = a_k - ro_k y_k . (r0 + sum_{l older} c_l s_l)
        upper = self._eye + ro[:, :, None] * torch.triu(sy.transpose(1, 2), 1)
        c = torch.linalg.solve_triangular(upper, (alpha - ro * y_r0)[:, :, None], upper=True,
                                          unitriangular=True)[..., 0]
        # d = H0 (-g - sum a_l y_l) + sum c_l s_l, in slot order for one product with [S; Y]
        coeffs = torch.zeros(rows, 2 * slots, device=g.device, dtype=g.dtype)
        coeffs.scatter_(1, order, c)
        coeffs.scatter_(1, order + slots, -self.h_diag[:, None] * alpha)
        live = self._live()
        d = torch.mul(g, -self.h_diag[:, None], out=self.d).unsqueeze(1)  # (B, 1, n), a view of self.d
        if live == slots:
            d.baddbmm_(coeffs.unsqueeze(1), self.pairs)
        else:
            d.baddbmm_(coeffs[:, None, :live], self.pairs[:, :live])
            d.baddbmm_(coeffs[:, None, slots:slots + live], self.pairs[:, slots:slots + live])

    def _live(self) -> int:
        """Slots that may hold a pair: the step-th call has written at most `steps` pairs, from slot 0."""
        return self.slots if self.static else min(self.steps, self.slots)
