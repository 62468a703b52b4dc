"""`styleengine batch`: many jobs in one process (or on a Ray cluster), a manifest, resumable.

The settings flags are generated from engine/settings.py (cli_settings), as `run`'s; the engine side
is engine/batch.py. Order: (1) the batch's settings and the jobs (a bad
jobs file or flag is one line and exit 1, nothing written); (2) per job,
its settings, its hash and run's file checks (cli_plan.check_files): a job
that fails them, or whose output exists with the same hash, is recorded
now; (3) the rest run, each recorded as it finishes (image, then manifest
line, with signals held back meanwhile and acted on right after). A jobs
file is read twice: once whole for the checks across jobs (before any
work), then a chunk (engine.CHUNK jobs) at a time for (2) and (3), so the
first picture starts at once and memory does not grow with the file; the
second reading is checked across jobs again (a line appended meanwhile).
Ctrl-C, SIGTERM or SIGHUP stops the batch: what finished is recorded, the
same command resumes. Exit 1 if any job failed.
"""
from __future__ import annotations

import contextlib
import os

import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Optional

import typer

from styleengine import paths
from styleengine.cli import signals
from styleengine.engine.images import rescue
from styleengine.cli_plan import check_cache_for, check_files, check_own_files
from styleengine.cli_settings import settings_from, with_settings
from styleengine.engine import batch as engine
from styleengine.engine.settings import BATCH, Settings
from styleengine.errors import ConfigError, SettingError, UserError, first_line, printable

SHOWN_PROBLEMS = 10  # manifest lines that cannot be used, each a warning; more are counted
LONG_MANIFEST = 32 << 20  # bytes of manifest whose read (seconds: each line parsed) is said first


def _jobs(jobs_file: Path | None, contents: Path | None, styles: Path | None, out: Path,
          shared: dict[str, Path], read_to: list[engine.JobsRead]
          ) -> tuple[int, Callable[[], Iterable[engine.Job]], Callable[[Path], bool]]:
    """Every job checked (one pass: a bad one refuses the batch before any work; `shared`: the files every
    job reads; read_to: how far the running pass read the file, once it ends): (how many, a function that gives
    them again, read from the file as they are needed, whether a folder is one a job reads as a folder: a style
    folder, or --contents)."""
    if jobs_file is not None and (contents is not None or styles is not None):
        raise ConfigError("give a jobs file or --contents and --styles, not both")
    if jobs_file is not None:
        check = engine.JobsCheck(out, shared)
        for job in engine.iter_jobs(jobs_file, out):
            check.add(job)
        if not check.count:  # as an empty --contents is: not a summary that names a manifest never written
            raise ConfigError(f"jobs file {jobs_file} holds no jobs")
        return check.count, lambda: _checked_again(jobs_file, out, shared, read_to), \
            lambda folder: check.style_folder(folder) is not None
    if contents is None or styles is None:
        raise ConfigError("give a jobs file (.jsonl or .csv), or --contents DIR and --styles DIR")
    for folder, flag in ((contents, "--contents"), (styles, "--styles")):
        # the outputs would be inputs of the next run, which then refuses them: a batch that never resumes
        if folder.is_dir() and os.path.samefile(folder, out):
            raise ConfigError(f"--out is the {flag} folder {folder}: the outputs would become inputs of the next "
                              f"run; give another --out")
    pairs = engine.pair_jobs(contents, styles, out, shared)
    # a picture rescued into either folder would be read by the next run: as a style, or as a job of its own
    return len(pairs), lambda: pairs, lambda folder: any(
        paths.inside(folder, read) and paths.inside(read, folder) for read in (contents, styles))


def _checked_again(jobs_file: Path, out: Path, shared: dict[str, Path], read_to: list[engine.JobsRead]
                   ) -> Iterator[engine.Job]:
    """The jobs as they are read for running, checked across jobs again: a line appended (or changed) since the
    first reading would otherwise run unchecked (a jobs file used as a queue). read_to: how far it was read."""
    check = engine.JobsCheck(out, shared)
    for job in engine.iter_jobs(jobs_file, out, read_to):
        check.add(job)
        yield job


