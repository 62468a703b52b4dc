"""Issue 23, stop 50: probe 49's minor findings left open and probe 50's (on a818815)."""
from __future__ import annotations

import pytest

from styleengine.engine.plan import TooThin, make_plan
from styleengine.engine.settings import Settings


def _refusal(settings: Settings, content: tuple[int, int] | None, styles: list[tuple[int, int]]) -> TooThin | None:
    try:
        make_plan(settings, content, styles, memory=2**34)
    except TooThin as e:
        return e
    return None


@pytest.mark.parametrize("style_scale", [1.0, 0.5])
def test_a_start_size_refusal_names_the_size_every_image_needs(style_scale):
    """`--start-size 32` for a 451x300 content and a 1024x640 style advised `--start-size 49` for the content;
    following it was refused for the style, which needed more (probe 49b, 3). The advice is the size both need,
    and the smallest: one less is refused."""
    content, style = (300, 451), (640, 1024)

    def at(start: int) -> Settings:
        return Settings(size=256, scales=2, start_size=start, style_scale=style_scale, iterations=4)

    refused = _refusal(at(32), content, [style])
    assert refused is not None and refused.knob == "--start-size", refused
    assert "style image 1 one of" in str(refused) and f"(--start-size {refused.needed})" in str(refused), refused
    assert _refusal(at(refused.needed), content, [style]) is None
    assert _refusal(at(refused.needed - 1), content, [style]) is not None


def test_a_thin_images_needed_side_is_the_smallest_that_works():
    """The long side a thin image is told it needs is the smallest one kept (a 150x40 image needs 119 px: the
    rounding of its short side; it was told 120)."""
    settings = Settings(size=119, iterations=4, scales=1)
    assert _refusal(settings, (40, 150), [(512, 512)]) is None
    refused = _refusal(Settings(size=118, iterations=4, scales=1), (40, 150), [(512, 512)])
    assert refused is not None and refused.needed == 119, refused


def test_of_thin_styles_the_one_that_needs_most_is_named():
    """Two thin styles: the refusal names the one that needs the larger side, so following it is not refused
    for the other."""
    refused = _refusal(Settings(size=64, iterations=4, scales=1), (64, 64), [(40, 100), (40, 300)])
    assert refused is not None and "style image 2" in str(refused) and refused.needed == 237, refused


@pytest.mark.parametrize("size", [40, 256])
def test_a_thin_style_upload_is_told_a_style_scale_that_is_taken(tmp_path, size):
    """A style too thin at the server's first scale was told "send a larger style_scale", with no number, and a
    thin one at the size "send a larger size x style_scale", a field no form has (probe 49a, 12). It is told the
    style_scale that works, and a second request with it is taken."""
    pytest.importorskip("fastapi")
    import dataclasses

    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png
    from styleengine.serve.app import Config, create_app

    settings = dataclasses.replace(SETTINGS, size=size)
    config = Config(settings=settings.resolved(), root=tmp_path / "srv", max_size=512, max_iters=50)
    parts = files(png(64, 64), png(40, 200))
    with TestClient(create_app(config)) as client:
        response = client.post("/api/jobs", files=parts)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "crop the image or send a style_scale of at least " in detail and "--" not in detail, detail
        scale = detail.rsplit(" ", 1)[1]
        again = client.post("/api/jobs", files=parts, data={"style_scale": scale, "iters": "1"})
        assert again.status_code == 202, again.text
        lower = client.post("/api/jobs", files=parts, data={"style_scale": f"{float(scale) - 0.01:g}"})
        assert lower.status_code == 422, lower.text


