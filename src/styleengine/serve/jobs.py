"""The server's jobs: what a request asked for, its progress, and the one thread that runs the engine.

A `JobStore` keeps every job by a random id, a bounded queue of those not
run yet, and one worker thread (the engine is not thread-safe) that takes
the oldest queued job, waits up to BATCH_WAIT_S for queued jobs that can
share its batch (equal `batch_key`, one shape at every scale, the torch backend:
`engine.batch.batchable`), and runs them as one
`stylise_batch` on the warm steps of an `engine.batch.Warm`. Finished
jobs are recorded by `engine.batch.record` (the PNG written atomically,
then a manifest line in the format `batch` writes), so a restarted server
serves them again. Request handlers only read a job's fields and set its
`cancelled` flag; the worker stops a batch at its next iteration once
every job in it is cancelled (the others go on).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Callable, Collection

import numpy as np

from styleengine import paths
from styleengine.engine import batch, images
from styleengine.engine.images import rescue, rescued
from styleengine.engine.loop import Record, non_finite
from styleengine.engine.manifest import FolderBusy, take_lock  # noqa: F401  (FolderBusy: ray_app's, from here)
from styleengine.engine.stylise import Picture, Settings, batch_key, stylise_batch
from styleengine.errors import ConfigError, UserError, first_line

log = logging.getLogger(__name__)

BATCH_WAIT_S = 0.005  # how long the first job of a batch waits for others of its shape
KEPT_PREVIEWS = 32  # finished jobs whose last preview (their picture) stays in memory for late event streams
PREVIEW_INTERVAL_S = 0.5  # a preview image at most this often per job (and one at the first iteration)
PROGRESS_INTERVAL_S = 0.1  # progress figures at most this often per job
RESULTS = "results"  # under the server's folder: ID.png and the manifest
JOB_ID = re.compile(r"[0-9a-f]{24}")  # job.new_id's
RESULT_TEMP = re.compile(r"\.[0-9a-f]{24}\.png\.[0-9a-f]{8}\.tmp")  # paths.temp_beside's for a result
UPLOADS = "uploads"  # under the server's folder: a job's images until it has run
UPLOAD_FILE = re.compile(r"content|style[1-9][0-9]*")  # upload_name's: all a job's upload folder holds
LOCK_WATCH_S = 1.0  # how often the server looks for a lock file of its own removed by hand, and takes it again
AGAIN = "submit it again once the server's folder is its own again"  # a job failed while results/ was another's
# one job (its request, progress and result) lives in serve/job.py; its names stay importable from here
from styleengine.serve.job import (STATUSES, Job, QueueFull, _distances, _losses, distance_every,  # noqa: E402,F401
                                   new_id, png_bytes)


def upload_name(index: int) -> str:
    """The name of a request's upload `index` (0: the content, then its styles) in its job's upload folder."""
    return "content" if index == 0 else f"style{index}"


def made_upload_folder(entry: Path) -> bool:
    """Whether `entry` (in uploads/) is a job's upload folder as the server makes it: a job's id holding only its
    upload files (none yet: killed as it began); another command's folder of that name holds something else."""
    if not (JOB_ID.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()):
        return False
    try:
        with os.scandir(entry) as found:
            return all(UPLOAD_FILE.fullmatch(e.name) and e.is_file(follow_symlinks=False) for e in found)
    except OSError:
        return False


class ServerFolderGone(UserError):
    """results/ or uploads/ is not the server's folder any more (removed and not made again, a link in its place)."""


class ResultGone(UserError):
    """A done job's PNG is no longer there as the server wrote it (removed, or something else in its place)."""


SERVER_FOLDER = "the server's folder (--results-dir)"  # in messages: what the user can change
# the server's own lock, in its folder: results/ is locked for batch too, but uploads/ is its sibling, and a second
# server on a results/ made anew (the first's moved away) swept the first one's uploads of running jobs
SERVER_LOCK = ".serve.lock"


