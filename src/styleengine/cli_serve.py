"""`styleengine serve`: the run's flags as the server's defaults, the server's own flags, then uvicorn.

Every setting of `run` is a flag here too, generated from engine/settings.py (cli_settings); the web
application is serve/app.py, the jobs and the engine thread serve/jobs.py.
"""
import contextlib
import ipaddress
import logging
import math
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from styleengine import paths
from styleengine.choices import MIN_SIDE
from styleengine.cli import signals
from styleengine.cli_settings import settings_from, with_settings
from styleengine.engine.settings import RUN
from styleengine.errors import ConfigError, OneLineFormatter

TOKEN_ENV = "STYLEENGINE_TOKEN"
MIN_UPLOAD_BYTES = 4096  # a request with two of the smallest pictures and its form fits


def _check_listen(host: str, port: int) -> None:
    """ConfigError, one line, unless `host:port` can be listened on: uvicorn would say it later, exit 3, or
    (a port over 65535) listen on the port modulo 65536 while printing the one asked for."""
    import socket

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be 1-65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--host {host}: not an address here ({e.args[-1] if e.args else e})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):  # as asyncio's create_server binds
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as e:
            mapped = getattr(_address(host), "ipv4_mapped", None)
            advice = f" (an IPv4 address written as IPv6: give --host {mapped})" if mapped is not None else ""
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}{advice}") from None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a numeric --host binds (`0`, `127.1` and `2130706433` are as the socket calls read them), or
    None for a host name (never resolved: what a name leads to can change after the check)."""
    try:
        found = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(str(found[0][4][0]).split("%")[0]) if found else None


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    address = _address(host)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1: Python 3.11 calls it no loopback
    return address is not None and (address.is_loopback or (mapped is not None and mapped.is_loopback))


def _check_outside_the_servers_folders(own: dict[str, Path], results_dir: Path | None, ray: bool) -> None:
    """ConfigError for a file of the server's own (--init, a mask, weights) inside results/ or uploads/ of its
    folder (with --ray, anywhere in it: its replicas' folders): the server removes what a crash left there by its
    names (a job id's), and would take it."""
    from styleengine.serve.jobs import RESULTS, UPLOADS

    root = results_dir if results_dir is not None else paths.cache_root() / "serve"
    for name in (("",) if ray else (RESULTS, UPLOADS)):
        kept = os.path.realpath(root / name)
        for role, path in own.items():
            if paths.inside(path, root / name):  # by identity: a bind mount of results/ is it
                raise ConfigError(f"{role} {path} is inside {kept}, where the server keeps its jobs' files "
                                  f"and removes what a crash left; move it out")


def _serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs a token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar=TOKEN_ENV, show_envvar=True,
        help="Clients send it as 'Authorization: Bearer TOKEN' (the page: ?token=TOKEN).")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Jobs queued or running; more get HTTP 429.")] = 16,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest request body in MB.")] = 20.0,
    max_pixels: Annotated[float, typer.Option("--max-pixels", help="Largest uploaded image in megapixels.")] = 40.0,
    max_size: Annotated[int, typer.Option("--max-size", help="Largest output long side a request may ask for (px).")]
    = 1024,
    max_iters: Annotated[int, typer.Option("--max-iters", help="Most iterations a request may ask for.")] = 1000,
    results_dir: Annotated[Optional[Path], typer.Option(
        "--results-dir", help="The server's folder (results, manifest, uploads in flight); default: "
                              "'serve' in styleengine's cache folder.",
        parser=paths.named_folder("--results-dir"))] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="Allow pages from this origin to call the API (repeatable); default: none.")] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Serve on Ray Serve: auto (the cluster this machine belongs to, else a local one) or its "
                      "address; one replica per GPU, else per 4 CPUs. Needs styleengine[ray].")] = None,
    replicas: Annotated[Optional[int], typer.Option(
        "--replicas", help="With --ray: this many replicas (each one GPU, or one CPU on a cluster without).")]
    = None,
    **flags: Any,
) -> None:
    """Serve a web page and a JSON API (docs at /docs) on a warm engine."""
    import uvicorn

    from styleengine.serve.app import Config, create_app, open_store, over_limits

    _check_listen(host, port)
    if token is not None and (not token.strip() or token != token.strip() or not token.isprintable()):
        # '  ' opened a public server: `?token=%20%20` got in, and no Authorization header carries it
        raise ConfigError(f"--token ({TOKEN_ENV}) must be printable text with no spaces at its ends, got "
                          f"{len(token)} characters{' of spaces' if token and not token.strip() else ''}")
    if token is not None and not token.isascii():  # curl sends a header's UTF-8 bytes, the server reads Latin-1
        raise ConfigError(f"--token ({TOKEN_ENV}) must be ASCII, as an Authorization header carries it; got "
                          f"{sum(not c.isascii() for c in token)} other characters")
    if not _loopback(host) and not token:
        if _address(host) is None:
            raise ConfigError(f"--host {host} is a host name, not known to reach this machine alone: give a loopback "
                              f"address (127.0.0.1, ::1 or localhost), or set --token or {TOKEN_ENV} first")
        raise ConfigError(f"--host {host} is reachable from other machines: set --token or {TOKEN_ENV} first")
    for name, value in (("--max-queue", max_queue), ("--max-upload-mb", max_upload_mb),
                        ("--max-pixels", max_pixels), ("--max-size", max_size), ("--max-iters", max_iters)):
        if not (value > 0 and math.isfinite(value)):  # inf overflowed int() at start
            raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    if max_pixels * 1e6 < MIN_SIDE * MIN_SIDE:  # 0.0005 started, then refused every upload "at most 0 megapixels"
        raise ConfigError(f"--max-pixels {max_pixels:g} takes no picture; give at least {MIN_SIDE * MIN_SIDE / 1e6:g} "
                          f"(a {MIN_SIDE}x{MIN_SIDE} image)")
    if max_upload_mb * 2**20 < MIN_UPLOAD_BYTES:  # 1e-300 started, then refused every request "over 0 MB"
        raise ConfigError(f"--max-upload-mb {max_upload_mb:g} takes no picture; give at least "
                          f"{MIN_UPLOAD_BYTES / 2**20:.3f}")
    settings = settings_from(flags, RUN)
    if settings.save_every:  # run's flag, offered here with the others: a server writing none must say so
        raise ConfigError("--save-every writes snapshots beside a run's output; a server keeps one result a job "
                          "(its page shows the picture as it is made): drop --save-every")
    settings.validate()
    # the server's own values are within the limits it holds requests to (a POST without size ran at 48 px
    # on a server that refused size=40 as over its --max-size 10)
    if max_size < MIN_SIDE:
        raise ConfigError(f"--max-size must be at least {MIN_SIDE} px (no picture is smaller), got {max_size}")
    over = over_limits(settings, max_size, max_iters, flags=True)
    if over is not None:
        raise ConfigError(f"{over}: raise the limit or lower the server's own values")
    from styleengine.engine.settings import settings_inputs

    from styleengine.cli_plan import check_own_files
    from styleengine.console import Console, warnings_on

    # every job reads them: one line now (a missing --init made every POST a 500), read whole (one that is no
    # image, or cut short, failed every job), in the run's order: the init and the masks, then the rest
    with warnings_on(Console(stderr=True, markup=False)):  # before the server's log: warning lines, escaped
        check_own_files(settings, decode=True)
    own = settings_inputs(settings.init, settings.weights, content_masks=settings.content_masks,
                          style_masks=settings.style_masks)
    paths.check_inputs(own)
    _check_outside_the_servers_folders(own, results_dir, ray is not None)
    # every job loads its weights: a file the model cannot use is one line now, not every job's failure
    from styleengine.engine.batch import Warm
    from styleengine.engine.stylise import check_weights

    warm = Warm(settings) if ray is None else None  # kept for the jobs: loaded once
    if ray is not None:  # each replica loads its own
        check_weights(settings)
    settings = settings.resolved()  # `auto` made concrete once, at the default size
    if os.environ.get(TOKEN_ENV) and token == os.environ[TOKEN_ENV]:
        os.environ.pop(TOKEN_ENV)  # not handed to anything this process starts
    config = Config(settings=settings, root=results_dir, token=token, max_queue=max_queue, max_upload_mb=max_upload_mb,
                    max_pixels=int(max_pixels * 1e6), max_size=max_size, max_iters=max_iters,
                    cors_origins=tuple(cors_origin or ()))
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if replicas is not None and ray is None:
        raise ConfigError("--replicas needs --ray")
    if ray is not None:
        from styleengine.engine.batch_ray import import_ray
        from styleengine.serve.ray_app import serve_forever

        import_ray()  # a clear error now if Ray is not installed
        serve_forever(config, host=host, port=port, replicas=replicas, address=ray)
        return
    store = open_store(config, warm)  # before uvicorn: a folder it cannot use is one line, not a failed startup
    try:
        # SIGTERM: uvicorn stops taking requests, closes streams after 3 s, then the app records the jobs in flight
        server = _Server(store, uvicorn.Config(create_app(config, store), host=host, port=port, log_level="info",
                                               timeout_graceful_shutdown=3))
        server.config.load()  # its imports, and the event loop's, before uvicorn's signal handlers replace ours
        server.config.get_loop_factory()
        signals.hand_over(server.handle_exit)
    except BaseException:  # a signal before the server runs: the store (its lock file, its thread) is closed
        store.close()
        raise
    with _hangup_stops(server):
        try:
            server.run()
        except KeyboardInterrupt:  # as uvicorn.run: a signal it re-raises once it has stopped gracefully
            pass


def _Server(store: Any, config: Any) -> Any:
    """uvicorn's Server whose stop signal first drains the store: the event streams end at once (uvicorn would
    wait for them, then cancel them with tracebacks), and their going cancels no job."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:  # a second signal is absorbed, as the CLI's (uvicorn's forced exit cancelled the
                return  # app's shutdown mid-way: a CancelledError traceback, no "shutdown complete")
            store.drain()
            super().handle_exit(sig, frame)

    return Server(config)


@contextlib.contextmanager
def _hangup_stops(server: Any) -> Iterator[None]:
    """SIGHUP (a closed terminal or ssh session) stops the server as SIGTERM does: uvicorn handles only SIGINT
    and SIGTERM, and the CLI's handler would raise KeyboardInterrupt inside its event loop. An ignored SIGHUP
    (nohup) stays ignored, as the CLI leaves it."""
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP")
            or signal.getsignal(signal.SIGHUP) is signal.SIG_IGN):
        yield
        return
    previous = signal.signal(signal.SIGHUP, server.handle_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


serve = with_settings(_serve, RUN)
