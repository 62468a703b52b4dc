"""The jobs of a batch: what one picture is (Job), the jobs file (.jsonl / .csv) read as it is needed, the
per-job overrides coerced from JSON values or CSV cells, the --contents x --styles pairs, and the checks
across jobs (JobsCheck: ids, outputs inside --out, no output that is an input, the manifest or the lock).

No printing: a bad line is a ConfigError naming the file and line.
"""
from __future__ import annotations

import array
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import sys
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from styleengine import paths
from styleengine.paths import IMAGE_SUFFIXES, expand_styles, images_in  # noqa: F401  (batch reads the suffixes here)
from styleengine.choices import INIT_ALIASES, INITS, WEIGHT_WORDS
from styleengine.engine.manifest import LOCK_FILE, MANIFEST, whole_line
from styleengine.engine.recipes import recipe_values
from styleengine.engine.settings import (BATCH, KINDS, Settings, flag_of, json_number, options, run_inputs, said_as,  # noqa: F401
                                         settings_inputs)
from styleengine.errors import ConfigError, ImageError, SettingError, UserError, first_line

# per-job overrides a jobs file may set: the settings whose metadata says so (engine/settings.py), each parsed by
# its kind; the backend, device, provider, precision, input convention and snapshots belong to the whole batch
OVERRIDES: dict[str, Callable[[Any], Any]] = {name: meta.parse for name, meta in options(BATCH).items()
                                              if meta.per_job}
# a key may also be the flag's name (iters, mem_budget) or one of the setting's aliases (blend)
_ALIASES = {alias: name for name, meta in options(BATCH).items() if meta.per_job
            for alias in ((meta.flag[2:].replace("-", "_"),) if meta.flag else ()) + meta.aliases}
_JOB_KEYS = ("id", "content", "style", "styles", "output")  # the columns / keys that are not overrides
ID_MAX = 1024  # characters of an id a jobs file gives (one made from the output is as long as its path)
RECIPE = "recipe"  # another tool's recipe (engine/recipes.py) under the job's other keys: no setting of its own


def _shown(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: a 5000-digit cell is one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-12:]} ({len(text)} characters)"


@dataclass(frozen=True)
class Job:
    """One picture to make: `content` styled by `styles` (blend weights in overrides["style_blend"])."""

    id: str
    content: Path
    styles: tuple[Path, ...]
    output: Path
    overrides: tuple[tuple[str, Any], ...] = ()  # (Settings field, value), sorted by field
    where: str = ""  # "FILE line N" for a job from a jobs file: where errors about it point
    style_folders: tuple[Path, ...] = ()  # folders named as styles: read for their images each time
    keys: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (Settings field, the key as typed)

    def said(self, error: UserError) -> str:
        """`error`'s line at the job's place, a setting's named as the user gave it: the job's key, else the
        batch's flag."""
        names = dict(self.keys)
        if isinstance(error, SettingError):  # one the job did not give is the batch's flag
            names.setdefault(error.setting, flag_of(error.setting))
        return located(self.where, first_line(said_as(error, names)))

    def settings(self, base: Settings) -> Settings:
        """The batch's settings with this job's overrides."""
        return dataclasses.replace(base, **dict(self.overrides))

    def inputs(self) -> dict[str, Path]:
        """The files the job reads by its own paths (the batch's --init / --weights are checked per job),
        by role: {"content image": ..., "style image 2": ..., "init image": ..., "weights file": ...}."""
        overrides = dict(self.overrides)
        return run_inputs(self.content, self.styles, overrides.get("init", INITS[0]),
                          overrides.get("weights", "random"), overrides.get("content_masks"),
                          overrides.get("style_masks"))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "content": str(self.content), "styles": [str(p) for p in self.styles],
                "output": str(self.output), "overrides": dict(self.overrides)}


