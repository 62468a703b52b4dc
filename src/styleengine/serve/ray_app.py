"""`styleengine serve --ray`: the same FastAPI application (serve/app.py) on Ray Serve, one replica per GPU
(or per group of CPUs), each with its own warm engine.

Where a job lives: it runs on the replica that took its POST (its uploads, its engine thread, its PNG and
manifest line in that replica's folder, `<results-dir>/replica-K`, claimed by the JobStore's lock, so a
replica that restarts takes a free folder back and serves its results again). Ray Serve sends each request
to any replica, so every replica publishes its jobs' state (the status JSON and the latest preview) to one
shared board, a Ray actor (`JobBoard`), every PUBLISH_S; a replica asked about a job it does not hold reads
the board, and a cancel of such a job is left on the board for its owner to act on at its next publish.
Pinning the run and sharing only its state keeps the uploads and the engine where the job is, and the
board small. The results folder is read by path: on several machines it must be shared storage.

An event stream on a replica that does not run the job only watches: a client that goes away cancels its
job only through a stream on the owner (or DELETE).
"""
from __future__ import annotations

import asyncio
import contextlib

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleengine import paths
from styleengine.engine.batch_ray import CPUS_PER_WORKER
from styleengine.engine.batch import MANIFEST, Manifest
from styleengine.engine.manifest import check_lock_file
from styleengine.errors import ConfigError, UserError
from styleengine.serve.app import Config, create_app, own_files
from styleengine.serve.jobs import RESULTS, SERVER_FOLDER, SERVER_LOCK, FolderBusy, Job, JobStore

log = logging.getLogger(__name__)

BOARD = "styleengine-serve-board"  # the board's actor name
NAMESPACE = "styleengine"
APP = "styleengine"
PUBLISH_S = 0.1  # how often a replica publishes its jobs' changes (and picks up cancels)
MAX_SLOTS = 256  # replica folders tried before giving up
BOARD_PREVIEWS = 64  # previews the board keeps (the jobs most recently changed)
MAX_ONGOING = 256  # requests at once per replica: event streams stay open for a job's life


class JobBoard:
    """A Ray actor: every replica's jobs as {id: (owner, JSON, result path, version, created)}, the latest
    previews, and the cancels waiting for each owner."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.previews: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self.cancels: dict[str, set[str]] = {}

    def publish(self, owner: str, items: list[dict[str, Any]]) -> list[str]:
        """Record `owner`'s changed jobs; the ids of its jobs someone asked to cancel (handed over once)."""
        for item in items:
            preview = item.pop("preview", None)
            self.jobs[item["json"]["id"]] = {**item, "owner": owner}
            if preview is not None:
                self.previews[item["json"]["id"]] = preview
                self.previews.move_to_end(item["json"]["id"])
                while len(self.previews) > BOARD_PREVIEWS:
                    self.previews.popitem(last=False)
        return sorted(self.cancels.pop(owner, set()))

    def get(self, job_id: str) -> dict[str, Any] | None:
        entry = self.jobs.get(job_id)
        if entry is None:
            return None
        return {**entry, "preview": self.previews.get(job_id)}

    def cancel(self, job_id: str) -> bool:
        entry = self.jobs.get(job_id)
        if entry is None:
            return False
        self.cancels.setdefault(entry["owner"], set()).add(job_id)
        return True

    def recent(self, limit: int) -> list[dict[str, Any]]:
        newest = sorted(self.jobs.values(), key=lambda e: e["created"], reverse=True)
        return [e["json"] for e in newest[:limit]]


def _snapshot(entry: dict[str, Any]) -> Job:
    """A read-only Job of another replica, from the board's entry."""
    data = entry["json"]
    preview = entry.get("preview")
    job = Job(data["id"], None, status=data["status"], reason=data["reason"], iteration=data["iteration"],
              iterations=data["iterations"], losses=data["losses"], distances=data["distances"],
              seconds=data["seconds"], loop_seconds=data["loop_seconds"], batch=data["batch"], keep=data["keep"],
              created=entry["created"],
              preview=preview[0] if preview else None, preview_iteration=preview[1] if preview else 0,
              last_finite=data.get("last_finite", False), version=entry["version"])
    job.result_at = Path(entry["result"]) if entry["result"] else None
    return job


