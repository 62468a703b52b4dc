"""`styleengine export`: a portable folder (graphs and manifest only), validated where the graph runs; user
errors are one line and exit 1."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from styleengine.export import cache

try:  # tests/ as a plain folder (pytest puts it on sys.path) or as a package
    from test_cli import run_cli
except ModuleNotFoundError:
    from tests.test_cli import run_cli

FAST = ["--weights", "random", "--model", "vgg16", "--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1"]
PORTABLE = sorted(cache.GRAPH_FILES + (cache.META_FILE,))


def test_export_folder_holds_only_portable_graphs(tmp_path, monkeypatch, capsys):
    """...made as mkdir makes a folder (0777 less the umask), without setting the process's umask to read it
    (issue 22: that changed it for every other thread meanwhile)."""
    import os
    import stat

    out = tmp_path / "graphs"
    umask = os.umask(0o027)
    os.umask(umask)
    try:
        os.umask(0o027)

        def no_umask(mask):  # the export must never call it
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *FAST)
    finally:
        monkeypatch.undo()
        os.umask(umask)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert sorted(p.name for p in out.iterdir()) == PORTABLE  # ORT's optimised graph went to the cache
    meta = json.loads((out / cache.META_FILE).read_text())
    assert meta["validated_on"] == "cpu" and len(meta["validation"]) == 3 and meta["ir_version"] == 8
    assert cache.files_match(out, meta["files"])
    for name in cache.GRAPH_FILES:
        model = onnx.load(out / name)
        assert {o.domain for o in model.opset_import} == {""}
    assert "vs torch fp32" in err and "IR 8" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, fp16 and bf16 are validated on CUDA")
@pytest.mark.parametrize("precision,says", [("fp16", "validated on the CPU provider"), ("bf16", "not validated")])
def test_reduced_precision_export_says_where_it_was_validated(tmp_path, monkeypatch, capsys, precision, says):
    out = tmp_path / precision
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *FAST, "--precision", precision)
    assert code == 0, err
    assert says in " ".join(err.split())  # rich wraps long lines
    meta = json.loads((out / cache.META_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == PORTABLE
    if precision == "bf16":
        assert meta["validation"] is None and meta["ir_version"] == 10 and meta["opset"] == 22
    else:
        assert meta["validated_on"] == "cpu" and meta["validation"]


def _under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "graphs"


@pytest.mark.parametrize("args", [
    ["--model", "resnet"],
    ["--precision", "int8"],
    ["--pooling", "median"],
    ["--content-layers", "relu9_9"],
])
def test_bad_settings_are_one_line(tmp_path, monkeypatch, capsys, args):
    out = tmp_path / "graphs"
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *FAST, *args)
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not out.exists()


@pytest.mark.parametrize("where", ["under_a_file", "proc", "missing_parent", "a_file"])
def test_unwritable_output_is_one_line(tmp_path, monkeypatch, capsys, where):
    """Tests run as root, which writes anywhere chmod allows: a path under a regular file, or in /proc
    (where not even root makes folders), are unwritable for everyone."""
    out = {"under_a_file": lambda: _under_a_file(tmp_path), "proc": lambda: Path("/proc/styleengine-graphs"),
           "missing_parent": lambda: tmp_path / "no" / "graphs",
           "a_file": lambda: _under_a_file(tmp_path).parent}[where]()
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *FAST)
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert where == "a_file" or not out.exists()
    assert not list(tmp_path.glob(".styleengine-probe-*"))


# ------------------------------------------- issue 23: staged, published whole, never over a user's file

NO_CHECK = [*FAST, "--no-validate"]


def _earlier(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    for name in PORTABLE:
        (out / name).write_bytes(f"earlier {name}".encode())
    return {name: (out / name).read_bytes() for name in PORTABLE}


def test_existing_files_are_not_replaced_without_force(tmp_path, monkeypatch, capsys):
    out = tmp_path / "graphs"
    out.mkdir()
    (out / "step.onnx").write_bytes(b"the user's own graph")
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK)
    assert code == 1 and "Traceback" not in err and "--force" in err
    assert len(err.strip().splitlines()) == 1, err
    assert (out / "step.onnx").read_bytes() == b"the user's own graph" and len(list(out.iterdir())) == 1


def test_interrupted_export_leaves_the_earlier_one_whole(tmp_path, monkeypatch, capsys):
    out = tmp_path / "graphs"
    before = _earlier(out)

    def interrupted(*args, **kwargs):  # after step.onnx was written
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "build_feature_graph", interrupted)
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK, "--force")
    assert code == 130 and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.rglob(".*")]  # no staging folder left


def test_forced_export_replaces_the_earlier_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "graphs"
    _earlier(out)
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *NO_CHECK, "--force")
    assert code == 0, err
    meta = json.loads((out / cache.META_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == PORTABLE and cache.files_match(out, meta["files"])
    assert not [p for p in tmp_path.rglob(".*")]


def test_validation_mismatch_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from styleengine.engine import validate
    from styleengine.errors import ExportValidationError

    def mismatch(*args, **kwargs):
        raise ExportValidationError("loss differs by 3.1e-01 at 32x32\nmore detail")

    monkeypatch.setattr(validate, "validate_step", mismatch)
    out = tmp_path / "graphs"
    code, _, err = run_cli(monkeypatch, capsys, "export", "-o", out, *FAST)
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "3.1e-01" in err
    assert not out.exists() and not [p for p in tmp_path.rglob(".*")]