class JobStore:
    """Jobs by id, the bounded queue, the worker thread; `root` is the server's folder (results, uploads)."""

    def __init__(self, root: Path, *, max_queue: int = 16,
                 batch_wait_s: float = BATCH_WAIT_S, max_batch: int = batch.MAX_BATCH, warm: batch.Warm | None = None,
                 own: Collection[str] = ()):
        self.root = Path(root)
        self.own = tuple(own)  # the server's own files (--init, masks, weights): said to clients by name only
        # their hashes, kept from request to request while each file is unchanged (a weights file was read whole
        # at every request)
        self._own_digests: batch.Digests = {}
        self._own_keys = {batch.digest_key(path) for path in self.own}
        self.results = self.root / RESULTS
        self.uploads = self.root / UPLOADS
        # where a picture results/ cannot take is saved aside (`rescue` tries the temp folder after it): the log
        # and the manifest say it whole, a client by its name
        self.aside = [self.root.absolute()]
        for folder in (self.results, self.uploads):
            if folder.is_symlink():  # the server removes and replaces what is in them: only its own folders
                raise ConfigError(f"{folder} is a symbolic link; the server keeps its own {folder.name} folder in "
                                  f"{SERVER_FOLDER}: remove the link or use another --results-dir")
        paths.check_cache_dir(self.root, what=SERVER_FOLDER)  # the server's lock's; results/, uploads/ once held
        self.manifest = batch.Manifest(self.results / batch.MANIFEST, remade=True)  # a server goes on
        self.manifest.check_own(SERVER_FOLDER)
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.max_batch = max_batch
        self.jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._previews: deque[Job] = deque()  # finished jobs still holding a preview, oldest first
        self._lock = threading.Condition()
        self._stopping = False
        # set as the server begins to stop (a signal): event streams end, and their going cancels nothing (the
        # jobs they watched are recorded by close as the server stopping, not as cancelled by a client)
        self.draining = False
        self._warm = warm if warm is not None else batch.Warm()  # given: the server's weights, checked at its start
        self._mean_seconds = 1.0  # of a finished job: what Retry-After says
        self.started = 0  # batches run (tests and the health figures)
        self._lock_file: IO[bytes] | None = None
        self._server_lock: IO[bytes] | None = None
        self._relocking = threading.Lock()
        self._recording = threading.RLock()  # one manifest line at a time: the engine's and the lock watch's
        self._unrecorded: list[tuple[Job, batch.JobResult]] = []  # failed while results/ was another's
        self._take_lock()
        try:
            paths.check_cache_dir(self.uploads, what=SERVER_FOLDER)  # a server refused makes nothing there
            self._restore()
            self._thread = threading.Thread(target=self._work, name="styleengine-engine", daemon=True)
            self._thread.start()
            self._closed = threading.Event()
            self._watch = threading.Thread(target=self._watch_locks, name="styleengine-locks", daemon=True)
            self._watch.start()
        except BaseException:  # a signal or an error in the start: the folder keeps no lock file
            self._release_lock()
            raise

    # ------------------------------------------------------------ start and stop

    def _take_lock(self) -> None:
        """One server per folder (its own lock, in the server's folder), and no batch writing in results/ (the
        lock batch takes too): either would append to the same manifest."""
        path = self.root / SERVER_LOCK
        held = take_lock(self.root, "server", "--results-dir", SERVER_LOCK)
        try:
            paths.check_cache_dir(self.results, what=SERVER_FOLDER)  # a server refused made it for the other
            self._lock_file = take_lock(self.results, "server", "--results-dir")
        except BaseException:
            paths.release_lock(held, path)
            raise
        self._server_lock = held
        self.manifest.pin(self._lock_file)  # the folder locked: where its lines go

    def _restore(self) -> None:
        """The jobs a previous server finished: done ones are served again, failed ones say why."""
        torn = self.manifest.repair()  # before this server appends to it (the folder's lock is held)
        entries, problems = self.manifest.read()
        for problem in torn + problems:
            log.warning("%s", problem)
        for entry in entries:
            if entry["status"] == "skipped":  # a batch's rerun over its own folder: the earlier line stands
                continue
            kept = entry["status"] == "failed" and entry.get("last_finite") is True
            gone = not self.result_path(entry["id"]).is_file()
            job = Job(entry["id"], None, status="done" if entry["status"] == "ok" else "failed",
                      reason=self.for_clients(entry.get("reason"), not gone if kept else None), last_finite=kept,
                      iteration=entry.get("iterations") or 0,
                      # its total over its scales (a cancelled job's count run read "37 / 37", the bar full)
                      iterations=entry.get("planned_iterations") or entry.get("iterations") or 0,
                      losses=entry.get("losses"),
                      seconds=entry.get("seconds") or 0.0, loop_seconds=None,  # the manifest keeps no loop time
                      batch=entry.get("batch") or 1, keep=True)
            distances = entry.get("distances")
            if isinstance(distances, dict):
                job.distances = {kind: distances.get(f"{kind}_distance", distances.get(kind))  # a batch's: "style"
                                 for kind in ("style", "content")}
            if entry.get("reason") == "cancelled":
                job.status = "cancelled"
            if job.status == "done" and gone:
                job.status, job.reason = "failed", "the result file is gone"
            elif job.last_finite and gone:
                job.last_finite = False  # its reason says so
            self.jobs[job.id] = job
        self._clear_leftovers(entries)
        log.info("serving %d earlier results from %s", sum(j.status == "done" for j in self.jobs.values()),
                 self.results)

    def drain(self) -> None:
        """The server is stopping: every event stream is woken to end (close() records the jobs)."""
        self.draining = True
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            for wake in list(job.wakers):
                wake()

    def own_folder(self, folder: Path) -> Path:
        """`folder` (results/ or uploads/) as the server's own: made again when it was removed while the server
        ran; ServerFolderGone when something else is there now (a link, a file)."""
        if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
            raise ServerFolderGone(f"{folder} is no longer the server's folder (it {paths.not_a_folder(folder)}); "
                                   f"put it back or restart the server")
        if folder == self.results:
            self._results_again()
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ServerFolderGone(f"cannot make {folder} again: {e.strerror or e}") from None
        return folder

    def _results_again(self) -> None:
        """results/ where its lock is not (moved away or removed while the server ran): made again and locked, or
        nothing is recorded there. A folder found in its place is another's (the user's, a batch's): not taken.
        The lock left in the old folder goes with its file."""
        with self._relocking:  # request threads and the engine's: one makes it, the others find it made
            if self.manifest.at_home():
                return
            if self.manifest.lock_removed():  # its own folder, its lock file removed (by hand): taken again
                self._relock()
                return
            try:
                self.results.mkdir(parents=True)
            except FileExistsError:
                raise ServerFolderGone(f"{self.results} was replaced while the server ran by a folder it did not "
                                       f"make; put its own back or restart the server") from None
            except OSError as e:
                raise ServerFolderGone(f"cannot make {self.results} again: {e.strerror or e}") from None
            self._relock()

    def _watch_locks(self) -> None:
        """A lock file removed by hand (both, and a second server started on the folder: it swept this one's
        uploads of running jobs) is taken again within LOCK_WATCH_S, not at the next job; what it cannot mend is
        logged once, and the next job or request says it."""
        said = None
        while not self._closed.wait(LOCK_WATCH_S):
            try:
                with self._relocking:
                    self._server_lock_again()
                    if self.manifest.lock_removed():
                        self._relock()
                if self._unrecorded and self.manifest.at_home():
                    self._record_unrecorded()
                said = None
            except UserError as e:
                if first_line(e) != said:
                    log.error("%s", first_line(e))
                said = first_line(e)

    def _server_lock_again(self) -> None:
        """.serve.lock removed by hand from the server's folder (hold _relocking): taken again, so a second server
        is refused; ServerFolderGone when another server took it meanwhile."""
        path = self.root / SERVER_LOCK
        held = self._server_lock
        if held is None or paths.holds(held, path) or not paths.made_in(held, self.root):
            return  # held; or the folder moved away with its lock, which goes on guarding it
        try:
            taken = take_lock(self.root, "server", "--results-dir", SERVER_LOCK)
        except FolderBusy as e:
            raise ServerFolderGone(f"{path} was removed while the server ran, and {_holder(e)}; stop one of the two") \
                from None
        except UserError as e:  # a user's file at its name now: left as it is
            raise ServerFolderGone(f"{path} was removed while the server ran, and {first_line(e)}") from None
        self._server_lock = taken
        paths.release_lock(held, path)  # its file is gone: only let go

    def _relock(self) -> None:
        """results/'s lock taken again (hold _relocking); the old one let go where its folder is now."""
        try:
            taken = take_lock(self.results, "server", "--results-dir")
        except FolderBusy as e:  # its lock file removed by hand, and a batch took the folder meanwhile
            raise ServerFolderGone(f"{self.results} lost its lock while the server ran, and {_holder(e)}; the server "
                                   f"records no job there until that one ends") from None
        except UserError as e:
            raise ServerFolderGone(f"{self.results} was moved, removed or lost its lock while the server ran, and "
                                   f"{e}") from None
        old, self._lock_file = self._lock_file, taken
        self.manifest.pin(taken)
        if old is not None:
            paths.release_lock(old, self.results / batch.LOCK_FILE)  # found in the folder it went with

    def _clear_leftovers(self, entries: list[dict[str, Any]]) -> None:
        """What a crash left (the folder's lock is held): the uploads of jobs that never ran, which nothing will
        run, their results written with no manifest line, and half-written results. Only what the server makes
        (a job's upload folder, the picture of such a job, its temp files); anything else is another command's
        and stays, and so does every picture a line of the manifest (`entries`) records."""
        lost: dict[str, Path] = {}  # jobs a client may ask after (their upload folders): not a 404
        for entry in self.uploads.iterdir():
            if made_upload_folder(entry):
                lost[entry.name] = entry
            else:
                log.warning("%s is not a job's upload folder; left as it is", entry)
        recorded = {e["file"] for e in entries if isinstance(e.get("file"), str)}  # any line's: a batch's too
        recorded |= {batch.place(self.results, e["output"]) for e in entries if isinstance(e.get("output"), str)}
        for entry in self.results.iterdir():
            if RESULT_TEMP.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
            elif (entry.suffix != ".png" or not JOB_ID.fullmatch(entry.stem) or entry.name in recorded
                  or entry.stem in self.jobs):
                continue
            elif entry.stem in lost and entry.is_file() and not entry.is_symlink():
                # its job's uploads were still there: killed (or its line refused) between the PNG and its line
                log.info("removing %s: its job was never recorded (the server was killed, or could not write its "
                         "line)", entry)
                entry.unlink(missing_ok=True)
            elif entry.stem in lost:  # the server writes a regular file there, never this
                log.warning("%s %s, not a result the server wrote; left as it is", entry, "is a symbolic link"
                            if entry.is_symlink() else paths.not_a_file(entry) or "is not a regular file")
            else:
                log.warning("%s is no result of this server's jobs (no manifest line records it, and no job's "
                            "upload folder of that id was left); left as it is", entry)
        for job_id, folder in sorted(lost.items()):
            if job_id in self.jobs:  # recorded, then killed before its uploads went
                shutil.rmtree(folder, ignore_errors=True)
                continue
            # its uploads go once its line is written (_record): on a disk still full, the next start says it
            job = self.jobs[job_id] = Job(job_id, None, upload_dir=folder, keep=True)
            # a picture saved aside while results/ was another's (a batch held it as the server stopped) or full
            aside = images.rescued_copies(self.result_path(job_id), self.aside)
            if aside:
                reason = (f"the server could not record the job (its results folder was full, replaced, or "
                          f"another's); its picture was saved aside on the server as {aside[0]}; submit it again")
                log.warning("job %s: %s", job_id, reason)  # the operator's: where the picture is
            else:
                reason = "the server was killed, or could not record the job, before it finished; submit it again"
            self._finish_unrun(job, "failed", reason)

    def close(self, wait_s: float = 30.0) -> None:
        """Stop: queued jobs are recorded as failed, the running batch stops at its next iteration and its jobs
        are recorded as failed (with the iteration reached); then the steps are freed."""
        with self._lock:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        for job in queued:
            self._finish_unrun(job, "failed", "the server stopped before the job ran; submit it again")
        self._thread.join(wait_s)
        self._warm.close()
        self._closed.set()
        self._watch.join()  # it takes locks: not while they are let go
        if self._unrecorded:
            try:
                self.own_folder(self.results)
                self._record_unrecorded()
            except UserError as e:  # still another's: the next start's sweep says these jobs failed
                log.error("%s; the lines of jobs %s are not written (the next start says they failed)",
                          first_line(e), ", ".join(job.id for job, _ in self._unrecorded))
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_file is not None:  # the folder keeps no lock file after a clean stop, as batch's --out
            paths.release_lock(self._lock_file, self.results / batch.LOCK_FILE)
            self._lock_file = None
        if self._server_lock is not None:
            paths.release_lock(self._server_lock, self.root / SERVER_LOCK)
            self._server_lock = None

    # ------------------------------------------------------------ requests

    def settings_hash(self, job_id: str, content: Path, styles: list[Path], settings: Settings,
                      used: dict[str, tuple[str, str]] | None = None) -> str:
        """batch's settings hash of an uploaded job (its settings and the bytes of its images; `used`: as
        batch.settings_hash's); the server's own files hashed again only where one changed."""
        cache = dict(self._own_digests)  # a request's own copy: the uploads' entries are not kept
        digest = batch.settings_hash(batch.Job(job_id, content, tuple(styles), self.result_path(job_id)), settings,
                                     cache, used=used)
        self._own_digests.update({key: cache[key] for key in self._own_keys if key in cache})
        return digest

    def loaded_weights_sha256(self, settings: Settings) -> str:
        """The sha256 of the weights file's bytes as the jobs run them: loaded once (at the start, or a replica's
        first job), however the file changed since."""
        return self._warm.weights(settings).sha256

    def result_path(self, job_id: str) -> Path:
        return self.results / f"{job_id}.png"

    # what the app asks of any store: a Ray replica's (serve/ray_app.py) also answers for the other replicas' jobs

    async def lookup(self, job_id: str) -> Job | None:
        """The job `job_id` as it stands now, or None."""
        return self.jobs.get(job_id)

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The `limit` newest jobs' JSON, newest first."""
        jobs = sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)
        return [j.to_json() for j in jobs[:limit]]

    def result_file(self, job: Job) -> Path:
        """Where a done job's PNG is."""
        return self.result_path(job.id)

    def result_bytes(self, job: Job) -> bytes:
        """A done job's PNG, read without following a link (a file swapped for one to /etc/passwd is not served);
        ResultGone when it is not there or not a file of the server's any more."""
        path = self.result_file(job)
        try:
            return paths.read_regular(path)
        except FileNotFoundError:
            raise ResultGone(f"job {job.id}'s result file is gone (removed from {self.results})") from None
        except OSError:
            raise ResultGone(f"job {job.id}'s result {paths.not_a_folder(path)}, not the file the server wrote; "
                             f"it is not served") from None

    def owns(self, job: Job) -> bool:
        """Whether this store runs (or ran) `job`: its event streams may cancel it when they all go."""
        return self.jobs.get(job.id) is job

    def submit(self, job: Job) -> None:
        """Queue `job`; QueueFull when max_queue jobs are queued or running."""
        with self._lock:
            if self._stopping:
                raise QueueFull(5)
            # a cancelled job of the running batch is over for its client: it frees its slot at once, not at
            # its batch's next iteration
            waiting = len(self._queue) + sum(not j.cancelled for j in self._running)
            if waiting >= self.max_queue:
                raise QueueFull(max(1, math.ceil(self._mean_seconds * waiting / max(1, self.max_batch))))
            # over every scale: a coarse-to-fine job read "40 / 20", its bar full at the first scale's end
            job.iterations = job.settings.total_iterations() if job.settings is not None else 0
            self.jobs[job.id] = job
            self._queue.append(job)
            self._lock.notify_all()

    def cancel(self, job: Job) -> None:
        """Cancel a queued or running job: a queued one at once, a running one at its batch's next iteration."""
        with self._lock:
            if job.over or job.cancelled:
                return
            job.cancelled = True
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
            else:
                self._set(job, status="cancelled", reason="cancelled")
        if queued:
            self._finish_unrun(job, "cancelled", "cancelled")

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {"queued": len(self._queue), "running": len(self._running), "max_queue": self.max_queue,
                    "batches": self.started}

    # ------------------------------------------------------------ the worker

    def _set(self, job: Job, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(job, name, value)
        job.version += 1
        for wake in list(job.wakers):
            wake()

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest queued job and the queued jobs that can run with it (after waiting up to
        batch_wait_s for them); None when stopping."""
        with self._lock:
            while not self._queue and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            first = self._queue.popleft()
            members = [first]
            self._running = members  # counted against max_queue while it waits for company
            if batch.batchable(first.run_settings):
                key = self._key(first)
                limit = min(self.max_batch, batch.batch_size_for(first.run_settings, key[1][-1]))
                deadline = time.monotonic() + self.batch_wait_s
                while len(members) < limit:
                    members += self._matching(key, limit - len(members))
                    left = deadline - time.monotonic()
                    if len(members) >= limit or left <= 0:
                        break
                    self._lock.wait(left)
            self._running = members
            self.started += 1
            return members

    def _key(self, job: Job) -> tuple[Any, tuple[tuple[int, int], ...]]:
        return batch_key(job.run_settings), batch.output_shape(job.run_settings, job.shape)

    def _matching(self, key: Any, count: int) -> list[Job]:
        found = [j for j in self._queue if batch.batchable(j.run_settings) and self._key(j) == key][:count]
        for job in found:
            self._queue.remove(job)
        return found

    def _work(self) -> None:
        while True:
            members = self._take()
            if members is None:
                return
            try:
                self._run(members)
            except Exception:  # a bug: every job of the batch says so, the server goes on
                log.exception("a batch of %d jobs failed", len(members))
                for job in members:
                    if job.finished is None:  # not recorded yet
                        self._record(job, "failed", "internal error (see the server's log)", None, None)
            finally:
                with self._lock:
                    self._running = []

    def _callback(self, members: list[Job]) -> Callable[[Record, Callable[[], np.ndarray]], None]:
        def callback(record: Record, current: Callable[[], np.ndarray]) -> None:
            if self._stopping or all(j.cancelled for j in members):
                raise KeyboardInterrupt  # the loop's contract: stop at this iteration
            job = members[record.index]
            if job.cancelled:
                return
            now = time.monotonic()
            # a batch's iteration is every member's: each job's share, as its `seconds`
            changes: dict[str, Any] = {"iteration": record.iteration,
                                       "loop_seconds": (job.loop_seconds or 0.0) + record.seconds / job.batch}
            if record.distances is not None:
                changes["distances"] = _distances(record.distances)
            if now - job._last_progress >= PROGRESS_INTERVAL_S or record.iteration == job.iterations:
                job._last_progress = now
                changes["losses"] = _losses(record)
            if now - job._last_preview >= PREVIEW_INTERVAL_S:
                job._last_preview = now
                changes["preview"] = png_bytes(current())
                changes["preview_iteration"] = record.iteration
            self._set(job, **changes)

        return callback

    def _run(self, members: list[Job]) -> None:
        with self._lock:  # cancelled while the batch formed: recorded, not run
            dropped = [j for j in members if j.cancelled]
            members = [j for j in members if not j.cancelled]
            for job in members:
                self._set(job, status="running", batch=len(members))
        for job in dropped:
            self._record(job, "cancelled", "cancelled", None, None)
        if not members:
            return
        try:  # queued before results/ was lost: no work whose picture nothing could keep
            self.own_folder(self.results)
        except ServerFolderGone as e:
            for job in members:
                self._record(job, "failed", f"{first_line(e)}; {AGAIN}", None, None)
            return
        settings = members[0].run_settings
        for job in members:
            job._last_preview = -math.inf
        pictures = [Picture(j.content, j.styles, j.run_settings, j.init_image, masks=j.masks) for j in members]
        start = time.perf_counter()
        try:
            out = stylise_batch(pictures, callback=self._callback(members), weights=self._warm.weights(settings),
                                step=self._warm.step(settings), cache=self._warm.targets)
        except UserError as e:
            for job in members:
                self._record(job, "failed", first_line(e), None, None)
            return
        seconds = (time.perf_counter() - start) / len(members)
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds * len(members)
        for job, (image, result) in zip(members, out):
            job.seconds = seconds
            if job.cancelled:
                self._record(job, "cancelled", "cancelled", None, result)
            elif result.stopped == "interrupted":  # the server is stopping
                self._record(job, "failed", f"the server stopped at iteration {result.iterations} of "
                             f"{job.iterations}; submit it again", None, result)
            elif result.stopped == "non-finite loss":  # its last finite image kept, as run and batch keep it
                self._record(job, "failed", non_finite(result.iterations), image if result.iterations else None,
                             result)
            else:
                self._record(job, "ok", None, image, result)

    # ------------------------------------------------------------ recording

    def _batch_job(self, job: Job) -> batch.Job:
        return batch.Job(job.id, job.upload_dir or Path(), (), self.result_path(job.id))

    def _record(self, job: Job, status: str, reason: str | None, image: np.ndarray | None, result: Any) -> None:
        """The image (atomically) and the manifest line; a write that fails fails the job, not the server."""
        losses = _losses(result.records[-1]) if result is not None and result.records else None
        distances = _distances(result.distances) if result is not None else None
        # the manifest knows ok, failed and skipped: a cancelled job is a failed one whose reason says so
        device = batch.device_name(job.settings) if job.settings is not None else None
        done = batch.JobResult(self._batch_job(job), "failed" if status == "cancelled" else status, reason,
                               job.settings_hash, job.seconds, device, result.iterations if result is not None else 0,
                               losses, result.distances.to_json() if result is not None and result.distances else None,
                               job.batch, image, planned=job.iterations)
        recorded = True
        try:
            try:
                self.own_folder(self.results)  # removed while the server ran: made again, not a 500 at every job
            except ServerFolderGone as e:  # lost while the job ran: its finished picture kept aside, not dropped
                done = dataclasses.replace(done, status="failed", reason=self._kept_aside(job, first_line(e), image),
                                           image=None)
                with self._recording:  # its line written once results/ is the server's again
                    self._unrecorded.append((job, done))
                raise ServerFolderGone(done.reason) from None
            try:
                self._record_unrecorded()
            except UserError as e:  # said as theirs, not as this job's
                log.error("%s", first_line(e))
            with self._recording:  # a picture results/ cannot take (a full disk) is kept aside (self.aside)
                done = batch.record(done, self.manifest, out_dir=self.results,
                                    aside=lambda picture, output: rescue(picture, output, self.aside))
        except UserError as e:  # the manifest cannot be written: the job says so; its PNG may be there
            reason = first_line(e)
            if isinstance(e, batch.Unrecorded) and image is not None and not self.result_path(job.id).is_file():
                # neither its picture nor its line (results/ full, a disk of its own): the picture kept aside,
                # once (record's `aside` may have kept it already)
                saved = e.saved or rescue(image, self.result_path(job.id), self.aside)
                reason = e.head if e.saved else reason  # said once
                reason += (f"; its picture was saved aside on the server as {saved}" if saved is not None
                           else "; nor could a copy be saved aside; it is lost")
            done = dataclasses.replace(done, status="failed", reason=reason)
            log.error("%s", reason)
            recorded = False
        final = "done" if done.status == "ok" else "cancelled" if status == "cancelled" else "failed"
        changes: dict[str, Any] = {"status": final, "reason": self.for_clients(done.reason, done.last_finite),
                                   "finished": time.time(), "last_finite": done.last_finite}
        if losses is not None:
            changes["losses"] = losses
        if distances is not None:
            changes["distances"] = distances
        if result is not None:
            changes["iteration"] = result.iterations
        if (final == "done" or done.last_finite) and image is not None:
            changes["preview"] = png_bytes(image)
            changes["preview_iteration"] = result.iterations
        self._set(job, **changes)
        # with no line, its upload folder stays: the next start's sweep records the job as failed, not a 404
        self._forget_inputs(job, keep_folder=not recorded)
        with self._lock:  # memory stays bounded however many jobs the server has finished
            self._previews.append(job)
            while len(self._previews) > KEPT_PREVIEWS:
                self._previews.popleft().preview = None

    def _record_unrecorded(self) -> None:
        """The lines of jobs that failed while results/ was not the server's, written now that it is (a restart
        said of them "the server was killed"); their upload folders go with them. UserError if one cannot be."""
        with self._recording:
            while self._unrecorded:
                job, done = self._unrecorded[0]
                batch.record(done, self.manifest, out_dir=self.results)
                self._unrecorded.pop(0)
                if job.upload_dir is not None:
                    shutil.rmtree(job.upload_dir, ignore_errors=True)

    def _kept_aside(self, job: Job, reason: str, image: np.ndarray | None) -> str:
        """`reason` (results/ is not the server's now) with what became of the job's picture: saved in the
        server's folder (then the temp folder) for the operator, the log saying where; the client told to submit
        it again, as nothing serves it."""
        if image is None:
            return f"{reason}; {AGAIN}"
        saved = rescue(image, self.result_path(job.id), self.aside)
        log.error("job %s's picture could not be kept in %s: %s", job.id, self.results, rescued(saved))
        kept = f"its picture was saved aside on the server as {saved}" if saved is not None else \
            "its picture is lost"
        return f"{reason}; {kept}; {AGAIN}"

    def for_clients(self, reason: str | None, last_finite: bool | None = None) -> str | None:
        """A reason as clients see it: the server's folder not spelled out (the manifest keeps the whole line
        for the operator, as a 507's log line does), nor the temp folder (a picture saved aside is said by its
        name), a job's last finite image said as its result (`last_finite`:
        True, or False once its file is gone) wherever the folder was when the line was written."""
        if reason is None:
            return None
        head, said, _ = reason.partition(f"; {batch.LAST_FINITE}")
        if said and last_finite is not None:
            reason = head + ("; its last finite image is the job's result" if last_finite else
                             "; its last finite image was the job's result, and that file is gone")
        aside = rf"/(?={JOB_ID.pattern}{images.RESCUED})"  # a picture saved aside: its name only
        for folder in images.rescue_folders(self.aside):  # here or in a temp folder, spaces in its name or not
            for spelled in {str(folder), os.path.realpath(folder)}:
                reason = re.sub(rf"(?<![^\s('\"]){re.escape(spelled)}{aside}", "", reason)
        # or where another process put it (a restart under another $TMPDIR, the server's folder moved)
        reason = re.sub(rf"(?<![^\s('\"])[^\s('\"]*{aside}", "", reason)
        for path in self.own:  # the operator's paths: a client sees the file's name
            for spelled in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
                reason = reason.replace(spelled, Path(path).name)
        for spelled in {str(self.root.resolve()), str(self.root.absolute())}:
            reason = reason.replace(spelled, "<server folder>")
        # a relative spelling ("srv/results/x.png", ".srv/uploads", an OSError's quoted 'srv/uploads/ID'; this
        # server's or an earlier one's): a path that leads to a folder of the server's name and into its results
        # or uploads
        name = re.escape(self.root.absolute().name)
        return re.sub(rf"(?<![^\s('\"])(?:[^\s('\"]*/)?{name}(?=/(?:results|uploads)\b)", "<server folder>",
                      reason)

    def _finish_unrun(self, job: Job, status: str, reason: str) -> None:
        self._record(job, status, reason, None, None)

    def _forget_inputs(self, job: Job, keep_folder: bool = False) -> None:
        job.content, job.styles, job.masks, job.init_image = None, [], None, None
        if job.upload_dir is not None and not keep_folder:
            shutil.rmtree(job.upload_dir, ignore_errors=True)


def _holder(busy: FolderBusy) -> str:
    """What holds the folder, as take_lock says it: "another batch is running on X (it holds X/.batch.lock)"."""
    return first_line(busy).partition(";")[0]


def load_upload(path: Path, label: str) -> np.ndarray:
    """An uploaded image through the CLI's checks (formats, bombs, truncation, NaN, tiny); ImageError naming
    the upload by its role, not by where the server keeps it."""
    try:
        return images.load_image(path, label)
    except UserError as e:  # "content image <folder>/content is not an image": the folder is the server's
        raise type(e)(first_line(e).replace(f" {path}", "")) from None
