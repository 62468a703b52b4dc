"""The styleengine command line: paths, flags, progress bar, exit codes.

The engine does the work (engine/stylise.py); this module only turns flags
into Settings (whose defaults it reads, never retypes), checks every input
before the long work starts, draws progress on stderr and writes files.
A UserError is one line on stderr and exit 1; anything else is a bug and
keeps its traceback.

Commands are built lazily: `styleengine --help` lists them without
importing torch; `styleengine run --help` imports the engine (cli_run) to
show the real defaults.

Signals: SIGTERM (timeout, kill, batch schedulers) and SIGHUP (a closed
terminal or ssh session) are raised as KeyboardInterrupt, as Ctrl-C's SIGINT is, rather than setting a flag the
run would poll: one iteration at 2048 px takes a minute, longer than the
grace schedulers give before SIGKILL, and set-up (an export) is not a loop
at all. So the loop's contract (KeyboardInterrupt stops it, the current
image is kept) covers both signals, and a signal in set-up unwinds through
every `finally`. `signals.shielded()` holds them back while a result is
being written, and raises the held one as soon as the write is done (a
batch stops after the line it was recording, not at the end of the file).
Only the first signal counts: a repeat (`timeout` and a scheduler both
firing, Ctrl-C pressed twice) is absorbed while the first unwinds, and the
console script ignores repeats to the end of the process. A signal that
arrives during an import is raised once the import is done (tried again
every 50 ms by SIGALRM): raised inside an extension module's initialisation
it became an ImportError (onnxruntime) or made the interpreter exit by SIGINT.
"""

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup

from styleengine.errors import SettingError, UserError, first_line, printable
from styleengine.peers import did_you_mean, peer_flag
from styleengine.runtime import passive_openmp

# command -> (module, function, short help); the modules are imported on first use
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("styleengine.cli_run", "run", "Stylise a content image with one or more style images."),
    "texture": ("styleengine.cli_run", "texture", "Synthesise a texture from style images (no content)."),
    "batch": ("styleengine.cli_batch", "batch",
              "Stylise many pictures: a jobs file or folders, a manifest, resumable."),
    "serve": ("styleengine.cli_serve", "serve", "Serve a web page and a JSON API on a warm engine."),
    "invert": ("styleengine.cli_invert", "invert", "Reconstruct a picture from its features at one layer."),
    "video": ("styleengine.cli_video", "video",
              "Stylise a video, temporally consistent (optical flow, Ruder et al.); resumable."),
    "visualize": ("styleengine.cli_visualize", "visualize", "The picture that maximises one class's score."),
    "tune": ("styleengine.cli_tune", "tune", "Measure which backend, precision and convolutions `auto` picks here."),
    # written by other engineers; absent modules leave their command out
    "bench": ("styleengine.cli_bench", "bench", "Time the loss-and-gradient step across backends and sizes."),
    "export": ("styleengine.cli_export", "export", "Export the loss-and-gradient step graph to ONNX."),
}
_OPTIONAL_MODULES = ("styleengine.cli_bench", "styleengine.cli_export")


def _available(name: str) -> bool:
    module = _COMMANDS[name][0]
    return module not in _OPTIONAL_MODULES or importlib.util.find_spec(module) is not None


@functools.cache
def _load(name: str) -> click.Command | None:
    """The real click command for `name`; None if its optional module is not there yet."""
    module_name, attr, _ = _COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if module_name in _OPTIONAL_MODULES and e.name == module_name:
            return None
        raise
    holder = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    holder.command(name)(_finishing(getattr(module, attr)))
    command = typer.main.get_command(holder)  # a lone command comes back as itself
    command.name = name
    from rich.markup import escape

    # help as written: typer reads it as Rich markup, and "styleengine[ray]" lost its "[ray]" (where it does
    # not, TYPER_USE_RICH=0, an escape would be shown)
    marked = typer.core.HAS_RICH and typer.core.DEFAULT_MARKUP_MODE == "rich"
    if marked and command.help:
        command.help = escape(command.help)
    for param in command.params:
        _read_numbers_strictly(param)
        written = getattr(param, "help", None)  # options and typer's arguments carry one
        if marked and written:
            setattr(param, "help", escape(written))
    return command