class RayJobStore(JobStore):
    """A replica's JobStore that publishes its jobs to the board and answers for the other replicas' jobs
    from it."""

    def __init__(self, root: Path, board: Any, owner: str, **options: Any):
        super().__init__(root, **options)
        self.board, self.owner = board, owner
        self._published: dict[str, int] = {}  # job id -> the version on the board
        self._publishing = threading.Lock()
        self._done = threading.Event()
        self._publisher = threading.Thread(target=self._publish_loop, name="styleengine-board", daemon=True)
        self._publisher.start()

    def _publish(self) -> None:
        with self._publishing:
            self._publish_changes()

    def _publish_changes(self) -> None:
        import ray

        changed = [j for j in list(self.jobs.values()) if self._published.get(j.id) != j.version]
        items: list[dict[str, Any]] = [{"json": j.to_json(), "version": j.version, "created": j.created,
                  "result": str(self.result_path(j.id)) if j.has_result else None,
                  "preview": (j.preview, j.preview_iteration) if j.preview is not None else None} for j in changed]
        cancels = ray.get(self.board.publish.remote(self.owner, items))
        for item in items:
            self._published[item["json"]["id"]] = item["version"]
        for job_id in cancels:
            job = self.jobs.get(job_id)
            if job is not None:
                self.cancel(job)

    def _publish_loop(self) -> None:
        while not self._done.wait(PUBLISH_S):
            try:
                self._publish()
            except Exception:  # the board is gone (the app is stopping): the next round tries again
                log.exception("publishing %s's jobs failed", self.owner)

    def submit(self, job: Job) -> None:
        super().submit(job)
        self._publish()  # on the board before its id is answered: the next request may reach another replica

    async def lookup(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None:
            if self._published.get(job.id) != job.version:
                # on the board before its owner says it: a client's next request may reach another replica,
                # which must not answer with an older state ("running" after "done")
                await asyncio.to_thread(self._publish)
            return job
        entry = await self.board.get.remote(job_id)
        return _snapshot(entry) if entry is not None else None

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        return await self.board.recent.remote(limit)

    def counts(self) -> dict[str, Any]:
        return {**super().counts(), "replica": self.owner}  # the health figures are this replica's

    def result_file(self, job: Job) -> Path:
        if self.owns(job):
            return super().result_file(job)
        assert job.result_at is not None  # a snapshot of a job with a result carries its owner's path
        return job.result_at

    def cancel(self, job: Job) -> None:
        if self.owns(job):
            super().cancel(job)
        else:
            import ray

            ray.get(self.board.cancel.remote(job.id))

    def close(self, wait_s: float = 30.0) -> None:
        super().close(wait_s)
        self._done.set()
        self._publisher.join()
        try:
            self._publish()  # the jobs recorded while closing
        except Exception:
            log.exception("the last publish of %s's jobs failed", self.owner)


def server_root(config: Config) -> Path:
    from styleengine.export.cache import cache_root

    return config.root if config.root is not None else cache_root() / "serve"


def replica_folders(root: Path) -> list[tuple[int, Path]]:
    """The replica folders under the server's folder (slot, folder), in slot order."""
    found = [(int(p.name.removeprefix("replica-")), p) for p in root.glob("replica-*")
             if re.fullmatch(r"replica-(0|[1-9][0-9]*)", p.name)]  # a slot's own name: not replica-01, nor -²
    return sorted(found)


def check_replica_folders(root: Path) -> None:
    """ConfigError, one line before any replica starts, for what a replica would refuse in its folder: a file
    in the folder's place, a lock file that is a link or another's data (each replica's refusal was Ray's
    tracebacks, some 300 lines)."""
    for _, folder in replica_folders(root):
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a replica's folder (it {paths.not_a_folder(folder)}); move it away "
                              f"or use another --results-dir")
        check_lock_file(folder, "--results-dir", SERVER_LOCK)
        check_lock_file(folder / RESULTS, "--results-dir")