def _overrides(raw: dict[str, Any], where: str, base_dir: Path, typed: dict[str, str], exact: bool = False
               ) -> tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, str], ...]]:
    """(Settings field, value) of a job's own keys (lower-cased; `typed`: each as typed), under its recipe, and
    (Settings field, the key as typed). exact: a file's name as written (a JSON string's), as _style_names."""
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # setting -> the key that gave it
    recipe = _text(raw, RECIPE, where)
    for lower, value in raw.items():
        if lower == RECIPE:
            continue
        key = typed.get(lower, lower)
        name = _ALIASES.get(lower.replace("-", "_"), lower.replace("-", "_"))
        if name not in OVERRIDES:
            raise ConfigError(f"{where}: {key!r} is not a per-job setting; choose from "
                              f"{', '.join(sorted(set(OVERRIDES) | set(_ALIASES) | {RECIPE}))}")
        if name in spelled:
            raise ConfigError(f"{where}: {spelled[name]!r} and {key!r} are one setting ({name}); give it once")
        spelled[name] = key
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # an empty CSV cell: the batch's value (a JSON "" is refused by _job)
        try:
            parsed = OVERRIDES[name](value)
            if exact and name in _FILES and parsed not in _FILES[name]:  # " x.png" read x.png, another file
                parsed = value if isinstance(parsed, str) else _style_names(value, exact)
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(f"{where}: bad {key} {_shown(value)} ({e})") from None
        values[name] = parsed
    # a per-job init image or weights file is relative to the jobs file, as its images are
    if values.get("init", INITS[0]) not in INITS:
        values["init"] = _beside(base_dir, values["init"], (*INITS, *INIT_ALIASES))  # neural-style's words too
    if values.get("weights", "random") not in WEIGHT_WORDS:
        values["weights"] = _beside(base_dir, values["weights"], WEIGHT_WORDS)
    for name in ("content_masks", "style_masks"):  # mask files too
        if values.get(name):
            values[name] = tuple(str(base_dir / paths.expand(p, base_dir)) for p in values[name])
    if recipe:  # its values under the job's own, which are in its units (as with run's --recipe)
        try:
            values = recipe_values(recipe, values, flags=False, keys=spelled)  # said as the file's keys
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return tuple(sorted(values.items())), tuple(sorted(spelled.items()))


# the settings that name files, and their words (which stay words, trimmed)
_FILES: dict[str, tuple[str, ...]] = {"init": (*INITS, *INIT_ALIASES), "weights": WEIGHT_WORDS, "content_masks": (),
                                      "style_masks": ()}


def _beside(base_dir: Path, name: str, words: Iterable[str]) -> str:
    """A job's file `name` beside the jobs file; one that joins to a word stays a file (`./random` in a jobs file
    in the working folder was the word: random weights)."""
    path = str(base_dir / paths.expand(name, base_dir))
    return path if path not in words else os.path.join(".", path)


def _default_output(content: Path, styles: Iterable[Path]) -> str:
    return f"{content.stem}__{'+'.join(p.stem for p in styles)}.png"


def _text(raw: dict[str, Any], key: str, where: str, numbers: bool = False, typed: dict[str, str] | None = None,
          exact: bool = False) -> str:
    """raw[key] as stripped text (exact: as written, a JSON string's) ("" if absent); a number only where
    `numbers` (an id), nothing else. A bad value names its key as `typed` spells it."""
    value = raw.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        return value if exact else value.strip()
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: bad {(typed or {}).get(key, key)} {_shown(value)} (not a text)")


def _style_names(value: Any, exact: bool) -> tuple[str, ...]:
    """A job's style images: ';'- (or ',')-separated text, or a list. exact (JSON): only the blanks around a
    separator are dropped, and a list's names are as written."""
    words = KINDS["words"][0](value)  # ValueError for what is no list of names
    if not exact:
        return words
    if isinstance(value, str):
        return tuple(name for name in re.split(r"\s*[;,]\s*", value) if name.strip())
    return tuple(value)


def _inside(output: str, out_dir: Path, where: str) -> Path:
    """out_dir / output, refused if it is absolute or climbs out with '..' (symlinks: JobsCheck); a '..'
    that stays inside is folded away (`nosub/../a.png` is `a.png`)."""
    relative = Path(output)
    if ".." in relative.parts and not relative.is_absolute():
        relative = Path(os.path.normpath(relative))
        # after a symbolic link, '..' is the parent of the link's target: a file the folded name is not
        if relative.parts[:1] != ("..",) and os.path.realpath(out_dir / output) != os.path.realpath(out_dir / relative):
            raise ConfigError(f"{where}: output {output!r} climbs out of a symbolic link with '..' (to "
                              f"{os.path.realpath(out_dir / output)}); name the file without '..'")
    if relative.is_absolute() and paths.inside(relative, out_dir):  # refused all the same: named relative to it
        there = os.path.relpath(os.path.realpath(relative), os.path.realpath(out_dir))  # through links, as inside()
        raise ConfigError(f"{where}: output {output!r} is an absolute path; outputs are paths relative to --out "
                          f"{out_dir}: name it {there}")
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise ConfigError(f"{where}: output {output!r} is outside --out {out_dir}; outputs are paths inside it")
    if not relative.name:  # "." or "./": the folder itself
        raise ConfigError(f"{where}: output {output!r} names no file")
    return out_dir / relative


