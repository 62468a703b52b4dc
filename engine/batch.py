"""Many pictures in one process: planning, recording, warm steps, shape groups (the jobs themselves:
engine/jobs.py; the settings hash, manifest and lock: engine/manifest.py).

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
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import numpy as np

from styleengine import paths
from styleengine.engine import images, masks as spatial
from styleengine.engine.settings import style_roles
# the jobs and the manifest live in their own modules; their names stay importable from here
from styleengine.engine.jobs import (IMAGE_SUFFIXES, OVERRIDES, Job, JobsCheck, JobsRead, check_jobs, chunks,  # noqa: F401
                                     iter_jobs, load_jobs, located, outside, pair_jobs, settings_inputs)
from styleengine.engine.manifest import (LOCK_FILE, MANIFEST, Digests, Finished, Manifest, _jsonable, digest_key,  # noqa: F401
                                         file_digest, locked, place, read_as_hashed, settings_hash, settings_hashes)
from styleengine.engine.plan import check_shapes, make_plan
from styleengine.engine.memory import free_memory, lbfgs_history, lbfgs_pair_bytes, tile_for_budget
from styleengine.engine.loop import non_finite, whole
from styleengine.engine.steps import TargetCache
from styleengine.engine.stylise import (Picture, Settings, batch_key, build_step, check_run, check_weights,
                                       load_init, load_run_weights, stylise_batch)
from styleengine.errors import ConfigError, UserError, WeightsError, first_line

CHUNK = 64  # jobs planned, checked and run at a time (a multiple of MAX_BATCH): a long file starts at once


# ------------------------------------------------------------------ planning

@dataclass
class Planned:
    """A job with its resolved settings, its hash and what to do with it."""

    job: Job
    settings: Settings | None  # None: the settings themselves are bad (status "failed")
    hash: str | None
    status: str  # "run", "skipped" or "failed"
    reason: str | None = None
    weights_sha256: str | None = None  # its weights file's bytes as its hash holds them (None: a word)
    # (role, path, sha256) of each image file it reads, as its hash holds them: checked once they are loaded
    files_sha256: tuple[tuple[str, str, str], ...] = ()


@dataclass
class JobResult:
    """A finished job: the manifest's fields, and the image to write (an "ok" job's, or a failed one's last
    finite image)."""

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
    last_finite: bool = False  # a failed job's last finite image was written to its output
    output_sha256: str | None = None  # of the picture written to its output: what a resumed batch checks it against
    planned: int | None = None  # iterations its settings plan over every scale (serve: what a restart shows)

    def manifest_line(self) -> dict[str, Any]:
        return {"id": self.job.id, "status": self.status, "reason": self.reason, "output": str(self.job.output),
                "settings_hash": self.settings_hash, "seconds": round(self.seconds, 3), "device": self.device,
                "iterations": self.iterations, "losses": self.losses, "distances": self.distances,
                "batch": self.batch, **({"last_finite": True} if self.last_finite else {}),
                **({"output_sha256": self.output_sha256} if self.output_sha256 else {}),
                **({"planned_iterations": self.planned} if self.planned is not None else {})}


def plan(jobs: list[Job], base: Settings, done: Finished | None, digests: Digests | None = None
         ) -> list[Planned]:
    """Each job's settings and hash (its run's plan among what it hashes); "skipped" where its output exists and
    `done` (Manifest.load) has the same hash for it and that output; "failed" where its settings are bad, its plan
    cannot run or a file cannot be read. `digests`: file hashes kept from chunk to chunk. The memory is probed
    once."""
    digests = {} if digests is None else digests
    planned = []
    memory: int | None = None
    for job in jobs:
        try:
            for role, path in {**job.inputs(), "output": job.output}.items():  # an output is named after them
                paths.check_name(path, role)
            settings = job.settings(base)
            settings.validate()
            shapes = [paths.image_shape(p) for p in (job.content, *job.styles)]
            scales = None  # a file whose header cannot be read fails when it is loaded, saying why
            known = [shape for shape in shapes if shape is not None]
            for role, path, shape in zip(("content image", *["style image"] * len(job.styles)),
                                         (job.content, *job.styles), shapes):
                if shape is not None:  # an image too small whatever the size: said as run says it (no advice)
                    paths.check_sides(f"{role} {path}", shape)
            if len(known) == len(shapes):  # refused before `auto` measures for it (tens of seconds, for nothing)
                check_shapes(settings, known[0], known[1:])
            asked, settings = settings, settings.resolved()
            if len(known) == len(shapes):
                run_plan = make_plan(settings, known[0], known[1:], memory=memory)
                memory = run_plan.memory
                scales = run_plan.to_json()["scales"]
            used: dict[str, tuple[str, str]] = {}
            digest = settings_hash(job, settings.as_asked(asked), digests, scales, used)
            alike = None
            held = done.hash_of(job.id, job.output) if done is not None else None
            # a line of another way alike (auto's pick now given, or given then and auto now; a line written before
            # the hash held `auto` as asked holds the way auto picked then)
            if held not in (None, digest) and held in settings_hashes(job, settings, digests, scales,
                                                                      ways=settings.ways_alike(asked)):
                alike = held
        except UserError as e:  # where a jobs file gave it, said: the settings may be the line's own
            planned.append(Planned(job, None, None, "failed", job.said(e)))
            continue
        except OSError as e:
            planned.append(Planned(job, None, None, "failed",
                                   f"cannot read {e.filename}: {e.strerror or type(e).__name__}"))
            continue
        skip = done is not None and any(done.holds(job.id, job.output, d) for d in (digest, alike) if d)
        weights = used.pop("weights file", (None, None))[1]  # checked as loaded
        files = tuple((role, path, sha) for role, (path, sha) in used.items())
        planned.append(Planned(job, settings, digest, "skipped" if skip else "run", weights_sha256=weights,
                               files_sha256=files))
    return planned


LAST_FINITE = "its last finite image is in "  # how a failed job's line says where its last finite image went


def kept_last_finite(output: Path) -> str:
    """How a failed job's line says its last finite image was written."""
    return f"{LAST_FINITE}{output}"


