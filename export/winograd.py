"""Winograd F(4x4, 3x3) convolutions in standard ONNX ops (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016), for fp32 graphs on ONNX Runtime's CPU provider.

ONNX Runtime's CPU convolutions run near the CPU's fp32 peak, so the direct
step cannot get much faster; Winograd does 4x fewer multiplications. Per
6x6 input tile d (stride 4) and 3x3 kernel w, the 4x4 output tile is
A^T [(G w G^T) * (B^T d B)] A. In ONNX:

  input transform   Pad, then Conv with the 36 kernels B^T[i]^T B^T[j] (6x6, stride 4, one group per channel)
  products          MatMul (36, Cout, Cin) x (36, Cin, tiles): 36 GEMMs, where the time goes
  output transform  MatMul (16, 36) x (36, Cout * tiles), DepthToSpace to (1, Cout, H, W), Slice

Measured one layer at a time on a 2-core AVX-512 CPU (ORT 1.31, 384x512 image):
0.45x the direct Conv's time at 512 channels (48x64), 0.60x at 256 (96x128),
0.87x at 128 (192x256), 1.38x at 64 (384x512: the transforms' memory traffic
costs more than the products save), so only convolutions with at least
MIN_CHANNELS input and output channels use it. Rounding: ~2e-6 from float64
per layer (rel L2), where the direct convolution is ~2e-7.

The transformed kernels G w G^T are 4x the weights (+300 MB for VGG19 with
the backward's), so the graph keeps w once, flattened (9, Cout * Cin), and
computes them each run (one small GEMM per layer, a few ms in all); the
session must not fold them back into constants (ort_step turns ONNX
Runtime's constant folding and prepacking off for these graphs).
The input gradient is the same convolution with w flipped and in/out
swapped: G w_flipped G^T = (G J) w (G J)^T, J the flip, so both passes read
the same flat weights.
"""
from __future__ import annotations

import numpy as np

MIN_CHANNELS = 128

BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)


def applies(conv: str, in_channels: int, out_channels: int) -> bool:
    return conv == "winograd" and min(in_channels, out_channels) >= MIN_CHANNELS


def _kron(m: np.ndarray) -> np.ndarray:
    """(r, c) -> (r*r, c*c): row i*r+j is the outer product of rows i and j, flattened."""
    return np.einsum("iu,jv->ijuv", m, m).reshape(m.shape[0] ** 2, m.shape[1] ** 2)


def flat_weights(w: np.ndarray) -> np.ndarray:
    """(Cout, Cin, 3, 3) -> (9, Cout * Cin), the layout the kernel transform multiplies."""
    return np.ascontiguousarray(w.reshape(w.shape[0] * w.shape[1], 9).T)


def conv(g, x: str, flat: str, out_channels: int, in_channels: int, hint: str, *, backward: bool = False,
         scale: float = 1.0, bias: np.ndarray | None = None) -> str:
    """Emit y = conv3x3(x, w) + bias (padding 1) or, with `backward`, the input gradient conv3x3(x, w flipped,
    in/out swapped) * scale, for x (1, C, H, W) of any H, W. `flat`: the initializer flat_weights(w) of the
    forward convolution (out_channels, in_channels, 3, 3)."""
    i64 = np.int64
    n_in, n_out = (out_channels, in_channels) if backward else (in_channels, out_channels)
    transform = G[:, ::-1] if backward else G  # G J: the flip
    kernels = g.shared(f"winograd.g{'b' if backward else 'f'}{scale:g}", lambda: _kron(transform) * scale)
    u = g.op("MatMul", [kernels, flat], f"{hint}_wu")  # (36, Cout * Cin)
    u = g.op("Reshape", [u, g.const([36, out_channels, in_channels], f"{hint}_ushape", i64)], f"{hint}_u")
    if backward:
        u = g.op("Transpose", [u], f"{hint}_ut", perm=[0, 2, 1])  # (36, Cin, Cout): in/out swapped
    # tiles: ceil(H / 4) x ceil(W / 4); the input padded by 1 and up to whole tiles
    hw = g.op("Slice", [g.op("Shape", [x], f"{hint}_shape"), g.const([2], "i2", i64), g.const([4], "i4", i64)],
              f"{hint}_hw")
    tiles = g.op("Div", [g.op("Add", [hw, g.const([3, 3], "three2", i64)], f"{hint}_hw3"),
                         g.const([4, 4], "four2", i64)], f"{hint}_tiles")
    padded = g.op("Mul", [tiles, g.const([4, 4], "four2", i64)], f"{hint}_padded")
    end_pads = g.op("Add", [g.op("Sub", [padded, hw], f"{hint}_extra"), g.const([1, 1], "one2", i64)],
                    f"{hint}_endpads")
    pads = g.op("Concat", [g.const([0, 0, 1, 1, 0, 0], "pads_begin", i64), end_pads], f"{hint}_pads", axis=0)
    xp = g.op("Pad", [x, pads], f"{hint}_xp")
    input_kernels = g.shared(f"winograd.bt{n_in}", lambda: np.tile(
        np.einsum("iu,jv->ijuv", BT, BT).reshape(36, 1, 6, 6), (n_in, 1, 1, 1)))
    v = g.op("Conv", [xp, input_kernels], f"{hint}_v", kernel_shape=[6, 6], strides=[4, 4], group=n_in)
    v = g.op("Reshape", [v, g.const([n_in, 36, -1], f"{hint}_vshape", i64)], f"{hint}_v3")
    v = g.op("Transpose", [v], f"{hint}_vt", perm=[1, 0, 2])  # (36, Cin, tiles)
    m = g.op("MatMul", [u, v], f"{hint}_m")  # (36, Cout, tiles)
    m = g.op("Reshape", [m, g.const([36, -1], "m_flat", i64)], f"{hint}_m2")
    o = g.op("MatMul", [g.shared("winograd.at", lambda: _kron(AT)), m], f"{hint}_o")  # (16, Cout * tiles)
    # (16 Cout, tiles_h, tiles_w), channel p*4*Cout + q*Cout + c -> (Cout, 4 tiles_h, 4 tiles_w): DepthToSpace's
    # DCR order (half the time of the equivalent 5-d Transpose in ORT 1.31)
    o = g.op("Reshape", [o, g.op("Concat", [g.const([1, 16 * n_out], f"{hint}_oshape", i64), tiles], f"{hint}_os",
                                  axis=0)], f"{hint}_o4")
    o = g.op("DepthToSpace", [o], f"{hint}_o4x4", blocksize=4, mode="DCR")
    y = g.op("Slice", [o, g.const([0, 0], "zeros2", i64), hw, g.const([2, 3], "axes23", i64)], f"{hint}_y")
    if bias is not None:
        y = g.op("Add", [y, g.weight(bias.reshape(1, -1, 1, 1), f"{hint}.bias")], f"{hint}_yb")
    return y
