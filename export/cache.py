"""The export cache: ONNX graphs built once per (model, weights, pooling,
layers, opset, precision) and reused by `run` and `bench`.

Each entry is a folder holding step.onnx, features.onnx, tile_step.onnx and export.json
(the spec, the weights' sha256, the files' sha256 and the validation
figures). An entry whose files are missing, truncated or do not match
their recorded hashes is rebuilt, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from styleengine.export.onnx_step import build_feature_graph, build_step_graph, build_tile_graph
from styleengine.export.spec import ExportSpec
from styleengine.model.weights import Weights, file_sha256

# bump when the graph builder changes what it emits: old entries are then ignored
BUILDER_VERSION = 3
STEP_FILE, FEATURES_FILE, TILE_FILE, META_FILE = "step.onnx", "features.onnx", "tile_step.onnx", "export.json"


@dataclass(frozen=True)
class Export:
    folder: Path
    meta: dict

    @property
    def step_path(self) -> Path:
        return self.folder / STEP_FILE

    @property
    def features_path(self) -> Path:
        return self.folder / FEATURES_FILE

    @property
    def tile_path(self) -> Path:
        return self.folder / TILE_FILE


def cache_root() -> Path:
    """$STYLEENGINE_CACHE_DIR, else the platform's user cache folder."""
    env = os.environ.get("STYLEENGINE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("styleengine"))


def cache_key(weights: Weights, spec: ExportSpec) -> str:
    payload = json.dumps({"spec": spec.to_json(), "weights": weights.sha256,
                          "convention": weights.convention.to_json(), "builder": BUILDER_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def write_export(weights: Weights, spec: ExportSpec, folder: Path, validation: list[dict] | None = None) -> Export:
    """Build both graphs into `folder` (created), atomically per file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, build in ((STEP_FILE, build_step_graph), (FEATURES_FILE, build_feature_graph),
                        (TILE_FILE, build_tile_graph)):
        data = build(weights, spec).SerializeToString()
        atomic_write(folder / name, data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    meta = {"builder_version": BUILDER_VERSION, "spec": spec.to_json(), "weights_sha256": weights.sha256,
            "weights_source": weights.source, "convention": weights.convention.to_json(),
            "onnx_version": onnx.__version__, "opset": spec.opset, "precision": spec.precision,
            "dynamic_axes": {"image": {"2": "height", "3": "width"}}, "files": files,
            "inputs": spec.input_names(), "outputs": spec.output_names(),
            "validation": validation}
    atomic_write(folder / META_FILE, json.dumps(meta, indent=2).encode())
    return Export(folder, meta)


def record_validation(export: Export, validation: list[dict]) -> Export:
    meta = dict(export.meta, validation=validation)
    atomic_write(export.folder / META_FILE, json.dumps(meta, indent=2).encode())
    return Export(export.folder, meta)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a cache file is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_entry(folder: Path, weights: Weights, spec: ExportSpec) -> Export | None:
    """The entry if every file is present and matches its recorded hash; None if it must be (re)built."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if (meta.get("builder_version") != BUILDER_VERSION or meta.get("spec") != spec.to_json()
            or meta.get("weights_sha256") != weights.sha256 or not meta.get("validation")):
        return None
    for name, info in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
            return None
    if set(meta.get("files", {})) != {STEP_FILE, FEATURES_FILE, TILE_FILE}:
        return None
    return Export(folder, meta)


def cached_export(weights: Weights, spec: ExportSpec, validate) -> Export:
    """The cached export for (weights, spec), built and validated on a miss.

    validate(export) -> list of per-size figures; it raises on a mismatch,
    in which case nothing is left in the cache.
    """
    folder = cache_root() / "exports" / cache_key(weights, spec)
    found = check_entry(folder, weights, spec)
    if found is not None:
        return found
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=_mkdir(folder.parent)))
    try:
        export = write_export(weights, spec, staging)
        export = record_validation(export, validate(export))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Export(folder, export.meta)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
