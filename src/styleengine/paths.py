"""The files a command reads and writes (torch-free): checks made before any long work, and the one
atomic write every writer uses.

A path is writable when its folder exists and a file named as the atomic
write's temp file (`.NAME.XXXXXXXX.tmp`) can be created there and removed:
trying answers for permissions (root included), read-only and pseudo file
systems (/proc) and names that become too long with the temp prefix, where
os.access and string checks cannot.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import secrets
import stat
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterable, Iterator

from styleengine.choices import INIT_ALIASES, INITS, WEIGHT_SUFFIXES, WEIGHT_WORDS
from styleengine.errors import ConfigError, ImageError, UserError, first_line

logger = logging.getLogger(__name__)


FILE = "a file"  # what named_file's flags name
TEMP_EXTRA = len("..XXXXXXXX.tmp")  # what temp_beside's name adds to the file's name
# image suffixes a folder of images (--contents, --styles, a folder of style images) is read for
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
NAME_MAX = 255  # bytes in one path component: ext4, xfs, btrfs, tmpfs, APFS, NTFS (in UTF-16 units)


def expand(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """`~` and $VARIABLES expanded, as a shell would have done had the path not followed `--flag=` (`base`: the
    folder a relative path is read from, where not the working folder: a jobs file's)."""
    return Path(expand_text(path, base))


def named_folder(flag: str) -> Callable[[str], Path]:
    """A parser for a folder option's text: ConfigError for an empty one, which Path would make the working
    folder (`--out "$DIR"` with DIR unset: the outputs among the user's files)."""
    return _named(flag, "a folder ('.' for the working folder)")


def named_file(flag: str) -> Callable[[str], Path]:
    """named_folder for a file's option or argument: `-o "$OUT"` with OUT unset said "cannot write ."."""
    return _named(flag, FILE)


def named_text(flag: str, words: tuple[str, ...]) -> Callable[[str], str]:
    """A parser for a text option that names a file or one of `words` (`--weights`): ConfigError for an empty
    one, which the file's checks would read as the working folder; a file's name expanded as named_file's."""
    def parse(text: str) -> str:
        if not str(text).strip():
            raise ConfigError(f"{flag} is empty; name a file or one of {', '.join(words)}, or leave the flag out")
        if text in words:
            return text
        try:
            return expand_text(text)
        except ConfigError as e:
            raise ConfigError(f"{flag} {e}") from None
    return parse


def _named(flag: str, wanted: str) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        if not str(text).strip():
            raise ConfigError(f"{flag} is empty; name {wanted}")
        try:
            expanded = expand_text(text)  # `--trace=~/t.jsonl`: no shell expanded it, as settings' paths
        except ConfigError as e:
            raise ConfigError(f"{flag} {e}") from None
        path = Path(expanded)
        check_name(path, flag)  # 300 bytes or a NUL: one line here, not an OSError from the first os call
        if wanted == FILE and ends_as_folder(expanded):
            raise ConfigError(f"{flag} {text}: a name ending in '/' (or '/.') is a folder; name a file")
        return path
    return parse


def ends_as_folder(text: str) -> bool:
    """Whether a file's name ends as a folder's does (`o.png/`, `o.png/.`: Path drops both, and o.png was
    written)."""
    return os.path.basename(text.rstrip()) in ("", ".", "..")


# what a shell would take for a variable: $NAME or ${NAME} (not `$5`, `$é` or `${X:-default}`, which expandvars
# leaves alone and a file name may hold)
_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})", re.ASCII)