@pytest.mark.parametrize("command", ["batch", "video"])
def test_a_signal_while_ray_starts_is_said_as_it_comes(tmp_path, monkeypatch, capsys, command):
    """A signal while `--ray auto` started its cluster was said once ray.init returned, then once Ray had shut
    that cluster down: 5-7 s after it came (probe 49b, 1). ray.init still holds it (Ray's handlers would take
    it), but the line is said as it comes; the exit follows the shutdown, with the signal's code."""
    import json
    import os
    import signal
    import sys
    import types

    try:
        from test_cli import run_cli
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_probe13 import FAST, _pictures
    from styleengine.engine import batch_ray

    _pictures(tmp_path)
    seen = {}

    def init(**kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        seen["init returns"] = sys.stderr.getvalue()  # what the user has read by the time ray.init is done

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init, cluster_resources=lambda: {"CPU": 2},
                                 remote=lambda **kw: lambda body: None, kill=lambda actor: None,
                                 shutdown=lambda: seen.setdefault("shutdown", sys.stderr.getvalue()))
    monkeypatch.setattr(batch_ray, "import_ray", lambda: fake)
    monkeypatch.setattr(batch_ray, "check_address", lambda address, connect=True: None)
    if command == "batch":
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(json.dumps({"content": "c.png", "style": "s.png"}) + "\n")
        args = ["batch", jobs, "--out", tmp_path / "out"]
        line = "error: interrupted (SIGTERM) with 1 of 1 jobs left"
    else:
        pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
        import numpy as np

        from styleengine.benchmarks.video_clips import write_clip

        write_clip(tmp_path / "in.mp4", [np.full((40, 48, 3), v / 8, np.float32) for v in range(3)], fps=12)
        args = ["video", tmp_path / "in.mp4", tmp_path / "s.png", "-o", tmp_path / "o.mp4"]
        line = "error: interrupted (SIGTERM) before the first frame; nothing written"
    code, _, err = run_cli(monkeypatch, capsys, *args, *FAST, "--ray", "auto")
    assert code == 143 and line in seen["init returns"] and line in seen["shutdown"], (seen, err)
    assert err.count("interrupted") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("name, body, words", [
    ("w.safetensors", "torch", "is a PyTorch checkpoint, not a safetensors file; name it .pth"),
    ("w.pth", "safetensors", "is a safetensors file, not a PyTorch checkpoint; name it .safetensors"),
    ("w.safetensors", '{"features.0.weight": [1, 2]}', "is text (JSON, or a protocol-0 pickle), not a safetensors"),
    ("w.safetensors", "(dp0\nS'a'\np1\n.", "is text (JSON, or a protocol-0 pickle), not a safetensors")])
def test_a_dry_run_tells_weights_named_as_another_kind_as_the_run_does(tmp_path, monkeypatch, capsys, name, body,
                                                                       words):
    """`--dry-run` read no weights' bytes, so a checkpoint named .safetensors passed it and the run refused it;
    a JSON file or a protocol-0 pickle named .safetensors read "header too large" (probe 48a, 9). The dry run
    reads the first bytes, and both say what the file is, in one line."""
    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
        from test_reliability_probe13 import _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_probe13 import _pictures
    import torch
    from safetensors.torch import save_file

    _pictures(tmp_path)
    path = tmp_path / name
    state = {"features.0.weight": torch.zeros(2, 3, 3, 3)}
    if body == "torch":
        torch.save(state, path)
    elif body == "safetensors":
        save_file(state, str(path))
    else:
        path.write_text(body)
    for dry in (["--dry-run"], []):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", "--size", "40", "--iters", "1", "--model", "vgg16",
                               "--weights", path, *dry)
        assert words in one_error_line(code, err), (dry, err)
    assert not (tmp_path / "o.png").exists()


TRACE_LINE = '{"iteration": 1, "loss": 2.0, "content_loss": 1.0, "style_loss": 1.0, "tv_loss": 0.0, "seconds": 0.1}\n'