def unserved(root: Path, replicas: int) -> list[tuple[Path, int]]:
    """Replica folders of slots `replicas` and on that hold finished jobs (folder, count): a server restarted
    with fewer replicas does not serve them."""
    kept = []
    for _, folder in (found for found in replica_folders(root) if found[0] >= replicas):
        manifest = folder / RESULTS / MANIFEST
        if manifest.is_file():
            with contextlib.suppress(UserError, OSError):
                entries, _ = Manifest(manifest).read()
                if entries:
                    kept.append((folder, len(entries)))
    return kept


def open_replica_store(config: Config, board: Any) -> RayJobStore:
    """The first free replica folder under the server's folder (one JobStore lock each)."""
    root = server_root(config)
    for slot in range(MAX_SLOTS):
        try:
            return RayJobStore(root / f"replica-{slot}", board, f"replica-{slot}", max_queue=config.max_queue,
                               own=own_files(config.settings))
        except FolderBusy:
            continue
    raise ConfigError(f"{MAX_SLOTS} replica folders under {root} are all in use")


class _Replica:
    """A Ray Serve replica's body: the app (built by `serve.ingress`'s builder) holds everything."""


def application(config: Config, board: Any, replicas: int, *, gpus: bool) -> Any:
    """The Ray Serve application: `replicas` replicas of the app around `board`, each with one GPU or one CPU."""
    from ray import serve

    def build() -> Any:  # runs in each replica as it starts
        return create_app(config, opener=lambda c: open_replica_store(c, board))

    options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    deployment = serve.deployment(name="styleengine", num_replicas=replicas, ray_actor_options=options,
                                  max_ongoing_requests=MAX_ONGOING)
    return deployment(serve.ingress(build)(_Replica)).bind()


@dataclass(frozen=True)
class Deployed:
    replicas: int
    board: Any  # the board actor's handle: it lives while the caller holds it (and Serve's replicas do)


def deploy(config: Config, *, host: str, port: int, replicas: int | None = None) -> Deployed:
    """Start the board and the application on the Ray cluster this process is connected to, with `replicas`
    replicas (default one per GPU, else one per CPUS_PER_WORKER CPUs as `batch --ray` has)."""
    import ray
    from ray import serve

    if replicas is not None and replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {replicas}")
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    count = replicas or gpus or max(1, int(resources.get("CPU", 1)) // CPUS_PER_WORKER)
    board = ray.remote(num_cpus=0)(JobBoard).options(name=BOARD, namespace=NAMESPACE).remote()
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(config, board, count, gpus=bool(gpus)), name=APP, route_prefix="/")
    return Deployed(count, board)


def serve_forever(config: Config, *, host: str, port: int, replicas: int | None, address: str) -> None:
    """`styleengine serve --ray`: deploy, then wait for Ctrl-C or SIGTERM; then Serve shuts down (each
    replica's store records its jobs in flight)."""
    from styleengine.engine.batch_ray import _keeping_signal_handlers, check_address, import_ray

    if replicas is not None and replicas < 1:  # before any cluster is started or reached (deploy checks it too)
        raise ConfigError(f"--replicas must be >= 1, got {replicas}")
    ray = import_ray()
    check_address(address, connect=not ray.is_initialized())  # ray.init waits minutes on a dead address
    paths.check_cache_dir(server_root(config), what=SERVER_FOLDER)  # one line, not a traceback in Ray's logs
    check_replica_folders(server_root(config))
    with _keeping_signal_handlers():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, namespace=NAMESPACE)
    from ray import serve

    try:
        deployed = deploy(config, host=host, port=port, replicas=replicas)
        log.info("serving on http://%s:%d with %d replicas", host, port, deployed.replicas)
        for folder, count in unserved(server_root(config), deployed.replicas):
            log.warning("%s holds %d earlier jobs that no replica serves now (%d replicas); --replicas %d serves "
                        "them", folder, count, deployed.replicas, int(folder.name.removeprefix("replica-")) + 1)
        while True:
            time.sleep(1)
    finally:
        serve.shutdown()
        ray.shutdown()

