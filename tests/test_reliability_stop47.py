"""Issue 23, stop 47: probe 46a's last minor findings and probe 47's (on 064bbf4)."""
from __future__ import annotations

import os
import re

import pytest

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
    from test_reliability_batch import one_error_line
    from test_reliability_probe13 import FAST, _pictures
    from test_reliability_stop44 import TRACE_LINE
except ModuleNotFoundError:
    from tests.test_cli import run_cli
    from tests.test_reliability_batch import one_error_line
    from tests.test_reliability_probe13 import FAST, _pictures
    from tests.test_reliability_stop44 import TRACE_LINE


def test_tune_says_what_this_machine_cannot_run_before_timing(monkeypatch, capsys):
    """`tune --precision fp16 --backend ort` on a machine without a GPU printed "timing the candidates ..."
    and then the refusal: two lines for a user error (probe 46a, 12). It is one line, as run says it."""
    from styleengine.engine import machine

    monkeypatch.setattr(machine, "probe", lambda: machine.Machine(cuda=False, ort_providers=("cpu",),
                                                                  nnpack=True, tensorrt=False))
    monkeypatch.setattr("styleengine.engine.autotune.probe", machine.probe)
    code, out, err = run_cli(monkeypatch, capsys, "tune", "--size", "40", "--weights", "random", "--model", "vgg16",
                             "--precision", "fp16", "--backend", "ort")
    assert "no fp16 convolutions" in one_error_line(code, err) and not out
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text, name", [("", "e.jsonl"), ("\n\n", "b.jsonl"), ("content,style\n", "h.csv")])
def test_a_jobs_file_with_no_jobs_is_refused_as_an_empty_contents_is(tmp_path, monkeypatch, capsys, text, name):
    """An empty jobs file (or blank lines, or a CSV header) made --out and ended "0 ok ...; manifest
    out/manifest.jsonl", a manifest never written (probe 47b, 1); an empty --contents is refused in one line."""
    (tmp_path / name).write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / name, "--out", tmp_path / "out", "--size", "40",
                           "--iters", "2", "--weights", "random")
    assert one_error_line(code, err).endswith("holds no jobs") and not (tmp_path / "out").exists()


def test_a_trace_past_the_first_mib_is_judged_whole(tmp_path):
    from styleengine import paths
    from styleengine.errors import ConfigError

    trace = tmp_path / "t.jsonl"
    with open(trace, "w") as f:
        f.write(TRACE_LINE * (2 * 2**20 // len(TRACE_LINE)))
    paths.check_own(trace, "trace", paths.own_trace)  # an earlier trace: replaced
    with open(trace, "a") as f:
        f.write("USER TAIL: precious\n")
    with pytest.raises(ConfigError, match="not an earlier trace file"):
        paths.check_own(trace, "trace", paths.own_trace)


def test_a_file_put_at_the_traces_name_during_the_set_up_is_not_replaced(tmp_path):
    """The trace was checked at the start and opened with "w" at the first iteration: a user's file (or a FIFO,
    which hung the run) put there meanwhile was replaced (probe 47a, 4). The first line checks again; the trace
    then stops with a warning, the file kept."""
    from styleengine.cli_job import TraceWriter

    trace = TraceWriter(tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl").write_text("my notes\n")
    trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
    assert trace.failure and "not an earlier trace file" in trace.failure
    assert (tmp_path / "t.jsonl").read_text() == "my notes\n"
    os.unlink(tmp_path / "t.jsonl")
    os.mkfifo(tmp_path / "t.jsonl")
    trace = TraceWriter(tmp_path / "t.jsonl")
    trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")  # no hang
    assert trace.failure and "not a regular file" in trace.failure


def test_distances_replace_only_invert_distances(tmp_path, monkeypatch, capsys):
    """A user's JSON object with "feature_distance" was replaced by `invert --distances` (probe 47a, 5)."""
    _pictures(tmp_path)
    mine = '{"name": "experiment 3", "feature_distance": 1.0, "notes": "keep"}\n'
    (tmp_path / "exp.json").write_text(mine)
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", *FAST,
                           "--distances", tmp_path / "exp.json")
    assert "not an earlier distances file" in one_error_line(code, err)
    assert (tmp_path / "exp.json").read_text() == mine
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", *FAST,
                           "--distances", tmp_path / "d.json")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", *FAST,
                           "--distances", tmp_path / "d.json")  # its own: replaced
    assert code == 0, err


