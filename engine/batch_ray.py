"""`styleengine batch --ray`: the same jobs on a Ray cluster, one warm worker per GPU (or group of CPUs).

Ray is imported only here, and only when --ray is given (`import_ray`). The
driver (this process) plans the jobs and records every result, exactly as
the local run does (engine/batch.py's `record`), so the manifest and the
outputs are the same; the workers only compute. Work goes out as the local
run's shape groups (`batch.groups`), one task per idle actor; each actor
keeps a `Warm` (weights and steps) for its life and splits a group into
batches its own device's memory allows (`batch.run_jobs`).

Failures, by Ray's own mechanisms: actors are created with `max_restarts`
and `max_task_retries`, so a worker process that crashes is restarted by
Ray and its task re-run there; an actor that is gone for good (ray.kill, a
lost node) fails its task with RayActorError, and the driver puts that
group back in the queue for the actors still alive. A group is recorded
once, when its task returns, so nothing is written twice.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Generator, Iterable, Iterator

from styleengine.engine.batch import MAX_BATCH, JobResult, Planned, Warm, groups, run_jobs
from styleengine.errors import ConfigError, UnavailableError, UserError, first_line

log = logging.getLogger(__name__)
_CLOSING = threading.Event()  # a pool is closing: what Ray says of the actors it kills is not the user's news

RESTARTS = 2  # Ray restarts a crashed worker this many times, re-running its task (max_task_retries)
CPUS_PER_WORKER = 4  # on a cluster without GPUs: one worker per this many CPUs (fewer if the cluster has fewer)
CONNECT_SECONDS = 5.0  # a --ray HOST:PORT that does not answer within this is refused
WAIT_S = 0.25  # the longest a driver waits on Ray in one call: a signal is acted on between calls


@contextlib.contextmanager
def _keeping_signal_handlers(on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
    """The caller's SIGINT/SIGTERM/SIGHUP handlers stay through ray.init, which sets its own (a SIGTERM exited 15
    with no line, or its SystemExit was lost in logging's at-fork hook and the batch ran on): a signal in it is
    kept, then raised once ray.init is done, to the handler the caller has (the CLI's: KeyboardInterrupt).
    `on_signal(signum)` is called at the first one, as it comes: the command's line, not seconds later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    if hasattr(signal, "SIGALRM") and callable(signal.getsignal(signal.SIGALRM)):
        ours.append(signal.SIGALRM)  # the CLI's retry of a signal put off in an import: lost in a fork hook too
    saved = {s: signal.getsignal(s) for s in ours}
    came: list[int] = []
    real = signal.signal

    def kept(signum: int, handler: Any) -> Any:  # Ray's own handlers for these are not set
        return saved[signum] if signum in saved else real(signum, handler)

    def keep(signum: int, frame: Any) -> None:
        came.append(signum)
        if len(came) == 1 and on_signal is not None:
            try:
                on_signal(signum)
            except Exception:  # noqa: BLE001 - the line is said again after ray.init; nothing raised into Ray
                log.debug("the signal's early line failed; it comes after ray.init", exc_info=True)

    for s, handler in saved.items():
        if handler is not signal.SIG_IGN:  # an ignored one (nohup) stays ignored
            real(s, keep)
    signal.signal = kept  # type: ignore[assignment]
    try:
        yield
    finally:
        signal.signal = real
        for s, handler in saved.items():
            real(s, handler)
        if came:
            signal.raise_signal(came[0])


def import_ray() -> Any:
    """The ray module, or UnavailableError with the install line."""
    # the driver's signals are the command's: Ray's C++ failure handler took a SIGTERM while ray.init connected
    # (a stack dump, then abort: exit 134); a user's own setting stands
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise UnavailableError("--ray needs Ray: pip install 'styleengine[ray]'") from None
    _errors_to_log()
    return ray


def _errors_to_log() -> None:
    """The errors Ray's driver is told of (a task failed and will be retried, a worker died) go to this module's
    log, as warnings while the work runs and not at all once its pool closes: Ray printed them raw on stdout, in
    colour, and after a signal below the command's last line ("... will be retried" of an actor it had killed)."""
    try:
        from ray._private import worker
    except ImportError:  # another Ray layout: its own printing stands
        return
    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "styleengine", False):
        return

    said: dict[str, float] = {}

    def to_log(data: dict, *args: Any, **kwargs: Any) -> None:
        if data.get("pid") != "raylet":  # a worker's own output (log_to_driver, which ActorPool turns off)
            printer(data, *args, **kwargs)
        elif not _CLOSING.is_set():
            for message in map(str, data.get("lines", [])):
                now = time.monotonic()
                if now - said.get(message, -math.inf) > 10.0:  # published by each of its watchers: one event, once
                    said[message] = now
                    log.warning("Ray: %s", _first_sentences(message))

    to_log.styleengine = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_log


