"""`styleengine tune`: run auto's trial now and show the table it chose from (engine/autotune.py)."""
from __future__ import annotations

import functools
import os
import sys

from typing import Any

from styleengine import paths
from styleengine.cli_settings import settings_from, with_settings
from styleengine.errors import printable
from styleengine.engine.settings import RUN

# what a trial depends on; the loss weights and the schedule do not change which step is fastest
TUNED = ("size", "model", "weights", "pooling", "seed", "device", "backend", "provider", "precision", "conv")


def _tune(**flags: Any) -> None:
    """Time every candidate `auto` may pick for runs of this size here, keep the choice, print the table."""
    from rich.table import Table

    from styleengine.console import Console, say, warnings_on

    from styleengine.engine import autotune
    from styleengine.engine.autotune import choose, record_path, size_class, trial_side, tuning_enabled
    from styleengine.units import fmt_time

    settings = settings_from(flags, RUN)
    size, model = settings.size, settings.model
    settings.validate()
    tuning_enabled()  # a STYLEENGINE_TUNE it cannot read is said now, not after the timing
    # what tune measures is kept in the cache: a folder that cannot take it is said now, not after the timing
    paths.check_cache_dir(record_path().parent, "STYLEENGINE_CACHE_DIR")
    from styleengine.engine.stylise import check_weights

    check_weights(settings)  # a file the trial could not load is said before "timing", not after it
    # what this machine cannot run (fp16 on ONNX Runtime's CPU provider, a missing GPU) is said alone, before
    # "timing", as run says it
    machine = autotune.probe()
    where, _ = autotune.open_options(settings, machine)
    console = Console(stderr=True, markup=False)
    with warnings_on(console):  # the engine's warnings as "warning:" lines, escaped
        console.print(f"timing the candidates for {model} at {size} px (size class {size_class(size)}) ...",
                      highlight=False)
        if (settings.precision == "auto" and where.place == "cpu" and not machine.bf16
                and settings.backend in ("auto", "torch")):  # a row the table leaves out, said
            console.print("bf16 is not timed: this CPU has no bf16 units (AMX, AVX-512 BF16), and emulated it is "
                          "never faster than fp32 (--precision bf16 runs it)", highlight=False, soft_wrap=True)
        # asked for: the graphs auto's trial would skip as over its budget are exported now
        choice = choose(settings, refresh=True, tune=True, measure=functools.partial(autotune.measure_candidates,
                                                                                    export_all=True))
        from styleengine.cli import signals

        signals.hold()  # the measuring is done: a signal from here is said with the last lines, none after them
        kept = f"what was measured is kept in {record_path()}" if choice.kept else "nothing was kept"

        def last() -> None:
            picked = (choice.settings.backend, choice.settings.precision, choice.settings.conv)
            if choice.trials:
                side = trial_side(size, "cuda" if choice.settings.device.startswith("cuda") else "cpu")
                table = Table(title=f"step time on a {side} px picture, median of interleaved rounds")
                for column in ("candidate", "median", "rounds", "status", "note"):
                    table.add_column(column)
                for t in sorted(choice.trials, key=lambda t: t.median):
                    mark = " (chosen)" if (t.backend, t.precision, t.conv) == picked else ""
                    table.add_row(t.label + mark, fmt_time(t.median) if t.seconds else "-",
                                  " ".join(fmt_time(s) for s in t.seconds), t.status, t.note)
                Console(file=sys.stdout, markup=False).print(table)
            say(printable(f"auto: {choice.why}"))
            if choice.kept:
                console.print(f"kept in {record_path()}", highlight=False, soft_wrap=True)
                if not tuning_enabled():  # asked for, so measured; but the runs here would never read it
                    console.print(f"warning: STYLEENGINE_TUNE={os.environ.get('STYLEENGINE_TUNE')}: runs here pick by "
                                  f"rule and read this only once it is unset", highlight=False)
            # not kept (choice.measured, not choice.kept): autotune's warning has said why, once

        signals.end(last, kept)


tune = with_settings(_tune, RUN, TUNED)
