"""The cache never serves a damaged file, builds each entry once under concurrency, and cleans up after killed builds.

The tests that count what is in the cache have an empty cache folder of their
own (monkeypatched STYLEENGINE_CACHE_DIR); the others share this module's, so
the export they damage the derived files of is built once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from styleengine.engine.loop import optimise
from styleengine.engine.losses import LossConfig
from styleengine.engine.ort_step import OPTIMISED_FILE, OrtStep, ensure_export, graph_spec, optimised_folder
from styleengine.engine.steps import make_targets
from styleengine.export import cache

SHORT = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "conv3_1"), tv_weight=0.05)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("module_cache")
    mp.setenv("STYLEENGINE_CACHE_DIR", str(root))
    yield root
    mp.undo()


def _losses(weights, export, make_image, iterations: int = 3) -> list[float]:
    """A short L-BFGS run on a fresh ORT step: its per-iteration losses."""
    step = OrtStep(export, graph_spec(weights, SHORT, "avg", "fp32"), SHORT)
    content, style, init = make_image(40, 40, 1), make_image(40, 40, 2), make_image(40, 40, 3)
    step.set_targets(make_targets(step, SHORT, content, [style]))
    result = optimise(step, init, iterations=iterations)
    step.close()
    return [r.loss for r in result.records]


def _optimised(export) -> Path:
    return optimised_folder(export.sha256(export.step_path)) / OPTIMISED_FILE


def test_optimised_graph_is_cached_apart_from_the_export(empty_cache, vgg16_random, make_image):
    export = ensure_export(vgg16_random, SHORT, "avg")
    _losses(vgg16_random, export, make_image, iterations=1)
    assert sorted(p.name for p in export.folder.iterdir()) == sorted(cache.GRAPH_FILES + (cache.META_FILE,))
    entry = _optimised(export).parent
    assert sorted(p.name for p in entry.iterdir()) == [cache.RECORD_FILE, OPTIMISED_FILE]
    assert cache.read_record(entry) is not None


def test_builds_validation_and_hits_are_logged(empty_cache, vgg16_random, make_image, caplog):
    """A library user sees the cache's work through logging (nothing printed)."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="styleengine"):
        export = ensure_export(vgg16_random, SHORT, "avg")
        _losses(vgg16_random, export, make_image, iterations=1)
        ensure_export(vgg16_random, SHORT, "avg")
    messages = [r.getMessage() for r in caplog.records]
    for expected in ("exporting and validating the fp32 step graphs", "validating the fp32 step graph at 64x64",
                     "optimising step.onnx for this CPU", "ONNX Runtime session for", "export cache hit"):
        assert any(m.startswith(expected) for m in messages), (expected, messages)


def test_tampered_same_size_optimised_graph_is_rebuilt(module_cache, vgg16_random, make_image):
    export = ensure_export(vgg16_random, SHORT, "avg")
    clean = _losses(vgg16_random, export, make_image)
    path = _optimised(export)
    original = path.read_bytes()
    data = bytearray(original)
    middle = len(data) // 2
    data[middle:middle + 65536] = os.urandom(65536)  # same size, other bytes (in the weights)
    path.write_bytes(bytes(data))
    assert cache.read_record(path.parent) is None  # the hash no longer matches
    assert _losses(vgg16_random, export, make_image) == pytest.approx(clean, rel=1e-6)
    assert cache.read_record(path.parent) is not None and path.stat().st_size == len(original)  # rebuilt


