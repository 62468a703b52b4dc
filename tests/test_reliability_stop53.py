"""Issue 23, stop 53: probe 53's findings (on ba5df50)."""
from __future__ import annotations

import os
import signal

import pytest

HEADER = "content,styles,output\n"


@pytest.mark.parametrize("now, says", [
    (HEADER + "c.png,s.png,z.png", "was rewritten after the batch had read it"),  # as long as the row read
    (HEADER + "c.png,s.png,zz.png", "was rewritten after the batch had read it"),
    (HEADER + "c.png,s.png,a.png\nc.png,s.png,b.png", None),  # cut just before the last newline
    (HEADER + "c.png,s.png,a.png\nc.png,s.p", "was cut short or rewritten after the batch had read it"),
    (HEADER + "c.png,s.png,a.png\n", None)])  # cut at a line's end: a file that ends there
def test_a_csv_jobs_file_rewritten_shorter_without_a_last_newline_is_said(tmp_path, now, says):
    """A CSV jobs file rewritten shorter after its read, its last row with no newline (as spreadsheets and printf
    write it), was taken as cut short: its new job never ran, no word, exit 0 (probe 53a, 2). A row cut within is
    a row too: the end says the file was cut short or rewritten."""
    from styleengine.engine.jobs import iter_jobs

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "j.csv"
    path.write_text(HEADER + "c.png,s.png,a.png\nc.png,s.png,b.png\n")
    read: list = []
    assert len(list(iter_jobs(path, tmp_path / "out", read))) == 2
    with open(path, "r+") as f:  # in place: the same file, as an editor or `>` leaves it
        f.write(now)
        f.truncate()
    said = read[0].since(path)
    assert said == says if says is None else said.startswith(says), said


@pytest.mark.parametrize("read_text, now, says", [
    ('{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "b.png"}\n',
     '{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "b.png"}',
     None),  # the same lines, the last newline cut: nothing new to run
    ('{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "b.png"}',
     '{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "b.p',
     None),  # read without its last newline, then cut within that line
    ('{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "b.png"}',
     '{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "x.pn',
     None),  # a torn line that is another's cannot be told from a cut one: none parses
    ('{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "b.png"}',
     '{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ["s.png"], "output": "x"}',
     "was rewritten after the batch had read it")])
def test_a_jsonl_jobs_file_cut_before_its_last_newline_is_no_rewrite(tmp_path, read_text, now, says):
    """A JSONL jobs file whose last newline was cut was said rewritten (its last line parses), of the very lines
    run; a line read without its newline is kept too, so a shorter one there is told apart."""
    from styleengine.engine.jobs import iter_jobs

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "j.jsonl"
    path.write_text(read_text)
    read: list = []
    assert len(list(iter_jobs(path, tmp_path / "out", read))) == 2
    path.write_text(now)
    said = read[0].since(path)
    assert said == says if says is None else said.startswith(says), said


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_fifo_or_socket_put_at_a_jobs_output_during_a_batch_is_not_replaced(tmp_path, monkeypatch, capsys, kind):
    """`mkfifo out/b.png` after job a's line: the batch wrote b's picture over the FIFO (a socket's listener lost
    its address), exit 0, where `run -o` refuses one put there mid-run and the batch's start fails such a job
    (probe 53a, 3). The job fails, its picture saved aside; the other jobs run."""
    import socket
    import stat

    try:
        from test_reliability_stop43 import _three_jobs
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import _three_jobs

    out, held = tmp_path / "out", []

    def after_record():
        if not held:
            if kind == "fifo":
                os.mkfifo(out / "b.png")
            else:
                listener = socket.socket(socket.AF_UNIX)
                listener.bind(str(out / "b.png"))
                held.append(listener)
            held.append(1)

    try:
        code, err = _three_jobs(tmp_path, monkeypatch, capsys, after_record)
    finally:
        for thing in held:
            if isinstance(thing, socket.socket):
                thing.close()
    test = stat.S_ISFIFO if kind == "fifo" else stat.S_ISSOCK
    assert code == 1 and test(os.lstat(out / "b.png").st_mode), err
    assert "failed b" in err and "(put there during the run; not replaced)" in err, err
    assert "2 ok, 0 skipped, 1 failed" in err and (out / "c.png").is_file(), err