def record(result: JobResult, manifest: Manifest,
           rescue: Callable[[np.ndarray, Path], Path | None] | None = None, out_dir: Path | None = None,
           aside: Callable[[np.ndarray, Path], Path | None] | None = None) -> JobResult:
    """Write a job's image (atomically: an "ok" job's, or a failed one's last finite image), then its manifest
    line. A failed write turns the job into a failed one (its line says why), the image handed to
    `rescue(image, output)` (-> where it saved it, or None; else to `aside`, which only keeps such a picture: a
    server's); so does an output whose folder now leads outside `out_dir`. Returns what was recorded;
    UserError if the manifest cannot be written."""
    saved: Path | None = None  # where a picture its output could not take was put instead
    if result.image is not None:
        try:
            manifest.check_home()  # not into a folder put in --out's place (no lock there, nor earlier lines)
            escaped = outside(result.job.output, out_dir) if out_dir is not None else None
            if escaped is not None:
                raise ConfigError(f"cannot write {result.job.output}: its folder now leads outside --out (to "
                                  f"{escaped}: a symbolic link made during the run)")
            # at the locked folder: one put at its name since the check takes nothing
            written = images.save_image(result.image, result.job.output, within=out_dir,
                                        within_fd=manifest.folder() if out_dir == manifest.path.parent else None)
        except UserError as e:
            keep = rescue or aside
            saved = keep(result.image, result.job.output) if keep is not None else None
            reason = first_line(e) + (f"; saved the image to {saved} instead" if saved is not None else "")
            if result.status == "failed":  # its own reason first (a loss that was not finite)
                reason = f"{result.reason}; {reason}"
            result = dataclasses.replace(result, status="failed", reason=reason)
        else:
            result = dataclasses.replace(result, output_sha256=written)
            if result.status == "failed":
                result = dataclasses.replace(result, reason=f"{result.reason}; {kept_last_finite(result.job.output)}",
                                            last_finite=True)
    try:
        manifest.append({**result.manifest_line(), "file": place(manifest.path.parent, result.job.output)})
    except UserError as e:
        if result.output_sha256 is None:
            if result.image is None:  # no picture to say anything of
                raise
            kept = (f"saved it to {saved} instead" if saved is not None else
                    "nor could a copy be saved; it is lost" if rescue is not None else "no copy was made here")
            raise Unrecorded(f"{first_line(e)}; job {result.job.id}'s picture could not be written to "
                             f"{result.job.output} either", kept, result.job.id, saved) from None
        output = result.job.output
        if not manifest.at_home():  # the name leads into a folder put in its place: nothing is removed by it
            saved = rescue(result.image, output) if rescue is not None and result.image is not None else None
            kept = f"saved a copy to {saved}" if saved is not None else "no copy could be saved"
            raise Unrecorded(f"{first_line(e)}; job {result.job.id}'s picture is in the folder that was at "
                             f"{manifest.path.parent} as it was written, with no line for it", kept, result.job.id,
                             sep="; ") from None
        if rescue is None:  # a server's output is its job's own: no other job's line can claim it
            raise UserError(f"{first_line(e)}; {output} holds job {result.job.id}'s picture, with no line for it"
                            ) from None
        # a picture with no line is taken out of the output, so that no older line there (one from before lines
        # said their picture's hash) passes it for its own; it is kept elsewhere
        with contextlib.suppress(OSError):
            os.unlink(output)
        saved = rescue(result.image, output) if result.image is not None else None
        kept = f"saved it to {saved} instead" if saved is not None else "nor could a copy be saved; it is lost"
        raise Unrecorded(f"{first_line(e)}; job {result.job.id}'s picture is not left in {output} with no line "
                         f"for it", kept, result.job.id) from None
    return result