def test_a_runs_trace_replaces_its_earlier_trace(tmp_path, monkeypatch, capsys):
    _pictures(tmp_path)
    for _ in range(2):
        code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                               tmp_path / "o.png", *FAST, "--trace", tmp_path / "t.jsonl")
        assert code == 0, err


@pytest.mark.parametrize("link, target", [("o.jpg", "holiday.jpeg"), ("o.jpeg", "holiday.JPG"),
                                          ("o.tif", "holiday.tiff")])
def test_a_link_to_a_file_of_the_same_format_is_written_through(tmp_path, monkeypatch, capsys, link, target):
    """`-o o.jpg` to holiday.jpeg was refused as "a file of another kind": both are JPEG (probe 47a, 6)."""
    from PIL import Image

    _pictures(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / target, format="TIFF" if "tif" in target else "JPEG")
    (tmp_path / link).symlink_to(tmp_path / target)
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "c.png", tmp_path / "s.png", "-o",
                           tmp_path / link, *FAST)
    assert code == 0, err
    assert (tmp_path / link).is_symlink() and Image.open(tmp_path / target).size == (40, 33)


@pytest.mark.parametrize("flag, name, text", [("--json", "package.json", '{"name": "pkg"}\n'),
                                              ("--csv", "contacts.csv", "name,phone\n"),
                                              ("--report", "notes.md", "# my notes\n"),
                                              ("--plot", "photo.png", None)])
def test_bench_replaces_only_its_own_earlier_outputs(tmp_path, monkeypatch, capsys, flag, name, text, machine_once):
    """`bench --json package.json` (`--csv contacts.csv`, `--report notes.md`, `--plot photo.png`) replaced the
    user's file: bench checked only the suffix, where run's trace checks it is its own (probe 47a, 7)."""
    from PIL import Image

    path = tmp_path / name
    if text is None:
        Image.new("RGB", (8, 8)).save(path)
    else:
        path.write_text(text)
    before = path.read_bytes()
    bench = ["bench", "--res", "32", "--backends", "torch", "--devices", "cpu", "--precision", "fp32", "--iters", "1",
             "--rounds", "1", "--warmup", "0", "--model", "vgg16"]
    code, _, err = run_cli(monkeypatch, capsys, *bench, flag, path)
    assert f"not an earlier bench {flag} file" in one_error_line(code, err)
    assert path.read_bytes() == before
    own = tmp_path / f"own{path.suffix}"
    for _ in range(2):  # written, then its own replaced
        code, _, err = run_cli(monkeypatch, capsys, *bench, flag, own)
        assert code == 0, err


@pytest.mark.parametrize("saved, name, words", [
    ("torch", "w.safetensors", "is a PyTorch checkpoint, not a safetensors file; name it .pth"),
    ("safetensors", "w.pth", "is a safetensors file, not a PyTorch checkpoint; name it .safetensors"),
    ("torch", "w", "use .safetensors, .pth, .pt or .bin")])
def test_a_weights_file_named_as_another_kind_is_told_what_it_is(tmp_path, saved, name, words):
    """A good PyTorch checkpoint named .safetensors was "header too large" (damage, it said), a safetensors file
    named .pth "not a PyTorch checkpoint", and a file of no suffix was told two of the four suffixes read (probe
    47b, 3)."""
    import torch
    from safetensors.torch import save_file

    from styleengine.model.weights import read_checkpoint
    from styleengine.errors import UserError

    state = {"features.0.weight": torch.zeros(2, 3, 3, 3)}
    path = tmp_path / name
    if saved == "torch":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        read_checkpoint(path)


