"""Process settings the command line applies before torch loads (torch-free, like errors and choices)."""
from __future__ import annotations

import os
import sys


def passive_openmp() -> None:
    """OpenMP threads that sleep when idle (OMP_WAIT_POLICY=PASSIVE, unless the user set a policy), set
    before torch loads libgomp. The Winograd torch step alternates NNPACK's thread pool with OpenMP's
    (oneDNN on small maps, Grams, ReLUs), and OpenMP's spinning workers took the cores NNPACK needed:
    0.382 vs 0.317 s a step at 192x256 on 2 cores. A process that runs one pool is unaffected (the naive
    loop: 0.423 vs 0.422 s)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def no_onnxruntime_telemetry() -> None:
    """ONNX Runtime 1.29+ on Linux writes a device id under ~/.cache/Microsoft, a session file in $TMPDIR and
    uploads usage events as it is imported: a style transfer writes its outputs and its cache only. Off unless the
    user set ORT_DISABLE_TELEMETRY (0 turns it back on); set before onnxruntime loads."""
    if "onnxruntime" not in sys.modules:
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