def expand_text(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """expand() spelled as given otherwise: Path would make `./random` the word `random`, not the file.
    ConfigError for a variable that is not set (left as it was, `$NOPE/x.png` made a folder named `$NOPE`),
    unless a file by that literal name exists (in `base` for a relative one), and for a name that expands to
    nothing (Path makes it ".")."""
    text = os.fspath(path)
    expanded = os.path.expandvars(os.path.expanduser(text))
    left = _VARIABLE.search(expanded)
    if left is not None and left.group(0) in text and not os.path.lexists(
            expanded if base is None else os.path.join(base, expanded)):
        raise ConfigError(f"{text!r}: the variable {left.group(0)} is not set (a file by that name does not exist)")
    if text.strip() and not expanded.strip():  # `--out "$E"` with E='' wrote into the working folder
        raise ConfigError(f"{text!r} is empty once its variables are expanded; name a file or a folder")
    check_folder_ending(expanded, text)
    return expanded


def check_folder_ending(name: str, given: str | None = None) -> None:
    """ConfigError for a name that ends as a folder's (`c.png/`, `c.png/.`) where that folder is a file: Path
    drops the ending, and `--weights w.pth/`, a style `c.png/` or a jobs file's `"init": "c.png/"` read the
    file, where the run's content argument was refused (one rule for every path, as the system's open has)."""
    if not ends_as_folder(name):
        return
    stem = os.path.dirname(name.rstrip())
    if stem and os.path.lexists(stem) and not os.path.isdir(stem):
        raise ConfigError(f"{given if given is not None else name!r} ends as a folder's name, but {stem} "
                          f"{not_a_folder(stem)}")


def unnameable(path: str | os.PathLike) -> str | None:
    """Why `path` names no file on any system ("a path cannot hold a NUL byte", or a lone surrogate no byte
    spells: a JSON "\\ud800"), or None. os calls raise ValueError for both (UnicodeEncodeError is one)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return "a path cannot hold a NUL byte" if b"\0" in text else None
    if "\0" in text:
        return "a path cannot hold a NUL byte"
    try:
        os.fsencode(text)
    except UnicodeEncodeError as e:  # an undecodable byte's surrogate (\udce9) encodes back; \ud800 does not
        return f"a path cannot hold {text[e.start]!r}, a lone surrogate no byte spells"
    return None


def control_character(text: str) -> str | None:
    """The first control character of `text` (a newline, a tab, an escape, U+2028), shown as repr shows it, or
    None: a name that is one line of text. Other unprintable characters (a no-break space, a joiner, an
    undecodable byte of a Latin-1 name) are a file's name as it is, shown escaped where it is said."""
    import unicodedata

    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return repr(char)
    return None


def check_name(path: str | os.PathLike, what: str, error: type[UserError] = ConfigError) -> None:
    """Raise `error` if `path` cannot name a file at all: a NUL byte, a lone surrogate, or a component over
    NAME_MAX bytes (os calls would raise ValueError or ENAMETOOLONG from wherever they are first made)."""
    text = os.fspath(path)
    problem = unnameable(text)
    if problem is not None:
        raise error(f"{what} {text!r}: {problem}")
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise error(f"{what} {part[:24]}...{Path(part).suffix}: the name is too long ({size} bytes; file "
                        f"systems allow {NAME_MAX})")


def weights_problem(spec: str) -> str | None:
    """The line that says why the weights file `spec` names cannot be read, or None (a file, or the words
    "imagenet" and "random"): one wording for the dry run, tune and the run."""
    if spec in WEIGHT_WORDS:
        return None
    problem = input_problem("weights file", Path(spec).expanduser(), shown=spec)  # "./random" as typed
    if problem is not None:
        return problem
    path = Path(spec).expanduser()
    return (unsupported_weights(spec) or named_as_another(path, shown=spec, before_load=True)
            or _safetensors_header_problem(path, spec))


def _safetensors_header_problem(path: Path, shown: str) -> str | None:
    """The run's line for a .safetensors file whose header the library refuses (a length past the file, not JSON,
    tensors past the file's end), or None: told from the header alone, no tensor read, no torch."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="numpy"):
            return None
    except (SafetensorError, OSError, ValueError) as e:
        return unreadable_safetensors(shown, e)


def unreadable_safetensors(shown: str | os.PathLike, error: Exception) -> str:
    """The line for a safetensors file its library refuses: the dry run's and the load's."""
    return f"cannot read safetensors file {os.fspath(shown)}: {error}"


TORCH_LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's old format: its pickled magic number
_FIRST = 4096  # the bytes weights_kind reads: a tar's magic is at 257
_IMAGES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
           b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image"}


def weights_kind(path: Path) -> str | None:
    """What a weights file's bytes say it is, whatever its name: "torch" (torch.save's zip, with a data.pkl, or
    its old pickle), "torchscript" (torch.jit.save's zip), "zip" (another), "pickle" (a plain one: torch.load
    reads none), "safetensors" (a little-endian header length, then the header's `{`), "text" (no such length:
    JSON, a protocol-0 pickle), an image ("a PNG image"), "cut zip" (a zip whose directory cannot be read),
    "tar", "gzip", "zeros" (its first bytes all zero: a power cut's, a failed copy's), "tiny" (under 8 bytes:
    no weights file is), or None (unreadable, or none of these). Never unpickles: a zip's names are read from
    its directory."""
    try:
        with open(path, "rb") as f:
            first = f.read(_FIRST)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    head = first[:len(TORCH_LEGACY)]
    if size < 8:  # not even a safetensors header's length (torch's unpickler raised IndexError on 3 bytes)
        return "tiny"
    if not first.strip(b"\0"):
        return "zeros"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"  # first: its length's low byte may be 0x80, a pickle's first byte
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a file's header, or an empty zip's directory
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):  # its directory, at the end, lost: a download or copy cut short
            return "cut zip"
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"  # its constants and code beside the data
        # torch.load reads every name in the first name's folder and asks for both records (a data.pkl alone was
        # PyTorch's 'Expected hasRecord("version")' text; a name elsewhere, 'not in a subdirectory')
        folder = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else None
        def key(name: str) -> bytes:  # torch finds a record whatever its ASCII case (miniz's: U+212A is no K)
            return name.encode("utf-8", "surrogateescape").lower()

        found = {key(n) for n in names}  # not the folder's names: every one in the first's, as spelled
        ours = folder is not None and all(n.startswith(folder) for n in names) and key(
            folder + "data.pkl") in found and any(key(folder + name) in found for name in ("version", ".data/version"))
        return "torch" if ours else "zip"
    if head.startswith(TORCH_LEGACY):
        return "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    image = next((what for magic, what in _IMAGES.items() if head.startswith(magic)), None)
    if image is not None:
        return image
    if first[257:262] == b"ustar":  # a tar header's magic (POSIX and GNU), after the stronger ones at 0
        return "tar"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 8 and all(32 <= b < 127 or b in b"\t\n\r" for b in head[:8]):
        return "text"  # as a header length: past any file
    return None


def named_as_another(path: Path, shown: str | None = None, before_load: bool = False) -> str | None:
    """The line for a weights file whose bytes are another kind than its suffix says, or no weights at all
    (the loader's error was "header too large", "not a PyTorch checkpoint" or torch's own), or None.
    before_load: a pickle named as a checkpoint is left to the loader, which says first if it needs code."""
    from styleengine.choices import TORCH_SUFFIXES

    suffix, kind, name = path.suffix.lower(), weights_kind(path), shown if shown is not None else os.fspath(path)
    if suffix == ".safetensors" and kind == "torch":
        return f"{name} is a PyTorch checkpoint, not a safetensors file; name it .pth"
    if suffix == ".safetensors" and kind == "text":
        return f"{name} is text (JSON, or a protocol-0 pickle), not a safetensors file"
    if suffix in TORCH_SUFFIXES and kind == "safetensors":
        return f"{name} is a safetensors file, not a PyTorch checkpoint; name it .safetensors"
    if kind == "torchscript":  # torch's advice (weights_only=False, torch.jit.load) is no user's to follow
        return (f"{name} is a TorchScript archive (torch.jit.save), not a checkpoint of tensors; save the model's "
                f"state_dict() with torch.save or safetensors")
    if kind == "zip":
        return (f"{name} is a zip archive, not a PyTorch checkpoint (torch.save's zip holds a data.pkl and a "
                f"version record)")
    if kind == "cut zip":
        return (f"{name} is a zip archive whose end is missing or damaged (a download or copy cut short?); "
                f"fetch or copy it again")
    if kind == "tar":  # torch.save's format before 0.4 loads only by running its code: refused as a pickle is
        return f"{name} is a tar archive, not a checkpoint of tensors; save the weights with torch.save or safetensors"
    if kind == "zeros":
        return f"{name} begins with zero bytes, as no weights file does (a power cut or a failed copy?)"
    if kind == "tiny":
        size = os.path.getsize(path)
        return f"{name} is empty, not weights" if not size else \
            f"{name} is only {size} byte{'s' if size > 1 else ''}, not weights"
    if kind == "gzip":
        return f"{name} is gzip-compressed: decompress it (gunzip), then give the checkpoint it holds"
    if suffix in TORCH_SUFFIXES and kind == "text" and not before_load:  # torch's oldest files may be text
        return f"{name} is text, not a PyTorch checkpoint"
    if kind == "pickle" and not (before_load and suffix in TORCH_SUFFIXES):
        return (f"{name} is a plain Python pickle (pickle.dump), not a PyTorch checkpoint; save the weights with "
                f"torch.save or safetensors")
    if kind is not None and kind.startswith("a "):
        return f"{name} is {kind}, not weights"
    return None


def unsupported_weights(spec: str | os.PathLike) -> str | None:
    """The line for a weights file no loader reads (by its suffix: model/weights.read_checkpoint's), or None."""
    if Path(spec).suffix.lower() in WEIGHT_SUFFIXES:
        return None
    return (f"unsupported weights file {os.fspath(spec)}: use "
            f"{', '.join(WEIGHT_SUFFIXES[:-1])} or {WEIGHT_SUFFIXES[-1]}")


NOT_AN_IMAGE = "is not an image (or a format PIL cannot read)"  # the run's words and the dry run's
_WARNED: dict[tuple[str, str], None] = {}  # (file, PIL's warning) said, oldest first: each once a process


def as_given(path: str | os.PathLike, role: str) -> str:
    """`path` as text, a bare name that spells one of its role's words with its "./" (a Path drops it: `--init
    ./noise` was said as "init image noise was not found (the named starts: noise, ...)")."""
    text = os.fspath(path)
    words = ((*INITS, *INIT_ALIASES) if role.endswith("init image") else WEIGHT_WORDS if role.endswith("weights file")
             else ())
    return os.path.join(".", text) if text in words else text


def input_problem(role: str, path: str | os.PathLike, shown: str | None = None) -> str | None:
    """"ROLE PATH was not found" (or what else it is) for an input that is not a regular file to read, with a
    hint where the name was meant as a word: "./random" for the random weights, "nois" for a named start."""
    problem = not_a_file(path)
    if problem is None:
        return None
    hint, name = "", Path(path).name
    if problem == "was not found" and role.endswith("weights file") and name in WEIGHT_WORDS:
        hint = f" (the {name} weights are named '{name}', with no folder)"
    elif problem == "was not found" and role.endswith("init image"):
        hint = f" (the named starts: {', '.join(INITS)})"
    named = as_given(path, role) if shown is None else shown
    if os.path.basename(named) != os.path.basename(named).strip():  # "c.png  was not found": c.png is there
        named = repr(named)
    return f"{role} {named} {problem}{hint}"


def not_a_file(path: str | os.PathLike) -> str | None:
    """What `path` is when it is not a regular file to read ("was not found", "is a directory", "is a
    FIFO (a named pipe)", ...); None for a regular file (symlinks followed). A FIFO would block a reader
    until a writer comes, a device never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "was not found"
    except NotADirectoryError:
        return "was not found (a folder on its way is a file)"
    except OSError as e:  # ELOOP: a symbolic link that leads back to itself; ENAMETOOLONG
        return f"cannot be read ({_reason(e).lower()})"
    except ValueError:  # os.stat's "embedded null byte", or a lone surrogate (UnicodeEncodeError)
        return f"cannot be read ({unnameable(path) or 'a path no file system takes'})"
    return _mode_problem(mode)


def _mode_problem(mode: int) -> str | None:
    """not_a_file's words for a file of this st_mode (None: a regular file)."""
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (a named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return None if kind is None else f"is {kind}, not a regular file"
    return "is not a regular file"


def check_inputs(inputs: dict[str, Path]) -> None:
    """ConfigError naming the first of `inputs` ({role: path}) that is not a regular file to read (missing,
    a folder, a FIFO...): files every job of a batch or a server reads, checked once at the start."""
    for role, path in inputs.items():
        problem = input_problem(role, path)
        if problem is not None:
            raise ConfigError(problem)


def check_folder(path: Path, what: str) -> None:
    """ConfigError if `path` exists as something other than a folder (a file, a device, a symbolic link
    loop); a missing one is fine (the caller makes it)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path} exists and is not a folder (it {not_a_folder(path)})")


def not_a_folder(path: str | os.PathLike) -> str:
    """What `path`, which is not a folder, is ("is a symbolic link", "is a FIFO (a named pipe)", "is a file")."""
    kind = not_a_file(path)  # a loop or a broken link says so
    if os.path.islink(path) and (kind is None or os.path.isdir(path)):
        return "is a symbolic link"
    return (kind or "is a file").replace(", not a regular file", "")  # a FIFO: not "not a file"


def in_the_way(folder: str | os.PathLike) -> str | None:
    """What stops the folder `folder` being made or used, said ("dl is a broken symbolic link"): it or a folder
    above it that is there and is not a folder; None if nothing is."""
    for path in (Path(folder), *Path(folder).parents):
        if os.path.lexists(path) and not path.is_dir():
            return f"{path} {not_a_folder(path)}"
    return None


@contextlib.contextmanager
def made_folder(path: Path, what: str) -> Iterator[None]:
    """Make the folder `path` (and its missing parents; ConfigError if it cannot be); should the block fail,
    remove those it made that are still empty: a command refused at its start leaves the disk as it was."""
    missing = []
    folder = Path(path)
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)  # the deepest first
        folder = folder.parent
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        ours = {made: identity(made) for made in missing}  # a folder made since by that name is another's
    except OSError as e:  # a broken link on the way: mkdir says only "File exists"
        raise ConfigError(f"cannot make {what} {path}: {in_the_way(path) or _reason(e)}") from None
    try:
        yield
    except BaseException:
        for made in missing:
            if identity(made) == ours[made] is not None:  # moved away, and the user's own made in its place: kept
                with contextlib.suppress(OSError):  # one holding anything (an output, the manifest) stays
                    made.rmdir()
        raise


def try_lock(f, blocking: bool) -> bool:
    """Take the exclusive lock of the open file `f` (or descriptor: a folder's too) (flock: it goes with the
    process), waiting for it if `blocking`; False if another process holds it (and not blocking)."""
    fd = f if isinstance(f, int) else f.fileno()
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        import time

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows-only names
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.1)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def open_lock(path: Path) -> BinaryIO | None:
    """The lock file `path` (made if missing) open and locked by this process, or None if another process holds
    it. OSError if it cannot be opened."""
    while True:
        f = lock_file(path)
        if not try_lock(f, blocking=False):
            f.close()
            return None
        try:
            same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # without it, release_lock goes by the path alone
                folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                if os.path.samestat(os.fstat(f.fileno()), os.stat(path.name, dir_fd=folder, follow_symlinks=False)):
                    _LOCK_FOLDERS[f.fileno()] = folder
                else:  # the folder swapped as it was opened: the lock's own is not known
                    os.close(folder)
            return f
        f.close()  # its holder removed it while we opened it: a lock on that file guards nothing now


def holds(f: IO[bytes], path: Path) -> bool:
    """Whether the lock file open as `f` is the file at `path` (not a link to it): its folder is still there."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path, follow_symlinks=False))
    except (OSError, ValueError):  # not there; `f` closed
        return False


def close_lock(f: IO[bytes]) -> None:
    """Let go of a lock open_lock gave without removing its file (one found to be another's)."""
    folder = _LOCK_FOLDERS.pop(f.fileno(), None)
    f.close()
    if folder is not None:
        os.close(folder)


def lock_folder(f: IO[bytes] | None) -> int | None:
    """A descriptor of the folder the lock open as `f` (open_lock's) was made in, wherever it is now; None if not
    known. Writes made at it go to the locked folder, never to one put at its name since its check."""
    try:
        return _LOCK_FOLDERS.get(f.fileno()) if f is not None else None
    except ValueError:  # closed
        return None


def made_in(f: IO[bytes], folder: Path) -> bool:
    """Whether the lock open as `f` (open_lock's) was made in the folder at `folder` now: its file removed from a
    folder still in place, not a folder moved or put there."""
    try:
        return os.path.samestat(os.fstat(_LOCK_FOLDERS[f.fileno()]), os.stat(folder))
    except (KeyError, OSError, ValueError):
        return False


# a held lock's folder, open (by the lock file's descriptor): its file is removed there at the release, wherever
# the folder went meanwhile (moved away, or covered by a bind mount at its path)
_LOCK_FOLDERS: dict[int, int] = {}


def release_lock(f: IO[bytes], path: Path) -> None:
    """Remove the lock file `path` that open_lock gave as `f`, if it is still ours, then close it (releasing the
    lock): the folder keeps only what its owner wrote. Removed while held: a process that opened it meanwhile sees
    it gone and opens it again (open_lock); one made anew by another process is that process's. It is looked for
    in the folder it was made in, wherever that is now, then at `path`."""
    folder = _LOCK_FOLDERS.pop(f.fileno(), None)
    places: list[tuple[str | Path, int | None]] = [(path.name, folder)] if folder is not None else []
    with f:
        held = os.fstat(f.fileno())
        for name, where in [*places, (path, None)]:
            with contextlib.suppress(OSError):  # not there (removed, another's): the next place, or none
                if os.path.samestat(held, os.stat(name, dir_fd=where, follow_symlinks=False)):
                    os.unlink(name, dir_fd=where)
                    break
        if folder is not None:
            os.close(folder)


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o666, follow: bool = False,
                 dir_fd: int | None = None) -> int:
    """os.open(path) for a regular file only, never blocking on a FIFO, and (unless `follow`) never through a
    symbolic link: an OSError otherwise (O_NONBLOCK, then the kind checked on the descriptor). A record or lock
    of ours is a file we wrote; anything else there is damage. follow: a user's file, which may be a link.
    dir_fd: `path` is its name in that folder."""
    nofollow = 0 if follow else getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | nofollow, mode, dir_fd=dir_fd)
    except ValueError:  # "embedded null byte", a lone surrogate: an OSError as every name that cannot be opened
        raise OSError(errno.EINVAL, unnameable(path) or "a path no file system takes", os.fspath(path)) from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a folder)", os.fspath(path))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def lock_file(path: str | os.PathLike) -> BinaryIO:
    """A lock file (made if missing) open for flock: a regular file only, never through a symbolic link (it would
    create or open whatever it names, maybe elsewhere), never a FIFO's wait (open_regular)."""
    return os.fdopen(open_regular(path, os.O_RDWR | os.O_CREAT), "a+b")