def test_a_batchs_own_first_line_torn_anywhere_is_ours(tmp_path, monkeypatch, capsys):
    """A one-line manifest.jsonl with no newline that did not parse and started `{"` was taken for a batch's first
    line torn: cut to nothing, the batch's line appended, exit 0 (probe 53a, 1; such files are refused in
    test_reliability_stop52's test of another tool's manifest). A torn line of ours is a prefix of a line a batch
    writes: each of those starts as the check expects, and its first line cut at any byte is ours."""
    try:
        from test_reliability_stop43 import _three_jobs
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import _three_jobs
    from styleengine.engine import manifest as module

    code, err = _three_jobs(tmp_path, monkeypatch, capsys, lambda: None)
    lines = (tmp_path / "out" / "manifest.jsonl").read_bytes().splitlines()
    assert code == 0 and len(lines) == 3, err
    assert all(line.startswith(module._LINE_START) for line in lines), lines
    assert all(module._written_by_us(lines[0][:cut]) for cut in range(1, len(lines[0])))


def test_a_batch_job_with_a_thin_image_is_refused_before_auto_measures(tmp_path, monkeypatch, capsys):
    """A job whose 400x40 content image is too thin at --size 300 was refused only after `auto` had measured the
    candidates for it: 48 s of silence on a fresh cache, then the line `run` gives at once (probe 53a, 4)."""
    from PIL import Image

    try:
        from test_cli import run_cli
        from test_reliability_probe13 import _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_probe13 import _pictures
    from styleengine.engine import autotune

    _pictures(tmp_path)
    Image.new("RGB", (400, 40), (200, 30, 30)).save(tmp_path / "thin.png")
    (tmp_path / "j.jsonl").write_text('{"content": "thin.png", "styles": ["s.png"]}\n')
    measured, real = [], autotune.choose

    def choose(settings, *args, **kwargs):
        if kwargs.get("tune", True):
            measured.append(settings)
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(autotune, "choose", choose)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out",
                           "--weights", "random", "--size", "300", "--iters", "1")
    assert code == 1 and "failed thin__s" in err and "--size 315 and --scales 1" in err, err
    assert not measured and "auto:" not in err, err


def _other_weights(tmp_path):
    import tarfile

    import torch

    whole = tmp_path / "whole.pth"
    torch.save({"a": torch.zeros(1000)}, whole)
    (tmp_path / "cut.pth").write_bytes(whole.read_bytes()[:2000])  # a download cut short: its zip directory lost
    (tmp_path / "nul.pth").write_bytes(b"\0" * 4096)
    (tmp_path / "text.pth").write_text("hello world\n")
    (tmp_path / "member").write_bytes(b"x" * 10)
    with tarfile.open(tmp_path / "t.pth", "w") as archive:
        archive.add(tmp_path / "member", arcname="member")
    (tmp_path / "t.safetensors").write_bytes((tmp_path / "t.pth").read_bytes())
    (tmp_path / "three.pth").write_bytes(b"abc")  # torch's unpickler: IndexError, a traceback (probe 54a, 4)
    (tmp_path / "one.pth").write_bytes(b"\x80")
    (tmp_path / "empty.pth").write_bytes(b"")
    import gzip

    (tmp_path / "tgz.pth").write_bytes(gzip.compress((tmp_path / "t.pth").read_bytes()))


@pytest.mark.parametrize("name, said", [
    ("cut.pth", "is a zip archive whose end is missing or damaged (a download or copy cut short?)"),
    ("nul.pth", "begins with zero bytes, as no weights file does"),
    ("text.pth", "is text, not a PyTorch checkpoint"),
    ("t.pth", "is a tar archive, not a checkpoint of tensors"),
    ("t.safetensors", "is a tar archive, not a checkpoint of tensors"),
    ("three.pth", "is only 3 bytes, not weights"), ("one.pth", "is only 1 byte, not weights"),
    ("empty.pth", "is empty, not weights"), ("tgz.pth", "is gzip-compressed: decompress it (gunzip)")])
