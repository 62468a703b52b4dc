"""Many pictures in one process: jobs, their settings hash, the manifest, warm steps, shape groups.

A job is one `styleengine run`: a content image, style images with blend
weights, an output path, and per-job overrides of the batch's Settings. The
caller (cli_batch, or a Ray actor through engine/batch_ray.py) plans the
jobs against the manifest of an earlier run (`plan`: skipped where the
output exists with the same settings hash), then runs what is left
(`run_jobs`) with one `Warm` (weights loaded once, each step built once
per model, weights, pooling, layers, precision, backend and device) and
records each finished job (`record`: the image written atomically, then
one manifest line). Jobs of one shape and one loss (`group_key`) are
optimised together in batches on the torch backend; graph backends,
coarse to fine and tiling run one job at a time on the warm step.

No printing, no argument parsing: a UserError of one job (a bad image, a
size too small for it) fails that job with its one-line message; anything
else is a bug and propagates.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from styleengine import paths
from styleengine.choices import INITS
from styleengine.engine import images
from styleengine.engine.stylise import (Picture, Settings, available_memory, batch_key, build_step, check_run,
                                       lbfgs_history, lbfgs_pair_bytes, load_run_weights, stylise_batch)
from styleengine.engine.tiled import tile_for_budget
from styleengine.errors import ConfigError, UserError, first_line
from styleengine.model.weights import file_sha256

MANIFEST = "manifest.jsonl"  # in the output folder
LOCK_FILE = ".batch.lock"  # in the output folder: held by the batch writing there
CHUNK = 64  # jobs planned, checked and run at a time (a multiple of MAX_BATCH): a long file starts at once
# per-job overrides a jobs file may set, by Settings field; the backend, device, provider, precision,
# input convention and snapshots belong to the whole batch (one process, one warm device)
OVERRIDES: dict[str, Callable[[Any], Any]] = {}
_ALIASES = {"iters": "iterations", "mem_budget": "mem_budget_gib", "blend": "style_blend"}
_JOB_KEYS = ("id", "content", "style", "styles", "output")  # the columns / keys that are not overrides
# image suffixes --contents / --styles folders are read for
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _text_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.replace(";", ",").split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("not a text or a list of texts")


def _whole(value: Any) -> int:
    """An int, or a text of one (a CSV cell); never a bool, a fraction or a float (1e20 is a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    else:
        raise ValueError("not a whole number")
    if abs(number) >= 2**63:
        raise ValueError("out of range")
    return number


def _real(value: Any) -> float:
    """A finite number, or a text of one; never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _word(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a text")
    return value.strip()


def _number_list(value: Any) -> tuple[float, ...]:
    if isinstance(value, list):
        return tuple(_real(v) for v in value)
    return tuple(_real(v) for v in _text_list(value))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None or (isinstance(value, str) and value.strip() == "") else convert(value)


for _name in ("size", "iterations", "seed"):
    OVERRIDES[_name] = _whole
for _name in ("lbfgs_history", "scales", "start_size", "iters_per_scale", "tile"):
    OVERRIDES[_name] = _optional(_whole)
for _name in ("content_weight", "style_weight", "tv_weight", "style_scale", "lbfgs_max_step"):
    OVERRIDES[_name] = _real
for _name in ("lr", "mem_budget_gib"):
    OVERRIDES[_name] = _optional(_real)
for _name in ("optimizer", "init", "model", "weights", "pooling", "weighting"):
    OVERRIDES[_name] = _word
for _name in ("content_layers", "style_layers"):
    OVERRIDES[_name] = _text_list
for _name in ("style_layer_weights", "style_blend"):
    OVERRIDES[_name] = _optional(_number_list)
OVERRIDES["preserve_colors"] = _flag


@dataclass(frozen=True)
class Job:
    """One picture to make: `content` styled by `styles` (blend weights in overrides["style_blend"])."""

    id: str
    content: Path
    styles: tuple[Path, ...]
    output: Path
    overrides: tuple[tuple[str, Any], ...] = ()  # (Settings field, value), sorted by field
    where: str = ""  # "FILE line N" for a job from a jobs file: where errors about it point

    def settings(self, base: Settings) -> Settings:
        """The batch's settings with this job's overrides."""
        return dataclasses.replace(base, **dict(self.overrides))

    def inputs(self) -> dict[str, Path]:
        """The files the job reads by its own paths (the batch's --init / --weights are checked per job),
        by role: {"content image": ..., "style image 2": ..., "init image": ..., "weights file": ...}."""
        found = {"content image": self.content}
        found.update({f"style image {i + 1}" if len(self.styles) > 1 else "style image": p
                      for i, p in enumerate(self.styles)})
        overrides = dict(self.overrides)
        if overrides.get("init", INITS[0]) not in INITS:
            found["init image"] = Path(overrides["init"])
        if overrides.get("weights", "random") not in ("imagenet", "random"):
            found["weights file"] = Path(overrides["weights"])
        return found

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "content": str(self.content), "styles": [str(p) for p in self.styles],
                "output": str(self.output), "overrides": dict(self.overrides)}


def _overrides(raw: dict[str, Any], where: str, base_dir: Path) -> tuple[tuple[str, Any], ...]:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _ALIASES.get(key.strip().replace("-", "_"), key.strip().replace("-", "_"))
        if name not in OVERRIDES:
            raise ConfigError(f"{where}: {key!r} is not a per-job setting; choose from "
                              f"{', '.join(sorted(set(OVERRIDES) | set(_ALIASES)))}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # an empty CSV cell: the batch's value
        try:
            values[name] = OVERRIDES[name](value)
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(f"{where}: bad {key} {value!r} ({e})") from None
    # a per-job init image or weights file is relative to the jobs file, as its images are
    if values.get("init", INITS[0]) not in INITS:
        values["init"] = str(base_dir / paths.expand(values["init"]))
    if values.get("weights", "random") not in ("imagenet", "random"):
        values["weights"] = str(base_dir / paths.expand(values["weights"]))
    return tuple(sorted(values.items()))


def _default_output(content: Path, styles: Iterable[Path]) -> str:
    return f"{content.stem}__{'+'.join(p.stem for p in styles)}.png"


def _text(raw: dict[str, Any], key: str, where: str, numbers: bool = False) -> str:
    """raw[key] as stripped text ("" if absent); a number only where `numbers` (an id), nothing else."""
    value = raw.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: bad {key} {value!r} (not a text)")


def _inside(output: str, out_dir: Path, where: str) -> Path:
    """out_dir / output, refused if it is absolute or climbs out with '..' (symlinks: JobsCheck)."""
    relative = Path(output)
    if relative.is_absolute() or ".." in relative.parts:
        raise ConfigError(f"{where}: output {output!r} is outside --out {out_dir}; outputs are paths inside it")
    if not relative.name:  # "." or "./": the folder itself
        raise ConfigError(f"{where}: output {output!r} names no file")
    return out_dir / relative


def _job(raw: dict[str, Any], where: str, base_dir: Path, out_dir: Path) -> Job:
    raw = {str(k).strip().lower() if isinstance(k, str) else k: v for k, v in raw.items()}
    content = _text(raw, "content", where)
    styles = raw.get("styles", raw.get("style"))
    try:
        style_names = _text_list(styles) if styles is not None else ()
    except ValueError:
        raise ConfigError(f"{where}: bad styles {styles!r} (a text, ';'-separated, or a list of texts)") from None
    if not content or not style_names:
        raise ConfigError(f"{where}: a job needs a content image and at least one style image")
    content_path = base_dir / content
    style_paths = tuple(base_dir / s for s in style_names)
    output = _text(raw, "output", where) or _default_output(content_path, style_paths)
    output_path = _inside(output, out_dir, where)
    job_id = _text(raw, "id", where, numbers=True) or str(Path(output).with_suffix(""))
    extra = {k: v for k, v in raw.items() if k not in _JOB_KEYS}
    return Job(job_id, content_path, style_paths, output_path, _overrides(extra, where, base_dir), where)


def _csv_rows(lines: Iterator[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV jobs file: ',' or ';' (whichever the header uses), headers trimmed and
    lower-cased, an unclosed quote an error."""
    header = next(lines, "")
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(itertools.chain([header], lines), delimiter=delimiter, strict=True)
    try:
        names = [n.strip().lower() for n in next(reader, [])]
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(names):
                raise ConfigError(f"{path} line {reader.line_num}: more cells than the header has columns")
            yield reader.line_num, dict(zip(names, row))
    except csv.Error as e:
        what = "a quote is not closed" if "end of data" in str(e) or "EOF" in str(e) else str(e)
        raise ConfigError(f"{path} line {reader.line_num}: {what}") from None


def iter_jobs(path: Path, out_dir: Path) -> Iterator[Job]:
    """The jobs of a .jsonl (one object a line) or .csv file (a header row; styles and blend ';'-separated),
    read as they are needed (a long file starts at once and takes no more memory than a short one).

    Keys: content, styles (or style), output (inside out_dir; default
    CONTENT__STYLE.png), id (default: the output's path without suffix), and
    any of OVERRIDES (dashes or underscores; iters, blend and mem_budget as
    the flags spell them). Image, init and weights paths are relative to the
    jobs file's folder. A CSV file may start with a byte-order mark and use
    ';' between cells. Checks across jobs: check_jobs.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block, a device never end
        raise ConfigError(f"cannot read jobs file {path}: not a regular file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"jobs file {path}: unknown suffix {path.suffix or '(none)'!r}; use .jsonl or .csv")
    try:
        f = open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None)
    except OSError as e:
        raise ConfigError(f"cannot read jobs file {path}: {e.strerror or e}") from None
    base_dir = path.parent
    with f:
        try:
            if suffix == ".csv":
                for number, row in _csv_rows(iter(f), path):
                    yield _job(row, f"{path} line {number}", base_dir, out_dir)
                return
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{where}: not JSON ({e.msg})") from None
                except (RecursionError, ValueError) as e:  # nested too deep, or an integer over 4300 digits
                    raise ConfigError(f"{where}: not a job ({type(e).__name__}: {first_line(e)})") from None
                if not isinstance(raw, dict):
                    raise ConfigError(f"{where}: a job is a JSON object")
                yield _job(raw, where, base_dir, out_dir)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read jobs file {path}: {getattr(e, 'strerror', None) or e}") from None


def load_jobs(path: Path, out_dir: Path) -> list[Job]:
    """Every job of a jobs file (iter_jobs), checked together (check_jobs)."""
    jobs = list(iter_jobs(path, out_dir))
    check_jobs(jobs, out_dir)
    return jobs


def chunks(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    """`jobs` in lists of `size` (the last shorter)."""
    iterator = iter(jobs)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _images_in(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{what} {folder} is not a folder")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not found:
        raise ConfigError(f"{what} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def pair_jobs(contents: Path, styles: Path, out_dir: Path) -> list[Job]:
    """Every content image of one folder with every style image of another: CONTENT__STYLE.png."""
    jobs = [Job(Path(_default_output(c, [s])).stem, c, (s,), out_dir / _default_output(c, [s]))
            for c in _images_in(Path(contents), "--contents") for s in _images_in(Path(styles), "--styles")]
    check_jobs(jobs, out_dir)
    return jobs


class _Resolver:
    """os.path.realpath with each folder's resolution kept: jobs share a few folders, and realpath costs a
    system call per component."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        full = os.path.join(self._folders[folder], name)
        return os.path.realpath(full) if os.path.islink(full) else full

    def identities(self, path: Path) -> list[Any]:
        """What names one file: its resolved path and, when it exists, its device and inode (hard links)."""
        if "\0" in str(path):  # no file at all (plan fails the job)
            return [os.path.abspath(path)]
        found: list[Any] = [self(path)]
        try:
            info = os.stat(path)
            found.append((info.st_dev, info.st_ino))
        except OSError:  # not there yet
            pass
        return found


class JobsCheck:
    """The checks across jobs, made as they stream past: ids unique; no output that is another's output,
    any job's input (content, style, per-job init or weights; after symlinks, relative paths and hard
    links), the manifest or the lock. Keeps only what the checks compare."""

    def __init__(self, out_dir: Path):
        self.count = 0
        self._out_dir = Path(out_dir)
        self._resolve = _Resolver()
        self._root = self._resolve(self._out_dir)
        self._ids: set[str] = set()
        self._reserved = {key: f"the batch's {name}" for name in (MANIFEST, LOCK_FILE)
                          for key in self._resolve.identities(self._out_dir / name)}
        self._inputs: dict[Any, str] = {}
        self._outputs: dict[Any, str] = {}
        self._known: dict[str, list[Any]] = {}  # path -> identities: inputs repeat from job to job

    def _keys(self, path: Path) -> list[Any]:
        text = str(path)
        if text not in self._known:
            self._known[text] = self._resolve.identities(path)
        return self._known[text]

    def add(self, job: Job) -> None:
        """ConfigError (pointing at the job's line) if `job` conflicts with itself or an earlier job."""
        where = f"{job.where}: " if job.where else ""
        if job.id in self._ids:
            raise ConfigError(f"{where}two jobs have the id {job.id}; each job needs its own")
        inputs = {role: (path, self._keys(path)) for role, path in job.inputs().items()}
        mine = {key: f"its own {role} {path}" for role, (path, keys) in inputs.items() for key in keys}
        outputs = self._resolve.identities(job.output)  # not kept in _known: every output is a new path
        if "\0" not in str(job.output) and os.path.commonpath([self._root, outputs[0]]) != self._root:
            raise ConfigError(f"{where}output {job.output} is outside --out {self._out_dir} (through a symbolic "
                              f"link to {outputs[0]}); outputs are paths inside it")
        for key in outputs:
            found = self._reserved.get(key) or mine.get(key) or self._inputs.get(key) or self._outputs.get(key)
            if found:
                raise ConfigError(f"{where}output {job.output} is {found}; choose another name")
        for role, (path, keys) in inputs.items():
            found = next((self._outputs[key] for key in keys if key in self._outputs), None)
            if found:
                raise ConfigError(f"{where}the {role} {path} is {found}; choose another name for that output")
        self._ids.add(job.id)
        source = f" ({job.where})" if job.where else ""
        for key in outputs:
            self._outputs[key] = f"the output of job {job.id}{source}"
        for role, (path, keys) in inputs.items():
            for key in keys:
                self._inputs.setdefault(key, f"the {role} {path} of job {job.id}{source}")
        self.count += 1


def check_jobs(jobs: Iterable[Job], out_dir: Path) -> int:
    """JobsCheck over every job; how many there are."""
    check = JobsCheck(out_dir)
    for job in jobs:
        check.add(job)
    return check.count


# ------------------------------------------------------------------ hashes and the manifest

def file_digest(path: Path, cache: dict[str, str] | None = None) -> str:
    """sha256 of a file's bytes: OSError if it cannot be read, UserError if it is not a regular file (a
    FIFO would block until a writer comes, a device never end)."""
    key = os.path.abspath(path)
    if cache is not None and key in cache:
        return cache[key]
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"cannot read {path}: not a regular file")
    digest = file_sha256(Path(path))
    if cache is not None:
        cache[key] = digest
    return digest


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, Path):
        return str(value)
    return value


