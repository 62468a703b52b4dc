"""Issue 23, stop 43: stop 42's named nits and probe 40's findings (on f5d181a)."""
from __future__ import annotations

import errno
import os
import shutil

import pytest


@pytest.mark.parametrize("case", ["removed", "full", "read-only"])
def test_a_cache_folder_that_cannot_take_an_entry_says_what_to_do_for_its_cause(tmp_path, monkeypatch, case):
    """`tune` with its cache folder removed mid-run skipped ORT with "(No such file or directory); free some space"
    (stop 42's nit): the advice follows the cause."""
    from styleengine.export import cache

    real = cache.tempfile.mkdtemp
    folder = tmp_path / "cache" / "exports" / "key"

    def mkdtemp(prefix, dir):
        if case == "removed":  # the user's `rm -r` of the cache between the folder's mkdir and the staging's
            shutil.rmtree(tmp_path / "cache")
            return real(prefix=prefix, dir=dir)
        code = errno.ENOSPC if case == "full" else errno.EROFS
        raise OSError(code, {"full": "No space left on device", "read-only": "Read-only file system"}[case])

    monkeypatch.setattr(cache.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(cache.CacheWriteError) as caught, cache.staging_folder(folder):
        pass
    said = str(caught.value)
    assert said.startswith(f"cannot write in the cache folder {folder.parent} ("), said
    advice = {"removed": "it was removed while this ran; run again",
              "full": "free some space or set STYLEENGINE_CACHE_DIR to another folder",
              "read-only": "make it writable or set STYLEENGINE_CACHE_DIR to a writable folder"}[case]
    assert said.endswith(advice), said


def test_nothing_is_written_outside_the_outputs_and_the_cache_by_onnxruntime(tmp_path):
    """ONNX Runtime 1.29+ wrote a device id and a database under ~/.cache/Microsoft/DeveloperTools and a `.ses` file
    in $TMPDIR as it was imported, even by `run --backend torch` (probe 40b, 1): its telemetry is off unless the user
    turned it on."""
    import subprocess
    import sys

    home, temp = tmp_path / "home", tmp_path / "temp"
    home.mkdir()
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), TMPDIR=str(temp), XDG_CACHE_HOME=str(home / ".cache"))
    subprocess.run([sys.executable, "-c", "import styleengine.engine.ort_step, onnxruntime"], env=env, check=True)
    assert not list(home.rglob("*")) and not list(temp.iterdir())