def test_weights_of_another_kind_named_pth_are_told_what_they_are(tmp_path, name, said):
    """Weights named .pth got torch's words: a file of NULs or a tar, torch's advice to load it with
    weights_only=False; a checkpoint cut short, "[Errno 22] Invalid argument"; a text file, "101"; a tar named
    .safetensors was "text" (probe 53a, 5); 1 to 3 bytes were torch's IndexError traceback, and --dry-run passed
    them, an empty file and a gzip'd one (probe 54a, 4, 5). The run and --dry-run's check say the same, but for
    text, which torch's oldest checkpoints may be: the load tells."""
    from styleengine import paths
    from styleengine.errors import WeightsError
    from styleengine.model.weights import read_checkpoint

    _other_weights(tmp_path)
    path = tmp_path / name
    with pytest.raises(WeightsError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == f"{path} {said}" or str(caught.value).startswith(f"{path} {said}"), caught.value
    assert paths.weights_problem(str(path)) == (None if name == "text.pth" else str(caught.value))
    assert paths.weights_kind(tmp_path / "whole.pth") == "torch"


@pytest.mark.parametrize("flags, bf16", [(("avx2", "fma"), False), (("avx512f", "avx512_bf16"), True),
                                         (("avx512f", "amx_bf16"), True)])
def test_auto_times_no_bf16_on_a_cpu_without_bf16_units(monkeypatch, flags, bf16):
    """`tune` acted on SIGTERM 2 to 7 s late while it timed torch bf16 on an AVX2 CPU: the one warm-up step of
    emulated bf16 took 6.8 s, and a signal waits for the step in flight (probe 53b, 3). Emulated, bf16 is never
    faster than fp32, so it is no candidate there; asked for with --precision bf16, it runs."""
    import platform

    from styleengine.engine import capability, machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    here = machine.probe_light()
    assert here.bf16 == bf16
    options = capability.candidates("auto", "cpu", "auto", "auto", here)
    assert any(p == "bf16" for _, p, _ in options) == bf16, options
    assert capability.candidates("torch", "cpu", "bf16", "auto", here) == [("torch", "bf16", "direct")]
    assert any(p == "bf16" for _, p, _ in capability.candidates("auto", "cuda", "auto", "auto", here))


def test_visualize_refuses_a_size_whose_step_does_not_fit_the_memory(tmp_path, monkeypatch, capsys):
    """`visualize --size 65536` was a MemoryError traceback, and at 8192 px it swapped for minutes with SIGTERM
    not acted on (probe 53b, 1, 2): run and invert refuse such a size at once. With 1 GiB free, 1024 px is
    refused before the weights are read, and 32 px runs."""
    from PIL import Image

    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line
    from styleengine.engine import plan

    monkeypatch.setattr(plan, "free_memory", lambda device: 2**30)
    monkeypatch.setattr("styleengine.model.classifier.load_classifier", lambda *a: pytest.fail("work started"))
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "--class", "3", "-o", tmp_path / "v.png",
                           "--size", "1024", "--iters", "1", "--weights", "random")
    assert one_error_line(code, err) == ("error: a 1024x1024 image needs more than the 1 GiB of memory available; "
                                         "use a smaller --size"), err
    monkeypatch.undo()
    monkeypatch.setattr(plan, "free_memory", lambda device: 2**30)
    code, _, err = run_cli(monkeypatch, capsys, "visualize", "--class", "3", "-o", tmp_path / "v.png",
                           "--size", "32", "--iters", "2", "--weights", "random")
    assert code == 0 and Image.open(tmp_path / "v.png").size == (32, 32), err