def outside(output: Path, out_dir: Path) -> str | None:
    """Where `output`'s folder leads when that is outside `out_dir` (after symbolic links; a bind mount of a
    folder in it is in it), else None: asked again right before a job's folder is made and its picture written
    (a folder may have become a link since)."""
    folder = Path(output).parent
    return None if paths.inside(folder, out_dir) else os.path.realpath(folder)


def _given(value: Any) -> bool:
    """A value given: not absent, not a JSON null, not a blank (a CSV's empty or spaces-only cell)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _job(raw: dict[str, Any], where: str, base_dir: Path, out_dir: Path, csv_row: bool = False) -> Job:
    named = {str(k).strip().lower() if isinstance(k, str) else k: v for k, v in raw.items()}
    if len(named) < len(raw):
        twice = next(k for k in named if [str(r).strip().lower() for r in raw].count(k) > 1)
        raise ConfigError(f"{where}: the key {twice!r} appears twice (in other cases or spacing); give it once")
    typed = {str(k).strip().lower(): str(k).strip() for k in raw}  # a setting's key is said as typed
    raw = named
    if not csv_row:  # a JSON "" is a value given as nothing (a CSV's blank cell is the batch's value)
        blank = next((k for k, v in raw.items() if isinstance(v, str) and not v.strip()), None)
        if blank is not None:
            raise ConfigError(f"{where}: {typed.get(blank, blank)} is empty; give a value, or leave the key out")
    # a JSON string names its file as written (" c.png" read c.png, another file); a CSV cell is trimmed
    exact = not csv_row
    content = _text(raw, "content", where, typed=typed, exact=exact)
    if all(_given(raw.get(k)) for k in ("style", "styles")):  # both columns of a CSV, one per row, is fine
        raise ConfigError(f"{where}: 'style' and 'styles' are one thing; give one of them")
    # the one given: a CSV with both columns leaves one blank a row, and a JSON null is no value
    style_key = next((k for k in ("styles", "style") if _given(raw.get(k))), "styles")
    styles = raw.get(style_key)
    try:
        style_names = _style_names(styles, exact) if styles is not None else ()
    except ValueError:
        raise ConfigError(f"{where}: bad {typed.get(style_key, style_key)} {_shown(styles)} "
                          f"(a text, ';'-separated, or a list of texts)") from None
    if not content or not style_names:
        raise ConfigError(f"{where}: a job needs a content image and at least one style image")
    content_path = base_dir / paths.expand(content, base_dir)  # ~ and $VARS as in a job's init, weights and masks
    given = tuple(base_dir / paths.expand(s, base_dir) for s in style_names)
    found, named_folders = paths.styles_and_folders(given, f"{where}: style folder")
    style_paths, folders = tuple(found), tuple(named_folders)
    # ~ and $VARS expanded
    output = paths.expand_text(_text(raw, "output", where, typed=typed, exact=exact), out_dir) or _default_output(
        content_path, given)  # a literal $NAME's file looked for where the output goes
    if paths.ends_as_folder(output):
        raise ConfigError(f"{where}: output {output}: a name ending in '/' (or '/.') is a folder; name a file")
    output_path = _inside(output, out_dir, where)
    try:  # found now, not after the job's whole run
        paths.check_suffix(output_path)
    except ImageError as e:
        raise ConfigError(f"{where}: {first_line(e)}") from None
    given_id = _text(raw, "id", where, numbers=True, typed=typed)
    if len(given_id) > ID_MAX:  # shown on every progress line and in the manifest: a 100 MB id cost minutes
        raise ConfigError(f"{where}: id {_shown(given_id[:24])}... is {len(given_id)} characters long; an id is a "
                          f"name (at most {ID_MAX})")
    job_id = given_id or str(output_path.relative_to(out_dir).with_suffix(""))
    control = paths.control_character(job_id)
    if control is not None:  # an id is shown on one line of the progress output and the manifest's readers
        raise ConfigError(f"{where}: id {_shown(job_id)} has a control character ({control}); an id is one line "
                          f"of text (it is the output's name when not given)")
    overrides, keys = _overrides({k: v for k, v in raw.items() if k not in _JOB_KEYS}, where, base_dir, typed,
                                 exact)
    return Job(job_id, content_path, style_paths, output_path, overrides, where, folders, keys)


def located(where: str, message: str) -> str:
    """`message` said at `where` ("FILE line N"), unless it already says so or there is no such place."""
    return f"{where}: {message}" if where and not message.startswith(where) else message


def _located(raw: dict[str, Any], where: str, base_dir: Path, out_dir: Path, csv_row: bool = False) -> Job:
    """_job, every ConfigError naming the line (those of the path helpers, an unset $VARIABLE, too)."""
    try:
        return _job(raw, where, base_dir, out_dir, csv_row)
    except ConfigError as e:
        raise ConfigError(located(where, str(e))) from None


def _utf8(text: str, where: str) -> None:
    """ConfigError if `text` (read with surrogateescape) held bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(text[e.start]) - 0xDC00
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8") from None