class Unrecorded(UserError):
    """record's manifest line refused after the job's picture was written: what went wrong (`head`), then where
    the picture went (`kept`), kept apart so that a caller who keeps it itself can say so in its own words."""

    def __init__(self, head: str, kept: str, job_id: str, saved: Path | None = None, sep: str = ": "):
        super().__init__(f"{head}{sep}{kept}")
        self.head, self.job_id, self.kept, self.saved = head, job_id, kept, saved  # saved: a copy made (None: none)


def record_all(results: list[JobResult], manifest: Manifest, note: Callable[[JobResult], None],
               rescue: Callable[[np.ndarray, Path], Path | None], out_dir: Path) -> None:
    """record() each of one optimisation's jobs, `note`-ing each: a line refused for one still records (or
    rescues) the others, which finished with it; then UserError, one line for all."""
    refused: list[UserError] = []
    for result in results:
        try:
            note(record(result, manifest, rescue, out_dir))
        except UserError as e:  # the manifest's: the next line may be refused too, each picture kept all the same
            refused.append(e)
    pictures = [e for e in refused if isinstance(e, Unrecorded)]  # said first: what became of each picture
    if pictures:
        raise UserError(first_line(pictures[0]) + "".join(f"; job {e.job_id}'s too (finished with it): {e.kept}"
                                                          for e in pictures[1:]))
    if refused:
        raise refused[0]


# ------------------------------------------------------------------ running

RANDOM_KEPT = 2  # random networks (one per seed) a Warm keeps: tests and timing use one or two


class Warm:
    """What one process keeps across jobs: the weights, loaded once per (model, weights, seed of random
    weights, convention), and the steps, built once per (model, weights, pooling, content and style layers,
    precision, backend, device, provider). Close it (or use it as a context manager) to free the steps."""

    def __init__(self, settings: Settings | None = None) -> None:
        """settings: the batch's or server's own; their weights file is checked now (check_weights: WeightsError
        before any job) and kept for the jobs that use it, so it is loaded once."""
        self._weights: dict[tuple, Any] = {}
        self._steps: dict[tuple, Any] = {}
        self.steps_built = 0
        self.targets = TargetCache()  # a painting shared by many jobs: its Grams once per size
        if settings is not None and (checked := check_weights(settings)) is not None:
            self._weights[self._key(settings)] = checked

    @staticmethod
    def _key(settings: Settings) -> tuple:
        seed = settings.seed if settings.weights == "random" else None
        # the input convention is the settings' (a job's flags), so it keys the weights as the file does
        return (settings.model, settings.weights, seed, settings.non_strict, settings.convention,
                tuple(settings.convention_changes().items()))

    def weights(self, settings: Settings):
        key = self._key(settings)
        if key not in self._weights:
            if settings.weights == "random":  # one network per seed: a server's requests of many seeds grew it
                self._forget_random(keep=RANDOM_KEPT - 1)
            self._weights[key] = load_run_weights(settings)
        return self._weights[key]

    def _forget_random(self, keep: int) -> None:
        """Drop all but the `keep` newest random networks, and their steps."""
        randoms = [key for key in list(self._weights) if key[1] == "random"]
        for key in randoms[:max(0, len(randoms) - keep)]:
            gone = self._weights.pop(key).sha256
            for step_key in [k for k in self._steps if k[1] == gone]:
                self._steps.pop(step_key).close()

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
    content = images.load_image(job.content, "content image")
    styles = [images.load_image(p, role) for p, role in zip(job.styles, style_roles(job.styles))]
    check_run(settings, content.shape[:2], [s.shape[:2] for s in styles], content_label=f"content image {job.content}",
              style_labels=[f"style image {p}" for p in job.styles])
    init_image = load_init(settings)
    regions = spatial.load(settings, content.shape[:2], [s.shape[:2] for s in styles],
                           [f"style image {p}" for p in job.styles])
    return Picture(content, styles, settings, init_image, regions)