LONGEST = 200  # characters of a message Ray publishes in one line that are said


def _first_sentences(message: str) -> str:
    """A message Ray publishes in one line: its first line, and the last of the rest where the first announces
    them (a traceback's exception); the log lines a raylet's end carries (its last 20, a few KB) left to Ray's."""
    head, _, rest = message.strip().partition("\n")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    dump = re.search(r"\s*Last \d+ lines of [^.:]*:$", head)
    if dump and lines:
        return head[:dump.start()] + " (the rest is in Ray's logs)"
    if len(head) > LONGEST and (end := head.rfind(". ", 0, LONGEST)) > 0:  # one line of advice and ids (a
        return head[:end + 1] + " (the rest is in Ray's logs)"  # worker's death): its first sentences
    if not lines:
        return head
    return f"{head} {lines[-1]} (the rest is in Ray's logs)" if head.endswith(":") or head.startswith(
        "Traceback") else f"{head} (the rest is in Ray's logs)"


def enter(folder: str | None) -> str | None:
    """A Ray actor's process moved to the driver's working folder, where a jobs file's, --init's, a mask's or
    a weights file's relative path leads (in a cluster started elsewhere the worker read another file of that
    name, and exited 0); why it cannot be, or None."""
    if folder is None:
        return None
    try:
        os.chdir(folder)
    except OSError as e:
        return (f"the Ray worker on {socket.gethostname()} cannot work in {folder}, the driver's working folder "
                f"({e.strerror or e}): a cluster's workers need the driver's files at the same paths")
    return None


def working_folder() -> str | None:
    """The driver's working folder, for its actors (enter); None where it is gone."""
    try:
        return os.getcwd()
    except OSError:
        return None


class _Worker:
    """A Ray actor's body: one Warm for its life; run() returns JobResults (images included) to the driver."""

    def __init__(self, folder: str | None = None) -> None:
        self.problem = enter(folder)
        self.warm = Warm()

    def run(self, items: list[Planned], batch_size: int | None) -> list[JobResult]:
        if self.problem is not None:
            return [JobResult(item.job, "failed", self.problem, item.hash) for item in items]
        return list(run_jobs(items, self.warm, batch_size))


def check_address(address: str, *, connect: bool = True) -> None:
    """ConfigError, one line, for a --ray address that is not auto, HOST:PORT or ray://HOST:PORT, or (with
    `connect`) where nothing answers (ray.init would wait minutes on a dead address). auto is ray.init's own
    search, which takes RAY_ADDRESS first: that address is checked the same way."""
    what, named = "--ray", f"--ray {address}"
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "").strip()
        if address in ("", "auto", "local"):  # ray.init's words: a cluster started here, else a new one
            return
        what, named = "RAY_ADDRESS (which --ray auto reads)", f"RAY_ADDRESS={address} (which --ray auto reads)"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    if not connect:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise ConfigError(f"{named}: nothing answers there ({e.strerror or e})") from None