def _archived_trace(folder, mode: int = 0o600):
    """An earlier trace in `folder` with a second name (an archive's hard link)."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t.jsonl").write_text(TRACE_LINE)
    os.chmod(folder / "t.jsonl", mode)
    os.link(folder / "t.jsonl", folder / "archive.jsonl")
    return folder / "t.jsonl"


@pytest.mark.parametrize("where", ["shm", "proc"])
def test_a_trace_in_a_folder_under_dev_or_proc_keeps_its_other_hard_links(tmp_path, monkeypatch, where):
    """Any name under /dev/ or /proc/ was written through as a stream is: a trace in /dev/shm (a folder users keep
    files in) or named /proc/self/cwd/t.jsonl truncated its archive's hard link (probe 50a, 1). Only a
    descriptor's name (/dev/stdout, /dev/fd/N) is."""
    import os
    import tempfile

    from styleengine.cli_job import TraceWriter

    if where == "shm":
        if not os.access("/dev/shm", os.W_OK):
            pytest.skip("no writable /dev/shm here")
        folder = __import__("pathlib").Path(tempfile.mkdtemp(dir="/dev/shm"))
        monkeypatch.setattr("styleengine.paths.check_writable", lambda *a, **k: None)  # its free space is not ours
        name = folder / "t.jsonl"
    else:
        folder = tmp_path
        monkeypatch.chdir(folder)
        name = __import__("pathlib").Path("/proc/self/cwd/t.jsonl")
    try:
        _archived_trace(folder)
        trace = TraceWriter(name)
        trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
        trace.close()
        assert (folder / "archive.jsonl").read_text() == TRACE_LINE
        assert (folder / "t.jsonl").read_text() == '{"iteration": 1, "loss": 1.5}\n'
    finally:
        if where == "shm":
            import shutil

            shutil.rmtree(folder)


def test_a_replaced_trace_keeps_its_mode_whatever_the_umask(tmp_path):
    """A group-writable 664 trace with another hard link became 644: os.open's mode went through the umask
    (probe 50a, 2)."""
    import os

    from styleengine.cli_job import TraceWriter

    path = _archived_trace(tmp_path, 0o664)
    old = os.umask(0o022)
    try:
        trace = TraceWriter(path)
        trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
        trace.close()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o7777 == 0o664 and path.stat().st_nlink == 1
    assert (tmp_path / "archive.jsonl").read_text() == TRACE_LINE


@pytest.mark.parametrize("linked", [False, True])
def test_a_trace_a_full_disk_refuses_removes_its_file_not_the_users_link(tmp_path, monkeypatch, linked):
    """A trace named through a link whose first line a full disk refused: the user's link was removed and the
    empty file left (probe 50a, 10). The file the trace opened is what goes."""
    import errno

    from styleengine.cli_job import TraceWriter

    (tmp_path / "full").mkdir()
    target = tmp_path / "full" / "t.jsonl"
    target.write_text(TRACE_LINE)
    if linked:
        (tmp_path / "lk.jsonl").symlink_to(target)
    real = TraceWriter._open

    class Full:
        def __init__(self, file):
            self.file = file

        def write(self, text):
            return self.file.write(text)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.file.close()

    monkeypatch.setattr(TraceWriter, "_open", lambda self: Full(real(self)))
    trace = TraceWriter(tmp_path / "lk.jsonl" if linked else target)
    trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
    trace.close()
    assert "No space left on device" in trace.failure
    assert not target.exists()
    assert (tmp_path / "lk.jsonl").is_symlink() == linked


@pytest.mark.parametrize("change, lock, says", [
    ("replaced", False, "another file was put in its place during the run (not appended to"),
    ("removed", False, "it is not there any more (removed during the run, with its lines)"),
    ("replaced", True, "manifest.jsonl is not the manifest written (replaced during the run)"),
    ("link", False, "it is a symbolic link (put there during the run; not followed)")])
def test_a_manifest_replaced_or_removed_during_a_batch_is_not_appended_to(tmp_path, monkeypatch, capsys, change,
                                                                          lock, says):
    """A user's file put at the manifest's name during a batch (its lock kept) was appended to, the run's first line
    lost with it, and the batch said "3 ok"; one removed was made again with the later lines only (probe 50a, 5).
    With the lock removed too, the batch said "its lines so far are in manifest.jsonl", the user's file (6); a link
    put there read "Too many levels of symbolic links" (7). The line is refused, the picture kept elsewhere."""
    try:
        from test_reliability_batch import one_error_line
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_stop43 import three_jobs_batch
    from styleengine.engine import batch as engine

    real, seen, out = engine.record, [], tmp_path / "out"

    def record(*args, **kwargs):
        if len(seen) == 1:
            (out / "manifest.jsonl").unlink()
            if change == "replaced":
                (out / "manifest.jsonl").write_text("my notes\n")
            elif change == "link":
                (out / "manifest.jsonl").symlink_to(tmp_path / "mine.txt")
            if lock:
                (out / ".batch.lock").unlink()
        seen.append(1)
        return real(*args, **kwargs)

    (tmp_path / "mine.txt").write_text("mine\n")
    monkeypatch.setattr(engine, "record", record)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert says in one_error_line(code, err), err
    assert (tmp_path / "mine.txt").read_text() == "mine\n"
    if change == "replaced":
        assert (out / "manifest.jsonl").read_text() == "my notes\n"
    if change == "removed":
        assert not (out / "manifest.jsonl").exists()