def _read_as_hashed(item: Planned) -> dict[str, bytes]:
    """The bytes of each image file the job reads, read once and checked against its hash (read_as_hashed): a
    file replaced after the plan ran under the old bytes' hash, and the rerun skipped its picture as theirs."""
    return read_as_hashed(item.files_sha256, "after the job was planned", "run the batch again")


def _finished(item: Planned, result: Any, image: np.ndarray, seconds: float, device: str, batch: int) -> JobResult:
    distances = getattr(result, "distances", None)  # the loop's Result may carry style/content distances
    if distances is not None:
        distances = _jsonable(distances)
    last = result.records[-1] if result.records else None
    losses = ({"loss": last.loss, "content": last.content_loss, "style": last.style_loss, "tv": last.tv_loss}
              if last is not None else None)
    if result.stopped == "non-finite loss":  # the last finite image is written, as run writes it
        kept = image if result.iterations else None
        return JobResult(item.job, "failed", non_finite(result.iterations), item.hash, seconds, device,
                         result.iterations, losses, distances, batch, kept)
    return JobResult(item.job, "ok", None, item.hash, seconds, device, result.iterations, losses, distances,
                     batch, image)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a batch: `results` are the jobs that are whole (every iteration ran; the signal came as their
    loop returned), recorded before it stops."""

    def __init__(self, results: list[JobResult]):
        super().__init__()
        self.results = results


def run_batch(items: list[Planned], warm: Warm) -> list[JobResult]:
    """Run planned jobs together (one job: alone) on the warm step: jobs whose images fail their checks
    fail with the one-line reason; the others, if their outputs share one shape, go through stylise_batch
    as one batch (else one by one). Ctrl-C (the loop stopped "interrupted") is raised as Interrupted with the
    jobs that are whole: nothing else of the batch is recorded."""
    results: list[JobResult] = []
    loaded: list[tuple[Planned, Picture]] = []
    for item in items:
        assert item.settings is not None and item.status == "run"
        start = time.perf_counter()
        try:
            with images.reading(_read_as_hashed(item)):  # decoded from the bytes the hash holds
                loaded.append((item, _load(item.job, item.settings)))
        except UserError as e:
            results.append(JobResult(item.job, "failed", item.job.said(e), item.hash,
                                     time.perf_counter() - start, device_name(item.settings)))
    shapes: dict[tuple[int, int], list[tuple[Planned, Picture]]] = {}
    for item, picture in loaded:
        shapes.setdefault(output_shape(item.settings, picture.content.shape[:2]), []).append((item, picture))
    for members in shapes.values():
        parts = [members] if len(members) > 1 and batchable(members[0][0].settings) else [[m] for m in members]
        for chunk in parts:
            try:
                results += _run_together(chunk, warm)
            except Interrupted as e:
                raise Interrupted(results + e.results) from None
    return results


def _run_together(members: list[tuple[Planned, Picture]], warm: Warm) -> list[JobResult]:
    settings = members[0][0].settings
    start = time.perf_counter()
    try:
        weights = warm.weights(settings)
        hashed = members[0][0].weights_sha256
        if hashed is not None and weights.sha256 != hashed:  # replaced between the plan and its first load
            raise WeightsError(f"weights file {settings.weights} changed after the job was planned: its bytes are "
                               f"not those its hash holds; run the batch again")
        out = stylise_batch([picture for _, picture in members], weights=weights,
                            step=warm.step(settings), cache=warm.targets)
    except UserError as e:  # a check that needs the run itself (there are none today beyond _load's)
        return [JobResult(item.job, "failed", first_line(e), item.hash, time.perf_counter() - start,
                          device_name(settings)) for item, _ in members]
    seconds = (time.perf_counter() - start) / len(members)  # a batch's time, shared
    if any(result.stopped == "interrupted" for _, result in out):
        total = settings.total_iterations() if settings is not None else 0
        raise Interrupted([_finished(item, dataclasses.replace(result, stopped=None), image, seconds,
                                     device_name(settings), len(members))
                           for (item, _), (image, result) in zip(members, out)
                           if whole(result, total)])
    return [_finished(item, result, image, seconds, device_name(settings), len(members))
            for (item, _), (image, result) in zip(members, out)]


def output_shape(settings: Settings, content_shape: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The (height, width) of every scale of a run on this content, the last the output's: pictures optimised
    together must agree at each scale (two contents of nearly one aspect can round apart at a coarse one)."""
    return tuple(images.long_side_shape(content_shape[0], content_shape[1], size) for size, _ in settings.scale_plan())