class _DuplicateKey(ValueError):
    """A JSON object with one key twice (json keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def _csv_rows(lines: Iterator[str], path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(last line number, where it is: "FILE line N" or "FILE lines N-M", row) of a CSV jobs file: ',' or ';'
    (whichever the header uses), headers trimmed and lower-cased, an unclosed quote an error."""
    header = next(lines, "")
    if not header.strip():  # blank lines only are no jobs, as an empty file; a blank line above a header is not
        ahead = next((number for number, line in enumerate(lines, 2) if line.strip()), None)
        if ahead is not None:
            raise ConfigError(f"{path} line 1: the header is blank (line {ahead} follows it); a CSV jobs file's first "
                              f"line names its columns: remove the blank lines above it")
        return
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(itertools.chain([header], lines), delimiter=delimiter, strict=True)
    try:
        typed = [n.strip() for n in next(reader, [])]  # said as typed; matched lower-cased, as a JSON key is
        names = [n.lower() for n in typed]
        _utf8("".join(names), f"{path} line {reader.line_num}")
        if "content" not in names and header.strip():  # an empty file is no jobs, as an empty .jsonl is
            tabs = "; it is separated by tabs" if "\t" in header and delimiter not in header else ""
            raise ConfigError(f"{path} line {reader.line_num}: the header has no 'content' column (it reads as "
                              f"{', '.join(repr(n) for n in names[:4])}{tabs}); a CSV jobs file separates its "
                              f"cells with ',' or ';'")
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if twice:
            raise ConfigError(f"{path} line {reader.line_num}: the column {twice[0]!r} appears twice in the header; "
                              f"give each once")
        last = reader.line_num
        for row in reader:
            # a quoted cell may hold line ends: the record is said by every line it spans
            first, last = last + 1, reader.line_num
            where = f"{path} line {last}" if first == last else f"{path} lines {first}-{last}"
            _utf8("".join(row), where)
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(names):
                raise ConfigError(f"{where}: more cells than the header has columns")
            # a column the header leaves unnamed (a spreadsheet's trailing ','): its cells must be empty
            stray = next((i for i, cell in enumerate(row) if not names[i] and cell.strip()), None)
            if stray is not None:
                raise ConfigError(f"{where}: cell {stray + 1} is under a column the header (line 1) does not name; "
                                  f"name the column or empty the cell")
            yield last, where, {name: cell for name, cell in zip(typed, row) if name}
    except csv.Error as e:
        what = "a quote is not closed" if "end of data" in str(e) or "EOF" in str(e) else str(e)
        raise ConfigError(f"{path} line {reader.line_num}: {what}") from None


