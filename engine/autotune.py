"""`auto` for every choice a user leaves open (backend, precision, convolutions), measured on this machine.

capability.py says what may run here; this module says which of it is
fastest here. On first use for a machine (engine/machine.fingerprint: CPU
model and kernel flags, threads, GPU, library versions), model, pooling,
place and size class, a short trial (engine/trial.py: interleaved rounds
within a share of a default run; a reduced precision must keep the look)
picks the fastest candidate, keeps the choice in the user cache and
reuses it. Explicit settings always win: only what is `auto` is a candidate. A record that does not parse or
whose key differs is measured again, never trusted.

STYLEENGINE_TUNE=off resolves by rule (capability.rule) without measuring:
the tests do, and so can a user who wants the same path on every machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from styleengine import paths
from styleengine.engine import capability
from styleengine.engine.machine import fingerprint, probe
from styleengine.choices import MAX_SIDE, WEIGHT_WORDS
from styleengine.engine.settings import Settings
from styleengine.engine.trial import Trial, measure_candidates, pick_fastest

from styleengine.errors import ConfigError, UnavailableError, UserError, first_line
from styleengine.units import fmt_time

log = logging.getLogger(__name__)

TUNE_VERSION = 5  # bump when the trial or the record changes meaning: older records are measured again
RECORD_NAME = "tune.json"
SIZE_CLASSES = (128, 256, 512, 1024, 2048)  # a run is tuned at the class nearest its size (log scale)
# the trial's long side at most (3:4): the ranking moves with the size (on a 2-core EPYC ORT led torch fp32 at
# 192x256 and trailed at 384x512; bf16 trailed Winograd by 6% at 512 and 12% at 1024), so a class is timed at its
# own size; above 1024 px runs start coarse-to-fine at 512-724 px and share the 1024 px trial
TRIAL_SIDE = {"cpu": 1024, "cuda": 1024}


@dataclass(frozen=True)
class Race:
    """What a run races in its first steps (engine/race.py): the settings as asked (auto left open), where they
    run, the open candidates, and the one in use until a race or the record says otherwise."""

    settings: Settings
    where: capability.Placement
    options: tuple[tuple[str, str, str], ...]
    first: tuple[str, str, str]


@dataclass(frozen=True)
class Choice:
    """The settings with every `auto` made concrete, and one line saying why."""

    settings: Settings
    why: str
    trials: tuple[Trial, ...] = ()
    measured: bool = False  # by a trial (now or cached), not by rule
    cached: bool = False  # the trial was read from the record, not run now
    key: dict = field(default_factory=dict)
    kept: bool = False  # the trial's pick is in the record (read from it, or written to it now)
    unkept: str = ""  # why a measured pick could not be written to the record
    # race=True and no record for the run's size: the candidates a run races in its first steps (engine/race.py)
    race: Race | None = None


Measure = Callable[[Settings, capability.Placement, list[tuple[str, str, str]], int], list[Trial]]


def tuning_enabled() -> bool:
    """STYLEENGINE_TUNE read as a yes/no setting is; ConfigError for another word (`bogus` and `false` meant on)."""
    value = os.environ.get("STYLEENGINE_TUNE", "").strip().lower()
    if value in ("", "on", "1", "yes", "true"):
        return True
    if value in ("off", "0", "no", "false", "rules"):
        return False
    raise ConfigError(f"STYLEENGINE_TUNE={os.environ['STYLEENGINE_TUNE']!r}: use on (measure what auto picks, the "
                      f"default) or off (pick by rule)")


def size_class(size: int) -> int:
    """The SIZE_CLASSES entry nearest `size` on a log scale."""
    return min(SIZE_CLASSES, key=lambda c: abs(math.log2(size / c)))


def trial_side(size: int, where: str) -> int:
    return min(size_class(size), TRIAL_SIDE[where])


def record_path() -> Path:
    from styleengine.paths import cache_root

    return cache_root() / RECORD_NAME


# one resolution per settings (and race or not) a process: run, stylise and batch ask alike
_memo: dict[tuple[Settings, bool], Choice] = {}


def choose(settings: Settings, height: int | None = None, width: int | None = None, *, refresh: bool = False,
           measure: Measure | None = None, machine: capability.Machine | None = None,
           tune: bool | None = None, race: bool = False) -> Choice:
    """What `auto` resolves to for these settings here (height, width: unused, the size class comes from
    settings.size). refresh: measure again even if a record exists. measure, machine, tune: stand-ins for
    the trial, the probe and STYLEENGINE_TUNE (tests, --dry-run). race: where the record has no entry for
    the run's size, no trial now: the Choice carries the Race a run takes in its first steps instead (a
    single run; engine/race.py), its settings the pick by rule until then."""
    plain = measure is None and machine is None and tune is None
    if not refresh and plain and (settings, race) in _memo:
        return _memo[settings, race]
    choice = _choose(settings, refresh=refresh, measure=measure or measure_candidates, machine=machine or probe(),
                     tune=tuning_enabled() if tune is None else tune, race=race)
    if plain:
        _memo[settings, race] = choice
    log.info("auto: %s", choice.why)
    return choice


def open_options(settings: Settings, machine: capability.Machine
                 ) -> tuple[capability.Placement, list[tuple[str, str, str]]]:
    """Where these settings run and the (backend, precision, conv) candidates left open there; ConfigError
    (or UnavailableError) when nothing can run what they ask. Torch-free: a dry run asks the same."""
    device = settings.devices[0] if settings.devices else settings.device  # a spread run lives on the first
    try:
        where = capability.place(settings.backend, device, settings.provider, machine)
    except UnavailableError:
        if not settings.devices:
            raise
        raise UnavailableError(f"--devices {','.join(settings.devices)} needs NVIDIA GPUs, and torch sees no CUDA "
                               f"device here; drop --devices") from None  # not "--device cuda:0": it was not given
    torch_only = settings.torch_only()
    if settings.backend != "auto":
        capability.check(settings.backend, where.place, settings.precision, settings.conv, machine,
                         torch_only=torch_only)
    options = capability.candidates(settings.backend, where.place, settings.precision, settings.conv, machine,
                                    torch_only=torch_only)
    if settings.backend == "auto":  # a backend whose provider is missing here is no candidate
        options = [o for o in options if o[0] != "ort" or where.provider in machine.ort_providers]
    if not options:
        reasons = [capability.refusal(b, where.place, settings.precision, settings.conv, machine,
                                      torch_only=torch_only) or
                   f"ONNX Runtime's {where.provider} provider is not available here" for b in capability.AUTO_BACKENDS]
        raise ConfigError(capability.no_backend(settings.precision, settings.conv, reasons))
    return where, options


def by_rule(settings: Settings, where: capability.Placement, options: list[tuple[str, str, str]],
            machine: capability.Machine) -> tuple[str, str, str]:
    """The pick without a trial: the only option, else the torch backend (the reference, no export) by rule."""
    b, p, c = options[0]
    if settings.backend == "auto" and any(o[0] == "torch" for o in options):
        b = "torch"
        p, c = capability.rule(b, where.place, settings.precision, settings.conv, machine)
    return b, p, c


def _choose(settings: Settings, *, refresh: bool, measure: Measure, machine: capability.Machine, tune: bool,
            race: bool = False) -> Choice:
    where, options = open_options(settings, machine)
    concrete = dataclasses.replace(settings, device=where.device, provider=where.provider)
    if len(options) == 1 or not tune:
        b, p, c = by_rule(settings, where, options, machine)
        reason = "the only option" if len(options) == 1 else "by rule (STYLEENGINE_TUNE=off)"
        return Choice(_apply(concrete, b, p, c, where), f"{b} {p} {c} on the {where.place}: {reason}")
    key = _key(settings, where)
    cached = None if refresh else _read(key, options)
    if race:  # each scale's size class is looked up or raced by the run itself (engine/race.py)
        first = cached[1] if cached is not None else by_rule(settings, where, options, machine)
        why = _why(first, cached[0], where, cached=True) if cached is not None else (
            f"racing {', '.join(' '.join(o) for o in options)} in the run's first steps at each size not measured "
            f"here yet, the fastest kept for later runs (first: {' '.join(first)}, by rule)")
        return Choice(_apply(concrete, *first, where), why, cached[0] if cached else (), cached is not None,
                      cached is not None, key, cached is not None, race=Race(settings, where, tuple(options), first))
    if cached is not None:
        trials, pick = cached
        return Choice(_apply(concrete, *pick, where), _why(pick, trials, where, cached=True), trials, True, True,
                      key, True)
    started = time.perf_counter()
    trials = tuple(measure(settings, where, options, trial_side(settings.size, where.place)))
    pick = pick_fastest(trials)
    log.info("auto: trial of %d candidates took %.1f s", len(options), time.perf_counter() - started)
    problem = _keep(key, trials, pick)
    return Choice(_apply(concrete, *pick, where), _why(pick, trials, where, cached=False), trials, True, False, key,
                  not problem, unkept=problem)


def _apply(settings: Settings, backend: str, precision: str, conv: str, where: capability.Placement) -> Settings:
    provider = where.provider if backend != "torch" else where.place
    return dataclasses.replace(settings, backend=backend, precision=precision, conv=conv, device=where.device,
                               provider=provider)


MEASURED_AT = "measured at"  # the note of a trial whose figures were timed at a smaller class (race._inherit)


def _why(pick: tuple[str, str, str], trials: tuple[Trial, ...], where: capability.Placement, *, cached: bool) -> str:
    chosen = next(t for t in trials if (t.backend, t.precision, t.conv) == pick)
    others = [t for t in trials if t is not chosen]
    parts = [f"{t.label} {_ratio(t, chosen)}" for t in others]
    source = "measured earlier here" if cached else "measured now"
    provider = f" ({where.provider} provider)" if pick[0] != "torch" and where.place != "cpu" else ""
    # a pick carried up from a smaller class: its figure is that class's, and the line says which
    at = f" {chosen.note.removeprefix('measured ')}" if chosen.note.startswith(MEASURED_AT) else ""
    text = (f"{chosen.label} on the {where.place}{provider}: "
            f"fastest valid, {fmt_time(chosen.median)}/step{at} ({source}")
    return text + (f"; {', '.join(parts)})" if parts else ")")


def _ratio(trial: Trial, chosen: Trial) -> str:
    if trial.status in ("skipped", "failed"):
        return f"{trial.status}: {trial.note}" if trial.note else trial.status
    if not trial.seconds:
        return "not timed"
    return f"{trial.median / chosen.median:.2f}x"


# --- the record ---

def _key(settings: Settings, where: capability.Placement) -> dict:
    """What a measured choice depends on: the machine, the model and what the user left open."""
    return {**_run_key(settings, where), "machine": fingerprint()}


def _run_key(settings: Settings, where: capability.Placement) -> dict:
    """The key without the machine (which needs torch to tell)."""
    return {"version": TUNE_VERSION, "model": settings.model, "pooling": settings.pooling,
            "weights": _weights_kind(settings.weights), "trial_side": trial_side(settings.size, where.place),
            "place": where.place, "provider": where.provider, "backend": settings.backend,
            "precision": settings.precision, "conv": settings.conv,
            "layers": [list(settings.content_layers), list(settings.style_layers)]}


def _weights_kind(weights: str) -> str:
    """Speed does not depend on the weights' values, the look might: a file is named by its content's hash."""
    if weights in WEIGHT_WORDS:
        return weights
    from styleengine.paths import file_sha256

    try:
        return file_sha256(Path(weights).expanduser())
    except OSError:
        return weights


def _key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


_DAMAGE_SAID: set[tuple[str, str]] = set()  # (record, what is wrong) already warned of in this process


def _damaged(path: Path, what: str, then: str = "measuring again") -> dict:
    """Warn of a damaged record once a process (a run reads it at every scale and for every candidate)."""
    said = (str(path), what)
    (log.debug if said in _DAMAGE_SAID else log.warning)("tuning record %s %s: %s", path, what, then)
    _DAMAGE_SAID.add(said)
    return {}


def _load_all() -> dict:
    """The whole record: {"entries": {id: entry}, "accounts": {id: account}}, empty when absent or damaged."""
    path = record_path()
    if path.is_symlink():  # a record of ours is a file we wrote: never read, nor written, through a link
        return _damaged(path, "is a symbolic link, not the file a run writes")
    if path.exists() and not path.is_file():  # a FIFO would block the read until a writer came
        return _damaged(path, paths.not_a_file(path) or "is not a file")
    try:
        data = json.loads(paths.read_regular(path))
    except (FileNotFoundError, NotADirectoryError):  # none yet, or no cache folder (the write says why)
        return {}
    except (OSError, ValueError, RecursionError) as e:
        return _damaged(path, f"is unreadable ({first_line(e)})")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        return _damaged(path, "has an unknown shape")
    if not isinstance(data.get("accounts", {}), dict):
        data["accounts"] = {}
    return data


def _load_record() -> dict:
    return _load_all().get("entries", {})


STATUSES = ("ok", "dropped", "skipped", "failed")
# past these a figure is no measurement of this machine but damage: a step, and all the runs of an account
STEP_S_AT_MOST = 86_400.0  # a day a step
ACCOUNT_S_AT_MOST = 1e9  # about 32 years of runs
DAMAGED = (KeyError, TypeError, ValueError, OverflowError, ConfigError)  # what reading a damaged record raises

Option = tuple[str, str, str]  # (backend, precision, conv)


def _seconds(value: object, what: str, at_most: float, *, zero: bool = False) -> float:
    """A figure as a trial or an account writes it, a JSON number (never a text or a bool: no float() of
    "1e6"), finite, positive (or zero), at most `at_most`; ValueError otherwise (OverflowError past float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number: {value!r:.60}")
    number = float(value)
    if not (math.isfinite(number) and (number >= 0 if zero else number > 0) and number <= at_most):
        raise ValueError(f"{what} out of range: {value!r:.60}")
    return number


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a text: {value!r:.60}")
    return value


def _option(value: object, what: str) -> Option:
    """A (backend, precision, conv) as the record writes it: a list of three texts."""
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{what} is not a backend, precision and conv: {value!r:.60}")
    return value[0], value[1], value[2]


def _trials(entry: dict) -> tuple[Trial, ...]:
    """A record entry's trials; ValueError (or KeyError, TypeError, OverflowError) when they are not what a trial
    writes: texts, a known status, every seconds figure a number, finite, positive and under a day."""
    if not isinstance(entry["trials"], list):
        raise ValueError("its trials are not a list")
    trials = []
    for t in entry["trials"]:
        b, p, c = _option([t["backend"], t["precision"], t["conv"]], "a trial")
        if not isinstance(t["seconds"], list):
            raise ValueError(f"{b} {p} {c}'s seconds are not a list")
        seconds = tuple(_seconds(s, f"{b} {p} {c}'s seconds", STEP_S_AT_MOST) for s in t["seconds"])
        trials.append(Trial(b, p, c, seconds, _text(t["status"], "a status"), _text(t.get("note", ""), "a note")))
        if trials[-1].status not in STATUSES:
            raise ValueError(f"{trials[-1].label} has an unknown status {trials[-1].status!r:.60}")
    return tuple(trials)


def _finished(entry: dict, options: list[Option] | tuple[Option, ...] | None) -> tuple[tuple[Trial, ...], Option]:
    """A finished measurement's trials and pick; one of DAMAGED when it is not what a trial writes, its pick is
    not the fastest of its own figures or not among `options` (what may run here now)."""
    trials = _trials(entry)
    pick = _option(entry["pick"], "its pick")
    if not any((t.backend, t.precision, t.conv) == pick for t in trials):
        raise ValueError("its pick is not one of its candidates")
    if pick != pick_fastest(trials):
        raise ValueError("its pick is not the fastest of its own figures")
    if options is not None and pick not in options:
        raise ValueError(f"its pick {' '.join(pick)} cannot run here")
    return trials, pick


def _partial(entry: dict) -> bool:
    """Whether a record entry is a race carried over; ValueError (damaged) unless it says so as a race writes."""
    flag = entry.get("partial", False)
    if not isinstance(flag, bool):
        raise ValueError(f"its partial {flag!r:.40} is not true or false")
    return flag


def _read(key: dict, options: list[Option] | tuple[Option, ...] | None = None
          ) -> tuple[tuple[Trial, ...], Option] | None:
    """A finished measurement's trials and pick for `key`; None when there is none, it is a race carried over
    (_read_partial) or it is damaged (_finished)."""
    entry = _load_record().get(_key_id(key))
    try:
        if entry is None or entry["key"] != key or _partial(entry):
            return None
        return _finished(entry, options)
    except DAMAGED as e:
        _damaged(record_path(), f"entry for {key.get('trial_side')} px is damaged ({e})")
        return None


@dataclass(frozen=True)
class Partial:
    """A race a run could not finish within its share (engine/race.py): what it measured, and the candidates
    a later run races on (the others' verdicts stand)."""

    trials: tuple[Trial, ...]
    racing: tuple[tuple[str, str, str], ...]
    pixels: int  # the scale's the trials were timed at
    pick: tuple[str, str, str]  # what that run used from then on


def _read_partial(key: dict, options: list[Option] | tuple[Option, ...] | None = None) -> Partial | None:
    """A race carried over for `key`; None when there is none or it is damaged: not what a race writes (its
    pick a candidate it timed, what it races among its candidates, a scale's pixels), or naming a candidate
    not among `options` (what may run here now: a later run would build it, or pick it by its figure)."""
    entry = _load_record().get(_key_id(key))
    try:
        if entry is None or entry["key"] != key or not _partial(entry):
            return None
        trials = _trials(entry)
        names = {(t.backend, t.precision, t.conv) for t in trials}
        if not isinstance(entry["racing"], list):
            raise ValueError("what it races is not a list")
        racing = tuple(_option(o, "a raced candidate") for o in entry["racing"])
        if not set(racing) <= names:
            raise ValueError("it races a candidate it does not list")
        pixels = entry["pixels"]
        if isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 < pixels <= MAX_SIDE ** 2:
            raise ValueError(f"its pixels {pixels!r:.60} are no scale's")
        pick = _option(entry["pick"], "its pick")
        if not any((t.backend, t.precision, t.conv) == pick and t.seconds and t.status in ("ok", "dropped")
                   for t in trials):
            raise ValueError("its pick is not one of the candidates it timed")
        if options is not None and not names <= set(options):
            raise ValueError(f"it names {', '.join(' '.join(o) for o in sorted(names - set(options)))}, which "
                             f"cannot run here")
    except DAMAGED as e:
        _damaged(record_path(), f"entry for {key.get('trial_side')} px is damaged ({e})")
        return None
    return Partial(trials, racing, pixels, pick)


def _write(key: dict, trials: tuple[Trial, ...], pick: tuple[str, str, str], partial: Partial | None = None
           ) -> bool:
    """Keep a finished measurement (or with `partial`, a race to carry over) in the record; False when it could
    not be written (it is measured again next time; the run goes on)."""
    return not _keep(key, trials, pick, partial)


def _keep(key: dict, trials: tuple[Trial, ...], pick: tuple[str, str, str], partial: Partial | None = None
          ) -> str:
    """_write, saying why not ("" when kept)."""
    entry: dict = {"key": key, "pick": list(pick), "trials": [dataclasses.asdict(t) for t in trials],
                   "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if partial is not None:
        entry.update(partial=True, racing=[list(o) for o in partial.racing], pixels=partial.pixels)
    return _update(lambda data: data["entries"].__setitem__(_key_id(key), entry))


def _update(change: Callable[[dict], None]) -> str:
    """Read, change and write the record under its lock: two processes (a run and `tune`, two runs) each writing
    what they read lost the other's entries."""
    path = record_path()  # no onnx import here: a run's last steps hold a signal through it (0.5 s)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _record_lock(path):
            data = _load_all()
            data = {"version": TUNE_VERSION, "entries": data.get("entries", {}), "accounts": data.get("accounts", {})}
            change(data)
            paths.atomic_write(path, json.dumps(data, indent=1).encode(), through=False)
    except (OSError, UserError) as e:  # a choice not kept is measured again next time; the run goes on
        problem = first_line(e)
        if isinstance(e, OSError) and e.filename:  # its lock's, or the record's own (named by the line already)
            problem = f"{e.strerror or e}" if os.fspath(e.filename) == os.fspath(path) else \
                f"{e.filename}: {e.strerror or e}"
        problem = paths.in_the_way(path.parent) or problem  # a cache folder that is a file: mkdir said "File exists"
        if str(path) not in _SAID:  # a run writes its race, then its pick: one warning, not two
            _SAID.add(str(path))
            log.warning("could not keep the tuning record in %s: %s; set STYLEENGINE_CACHE_DIR to a writable folder "
                        "(later runs will measure again)", path, problem)
        return problem
    return ""


_SAID: set[str] = set()  # the records whose write failure this process has warned of


@contextlib.contextmanager
def _record_lock(path: Path) -> Iterator[None]:
    """The record's lock (`.tune.json.lock` beside it), held for one read-change-write."""
    with paths.lock_file(path.with_name(f".{path.name}.lock")) as f:
        paths.try_lock(f, blocking=True)
        yield


# --- what racing has cost the runs here (engine/race.py holds it to a share of their time) ---

@dataclass(frozen=True)
class Account:
    """Across the runs with these settings here: their seconds, what racing cost them, and each reduced
    precision's look verdict (None: it keeps the look; a string: why not)."""

    run_s: float = 0.0
    race_s: float = 0.0
    looks: dict[str, str | None] = field(default_factory=dict)


def _account_key(key: dict) -> dict:
    return {k: v for k, v in key.items() if k != "trial_side"}  # shared by a run's size classes


def read_account(key: dict) -> Account:
    return _account(_load_all(), key)


def _account(data: dict, key: dict) -> Account:
    found = data.get("accounts", {}).get(_key_id(_account_key(key)))
    try:
        if found is None or found["key"] != _account_key(key):
            return Account()
        run_s = _seconds(found["run_s"], "its runs' seconds", ACCOUNT_S_AT_MOST, zero=True)
        race_s = _seconds(found["race_s"], "its racing's seconds", ACCOUNT_S_AT_MOST, zero=True)
        if race_s > run_s:
            raise ValueError("its racing cost more than the runs it was part of")
        looks = found["looks"]
        if not isinstance(looks, dict) or not all(why is None or isinstance(why, str) for why in looks.values()):
            raise ValueError("its look verdicts are not texts")
    except DAMAGED as e:
        _damaged(record_path(), f"account is damaged ({e})", "starting it again")
        return Account()
    return Account(run_s, race_s, looks)


def add_to_account(key: dict, run_s: float, race_s: float, looks: dict[str, str | None]) -> bool:
    """Add a run's seconds and its racing's to the account, and its look verdicts."""
    def change(data: dict) -> None:
        ident = _account_key(key)
        before = _account(data, key)
        data["accounts"][_key_id(ident)] = {"key": ident, "run_s": before.run_s + run_s,
                                            "race_s": before.race_s + race_s, "looks": {**before.looks, **looks}}
    return not _update(change)


def recorded_pick(settings: Settings, where: capability.Placement, options: list[tuple[str, str, str]]
                  ) -> tuple[str, str, str] | None:
    """The pick a trial kept for these settings here, found without torch (a dry run): the record's key
    matched on everything but what only torch can tell (its threads, GPU name and version); None if none, or
    if the run would find it damaged or its pick not one of `options` (what may run here)."""
    from styleengine.engine.machine import cpu_name, kernel_flags

    want = _run_key(settings, where)
    for entry in _load_record().values():
        key = entry.get("key") if isinstance(entry, dict) and entry.get("partial", False) is False else None
        if not isinstance(key, dict) or any(key.get(k) != v for k, v in want.items()):
            continue
        machine = key.get("machine")
        if isinstance(machine, dict) and (machine.get("cpu"), machine.get("flags")) == (cpu_name(), kernel_flags()):
            try:
                return _finished(entry, options)[1]
            except DAMAGED:  # the run measures it again: so says the dry run
                continue
    return None
