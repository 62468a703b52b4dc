"""`styleengine video IN STYLE... -o OUT`: temporally consistent stylisation of a video (engine/video.py).

Order, as `run`: settings, the files to write, the video's headers, the styles, the plan and the weights are
checked before any frame is stylised. Each frame is written as it finishes, whole (a PNG in OUT.frames/,
beside the output, with video.json holding the settings hash); a rerun with the same hash skips the frames
there and continues. The video is encoded from that folder at the end, or, after Ctrl-C or SIGTERM, from
the frames finished so far: a playable partial video, with the sound of its span. With --ray, overlapping
chunks of the frames run on Ray actors (engine/video_ray.py) and are written into the same folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import stat
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from styleengine import paths
from styleengine.cli_run import Styles, Trace
from styleengine.cli_settings import settings_from, with_settings
from styleengine.engine.manifest import LOCK_SIZE, lock_says
from styleengine.engine.settings import VIDEO, Settings, flag_of
from styleengine.engine.video_ray import DEFAULT_OVERLAP
from styleengine.errors import ConfigError, ImageError, UserError, first_line, printable

MAX_FPS = 1000  # past this a --fps is a typo

VideoOutput = Annotated[Path, typer.Option("--output", "-o", help="Output video (.mp4, .mov, .mkv, .webm, .avi, "
                                                                  ".gif); its folder must exist.", show_default=False,
                                                        parser=paths.named_file("--output"))]


class FrameStore:
    """OUT.frames/: video.json (what decides the frames: the settings hash) and frame_NNNNNN.png per finished
    frame, each written atomically."""

    RECORD = "video.json"
    MARK = "styleengine-video"  # a frame's PNG text: the settings hash it was made under and its own name
    LOCK = ".lock"  # held (flock) while a run writes here: one video per folder, and its temp files are stale
    FRAMES = r"frame_\d{6,}\.png|seam_\d{6,}_(earlier|later)\.png"  # the names path() and seam() give
    # what an atomic write (paths.temp_beside) killed mid-way leaves: ".NAME.XXXXXXXX.tmp"
    STALE = re.compile(rf"\.({FRAMES}|video\.json)\.[0-9a-f]{{8}}\.tmp")

    def __init__(self, output: Path, digest: str = "", about: dict[str, Any] | None = None,
                 shape: tuple[int, int] | None = None):
        self.output = output
        self.folder = output.with_name(output.name + ".frames")
        self.digest, self.about = digest, about or {}
        self._alike: Callable[[str], bool] | None = None
        self._made_with: Callable[[str], str | None] | None = None
        self._from_first: Callable[[int], set[str]] | None = None
        self.shape = tuple(shape) if shape is not None else None  # (height, width) every frame has
        self.made: tuple[bool, bool] = (False, False)  # (the folder, its record) made by this run
        self.saved: set[int] = set()  # frames this run wrote: one missing at the encode was removed meanwhile
        self._identity: tuple[int, int] | None = None  # the folder taken: one put in its place is another's
        self._lock: Any = None

    @classmethod
    def held_as(cls, folder: Path) -> str | None:
        """What keeps other commands' files out of `folder`: "video" (a video's record there), "lock" (its `.lock`
        empty and held: a video setting up, or another tool; a lock of other data, or one no process holds, is
        not), or None."""
        if os.path.lexists(folder / cls.RECORD):
            return "video"
        try:
            if not stat.S_ISREG(os.lstat(folder / cls.LOCK).st_mode):  # a FIFO's open would wait for a writer
                return None
            with open(folder / cls.LOCK, "rb") as f:
                held = lock_says(f.read(LOCK_SIZE + 1)) == "" and not paths.try_lock(f, blocking=False)
        except OSError:
            return None
        return "lock" if held else None

    @classmethod
    def refuse_inside(cls, folder: Path, what: str, why: str, advice: str) -> None:
        """ConfigError where `folder` is held (held_as): `what` ("--out D is") then what it is, `why` (a video's
        folder: what becomes of the files put there) and `advice`; a locked folder's holder is not said to be a
        video (another tool's flock is one too). A folder below a video's frames folder is refused as well."""
        held = cls.held_as(folder)
        if held == "video":
            raise ConfigError(f"{what} a video's frames folder: {why}; {advice}")
        if held == "lock":
            raise ConfigError(f"{what} a folder locked by another process (it holds {folder / cls.LOCK}); wait for "
                              f"it to finish or {advice}")
        for above in Path(os.path.realpath(folder)).parents:  # a folder made inside one goes with it too
            # named as FrameStore names them: a video.json of a user's own up the tree is no frames folder
            if above.name.endswith(".frames") and os.path.lexists(above / cls.RECORD):
                raise ConfigError(f"{folder} is inside {above}, a video's frames folder: what is written there "
                                  f"would go with its frames when they are moved away or removed; {advice}")

    def take(self) -> None:
        """Make the folder if needed and take its lock (ConfigError if another run holds it), before the run's
        heavy set-up; what a killed run's atomic writes left (here and beside the output) is removed."""
        if self.folder.is_symlink():  # its frames would be written wherever it leads (batch and serve refuse too)
            raise ConfigError(f"cannot keep the frames in {self.folder}: it is a symbolic link; remove it or choose "
                              f"another output")
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"cannot keep the frames in {self.folder}: it {paths.not_a_folder(self.folder)}")
        made = not self.folder.exists()
        from styleengine.engine.manifest import LOCK_FILE, MANIFEST

        taken = next((name for name in (LOCK_FILE, MANIFEST) if os.path.lexists(self.folder / name)), None)
        if taken is not None:  # a batch's --out: its pictures would be moved aside as not this video's frames
            raise ConfigError(f"cannot keep the frames in {self.folder}: it is a batch's --out (it holds {taken}); "
                              f"choose another output")
        try:
            self.folder.mkdir(exist_ok=True)
            self.made = (made, False)
            self._identity = paths.identity(self.folder)
            self._take_lock()
            self._sweep()
        except OSError as e:  # a full disk, a read-only folder
            self.give_up()
            raise ConfigError(f"cannot keep the frames in {self.folder}: {e.strerror or e}") from None
        except BaseException:
            self.give_up()
            raise

    def open(self, digest: str, about: dict[str, Any], shape: tuple[int, int] | None = None,
             alike: Callable[[str], bool] | None = None,
             from_first: Callable[[int], set[str]] | None = None,
             made_with: Callable[[str], str | None] | None = None) -> None:
        """Check that the folder (taken) holds frames of these settings, or record them there (ConfigError if it
        holds others': nothing there is overwritten). alike: whether a recorded hash is these settings' made
        another way alike (Settings.ways_alike; a video recorded before the hash held `auto` as asked among them:
        its frames carry it, continued under it). from_first: these settings' hashes from another first frame
        (what tells a range that starts elsewhere). made_with: the flag a recorded hash's frames were made with
        where that alone differs (a way of running given then), or None."""
        self.digest, self.about, self._alike, self._from_first = digest, about, alike, from_first
        self._made_with = made_with
        self.shape = tuple(shape) if shape is not None else None
        try:
            self._check_or_record(self.made[0])
        except BaseException:
            self.give_up()
            raise

    def give_up(self) -> None:
        """Refused at the start: the lock let go, and a folder this run made and recorded nothing in removed."""
        taken = self._taken()  # told by the lock while it is held
        self.close()
        if self.made[0] and not self.made[1] and taken:  # nothing left behind (an empty OUT.frames)
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def _take_lock(self) -> None:
        lock = self.folder / self.LOCK
        try:
            self._lock = paths.open_lock(lock)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # the folder's: its frames are the user's work
                raise ConfigError(f"cannot keep the frames in {self.folder}: {e.strerror or e}; make it writable "
                                  f"or choose another output") from None
            if e.errno == errno.ELOOP:  # O_NOFOLLOW's word for a link, said as batch's and serve's say it
                raise ConfigError(f"cannot lock {self.folder}: {lock} is a symbolic link; remove it") from None
            # a FIFO, a folder by that name
            raise ConfigError(f"cannot lock {self.folder} ({lock}: {e.strerror or e}); remove {lock}") from None
        if self._lock is None:  # its record says whose: an empty lock alone may be another tool's flock
            who = (f"another video is writing {self.folder}" if os.path.lexists(self.folder / self.RECORD) else
                   f"{self.folder} is locked by another process")
            raise ConfigError(f"{who} (it holds {lock}); wait for it to finish or choose another output")
        # a video's lock is empty (or a newline an editor added: one rule with batch's and serve's locks); more is
        # another's file, kept as it is
        if lock_says(os.pread(self._lock.fileno(), LOCK_SIZE + 1, 0)) != "":
            held, self._lock = self._lock, None
            paths.close_lock(held)
            raise ConfigError(f"cannot lock {self.folder}: {lock} is a file of other data, not a lock; move it away")

    def _sweep(self) -> None:
        """Remove the temp files of a run killed mid-write (SIGKILL, a power cut): only a run holding this lock
        writes them, and this one has written none yet."""
        beside = re.compile(re.escape(f".{self.output.name}.") + r"[0-9a-f]{8}\.tmp")
        for folder, pattern in ((self.folder, self.STALE), (self.output.parent, beside)):
            with os.scandir(folder) as entries:
                stale = [e.path for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _check_or_record(self, made: bool) -> None:
        record = self.folder / self.RECORD
        if record.is_file():
            try:
                kept = json.loads(record.read_text(encoding="utf-8"))
                held = kept.get("settings_hash")
            except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):  # nested too deep
                raise ConfigError(f"{self.folder}: its {self.RECORD} is damaged, so the settings of its frames are "
                                  f"unknown; move it away or choose another output") from None
            if held == self.digest:
                return
            if isinstance(held, str) and self._alike is not None and self._alike(held):
                self.digest = held
                return
            others = sorted(p.name for p in self.folder.iterdir() if p.name not in (self.RECORD, self.LOCK))
            if others:  # a user's frame_notes.txt is no frame: the names this store gives are
                more = f" and {len(others) - 3} more" if len(others) > 3 else ""
                what = ("frames" if any(re.fullmatch(self.FRAMES, name) for name in others) else
                        f"files ({', '.join(others[:3])}{more}) beside a record")
                first = kept.get("first")
                if (what == "frames" and isinstance(first, int) and first != self.about.get("first")
                        and self._from_first is not None and held in self._from_first(first)):
                    # each frame follows from the one before, back to the first: another first, other frames
                    raise ConfigError(f"{self.folder} holds frames that follow from frame {first}, and this run's "
                                      f"start at frame {self.about.get('first')}; give --frames from {first} to "
                                      f"continue them, or choose another output")
                flag = self._made_with(held) if what == "frames" and self._made_with and isinstance(held, str) \
                    else None
                if flag is not None:  # a way of running apart: moving the frames away threw the work out
                    raise ConfigError(f"{self.folder} holds frames made with {flag}; give {flag} to continue them, "
                                      f"or choose another output")
                ways = ("; if they differ only in ways of running (--backend, --device, --provider, --precision, "
                        "--conv), give the flags they were made with, else move it away or choose another output"
                        if what == "frames" else "; move it away or choose another output")
                raise ConfigError(f"{self.folder} holds {what} of other settings or another video (settings hash "
                                  f"{held} here, {self.digest} now){ways}")
            # a record and no frame (killed before its first): nothing to keep, recorded anew
        elif any(re.fullmatch(self.FRAMES, p.name) for p in self.folder.iterdir()):  # the record comes first
            raise ConfigError(f"{self.folder} holds frames but no {self.RECORD}, so their settings are unknown; move "
                              f"it away or choose another output")
        try:
            paths.atomic_write(record, (json.dumps({"settings_hash": self.digest, **self.about}, indent=1)
                                        + "\n").encode())
        except OSError as e:
            raise ConfigError(f"cannot keep the frames in {self.folder}: {e.strerror or e}") from None
        self.made = (made, True)

    def close(self) -> None:
        """Let go of the folder's lock (its file removed): another run may write here now."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            paths.release_lock(lock, self.folder / self.LOCK)

    def discard(self) -> None:
        """No frame finished: take back what open() made, so that "nothing written" is so (a folder or record
        that was there before stays)."""
        folder, record = self.made
        try:
            others = any(p.name not in (self.RECORD, self.LOCK) for p in self.folder.iterdir())
        except OSError:  # removed or moved away during the run (the user's): nothing here to take back
            self.close()
            return
        if not record or others or not self._taken():  # a folder put in its place is the user's
            return
        try:
            (self.folder / self.RECORD).unlink(missing_ok=True)
            self.close()
            if folder:
                self.folder.rmdir()
        except OSError as e:  # a tidy-up: what stays is a record of these settings, taken again by a rerun
            logging.getLogger(__name__).warning("could not remove %s: %s", self.folder, e.strerror or e)

    def path(self, index: int) -> Path:
        return self.folder / f"frame_{index:06d}.png"

    def load(self, index: int, then: str = "that frame runs again") -> Any:
        """The finished frame `index` as (H, W, 3) uint8, or None if it is not there (`then`: what a warning that it
        was moved aside says follows)."""
        return self._load(self.path(index), then)

    def save(self, index: int, image: Any) -> None:
        self._save(image, self.path(index))
        self.saved.add(index)

    def _load(self, path: Path, then: str = "that frame runs again") -> Any:
        import numpy as np

        from styleengine.engine import images

        self._check_taken()  # the user's pictures in a folder put in its place are neither encoded nor moved
        if not path.is_file():
            return None
        # left where it is until the frame is made again (_save keeps it aside then): a run stopped before that
        # finds it again, not a gap that would run the finished frames after it again
        if self._ours(path) is False:  # a picture of this shape that another command put here
            logging.getLogger(__name__).warning("%s is not a frame this video wrote: %s", path, then)
            return None
        try:
            frame = np.round(images.load_image(path) * 255.0).astype(np.uint8)
            if self.shape is not None and frame.shape[:2] != self.shape:  # another picture, put there by hand
                raise ImageError(f"it is {frame.shape[1]}x{frame.shape[0]} px, this video's frames "
                                 f"{self.shape[1]}x{self.shape[0]}")
            return frame
        except ImageError as e:  # written atomically, so damaged from outside: the frame runs again
            logging.getLogger(__name__).warning("%s is damaged (%s): %s", path, first_line(e), then)
            return None

    def _ours(self, path: Path) -> bool | None:
        """Whether the file at `path` carries this video's mark; None where it cannot be read far enough to tell
        (damaged: its decode says how)."""
        from PIL import Image

        try:
            with Image.open(path) as opened:  # a text chunk before the pixels: in `info`, nothing decoded
                return bool(opened.info.get(self.MARK, "") == self._mark(path))
        except (OSError, ValueError, SyntaxError):
            return None

    def _aside(self, path: Path, kind: str) -> Path:
        """Move `path` to a name of its own beside it (PATH.KIND, else PATH.KIND.2, ...): an earlier one is a
        picture kept aside too. UserError where the folder takes no rename."""
        for n in range(1, 10_000):
            aside = path.with_name(f"{path.name}.{kind}" + (f".{n}" if n > 1 else ""))
            if not os.path.lexists(aside):
                break
        else:  # renaming onto the last would replace it
            raise UserError(f"{path} is not a frame this video can use, and {path.name}.{kind} to .{n} are all "
                            f"taken; move them away and run again")
        try:
            path.rename(aside)
        except OSError as e:
            raise UserError(f"{path} is not a frame this video can use and cannot be moved aside ({e.strerror or e}); "
                            f"move it away and run again") from None
        return aside

    def _taken(self) -> bool:
        """Whether the folder at OUT.frames is still the one this run took (not moved away, another made there):
        told by the lock file it holds, as batch's and serve's are (a new folder may reuse the old one's inode
        number: `rm -r OUT.frames; mkdir OUT.frames`), by the folder's identity before the lock is taken."""
        if self._lock is not None:
            return paths.holds(self._lock, self.folder / self.LOCK)
        return self._identity is not None and paths.identity(self.folder) == self._identity

    def taken_error(self) -> UserError | None:
        """Why nothing at OUT.frames may be read, written or moved any more: another folder is there (the user's,
        with no record of these settings), or none, or its lock file was removed; None while it is the one this run
        took."""
        if self._taken():
            return None
        if self.lock_removed():
            return UserError(f"{self.folder / self.LOCK} was removed while the video ran, so another video could "
                             f"write there at once; rerun to continue")
        return UserError(f"{self.folder} was moved or replaced while the video ran; move the frames back or rerun "
                         f"to make them again")

    def lock_removed(self) -> bool:
        """Whether the folder is the one taken but its lock file was removed (by hand): its frames are all there."""
        return self._lock is not None and not self._taken() and paths.made_in(self._lock, self.folder)

    def _check_taken(self) -> None:
        error = self.taken_error()
        if error is not None:
            raise error

    def _save(self, image: Any, path: Path) -> None:
        from styleengine.engine import images

        self._check_taken()  # its frames would go into a folder the user made, with no record of their settings
        kind = None  # where a frame not finished yet goes: another command's picture, an unreadable file
        if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):  # a link, a folder: the user's
            kind = "foreign"
        elif path.is_file():
            ours = self._ours(path)
            kind = None if ours else "foreign" if ours is False else "damaged"
        if kind is not None:
            aside = self._aside(path, kind)
            logging.getLogger(__name__).warning("%s is not a frame this video wrote: moved to %s", path, aside.name)
        # at the locked folder: one put at its name since the check takes nothing
        folder = paths.lock_folder(self._lock)
        images.save_image(image.astype("float32") / 255.0, path, text={self.MARK: self._mark(path)},
                          within=self.folder if folder is not None else None, within_fd=folder)

    def _mark(self, path: Path) -> str:
        """What a frame this video wrote at `path` carries: a copy of another frame over it is not this one."""
        return f"{self.digest} {path.name}"

    def seam(self, index: int, side: str) -> Path:
        """One chunk's own frame `index` over a seam (--ray), kept until the other side's comes: "earlier" or
        "later"."""
        return self.folder / f"seam_{index:06d}_{side}.png"

    def load_seam(self, index: int, side: str) -> Any:
        return self._load(self.seam(index, side))

    def save_seam(self, index: int, side: str, image: Any) -> None:
        self._save(image, self.seam(index, side))

    def finished(self, index: int) -> bool:
        """Frame `index` is there, and is not another command's (read to its mark, not decoded)."""
        path = self.path(index)
        return path.is_file() and self._ours(path) is not False

    def recorded(self, index: int, side: str | None) -> bool:
        """Frame `index` is finished, or (side given) that side of its seam is kept."""
        return self.finished(index) or (side is not None and self.seam(index, side).is_file()
                                        and self._ours(self.seam(index, side)) is not False)

    def not_ours(self, start: int, stop: int) -> list[int]:
        """The frames of start..stop-1 whose file does not carry this video's mark (another command's picture, or
        one too damaged to tell), read to the mark only."""
        return [i for i in range(start, stop) if self._ours(self.path(i)) is not True]

    def finished_from(self, start: int, stop: int) -> int:
        """The first frame of start..stop-1 not there (stop: all are); one there is checked as it is read (load):
        another command's then runs again, and the frames after it stay."""
        index = start
        # a folder or a link of another's at a frame's name is that frame to make, as another's picture is (a gap
        # there made the finished frames after it again)
        while index < stop and os.path.lexists(self.path(index)):
            index += 1
        return index


