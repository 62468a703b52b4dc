"""The batch's record of what it has done: the settings hash of a job (what decides its picture), the
manifest (one JSON line per finished job, appended whole) and the lock on the output folder.

No printing: a manifest that cannot be read or written is a UserError; lines that cannot be used are
reported by number and skipped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator

from styleengine import paths
from styleengine.engine.settings import BATCH, VIDEO, options
from styleengine.engine.stylise import Settings
from styleengine.errors import ConfigError, UserError
from styleengine.model.weights import file_sha256

if TYPE_CHECKING:
    from styleengine.engine.jobs import Job

MANIFEST = "manifest.jsonl"  # in the output folder
# settings only `video` reads: no batch picture depends on them (hashes from before they existed stay valid)
VIDEO_ONLY = frozenset(options(VIDEO)) - frozenset(options(BATCH))
LOCK_FILE = ".batch.lock"  # in the output folder: held by the batch writing there


def digest_key(path: str | os.PathLike) -> str:
    """Where file_digest keeps a file's hash: the file itself, links and '..' followed (`lnk/../a.png`, with lnk a
    link elsewhere, is not `a.png`: a text-only key gave one file the other's hash)."""
    return os.path.realpath(path)


# a file's hash as last read, by digest_key: kept while the file's stat is the one it was read under (a batch's
# chunks, planned one after another, saw a file changed between them under its old hash)
Digests = dict[str, tuple[tuple[int, ...], str]]


def file_digest(path: Path, cache: Digests | None = None, role: str = "file") -> str:
    """sha256 of a file's bytes: UserError if it is missing or not a regular file (a FIFO would block until a
    writer comes, a device never end), OSError if it cannot be read. `cache` keeps it while the file is unchanged
    (its device, inode, size, modification and change times)."""
    problem = paths.not_a_file(path)
    if problem is not None:  # a missing one too: `video --init nope.png` was a FileNotFoundError traceback
        raise UserError(paths.input_problem(role, path) or f"cannot read {role} {path}: it {problem}")
    key = digest_key(path)
    with os.fdopen(paths.open_regular(path, follow=True), "rb") as f:  # the stat of the bytes hashed
        st = os.fstat(f.fileno())
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        kept = cache.get(key) if cache is not None else None
        if kept is not None and kept[0] == stamp:
            return kept[1]
        digest = paths.stream_sha256(f)
    if cache is not None:
        cache[key] = (stamp, digest)
    return digest


def file_digests(files: dict[str, Path], cache: Digests | None = None) -> dict[str, str]:
    """Each file's sha256 by its role (file_digest)."""
    return {role: file_digest(path, cache, role) for role, path in files.items()}