def batchable(settings: Settings) -> bool:
    """Whether jobs with these settings may be optimised together: the torch backend, untiled (a memory budget
    that asks for tiles is checked per shape by batch_size_for); coarse to fine, scale by scale."""
    return settings.backend == "torch" and settings.tile is None


MAX_BATCH = 16  # beyond this a CPU gains nothing and a GPU little (the step is already wide)


def batch_size_for(settings: Settings, shape: tuple[int, int]) -> int:
    """How many jobs of this output shape fit in memory together: the largest B <= MAX_BATCH whose B
    images, taken as one image of B times the pixels (the step's memory grows with pixels), fit untiled by
    tile_for_budget's estimate, with B L-BFGS histories, in the memory budget (else the memory available).
    At least 1."""
    height, width = shape
    loss = settings.loss_config()
    if settings.mem_budget_gib is not None:
        budget = settings.mem_budget_gib
    else:
        from styleengine.engine.autotune import choose

        budget = free_memory(choose(settings, tune=False).settings.device) / 2**30
    lbfgs = settings.optimizer == "lbfgs"
    history = lbfgs_history(settings.lbfgs_history, budget * 2**30, height, width) if lbfgs else 0
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


def groups(items: list[Planned], batch_size: int | None = None) -> list[list[Planned]]:
    """The jobs to run, in batches: jobs with equal batch_key()s and one output shape (by the files'
    headers) go together, up to batch_size (None: batch_size_for the shape); the rest alone. Order: first
    appearance."""
    runnable = [item for item in items if item.status == "run"]
    keyed: dict[Any, list[Planned]] = {}
    for number, item in enumerate(runnable):
        assert item.settings is not None
        shape = paths.image_shape(item.job.content) if batchable(item.settings) and batch_size != 1 else None
        key = ((batch_key(item.settings), output_shape(item.settings, shape)) if shape is not None
               else ("alone", number))
        keyed.setdefault(key, []).append(item)
    out: list[list[Planned]] = []
    for key, members in keyed.items():
        size = batch_size or (batch_size_for(members[0].settings, key[1][-1]) if key[0] != "alone" else 1)
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def run_groups(items: list[Planned], warm: Warm, batch_size: int | None = None
               ) -> Generator[list[JobResult], None, None]:
    """Run the planned jobs whose status is "run", a batch at a time (groups), yielding each batch's jobs as it
    finishes: what one optimisation made, which the caller records together."""
    for members in groups(items, batch_size):
        try:
            done = run_batch(members, warm)
        except Interrupted as e:  # the whole ones are recorded, then the batch stops
            yield e.results
            raise KeyboardInterrupt from None
        yield done


def run_jobs(items: list[Planned], warm: Warm, batch_size: int | None = None) -> Iterator[JobResult]:
    """run_groups, a job at a time."""
    for done in run_groups(items, warm, batch_size):
        yield from done


def unrun(item: Planned) -> JobResult:
    """The JobResult of a job that is not run: skipped, or failed at planning."""
    return JobResult(item.job, item.status, item.reason, item.hash)