class ActorPool:
    """Warm actors of one body (a class whose instances live as long as their actor) on a Ray cluster.
    address: "auto" (ray.init()'s own search: RAY_ADDRESS, a cluster started on this machine, else a new local
    one) or a cluster's address. If Ray is already initialised in this process, that cluster is used and left
    running."""

    def __init__(self, body: type, address: str, *, cpus_per_worker: int | None = None,
                 on_interrupt: Callable[[int | None], None] | None = None):
        """`on_interrupt(signum)` says a signal's line as it comes while the cluster starts, before the close
        (Ray's shutdown takes seconds): signum is one the caller's handler has not seen yet, as ray.init holds
        it; None, one that came to the caller as a KeyboardInterrupt."""
        ray = self.ray = import_ray()
        self.started = not ray.is_initialized()
        check_address(address, connect=self.started)
        self.actors: list[Any] = []
        self.in_flight: dict[Any, tuple[Any, Any]] = {}  # task -> (actor, its item)
        self.resubmitted = 0  # items put back after their actor died
        try:
            self._start(body, address, cpus_per_worker, on_interrupt)
        except BaseException as e:  # a signal as the cluster or its workers start: no caller has a pool to close
            if isinstance(e, KeyboardInterrupt) and on_interrupt is not None:
                on_interrupt(None)
            self.close()
            raise

    def _start(self, body: type, address: str, cpus_per_worker: int | None,
               on_interrupt: Callable[[int | None], None] | None) -> None:
        ray = self.ray
        _CLOSING.clear()
        if self.started:
            with _keeping_signal_handlers(on_interrupt):
                try:
                    ray.init(address=None if address == "auto" else address, include_dashboard=False,
                             log_to_driver=False)
                except ConnectionError as e:  # something answers there, but not a Ray cluster
                    raise ConfigError(f"--ray {address}: {first_line(e)}") from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            count, options = gpus, {"num_gpus": 1, "num_cpus": 1}
        else:
            per = max(1, min(cpus, cpus_per_worker or CPUS_PER_WORKER))
            count, options = max(1, cpus // per), {"num_cpus": per}
        actor = ray.remote(**options, max_restarts=RESTARTS, max_task_retries=RESTARTS)(body)
        folder = working_folder()
        for _ in range(count):  # one by one: a signal among them leaves those made to close()
            self.actors.append(actor.remote(folder))

    def map(self, method: str, items: Iterable[tuple]) -> Iterator[tuple[tuple, Any]]:
        """(item, actor.method(*item)) as each comes back (any order); items are drawn only when an actor is
        idle, so a lazy iterable is read as fast as the actors work."""
        ray = self.ray
        fresh, queue = iter(items), deque[tuple]()
        idle = list(self.actors)
        while True:
            while idle:
                item = queue.popleft() if queue else next(fresh, None)
                if item is None:
                    break
                actor = idle.pop(0)
                self.in_flight[getattr(actor, method).remote(*item)] = (actor, item)
            if not self.in_flight:
                if queue:
                    raise UnavailableError(f"every Ray worker died; {len(queue)} pieces of work were not run "
                                           f"(the same command resumes)")
                return
            # a bounded wait: Python's signal handlers run only between calls (a SIGTERM waited for the job)
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=WAIT_S)
            if not ready:
                continue
            actor, item = self.in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                queue.appendleft(item)  # its actor is gone: another one runs it
                self.resubmitted += 1
                continue
            except ray.exceptions.RayTaskError as e:  # a user's fault met in a worker: in its own words
                if isinstance(getattr(e, "cause", None), UserError):  # (str(e) is Ray's header, in colour)
                    raise e.cause from None
                raise
            idle.append(actor)
            yield item, result

    def stop(self) -> None:
        """The actors killed (at once): nothing runs on them any more."""
        _CLOSING.set()
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def close(self) -> None:
        """stop(), and the cluster this pool started shut down (Ray gives each of its processes a second)."""
        self.stop()
        if self.started:
            self.started = False
            self.ray.shutdown()


class RayRunner(ActorPool):
    """Runs planned jobs on a Ray cluster, one _Worker per actor."""

    def __init__(self, address: str, *, batch_size: int | None = None,
                 cpus_per_worker: int | None = None, on_interrupt: Callable[[int | None], None] | None = None):
        super().__init__(_Worker, address, cpus_per_worker=cpus_per_worker, on_interrupt=on_interrupt)
        self.batch_size = batch_size

    def run(self, planned: list[Planned]) -> Iterator[list[JobResult]]:
        """Each group's results as it comes back (any order)."""
        # the driver groups by shape with the largest batch; each worker splits by its own memory
        work = ((group, self.batch_size) for group in groups(planned, self.batch_size or MAX_BATCH))
        for _, results in self.map("run", work):
            yield results


def run_jobs_ray(planned: list[Planned], address: str, *, batch_size: int | None = None,
                 on_interrupt: Callable[[int | None], None] | None = None) -> Generator[list[JobResult], None, None]:
    """batch.run_groups on a Ray cluster (RayRunner), closed when the iteration ends or is abandoned;
    `on_interrupt` is called as a signal comes while the cluster starts (ActorPool) or a KeyboardInterrupt
    passes, before the close (Ray's shutdown of a cluster it started takes some seconds: the line comes first)."""
    runner = RayRunner(address, batch_size=batch_size, on_interrupt=on_interrupt)
    try:
        yield from runner.run(planned)
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt(None)
        raise
    finally:
        runner.close()
