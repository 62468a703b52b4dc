"""The cache: exported graphs, and what runtimes derive from them, built once and reused.

Layout under cache_root():
  exports/KEY/               step.onnx, features.onnx, tile_step.onnx, export.json (the spec, the
                             weights' sha256, each file's sha256 and size, the validation figures)
  ort-optimised/TAG/SHA/     ONNX Runtime's optimised CPU graph of the graph with sha256 SHA,
                             for one ORT version and CPU (TAG), and files.json with its hash
  tensorrt/KEY/              a TensorRT engine and files.json

Every entry is a folder published whole: built in a staging folder beside it
(.build-NAME-XXXX), its files hashed into a record, then renamed into place.
Every use checks each file against the record, and the record against what
the caller wants (an export's spec, weights and input convention; a derived
entry's source graph): a file that is missing, of another size or another
hash, or an entry of something else copied in with its own record, makes
the entry be rebuilt, never trusted. Each graph also says in its metadata
what it holds (weights, spec, convention), read on use by skipping the rest
of the file: another graph copied in with a record rewritten to match it is
rebuilt too.
Checking, building and publishing an entry happen under an exclusive lock
(.NAME.lock beside it), so two processes on an empty cache build it once and
neither removes what the other is using; the lock goes with its process, so
a killed process leaves a staging folder whose lock anyone can take, and
the next lock-taker in that folder removes it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import onnx

from styleengine.errors import ConfigError
from styleengine import paths
from styleengine.paths import try_lock
from styleengine.export.onnx_step import build_feature_graph, build_step_graph, build_tile_graph, graph_claims
from styleengine.export.spec import DYNAMIC_AXES, ExportSpec
from styleengine.model.weights import Weights, file_sha256
from styleengine.paths import atomic_write, cache_root  # noqa: F401  (callers read it here)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# bump when the graph builder changes what it emits: old entries are then ignored. 7: fp16 step and tile graphs
# carry a scaled gradient (fp32 and bf16 graphs are byte for byte those of 6, rebuilt once: one key for all)
BUILDER_VERSION = 7
STEP_FILE, FEATURES_FILE, TILE_FILE, META_FILE = "step.onnx", "features.onnx", "tile_step.onnx", "export.json"
GRAPH_FILES = (STEP_FILE, FEATURES_FILE, TILE_FILE)
GRAPH_KINDS = {STEP_FILE: "step", FEATURES_FILE: "features", TILE_FILE: "tile_step"}  # what each says it is
RECORD_FILE = "files.json"  # a derived entry's {file: {sha256, bytes}}
STAGING_PREFIX = ".build-"
# a staging folder with no lock file beside it (made by a version before locks) is stale after this long
UNOWNED_STAGING_AGE_S = 3600


class CacheWriteError(ConfigError):
    """The cache folder cannot take an entry (a full disk, a read-only or unwritable folder)."""


def _cannot_write(where: Path, error: OSError) -> CacheWriteError:
    in_the_way = paths.in_the_way(where)  # a file, FIFO or broken link where a folder of the cache goes
    if in_the_way is not None:
        return CacheWriteError(f"cannot write in the cache folder {where}: {in_the_way}; remove it or set "
                               f"STYLEENGINE_CACHE_DIR to another folder")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space or set STYLEENGINE_CACHE_DIR to another folder"
    elif error.errno == errno.ENOENT:  # removed while it ran (a `rm -r` of the cache): the next run makes it again
        advice = "it was removed while this ran; run again"
    else:  # read-only, not writable, in the way
        advice = "make it writable or set STYLEENGINE_CACHE_DIR to a writable folder"
    return CacheWriteError(f"cannot write in the cache folder {where} ({error.strerror or error}); {advice}")


@dataclass(frozen=True)
class Export:
    """A folder of graphs whose files were checked against meta["files"] (or just written)."""

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

    def sha256(self, path: Path) -> str:
        """The recorded hash of one of this export's files."""
        return self.meta["files"][path.name]["sha256"]