def abandoned(folder: Path, lock: Path, *, unowned_age_s: float, owned_age_s: float = 0.0) -> bool:
    """Whether the staging folder `folder` is one no live process owns: its owner's `lock` (a regular file, held
    with flock while the owner lives) can be taken and the folder is `owned_age_s` old, or there is no usable
    lock and it is `unowned_age_s` old (killed before it made one). False for a folder gone meanwhile."""
    import time

    try:
        age = time.time() - os.lstat(folder).st_mtime
    except FileNotFoundError:  # another process removed it
        return False
    try:
        f = os.fdopen(open_regular(lock), "rb")
    except OSError:  # no lock, or one that is no file of ours: only its age tells
        return age > unowned_age_s
    with f:  # closing it lets go of the lock just taken
        return age >= owned_age_s and try_lock(f, blocking=False)


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of the regular file `path` (open_regular: OSError for a FIFO, a device, a link, a folder)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


@contextlib.contextmanager
def temp_beside(path: Path, dir_fd: int | None = None) -> Iterator[tuple[int, str]]:
    """(fd, name) of a new temp file in `path`'s folder, named `.NAME.XXXXXXXX.tmp` (relative to `dir_fd` when
    given, opened there without following a link), for the block: an atomic write's first half. The file is gone
    after the block unless the block renamed it away; its name is chosen before the open (O_EXCL makes a file by
    it ours), so a signal at any point, the open's return included, leaves none behind.

    Made with mode 0666 less the umask, as open() makes a file: the kernel applies the umask (mkstemp's
    0600 needed a chmod from the umask, read by setting it, which changed it for every thread meanwhile)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    if dir_fd is not None:
        flags |= os.O_NOFOLLOW
    name: str | None = None
    try:
        for _ in range(tempfile.TMP_MAX):
            base = f".{path.name}.{secrets.token_hex(4)}.tmp"
            name = base if dir_fd is not None else os.path.join(path.parent, base)
            try:
                fd = os.open(name, flags, 0o666, dir_fd=dir_fd)
                break
            except FileExistsError:
                name = None  # another's file: never removed
            except OSError as e:  # said of the file asked for: the temp name is nothing the user knows
                name = None
                raise OSError(e.errno, e.strerror, os.fspath(path)) from None
        else:
            raise FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent))
        yield fd, name
    finally:
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)


def written_through(path: str | os.PathLike) -> Path:
    """Where an atomic write of `path` renames its temp file: the file a symbolic link at `path` leads to (as the
    checks before the write read it), never the link; OSError for a link to a file of another kind."""
    if not os.path.islink(path):
        return Path(path)
    problem = link_of_another_kind(path)
    if problem is not None:
        raise OSError(errno.EINVAL, problem, os.fspath(path))
    return Path(os.path.realpath(path))


def link_of_another_kind(path: str | os.PathLike) -> str | None:
    """Why an output that is a symbolic link is not written through it: it leads to a file named as another kind
    (`o.jpg` -> holiday.png took JPEG bytes under .png, `v.gif` -> movie.mp4 a GIF); None otherwise, and for a
    link whose name has no suffix."""
    if not os.path.islink(path) or not Path(path).suffix:  # /dev/stdout: no format is chosen by its name
        return None
    target = os.path.realpath(path)
    if _kind(Path(target).suffix) == _kind(Path(path).suffix):
        return None
    return f"it is a symbolic link to {target}, a file of another kind; name that file itself, or remove the link"


def _kind(suffix: str) -> str:
    """What a file of this suffix is: an image's format (.jpg and .jpeg are one, as PIL writes them), else the
    suffix, any case."""
    from PIL import Image

    return Image.registered_extensions().get(suffix.lower(), suffix.lower())


# the names of a descriptor the process holds (its stdout, a shell's 5>file): written as they are, never replaced
_DESCRIPTOR_NAME = re.compile(r"/dev/(?:std(?:in|out|err)|fd/\d+)|/proc/(?:self|thread-self|\d+)/fd/\d+")


def names_a_descriptor(path: str | os.PathLike) -> bool:
    """Whether `path`, or a link on the way to its file, names an open descriptor (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N): not a folder's file such as /dev/shm/t.jsonl or /proc/self/cwd/t.jsonl."""
    here = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on a chain of links
        if _DESCRIPTOR_NAME.fullmatch(here):
            return True
        try:
            here = os.path.abspath(os.path.join(os.path.dirname(here), os.readlink(here)))
        except OSError:  # not a link (or gone): the chain ends here
            return False
    return False