def _check(item: engine.Planned, out: Path) -> engine.Planned:
    """run's checks of the files a job reads and writes; a failure fails the job."""
    if item.status != "run":
        return item
    job = item.job
    try:
        escaped = engine.outside(job.output, out)
        if escaped is not None:  # mkdir would follow the link and make folders out there
            raise ConfigError(f"output {job.output} is outside --out {out} (through a symbolic link to {escaped}, "
                              f"made after the jobs were checked)")
        try:  # no link followed on the way: one made since the line above would lead mkdir out of --out
            paths.make_confined_folder(job.output.parent, out)
        except OSError as e:
            raise ConfigError(f"cannot make folder {job.output.parent}: {e.strerror or e}") from None
        # a link at the output's name is replaced, never written through: the writes stay in --out
        check_files(content=job.content, styles=list(job.styles), output=job.output, settings=item.settings,
                    trace=None, through=False)
    except UserError as e:
        return engine.Planned(job, item.settings, item.hash, "failed", first_line(e))
    return item


def _batch(
    out: Annotated[Path, typer.Option("--out", help="Folder for the outputs and manifest.jsonl (made if missing).",
                                      show_default=False, parser=paths.named_folder("--out"))],
    jobs: Annotated[Optional[Path], typer.Argument(parser=paths.named_file("the jobs file path"),
        help="Jobs file: .jsonl (one object a line) or .csv (a header row): content, styles (';'-separated), "
             "output (under --out), id, and per-job settings (size, iters, content_weight, style_weight, blend, "
             "...; see README).", show_default=False)] = None,
    contents: Annotated[Optional[Path], typer.Option(
        "--contents", help="Folder of content images: every one with every --styles image.",
        parser=paths.named_folder("--contents"))] = None,
    styles: Annotated[Optional[Path], typer.Option("--styles", help="Folder of style images.",
                                                   parser=paths.named_folder("--styles"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Jobs of one shape optimised together (torch backend; default: as many as the "
                             "memory budget or free memory allows, up to 16; 1: one by one).")] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Run on a Ray cluster: auto (the one this machine belongs to, else a local one) or its "
                      "address. Needs styleengine[ray].")] = None,
    **flags: Any,
) -> None:
    """Stylise every job of JOBS (or every --contents image with every --styles image) into --out."""
    from styleengine.console import Console

    console = Console(stderr=True, markup=False)
    settings = settings_from(flags, BATCH)
    settings.validate()
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if ray is not None:
        from styleengine.engine.batch_ray import check_address, import_ray

        # a clear error now if Ray is not installed or nothing answers, before --out is made or locked
        check_address(ray, connect=not import_ray().is_initialized())
    paths.check_folder(out, "--out")  # mkdir would only say "File exists"
    from styleengine.console import warnings_on

    # a start refused here leaves no folder behind; the engine's warnings are "warning:" lines, escaped
    with paths.made_folder(out, "the output folder"), warnings_on(console):
        _start(out, jobs, contents, styles, settings, ray, batch_size, console)


