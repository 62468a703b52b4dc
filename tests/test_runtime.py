"""Process settings the CLI applies before torch loads (styleengine/runtime.py)."""
from __future__ import annotations

import os
import subprocess
import sys

SHOW = ("import os; from styleengine.runtime import passive_openmp; passive_openmp(); "
        "print(os.environ.get('OMP_WAIT_POLICY'))")


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_openmp_waits_passively_unless_the_user_chose():
    assert _run(SHOW) == "PASSIVE"
    assert _run(SHOW, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's choice stands
    assert _run("import torch; " + SHOW) == "None"  # too late once libgomp is loaded: left alone


def test_the_console_script_sets_it_before_torch():
    code = ("import sys, os; sys.argv = ['styleengine', '--help']\nfrom styleengine.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert _run(code).splitlines()[-1] == "PASSIVE False"