def _jobs_lines(mark: str, count: int = 70) -> list[str]:
    pad = "x" * 200  # past a read buffer's 8 KiB
    return [f'{{"content": "c.png", "style": "s.png", "output": "{mark}{n}{pad}.png"}}\n' for n in range(count)]


@pytest.mark.parametrize("longer", [0, 40])
def test_a_jobs_file_rewritten_while_its_batch_reads_it_is_said(tmp_path, longer):
    """`cat new.jsonl > jobs.jsonl` while the batch read a long file: old lines then new ones, one job list from
    two files, no word; or "line 351: not JSON", a line the file has whole now (probe 47a, 8)."""
    from styleengine.engine.jobs import iter_jobs
    from styleengine.errors import ConfigError

    jobs_file = tmp_path / "j.jsonl"
    jobs_file.write_text("".join(_jobs_lines("o")))
    jobs = iter_jobs(jobs_file, tmp_path / "out")
    read = [next(jobs) for _ in range(5)]
    with open(jobs_file, "r+") as f:  # in place, as `>` and some editors write
        f.write("".join(line.replace("x" * 200, "y" * (200 + longer)) for line in _jobs_lines("n")))
    with pytest.raises(ConfigError, match=r"j.jsonl was rewritten while the batch read it \(by line \d+\): the jobs "
                                          r"read may mix the old file and the new one"):
        read += list(jobs)


def test_lines_appended_while_its_batch_reads_a_jobs_file_are_read(tmp_path):
    """A jobs file used as a queue: lines appended during the read are jobs, not a rewrite."""
    from styleengine.engine.jobs import iter_jobs

    jobs_file = tmp_path / "j.jsonl"
    jobs_file.write_text("".join(_jobs_lines("o")))
    jobs = iter_jobs(jobs_file, tmp_path / "out")
    read = [next(jobs) for _ in range(5)]
    with open(jobs_file, "a") as f:
        f.write("".join(_jobs_lines("n", 3)))
    read += list(jobs)
    assert len(read) == 73


@pytest.mark.parametrize("name", ["video.json", ".lock"])
def test_a_batch_refuses_a_videos_frames_folder(tmp_path, monkeypatch, capsys, name):
    """`batch --out OUT.frames` beside a running video: the batch's lock and the video's are blind to each other;
    the video moved the batch's picture aside as not its frame, the batch's line said ok (probe 47b, 4)."""
    _pictures(tmp_path)
    import fcntl

    frames = tmp_path / "v.mp4.frames"
    frames.mkdir()
    (frames / name).write_text("")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "frame_000030.png"}\n')
    with open(frames / name, "rb") as held:  # a running video holds its lock
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", frames, *FAST)
    # an empty lock alone may be another tool's: said as a lock (probe 50a, 11)
    said = "is a video's frames folder" if name == "video.json" else "is a folder locked by another process"
    assert said in one_error_line(code, err)
    assert sorted(p.name for p in frames.iterdir()) == [name]


@pytest.mark.parametrize("text", ["held by syncthing\n", ""])
def test_a_lock_of_another_tool_is_no_videos(tmp_path, monkeypatch, capsys, text):
    """Another tool's `.lock`, or an empty one no process holds (`touch .lock`), is no video's (probe 49a, 10)."""
    _pictures(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".lock").write_text(text)
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", tmp_path / "out", *FAST)
    assert code == 0, err


@pytest.mark.parametrize("name", ["manifest.jsonl", ".batch.lock"])
def test_a_video_refuses_a_batchs_out_as_its_frames_folder(tmp_path, monkeypatch, capsys, name):
    """The other way round: a video over a batch's --out moved the batch's pictures aside (review 47, 8)."""
    from styleengine.cli_video import FrameStore
    from styleengine.errors import ConfigError

    frames = tmp_path / "v.gif.frames"
    frames.mkdir()
    (frames / name).write_text("")
    with pytest.raises(ConfigError, match=rf"it is a batch's --out \(it holds {re.escape(name)}\)"):
        FrameStore(tmp_path / "v.gif").take()
    assert sorted(p.name for p in frames.iterdir()) == [name]