def _start(out: Path, jobs: Path | None, contents: Path | None, styles: Path | None, settings: Settings,
           ray: str | None, batch_size: int | None, console) -> None:
    """Check the manifest and every job across the file, then lock --out and run the jobs a chunk at a time."""
    manifest = engine.Manifest(out / engine.MANIFEST)
    manifest.check_own("--out")
    from styleengine.cli_video import FrameStore

    # each lock is blind to the other: the two undid each other's pictures
    FrameStore.refuse_inside(out, f"--out {out} is", "the video would move the batch's pictures aside as not its "
                             "frames", "give another --out")
    paths.check_writable(manifest.path, "manifest")
    if jobs is not None:  # the batch appends to its manifest: a jobs file there would be changed, then unreadable
        from styleengine.engine.manifest import LOCK_FILE

        for written in (manifest.path, out / LOCK_FILE):
            if written.is_file() and jobs.is_file() and os.path.samefile(jobs, written):
                raise ConfigError(f"jobs file {jobs} is {written}, which the batch writes; give the jobs in "
                                  f"another file")
    shared = engine.settings_inputs(settings.init, settings.weights,  # the run's words: "content mask 1 m.png"
                                    content_masks=settings.content_masks, style_masks=settings.style_masks)
    if jobs is None:  # every job of --contents with --styles has one style image: a count for more fits none
        from styleengine.engine.plan import check_counts

        why = " (each job of --contents with --styles has one style image)"
        try:
            check_counts(settings, 1)
        except SettingError as e:
            raise SettingError(e.setting, e.label, e.problem + why) from None
        except ConfigError as e:
            raise ConfigError(f"{e}{why}") from None
    # every job reads them: one line now, not a failure per job, in the run's order (its counts, the init and
    # the masks read whole, then the rest)
    check_own_files(settings, decode=True)
    paths.check_inputs(shared)
    read_to: list[engine.JobsRead] = []  # how far the running pass read the jobs file
    total, job_source, style_folder = _jobs(jobs, contents, styles, out, shared, read_to)
    check_cache_for(settings)
    # the batch's own weights file, loaded now: one it cannot use is one line, not every job's failure
    if ray is None:
        warm = engine.Warm(settings)  # the first job uses them as loaded here
    else:  # the actors load their own
        from styleengine.engine.stylise import check_weights

        check_weights(settings)
        warm = None
    with engine.locked(out) as lock:
        manifest.pin(lock)
        with contextlib.suppress(OSError):  # one resumed many times reads for seconds: said, not silent
            size = os.stat(manifest.path).st_size
            if size >= LONG_MANIFEST:
                console.print(printable(f"reading {manifest.path} ({size / 2**20:.0f} MiB) for the jobs done"),
                              soft_wrap=True, highlight=False, markup=False)
        done, problems = manifest.load()
        for problem in problems[:SHOWN_PROBLEMS]:
            console.print(f"warning: {problem}", soft_wrap=True, highlight=False, markup=False)
        if len(problems) > SHOWN_PROBLEMS:  # a log redirected into it by mistake: a count, not a flood
            console.print(f"warning: and {len(problems) - SHOWN_PROBLEMS} more lines of {manifest.path} that cannot "
                          f"be used; skipped", soft_wrap=True, highlight=False, markup=False)
        digests: engine.Digests = {}
        told = "auto" not in (settings.backend, settings.device, settings.provider, settings.precision, settings.conv)

        def planned() -> Iterator[list[engine.Planned]]:
            nonlocal told
            for chunk in engine.chunks(job_source(), engine.CHUNK):
                items = [_check(item, out) for item in engine.plan(chunk, settings, done, digests)]
                first = next((item for item in items if item.settings is not None), None)
                if not told and first is not None:
                    from styleengine.engine.autotune import choose

                    # told as the first job resolved it (planning did), not for --weights no job may use;
                    # a job that sets --size or its own weights resolves on its own
                    console.print(f"auto: {choose(first.job.settings(settings)).why}", soft_wrap=True,
                                  highlight=False, markup=False)
                    told = True
                yield items

        # a rescue in a job's style folder would be read as a style by the next run: the temp folder then
        try:
            _run(planned(), total, manifest, out, style_folder, ray, warm, batch_size,
                 settings.weights == "random", console)
        except typer.Exit as e:
            if e.exit_code == 1:  # a job failed: the file's news is said all the same
                _since_read(jobs, read_to, console)
            raise
    _since_read(jobs, read_to, console)


def _since_read(jobs: Path | None, read_to: list[engine.JobsRead], console: Any) -> None:
    """A warning where the jobs file changed after the batch read it to its end (a queue's lines: a short file is
    read at the start), as its summary's last word."""
    said = read_to[-1].since(jobs) if jobs is not None and read_to else None
    if said is not None:
        console.print(f"warning: {jobs} {said}", soft_wrap=True, highlight=False, markup=False)