def read_as_hashed(files: Iterable[tuple[str, str | os.PathLike, str]], since: str, advice: str
                   ) -> dict[str, bytes]:
    """The bytes of each (role, path, sha256) image file, read once, by images.pin_key: what load_image decodes
    under images.reading. UserError where they are not those the hash holds ("ROLE PATH changed SINCE: ...;
    ADVICE"): a file
    replaced between its hash and its decode ran under the old bytes' hash (read twice, a file swapped between
    the reads passed for the other)."""
    from styleengine.engine.images import pin_key

    read = {}
    for role, path, hashed in files:
        problem = paths.input_problem(role, path)
        if problem is not None:
            raise UserError(problem)
        try:
            with os.fdopen(paths.open_regular(path, follow=True), "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"cannot read {role} {path}: {e.strerror or e}") from None
        if hashlib.sha256(data).hexdigest() != hashed:
            raise UserError(f"{role} {path} changed {since}: its bytes are not those its hash holds; {advice}")
        read[pin_key(path)] = data
    return read


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


# settings that name a file: its bytes are hashed, the path as typed is not (`init.png`, `./init.png` and its
# absolute path, or a jobs file read from another folder, are one picture)
FILE_FIELDS = ("init", "weights", "content_masks", "style_masks")


def unspelled(values: dict[str, Any]) -> dict[str, Any]:
    """Settings (or overrides) as JSON with each file they name said as "file": what a hash keeps of them."""
    from styleengine.choices import INITS, WEIGHT_WORDS

    def said(name: str, value: Any) -> Any:
        if value is None or (name == "init" and value in INITS) or (name == "weights" and value in WEIGHT_WORDS):
            return value
        return "file" if name in ("init", "weights") else ["file"] * len(value)  # masks: their count decides

    return {k: said(k, v) if k in FILE_FIELDS else v for k, v in values.items()}


# settings whose whole effect is the plan (its scales' sizes, iterations and tiles)
PLAN_ONLY = ("scales", "start_size", "iters_per_scale", "mem_budget_gib", "tile")


def settings_hash(job: Job, settings: Settings, digests: Digests, scales: list[dict[str, Any]] | None = None,
                  used: dict[str, tuple[str, str]] | None = None) -> str:
    """See settings_hashes: the hash of `settings` as they are."""
    return next(settings_hashes(job, settings, digests, scales, used))


def settings_hashes(job: Job, settings: Settings, digests: Digests, scales: list[dict[str, Any]] | None = None,
                    used: dict[str, tuple[str, str]] | None = None,
                    ways: Iterable[dict[str, Any]] = ({},)) -> Iterator[str]:
    """sha256 of what decides the picture: the Settings as given (a batch's: `auto` as asked, Settings.as_asked;
    with the job's overrides, the input convention's among them), the job's overrides, the plan's scales (sizes,
    iterations, tiles, L-BFGS history: engine/plan.py) and the bytes of every file read (content, styles, an init
    image, a weights file, masks). OSError if a file cannot be read. 16 hex digits. `used` is given each file's
    (path, sha256) by its role: the bytes hashed. One hash for each of `ways` (values of Settings' AUTO_FIELDS
    put in place of these)."""
    from styleengine.engine.settings import run_inputs

    files = run_inputs(job.content, job.styles, settings.init, settings.weights,  # roles, in the hash's order
                       content_masks=settings.content_masks, style_masks=settings.style_masks)
    # neither decides the picture: snapshots, and keys a --non-strict load ignored (hashes from before that
    # field existed stay valid)
    # with the plan's scales, the settings that only decide the plan are in them: `--scales 1` where auto makes
    # one scale is the same picture
    planned = PLAN_ONLY if scales is not None else ()
    kept = {k: v for k, v in unspelled(_jsonable(dataclasses.replace(settings, save_every=0))).items()
            if k != "non_strict" and k not in VIDEO_ONLY and k not in planned}
    if scales is not None:  # a tile as large as the picture is one tile: the untiled step's picture (exact tiling)
        scales = [{**s, "tile": None} if s.get("tile") and s["tile"] >= max(s["height"], s["width"]) else s
                  for s in scales]
    hashed = file_digests(files, digests)
    if used is not None:
        used.update({role: (str(files[role]), sha) for role, sha in hashed.items()})
    payload: dict[str, Any] = {
        "settings": kept, "scales": scales, "files": list(hashed.values()),
        "overrides": unspelled(_jsonable({k: v for k, v in job.overrides if k not in planned}))}
    for way in ways:  # each way of running put in (Settings.ways_alike): the files read and hashed once
        payload["settings"].update(way)
        yield hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_STATUSES = ("ok", "failed", "skipped")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


# what each optional field of a line may hold (None always): a server serves them as they are
_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "reason": ("a text", lambda v: isinstance(v, str)),
    "output": ("a text naming a file", lambda v: isinstance(v, str) and paths.unnameable(v) is None),
    "device": ("a text", lambda v: isinstance(v, str)),
    "seconds": ("a number of seconds", _number),
    "iterations": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "planned_iterations": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "batch": ("a whole number of jobs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "losses": ("names and numbers", lambda v: isinstance(v, dict) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())),
    "distances": ("a JSON object", lambda v: isinstance(v, dict)),
    "last_finite": ("true or false", lambda v: isinstance(v, bool)),  # a failed job that wrote its last image
    "file": ("a text", lambda v: isinstance(v, str)),  # the output's place in the manifest's folder (place())
    "output_sha256": ("a text", lambda v: isinstance(v, str)),  # of the picture the line's job wrote there
}


def place(folder: Path, output: str | Path) -> str:
    """An output's place in its manifest's folder (a batch's --out): one text however --out was spelled and from
    wherever the batch ran (its folders' symbolic links followed, not a link that is the file itself)."""
    output = Path(output)
    return os.path.relpath(os.path.join(os.path.realpath(output.parent), output.name), os.path.realpath(folder))


@dataclasses.dataclass(frozen=True)
class Finished:
    """What a manifest says is done: (job id, its output's place) -> (the settings hash, the picture's sha256 or
    None in a line written before lines said it) of the ok line that last wrote that output (Manifest.load)."""

    folder: Path
    lines: dict[tuple[str, str], tuple[str, str | None]] = dataclasses.field(default_factory=dict)

    def hash_of(self, job_id: str, output: Path) -> str | None:
        """The settings hash of job `job_id`'s ok line that last wrote `output`, or None."""
        found = self.lines.get((job_id, place(self.folder, output)))
        return None if found is None else found[0]

    def holds(self, job_id: str, output: Path, settings_hash: str) -> bool:
        """Whether `output` is job `job_id`'s finished picture of these settings: its ok line last wrote it with
        this hash, and the file is still what that line wrote (a picture written with no line since is not)."""
        found = self.lines.get((job_id, place(self.folder, output)))
        if found is None or found[0] != settings_hash or not output.is_file():
            return False
        try:
            return found[1] is None or file_sha256(output) == found[1]
        except OSError:  # unreadable now: run it again, which says why if it cannot be written either
            return False


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
    for name, (wanted, fits) in _FIELDS.items():
        if entry.get(name) is not None and not fits(entry[name]):
            return f"its {name} is not {wanted}"
    return None


def _parsed(line: bytes) -> Any:
    """A line as JSON, or _NOT_JSON."""
    try:  # utf-8-sig: an editor's byte-order mark before the first line
        return json.loads(line.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON (the empty tail of a whole file among them)
        return _NOT_JSON


_NOT_JSON = object()


def whole_line(tail: bytes) -> bool:
    """Whether a last line without its newline is whole (a write cut short never is: a line is one JSON object,
    and no prefix of one parses); one that is no entry is said and skipped by `read`, never cut. The jobs file's
    reader asks the same of a line rewritten after its read."""
    return _parsed(tail) is not _NOT_JSON


# how every line a batch or server writes starts: its keys sorted (Manifest.append), "batch" (a count) and
# "device" the first two of a result's (batch.JobResult.manifest_line)
_LINE_START = b'{"batch": '
_LINE_ON = b', "device": '  # then a device's name, or null (a job that failed before it ran)


def _torn_of_ours(tail: bytes) -> bool:
    """Whether `tail` is a prefix of how a line of ours starts (`{"batch": 3, "device": "` or `null`, or all of
    that and more, the start of some JSON): a prefix of another tool's line that happens to start `{"batch": ` is
    not (probe 54a, 2), nor one that goes wrong before its end (`"note": "kept",}`, probe 59a, 5)."""
    if not _LINE_START.startswith(tail[:len(_LINE_START)]):
        return False
    count = re.match(rb"\d*", tail[len(_LINE_START):])
    assert count is not None  # \d* matches the empty string
    after = tail[len(_LINE_START) + count.end():]
    return not after or (count.end() > 0 and _LINE_ON.startswith(after[:len(_LINE_ON)]) and _json_prefix(tail)
                         and (len(after) <= len(_LINE_ON) or after[len(_LINE_ON):len(_LINE_ON) + 1] in b'"n'))


# what may follow where json stops reading a prefix of a line: a number, true, false or null cut within; an
# escape json reads as invalid where the text ends in it (even whole: it looks for a surrogate's second half)
_TORN_TOKEN = re.compile(r"(-?\d*(\.\d*)?([eE][-+]?\d*)?|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?)\s*")
_TORN_ESCAPE = re.compile(r"u[0-9a-fA-F]{0,4}")
# how every line of ours ends, and what a zeroed block may leave of that (to a letter of the status, `k"}`: a
# shorter end cannot be told from another's): its keys sorted, "status" the last (JobResult.manifest_line, "file")
_STATUS = b'"status": "'
_ENDS = [word.encode() for word in _STATUSES]
_LINE_END = re.compile(rb"(?:(?:.*" + re.escape(_STATUS) + rb"|" + rb"|".join(
    re.escape(_STATUS[at:]) for at in range(1, len(_STATUS))) + rb")(?:" + rb"|".join(_ENDS) + rb")|" + rb"|".join(
    re.escape(word[at:]) for word in _ENDS for at in range(len(word))) + rb")\"\}$", re.S)


def _json_prefix(text: bytes) -> bool:
    """Whether `text` is the start of some JSON text (a write cut short); another tool's line that only starts as
    ours do goes wrong before its end (`"note": "kept",}`, `} # mine`)."""
    try:
        json.loads(text.decode("utf-8-sig", errors="replace"))
    except json.JSONDecodeError as e:  # where it stopped: in a string or an escape cut short, or in a last token
        if e.msg.startswith("Invalid \\uXXXX escape"):  # json.dumps writes non-ASCII as \uXXXX: cut within one
            return _TORN_ESCAPE.fullmatch(e.doc[e.pos:]) is not None
        return e.msg.startswith("Unterminated string") or (
            e.msg != "Extra data" and _TORN_TOKEN.fullmatch(e.doc[e.pos:]) is not None)
    except (ValueError, RecursionError):
        return False
    return True


# NULs with text after them, fewer than a lost block's: UTF-16's (one in every two bytes, PowerShell's Out-File),
# not a power cut's, whose NULs fill a block or run to the file's end
_TEXTS_NULS = re.compile(rb"(?<!\0)\0{1,15}(?=[^\0])")


def _written_by_us(data: bytes) -> bool:
    """Whether a manifest's bytes are a batch's or a server's: empty, a power cut's NULs or a first line torn, or
    a line with a job's id and status among them (another tool's manifest.jsonl, a dataset's, has none)."""
    zeroed = _TEXTS_NULS.search(data) is None  # every NUL there may be a power cut's

    def cut(line: bytes) -> bool:  # a line a power cut zeroed in places: each text between its NULs is ours
        if not (zeroed and b"\0" in line):
            return False
        pieces = line.removeprefix(b"\xef\xbb\xbf").split(b"\0")
        for at, piece in enumerate(pieces):
            text = piece.strip(b" \t\r")
            if not text:
                continue
            entry = _parsed(text)
            if entry is not _NOT_JSON:  # whole: ours only as a job's line (another's may start as ours do)
                if not (isinstance(entry, dict) and "id" in entry and "status" in entry):
                    return False
            elif not (at == 0 and _torn_of_ours(text) or  # a line of ours cut short, or zeroed at its start
                      at == len(pieces) - 1 and _LINE_END.fullmatch(text) is not None):
                return False  # another's text, or one between two zeroed blocks, which cannot be told
        return True

    *lines, tail = data.split(b"\n")
    found = [line for line in lines if line.strip(b" \t\r\0") and not cut(line)]
    for line in [*found, tail]:
        entry = _parsed(line)
        if isinstance(entry, dict) and "id" in entry and "status" in entry:
            return True
    # nothing but a first line torn (a prefix of a line we write, which parses only whole) or zeroed
    zeroed_tail = zeroed and b"\0" in tail  # cut judges the text before its NULs
    return not found and (not tail.strip(b" \t\r\0") or cut(tail) if zeroed_tail else
                          not tail.strip(b" \t\r") or (_torn_of_ours(tail) and not whole_line(tail)))


class Manifest:
    """The results manifest: one JSON object a line, appended as jobs finish.

    Each line goes out on a file opened with O_APPEND, written whole (a short
    write is continued; a failed one is cut off again) and fsync'd. A torn
    last line (a power cut mid-write) is cut off by `load` before anything is
    appended (a whole one that lacks only its newline, as an editor saves it,
    gets it); a line that cannot be used is reported by number and skipped.
    Hold the batch's lock (`locked`) around `load` and `append`. Lines go to the file found at `repair` (or made
    by the first line): one put in its place is another's, never appended to; one removed is made again only
    where `remade` (a server's, which goes on; a batch says its lines are gone)."""

    def __init__(self, path: Path, remade: bool = False):
        self.path = Path(path)
        self._lock: IO[bytes] | None = None  # the folder's lock, held (pin): lines go where it is, or nowhere
        self.written = 0  # lines this process appended
        self.remade = remade
        # the manifest lines go to, held open once known: its inode number is not reused by a file put there
        self._file: IO[bytes] | None = None
        self._found_none = False  # repair found no manifest: the first line makes one, never takes one put there

    def holds_its_lines(self) -> bool:
        """Whether the file at the manifest's name is the one its lines went to (False: none there, or another
        put in its place, or one put there after `repair` found none; True when none is known yet)."""
        try:
            found = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        if self._file is None:  # one there now that was not at the start is another's
            return not self._found_none
        return self._is_ours(found)

    def _is_ours(self, found: os.stat_result) -> bool:
        ours = os.fstat(self._file.fileno()) if self._file is not None else None
        return ours is None or (found.st_dev, found.st_ino) == (ours.st_dev, ours.st_ino)

    def _hold(self, fd: int) -> None:
        """Hold the manifest `fd` is open on (a duplicate) as the one lines go to."""
        self._file = os.fdopen(os.dup(fd), "rb")

    def pin(self, lock: IO[bytes]) -> None:
        """The folder holding `lock` (its LOCK_FILE, just taken) is the one every later line and picture goes to:
        another put in its place (`mv out old; mkdir out`, a link) holds no lock, and a second batch or server could
        run there at once. Told by the lock file, not the folder's inode number, which a new folder may reuse."""
        self._lock = lock

    def folder(self) -> int | None:
        """The pinned folder's descriptor (None: none pinned, or not known): a line or picture written at it goes
        where the lock is, though another folder were put at its name after the check."""
        return paths.lock_folder(self._lock)

    def at_home(self) -> bool:
        """Whether the folder at the manifest's path holds the lock pinned (True when none was)."""
        return self._lock is None or paths.holds(self._lock, self.path.parent / LOCK_FILE)

    def lock_removed(self) -> bool:
        """Whether the folder is the one pinned but its lock file was removed (by hand: it looks stale)."""
        return self._lock is not None and not self.at_home() and paths.made_in(self._lock, self.path.parent)

    def check_home(self) -> None:
        """UserError where the folder pinned is not at its path any more, or has lost its lock file."""
        if self.lock_removed():
            raise UserError(f"{self.path.parent / LOCK_FILE} was removed during the run, so another batch or server "
                            f"could run on {self.path.parent} at once; "
                            + (f"its lines so far are in {self.path}" if self.path.is_file() and self.holds_its_lines()
                               else f"{self.path} is not the manifest written (replaced during the run)"
                               if self.path.is_file() and self.written else
                               f"{self.path} is not there any more (removed during the run)" if self.written else
                               "no line was written yet"))
        if not self.at_home():
            raise UserError(f"{self.path.parent} was moved, removed or replaced during the run (its lock and "
                            f"earlier lines went with the folder that was there)")

    def check_own(self, inside: str) -> None:
        """ConfigError unless the manifest is absent or a file of its own in its folder (`inside` names that
        folder to the user): appending through a symbolic link writes wherever it leads, through a hard link
        into the other names too, and a FIFO blocks."""
        path = self.path
        if path.is_symlink():
            raise ConfigError(f"{path} is a symbolic link; the manifest must be a file inside {inside}")
        if os.path.lexists(path) and not path.is_file():
            raise ConfigError(f"{path} {paths.not_a_file(path) or 'is not a file'}; the manifest must be a file "
                              f"inside {inside}")
        if path.is_file():
            _check_links(path, path.stat().st_nlink, ConfigError)

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(the usable lines written so far, a sentence per line that is not); nothing if no manifest yet."""
        try:
            data = paths.read_regular(self.path)  # never a FIFO's wait (one put there while a batch runs)
        except FileNotFoundError:
            return [], []
        except OSError as e:
            raise UserError(f"cannot read the manifest {self.path}: {paths.not_a_file(self.path) or e.strerror}"
                            ) from None
        entries, problems = [], []
        for number, raw in enumerate(data.split(b"\n")[:-1], 1):  # a torn tail has no newline: load cuts it
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))  # an editor's BOM
            except UnicodeDecodeError:
                problem: str | None = "not UTF-8 text"
            except json.JSONDecodeError as e:
                problem = f"not JSON ({e.msg}: column {e.colno})"
            except (RecursionError, ValueError) as e:  # nested too deep, or an integer over 4300 digits
                problem = f"not a manifest entry ({type(e).__name__})"
            else:
                problem = _manifest_problem(entry)
            if problem is None:
                entries.append(entry)
            else:
                problems.append(f"{self.path} line {number}: {problem}; skipped")
        return entries, problems

    def repair(self) -> list[str]:
        """Cut a torn last line off (a sentence saying so, or none), so that the next line appended is whole.
        UserError if the file cannot be read or repaired."""
        try:
            with os.fdopen(paths.open_regular(self.path, os.O_RDWR), "r+b") as f:
                self._hold(f.fileno())
                data = f.read()
                if not _written_by_us(data):
                    raise UserError(f"{self.path} is not a manifest styleengine wrote (no line of it is a job's): "
                                    f"another tool's file, not appended to; move it away or give another folder")
                if data and whole_line(data[data.rfind(b"\n") + 1:]):  # an editor dropped the final newline
                    f.write(b"\n")
                elif data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
                    number = data.count(b"\n") + 1
                    return [f"{self.path} line {number} was torn (a write cut short); cut off"]
        except FileNotFoundError:
            self._found_none = self._file is None
        except OSError as e:
            raise UserError(f"cannot use the manifest {self.path}: {e.strerror or e}") from None
        return []

    def load(self) -> tuple[Finished, list[str]]:
        """(the ok lines that last wrote their outputs, a sentence per problem), a torn last line cut off first.
        An output another job wrote since (or a failed job's last finite image) is no longer that ok job's
        picture: it runs again. UserError if the file cannot be read or repaired."""
        torn = self.repair()
        entries, problems = self.read()
        writers = {self.place_of(e): e for e in entries
                   if e["status"] == "ok" or (e["status"] == "failed" and e.get("last_finite") is True)}
        done = {(e["id"], file): (e["settings_hash"], e.get("output_sha256")) for file, e in writers.items()
                if e["status"] == "ok" and file is not None}
        return Finished(self.path.parent, done), torn + problems

    def place_of(self, entry: dict[str, Any]) -> str | None:
        """A line's output as its place in this folder: its `file`, or (a line written before lines had one) its
        output as written, from here."""
        if isinstance(entry.get("file"), str):
            return entry["file"]
        return place(self.path.parent, entry["output"]) if isinstance(entry.get("output"), str) else None

    def append(self, entry: dict[str, Any]) -> None:
        """One line, written whole or not at all; UserError (disk full, say) if it cannot be."""
        data = memoryview((json.dumps(entry, sort_keys=True) + "\n").encode())
        try:
            self.check_home()
        except UserError as e:
            raise UserError(f"cannot write the manifest {self.path}: {e}") from None
        fd = self._open()
        try:
            found = os.fstat(fd)
            if not self._is_ours(found):
                raise UserError(f"cannot write the manifest {self.path}: another file was put in its place during "
                                f"the run (not appended to; the earlier lines went with the file that was there)")
            if self._file is None:
                self._hold(fd)
            _check_links(self.path, found.st_nlink, UserError)  # made a hard link while in use
            start = found.st_size
            try:
                while data:
                    written = os.write(fd, data)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    data = data[written:]
                os.fsync(fd)
                self.written += 1
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no torn line left behind
                raise
        except OSError as e:
            raise UserError(f"cannot write the manifest {self.path}: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def _open(self) -> int:
        """The manifest's descriptor for appending: made where none is known yet (or `remade`, as a new file);
        UserError where it cannot be opened, a removed one among them."""
        folder = self.folder()
        name = self.path if folder is None else self.path.name
        flags = os.O_WRONLY | os.O_APPEND
        try:  # a regular file only: a FIFO put there while the batch or server ran blocked it for ever
            try:
                if self._file is None and self._found_none:  # none at the start: one there now is another's
                    fd = paths.open_regular(name, flags | os.O_CREAT | os.O_EXCL, dir_fd=folder)
                    self._hold(fd)
                    return fd
                return paths.open_regular(name, flags | (os.O_CREAT if self._file is None else 0), dir_fd=folder)
            except FileExistsError:
                raise UserError(f"cannot write the manifest {self.path}: another file was put at its name during "
                                f"the run (not appended to)") from None
            except FileNotFoundError:
                if not self.remade:
                    moved = self._file is not None and os.fstat(self._file.fileno()).st_nlink > 0
                    raise UserError(f"cannot write the manifest {self.path}: " + (
                        "it was moved away during the run, with its lines (put it back to resume)" if moved else
                        "it is not there any more (removed during the run, with its lines)")) from None
                fd = paths.open_regular(name, flags | os.O_CREAT | os.O_EXCL, dir_fd=folder)  # a new one, as said
                self._hold(fd)
                return fd
        except OSError as e:
            what = paths.not_a_file(self.path) if os.path.lexists(self.path) else None
            if e.errno == errno.ELOOP and os.path.islink(self.path):
                what = "is a symbolic link (put there during the run; not followed)"
            raise UserError(f"cannot write the manifest {self.path}: "
                            f"{('it ' + what) if what else (e.strerror or e)}") from None


def _check_links(path: Path, links: int, error: type[UserError]) -> None:
    """`error` when the manifest has other names (`cp -al out backup`, or `ln` while in use): appending would
    write into them too."""
    if links > 1:
        raise error(f"{path} is a hard link ({links} names for one file): appending would change the others too; "
                    f"give it its own copy (cp {path} {path}.new && mv {path}.new {path})")


class FolderBusy(UserError):
    """Another process (a batch or a server) holds a folder's lock (LOCK_FILE)."""


LOCK_HOLDERS = {"batch": "wait for it to finish", "server": "stop it"}  # what takes LOCK_FILE -> what to do then
LOCK_SIZE = 16  # a lock file holds one LOCK_HOLDERS key at most (and a newline an editor added): past it, another's


def lock_says(data: bytes) -> str | None:
    """The holder a lock file's bytes (its first LOCK_SIZE + 1) name ("" for an empty one), or None for bytes no
    lock holds: only a holder's name, with the line end an editor adds (blanks of other kinds, 16 spaces, or more
    than LOCK_SIZE bytes are a user's file)."""
    if len(data) > LOCK_SIZE:
        return None
    said = data.removesuffix(b"\n").removesuffix(b"\r").decode("ascii", "replace")
    return said if said == "" or said in LOCK_HOLDERS else None


def take_lock(folder: Path, taker: str, option: str, name: str = LOCK_FILE) -> BinaryIO:
    """folder's LOCK_FILE (or `name`) open and held, `taker` (a LOCK_HOLDERS key) written in it so that a process
    refused says what holds it; FolderBusy naming that holder (`option`: what the user can change), UserError if
    the file cannot be opened or holds other data (a user's file of that name: neither written nor removed).
    Both batch and serve take LOCK_FILE: a folder may be either's."""
    path = Path(folder) / name
    try:
        f = paths.open_lock(path)
    except OSError as e:
        raise _cannot_open(folder, path, option, e) from None
    if f is None:
        holder = _holder(path)
        advice = LOCK_HOLDERS.get(holder or "", " or ".join(LOCK_HOLDERS.values()))
        raise FolderBusy(f"another {holder or ' or '.join(LOCK_HOLDERS)} is running on {folder} (it holds {path}); "
                         f"{advice} or use another {option}")
    try:
        said = lock_says(os.pread(f.fileno(), LOCK_SIZE + 1, 0))
    except OSError:
        said = ""
    if said is None:  # not a lock file any version wrote (those are empty or say their holder, a few bytes)
        paths.close_lock(f)
        raise _other_data(folder, path, option)
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, its holder said as unknown
        fd = f.fileno()
        if os.fstat(fd).st_nlink == 1:  # another name of a user's file is locked, never written
            os.ftruncate(fd, 0)  # unbuffered: a buffer a full disk refused failed again at the close
            os.pwrite(fd, taker.encode(), 0)  # at the start, not where the append mode leaves it
    return f


def _cannot_open(folder: Path, path: Path, option: str, error: OSError) -> UserError:
    """Why the lock file could not be opened; a link, a FIFO, a device, a socket or a folder at its name is told to
    go."""
    if error.errno == errno.ELOOP:  # open_regular's O_NOFOLLOW
        return UserError(f"cannot lock {folder}: {path} is a symbolic link; remove it (the lock is a file of "
                         f"{option})")
    # a FIFO, a device or a folder (EINVAL: open_regular's), a UNIX socket (ENXIO)
    advice = f"; remove it (the lock is a file of {option})" if error.errno in (errno.EINVAL, errno.EISDIR,
                                                                              errno.ENXIO) else ""
    return UserError(f"cannot lock {folder} ({path}: {error.strerror or error}){advice}")


def _other_data(folder: Path, path: Path, option: str) -> UserError:
    return UserError(f"cannot lock {folder}: {path} is a file of other data, not a lock; move it away (the lock is a "
                     f"file of {option})")


def check_lock_file(folder: Path, option: str, name: str = LOCK_FILE) -> None:
    """UserError where take_lock(folder, ..., name) would be refused for what is at the name (a link, a FIFO, a
    folder, a file of other data), read without taking it: a server checks its Ray replicas' folders before
    deploying them (a replica's refusal was some 300 lines of Ray's tracebacks)."""
    path = Path(folder) / name
    if not os.path.lexists(path):
        return
    try:
        fd = paths.open_regular(path)
    except OSError as e:
        raise _cannot_open(folder, path, option, e) from None
    try:
        data = os.read(fd, LOCK_SIZE + 1)
    except OSError as e:
        raise UserError(f"cannot lock {folder} ({path}: {e.strerror or e})") from None
    finally:
        os.close(fd)
    if lock_says(data) is None:
        raise _other_data(folder, path, option)


def _holder(path: Path) -> str | None:
    """What holds the lock file `path` as it says (None: not known, e.g. it has not written itself in yet)."""
    try:
        fd = paths.open_regular(path)
    except OSError:
        return None
    try:
        said = lock_says(os.read(fd, LOCK_SIZE + 1))
    except OSError:
        return None
    finally:
        os.close(fd)
    return said or None


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[BinaryIO]:
    """Hold out_dir's batch lock (LOCK_FILE), yielded; FolderBusy at once if another process holds it. The lock
    file is removed when released, so --out keeps only what the batch wrote."""
    f = take_lock(Path(out_dir), "batch", "--out")
    try:
        yield f
    finally:
        paths.release_lock(f, Path(out_dir) / LOCK_FILE)