def iter_jobs(path: Path, out_dir: Path, read_to: list[JobsRead] | None = None) -> Iterator[Job]:
    """The jobs of a .jsonl (one object a line) or .csv file (a header row; styles and blend ';'-separated),
    read as they are needed (a long file starts at once and takes no more memory than a short one).

    Keys: content, styles (or style), output (inside out_dir; default
    CONTENT__STYLE.png), id (default: the output's path without suffix), and
    any of OVERRIDES (dashes or underscores; iters, blend, mem_budget,
    content_mask and style_mask as the flags spell them), and recipe (its
    values under the job's own, the weights in its units). Image, init,
    weights and mask paths are relative to the jobs file's folder. A CSV file may start with a byte-order mark and use
    ';' between cells. Checks across jobs: check_jobs.
    """
    path = Path(path)
    if str(path) == "-" or path.parent == Path("/dev"):  # standard input (a pipe): read twice, and named by suffix
        raise ConfigError(f"jobs file {path}: jobs are read from a file named .jsonl or .csv, not standard input; "
                          f"save them to one first (e.g. jobs.jsonl)")
    problem = paths.not_a_file(path)
    if path.exists() and problem is not None:
        raise ConfigError(f"cannot read jobs file {path}: it {problem}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"jobs file {path}: unknown suffix {path.suffix or '(none)'!r}; use .jsonl or .csv")
    try:
        read = _Read(open(path, "rb", buffering=0), csv=suffix == ".csv")
    except OSError as e:
        raise ConfigError(f"cannot read jobs file {path}: {e.strerror or e}") from None
    # undecodable bytes kept as surrogates, so the line they are on is named (_utf8)
    f = io.TextIOWrapper(io.BufferedReader(read), encoding="utf-8-sig", errors="surrogateescape",
                         newline="" if suffix == ".csv" else None)
    base_dir = path.parent
    number = 0
    with f:
        try:
            if suffix == ".csv":
                for number, where, row in _csv_rows(iter(f), path):
                    yield _located(row, where, base_dir, out_dir, csv_row=True)
                _check_whole(read, path, number)
                if read_to is not None:
                    read_to.append(read.done())
                return
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                _utf8(line, where)
                try:
                    raw = json.loads(line, object_pairs_hook=_unique_keys, parse_float=json_number)
                except _DuplicateKey as e:
                    raise ConfigError(f"{where}: the key {e.args[0]!r} appears twice; give each once") from None
                except json.JSONDecodeError as e:
                    _check_whole(read, path, number - 1)  # the tail of a line the file no longer has
                    raise ConfigError(f"{where}: not JSON ({e.msg}: column {e.colno})") from None
                except RecursionError:
                    raise ConfigError(f"{where}: not a job (JSON nested too deeply)") from None
                except ValueError:  # what json's parser raises beside JSONDecodeError: Python's digit limit
                    raise ConfigError(f"{where}: not a job (an integer of more than {sys.get_int_max_str_digits()} "
                                      f"digits)") from None
                if not isinstance(raw, dict):
                    raise ConfigError(f"{where}: a job is a JSON object")
                yield _located(raw, where, base_dir, out_dir)
            _check_whole(read, path, number)
            if read_to is not None:  # how far the file was read: lines appended after are not (a queue's end)
                read_to.append(read.done())
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read jobs file {path}: {getattr(e, 'strerror', None) or e}") from None


_LINE_END = re.compile(rb"\r\n|\r|\n")  # as the reader takes them (universal newlines; csv's too)
REWRITTEN = "was rewritten after the batch had read it; the same command runs the jobs it holds now"
CUT_OR_REWRITTEN = ("was cut short or rewritten after the batch had read it (its last row is not one read); the same "
                    "command runs the jobs it holds now")


@dataclass(frozen=True)
class JobsRead:
    """What a pass read of a jobs file: its first `count` bytes, of sha256 `digest`, from the file `file`
    (device, inode); `lines` and `sizes`, the CRC-32 and length of each line read, its line end (\n, \r\n or
    \r, as the reader takes them) left out (a file shorter now: cut, or rewritten?); `csv`, whether a row of
    empty cells (`,,,`) is no job; `ended`, whether the last line read had its line end."""

    count: int
    digest: bytes
    file: tuple[int, int]
    lines: array.array = field(default_factory=lambda: array.array("I"))
    sizes: array.array = field(default_factory=lambda: array.array("Q"))
    csv: bool = False
    ended: bool = True

    def since(self, path: Path) -> str | None:
        """What became of the file at `path` since it was read to its end, as the end of a sentence that starts
        with its name, or None (nothing, or blank lines: no job was added)."""
        try:
            found = os.stat(path)
            if (found.st_dev, found.st_ino) != self.file:
                return "was replaced after the batch had read it; the same command runs the jobs it holds now"
            if found.st_size < self.count:  # cut short after the read (the jobs read were run), or rewritten
                return self._rewritten(path)
            with open(path, "rb") as f:
                again = hashlib.sha256()
                at = 0
                while at < self.count:
                    block = f.read(min(1 << 20, self.count - at))
                    if not block:
                        return None
                    again.update(block)
                    at += len(block)
                if again.digest() != self.digest:
                    return REWRITTEN
                # a spreadsheet's row of empty cells is skipped as a blank line is
                blank = b",; \t\r\n\"" if self.csv else None
                added = sum(1 for line in f for piece in _LINE_END.split(line) if piece.strip(blank))
        except OSError:  # gone, or unreadable now: nothing the batch can say of it
            return None
        if not added:
            return None
        lines = "a line" if added == 1 else f"{added} lines"
        return f"got {lines} after the batch had read it to its end; the same command runs the jobs added"

    def _rewritten(self, path: Path) -> str | None:
        """REWRITTEN where a line of the file at `path` (shorter than what was read) is not the one read there;
        None for the read's first bytes (a cut, at a line's end or within one)."""
        now = _Read(open(path, "rb", buffering=0))
        try:
            while now.read(1 << 20):
                pass
            found = now.done()
        finally:
            now.close()
        whole = len(found.lines) - (0 if found.ended else 1)
        for number in range(len(found.lines)):
            read = number < len(self.lines)
            if read and (found.lines[number], found.sizes[number]) == (self.lines[number], self.sizes[number]):
                continue  # the line read there (the last one may lack its line end: cut just before it)
            if number < whole or not read or found.sizes[number] >= self.sizes[number]:  # a cut is shorter
                return REWRITTEN
            if not self.csv:  # no prefix of a JSON object parses: a line that does is another
                with open(path, "rb") as f:  # the last line: the file's last bytes
                    f.seek(-found.sizes[number], os.SEEK_END)
                    return REWRITTEN if whole_line(f.read()) else None
            # a row cut within is a row too, and only a CRC of the row read is kept: either may be
            return CUT_OR_REWRITTEN
        return None


class _Read(io.RawIOBase):
    """A jobs file's bytes as read, hashed on the way (whether the file changed under the read: _check_whole)."""

    def __init__(self, raw: io.FileIO, csv: bool = False):
        self.raw, self.hash, self.count, self.csv = raw, hashlib.sha256(), 0, csv
        self.start = os.fstat(raw.fileno())
        # each line's CRC-32 and length, its line end left out; those of the line read so far, and whether the
        # last block ended in \r (a line end: \r\n if the next opens with \n)
        self.lines, self.sizes, self._line, self._size, self._cr = array.array("I"), array.array("Q"), 0, 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer) or 0
        if not n:
            return 0
        block = bytes(memoryview(buffer)[:n])
        self.hash.update(block)
        self.count += n
        start = 0
        if self._cr:  # the last block ended in \r: a line's end, whose \n (\r\n) may open this one
            self._cr = False
            start = 1 if block.startswith(b"\n") else 0
        for end in _LINE_END.finditer(block, start):
            self._line = zlib.crc32(block[start:end.start()], self._line)
            self._size += end.start() - start
            start = end.end()
            self._cr = end.group() == b"\r" and start == n  # its \n, if any, is the next block's
            self._end_line()
        self._line = zlib.crc32(block[start:], self._line)
        self._size += n - start
        return n

    def _end_line(self) -> None:
        self.lines.append(self._line)
        self.sizes.append(self._size)
        self._line, self._size = 0, 0

    def fileno(self) -> int:
        return self.raw.fileno()

    def done(self) -> JobsRead:
        """What was read, once the read is at its end."""
        ended = not self._size
        if not ended:  # a last line read without its line end
            self._end_line()
        return JobsRead(self.count, self.hash.digest(), (self.start.st_dev, self.start.st_ino), self.lines,
                        self.sizes, self.csv, ended)

    def close(self) -> None:
        self.raw.close()
        super().close()

    def changed(self) -> bool:
        """Whether the bytes read are not the file's first bytes now (rewritten in place while read: old lines
        then new ones, one job list from two files); lines appended since (a jobs file as a queue) are not."""
        now = os.fstat(self.fileno())
        if (now.st_mtime_ns, now.st_size) == (self.start.st_mtime_ns, self.start.st_size):
            return False
        again, at = hashlib.sha256(), 0
        while at < self.count:
            block = os.pread(self.fileno(), min(1 << 20, self.count - at), at)
            if not block:
                return True
            again.update(block)
            at += len(block)
        return again.digest() != self.hash.digest()