def test_a_servers_manifest_removed_by_hand_is_made_again(tmp_path):
    """A server goes on where a batch stops: its manifest removed while it runs is made again by the next line."""
    from styleengine.engine.manifest import Manifest

    manifest = Manifest(tmp_path / "manifest.jsonl", remade=True)
    manifest.repair()
    manifest.append({"id": "a"})
    (tmp_path / "manifest.jsonl").unlink()
    manifest.append({"id": "b"})
    assert (tmp_path / "manifest.jsonl").read_text() == '{"id": "b"}\n'
    (tmp_path / "manifest.jsonl").unlink()
    (tmp_path / "manifest.jsonl").write_text("my notes\n")
    with pytest.raises(Exception, match="another file was put in its place"):
        manifest.append({"id": "c"})


def _vgg16_state():
    import torch

    from styleengine.model.vgg import conv_weight_keys

    return {key: torch.randn(shape) * 0.1 for key, (_, shape) in conv_weight_keys("vgg16").items()}


@pytest.mark.parametrize("kind, words", [
    ("meta", "features.0.weight (conv1_1) holds no data (a tensor on the 'meta' device)"),
    ("sparse", "features.0.weight (conv1_1) is a sparse tensor (torch.sparse_coo)"),
    ("quantized", "features.0.weight (conv1_1) is quantized (torch.qint8)"),
    ("complex", "features.0.weight (conv1_1) is complex64, not a real floating-point tensor"),
    ("bool", "features.0.weight (conv1_1) is bool, not a real floating-point tensor"),
    ("int", "features.0.bias (conv1_1) is int64, not a real floating-point tensor")])
def test_weights_whose_tensors_are_no_real_numbers_are_one_line(tmp_path, monkeypatch, capsys, kind, words):
    """A checkpoint with a tensor on the meta device (saved from a model built under torch.device("meta")), a
    sparse or a quantized one ended run, export, batch and serve in a traceback; complex and bool weights ran,
    the imaginary part dropped without a word (probe 50b, 6 and 7). Each is one line naming the key."""
    import torch

    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
        from test_reliability_probe13 import _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_probe13 import _pictures

    _pictures(tmp_path)
    state = _vgg16_state()
    first = state["features.0.weight"]
    if kind == "meta":
        state["features.0.weight"] = torch.empty(first.shape, device="meta")
    elif kind == "sparse":
        state["features.0.weight"] = first.to_sparse()
    elif kind == "quantized":
        state["features.0.weight"] = torch.quantize_per_tensor(first, 0.01, 0, torch.qint8)
    elif kind == "complex":
        state["features.0.weight"] = torch.complex(first, torch.ones_like(first))
    elif kind == "bool":
        state["features.0.weight"] = first > 0
    else:
        state["features.0.bias"] = torch.ones(64, dtype=torch.int64)
    torch.save(state, tmp_path / "w.pth")
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", tmp_path / "o.png",
                           "--size", "40", "--iters", "1", "--model", "vgg16", "--weights", tmp_path / "w.pth",
                           "--backend", "torch")
    assert words in one_error_line(code, err) and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists()