def test_the_apis_image_paths_expand_as_its_path_settings_do(tmp_path, monkeypatch):
    """`stylise("$DIR/c.png", ...)` said "content image $DIR/c.png was not found" where `init="$DIR/c.png"` in the
    same call ran (probe 47a, 9)."""
    import styleengine
    from styleengine.errors import ConfigError

    _pictures(tmp_path)
    monkeypatch.setenv("PICS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    image = styleengine.stylise("$PICS/c.png", ["~/s.png"], size=40, iterations=1, weights="random", model="vgg16",
                                backend="torch")
    assert image.size == (40, 33)
    with pytest.raises(ConfigError, match=r"^content image '\$NOPE/c.png': the variable \$NOPE is not set"):
        styleengine.stylise("$NOPE/c.png", "~/s.png", size=40, iterations=1, weights="random")
    from pathlib import Path

    image = styleengine.stylise(Path("~/c.png"), "$PICS/s.png", size=40, iterations=1, weights="random",
                                model="vgg16", backend="torch")
    assert image.size == (40, 33)


def bench_of_two_sizes(monkeypatch, capsys, before_second, *flags) -> tuple[int, str]:
    """`bench` of two sizes with `flags`, `before_second()` called as the second size's turn comes (the first
    row's partial document written): (exit code, stderr)."""
    from styleengine.benchmarks import runner

    real, state = runner.Runner.outcome, {"rows": 0}

    def outcome(self, config, *args, **kwargs):
        if state["rows"] == 1:
            before_second()
        state["rows"] += 1
        return real(self, config, *args, **kwargs)

    monkeypatch.setattr(runner.Runner, "outcome", outcome)
    code, _, err = run_cli(monkeypatch, capsys, "bench", "--res", "32,40", "--backends", "torch", "--devices", "cpu",
                           "--precision", "fp32", "--conv", "direct", "--iters", "1", "--rounds", "1", "--warmup", "0",
                           *flags)
    return code, err


def test_bench_stopped_by_a_signal_says_what_it_kept(tmp_path, monkeypatch, capsys, machine_once):
    """`bench --json g.json --csv g.csv` stopped after its first row said only "interrupted (SIGHUP)": not that
    g.json holds that row (a partial document), nor that g.csv was not written (probe 47b, 6)."""
    import signal

    code, err = bench_of_two_sizes(monkeypatch, capsys, lambda: os.kill(os.getpid(), signal.SIGHUP),
                                   "--json", tmp_path / "g.json", "--csv", tmp_path / "g.csv")
    assert code == 129, err
    assert err.strip().splitlines()[-1] == (f"error: interrupted (SIGHUP); {tmp_path / 'g.json'} holds the 1 row done "
                                            f"(machine.partial: true); {tmp_path / 'g.csv'} not written")