def _check_whole(read: _Read, path: Path, lines: int) -> None:
    """ConfigError where the jobs file is now shorter than what was read of it (emptied or cut short while the
    batch ran: the read then ended early, silently, or on the tail of a line it no longer has), or where what was
    read is not what it holds now (rewritten in place meanwhile)."""
    size = os.fstat(read.fileno()).st_size
    if read.count > size:  # read up to line `lines`, which the file no longer holds whole
        raise ConfigError(f"{path} was cut short (or rewritten shorter) while the batch read it ({size} bytes now, "
                          f"{read.count} read, to line {lines}): the jobs not in the manifest were not run; the same "
                          f"command resumes them once the file holds them")
    if read.changed():
        raise ConfigError(f"{path} was rewritten while the batch read it (by line {lines}): the jobs read may mix "
                          f"the old file and the new one; the jobs not in the manifest were not run, and the same "
                          f"command resumes with the file as it is now")


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


def pair_jobs(contents: Path, styles: Path, out_dir: Path, shared: dict[str, Path] | None = None) -> list[Job]:
    """Every content image of one folder with every style image of another: CONTENT__STYLE.png."""
    found = {flag: images_in(Path(folder), flag) for flag, folder in (("--contents", contents), ("--styles", styles))}
    for flag, images in found.items():  # a name is a job's id and output name: one line of text, as a jobs file's
        for image in images:
            control = paths.control_character(image.stem)
            if control is not None:
                raise ConfigError(f"{flag} {image.parent}: {_shown(image.name)} has a control character "
                                  f"({control}) in its name, which names a job and its output; rename it")
    jobs = [Job(Path(_default_output(c, [s])).stem, c, (s,), out_dir / _default_output(c, [s]))
            for c in found["--contents"] for s in found["--styles"]]
    check_jobs(jobs, out_dir, shared)
    return jobs