def test_a_client_gone_mid_upload_and_a_stop_with_an_upload_coming_in_are_one_line_each(tmp_path):
    """A client that closed its connection during its upload left a 77-line ClientDisconnect traceback in the
    server's log (an ERROR, which log monitors take for a crash); a SIGTERM while an upload was still coming in
    logged a CancelledError traceback and answered 500 (probe 53b, 4, 5). Each is one INFO line now, and the
    slow client is told 503."""
    import socket
    import time

    try:
        from serve_helpers import serve_process
    except ModuleNotFoundError:
        from tests.serve_helpers import serve_process

    server, url = serve_process(tmp_path / "srv")
    port = int(url.rsplit(":", 1)[1])
    head = (b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XX\r\n"
            b"Content-Length: 20000\r\n\r\n--XX\r\nContent-Disposition: form-data; name=\"content\"; "
            b"filename=\"c.png\"\r\nContent-Type: image/png\r\n\r\n" + b"\x89PNG" + b"x" * 2000)
    try:
        with socket.create_connection(("127.0.0.1", port)) as gone:
            gone.sendall(head)
            time.sleep(0.5)
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(head)
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)
            slow.settimeout(30)
            answer = slow.recv(4096)
        out, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert "Traceback" not in out and "Exception in ASGI application" not in out, out
    assert out.count("a client went away during its upload; nothing queued") == 1, out
    assert "the server is stopping: POST /api/jobs, unfinished when its wait ran out, was answered 503" in out, out


@pytest.mark.parametrize("command", ["batch", "video", "serve"])
def test_help_is_printed_as_written(monkeypatch, capsys, command):
    """`--help` said `--ray` "Needs styleengine.": typer read "styleengine[ray]" as Rich markup and dropped its
    "[ray]", so the help never named the extra to install (probe 53b, 6)."""
    try:
        from test_cli import run_cli
    except ModuleNotFoundError:
        from tests.test_cli import run_cli

    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(monkeypatch, capsys, command, "--help")
    assert code == 0 and "Needs styleengine[ray]" in out, out


def test_serve_says_a_host_name_is_not_known_to_be_loopback(monkeypatch, capsys):
    """`serve --host vm`, a name /etc/hosts gives 127.0.0.1, was refused as "reachable from other machines", which
    was never checked (names are not resolved: what one leads to can change); `--token ''` was "0 characters of
    spaces" (probe 53b, 7)."""
    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line

    monkeypatch.delenv("STYLEENGINE_TOKEN", raising=False)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--host", "vm", "--weights", "random")
    assert one_error_line(code, err) == ("error: --host vm is a host name, not known to reach this machine alone: give "
                                         "a loopback address (127.0.0.1, ::1 or localhost), or set --token or "
                                         "STYLEENGINE_TOKEN first"), err
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--token", "", "--weights", "random")
    assert one_error_line(code, err).endswith("got 0 characters"), err
    from styleengine.cli_serve import _loopback

    # numbers as the socket calls read them (`0` listens everywhere), and localhost in any case (review, probe 54a)
    assert [_loopback(h) for h in ("0", "127.1", "2130706433", "LOCALHOST", "::1", "::", "vm")] == [
        False, True, True, True, True, False, False]
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--host", "0", "--weights", "random")
    assert one_error_line(code, err) == ("error: --host 0 is reachable from other machines: set --token or "
                                         "STYLEENGINE_TOKEN first"), err


def test_serve_takes_a_blank_keep_as_the_servers_value(tmp_path):
    """A blank `keep=` (a form's empty hidden input) was "422 bad keep ''", where every other blank field means
    the server's value (probe 53a, a note); a blank one beside a given one is no field given twice."""
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    try:
        from serve_helpers import SETTINGS, files, png, wait_for
    except ModuleNotFoundError:
        from tests.serve_helpers import SETTINGS, files, png, wait_for
    from styleengine.serve.app import Config, create_app

    config = Config(settings=SETTINGS.resolved(), root=tmp_path / "srv", max_size=256, max_iters=50)
    with TestClient(create_app(config)) as client:
        for keep in ([("keep", (None, ""))], [("keep", (None, "")), ("keep", (None, "1"))]):
            response = client.post("/api/jobs", files=files(None, png(40, 40, 1)) + keep,
                                   data={"iters": "2", "size": "40"})
            assert response.status_code == 202, response.text
            assert wait_for(client, response.json()["id"])["status"] == "done"


@pytest.mark.parametrize("text", [b"a,b\r\nc,d\r\n", b"a,b\nc\rd\r\n\r\n", b"x" * 20 + b"\r\n" + b"y\r", b"\r\n\r\n",
                                  b"one\r\ntwo", b"a\rb\rc", b"\r\r\n\n"])