def _check_installed() -> None:
    """UnavailableError, one line, where the `video` extra is not installed."""
    import importlib.util

    from styleengine.errors import UnavailableError

    missing = [name for module, name in (("av", "PyAV"), ("cv2", "OpenCV")) if importlib.util.find_spec(module) is None]
    if missing:
        raise UnavailableError(f"styleengine video needs {' and '.join(missing)}: pip install 'styleengine[video]'")


def _rate(fps: float | None, source: Fraction) -> Fraction:
    if fps is None:
        return source
    if not 0 < fps <= MAX_FPS:
        raise ConfigError(f"--fps must be a number of frames per second between 0 and {MAX_FPS}, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    if rate == 0:  # below 1/1001 the fraction rounds to 0, and frame times divide by it
        raise ConfigError(f"--fps {fps:g} is below the lowest rate taken, 1/1001 frames per second")
    return rate


def _video(video: Annotated[Path, typer.Argument(help="Input video.", show_default=False,
                                                 parser=paths.named_file("the input video path"))], styles: Styles,
           output: VideoOutput, trace: Trace = None,
           frames: Annotated[Optional[str], typer.Option(
               "--frames", help="Frames A:B of the video (at --fps; B excluded, either side may be left out); "
                                "decoding starts at A.")] = None,
           fps: Annotated[Optional[float], typer.Option(
               "--fps", help="Output frame rate (default: the input's); frames are picked, not blended (above "
                             "the input's, repeated, and each repeat stylised again).")] = None,
           ray: Annotated[Optional[str], typer.Option(
               "--ray", help="Stylise overlapping chunks of the frames on a Ray cluster: auto (the one this "
                             "machine belongs to, else a local one) or its address. Needs styleengine[ray].")] = None,
           chunk_frames: Annotated[Optional[int], typer.Option(
               "--chunk-frames", help="With --ray: frames a chunk owns (default: the frames over the actors, "
                                      "one chunk each).", show_default=False)] = None,
           overlap: Annotated[Optional[int], typer.Option(
               "--overlap", help="With --ray: frames a chunk stylises before its own, cross-faded with the "
                                 f"previous chunk's (default: {DEFAULT_OVERLAP}, less than --chunk-frames).",
               show_default=False)] = None,
           **flags: Any) -> None:
    """Stylise VIDEO with STYLE... frame by frame, each frame from the previous result warped by the optical
    flow, with Ruder et al.'s temporal loss (2016), and write OUT; resumable (OUT.frames/)."""
    from styleengine.console import warnings_on
    from styleengine.console import Console

    console = Console(stderr=True, markup=False)
    with warnings_on(console):  # the engine's warnings as "warning:" lines, escaped
        settings = settings_from(flags, VIDEO)
        style_paths, folders = paths.expand_style_arguments(styles)  # a folder or a comma list, as run's
        paths.check_outside_style_folders([(trace, "trace")], folders)
        _check_installed()
        chunked = _Chunked(ray, chunk_frames, overlap) if ray is not None or chunk_frames is not None \
            or overlap is not None else None
        try:
            prepared = _prepare(video, style_paths, output, trace, frames, fps, settings, console, chunked)
        except KeyboardInterrupt:
            from styleengine.cli import signals

            _interrupted_before_frames()
            if chunked is not None:
                chunked.close()
            raise typer.Exit(signals.exit_code) from None
        except BaseException:
            if chunked is not None:
                chunked.close()
            raise
        try:
            _execute(*prepared, output=output, trace=trace, console=console, chunked=chunked)
        finally:
            prepared[9].close()  # the frames folder's lock
            if chunked is not None:
                chunked.close()


def _interrupted_before_frames(signum: int | None = None) -> None:
    """The line of a signal before the first frame, said once: as it comes while ray.init holds it (`signum`),
    not after Ray's start and shutdown (seconds)."""
    from styleengine.cli import signals

    if signals.reported:
        return
    if signum is not None:
        signals.early(signum)
    print(f"error: interrupted ({signals.name}) before the first frame; nothing written", file=sys.stderr)
    signals.reported = True


class _Chunked:
    """--ray's state: the flags, then the runner (started in _prepare, after the cheap checks) and the chunks."""

    def __init__(self, address: str | None, length: int | None, overlap: int | None):
        from styleengine.engine.video_ray import check_chunking

        if address is None:
            raise ConfigError("--chunk-frames and --overlap need --ray (without it the frames run in one chain)")
        from styleengine.engine.batch_ray import check_address, import_ray

        check_chunking(length, overlap)
        check_address(address, connect=False)
        import_ray()  # a clear error now if Ray is not installed
        self.address, self.length, self.overlap = address, length, overlap
        self.runner: Any = None
        self.chunks: list = []
        self.weights_sha256: str | None = None  # the weights file's bytes as the video's hash holds them

    def start(self, start: int, stop: int) -> dict[str, int]:
        """Start the runner and cut start..stop-1 into chunks; what the settings hash records of them."""
        from styleengine.engine.video_ray import VideoRayRunner, chunking, plan_chunks

        self.runner = VideoRayRunner(self.address, on_interrupt=_interrupted_before_frames)
        self.length, self.overlap = chunking(stop - start, self.runner.workers, self.length, self.overlap)
        self.chunks = plan_chunks(start, stop, self.length, self.overlap)
        return {"chunk_frames": self.length, "overlap": self.overlap}

    def side(self, chunk: Any, index: int) -> str | None:
        """Which side of a seam the chunk's frame `index` is (None: the frame is the chunk's alone)."""
        if index < chunk.start:
            return "later"
        after = chunk.index + 1
        if after < len(self.chunks) and index >= self.chunks[after].first:
            return "earlier"
        return None

    def stop(self) -> None:
        """The actors ended (at once); Ray itself is shut down by close(), after the run's last line."""
        if self.runner is not None:
            self.runner.stop()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def _prepare(video: Path, styles: list[Path], output: Path, trace: Path | None, frames: str | None,
             fps: float | None, settings: Settings, console: Any, chunked: _Chunked | None) -> tuple:
    from styleengine.cli_job import announce
    from styleengine.cli_plan import check_own_files
    from styleengine.engine import images, video_io
    from styleengine.engine.manifest import file_digests, read_as_hashed
    from styleengine.engine.settings import run_inputs, settings_inputs, style_roles
    from styleengine.engine.plan import check_sides
    from styleengine.engine.stylise import check_run, load_init
    from styleengine.engine.video import check_weights_unchanged, video_hash, video_hashes

    settings.validate()
    video_io.check_video_output(output)
    inputs = {"video": video, **run_inputs(None, styles, settings.init, settings.weights)}
    paths.check_not_an_input(output, "output", inputs)
    kept = output.with_name(output.name + ".frames")
    read = {**inputs, **settings_inputs(settings.init, settings.weights, content_masks=settings.content_masks,
                                        style_masks=settings.style_masks)}
    for role, path in read.items():  # its frames would be written among them (a style folder's: read as styles)
        if paths.inside(path, kept):  # by identity: a bind mount of a style folder as the frames' folder is it
            raise ConfigError(f"{role} {path} is inside {output.name}.frames/, where the finished frames are kept; "
                              f"choose another output")
    if trace is not None:
        # over a kept frame or video.json: inside the folder, or another name (a hard link) of a file in it; said
        # first (inside a frames folder not made yet, "folder OUT.frames does not exist" led only to this)
        if paths.inside(trace, kept) or paths.links_into(trace, kept):
            raise ConfigError(f"trace {trace} is inside {output.name}.frames/, where the finished frames are kept "
                              f"(or is another name of a file there); choose a file outside it")
        paths.check_writable(trace, "trace")
        paths.check_not_an_input(trace, "trace", {**inputs, "output": output})
        paths.check_own(trace, "trace", paths.own_trace)
    check_own_files(settings, decode=True)  # the --init read whole, before the weights (said after them)
    info = video_io.probe(video)
    rate = _rate(fps, info.fps)
    count = int(info.frames * rate / info.fps)
    if count == 0:  # the progress said 0/0 and 'wrote' a video it never wrote
        raise ConfigError(f"--fps {float(rate):g} picks no frame of {video} ({info.frames} frames at "
                          f"{float(info.fps):g} fps); a rate of at least {float(info.fps) / info.frames:g} picks one")
    start, stop = video_io.frame_range(frames, count, video)
    shown = video_io.source_frames(info, start, stop, rate)  # a rate just above the clip's (30 of 29.97) repeats none
    if shown < stop - start:  # each repeat is warped from the one before and optimised again: a frame's full work
        logging.getLogger(__name__).warning(
            "--fps %g is above the clip's own rate (%g fps): source frames are repeated, and each repeat is "
            "stylised as a frame of its own (%d frames for its %d)", float(rate), float(info.fps), stop - start, shown)
    else:  # a variable-rate clip's gaps (a phone's, in low light) repeat frames at its average rate too
        made, shown = video_io.repeats(info, start, stop, rate)
        if shown < made:
            logging.getLogger(__name__).warning(
                "%s has a variable frame rate (its frames' times are uneven), or frames lost to a cut: at %g fps "
                "source frames are repeated, "
                "and each repeat is stylised as a frame of its own (%d frames for its %d)", video, float(rate), made,
                shown)
    # before output_shape lifts a short side to the minimum (a 400x40 video at 64 px was written 64x32, squashed)
    check_sides(f"video {video}", (info.height, info.width), settings.size, f"{settings.size} px", "--size")
    # the sound's encoder refusing its rate was a traceback at the end, every frame made
    video_io.check_sound(info, output, (info.start + start / float(rate), info.start + stop / float(rate)))
    # the other video's clean-up (its frames folder moved away or removed) would take this one with it
    FrameStore.refuse_inside(output.parent, f"output {output} is inside {output.parent},",
                             "this video would go with its frames when they are moved away", "choose another output")
    store = FrameStore(output)
    store.take()  # another run on this output is refused before the styles and the weights are read
    try:
        shape = video_io.output_shape(info.height, info.width, settings.size)
        settings = dataclasses.replace(settings, size=max(shape))  # sides even for 4:2:0: the long side may lose 1 px
        hashed_inputs = run_inputs(None, styles, settings.init, settings.weights)
        hashed_files = file_digests(hashed_inputs)  # by role
        with images.reading(read_as_hashed([(role, p, hashed_files[role]) for role, p in hashed_inputs.items()
                                            if role != "weights file"], "after the video started", "run it again")):
            style_arrays = [images.load_image(p, role) for p, role in zip(styles, style_roles(styles))]
            init_image = load_init(settings)  # once: a chain's start (each chunk's) took the file as it was then
        plan = check_run(settings, shape, [s.shape[:2] for s in style_arrays], content_label=f"video {video}",
                         style_labels=[f"style image {p}" for p in styles])
        asked = settings
        settings, plan = announce(settings, plan, console)
        files = [video_io.identity(info), *hashed_files.values()]
        selection = {"first": start, "fps": str(rate), "shape": list(shape)}
        if chunked is not None:  # a chunk's chain starts at its own first frame: other chunks, other frames
            selection.update(chunked.start(start, stop))
        about = {"video": str(video), "fps": str(rate), "first": start}
        weights = None
        hashed = hashed_files.get("weights file")
        if chunked is not None:  # each worker loads them and checks them against this
            chunked.weights_sha256 = hashed
        else:  # loaded once, here: the bytes its hash holds (a file replaced since is said)
            from styleengine.engine.stylise import load_run_weights

            weights = load_run_weights(settings)
            check_weights_unchanged(weights, hashed, settings.weights)
        # auto's pick is how fast, not what: measured again and picking another way, a resume was refused
        hashed_settings = settings.as_asked(asked)
        digest = video_hash(hashed_settings, dataclasses.replace(plan, settings=hashed_settings), files, selection)
        ways = list(settings.ways_alike(asked))

        def alike(held: str) -> bool:  # frames of another way alike (Settings.ways_alike)
            return held in video_hashes(settings, plan, files, selection, ways)

        def from_first(first: int) -> set[str]:  # a chunk's selection holds its starts: told only unchunked
            return set(video_hashes(settings, plan, files, {**selection, "first": first}, ways))

        def made_with(held: str) -> str | None:  # frames of these settings a way given then, not now: its flag
            apart = list(settings.ways_one_apart(asked))
            found = zip(apart, video_hashes(settings, plan, files, selection, [way for *_, way in apart]))
            return next((f"{flag_of(name)} {value}" for (name, value, _), d in found if d == held), None)

        store.open(digest, about, shape, alike, from_first if chunked is None else None, made_with)
    except BaseException:
        store.give_up()
        raise
    return info, rate, start, stop, shape, settings, plan, style_arrays, init_image, store, weights


def _execute(info: Any, rate: Fraction, start: int, stop: int, shape: tuple[int, int], settings: Settings, plan: Any,
             style_arrays: list, init_image: Any, store: FrameStore, weights: Any, *, output: Path,
             trace: Path | None, console: Any,
             chunked: _Chunked | None = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from styleengine.cli import signals
    from styleengine.cli_job import TraceWriter
    from styleengine.engine import video_io
    from styleengine.engine.video import Frame, stylise_frames

    resumed = store.finished_from(start, stop)
    redo = store.not_ours(start, resumed)  # moved aside as each is reached: said here, not as "resuming" them
    if resumed > start:
        one = len(redo) == 1
        but = (f" ({'frame' if one else 'frames'} {', '.join(map(str, redo))} {'is' if one else 'are'} not this "
               f"video's to use and {'runs' if one else 'run'} again)") if redo else ""
        console.print(f"resuming: frames {start}-{resumed - 1} are in {store.folder}{but}", highlight=False,
                      soft_wrap=True)
    progress = Progress(TextColumn("video"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                        TextColumn("{task.fields[rate]:.2f} frames/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console)
    tracer = TraceWriter(trace) if trace is not None else None  # a full disk stops the trace, not the video
    began, made = time.perf_counter(), 0
    stopped: str | None = None
    failure: UserError | None = None
    escaping = False  # a bug or an OSError on its way out: its traceback stands, the encode's fault is a warning
    known = set(range(start, resumed)) - set(redo)  # finished before this run
    try:
        with progress:
            if chunked is not None:  # chunks finish out of order
                known = {i for i in range(start, stop) if store.finished(i)}
            task = progress.add_task("video", total=stop - start, completed=len(known), rate=0.0)

            def on_frame(frame: Frame) -> None:
                nonlocal made
                with signals.shielded():  # a frame is written whole before a signal stops the run
                    store.save(frame.index, frame.image)
                    made += 1  # counted before the shield ends: a signal it held said "after 0 new frames"
                    if tracer is not None:
                        tracer.write_object(frame.to_json(), f"frame {frame.index}")
                # a resumed frame found damaged runs again: it was counted among the finished already
                counted = chunked is None and frame.index in known
                progress.update(task, advance=0 if counted else 1, rate=made / (time.perf_counter() - began))

            if chunked is None:
                frames = video_io.read_frames(info, start, stop, rate, shape)
                stopped = stylise_frames(frames, style_arrays, settings, plan=plan, weights=weights,
                                         finished=lambda i: store.load(i) if i < resumed else None,
                                         on_frame=on_frame, init_image=init_image)
            else:
                def on_written(count: int) -> None:
                    nonlocal made
                    made += count
                    progress.update(task, advance=count, rate=made / (time.perf_counter() - began))

                stopped = _run_chunks(chunked, info, rate, shape, settings, plan, style_arrays, init_image, store,
                                      tracer, on_written)
    except KeyboardInterrupt:
        stopped = "interrupted"
    except UserError as e:  # a frame that cannot be written, a worker's fault: said with what was written
        stopped, failure = None, e
    except BaseException:
        escaping = True
        raise
    finally:
        signals.hold()  # to the command's end: a signal before the `stopped` below is said, none after it
        if chunked is not None:  # Ray's shutdown (seconds) comes after the last line: the caller's close()
            chunked.stop()
        if tracer is not None:
            tracer.close()
            if tracer.failure:
                console.print(f"warning: {tracer.failure}", highlight=False, soft_wrap=True)
        moved = store.taken_error()  # nothing in a folder put in its place is the video's
        if moved is not None and failure is None and not escaping:
            failure = moved
        end = store.finished_from(start, stop) if moved is None else start
        written, lost = 0, None
        try:
            if end > start:
                written, lost = _encode(store, output, info, rate, start, end, signals)
        except UserError as e:  # a full disk at the encode: said with the signal that came first, and its exit
            if escaping:
                console.print(f"warning: {first_line(e)}", highlight=False, soft_wrap=True)
            elif not signals.stopped(stopped):
                if failure is not None:  # the loop's fault came first: both said
                    raise UserError(f"{first_line(failure)}; {first_line(e)}") from None
                raise
            else:
                signals.reported = True
                console.print(f"interrupted ({signals.name}) after {made} new frames; {first_line(e)}",
                              highlight=False, soft_wrap=True)
                raise typer.Exit(signals.exit_code) from None
        if lost is None and end < stop and end in known | store.saved:  # there once: removed since
            lost = end
        if lost is not None and failure is None and not signals.stopped(stopped) and not escaping:
            failure = UserError(f"frame {lost} in {store.folder} was removed or changed after it was written, so "
                                f"the video ends before it")
        if not written:  # what open() made, where nothing else is there (a chunk's frames or seams stay)
            store.discard()
    seconds = time.perf_counter() - began
    if signals.stopped(stopped):  # a signal held through the encode is said too
        signals.reported = True
        unlocked = moved is not None and store.lock_removed()  # the frames are there: the rerun resumes them
        gone = (f"{store.folder / store.LOCK} was removed while the video ran" if unlocked else
                f"the frames are not in {store.folder} any more" if moved is not None or any(
            not store.path(i).is_file() for i in known | store.saved) else  # chunks finish out of order
                f"frame {end if lost is None else lost} is not finished" if known | store.saved else
                "no frame finished")
        where = f"wrote {output} ({written} of {stop - start} frames)" if written else f"{gone}; nothing written"
        left = ("rerun to continue" if unlocked else
                "move the frames back or rerun to make them again" if moved is not None else  # a rerun starts over
                "rerun to continue" if written < stop - start else "every frame is in it")  # nothing to rerun
        console.print(f"interrupted ({signals.name}) after {made} new frames; {where}; {left}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(signals.exit_code)
    if failure is not None:
        where = (f"wrote {output} ({written} of {stop - start} frames); rerun to continue" if written
                 else "nothing written")
        raise UserError(f"{first_line(failure)}; {where}") from None
    if stopped is not None:  # a loss that is not finite, in loop.non_finite's words (a chunk's worker's too)
        where = f"wrote {output} ({written} frames)" if written else "nothing written"  # it said "wrote (0 frames)"
        print(printable(f"error: frame {end}: {stopped}; {where}"), file=sys.stderr)
        raise typer.Exit(1)
    if written < stop - start:
        where = f"wrote {output} ({written} frames)" if written else "nothing written"
        print(printable(f"error: the video ended at frame {end}, before {stop} (cut short, or damaged there: "
                        f"`--frames {start}:{end}` runs what was read, a range after it may read on); {where}"),
              file=sys.stderr)
        raise typer.Exit(1)
    console.print(f"wrote {output} ({written} frames, {made} stylised in {seconds:.1f} s: "
                  f"{made / seconds if seconds > 0 else 0:.2f} frames/s)", highlight=False, soft_wrap=True)


def _run_chunks(chunked: _Chunked, info: Any, rate: Fraction, shape: tuple[int, int], settings: Settings, plan: Any,
                style_arrays: list, init_image: Any, store: FrameStore, tracer: Any, on_written: Any) -> str | None:
    """--ray: the chunks not recorded yet on the actors; each written as it comes back (its own frames, and
    each seam frame once both sides are there, cross-faded). A chunk is recorded whole or not at all (signals
    wait for its writes), so a rerun runs only the chunks that had not come back. Why it stopped, or None."""
    import numpy as np

    from styleengine.cli import signals
    from styleengine.engine import video_io
    from styleengine.engine.video_ray import cross_fade, fade_weight

    chunks = chunked.chunks
    todo = [c for c in chunks if not all(store.recorded(i, chunked.side(c, i)) for i in c.frames())]

    def work():
        for chunk in todo:
            frames = video_io.read_frames(info, chunk.first, chunk.stop, rate, shape)
            yield chunk, [np.round(frame * 255.0).astype(np.uint8) for _, frame in frames]

    for chunk, frames, stopped in chunked.runner.run(work(), style_arrays, settings, plan, store.digest,
                                                     weights_sha256=chunked.weights_sha256, init_image=init_image):
        written = 0
        with signals.shielded():  # a chunk is recorded whole before a signal stops the run
            for frame in frames:
                index, side = frame.index, chunked.side(chunk, frame.index)
                if tracer is not None:
                    tracer.write_object({**frame.trace, "chunk": chunk.index, "seam": side}, f"frame {index}")
                if store.finished(index):
                    continue
                if side is None:
                    store.save(index, frame.image)
                    written += 1
                    continue
                store.save_seam(index, side, frame.image)
                other = store.load_seam(index, "later" if side == "earlier" else "earlier")
                if other is None:
                    continue
                later = chunk if side == "later" else chunks[chunk.index + 1]
                earlier_image, later_image = (other, frame.image) if side == "later" else (frame.image, other)
                store.save(index, cross_fade(earlier_image, later_image, fade_weight(later, index)))
                for kept in ("earlier", "later"):
                    store.seam(index, kept).unlink()
                written += 1
            on_written(written)  # counted before the shield ends: a signal it held said "after 0 new frames"
        if stopped is not None:
            return stopped
    return None


def _encode(store: FrameStore, output: Path, info: Any, rate: Fraction, start: int, end: int,
            signals: Any) -> tuple[int, int | None]:
    """The finished frames start..end-1 as the output video, with the sound of their span; signals wait.
    How many were written, and the first found changed since it was written (moved aside by store.load; the
    video ends before it), or None."""
    import av

    from styleengine.engine import video_io

    lost: list[int] = []

    def frames() -> Any:
        for index in range(start, end):
            frame = store.load(index, then="the video ends before it")  # the run ends: a rerun makes it
            if frame is None:  # another process's picture or a damaged file since: the frames before it
                lost.append(index)
                return
            yield frame

    with signals.shielded(deliver=False):  # the run ends right after, saying what the signal did
        span = (info.start + start / float(rate), info.start + end / float(rate))
        try:
            written = video_io.write_video(output, frames(), rate, audio=info, span=span)
        except OSError as e:  # a full disk: the frames are kept, a rerun with room encodes them
            why = e.strerror or first_line(e)  # not its temp file's name: that is gone
            raise UserError(f"cannot write {output}: {why}; frames {start}-{end - 1} are kept in "
                            f"{store.folder}, rerun to finish") from None
        except av.error.FFmpegError as e:  # an encoder check_sound did not foresee: a line, not a traceback
            raise UserError(f"cannot write {output}: {first_line(e)}; frames {start}-{end - 1} are kept in "
                            f"{store.folder}") from None
        except ValueError:  # the first frame was lost: nothing to encode
            if not lost:
                raise
            written = 0
    return written, lost[0] if lost else None


video = with_settings(_video, VIDEO)