def settings_hash(job: Job, settings: Settings, convention: dict[str, Any], digests: dict[str, str]) -> str:
    """sha256 of what decides the picture: the resolved Settings (with the job's overrides), the input
    convention overrides, the job's overrides, and the bytes of every file read (content, styles, an init
    image, a weights file). OSError if a file cannot be read. 16 hex digits."""
    files = [job.content, *job.styles]
    if settings.init not in INITS:
        files.append(Path(settings.init))
    if settings.weights not in ("imagenet", "random"):
        files.append(Path(settings.weights))
    # neither decides the picture: snapshots, and keys a --non-strict load ignored (a hash from before that
    # field existed stays valid)
    kept = {k: v for k, v in _jsonable(dataclasses.replace(settings, save_every=0)).items() if k != "non_strict"}
    payload = {"settings": kept,
               "convention": _jsonable(convention), "overrides": _jsonable(dict(job.overrides)),
               "files": [file_digest(p, digests) for p in files]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_STATUSES = ("ok", "failed", "skipped")


def _manifest_problem(entry: Any) -> str | None:
    """Why a parsed manifest line cannot be used, or None."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    if not isinstance(entry.get("id"), str):
        return "no job id (a text)"
    if entry.get("status") not in _STATUSES:
        return f"status {entry.get('status')!r} is none of {', '.join(_STATUSES)}"
    if entry["status"] == "ok" and not isinstance(entry.get("settings_hash"), str):
        return "an ok line without its settings hash (a text)"
    return None


class Manifest:
    """The results manifest: one JSON object a line, appended as jobs finish.

    Each line goes out on a file opened with O_APPEND, written whole (a short
    write is continued; a failed one is cut off again) and fsync'd. A torn
    last line (a power cut mid-write) is cut off by `load` before anything is
    appended; a line that cannot be used is reported by number and skipped.
    Hold the batch's lock (`locked`) around `load` and `append`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(the usable lines written so far, a sentence per line that is not); nothing if no manifest yet."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        entries, problems = [], []
        for number, raw in enumerate(data.split(b"\n")[:-1], 1):  # a torn tail has no newline: load cuts it
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem: str | None = "not UTF-8 text"
            except json.JSONDecodeError as e:
                problem = f"not JSON ({e.msg})"
            except (RecursionError, ValueError) as e:  # nested too deep, or an integer over 4300 digits
                problem = f"not a manifest entry ({type(e).__name__})"
            else:
                problem = _manifest_problem(entry)
            if problem is None:
                entries.append(entry)
            else:
                problems.append(f"{self.path} line {number}: {problem}; skipped")
        return entries, problems

    def load(self) -> tuple[dict[str, str], list[str]]:
        """(job id -> settings hash of its latest "ok" line, a sentence per problem), a torn last line cut off
        first. UserError if the file cannot be read or repaired."""
        try:
            with open(self.path, "r+b") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
                    number = data.count(b"\n") + 1
                    torn = [f"{self.path} line {number} was torn (a write cut short); cut off"]
                else:
                    torn = []
        except FileNotFoundError:
            return {}, []
        except OSError as e:
            raise UserError(f"cannot use the manifest {self.path}: {e.strerror or e}") from None
        entries, problems = self.read()
        done = {e["id"]: e["settings_hash"] for e in entries if e["status"] == "ok"}
        return done, torn + problems

    def append(self, entry: dict[str, Any]) -> None:
        """One line, written whole or not at all; UserError (disk full, say) if it cannot be."""
        data = memoryview((json.dumps(entry, sort_keys=True) + "\n").encode())
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot write the manifest {self.path}: {e.strerror or e}") from None
        try:
            start = os.fstat(fd).st_size
            try:
                while data:
                    written = os.write(fd, data)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    data = data[written:]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no torn line left behind
                raise
        except OSError as e:
            raise UserError(f"cannot write the manifest {self.path}: {e.strerror or e}") from None
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold out_dir's batch lock (LOCK_FILE); UserError at once if another process holds it."""
    path = Path(out_dir) / LOCK_FILE
    try:
        f = open(path, "a+b")
    except OSError as e:
        raise UserError(f"cannot lock {out_dir} ({path}: {e.strerror or e})") from None
    with f:
        if not paths.try_lock(f, blocking=False):
            raise UserError(f"another batch is running on {out_dir} (it holds {path}); wait for it to finish "
                            f"or use another --out")
        yield  # closing the file releases the lock


# ------------------------------------------------------------------ planning

@dataclass
class Planned:
    """A job with its resolved settings, its hash and what to do with it."""

    job: Job
    settings: Settings | None  # None: the settings themselves are bad (status "failed")
    hash: str | None
    status: str  # "run", "skipped" or "failed"
    reason: str | None = None


@dataclass
class JobResult:
    """A finished job: the manifest's fields, and the image to write for an "ok" job."""

    job: Job
    status: str  # "ok", "failed" or "skipped"
    reason: str | None
    settings_hash: str | None
    seconds: float = 0.0
    device: str | None = None
    iterations: int = 0
    losses: dict[str, float] | None = None
    distances: dict[str, Any] | None = None
    batch: int = 1  # how many jobs were optimised together with this one (itself included)
    image: np.ndarray | None = field(default=None, repr=False)

    def manifest_line(self) -> dict[str, Any]:
        return {"id": self.job.id, "status": self.status, "reason": self.reason, "output": str(self.job.output),
                "settings_hash": self.settings_hash, "seconds": round(self.seconds, 3), "device": self.device,
                "iterations": self.iterations, "losses": self.losses, "distances": self.distances,
                "batch": self.batch}


def plan(jobs: list[Job], base: Settings, convention: dict[str, Any], done: dict[str, str],
         digests: dict[str, str] | None = None) -> list[Planned]:
    """Each job's settings and hash; "skipped" where its output exists and `done` (Manifest.load) has the
    same hash for it; "failed" where its settings are bad or a file cannot be read. `digests`: file hashes
    kept from chunk to chunk."""
    digests = {} if digests is None else digests
    planned = []
    for job in jobs:
        try:
            for role, path in {"output": job.output, **job.inputs()}.items():
                paths.check_name(path, role)
            settings = job.settings(base)
            settings.validate()
            settings = settings.resolved()
            digest = settings_hash(job, settings, convention, digests)
        except UserError as e:
            planned.append(Planned(job, None, None, "failed", first_line(e)))
            continue
        except OSError as e:
            planned.append(Planned(job, None, None, "failed",
                                   f"cannot read {e.filename}: {e.strerror or type(e).__name__}"))
            continue
        skip = done.get(job.id) == digest and job.output.is_file()
        planned.append(Planned(job, settings, digest, "skipped" if skip else "run"))
    return planned


def record(result: JobResult, manifest: Manifest,
           rescue: Callable[[np.ndarray, Path], Path | None] | None = None) -> JobResult:
    """Write an "ok" job's image (atomically), then its manifest line. A failed write turns the job into a
    failed one (its line says why), the image handed to `rescue(image, output)` (-> where it saved it, or
    None). Returns what was recorded; UserError if the manifest cannot be written."""
    if result.status == "ok":
        try:
            images.save_image(result.image, result.job.output)
        except UserError as e:
            saved = rescue(result.image, result.job.output) if rescue is not None else None
            reason = first_line(e) + (f"; saved the image to {saved} instead" if saved is not None else "")
            result = dataclasses.replace(result, status="failed", reason=reason)
    manifest.append(result.manifest_line())
    return result


# ------------------------------------------------------------------ running

class Warm:
    """What one process keeps across jobs: the weights, loaded once per (model, weights, seed of random
    weights, convention), and the steps, built once per (model, weights, pooling, content and style layers,
    precision, backend, device, provider). Close it (or use it as a context manager) to free the steps."""

    def __init__(self, convention: dict[str, Any] | None = None):
        self.convention = dict(convention or {})
        self._weights: dict[tuple, Any] = {}
        self._steps: dict[tuple, Any] = {}
        self.steps_built = 0

    def weights(self, settings: Settings):
        seed = settings.seed if settings.weights == "random" else None
        key = (settings.model, settings.weights, seed, settings.non_strict)
        if key not in self._weights:
            self._weights[key] = load_run_weights(settings, self.convention)
        return self._weights[key]

    def step(self, settings: Settings, texture: bool = False):
        """The warm step for these resolved settings (built on first use); its loss weights are set by
        whoever runs it (stylise)."""
        weights = self.weights(settings)
        loss = settings.loss_config(texture=texture)
        key = (settings.model, weights.sha256, settings.pooling, loss.content_layers, loss.style_layers,
               settings.precision, settings.backend, settings.device, settings.provider, settings.conv)
        if key not in self._steps:
            self._steps[key] = build_step(settings, weights, loss)
            self.steps_built += 1
        return self._steps[key]

    def close(self) -> None:
        for step in self._steps.values():
            step.close()
        self._steps.clear()

    def __enter__(self) -> "Warm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def device_name(settings: Settings) -> str:
    if settings.backend == "torch":
        from styleengine.engine.steps import resolve_device

        return str(resolve_device(settings.device))
    return f"{settings.backend}:{settings.provider}"


def _load(job: Job, settings: Settings) -> Picture:
    """The job's images, checked against its settings (check_run): UserError with one line."""
    content = images.load_image(job.content)
    styles = [images.load_image(p) for p in job.styles]
    check_run(settings, content.shape[:2], [s.shape[:2] for s in styles], content_label=f"content image {job.content}",
              style_labels=[f"style image {p}" for p in job.styles])
    init_image = images.load_image(settings.init) if settings.init not in INITS else None
    return Picture(content, styles, settings, init_image)


def _finished(item: Planned, result: Any, image: np.ndarray, seconds: float, device: str, batch: int) -> JobResult:
    distances = getattr(result, "distances", None)  # the loop's Result may carry style/content distances
    if distances is not None:
        distances = _jsonable(distances)
    last = result.records[-1] if result.records else None
    losses = ({"loss": last.loss, "content": last.content_loss, "style": last.style_loss, "tv": last.tv_loss}
              if last is not None else None)
    if result.stopped == "non-finite loss":
        return JobResult(item.job, "failed", f"the loss became non-finite after {result.iterations} iterations",
                         item.hash, seconds, device, result.iterations, losses, distances, batch)
    return JobResult(item.job, "ok", None, item.hash, seconds, device, result.iterations, losses, distances,
                     batch, image)


def run_batch(items: list[Planned], warm: Warm) -> list[JobResult]:
    """Run planned jobs together (one job: alone) on the warm step: jobs whose images fail their checks
    fail with the one-line reason; the others, if their outputs share one shape, go through stylise_batch
    as one batch (else one by one). Ctrl-C (the loop stopped "interrupted") is raised as KeyboardInterrupt:
    nothing of the batch is recorded."""
    results: list[JobResult] = []
    loaded: list[tuple[Planned, Picture]] = []
    for item in items:
        assert item.settings is not None and item.status == "run"
        start = time.perf_counter()
        try:
            loaded.append((item, _load(item.job, item.settings)))
        except UserError as e:
            results.append(JobResult(item.job, "failed", first_line(e), item.hash, time.perf_counter() - start,
                                     device_name(item.settings)))
    shapes: dict[tuple[int, int], list[tuple[Planned, Picture]]] = {}
    for item, picture in loaded:
        shapes.setdefault(output_shape(item.settings, picture.content.shape[:2]), []).append((item, picture))
    for members in shapes.values():
        chunks = [members] if len(members) > 1 and batchable(members[0][0].settings) else [[m] for m in members]
        for chunk in chunks:
            results += _run_together(chunk, warm)
    return results


def _run_together(members: list[tuple[Planned, Picture]], warm: Warm) -> list[JobResult]:
    settings = members[0][0].settings
    start = time.perf_counter()
    try:
        out = stylise_batch([picture for _, picture in members], weights=warm.weights(settings),
                            step=warm.step(settings))
    except UserError as e:  # a check that needs the run itself (there are none today beyond _load's)
        return [JobResult(item.job, "failed", first_line(e), item.hash, time.perf_counter() - start,
                          device_name(settings)) for item, _ in members]
    if any(result.stopped == "interrupted" for _, result in out):
        raise KeyboardInterrupt
    seconds = (time.perf_counter() - start) / len(members)  # a batch's time, shared
    return [_finished(item, result, image, seconds, device_name(settings), len(members))
            for (item, _), (image, result) in zip(members, out)]


def output_shape(settings: Settings, content_shape: tuple[int, int]) -> tuple[int, int]:
    return images.long_side_shape(content_shape[0], content_shape[1], settings.size)


def batchable(settings: Settings) -> bool:
    """Whether jobs with these settings may be optimised together: the torch backend, one scale, untiled
    (a memory budget that asks for tiles is checked per shape by batch_size_for)."""
    return settings.backend == "torch" and len(settings.scale_plan()) == 1 and settings.tile is None


MAX_BATCH = 16  # beyond this a CPU gains nothing and a GPU little (the step is already wide)


def batch_size_for(settings: Settings, shape: tuple[int, int]) -> int:
    """How many jobs of this output shape fit in memory together: the largest B <= MAX_BATCH whose B
    images, taken as one image of B times the pixels (the step's memory grows with pixels), fit untiled by
    tile_for_budget's estimate, with B L-BFGS histories, in the memory budget (else the memory available).
    At least 1."""
    height, width = shape
    loss = settings.loss_config()
    budget = settings.mem_budget_gib if settings.mem_budget_gib is not None else available_memory(settings) / 2**30
    history = lbfgs_history(settings, height, width) if settings.optimizer == "lbfgs" else 0
    best = 1
    for count in range(2, MAX_BATCH + 1):
        other = count * history * lbfgs_pair_bytes(height, width)
        try:
            fits = tile_for_budget(budget, settings.model, loss, height * count, width, other_bytes=other) is None
        except ConfigError:
            fits = False
        if not fits:
            break
        best = count
    return best


def _probe_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header (EXIF rotation applied, as load_image does); None if PIL
    cannot tell (the job fails when it is loaded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # load_image will say what it is
        return None
    return height, width


def groups(items: list[Planned], batch_size: int | None = None) -> list[list[Planned]]:
    """The jobs to run, in batches: jobs with equal batch_key()s and one output shape (by the files'
    headers) go together, up to batch_size (None: batch_size_for the shape); the rest alone. Order: first
    appearance."""
    runnable = [item for item in items if item.status == "run"]
    keyed: dict[Any, list[Planned]] = {}
    for number, item in enumerate(runnable):
        assert item.settings is not None
        shape = _probe_shape(item.job.content) if batchable(item.settings) and batch_size != 1 else None
        key = ((batch_key(item.settings), output_shape(item.settings, shape)) if shape is not None
               else ("alone", number))
        keyed.setdefault(key, []).append(item)
    out: list[list[Planned]] = []
    for key, members in keyed.items():
        size = batch_size or (batch_size_for(members[0].settings, key[1]) if key[0] != "alone" else 1)
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def run_jobs(items: list[Planned], warm: Warm, batch_size: int | None = None) -> Iterator[JobResult]:
    """Run the planned jobs whose status is "run", a batch at a time (groups), yielding each job as its
    batch finishes."""
    for members in groups(items, batch_size):
        yield from run_batch(members, warm)


def unrun(item: Planned) -> JobResult:
    """The JobResult of a job that is not run: skipped, or failed at planning."""
    return JobResult(item.job, item.status, item.reason, item.hash)