@pytest.mark.parametrize("size", [0, 2])
@pytest.mark.parametrize("record", ["stale", "matching"])
def test_empty_or_two_byte_optimised_graph_is_rebuilt(module_cache, vgg16_random, make_image, size, record):
    """ORT raises InvalidArgument on such files. 'stale': the hash check catches it; 'matching': the record
    was rewritten to fit the broken file, so only the load error does."""
    export = ensure_export(vgg16_random, SHORT, "avg")
    clean = _losses(vgg16_random, export, make_image, iterations=1)
    path = _optimised(export)
    path.write_bytes(b"\x08\x01"[:size])
    if record == "matching":
        cache.write_record(path.parent, [OPTIMISED_FILE], {"source_sha256": export.sha256(export.step_path)})
    assert _losses(vgg16_random, export, make_image, iterations=1) == pytest.approx(clean, rel=1e-6)
    assert path.stat().st_size > 1000 and cache.read_record(path.parent) is not None


@pytest.mark.parametrize("damage", ["{not json", '{"files": {"step.onnx": 3}}', "[]", "[" * 100000 + "]" * 100000,
                                    "a folder"])
def test_damaged_export_json_is_rebuilt(module_cache, vgg16_random, damage):
    export = ensure_export(vgg16_random, SHORT, "avg")
    meta = export.folder / cache.META_FILE
    if damage == "a folder":
        meta.unlink()
        meta.mkdir()
    else:
        meta.write_text(damage)
    again = ensure_export(vgg16_random, SHORT, "avg")
    assert again.folder == export.folder and again.meta["validation"]


@pytest.mark.parametrize("damage", ["", "{not json", '{"optimised.onnx": {"bytes": "x"}}', "[1]",
                                    "[" * 100000 + "]" * 100000])
def test_damaged_record_is_rebuilt(module_cache, vgg16_random, make_image, damage):
    export = ensure_export(vgg16_random, SHORT, "avg")
    clean = _losses(vgg16_random, export, make_image, iterations=1)
    record = _optimised(export).parent / cache.RECORD_FILE
    record.write_text(damage)
    assert _losses(vgg16_random, export, make_image, iterations=1) == pytest.approx(clean, rel=1e-6)
    assert cache.read_record(record.parent) is not None


_FIRST_RUN = """
import json, sys, time
from pathlib import Path
from styleengine.engine.losses import LossConfig
from styleengine.engine.ort_step import make_graph_step
from styleengine.engine.steps import make_targets
from styleengine.model.weights import load_weights
import torch

barrier = Path(sys.argv[1])
weights = load_weights("vgg16", "random", seed=0)
loss = LossConfig(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "conv3_1"), tv_weight=0.05)
(barrier / f"ready-{sys.argv[2]}").touch()
while not (barrier / "go").exists():
    time.sleep(0.01)
step = make_graph_step("ort", weights, loss)
gen = torch.Generator().manual_seed(0)
content, style, image = (torch.rand(1, 3, 40, 40, generator=gen) for _ in range(3))
step.set_targets(make_targets(step, loss, content, [style]))
print(json.dumps({"loss": step(image).loss}))
"""