def test_a_jobs_files_lines_are_kept_without_their_line_ends_whatever_the_blocks(tmp_path, text):
    """Each line's CRC and length leave its line end out (\\n, \\r\\n or \\r, as the reader takes them), however
    the reads cut the file (a \\r at one block's end, its \\n at the next's): a CRLF file (what Excel and
    csv.writer write) that lost only its last line end was said rewritten (review of stop 53), and a JSONL file
    with \\r line ends rewritten shorter was taken as cut, its new job never run (probe 54a, 1)."""
    import re
    import zlib

    from styleengine.engine.jobs import _Read

    path = tmp_path / "j.csv"
    path.write_bytes(text)
    *lines, last = re.split(rb"\r\n|\r|\n", text)  # as the reader takes line ends (universal newlines)
    lines += [last] if last else []
    for block in (1, 2, 3, 5, 8192):
        read = _Read(open(path, "rb", buffering=0))
        buffer = bytearray(block)
        while read.readinto(buffer):
            pass
        done = read.done()
        read.close()
        assert list(done.sizes) == [len(line) for line in lines], (block, done.sizes)
        assert list(done.lines) == [zlib.crc32(line) for line in lines], block


@pytest.mark.parametrize("now, says", [
    ("content,styles,output\r\nc.png,s.png,a.png\r\nc.png,s.png,b.png", None),  # its last \r\n cut
    ("content,styles,output\r\nc.png,s.png,a.png\r\nc.png,s.png,b.png\r", None),  # its last \n cut
    ("content,styles,output\r\nc.png,s.png,z.png\r\n", "was rewritten after the batch had read it")])
def test_a_crlf_jobs_file_that_lost_its_last_line_end_is_no_rewrite(tmp_path, now, says):
    from styleengine.engine.jobs import iter_jobs

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "j.csv"
    path.write_bytes(b"content,styles,output\r\nc.png,s.png,a.png\r\nc.png,s.png,b.png\r\n")
    read: list = []
    assert len(list(iter_jobs(path, tmp_path / "out", read))) == 2
    path.write_bytes(now.encode())
    said = read[0].since(path)
    assert said == says if says is None else said.startswith(says), said


def test_tune_says_why_bf16_is_not_in_its_table(monkeypatch, capsys, tmp_path):
    """On a CPU without bf16 units tune's table had no bf16 row and no word why (review of stop 53); a record kept
    before bf16 left the candidates is measured again (TUNE_VERSION 5), not called damaged."""
    try:
        from test_cli import tune_timed
    except ModuleNotFoundError:
        from tests.test_cli import tune_timed
    from styleengine.engine import autotune

    code, out, err = tune_timed(monkeypatch, capsys, tmp_path, bf16=False)
    assert code == 0 and "bf16" not in out.split("auto:")[0], out
    assert "bf16 is not timed: this CPU has no bf16 units (AMX, AVX-512 BF16)" in err, err
    assert autotune.TUNE_VERSION == 5


def test_a_jsonl_jobs_file_with_cr_line_ends_rewritten_shorter_is_said(tmp_path):
    """(probe 54a, 1) The reader takes \\r as a line end; the rewrite check took the file as one line."""
    from styleengine.engine.jobs import iter_jobs

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"")
    job = '{"content": "c.png", "styles": ["s.png"], "output": "%s.png"}'
    path = tmp_path / "j.jsonl"
    path.write_text("\r".join(job % n for n in ("a", "b", "bbb")) + "\r", newline="")
    read: list = []
    assert len(list(iter_jobs(path, tmp_path / "out", read))) == 3
    path.write_text((job % "a") + "\r" + (job % "n") + "\r", newline="")
    assert read[0].since(path).startswith("was rewritten after the batch had read it")
    path.write_text((job % "a") + "\r" + (job % "b"), newline="")  # its last line end cut
    assert read[0].since(path) is None