def _refuse_special(path: Path, dir_fd: int | None = None) -> None:
    """OSError where a FIFO, socket or device is at `path` (its name at `dir_fd`): put there during the run, it is
    another program's, as it is at the start; a file, folder or link is replaced as the checks before found it.
    One put there between this look and the rename is replaced: no call renames only onto a regular file."""
    try:
        mode = os.stat(path.name if dir_fd is not None else path, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):  # said of the mode found
        raise OSError(errno.EEXIST, f"it {_mode_problem(mode)} (put there during the run; not replaced)",
                      os.fspath(path))


@contextlib.contextmanager
def atomic_writer(path: Path, through: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` whole when the block ends; on an error `path` is untouched
    and the temp file is gone. A symbolic link at `path` is written through, as the checks before the write
    read it: the file it leads to is replaced, never the link (`--distances /dev/stdout > out.json` replaced
    the system's link with a file). through=False (a file of ours in the cache): the link itself is replaced,
    never the file it leads to (a link at the tuning record replaced a user's file)."""
    if through:
        path = written_through(path)
    with temp_beside(path) as (fd, tmp):
        with os.fdopen(fd, "wb") as f:
            yield f
        _refuse_special(path)
        try:
            os.replace(tmp, path)
        except OSError as e:  # its folder removed meanwhile: said of `path`, not of the temp file
            raise OSError(e.errno, e.strerror, os.fspath(path)) from None


# POSIX: rename replaces as os.replace does (which supports_dir_fd does not list, though it takes dir fds)
CONFINED = (os.name == "posix" and hasattr(os, "O_NOFOLLOW")
            and {os.open, os.rename, os.mkdir, os.unlink} <= os.supports_dir_fd)


def open_confined_folder(folder: Path, root: Path, make: bool = False, root_fd: int | None = None) -> int:
    """A descriptor of `folder` (inside `root`, as the checks found it) reached from root's own folder with no
    symbolic link followed below it: a folder swapped for a link after the checks is an OSError (ELOOP or
    ENOTDIR), never a way out. make: missing folders are made on the way (mkdir at each descriptor). root_fd:
    root's folder as opened before (a lock's: lock_folder), not whatever is at its name now."""
    top, where = os.path.realpath(root), os.path.realpath(folder)
    if os.path.commonpath([top, where]) != top:
        raise OSError(errno.EXDEV, "the folder leads outside its root (a symbolic link)", str(folder))
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    if make and root_fd is None:
        os.makedirs(top, exist_ok=True)
    fd = os.dup(root_fd) if root_fd is not None else os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        here = top
        for part in Path(os.path.relpath(where, top)).parts:
            if part == ".":
                continue
            here = os.path.join(here, part)
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                inner = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(here):
                    raise OSError(e.errno, "a folder on the way became a symbolic link (not followed)",
                                  str(folder)) from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_confined_folder(folder: Path, root: Path) -> None:
    """mkdir -p of `folder` inside `root` with no symbolic link followed below root (open_confined_folder);
    a plain mkdir where the OS has no *at calls."""
    if CONFINED:
        os.close(open_confined_folder(folder, root, make=True))
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def confined_writer(path: Path, root: Path, root_fd: int | None = None) -> Iterator[BinaryIO]:
    """atomic_writer for `path` inside `root` whose folders are opened without following links
    (open_confined_folder, from `root_fd` when given), the temp file made and renamed at that descriptor: nothing
    is written through a folder made a link between the checks and the write. atomic_writer where the OS has no
    *at calls."""
    if not CONFINED:
        with atomic_writer(path) as f:
            yield f
        return
    path = Path(path)
    fd = open_confined_folder(path.parent, root, root_fd=root_fd)
    try:
        with temp_beside(path, dir_fd=fd) as (out, tmp):
            with os.fdopen(out, "wb") as f:
                yield f
            _refuse_special(path, fd)
            os.rename(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, through: bool = True) -> None:
    """Write `data` to `path` atomically (atomic_writer)."""
    with atomic_writer(path, through) as f:
        f.write(data)


def _stderr() -> tuple[int, int] | None:
    """The file this process's messages go to, as identity() gives it (None: none to stat)."""
    try:
        found = os.fstat(2)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_writable(path: Path, what: str, error: type[UserError] = ConfigError, through: bool = True) -> None:
    """Raise `error` unless `path` (a file) could be written atomically; `what` names it ("trace", "--json").
    through: a link at `path` is written through (False: replaced, as a batch's confined writes do)."""
    check_name(path, f"cannot write {what}", error)
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a folder"
        raise error(f"cannot write {what} {path}: folder {folder} {problem}")
    # a link is written through (its file judged), or replaced (through False: only its own name counts)
    followed = through or not os.path.islink(path)
    if followed and os.path.islink(path) and not os.path.exists(path):  # the trace follows it: "stopped at ..."
        raise error(f"cannot write {what} {path}: it {not_a_file(path)} (to {os.readlink(path)}); remove it or "
                    f"name another file")
    if followed and path.is_dir():
        raise error(f"cannot write {what} {path}: it is a directory")
    if followed and path.exists() and not path.is_file():
        raise error(f"cannot write {what} {path}: it is not a regular file")
    if followed and (found := identity(path)) is not None and found == _stderr():  # `--trace /dev/stderr 2>log`
        raise error(f"cannot write {what} {path}: it is this command's stderr, where its messages go; name a file")
    another = link_of_another_kind(path) if through else None
    if another is not None:
        raise error(f"cannot write {what} {path}: {another}")
    # a link's file is written (/dev/fd/5 leads to one in a folder that takes files; /dev/fd takes none)
    target = Path(os.path.realpath(path)) if through and os.path.islink(path) else path
    try:
        with temp_beside(target) as (fd, _):  # made and removed: a signal at any point leaves no file
            os.close(fd)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            named = "the name" if target == path else f"the name it leads to ({target.name})"
            raise error(f"cannot write {what} {path}: {named} is too long ({len(target.name)} characters, "
                        f"{len(target.name) + TEMP_EXTRA} as the atomic write's temp file; use a shorter one)"
                        ) from None
        raise error(f"cannot write {what} {path}: cannot create files in {target.parent} ({_reason(e)})") from None
    if followed and path.exists() and not os.access(path, os.W_OK):
        raise error(f"cannot write {what} {path}: the file is read-only")


OWN_LIMIT = 16 << 20  # bytes of a file read whole to tell whether it is an earlier output of ours
# what an earlier trace of ours holds: each line (run's, video's) carries one of these key sets and starts as
# json.dumps writes its first key
TRACE_KEYS = ({"iteration", "loss", "content_loss", "style_loss", "tv_loss", "seconds"},
              {"frame", "iterations", "seconds", "loss", "temporal_loss"})
TRACE_HEADS = ('{"iteration": ', '{"frame": ')


def own_text(data: bytes) -> str | None:
    """A file's bytes as UTF-8 text (a BOM dropped); None where they are not."""
    try:
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        return None


NUL_LIMIT = 1 << 20  # a trace of NULs alone up to this: the lines a power cut lost (past it, a disk image's zeros)


def own_trace(text: str) -> bool:
    """Whether `text` is a trace of ours: JSON lines, each an object with a trace's keys (a training log's
    lines carry "loss" too, not the rest); a last line without its newline, torn by a crash, only where it
    begins as a trace line does (a first line torn by a kill is a trace too). A power cut's damage passes: a
    line with NULs in it (the block's NULs, then the torn rest of a line), or a short file of NULs alone. Judged
    a line at a time."""
    import json

    if not text.replace("\0", "").strip():
        return len(text.encode("utf-8")) <= NUL_LIMIT
    whole, at = False, 0
    while at < len(text):  # a line at a time: no copy of a file of many lines
        end = text.find("\n", at)
        line, at = (text[at:], len(text)) if end < 0 else (text[at:end], end + 1)
        if "\0" in line or not line.strip():  # blank, or a power cut's NULs and the torn rest of a line
            continue
        if end < 0:  # the last line, torn by a crash: only as a trace line begins
            torn = line.strip()
            return any(torn.startswith(head) or head.startswith(torn) for head in TRACE_HEADS)
        try:
            row = json.loads(line)
        except ValueError:
            return False
        if not (isinstance(row, dict) and any(keys <= row.keys() for keys in TRACE_KEYS)):
            return False
        whole = True
    return whole


def own_object(keys: set[str]) -> Callable[[str], bool]:
    """Whether a file's text is one JSON object with `keys` (invert's distances, bench's document)."""
    def ours(text: str) -> bool:
        import json

        try:
            found = json.loads(text)
        except ValueError:
            return False
        return isinstance(found, dict) and keys <= found.keys()

    return ours


own_distances = own_object({"layer", "feature_distance", "pixel_rmse", "iterations", "model", "weights"})


def check_own(path: Path, what: str, ours: Callable[[str], bool] | None = None, error: type[UserError] = ConfigError,
              binary: Callable[[bytes], bool] | None = None) -> None:
    """Raise `error` when a file at `path`, which an output would replace, is not an earlier output of its kind
    (not_ours)."""
    problem = not_ours(path, what, ours, binary)
    if problem is not None:
        raise error(f"cannot write {what} {path}: {problem}")


def not_ours(path: Path, what: str, ours: Callable[[str], bool] | None = None,
             binary: Callable[[bytes], bool] | None = None) -> str | None:
    """Why a file at `path`, which an output would replace, is not an earlier output of its kind (`ours`, on the
    file's whole text; `binary`, on its bytes), or None: `--trace holiday.png`, `pyproject.toml`, `package.json` or
    a training log replaced the user's file. An empty (or blank) file is replaced; one past OWN_LIMIT cannot be
    told, and is not."""
    if not os.path.exists(path):  # nothing there (or a broken link: its file is written)
        return None
    if not Path(path).is_file():  # never read (a FIFO blocks); the start's check_writable refused one already
        return f"it {not_a_file(path) or 'is not a regular file'} (put there during the run); name another file"
    try:
        with open(path, "rb") as f:
            data = f.read(OWN_LIMIT + 1)
    except OSError:  # unreadable: the write says why
        return None
    if len(data) > OWN_LIMIT:
        return (f"a file of over {OWN_LIMIT >> 20} MiB is there, too large to tell whether it is an earlier {what} "
                f"file; remove it or name another file")
    text = own_text(data)
    if text is not None and not text.strip():  # blank (NULs are the judge's: a power cut's in a trace only)
        return None
    if binary(data) if binary is not None else text is not None and ours is not None and ours(text):
        return None
    return f"a file is there that is not an earlier {what} file (only that is replaced); name another file"


def same_file(a: Path, b: Path) -> bool:
    """Whether a and b name one file: the same inode (hard links, symbolic links), or, not written yet, one
    name in one folder (spot: a folder reached by a bind mount is its other name)."""
    try:
        if os.path.samefile(a, b):
            return True
    except (OSError, ValueError):  # one of them does not exist (yet)
        pass
    return spot(a) == spot(b)


def identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """What a file or folder is whatever its spelling, a link or a bind mount (`mount --bind sty bsty`, which
    realpath cannot see): its (st_dev, st_ino), symbolic links followed; None if there is none to stat."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino


def spot(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str]:
    """Where `path` would be written, existing or not: the identity of its nearest existing folder (symbolic links
    followed) and the names below it; one spot is one file, however the path was spelled."""
    try:
        here = os.path.realpath(path)  # Path.resolve raises on a symlink loop; this does not
    except ValueError:  # a NUL byte or a lone surrogate: no folder holds it
        return None, os.fspath(path)
    below = [os.path.basename(here)]
    here = os.path.dirname(here)
    while True:
        found = identity(here)
        parent = os.path.dirname(here)
        if found is not None or parent == here:
            return found, os.path.join(*reversed(below))
        below.append(os.path.basename(here))
        here = parent


def inside(path: str | os.PathLike, folder: str | os.PathLike, directly: bool = False) -> bool:
    """Whether `path` (existing or not) is `folder` or lies in it, by the folders' identity: another name of the
    folder (a bind mount of it or of a folder above it, which realpath cannot see) is the folder. `directly`:
    only the folder `path` is named in, a link at its end not followed (a style folder's images are its own
    files; a write replaces such a link). A folder not made yet: its path, after symbolic links."""
    want = identity(folder)
    if directly:  # its folder after links, '..' below a missing one folded (`sty/sub/../t.png` is in sty)
        return want is not None and identity(os.path.realpath(Path(path).parent)) == want
    try:
        here = os.path.realpath(path)
        if want is None:
            top = os.path.realpath(folder)
            return os.path.commonpath([top, here]) == top
    except ValueError:  # a NUL byte or a lone surrogate: no folder holds it
        return False
    while True:
        if identity(here) == want:
            return True
        parent = os.path.dirname(here)
        if parent == here:
            return False
        here = parent


def links_into(path: Path, folder: Path) -> bool:
    """Whether `path` is a hard link to a file directly in `folder` (another name for one of its files)."""
    try:
        found = os.stat(path)
        if found.st_nlink < 2 or not folder.is_dir():
            return False
        return any(entry.inode() == found.st_ino and entry.stat(follow_symlinks=False).st_dev == found.st_dev
                   for entry in os.scandir(folder))
    except FileNotFoundError:  # not written yet: no other name
        return False


def folds_names(folder: Path) -> bool:
    """Whether `folder`'s file system takes names that differ only in case as one file (macOS's and Windows'
    by default; they fold Unicode normalisation too): a lower-case temp file looked up in upper case. False if
    the folder cannot be written (the write will say so)."""
    try:
        with temp_beside(Path(folder) / "styleengine-case") as (fd, name):
            os.close(fd)
            return os.path.exists(os.path.join(os.path.dirname(name), os.path.basename(name).upper()))
    except OSError:
        return False


def check_not_an_input(output: Path, what: str, inputs: dict[str, Path]) -> None:
    """ConfigError if `output` is one of `inputs` ({"content image": path, ...}): a run never overwrites its sources."""
    for role, source in inputs.items():
        if same_file(output, source):
            raise ConfigError(f"{what} {output} is the {role} {source}; choose another file name")


def check_cache_dir(root: Path, env_var: str | None = None, what: str = "the cache folder",
                    make: bool = True) -> None:
    """ConfigError unless the cache folder `root` (or `what` the user knows it as) exists or can be made, and is
    writable. make=False (a dry run, which writes nothing): a missing one is asked of the folder it would be made
    in, not made."""
    named = f" ({env_var}={os.environ[env_var]})" if env_var and os.environ.get(env_var) else ""
    if os.path.lexists(root) and not root.is_dir():  # a broken link too: mkdir says only "File exists"
        raise ConfigError(f"cannot use {what} {root}{named}: it {not_a_folder(root)}")
    if not make and not root.is_dir():
        reason = in_the_way(root)
        above = next(folder for folder in Path(root).absolute().parents if folder.is_dir())
        if reason is None and not os.access(above, os.W_OK | os.X_OK):
            reason = f"it cannot be made in {above} (Permission denied)"
        if reason is not None:
            raise ConfigError(f"cannot use {what} {root}{named}: {reason}")
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        with temp_beside(root / "write-test") as (fd, _):  # made and removed: a signal leaves no file
            os.close(fd)
    except OSError as e:
        reason = in_the_way(root) or _reason(e)  # not "Not a directory"
        raise ConfigError(f"cannot use {what} {root}{named}: {reason}") from None


def marked(path: str | os.PathLike, key: str) -> str | None:
    """The value images.save_image wrote under `key` into the image at `path` (a PNG's text, a JPEG's comment), or
    None: none there, or no regular file PIL reads (a FIFO is not waited on)."""
    from PIL import Image

    try:
        with os.fdopen(open_regular(path, follow=True), "rb") as f, Image.open(f) as opened:
            if opened.format == "PNG":
                value = opened.info.get(key)
                return value if isinstance(value, str) else None
            comment = opened.info.get("comment", b"")
            # the comment is the one key (images.save_image): a value may hold any character but a NUL
            name, _, value = (comment.decode("utf-8", "replace") if isinstance(comment, bytes) else "").partition(": ")
            return value if name == key else None
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def image_format(path: Path) -> str:
    """PIL's format for `path`'s suffix, one it can save; ImageError otherwise."""
    from PIL import Image


    formats = Image.registered_extensions()  # also loads every plugin, filling Image.SAVE
    fmt = formats.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ImageError(f"cannot write {path}: unknown image suffix {path.suffix or '(none)'!r}; use .png or .jpg")
    return fmt


@functools.lru_cache(maxsize=None)
def _rgb_problem(fmt: str) -> str | None:
    """Why PIL cannot save an 8-bit RGB image as `fmt` (it cannot as XBM or MSP, has no BUFR encoder), tried
    once per format; None when it can."""
    import io

    from PIL import Image


    try:
        Image.new("RGB", (16, 16)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError) as e:
        return first_line(e)
    return None


def check_suffix(path: str | os.PathLike) -> None:
    """ImageError unless `path`'s suffix names a format images.save_image writes 8-bit RGB in (the part of
    check_output_path that needs no folder: a jobs file's outputs are checked as the file is read)."""

    fmt = image_format(Path(path))
    problem = _rgb_problem(fmt)
    if problem is not None:
        raise ImageError(f"cannot write {path}: PIL cannot save RGB images as {fmt} ({problem}); use .png or .jpg")


def check_output_path(path: str | os.PathLike, through: bool = True) -> None:
    """Raise ImageError unless an RGB image could be written to `path`, by trying what images.save_image will do:
    its folder exists, its suffix names a format whose encoder takes 8-bit RGB (check_suffix), and its temp
    file can be made there (permissions, read-only or pseudo file systems, a name too long once the temp
    prefix is added); through: check_writable's."""

    check_suffix(path)
    check_writable(Path(path), "image", ImageError, through)


def check_sides(what: str, shape: tuple[int, ...]) -> None:
    """ImageError unless both sides of the image `what` ("image c.png"), shape (height, width, ...), are at least
    MIN_SIDE px."""
    from styleengine.choices import MIN_SIDE

    if min(shape[:2]) < MIN_SIDE:
        raise ImageError(f"{what} is {shape[1]}x{shape[0]} px; both sides must be at least {MIN_SIDE} px")


# a mask saved at another resolution rounds its sides: within 2% of its image's aspect ratio it is resized to it
ASPECT_SLACK = 0.02


def aspect_fits(shape: tuple[int, ...], image_shape: tuple[int, ...]) -> bool:
    """Whether (height, width, ...) `shape` has the aspect ratio of `image_shape` within ASPECT_SLACK."""
    return abs((shape[1] / shape[0]) / (image_shape[1] / image_shape[0]) - 1) <= ASPECT_SLACK


def check_mask_aspect(what: str, path: str | os.PathLike, shape: tuple[int, ...], image: str,
                      image_shape: tuple[int, ...]) -> None:
    """ImageError unless the mask `what` ("content mask") at `path`, shape (height, width, ...), has the aspect
    ratio of `image` ("the content image"), image_shape, within ASPECT_SLACK: the run's check on the pixels
    (engine/masks.py) and the dry run's on the header alike."""
    height, width = shape[:2]
    if not aspect_fits(shape, image_shape):
        raise ImageError(f"{what} {path} is {width}x{height} px and {image} {image_shape[1]}x{image_shape[0]}: a "
                         f"mask needs its image's aspect ratio (it is resized to it, never cropped)")


def image_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from an image file's header (EXIF rotation applied, as images.load_image does), without
    decoding it; None if PIL cannot tell (loading it will say what is wrong)."""
    if not Path(path).is_file():  # a FIFO would block the open; a device never ends
        return None
    try:
        return header_shape(path, "image", quiet=True)
    except ImageError:
        return None


def header_shape(path: str | os.PathLike, role: str, quiet: bool = False) -> tuple[int, int]:
    """(height, width) from the regular file `path`'s header, or ImageError in images.load_image's words for what
    a header shows: no image, a decompression bomb (PIL's warning too: the run refuses both), a broken header.
    `quiet`: PIL's warnings not said (the image's load says them)."""
    from PIL import Image

    with image_errors(path, role, quiet=quiet):
        with Image.open(path) as im:
            width, height = im.size
            tile = im.tile[0].args if im.tile else None  # before getexif, which decodes a PNG (the tile gone)
            problem = key_problem(im.mode, im.info.get("transparency"), tile if isinstance(tile, str) else None)
            try:
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # rotated by 90 degrees
            except EXIF_FAULTS as e:  # the run uses it as stored: planned so
                turned = False
                if not quiet:
                    exif_unreadable(f"{role} {path}", e)
            if turned:
                width, height = height, width
    if problem is not None:  # the run refuses it as it decodes: said from the header alike
        raise ImageError(f"refusing {role} {path}: it {problem}")
    return height, width


# what PIL raises for EXIF it cannot read (not TIFF data: a PNG's eXIf chunk of anything; a value set by hand)
EXIF_FAULTS = (SyntaxError, TypeError, ValueError, struct.error)


def exif_unreadable(what: str, error: BaseException) -> None:
    """The warning for a picture whose EXIF cannot be read: used as stored, as PIL's corrupt-EXIF warning leaves it
    (the run and the dry run alike)."""
    logger.warning("%s: its EXIF data cannot be read (%s); used as stored, not turned", what, first_line(error))


def key_problem(mode: str, key: Any, rawmode: str | None) -> str | None:
    """Why an image's transparent colour (a PNG's tRNS key) cannot be read exactly, or None: PIL keeps a 16-bit
    RGB PNG's high bytes only, so the pixels that are the key cannot be told from the rest."""
    if mode == "RGB" and isinstance(key, tuple) and (rawmode in ("RGB;16B", "RGB;16L", "RGB;16N")
                                                     or max(key, default=0) > 255):
        return ("is a 16-bit RGB PNG with a transparent colour (a tRNS key), which is read at 8 bits, where that "
                "colour cannot be told apart exactly; save it with an alpha channel instead")
    return None


@contextlib.contextmanager
def image_errors(path: str | os.PathLike, role: str, passes: tuple[type[BaseException], ...] = (),
                 quiet: bool = False) -> Iterator[None]:
    """PIL's errors as the block opens or decodes the image `path` said as ImageError in one wording (the run's,
    the dry run's): a bomb (PIL's warning too), no image, no permission, a broken file; `passes` go through.
    PIL's other warnings ("Corrupt EXIF data") are logged naming the image, unless `quiet`."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
        for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught) if not quiet else ():
            said = (os.fspath(path), message)
            if said not in _WARNED:  # a batch's own --init is read for every job; one file may be two inputs
                _WARNED[said] = None
                logger.warning("%s %s: %s", role, *said)
            while len(_WARNED) > 1000:  # a server's uploads are new files every time
                del _WARNED[next(iter(_WARNED))]
    except passes:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refusing {role} {path}: {too_many_pixels(e)}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{role} {path} {NOT_AN_IMAGE}") from None
    except PermissionError:
        raise ImageError(f"cannot read {role} {path}: permission denied") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        too_large = metadata_too_large(e)
        if too_large is not None:  # the file is whole: PIL refuses to decompress that much
            raise ImageError(f"refusing {role} {path}: {too_large}") from None
        raise ImageError(f"cannot decode {role} {path} (truncated or corrupt?): {first_line(e)}") from None


def metadata_too_large(error: BaseException) -> str | None:
    """PIL's refusal of a PNG whose metadata decompresses past its limits, in our words; None for another error."""
    from PIL import PngImagePlugin

    if not isinstance(error, ValueError):
        return None
    if "MAX_TEXT_CHUNK" in str(error):  # a zTXt/iTXt chunk or an ICC profile
        return (f"its metadata (a compressed text chunk or colour profile) is over "
                f"{PngImagePlugin.MAX_TEXT_CHUNK / 2**20:g} MiB decompressed, more than PIL reads; save the picture "
                f"without it")
    if "MAX_TEXT_MEMORY" in str(error):
        return (f"its text metadata is over {PngImagePlugin.MAX_TEXT_MEMORY / 2**20:g} MiB in all, more than PIL "
                f"reads; save the picture without it")
    return None


def bomb_pixels(error: BaseException) -> int | None:
    """The pixel count PIL's decompression-bomb warning or error names ("Image size (N pixels) ..."), or None."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found[1]) if found else None


def too_many_pixels(error: BaseException) -> str:
    """PIL's decompression-bomb warning (an error here) or error in our words, naming the one limit applied:
    PIL's MAX_IMAGE_PIXELS, past which its warning refuses (its error, past twice that, named the double)."""
    from PIL import Image

    limit, pixels = Image.MAX_IMAGE_PIXELS, bomb_pixels(error)
    if limit is None:  # an application unset it since: nothing to name but PIL's words
        return first_line(error)
    has = f"{pixels} pixels, over" if pixels is not None else "more pixels than"
    return (f"it has {has} the limit of {limit} past which an image is refused as a possible decompression bomb; "
            f"make it smaller")


# the cache's folders of entries (export/cache.py, engine/ort_step.py, engine/trt_step.py), checked before any work
CACHE_EXPORTS, CACHE_ORT_OPTIMISED, CACHE_TENSORRT = "exports", "ort-optimised", "tensorrt"


def cache_root() -> Path:
    """$STYLEENGINE_CACHE_DIR, else the platform's user cache folder (exports, tuning record)."""
    env = os.environ.get("STYLEENGINE_CACHE_DIR")
    if env and not env.strip():  # '  ' made a folder of spaces in the working folder
        raise ConfigError(f"STYLEENGINE_CACHE_DIR={env!r} names no folder; name one, or unset it")
    if env and env != env.strip():  # ' /tmp/c ' made './ /tmp/c /' in the working folder
        raise ConfigError(f"STYLEENGINE_CACHE_DIR={env!r} has spaces at its ends; remove them")
    if env:
        try:
            return expand(env)  # an env file or a systemd unit expands no $VARIABLES
        except ConfigError as e:
            raise ConfigError(f"STYLEENGINE_CACHE_DIR={e}") from None
    import platformdirs

    return Path(platformdirs.user_cache_dir("styleengine"))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (the one file hash: weights, exports, batch inputs)."""
    with os.fdopen(open_regular(path, follow=True), "rb") as f:  # a FIFO blocked here (tune --weights FIFO)
        return stream_sha256(f)


def stream_sha256(f: BinaryIO) -> str:
    """The sha256 of what is left to read in `f`, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder in `parent` named prefix + a random part, made with mkdir's mode (0777 less the
    umask, applied by the kernel), unlike tempfile.mkdtemp's 0700."""
    import secrets

    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no fresh folder name in {parent}")


def styles_and_folders(names: Iterable[str | Path], what: str = "style folder") -> tuple[list[Path], list[Path]]:
    """Style arguments as neural-style takes them: a comma-separated list is several images, a folder its images
    (sorted); a name that is a file is one image, commas and all. Returns the images and the folders named."""
    found: list[Path] = []
    folders: list[Path] = []
    for name in names:
        text = str(name)
        if not text.strip():  # `run photo.jpg "$STYLE"` with STYLE unset: not the working folder's pictures
            raise ConfigError("a style argument is empty; name an image, a comma-separated list or a folder")
        parts = [text] if "," not in text or _is_file(text) else [p.strip() for p in text.split(",")]
        if not all(parts):  # `s.png,$E` with E='' ran with one style; a jobs file's list refused it
            raise ConfigError(f"style argument {text!r} holds an empty name; name an image between every two commas")
        for part in map(Path, parts):  # a name no file system takes (300 bytes, NUL): one line, not an OSError
            check_name(part, "cannot read style image")
            if part.is_dir():
                folders.append(part)
                found.extend(images_in(part, what))
            else:
                found.append(part)
    return found, folders


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long or with a NUL: no file; its parts are checked one by one
        return False


def expand_styles(names: Iterable[str | Path], what: str = "style folder") -> list[Path]:
    """The style images of the command line's style arguments (expand_style_arguments)."""
    return expand_style_arguments(names, what)[0]


def expand_style_arguments(names: Iterable[str | Path], what: str = "style folder") -> tuple[list[Path], list[Path]]:
    """The style images of the command line's style arguments and the folders named (styles_and_folders), `~`
    and $VARIABLES expanded first, as every other path of a command (and a jobs file's styles) is."""
    expanded = []
    for name in names:
        try:
            expanded.append(expand_text(name) if str(name).strip() else str(name))
        except ConfigError as e:
            raise ConfigError(f"style argument {e}") from None
    return styles_and_folders(expanded, what)


def check_outside_style_folders(outputs: Iterable[tuple[Path | None, str]], folders: Iterable[Path]) -> None:
    """ConfigError for an image written straight into a style folder named (by identity): the next run would read
    it as a style image, and refuse it as an input it writes (batch's rule, for run, texture and video)."""
    folders = list(folders)
    for path, what in outputs:
        if path is None or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # images_in takes neither: the folder's styles stay as they are
        folder = next((f for f in folders if inside(path, f, directly=True)), None)
        if folder is not None:
            raise ConfigError(f"{what} {path} is in the style folder {folder}, whose images are styles: the next run "
                              f"would read it as one; write it elsewhere")


def images_in(folder: Path, what: str) -> list[Path]:
    """The images of `folder` (by IMAGE_SUFFIXES, hidden files left out), sorted; ConfigError for none."""
    if not folder.is_dir():
        raise ConfigError(f"{what} {folder} is not a folder")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not found:
        raise ConfigError(f"{what} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found