def _read_numbers_strictly(param: Any) -> None:
    """A number option's text read as a jobs file's value is (engine/settings: whole, real), then as typer reads
    it: its int() and float() took Python's digit separators and other scripts' digits (`--port 80_80`
    listened on 8080, `--size 64_0` ran at 640)."""
    from typing import get_args

    from styleengine.engine.settings import OutOfRange, Underflow, real, whole

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kinds = (annotation, *get_args(annotation))
    check = whole if int in kinds else real if float in kinds else None
    if check is None:
        return
    typed = param.process_value

    def process_value(ctx: click.Context, value: Any) -> Any:
        if isinstance(value, str):
            try:
                check(value)
            except OutOfRange:  # the option's own check says what its range is
                pass
            except Underflow as e:
                raise click.exceptions.BadParameter(f"{value!r} is {e}", ctx=ctx, param=param) from None
            except ValueError as e:
                if str(e) != "not a finite number":  # inf and nan: the option's own check words them
                    raise click.exceptions.BadParameter(f"{value!r} is not a {'whole ' if check is whole else ''}"
                                                        f"number", ctx=ctx, param=param) from None
        return typed(ctx, value)

    param.process_value = process_value


def _finishing(function: Any) -> Any:
    """The command, its end told to `signals` however it ends but by a signal (a return, its exit code, a user
    error): a signal after that stops nothing, so it changes no exit code (a SIGTERM just after export's
    "wrote ..." line exited 143)."""
    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException:
            signals.finish()
            raise
        signals.finish()
        return result
    return command