def test_an_export_another_replaced_as_it_was_published_is_said_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Two `export --force` into one folder at once: the loser's "wrote" line read export.json back from the folder
    while the other's publish swapped it: a FileNotFoundError traceback (probe 47b, 7). The line comes from what it
    exported; that another replaced it is said."""
    from styleengine import cli_export

    try:
        from test_cli_export import NO_CHECK
    except ModuleNotFoundError:
        from tests.test_cli_export import NO_CHECK

    real = cli_export._publish

    def published_then_swapped(staging, output, names):
        real(staging, output, names)
        (output / "export.json").unlink()  # the other export's publish, half-way

    monkeypatch.setattr(cli_export, "_publish", published_then_swapped)
    code, out, err = run_cli(monkeypatch, capsys, "export", "-o", tmp_path / "e", *NO_CHECK)
    assert code == 0 and "Traceback" not in err, err
    assert "another export into" in out + err and "wrote " in out + err


def test_a_batch_replaces_a_link_at_an_outputs_name_whatever_it_leads_to(tmp_path, monkeypatch, capsys):
    """A batch replaces a link at a job's output (its writes stay in --out), yet refused one to a file of another
    kind with run's advice ("name that file itself"), a rule about writing through (probe 47a, 11). The link is
    replaced, the file it led to kept."""
    from PIL import Image

    _pictures(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "hol.jpg")
    before = (out / "hol.jpg").read_bytes()
    (out / "o.png").symlink_to("hol.jpg")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "o.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    assert code == 0, err
    assert not (out / "o.png").is_symlink() and (out / "hol.jpg").read_bytes() == before


def test_a_jsonl_jobs_names_are_the_files_as_written(tmp_path):
    """`"content": " c.png"` stylised c.png, another file, exit 0, and `" sp.jpg"` was "sp.jpg was not found":
    a JSON string was trimmed where `run " c.png"` reads the file named (probe 47b, 8). A CSV cell is trimmed."""
    from styleengine.engine.jobs import iter_jobs

    (tmp_path / "j.jsonl").write_text('{"content": " c.png", "styles": " s.png; t.png ", "output": "a.png"}\n'
                                      '{"content": "c.png", "styles": [" s.png", "t.png"]}\n')
    first, second = iter_jobs(tmp_path / "j.jsonl", tmp_path / "out")
    assert first.content == tmp_path / " c.png"
    assert [p.name for p in first.styles] == [" s.png", "t.png "]
    assert [p.name for p in second.styles] == [" s.png", "t.png"]
    (tmp_path / "j.csv").write_text("content,styles\n c.png , s.png; t.png\n")
    (only,) = iter_jobs(tmp_path / "j.csv", tmp_path / "out")
    assert only.content == tmp_path / "c.png" and [p.name for p in only.styles] == ["s.png", "t.png"]


def test_a_csv_record_over_several_lines_is_said_by_its_lines(tmp_path):
    """A quoted cell holding line ends: its error named the record's last line alone (probe 47b, 9)."""
    from styleengine.engine.jobs import iter_jobs
    from styleengine.errors import ConfigError

    (tmp_path / "j.csv").write_text('content,style,output,iters\nc.png,s.png,"a.png",2\n'
                                    '"c.png",s.png,"x\n\n\ny.png",x\n')
    with pytest.raises(ConfigError, match=r"j.csv lines 3-6: "):
        list(iter_jobs(tmp_path / "j.csv", tmp_path / "out"))


def test_a_link_to_a_name_too_long_says_that_name(tmp_path):
    """A short link to a 250-character name was told its own name is too long (review 47, 1)."""
    from styleengine import paths
    from styleengine.errors import ConfigError

    long = tmp_path / ("a" * 250 + ".json")
    long.write_text("")
    (tmp_path / "s.json").symlink_to(long)
    with pytest.raises(ConfigError, match=r"the name it leads to \(a+\.json\) is too long \(255 characters"):
        paths.check_writable(tmp_path / "s.json", "trace")


