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