def test_a_batch_job_whose_image_is_under_the_least_side_is_told_so_not_a_size(tmp_path, monkeypatch, capsys):
    """A 30x300 style image in a batch job was told '--size 315 and --scales 1', which failed again when
    followed: the image itself is under 32 px a side, as run says at once (probe 54a, 6)."""
    from PIL import Image

    try:
        from test_cli import run_cli
        from test_reliability_probe13 import FAST, _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_probe13 import FAST, _pictures

    _pictures(tmp_path)
    Image.new("RGB", (30, 300)).save(tmp_path / "thin.png")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "styles": ["thin.png"], "output": "t.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST)
    assert code == 1 and f"style image {tmp_path / 'thin.png'} is 30x300 px; both sides must be at least 32 px" in err
    assert "--size" not in err, err


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_save_every_keeps_a_users_picture_at_a_snapshots_name(tmp_path, monkeypatch, capsys, suffix):
    """`-o o.png --save-every 1` replaced the user's own o_2.png with a snapshot, exit 0, no word (probe 54b, 1):
    a file there is refused before any work unless it is an earlier snapshot of that output, as a rerun finds."""
    from PIL import Image

    try:
        from test_cli import run_cli
        from test_reliability_batch import one_error_line
        from test_reliability_probe13 import _pictures
    except ModuleNotFoundError:
        from tests.test_cli import run_cli
        from tests.test_reliability_batch import one_error_line
        from tests.test_reliability_probe13 import _pictures

    _pictures(tmp_path)
    output = tmp_path / f"o{suffix}"
    flags = ["--weights", "random", "--size", "40", "--iters", "3", "--backend", "torch", "--save-every", "1"]
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", output, *flags)
    assert code == 0 and (tmp_path / f"o_2{suffix}").is_file(), err
    # a rerun replaces its own snapshots
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", output, *flags)
    assert code == 0, err
    mine = tmp_path / f"o_2{suffix}"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o", output, *flags)
    assert one_error_line(code, err) == (f"error: cannot write --save-every snapshot {mine}: a file is there that is "
                                         f"not an earlier snapshot of o{suffix}; move it, or choose another -o"), err
    assert mine.read_bytes() == before


def test_a_bench_row_shown_as_ok_is_in_json(tmp_path, monkeypatch, capsys, machine_once):
    """A signal just after a row's "ok" line, before its partial --json was written, lost a row the user had seen
    done: "b.json not written" (probe 54b, 2). The row's last line is said once --json holds it."""
    try:
        from test_reliability_stop47 import bench_of_two_sizes
    except ModuleNotFoundError:
        from tests.test_reliability_stop47 import bench_of_two_sizes
    from styleengine import cli_bench

    real, path = cli_bench.write_json, tmp_path / "b.json"

    def write_json(*args, **kwargs):  # the signal lands between the row's round and its write
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_bench, "write_json", write_json)
    code, err = bench_of_two_sizes(monkeypatch, capsys, lambda: None, "--json", path)
    assert code == 143, err
    assert "32x32: ok" not in err and f"{path} not written" in err, err


def test_help_without_rich_shows_no_escapes():
    """With TYPER_USE_RICH=0 typer prints help as text: the escape that keeps '[ray]' from Rich was shown,
    'styleengine\\\\[ray]' (review of stop 53)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "styleengine", "batch", "--help"], capture_output=True, text=True,
                          env={**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "200"}, timeout=120)
    assert proc.returncode == 0 and "Needs styleengine[ray]" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("lines", [1, 3])
def test_a_manifest_of_ours_saved_with_a_bom_is_still_ours(tmp_path, monkeypatch, capsys, lines):
    """A manifest opened and saved by an editor that adds a UTF-8 byte-order mark: one line was refused as another
    tool's file, and of three the first was 'not JSON' and its job ran again (stop 53's note). The mark is read as
    the editor meant it: every job is skipped."""
    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch

    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    manifest = tmp_path / "out" / "manifest.jsonl"
    assert code == 0, err
    kept = manifest.read_bytes().splitlines(keepends=True)[:lines]
    manifest.write_bytes(b"\xef\xbb\xbf" + b"".join(kept))
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 0 and f"{3 - lines} ok, {lines} skipped, 0 failed" in err, err
    assert "line 1" not in err, err