class _LazyCommand(TyperCommand):
    """Stands in for a command in the listing; builds the real one when invoked or asked for help."""

    def __init__(self, name: str, short_help: str):
        super().__init__(name, help=short_help, short_help=short_help)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        real = _load(self.name)
        if real is None:  # listed, then vanished: report as an unknown command
            raise click.exceptions.UsageError(f"command {self.name!r} is not installed", parent)
        return real.make_context(info_name, args, parent=parent, **extra)


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(dict.fromkeys(super().list_commands(ctx) + [n for n in _COMMANDS if _available(n)]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            return _LazyCommand(cmd_name, _COMMANDS[cmd_name][2]) if _available(cmd_name) else None
        return super().get_command(ctx, cmd_name)


class _App(typer.Typer):
    """`app()` (typer's CliRunner calls it) turns a UserError into one line and exit 1, as main() does."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except UserError as e:
            _fail(e)


app = _App(cls=_LazyGroup, pretty_exceptions_enable=False, no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """Gatys neural style transfer (Gatys, Ecker, Bethge 2016) with a pluggable loss-and-gradient step."""


class _Signals:
    """Which of SIGINT / SIGTERM / SIGHUP arrived, and whether to hold it back (see the module's docstring)."""

    # 128 + the signal's number, as shells report it
    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}

    RETRY_S = 0.05  # how soon a signal that arrived during an import is tried again

    def __init__(self) -> None:
        self.received: int | None = None
        self.reported = False  # a command has said what the interrupt did (else main says it)
        self._shield = 0
        self._held = False  # a signal arrived while shielded and has not been raised yet
        self._alarm: Any = None  # SIGALRM's handler before a signal was put off (None: not put off)
        self._forward: Any = None  # hand_over's handler: signals go there instead
        self._finished = False  # the command has returned (finish)
        self._holding = False  # from its last lines to its end (hold)
        self._arrivals: int | None = None  # the wakeup pipe's read end: signal numbers in the order they came
        self._installing = False  # installed() is putting the handlers in place: a signal is only recorded
        self._coming: int | None = None  # one another library holds until it is done (early), not received yet
        self._unraisable: Any = sys.unraisablehook  # the hook before installed()'s

    def _first_arrived(self, signum: int) -> int:
        """The first of ours that arrived: Python runs the handlers of signals pending together in number order
        (SIGHUP, SIGINT, SIGTERM), not the order they came in, which the C handler wrote to the wakeup pipe."""
        if self._arrivals is None:
            return signum
        try:
            came = os.read(self._arrivals, 512)
        except OSError:  # empty (BlockingIOError), or another library's wakeup fd replaced ours (serve)
            return signum
        return next((s for s in came if s in self.EXIT_CODES), signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._forward is not None:
            return self._forward(signum, frame)
        first = self.received is None
        if first:
            self.received = self._first_arrived(signum)
        if self._installing:  # raised by take_early, inside the command's handling, not out of installed()
            return
        if self._shield or self._holding:
            self._held = self._held or first
        elif first:  # a repeat (`timeout`, an impatient Ctrl-C) is absorbed: the first is already stopping us
            self._raise(frame)

    def _raise(self, frame: Any) -> None:
        """KeyboardInterrupt, unless an import is running: put off until it is done (SIGALRM, RETRY_S)."""
        if _importing(frame) and hasattr(signal, "setitimer"):
            self._put_off()
            return
        self._stop_alarm()
        raise KeyboardInterrupt

    def _put_off(self) -> None:
        if self._alarm is None:
            self._alarm = signal.signal(signal.SIGALRM, self._again)
        signal.setitimer(signal.ITIMER_REAL, self.RETRY_S)

    def _dropped(self, unraisable: Any) -> None:
        """sys.unraisablehook while installed: our KeyboardInterrupt raised inside a weakref callback or a
        finalizer (the garbage collector runs them anywhere) is dropped by Python: raised again in a moment."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.received is not None \
                and hasattr(signal, "setitimer"):
            self._put_off()
        else:
            self._unraisable(unraisable)

    def _again(self, signum: int, frame: Any) -> None:
        if self._shield or self._holding:  # held: raised as a shield's block ends, never under hold
            self._held = True
            self._stop_alarm()
        else:
            self._raise(frame)

    def _stop_alarm(self) -> None:
        if self._alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._alarm)
            self._alarm = None

    def clear(self) -> None:
        """Forget the last command's signal: each command starts with none (tests run many in one process)."""
        self.received, self.reported, self._held, self._forward, self._finished = None, False, False, None, False
        self._coming, self._holding = None, False

    @contextlib.contextmanager
    def installed(self, exiting: bool = False):
        """Route SIGINT, SIGTERM and SIGHUP to _handle for the duration (main thread only; others keep Python's).
        `exiting` (the console script): once a signal has stopped the command, repeats stay ignored after it
        instead of the old handlers coming back, so the interpreter's shutdown is not killed by one."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.clear()
        self._installing = True
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._arrivals = read
        # an ignored SIGHUP stays ignored (nohup); SIGINT is ours even where a shell's `cmd &` ignored it, as
        # before: Ctrl-C never reaches such a job, and `kill -INT` is asked for
        previous = {s: signal.getsignal(s) for s in self.EXIT_CODES}
        previous = {s: signal.signal(s, self._handle) for s, was in previous.items()
                    if not (s == signal.SIGHUP and was is signal.SIG_IGN)}
        self._installing = False
        self._unraisable, sys.unraisablehook = sys.unraisablehook, self._dropped
        try:
            yield
        finally:
            sys.unraisablehook = self._unraisable
            self._stop_alarm()
            signal.set_wakeup_fd(wakeup)
            self._arrivals = None
            os.close(read)
            os.close(write)
            for s, handler in previous.items():
                ended = self.received is not None or self._finished  # nothing left for a signal to stop
                signal.signal(s, signal.SIG_IGN if exiting and ended else handler)

    def take_early(self) -> None:
        """KeyboardInterrupt for a signal the console script kept before these handlers (styleengine._entry), or
        one that came while installed() put them in place."""
        entry = sys.modules.get("styleengine._entry")
        early = getattr(entry, "EARLY", None)
        if early:
            self.received = early[0]
            early.clear()
        if self.received is not None:
            raise KeyboardInterrupt

    def hand_over(self, to: Any) -> None:
        """Before another library takes the signals (serve: uvicorn's): a signal put off during an import is
        raised now, and one that comes before that library's handlers are in place goes to `to(signum, frame)`
        (its own handler) instead of becoming a KeyboardInterrupt inside its event loop, where it was swallowed
        (the server never stopped) or ended in a CancelledError traceback."""
        if self._alarm is not None:
            self._stop_alarm()
            raise KeyboardInterrupt
        self._forward = to

    def early(self, signum: int) -> None:
        """A signal another library holds until it is done (ray.init keeps it, then raises it to _handle): its
        name and exit code are said now, for the line said before the wait."""
        self._coming = signum

    def finish(self) -> None:
        """The command has returned: a signal from now on stops nothing that is left, so it is not raised (a
        KeyboardInterrupt in the interpreter's exit made a finished export or batch exit 130/143 silently)."""
        self._stop_alarm()
        self._forward = lambda signum, frame: None
        self._finished = True

    def hold(self) -> None:
        """From here to the command's end a signal is held, never raised: the command says one that came
        before it reads `stopped` (its last lines), and one after that stops nothing. Said before the last line,
        nothing after: a SIGTERM just after run's "wrote ..." exited 143 as the command returned."""
        self._holding = True

    def end(self, last: Callable[[], None], what: str) -> None:
        """A command's end, its work done: hold, then its last lines (`last`); a signal that came before this
        check is said under them (what stands: `what`; exit 128+n), one after it stops nothing (bench and tune
        exited 143 for a SIGTERM after their "wrote ..." / "kept in ..." line)."""
        self.hold()
        if self.received is None:
            last()
            return
        self.reported = True
        last()
        print(printable(f"interrupted ({self.name}) as the command ended; {what}"), file=sys.stderr)
        raise typer.Exit(self.exit_code)

    @contextlib.contextmanager
    def shielded(self, deliver: bool = True):
        """Signals arriving inside are remembered, not raised: a result being written is not cut short.
        With `deliver`, one that arrived is raised as KeyboardInterrupt once the block is done."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if deliver and self._held and not self._shield and not self._holding:
            self._held = False
            raise KeyboardInterrupt

    def stopped(self, loop_stopped: str | None) -> bool:
        """Whether a command whose loop ended with `loop_stopped` says it was interrupted: the loop was, or a
        signal came after it but before the command's last line (held through the write, or put off during an
        import, and never raised: it exited 0). One after the last line changes nothing (finish)."""
        return loop_stopped == "interrupted" or self.received is not None

    @property
    def name(self) -> str:
        known = self.received if self.received is not None else self._coming
        return self.NAMES.get(known, "Ctrl-C")  # type: ignore[call-overload]  # an int looks up a Signals key

    @property
    def exit_code(self) -> int:
        known = self.received if self.received is not None else self._coming
        return self.EXIT_CODES.get(known, 130)  # type: ignore[call-overload]  # as in name


def _importing(frame: Any) -> bool:
    """Whether `frame` runs inside an import. A KeyboardInterrupt raised there can come out of an extension
    module's initialisation as 'ImportError: initialization failed' (onnxruntime), or leave the interpreter to
    exit by SIGINT whatever code the command exits with."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


signals = _Signals()


def _fail(error: UserError) -> None:
    signals.finish()  # the command is over: a signal now would only lose this line
    if isinstance(error, SettingError):  # said by its flag, as the user typed it
        from styleengine.engine.settings import flag_of

        error = error.named(flag_of(error.setting))
    print(f"error: {printable(first_line(error))}", file=sys.stderr)
    # a signal put off during an import, then this error before it was raised: the exit code still says it
    sys.exit(signals.exit_code if signals.received is not None else 1)


def main(exiting: bool = False) -> None:
    """A user error (ours or a flag click cannot parse) is one line and exit 1; Ctrl-C or SIGTERM that no
    command handled is one line and exit 130 / 143. `exiting`: the process ends right after (console)."""
    try:
        os.getcwd()
    except FileNotFoundError:  # torch's import needs it: "Intel oneMKL FATAL ERROR", exit 2, however paths are given
        _fail(UserError("the working folder no longer exists (deleted?); cd to a folder that does and run again"))
    passive_openmp()  # before any command imports torch
    with signals.installed(exiting):
        _main()


def console() -> None:
    """The console script and `python -m styleengine`: main() in a process that ends with it."""
    try:
        main(exiting=True)
    except SystemExit as e:
        if signals.received is not None and "ray" in sys.modules:
            _leave_ray(e.code)
        raise


def _leave_ray(code: Any) -> None:
    """Ends a process that used Ray and was stopped by a signal without the interpreter's finalisation: a signal
    as Ray's workers started crashed it there (SIGSEGV, exit 139), once our line was said and the cluster
    closed. Ray's cluster is shut down first (its atexit hook would have)."""
    ray = sys.modules["ray"]
    if getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _stopped() -> None:
    print(f"error: interrupted ({signals.name})", file=sys.stderr)
    sys.exit(signals.exit_code)


def _main() -> None:
    try:
        signals.take_early()  # one in the interpreter's start, before our handlers: said as any in set-up
        code = app(standalone_mode=False)
        signals.finish()
    except KeyboardInterrupt:
        _stopped()
    except UserError as e:
        _fail(e)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `styleengine`: the listing, as --help gives it
        from styleengine.console import say

        try:
            say(e.ctx.get_help() if e.ctx is not None else str(e))
        except UserError as failed:  # a full disk: out of the except clause above's reach
            _fail(failed)
        sys.exit(0)
    except click.exceptions.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else "styleengine"
        peer = peer_flag() if isinstance(e, click.exceptions.NoSuchOption) else None
        message = did_you_mean(peer) if peer is not None else first_line(e, e.format_message())
        print(printable(f"error: {message} (see '{command} --help')"), file=sys.stderr)
        sys.exit(1)
    except typer.Abort:  # EOF at a prompt
        sys.exit(1)
    # a command's typer.Exit(n) (Ctrl-C: 130, SIGTERM: 143) comes back as n; a normal return as None;
    # typer turns a KeyboardInterrupt no command handled into a silent 130
    if code == 130 and not signals.reported:
        _stopped()
    sys.exit(code if isinstance(code, int) else 0)