def test_two_concurrent_first_runs_share_one_entry(empty_cache, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, STYLEENGINE_CACHE_DIR=str(empty_cache))
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_RUN, str(barrier), str(i)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 120
    while not all((barrier / f"ready-{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a run died before the start"
        time.sleep(0.05)
    (barrier / "go").touch()  # both start the export at once
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    losses = [json.loads(out)["loss"] for out, _ in outputs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    exports = empty_cache / "exports"
    entries = [p for p in exports.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and not list(exports.glob(".build-*"))
    meta = json.loads((entries[0] / cache.META_FILE).read_text())
    assert cache.files_match(entries[0], meta["files"]) and meta["validation"]
    optimised = [p for p in (empty_cache / "ort-optimised").glob("*/*") if not p.name.startswith(".")]
    assert len(optimised) == 2  # the step graph's and the feature graph's, once each
    assert all(cache.read_record(p) is not None for p in optimised)
    assert not list((empty_cache / "ort-optimised").glob("*/.build-*"))


_KILLED_BUILD = """
import sys, time
from styleengine.engine.losses import LossConfig
from styleengine.engine.ort_step import graph_spec
from styleengine.export.cache import cached_export
from styleengine.model.weights import load_weights

weights = load_weights("vgg16", "random", seed=0)
loss = LossConfig(content_layers=("relu1_2",), style_layers=("relu1_1",))
cached_export(weights, graph_spec(weights, loss, "avg", "fp32"), lambda export: time.sleep(600))
"""


def test_build_folder_of_a_killed_process_is_removed(empty_cache, vgg16_random):
    env = dict(os.environ, STYLEENGINE_CACHE_DIR=str(empty_cache))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD], env=env, stderr=subprocess.PIPE, text=True)
    exports = empty_cache / "exports"
    try:
        deadline = time.time() + 120
        while not list(exports.glob(".build-*/export.json")):  # written, now 'validating'
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        (building,) = exports.glob(".build-*")
        ensure_export(vgg16_random, SHORT, "avg")  # another entry: must leave a live build alone
        assert building.is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert building.is_dir()  # SIGKILL runs no clean-up
    ensure_export(vgg16_random, SHORT, "avg")  # a cache hit, yet the next run cleans the folder
    assert not building.exists()


def test_unowned_build_folder_is_removed_once_old(module_cache, vgg16_random):
    """A .build-XXXX folder with no lock beside it (from a version before locks): removed after an hour."""
    exports = module_cache / "exports"
    old, recent = exports / ".build-abc_1234", exports / ".build-def_5678"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "step.onnx").write_bytes(b"x" * 100)
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    ensure_export(vgg16_random, SHORT, "avg")
    assert not old.exists() and recent.is_dir()


def test_unwritable_cache_is_a_user_error(tmp_path, monkeypatch, vgg16_random):
    from styleengine.errors import ConfigError

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("STYLEENGINE_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ConfigError, match="STYLEENGINE_CACHE_DIR"):
        ensure_export(vgg16_random, SHORT, "avg")


def test_republishing_leaves_only_the_entry_and_its_lock(empty_cache):
    """Lock files are the only thing an entry leaves beside itself."""
    folder = empty_cache / "exports" / "k"
    with cache.entry_lock(folder):
        with cache.staging_folder(folder) as staging:
            (staging / "f").write_bytes(b"1")
            cache.write_record(staging, ["f"])
            cache.publish(staging, folder)
    with cache.entry_lock(folder):  # replacing an entry moves the old one aside, then removes it
        with cache.staging_folder(folder) as staging:
            (staging / "f").write_bytes(b"2")
            cache.write_record(staging, ["f"])
            cache.publish(staging, folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == [".k.lock", "k"]
    assert (folder / "f").read_bytes() == b"2" and cache.read_record(folder) is not None


# ------------------------------------------------ issue 23: entries checked on use against what they claim

def test_replaced_optimised_entry_with_its_record_is_rebuilt(module_cache, vgg16_random, random_weights, make_image):
    """Another network's optimised graph copied in with its own (matching) record: the record says which
    graph it was derived from, so it is rebuilt, not run."""
    import shutil

    other = random_weights("vgg16", 1)
    export, other_export = ensure_export(vgg16_random, SHORT, "avg"), ensure_export(other, SHORT, "avg")
    clean = _losses(vgg16_random, export, make_image, iterations=1)
    _losses(other, other_export, make_image, iterations=1)
    entry, other_entry = _optimised(export).parent, _optimised(other_export).parent
    for name in (OPTIMISED_FILE, cache.RECORD_FILE):
        shutil.copyfile(other_entry / name, entry / name)
    assert cache.read_record(entry) is not None  # consistent in itself
    assert _losses(vgg16_random, export, make_image, iterations=1) == pytest.approx(clean, rel=1e-6)
    assert (entry / OPTIMISED_FILE).read_bytes() != (other_entry / OPTIMISED_FILE).read_bytes()


def test_replaced_export_of_another_convention_is_rebuilt(module_cache, vgg16_random):
    """An export folder replaced, export.json included, by one of the same weights with another input
    convention (baked into the graph): check_entry compares what export.json claims, convention included."""
    import dataclasses
    import shutil

    bgr = dataclasses.replace(vgg16_random, convention=dataclasses.replace(vgg16_random.convention,
                                                                          channel_order="BGR"))
    spec = graph_spec(vgg16_random, SHORT, "avg", "fp32")
    export, other = ensure_export(vgg16_random, SHORT, "avg"), ensure_export(bgr, SHORT, "avg")
    assert export.folder != other.folder
    for name in (*cache.GRAPH_FILES, cache.META_FILE):
        shutil.copyfile(other.folder / name, export.folder / name)
    assert cache.check_entry(export.folder, vgg16_random, spec) is None


def _forge_record(folder: Path, record_file: str, section: str | None) -> None:
    """Rewrite a record so each file's hash and size match what is in the folder now (a forged record)."""
    record = json.loads((folder / record_file).read_text())
    files = record[section] if section else record
    for name in files:
        files[name] = {"sha256": cache.file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / record_file).write_text(json.dumps(record))


def test_another_networks_graph_with_a_rewritten_record_is_exported_again(module_cache, vgg16_random,
                                                                           random_weights, caplog):
    """Another network's step graph copied into an entry and export.json's hashes rewritten to match it ran the
    other network silently (issue 23's "forged cache record", left from probes 4-9): every graph says in its
    own metadata which weights and spec it holds, read on use without parsing the graph."""
    import shutil

    other = random_weights("vgg16", 1)
    spec = graph_spec(vgg16_random, SHORT, "avg", "fp32")
    export, other_export = ensure_export(vgg16_random, SHORT, "avg"), ensure_export(other, SHORT, "avg")
    shutil.copyfile(other_export.step_path, export.step_path)
    _forge_record(export.folder, cache.META_FILE, "files")
    assert cache.files_match(export.folder, json.loads((export.folder / cache.META_FILE).read_text())["files"])
    with caplog.at_level("WARNING"):
        assert cache.check_entry(export.folder, vgg16_random, spec) is None
    assert "step.onnx graph that does not say it is of these weights" in caplog.text
    again = ensure_export(vgg16_random, SHORT, "avg")
    assert cache.read_graph_claims(again.step_path)["weights_sha256"] == vgg16_random.sha256


def test_another_graphs_optimised_file_with_a_rewritten_record_is_optimised_again(module_cache, vgg16_random,
                                                                                  random_weights, make_image, caplog):
    """The same forgery one level down: ORT's optimised graph of another network, files.json rewritten to match
    it (its claims naming this graph's hash) ran the other network."""
    import shutil

    other = random_weights("vgg16", 2)
    export, other_export = ensure_export(vgg16_random, SHORT, "avg"), ensure_export(other, SHORT, "avg")
    clean = _losses(vgg16_random, export, make_image, iterations=1)
    _losses(other, other_export, make_image, iterations=1)
    entry, other_entry = _optimised(export).parent, _optimised(other_export).parent
    shutil.copyfile(other_entry / OPTIMISED_FILE, entry / OPTIMISED_FILE)
    _forge_record(entry, cache.RECORD_FILE, "files")
    assert cache.read_record(entry, {"source_sha256": export.sha256(export.step_path)}) is not None
    with caplog.at_level("WARNING"):
        assert _losses(vgg16_random, export, make_image, iterations=1) == pytest.approx(clean, rel=1e-6)
    assert "says it is another graph" in caplog.text


@pytest.mark.parametrize("data", [b"", b"\x08", b"\x80\x80", b"\x72\xff\xff\xff\x0f", b"\x0f\x00", b"garbage!"])
def test_a_file_that_is_no_model_claims_nothing(tmp_path, data):
    (tmp_path / "g.onnx").write_bytes(data)
    assert cache.read_graph_claims(tmp_path / "g.onnx") == {}