class _Resolver:
    """os.path.realpath with each folder's resolution kept: jobs share a few folders, and realpath costs a
    system call per component."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: Path) -> str:
        # not abspath: it folds `LINK/..` by its spelling, where the file system goes up from the link's target
        folder, name = os.path.split(os.path.join(os.getcwd(), path))
        if name in ("", ".", ".."):  # the path names a folder by what leads to it
            return os.path.realpath(os.path.join(folder, name))
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        full = os.path.join(self._folders[folder], name)
        return os.path.realpath(full) if os.path.islink(full) else full

    def identities(self, path: Path) -> list[Any]:
        """What names one file: its resolved path, its spot (its folder's identity and its name: a bind mount of
        the folder is the folder) and, when it exists, its device and inode (hard links)."""
        if paths.unnameable(path) is not None:  # no file at all (plan fails the job)
            return [os.path.abspath(path)]
        found: list[Any] = [self(path), paths.spot(path)]
        try:
            info = os.stat(path)
            found.append((info.st_dev, info.st_ino))
        except OSError:  # not there yet
            pass
        return found


class JobsCheck:
    """The checks across jobs, made as they stream past: ids unique; no output that is another's output,
    any job's input (content, style, per-job init or weights; after symlinks, relative paths and hard
    links), the manifest, the lock or a file every job reads (`shared`: the batch's --init image and
    --weights file, by role); no output inside a folder a job names as its styles (the next run would
    read it as a style image), none in a folder that is another output. Keeps only what the checks compare."""

    def __init__(self, out_dir: Path, shared: dict[str, Path] | None = None):
        self.count = 0
        self._out_dir = Path(out_dir)
        self._resolve = _Resolver()
        self._root = self._resolve(self._out_dir)
        self._ids: dict[str, Job] = {}
        self._reserved = {key: f"the batch's {name}" for name in (MANIFEST, LOCK_FILE)
                          for key in self._resolve.identities(self._out_dir / name)}
        self._reserved.update({key: f"the batch's {role} {path}" for role, path in (shared or {}).items()
                               for key in self._resolve.identities(Path(path))})
        self._inputs: dict[Any, str] = {}
        self._outputs: dict[Any, str] = {}
        self._known: dict[str, list[Any]] = {}  # path -> identities: inputs repeat from job to job
        self._style_folders: dict[Any, str] = {}  # a folder's key (_folder) -> whose style folder it is
        self._output_folders: dict[Any, str] = {}  # the key of an output's folder -> whose output it is
        self._on_the_way: dict[str, str] = {}  # resolved folders between --out and an output -> whose output
        self._folds = paths.folds_names(self._out_dir)  # "A.png" and "a.png" are one file there
        self._folded: dict[str, str] = {}  # an output's resolved path, case and normalisation folded -> whose

    def _keys(self, path: Path) -> list[Any]:
        text = str(path)
        if text not in self._known:
            self._known[text] = self._resolve.identities(path)
        return self._known[text]

    def add(self, job: Job) -> None:
        """ConfigError (pointing at the job's line) if `job` conflicts with itself or an earlier job."""
        where = f"{job.where}: " if job.where else ""
        if job.id in self._ids:
            first = self._ids[job.id]
            if not job.where:  # folder mode: no id the user wrote; two pictures' names make one output name
                raise ConfigError(f"{first.content.name} with {first.styles[0].name} and {job.content.name} with "
                                  f"{job.styles[0].name} both make {job.output.name} (CONTENT__STYLE.png); rename "
                                  f"one picture, or use a jobs file with an output for each")
            try:  # an id the user did not write: the output without its suffix (x.png and x.jpg make one)
                derived = str(job.output.relative_to(self._out_dir).with_suffix("")) == job.id
            except ValueError:
                derived = False
            given = (f" (from the outputs {first.output.name} and {job.output.name}: an id is its output without "
                     f"the suffix; give one an \"id\")" if derived else "")
            raise ConfigError(f"{where}two jobs have the id {job.id}{given}; each job needs its own")
        inputs = {role: (path, self._keys(path)) for role, path in job.inputs().items()}
        mine = {key: f"its own {role} {path}" for role, (path, keys) in inputs.items() for key in keys}
        outputs = self._resolve.identities(job.output)  # not kept in _known: every output is a new path
        if paths.unnameable(job.output) is None and not paths.inside(outputs[0], self._out_dir):  # plan fails it
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
        source = f" ({job.where})" if job.where else ""
        self._check_style_folders(job, where, outputs[0], source)
        folders = self._check_nesting(job, where, outputs[0])
        folded = unicodedata.normalize("NFC", outputs[0]).casefold() if self._folds else None
        if folded is not None and folded in self._folded:
            raise ConfigError(f"{where}output {job.output} is {self._folded[folded]} on this file system, which "
                              f"folds case (and accents' spelling); choose another name")
        self._ids[job.id] = job
        if folded is not None:
            self._folded[folded] = f"the output of job {job.id}{source}"
        for key in folders:
            self._on_the_way.setdefault(key, f"the output of job {job.id}{source}")
        for key in outputs:
            self._outputs[key] = f"the output of job {job.id}{source}"
        for role, (path, keys) in inputs.items():
            for key in keys:
                self._inputs.setdefault(key, f"the {role} {path} of job {job.id}{source}")
        self.count += 1

    def style_folder(self, path: Path) -> str | None:
        """Whose style folder `path` is (by identity), or None."""
        return self._style_folders.get(_folder(path))

    def _check_nesting(self, job: Job, where: str, output: str) -> list[str]:
        """ConfigError if `output` (resolved) is a folder on the way to an earlier output, or an earlier output
        is a folder on its way (one name cannot be a picture and a folder); else the folders on its way."""
        found = self._on_the_way.get(output)
        if found:
            raise ConfigError(f"{where}output {job.output} is a folder that {found} goes in; a name cannot be a "
                              f"picture and a folder")
        folders, folder = [], os.path.dirname(output)
        while folder != self._root and len(folder) > len(self._root):
            found = self._outputs.get(folder)
            if found:
                raise ConfigError(f"{where}output {job.output} goes in the folder {folder}, which is {found}; a name "
                                  f"cannot be a picture and a folder")
            folders.append(folder)
            folder = os.path.dirname(folder)
        return folders

    def _check_style_folders(self, job: Job, where: str, output: str, source: str) -> None:
        """ConfigError if `output` (resolved) lies in a style folder of this or an earlier job, or one of this
        job's style folders holds an earlier job's output: the next run would read it as a style image (and,
        its output now an input, refuse to resume)."""
        folders = {_folder(f): f for f in job.style_folders}
        folder, name = os.path.split(output)
        parent = _folder(folder)
        if not name.startswith("."):  # images_in leaves hidden files out
            found = (f"its own style folder {folders[parent]}" if parent in folders
                     else self._style_folders.get(parent))
            if found:
                raise ConfigError(f"{where}output {job.output} is in {found}, whose images are styles: the next run "
                                  f"would read it as one; write it elsewhere")
        for key, given in folders.items():
            found = self._output_folders.get(key)
            if found:
                raise ConfigError(f"{where}the style folder {given} holds {found}: the next run would read it as "
                                  f"a style image; write that output elsewhere")
        for key, given in folders.items():
            self._style_folders.setdefault(key, f"the style folder {given} of job {job.id}{source}")
        if not name.startswith("."):
            self._output_folders.setdefault(parent, f"the output of job {job.id}{source}")


def _folder(path: str | os.PathLike) -> Any:
    """What names a folder for the style folders' checks: its identity (a bind mount of it is it), or, not made
    yet, its path after symbolic links."""
    return paths.identity(path) or os.path.realpath(path)


def check_jobs(jobs: Iterable[Job], out_dir: Path, shared: dict[str, Path] | None = None) -> int:
    """JobsCheck over every job; how many there are."""
    check = JobsCheck(out_dir, shared)
    for job in jobs:
        check.add(job)
    return check.count