def _run(chunks: Iterable[list[engine.Planned]], total: int, manifest: engine.Manifest, out: Path,
         style_folder: Callable[[Path], bool], ray: str | None, warm: engine.Warm | None, batch_size: int | None,
         untrained: bool, console) -> None:
    """Per chunk of planned jobs: record what is not run, run the rest, record each as it finishes
    (signals held during a write and acted on right after it; a picture its output cannot take goes to the
    `out`, then the temp folders, never a folder a job reads)."""
    if untrained:
        console.print("WARNING: --weights random: the network is untrained, so the outputs are NOT "
                      "stylisations (random weights are for tests and timing only)", style="bold red", soft_wrap=True)

    counts = {"ok": 0, "skipped": 0, "failed": 0}

    def note(result: engine.JobResult) -> None:
        nonlocal total
        counts[result.status] += 1
        done = sum(counts.values())
        total = max(total, done)  # a queue's lines appended after the count: not "[67/66]"
        detail = (f"{result.seconds:.1f} s" + (f", batch of {result.batch}" if result.batch > 1 else "")
                  if result.status == "ok" else result.reason or "same settings hash, output exists")
        console.print(f"[{done}/{total}] {result.status} {result.job.id} ({detail})", soft_wrap=True,
                      highlight=False, markup=False)

    def save_elsewhere(image, output: Path) -> Path | None:
        if not manifest.at_home() and not manifest.lock_removed():  # not into a folder put in --out's place
            return rescue(image, output, [], avoid=style_folder)
        return rescue(image, output, [out], avoid=style_folder)

    def interrupted(signum: int | None = None) -> None:
        """The signal's line, said once: before Ray's shutdown of a cluster it started (some seconds), and as it
        comes while ray.init holds it (`signum`)."""
        if signals.reported:
            return
        if signum is not None:
            signals.early(signum)
        left = total - sum(counts.values())
        recorded = sum(counts.values())
        # another folder at --out now (one gone is said below; one that lost only its lock file resumes)
        replaced = not manifest.at_home() and not manifest.lock_removed() and os.path.lexists(out)
        kept = (f"{out} was replaced during the run by another folder or a link; the lines of the {recorded} jobs "
                f"done went with the folder that was there" if replaced and recorded else
                f"{out} was replaced during the run by another folder or a link, before any job was recorded"
                if replaced else
                f"every job is recorded in {manifest.path}" if not left else  # nothing to resume
                f"{manifest.path} is not the manifest written (replaced during the run); the lines of the "
                f"{recorded} jobs done went with the file that was there"
                if recorded and os.path.lexists(manifest.path) and not manifest.holds_its_lines() else
                f"the same command resumes ({manifest.path} records what is done)"
                if manifest.path.is_file() and manifest.path.stat().st_size else
                f"{manifest.path} was emptied during the run, with the lines of the {recorded} jobs done"
                if recorded and manifest.path.is_file() else
                f"{manifest.path} is not there any more (moved or removed during the run) with the lines of the "
                f"{recorded} jobs done" if recorded else
                "nothing was recorded yet; the same command starts again")
        print(printable(f"error: interrupted ({signals.name}) with {left} of {total} jobs left; {kept}"),
              file=sys.stderr)
        signals.reported = True  # after the line: one that failed inside ray.init is said again after it

    try:
        if ray is not None:  # one runner (its actors) for every job: planned whole
            chunks = [[item for chunk in chunks for item in chunk]]
        for planned in chunks:
            for item in planned:
                if item.status != "run":
                    with signals.shielded():
                        note(engine.record(engine.unrun(item), manifest))
            if warm is None:
                from styleengine.engine.batch_ray import run_jobs_ray

                finished = run_jobs_ray(planned, ray, batch_size=batch_size, on_interrupt=interrupted)
            else:
                finished = engine.run_groups(planned, warm, batch_size=batch_size)
            try:
                for results in finished:  # one optimisation's jobs: a signal or a refused line loses none of them
                    with signals.shielded():
                        engine.record_all(results, manifest, note, save_elsewhere, out)
            except KeyboardInterrupt:
                interrupted()
                raise
            finally:  # now, not at the interpreter's exit (Ray's shutdown then printed a traceback)
                finished.close()
    except KeyboardInterrupt:
        interrupted()
        raise typer.Exit(signals.exit_code) from None
    except UserError:  # a write that failed (a full disk) with a signal held through it: both are said
        if signals.received is not None:
            interrupted()
        raise
    else:  # every job is recorded: a signal from here on (the summary, the lock let go) stops nothing
        if signals.received is not None:  # one put off and not raised yet (dropped in a finalizer, or an import's)
            interrupted()
            raise typer.Exit(signals.exit_code)
        signals.finish()
    finally:
        if warm is not None:
            warm.close()
    console.print(f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; manifest "
                  f"{manifest.path}", soft_wrap=True, highlight=False)
    if counts["failed"]:
        raise typer.Exit(1)


batch = with_settings(_batch, BATCH)