def test_a_safetensors_file_whose_length_starts_as_a_pickle_is_told_as_safetensors(tmp_path):
    """A header length of 128 (mod 256) starts the file with 0x80, a pickle's first byte: a damaged one was told
    "is a PyTorch checkpoint" (review 47, 2)."""
    from styleengine.paths import weights_kind

    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    header += b" " * (128 - len(header))
    (tmp_path / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    assert weights_kind(tmp_path / "w.safetensors") == "safetensors"


@pytest.mark.parametrize("kind", ["broken", "folder"])
def test_a_batch_replaces_a_broken_link_or_one_to_a_folder_at_an_outputs_name(tmp_path, monkeypatch, capsys, kind):
    """The batch's checks judged a link at an output's name by what it leads to, though the batch replaces it: a
    broken link, or one to a folder, failed the job (review 47, 3)."""
    _pictures(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    if kind == "folder":
        (out / "d").mkdir()
    (out / "o.png").symlink_to("d" if kind == "folder" else "missing.png")
    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "output": "o.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "j.jsonl", "--out", out, *FAST)
    assert code == 0, err
    assert (out / "o.png").is_file() and not (out / "o.png").is_symlink()


def test_a_trace_over_the_limit_is_said_as_too_large_to_tell(tmp_path, monkeypatch):
    from styleengine import paths
    from styleengine.errors import ConfigError

    monkeypatch.setattr(paths, "OWN_LIMIT", 1000)
    (tmp_path / "t.jsonl").write_text(TRACE_LINE * 20)
    with pytest.raises(ConfigError, match="too large to tell whether it is an earlier trace file"):
        paths.check_own(tmp_path / "t.jsonl", "trace", paths.own_trace)


def test_a_trace_torn_in_its_first_line_is_ours(tmp_path):
    """A kill during the first line's write left `{"iteration": 1, "loss": 1.` alone: the rerun refused its own
    trace (review 47, 5)."""
    from styleengine import paths

    (tmp_path / "t.jsonl").write_text('{"iteration": 1, "loss": 1.')
    paths.check_own(tmp_path / "t.jsonl", "trace", paths.own_trace)


def test_distances_put_at_their_name_during_the_run_are_not_replaced(tmp_path, monkeypatch, capsys):
    """Invert's distances were checked before the run and written after it, unchecked: a user's file put there
    meanwhile was replaced (review 47, 12). The picture is written, the file kept, one line."""
    from styleengine.engine import images

    _pictures(tmp_path)
    real = images.save_image

    def save_then_mine(image, path, *args, **kwargs):
        (tmp_path / "d.json").write_text("my notes\n")
        return real(image, path, *args, **kwargs)

    monkeypatch.setattr(images, "save_image", save_then_mine)
    code, _, err = run_cli(monkeypatch, capsys, "invert", tmp_path / "c.png", "-o", tmp_path / "o.png", *FAST,
                           "--distances", tmp_path / "d.json")
    line = one_error_line(code, err)
    assert "not an earlier distances file" in line and "the picture is in" in line
    assert (tmp_path / "d.json").read_text() == "my notes\n" and (tmp_path / "o.png").is_file()


def test_a_trace_on_the_commands_own_stderr_is_refused_at_the_start(tmp_path):
    """`--trace /dev/stderr 2>log`: the start saw an empty file and took it, the first line then saw the run's own
    messages there and wrote no trace, exit 0 (probe 48a, 2). It is one line before any work."""
    import subprocess
    import sys

    _pictures(tmp_path)
    with open(tmp_path / "log", "w") as log:
        done = subprocess.run([sys.executable, "-m", "styleengine", "run", "c.png", "s.png", "-o", "o.png", *FAST,
                               "--trace", "/dev/stderr"], cwd=tmp_path, stderr=log, timeout=300,
                              env={**os.environ, "STYLEENGINE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 1
    assert (tmp_path / "log").read_text() == ("error: cannot write trace /dev/stderr: it is this command's stderr, "
                                              "where its messages go; name a file\n")
    assert not (tmp_path / "o.png").exists()


def test_a_jsonl_jobs_own_files_are_named_as_written(tmp_path, monkeypatch, capsys):
    """`"init": "x.png "` started from x.png, another file, exit 0 (content, style and output were exact, a
    job's init, weights and masks not); a name with an edge blank that is missing was said unquoted
    ("init image x.png  was not found") (probe 48a, 5)."""
    from styleengine.engine.jobs import iter_jobs

    (tmp_path / "j.jsonl").write_text('{"content": "c.png", "style": "s.png", "init": "x.png ", "weights": " random", '
                                      '"content_masks": " m.png"}\n')
    (job,) = iter_jobs(tmp_path / "j.jsonl", tmp_path / "out")
    overrides = dict(job.overrides)
    assert overrides["init"] == str(tmp_path / "x.png ") and overrides["weights"] == "random"
    assert overrides["content_masks"] == (str(tmp_path / " m.png"),)
    _pictures(tmp_path)
    (tmp_path / "k.jsonl").write_text('{"content": "c.png ", "style": "s.png"}\n')
    code, _, err = run_cli(monkeypatch, capsys, "batch", tmp_path / "k.jsonl", "--out", tmp_path / "out", *FAST)
    assert f"content image '{tmp_path / 'c.png '}' was not found" in err, err


def test_a_ray_batchs_signal_line_comes_before_rays_shutdown(monkeypatch):
    """`batch --ray auto` said its signal's line after Ray's shutdown of the cluster it started (8 s: Ray gives
    each process a second; probe 48b, 1). The line's hook runs as the interrupt passes, before the close."""
    from styleengine.engine import batch_ray

    order = []

    class Runner:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, planned):
            yield []
            raise KeyboardInterrupt

        def close(self):
            order.append("close")

    monkeypatch.setattr(batch_ray, "RayRunner", Runner)
    finished = batch_ray.run_jobs_ray([], "auto", on_interrupt=lambda signum: order.append("line"))
    with pytest.raises(KeyboardInterrupt):
        for _ in finished:
            pass
    assert order == ["line", "close"]


def test_a_trace_with_a_power_cuts_nul_tail_is_ours(tmp_path):
    """A whole trace followed by NULs (what ext4 may leave after a power cut) was refused as not a trace (probe
    48a, 10)."""
    from styleengine import paths

    (tmp_path / "t.jsonl").write_text(TRACE_LINE * 3 + "\0" * 4096)
    paths.check_own(tmp_path / "t.jsonl", "trace", paths.own_trace)


def test_a_traces_other_hard_link_keeps_the_earlier_trace(tmp_path):
    """The rerun's trace truncated the earlier one's inode, so an archive's hard link to it took the new lines
    (probe 48a, 12). The name is replaced; the other link keeps the earlier trace."""
    from styleengine.cli_job import TraceWriter

    (tmp_path / "t.jsonl").write_text(TRACE_LINE)
    os.link(tmp_path / "t.jsonl", tmp_path / "archive.jsonl")
    trace = TraceWriter(tmp_path / "t.jsonl")
    trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
    trace.close()
    assert (tmp_path / "archive.jsonl").read_text() == TRACE_LINE
    assert (tmp_path / "t.jsonl").read_text() == '{"iteration": 1, "loss": 1.5}\n'


def test_a_second_export_into_a_folder_one_is_writing_is_refused(tmp_path, monkeypatch, capsys):
    """Two `export --force` into one folder at once: the one replaced second said "wrote ... sha256 X", the folder
    holding the other (probe 48a, 6). The second is refused while the first holds the folder."""
    import fcntl

    try:
        from test_cli_export import NO_CHECK
    except ModuleNotFoundError:
        from tests.test_cli_export import NO_CHECK

    out = tmp_path / "e"
    out.mkdir()
    held = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK, "--force")
    finally:
        os.close(held)
    assert one_error_line(code, err).endswith(f"another export into {out} is running; wait for it to finish")
    assert run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK, "--force")[0] == 0


def test_a_lock_removed_before_the_first_line_says_no_line_was_written(tmp_path, monkeypatch, capsys):
    """`rm out/.batch.lock` before any job came back: "its lines so far are in out/manifest.jsonl", a file that was
    never made (probe 48b, 6)."""
    from styleengine.engine import batch as engine

    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch

    real = engine.record

    def record(*args, **kwargs):
        (tmp_path / "out" / ".batch.lock").unlink(missing_ok=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    line = one_error_line(code, err)
    assert "was removed during the run" in line and "no line was written yet" in line, line
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_whole_number_given_as_a_float_is_told_to_be_an_int():
    """`stylise(..., size=64.0)` (or numpy's float32(64)) was "size 64.0: not a whole number" (probe 48b, 5)."""
    import numpy as np

    from styleengine.engine.settings import whole

    for value in (64.0, np.float32(64)):
        with pytest.raises(ValueError, match="a whole number is given as an int, not a float"):
            whole(value)
    with pytest.raises(ValueError, match="^not a whole number$"):
        whole(2.7)


@pytest.mark.parametrize("text", ["\0" * 300, "\0" * 200 + "\n" + TRACE_LINE])
def test_a_trace_of_a_power_cuts_nuls_is_ours(tmp_path, text):
    """A trace of NULs only, or NULs before its lines (delayed allocation after a power cut), was "not an earlier
    trace file" (probe 49a, 4)."""
    from styleengine import paths

    (tmp_path / "t.jsonl").write_text(text)
    paths.check_own(tmp_path / "t.jsonl", "trace", paths.own_trace)


def test_a_trace_reached_by_a_link_keeps_its_other_hard_links_and_its_mode(tmp_path):
    """Through a symbolic link, the earlier trace's inode was truncated, its archive's hard link taking the new
    lines; a private trace's replacement became world-readable (probe 49a, 2 and 3)."""
    from styleengine.cli_job import TraceWriter

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r.jsonl").write_text(TRACE_LINE)
    os.chmod(tmp_path / "runs" / "r.jsonl", 0o600)
    os.link(tmp_path / "runs" / "r.jsonl", tmp_path / "archive.jsonl")
    (tmp_path / "latest.jsonl").symlink_to(tmp_path / "runs" / "r.jsonl")
    trace = TraceWriter(tmp_path / "latest.jsonl")
    trace.write_object({"iteration": 1, "loss": 1.5}, "iteration 1")
    trace.close()
    assert (tmp_path / "archive.jsonl").read_text() == TRACE_LINE
    assert (tmp_path / "runs" / "r.jsonl").read_text() == '{"iteration": 1, "loss": 1.5}\n'
    assert (tmp_path / "latest.jsonl").is_symlink() and (tmp_path / "runs" / "r.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_lock_and_manifest_removed_after_a_line_say_the_manifest_is_gone(tmp_path, monkeypatch, capsys):
    """`rm out/.batch.lock out/manifest.jsonl` after the first line: "no line was written yet" (probe 49a, 8)."""
    from styleengine.engine import batch as engine

    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch

    real, seen = engine.record, []

    def record(*args, **kwargs):
        if seen:
            for name in (".batch.lock", "manifest.jsonl"):
                (tmp_path / "out" / name).unlink(missing_ok=True)
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "record", record)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    line = one_error_line(code, err)
    assert "manifest.jsonl is not there any more (removed during the run)" in line, line


def test_a_users_file_put_at_benchs_json_is_not_said_to_hold_its_rows(tmp_path, monkeypatch, capsys, machine_once):
    """bench said --json "holds the partial document (1 row ...)" when the check before its last write found a
    user's file there, which it kept (probe 49a, 9)."""
    code, err = bench_of_two_sizes(monkeypatch, capsys,
                                   lambda: (tmp_path / "b.json").write_text('{"name": "my package"}\n'),
                                   "--json", tmp_path / "b.json")
    line = one_error_line(code, err)
    assert "not an earlier bench --json file" in line and "holds the partial document" not in line, line
    assert (tmp_path / "b.json").read_text() == '{"name": "my package"}\n'


def test_lines_a_short_queue_got_after_its_read_are_said(tmp_path, monkeypatch, capsys):
    """A jobs file shorter than a chunk is read whole at the start: lines appended during the run were neither run
    nor mentioned, exit 0 (probe 49b, 2). The end says the file grew and that the same command runs them."""
    from styleengine.engine import batch as engine

    real, seen = engine.record, []

    def record(*args, **kwargs):
        if not seen:
            with open(tmp_path / "j.jsonl", "a") as f:
                f.write('{"content": "c.png", "styles": ["s.png"], "output": "q.png"}\n')
        seen.append(1)
        return real(*args, **kwargs)

    try:
        from test_reliability_stop43 import three_jobs_batch
    except ModuleNotFoundError:
        from tests.test_reliability_stop43 import three_jobs_batch

    monkeypatch.setattr(engine, "record", record)
    code, err = three_jobs_batch(tmp_path, monkeypatch, capsys)
    assert code == 0 and "j.jsonl got a line after the batch had read it to its end" in err, err


def test_the_api_does_not_call_a_value_it_refuses_ignored(caplog):
    """`stylise(..., save_every=-1)` warned "save_every is ignored" and then refused it (probe 49b, 4)."""
    import numpy as np

    import styleengine
    from styleengine.errors import ConfigError

    pixels = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ConfigError, match="save_every must be >= 0"):
        styleengine.stylise(pixels, pixels, save_every=-1, size=40, iterations=1, weights="random")
    assert "ignored" not in caplog.text