def test_a_torchscript_archive_as_weights_is_told_what_it_is(tmp_path):
    """A TorchScript archive gave torch's warning and its advice to re-run torch.load with weights_only=False,
    neither of which a user of the command can follow (probe 50b, 8)."""
    import warnings

    import torch

    from styleengine.errors import UserError
    from styleengine.model.weights import read_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's own deprecation, not what is tested
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Identity())), str(tmp_path / "jit.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of torch's on the way
        with pytest.raises(UserError, match=r"is a TorchScript archive \(torch.jit.save\), not a checkpoint"):
            read_checkpoint(tmp_path / "jit.pth")


@pytest.mark.parametrize("change", ["mine", "removed"])
def test_bench_stopped_by_a_signal_says_its_rows_are_not_kept_where_its_json_is_not_its_own(
        tmp_path, monkeypatch, capsys, change, machine_once):
    """A user's file put at --json after the first row (kept, rightly), or the file removed, then a signal: bench
    said the file "holds the 1 row done" (probe 50a, 9). It says the rows are not kept."""
    import os
    import signal

    try:
        from test_reliability_stop47 import bench_of_two_sizes
    except ModuleNotFoundError:
        from tests.test_reliability_stop47 import bench_of_two_sizes

    path = tmp_path / "g.json"

    def mine_then_signal():  # the first row's partial document is there
        path.unlink()
        if change == "mine":
            path.write_text('{"name": "my package"}\n')
        os.kill(os.getpid(), signal.SIGTERM)

    code, err = bench_of_two_sizes(monkeypatch, capsys, mine_then_signal, "--json", path)
    assert code == 143, err
    assert err.strip().splitlines()[-1] == (f"error: interrupted (SIGTERM); {path} no longer holds the 1 row done "
                                            f"(removed or replaced during the run): not kept"), err
    assert path.exists() == (change == "mine")


@pytest.mark.parametrize("change, says", [
    ("blank", None),
    ("replaced", "was replaced after the batch had read it; the same command runs the jobs it holds now"),
    ("rewritten", "was rewritten after the batch had read it"),
    ("failed", "got a line after the batch had read it to its end"),
    ("shorter", "was rewritten after the batch had read it; the same command runs the jobs it holds now"),
    ("cut at a line's end", None),
    ("cut within a line", None),
    ("shorter without its newline", "was rewritten after the batch had read it")])
def test_what_became_of_a_jobs_file_after_its_read_is_said_as_it_is(tmp_path, monkeypatch, capsys, change, says):
    """The end said "grew by 6 bytes ... runs the jobs added" for blank lines, and for a file replaced by a longer
    one (probe 50a, 8); it said nothing where a job failed (13). A queue emptied and refilled with `>` after the
    read (one new job, shorter than the three read) was said nothing, its job never run, exit 0: a shorter file was
    taken as cut short (probe 52a, 2); its whole lines are now compared with those read, and a cut, at a line's end
    or within one, is still no word."""
    import os

    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch
    from styleengine.engine import batch as engine

    real, seen, jobs = engine.record, [], tmp_path / "j.jsonl"

    def record(*args, **kwargs):
        if not seen:
            text = jobs.read_text()
            if change == "blank":
                jobs.write_text(text + "\n   \n\n")
            elif change == "replaced":
                (tmp_path / "new.jsonl").write_text(text + text.replace(".png\"}", "2.png\"}"))
                os.replace(tmp_path / "new.jsonl", jobs)
            elif change == "rewritten":
                with open(jobs, "r+") as f:
                    f.write(text.replace("a.png", "z.png") + "\n")
            elif change != "failed":
                first = text.index("\n") + 1
                jobs.write_text({"shorter": '{"content": "c.png", "styles": ["s.png"], "output": "n.png"}\n',
                                 "shorter without its newline": '{"content": "c.png", "styles": ["s.png"]}',
                                 "cut at a line's end": text[:first], "cut within a line": text[:first + 9]}[change])
            else:
                with open(jobs, "a") as f:
                    f.write('{"content": "c.png", "styles": ["s.png"], "output": "q.png"}\n')
                (tmp_path / "s.png").write_bytes(b"not a picture now")  # the next job fails
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == (1 if change == "failed" else 0), err
    if says is None:
        assert "warning: " + str(jobs) not in err, err
    else:
        assert err.strip().splitlines()[-1].startswith(f"warning: {jobs} {says}"), err
    assert "/3]" in err and "[4/3]" not in err


@pytest.mark.parametrize("body, ours", [
    (TRACE_LINE + "\0" * 100 + 'ss": 0.5, "seconds": 0.1}\n' + TRACE_LINE, True),  # a block lost mid-line
    ("\0" * 4096 + '": 0.1}\n' + TRACE_LINE, True),
    ("\0" * 4096, True),  # a power cut before any line reached the disk
    ("\0" * (2 << 20), False),  # a disk image's zeros
    ("\0" * 100 + "\n" + "my notes\n", False)])
def test_a_power_cuts_nuls_pass_in_a_trace_and_nowhere_else(tmp_path, body, ours):
    """NULs ending mid-line (a lost block's, then the torn rest of a line) made an earlier trace "not a trace"
    (probe 50a, 4); any all-NUL file up to 16 MiB (a zeroed disk image) was blank and replaced, by bench's and
    invert's outputs too (3)."""
    from styleengine import paths

    (tmp_path / "t.jsonl").write_bytes(body.encode())
    assert (paths.not_ours(tmp_path / "t.jsonl", "trace", paths.own_trace) is None) == ours
    assert paths.not_ours(tmp_path / "t.jsonl", "distances", paths.own_distances) is not None


def test_a_fifo_put_at_the_distances_name_during_the_run_is_not_replaced(tmp_path):
    """invert's check before its write took anything not a regular file as its own, and replaced a FIFO put at
    --distances during the run (probe 50a, 12)."""
    import os

    from styleengine import paths

    os.mkfifo(tmp_path / "d.json")
    said = paths.not_ours(tmp_path / "d.json", "distances", paths.own_distances)
    assert said is not None and "FIFO" in said, said


def test_a_damaged_cache_entry_that_cannot_be_moved_aside_is_named(tmp_path, monkeypatch):
    """An immutable (or another user's) damaged entry: the error blamed its writable parent, cache/exports, and
    advised making that writable (probe 50b, 2). It names the entry to remove."""
    import errno
    import os

    from styleengine.export import cache

    folder, staging = tmp_path / "exports" / "key", tmp_path / "exports" / ".build-key"
    folder.mkdir(parents=True)
    staging.mkdir()
    real = os.replace

    def replace(src, dst):
        if os.fspath(src) == os.fspath(folder):
            raise OSError(errno.EPERM, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(cache.os, "replace", replace)
    with pytest.raises(cache.CacheWriteError, match=rf"cannot replace the damaged cache entry {folder} \(Operation "
                                                    r"not permitted\); remove it"):
        cache.publish(staging, folder)
    assert folder.is_dir() and staging.is_dir() and sorted(p.name for p in folder.parent.iterdir()) == [".build-key",
                                                                                                          "key"]


def test_a_file_put_at_the_manifests_name_before_the_first_line_is_not_appended_to(tmp_path, monkeypatch, capsys):
    """A batch that found no manifest took a user's file put at its name before its first line as its own, and
    appended every line to it ("3 ok"; probe 51a, 1)."""
    try:
        from test_reliability_batch import one_error_line
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_stop43 import three_jobs_batch
    from styleengine.engine import batch as engine

    real, out = engine.record, tmp_path / "out"

    def record(*args, **kwargs):
        if not (out / "manifest.jsonl").exists():
            (out / "manifest.jsonl").write_text("my notes\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert "another file was put at its name during the run (not appended to)" in one_error_line(code, err), err
    assert (out / "manifest.jsonl").read_text() == "my notes\n"


def test_a_trace_named_by_a_descriptor_opened_to_append_is_appended_to(tmp_path):
    """`--trace /dev/fd/3 3>>t.jsonl` truncated the earlier trace (its other hard link's too): the name was opened
    again with truncation, not as the shell's `>>` asks (probe 51a, 2)."""
    import os

    from styleengine.cli_job import TraceWriter

    path = _archived_trace(tmp_path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        trace = TraceWriter(__import__("pathlib").Path(f"/dev/fd/{fd}"))
        trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
        trace.close()
    finally:
        os.close(fd)
    assert path.read_text() == TRACE_LINE + '{"iteration": 1, "loss": 1.5}\n'