def cache_key(weights: Weights, spec: ExportSpec) -> str:
    payload = json.dumps({"spec": spec.to_json(), "weights": weights.sha256,
                          "convention": weights.convention.to_json(), "builder": BUILDER_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# --- files and records ---

def describe_files(folder: Path, names) -> dict[str, dict]:
    """{name: {sha256, bytes}} of files in `folder`, as a record holds them."""
    return {n: {"sha256": file_sha256(folder / n), "bytes": (folder / n).stat().st_size} for n in names}


def files_match(folder: Path, files: dict[str, dict]) -> bool:
    """Every recorded file present with its size and hash (size first: cheap); False for a malformed record."""
    if not isinstance(files, dict):
        return False
    for name, info in files.items():
        if not (isinstance(name, str) and isinstance(info, dict) and isinstance(info.get("bytes"), int)
                and isinstance(info.get("sha256"), str)):
            return False
        path = folder / name
        if not path.is_file() or path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
            return False
    return True


def _varint(f) -> int | None:
    """A protobuf varint read from `f`; None at the end of the file, ValueError for a cut or overlong one."""
    value = shift = 0
    while byte := f.read(1):
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")
    if shift:
        raise ValueError("the file ends inside a varint")
    return None


def read_graph_claims(path: Path) -> dict[str, str]:
    """The metadata (key: value) an ONNX model file carries, read by skipping its other top-level fields, so a
    270 MB graph costs a few reads; {} for a file that is not a well-formed model (its entry is rebuilt)."""
    from google.protobuf.message import DecodeError

    claims: dict[str, str] = {}
    try:
        with os.fdopen(paths.open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while (key := _varint(f)) is not None:
                field, wire = key >> 3, key & 7
                if wire == 2:
                    length = _varint(f)
                    if length is None or f.tell() + length > size:
                        return {}
                    if field == 14:  # ModelProto.metadata_props: StringStringEntryProto
                        entry = onnx.StringStringEntryProto.FromString(f.read(length))
                        claims[entry.key] = entry.value
                    else:
                        f.seek(length, os.SEEK_CUR)
                elif wire in (1, 5):
                    f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                elif wire != 0 or _varint(f) is None:
                    return {}
    except (OSError, ValueError, DecodeError):  # a link, a FIFO or a file cut short where a graph of ours was
        return {}
    return claims


def claims_match(claims: dict[str, str], wanted: dict[str, str]) -> bool:
    """Whether a graph's metadata says every `wanted` thing it must (other keys: the source's path, ...)."""
    return all(claims.get(key) == value for key, value in wanted.items())


def write_record(folder: Path, names, claims: dict | None = None) -> None:
    """The record of a derived entry: its files' hashes and sizes, and `claims`, what it was derived from
    (the source graph's sha256, ...), compared on every use."""
    record = {"files": describe_files(folder, names), "claims": claims or {}}
    atomic_write(folder / RECORD_FILE, json.dumps(record, indent=2, sort_keys=True).encode(), through=False)


def read_record(folder: Path, claims: dict | None = None) -> dict[str, dict] | None:
    """A derived entry's {file: {sha256, bytes}} if its files all match the record and the record claims
    `claims` (when given); None if the entry must be (re)built."""
    try:
        record = json.loads(paths.read_regular(folder / RECORD_FILE))  # a FIFO would block the read
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError, OSError):  # damaged, nested too deep, a folder where the file was
        return None  # the entry is rebuilt
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return None  # damaged, or a record from before claims: rebuilt
    files = record["files"]
    if not files or not files_match(folder, files):
        return None
    if claims is not None and record.get("claims") != claims:  # another entry's files, copied in with its record
        return None
    return files


# --- entries: locked, staged, published whole ---

def _lock_path(parent: Path, name: str) -> Path:
    return parent / f".{name}.lock"


@contextlib.contextmanager
def entry_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of the entry `folder` (waiting for another process that holds it), and
    remove the staging folders beside it that no live process owns."""
    parent = make_folder(folder.parent)
    path = _lock_path(parent, folder.name)
    try:  # never through a link (it would make its target, maybe outside the cache), never a FIFO's wait
        f = paths.lock_file(path)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ELOOP, errno.EISDIR):
            raise CacheWriteError(f"cannot use the cache folder {parent}: {path} is not a lock file (it "
                                  f"{paths.not_a_file(path) or 'is a symbolic link'}); remove it") from None
        raise _cannot_write(parent, e) from None
    with f:
        try_lock(f, blocking=True)
        _remove_stale_staging(parent, folder.name)
        yield  # closing the file releases the lock


def _remove_stale_staging(parent: Path, held: str) -> None:
    """Staging folders are named .build-OWNER-XXXX and exist only while OWNER's lock is held: one
    whose lock can be taken was left by a process that died (SIGKILL, a power cut)."""
    for staging in parent.glob(f"{STAGING_PREFIX}*"):
        owner = staging.name[len(STAGING_PREFIX):].rsplit("-", 1)[0]
        if owner == held or not staging.is_dir() or staging.is_symlink():  # we hold its lock, or no build of ours
            _remove(staging)
            continue
        # no lock file: made before entries had locks; its age tells
        if paths.abandoned(staging, _lock_path(parent, owner), unowned_age_s=UNOWNED_STAGING_AGE_S):
            logger.info("removing %s, left by a process that died while building", staging)
            _remove(staging)


def _remove(path: Path) -> None:
    """A staging folder removed; anything else by that name (a FIFO, a link) unlinked, never opened (rmtree
    opens what it is given, and a FIFO blocks that open)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def staging_folder(folder: Path) -> Iterator[Path]:
    """A fresh folder to build the entry `folder` in (hold entry_lock(folder)); removed unless published."""
    parent = make_folder(folder.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{folder.name}-", dir=parent))
    except OSError as e:
        raise _cannot_write(parent, e) from None
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, folder: Path) -> None:
    """Rename a built entry into place (hold entry_lock(folder)); an entry found invalid there is
    moved aside first, so the path never points at a half-removed folder."""
    if os.path.lexists(folder):  # a broken link or a loop too: renaming a folder onto it failed "Not a directory"
        logger.info("replacing the invalid cache entry %s", folder)
        old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{folder.name}-", dir=folder.parent))
        try:
            os.replace(folder, old / folder.name)
        except OSError as e:  # the entry itself (immutable, another user's): its folder above takes files
            shutil.rmtree(old, ignore_errors=True)
            raise CacheWriteError(f"cannot replace the damaged cache entry {folder} ({e.strerror or e}); remove it, "
                                  f"or set STYLEENGINE_CACHE_DIR to another folder") from None
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)


def make_folder(path: Path) -> Path:
    """mkdir -p, or a CacheWriteError naming the cache setting when it cannot be made."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(path, e) from None
    return path


def build_entry(folder: Path, names: list[str], claims: dict, build: Callable[[Path], T]) -> T:
    """build(staging) writes the files `names` into a staging folder; they are recorded with `claims` and
    published as the entry `folder` (hold entry_lock(folder)). Returns what build returned; CacheWriteError
    if the cache cannot take them (nothing half-written is left: the staging folder goes)."""
    with staging_folder(folder) as staging:
        result = build(staging)
        try:
            write_record(staging, names, claims)
            publish(staging, folder)
        except OSError as e:
            raise _cannot_write(folder.parent, e) from None
    return result


# --- exports ---

def write_export(weights: Weights, spec: ExportSpec, folder: Path, validation: list[dict] | None = None) -> Export:
    """Build the three graphs into `folder` (created), atomically per file, each strictly checked first."""
    from styleengine.export.check import strict_check

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, build in ((STEP_FILE, build_step_graph), (FEATURES_FILE, build_feature_graph),
                        (TILE_FILE, build_tile_graph)):
        model = build(weights, spec)
        strict_check(model, name)
        data = model.SerializeToString()
        atomic_write(folder / name, data, through=False)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    meta = {"builder_version": BUILDER_VERSION, "spec": spec.to_json(), "weights_sha256": weights.sha256,
            "weights_source": weights.source, "convention": weights.convention.to_json(),
            "onnx_version": onnx.__version__, "opset": spec.opset, "ir_version": model.ir_version,
            "precision": spec.precision, "dynamic_axes": DYNAMIC_AXES, "files": files,
            "inputs": spec.input_names(), "outputs": spec.output_names(),
            "validation": validation, "validated_on": None}
    atomic_write(folder / META_FILE, json.dumps(meta, indent=2).encode(), through=False)
    return Export(folder, meta)


def record_validation(export: Export, validation: list[dict], provider: str = "cpu") -> Export:
    """Store the validation figures, and the ONNX Runtime provider they were made on, in export.json."""
    meta = dict(export.meta, validation=validation, validated_on=provider)
    atomic_write(export.folder / META_FILE, json.dumps(meta, indent=2).encode(), through=False)
    return Export(export.folder, meta)


def check_entry(folder: Path, weights: Weights, spec: ExportSpec) -> Export | None:
    """The entry if every file is present and matches its recorded hash; None if it must be (re)built."""
    try:
        meta = json.loads(paths.read_regular(folder / META_FILE))  # a FIFO would block the read
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError, OSError):  # damaged, nested too deep, a folder or file in its place
        return None  # the entry is rebuilt
    if (not isinstance(meta, dict) or meta.get("builder_version") != BUILDER_VERSION
            or meta.get("spec") != spec.to_json() or meta.get("weights_sha256") != weights.sha256
            or meta.get("convention") != json.loads(json.dumps(weights.convention.to_json()))
            or not meta.get("validation")
            or not isinstance(meta.get("files"), dict) or set(meta["files"]) != set(GRAPH_FILES)
            or not files_match(folder, meta["files"])):
        return None
    for name, kind in GRAPH_KINDS.items():  # another entry's graph, copied in with a record rewritten to match it
        if not claims_match(read_graph_claims(folder / name), graph_claims(spec, weights, kind)):
            logger.warning("the cached export %s holds a %s graph that does not say it is of these weights and "
                           "settings (another network's, or damaged); exporting it again", folder, name)
            return None
    return Export(folder, meta)


def export_folder(weights: Weights, spec: ExportSpec) -> Path:
    """Where the export of (weights, spec) is cached."""
    return cache_root() / paths.CACHE_EXPORTS / cache_key(weights, spec)


def cached_export(weights: Weights, spec: ExportSpec, validate) -> Export:
    """The cached export for (weights, spec), built and validated on a miss.

    validate(export) -> the export with its validation recorded (record_validation); it
    raises on a mismatch, in which case nothing is left in the cache.
    """
    folder = export_folder(weights, spec)
    with entry_lock(folder):
        found = check_entry(folder, weights, spec)
        if found is not None:
            logger.debug("export cache hit: %s", folder)
            return found
        logger.info("exporting and validating the %s step graphs into the cache (%s)", spec.precision, folder)
        with staging_folder(folder) as staging:
            try:
                written = write_export(weights, spec, staging)  # a full disk: an export of VGG19 is ~270 MB
                export = validate(written)  # records its figures in export.json
                publish(staging, folder)
            except OSError as e:
                raise _cannot_write(folder.parent, e) from None
    return Export(folder, export.meta)
