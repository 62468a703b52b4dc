"""Issue 23, probe 11 (on 6f8deaf): crash consistency, measured. 297 trials of run, batch, video, export, serve and
tune, each sent SIGKILL / SIGTERM / SIGINT / SIGHUP after a seeded random delay, then resumed; outputs, temp files,
manifests, exit codes and exit times checked. The defects it found are tests here."""
from __future__ import annotations

import pytest

from styleengine.engine import trial as trial_mod
from styleengine.engine.settings import Settings


# ------------------------------------------------------------------ D1: a signal during tune's look check

def test_a_signal_during_the_look_check_ends_it_never_a_verdict(vgg16_random):
    """SIGTERM while `tune` ran its look check: the check's loop caught it, the cut-short run's distances made
    bf16 "not keep the look", fp32 was kept in tune.json and tune exited 0 (6 of 6 signals at 12-15 s)."""
    from styleengine.engine.backends import make_step
    from styleengine.engine.losses import LossConfig

    settings = Settings(size=64, model="vgg16", weights="random")
    loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"))
    reference = make_step("torch", vgg16_random, loss, device="cpu", precision="fp32", conv="direct")
    bf16 = make_step("torch", vgg16_random, loss, device="cpu", precision="bf16", conv="direct")

    class Stopped:
        """bf16's step, interrupted on its fourth call: inside the look check's loop, past the first step."""

        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __call__(self, image):
            self.calls += 1
            if self.calls == 4:
                raise KeyboardInterrupt
            return self.inner(image)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(KeyboardInterrupt):
        trial_mod.look_check(Stopped(bf16), reference, "bf16", settings, loss)


# ------------------------------------------------------------------ D3: an export killed mid-way

def test_an_export_removes_staging_folders_no_live_export_owns(tmp_path, monkeypatch, capsys):
    """SIGKILL during `export` left `.styleengine-export-XXXX/` (up to 135 MB) beside the output for good (7 of 10
    kills at 2.4-4.6 s); the next export now removes those whose owner is gone, and keeps a live one's."""
    import os
    import time

    from styleengine import paths
    from styleengine.cli_export import OWNER_LOCK, STAGING_PREFIX, UNOWNED_AGE_S

    try:
        from test_cli import run_cli
        from test_cli_export import NO_CHECK
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_cli_export import NO_CHECK

    dead, live, lockless, young, starting = (tmp_path / f"{STAGING_PREFIX}{name * 12}"  # fresh_folder's names
                                             for name in "abcde")
    for folder in (dead, live, lockless, young, starting):
        folder.mkdir()
        (folder / "step.onnx").write_bytes(b"x" * 1000)
    for folder in (dead, live, starting):  # starting: its lock made, not taken yet (a live export's first moment)
        (folder / OWNER_LOCK).touch()
    old = time.time() - UNOWNED_AGE_S - 10
    for folder in (dead, live, lockless):
        os.utime(folder, (old, old))
    with paths.lock_file(live / OWNER_LOCK) as held:  # another export, still running
        assert paths.try_lock(held, blocking=False)
        code, _, err = run_cli(monkeypatch, capsys, "export", "-o", tmp_path / "out", *NO_CHECK)
        assert code == 0, err
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX))
    assert left == sorted([live.name, young.name, starting.name])
    assert (tmp_path / "out" / "step.onnx").is_file()


# ------------------------------------------------------------------ D4: a signal once the command has returned

def test_a_signal_after_the_command_returned_leaves_its_exit_code(monkeypatch, capsys):
    """A signal right after `export` printed "wrote ..." (or `batch` its summary) made the process exit
    130/129/143 with no message, the work complete: it landed in the interpreter's way out."""
    import os
    import signal

    from styleengine import cli

    def finished(standalone_mode):
        return None  # the command's work is done

    def and_then_a_signal():
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "app", finished)
    monkeypatch.setattr(cli.sys, "exit", lambda code: and_then_a_signal() if code == 0 else pytest.fail(code))
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 0 and capsys.readouterr().err == ""


# ------------------------------------------------------------------ D5: a signal as a temp file is made

@pytest.mark.parametrize("use", ["check_writable", "atomic_write", "check_cache_dir", "folds_names"])
def test_a_signal_as_the_temp_file_is_opened_leaves_no_file(tmp_path, monkeypatch, use):
    """SIGTERM during batch's set-up left an empty `.j06.png.194c9b87.tmp` in --out, and the rerun kept it: the
    signal came between the temp file's open and the `try` that removes it (check_writable; atomic_writer,
    confined_writer, folds_names and the cache folder's write test had the same gap)."""
    import os

    from styleengine import paths

    real_open = os.open

    def open_then_signal(name, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(name, flags, mode, dir_fd=dir_fd)
        if flags & os.O_EXCL:  # the temp file made, its descriptor not yet handed back
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_signal)
    call = {"check_writable": lambda: paths.check_writable(tmp_path / "j06.png", "image"),
            "atomic_write": lambda: paths.atomic_write(tmp_path / "j06.png", b"x"),
            "check_cache_dir": lambda: paths.check_cache_dir(tmp_path),
            "folds_names": lambda: paths.folds_names(tmp_path)}[use]
    with pytest.raises(KeyboardInterrupt):
        call()
    assert list(tmp_path.iterdir()) == []


def test_once_the_command_returned_the_way_out_ignores_signals(monkeypatch):
    """finish() covered the moment before sys.exit only: leaving `installed` put Python's handlers back, so a
    SIGTERM in the interpreter's shutdown still exited 143 silently (review)."""
    import signal

    from styleengine.cli import signals

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with signals.installed(exiting=True):
        signals.finish()
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:  # every one as it was: a SIGHUP left ignored made a later test's server ignore it, as under nohup
        for s, handler in before.items():
            signal.signal(s, handler)
