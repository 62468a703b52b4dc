"""The web application of `styleengine serve`: the JSON API, the event streams and the page.

`create_app(Config)` builds a FastAPI app around one `JobStore` (jobs.py),
opened when the app starts and closed (jobs in flight recorded) when it
stops. Handlers never run the engine: they check a request (form fields,
limits, the uploads through the CLI's image checks, the run's own checks)
in a thread of the pool and queue it; the store's one worker thread runs
it. Every refusal is a 4xx whose body is {"detail": one line}.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import json
import logging
import math
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Collection

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.requests import ClientDisconnect

from styleengine.choices import INITS
from styleengine.engine import batch, images, masks
from styleengine.engine.settings import flag_of, said_as
from styleengine.engine.stylise import Settings, check_run, load_init
from styleengine.engine.plan import TooThin
from styleengine.engine.jobs import RECIPE
from styleengine.engine.recipes import RECIPES, recipe_values
from styleengine.errors import SettingError, UserError, first_line
from styleengine.serve.jobs import (Job, JobStore, QueueFull, ResultGone, ServerFolderGone, distance_every,
                                    load_upload, new_id, upload_name)

log = logging.getLogger(__name__)

MAX_STYLES = 8  # style images per request
EVENT_POLL_S = 0.1  # how often an event stream looks for news
HEARTBEAT_S = 1.0  # a comment on a quiet stream: a client that has gone is noticed within this
# form fields a request may set: the CLI's flag names without dashes -> Settings field
FIELDS = {"size": "size", "iters": "iterations", "style_weight": "style_weight",
          "content_weight": "content_weight", "tv_weight": "tv_weight", "preserve_colors": "preserve_colors",
          "style_blend": "style_blend", "seed": "seed", "init": "init", "style_scale": "style_scale",
          "optimizer": "optimizer", "lr": "lr"}
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
OTHER_FIELDS = {"content": "the content image (a file)", "style": "a style image (a file; one or more)",
                "keep": "true: run to the end even if the page or client that submitted it goes away",
                RECIPE: "another tool's recipe, as the run's --recipe: its defaults under the fields given, whose "
                        "weights are then in its units"}


@dataclass(frozen=True)
class Config:
    """The server's defaults (Settings) and limits."""

    settings: Settings = Settings()
    # the server's folder: results/ (PNGs and the manifest) and uploads/; None: 'serve' in the cache folder
    root: Path | None = None
    token: str | None = None  # required on /api/* (but /api/health) when set
    max_queue: int = 16  # jobs queued or running; beyond: 429
    max_upload_mb: float = 20.0  # one request's body
    max_pixels: int = 40_000_000  # of one uploaded image (its header is read before it is decoded)
    max_size: int = 1024  # px, the output's long side
    max_iters: int = 1000
    cors_origins: tuple[str, ...] = ()


def _one_line(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: by its Content-Length at once, else as it streams."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request is over this server's limit of {self.limit / 2**20:g} MB"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _one_line(413, message)(scope, receive, send)
            return
        seen, started = 0, False

        async def counted() -> dict:
            nonlocal seen
            got = await receive()
            seen += len(got.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return got

        async def watched(got: dict) -> None:
            nonlocal started
            started = started or got["type"] == "http.response.start"
            await send(got)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await _one_line(413, message)(scope, receive, send)


def over_limits(settings: Settings, max_size: int, max_iters: int, flags: bool = False) -> str | None:
    """Why these settings ask more than a server's limits allow (None when they do not): the largest side any
    image is made at (the output's, or a style's at its style scale) and the most iterations at one scale
    (--iters-per-scale's coarse scales among them). One rule for the server's own values (flags: named as its
    flags) and for requests (named as the form's fields)."""
    def name(field: str) -> str:
        return "--" + field.replace("_", "-") if flags else field

    def limit(flag: str) -> str:
        return f"is over {flag}" if flags else "is over this server's limit of"

    # asked before validate (a size over the limit says so, not "must be at most 65536"); a style scale that is
    # no finite number is validate's to refuse, and the product stays a float (1e308 overflowed round())
    if settings.size > max_size:
        return f"{name('size')} {settings.size} {limit('--max-size')} {max_size} px"
    scale = settings.style_scale if math.isfinite(settings.style_scale) else 1.0
    made = settings.size * scale  # the style image's side is this rounded (engine/plan.py)
    if scale > 1 and made > max_size and (not math.isfinite(made) or round(made) > max_size):
        shown = f"{round(made)} px" if math.isfinite(made) else "past any size"
        return (f"{name('size')} {settings.size} x {name('style_scale')} {scale:g} ({shown}) "
                f"{limit('--max-size')} {max_size} px")
    most = max(iterations for _, iterations in settings.scale_plan())
    if most > max_iters:
        what = (f"{name('iters')} {settings.iterations}" if most == settings.iterations else
                f"{name('iters_per_scale')} {settings.iters_per_scale} ({most} iterations at a scale)")
        return f"{what} {limit('--max-iters')} {max_iters}"
    return None


def _field(name: str, text: str, config: Config) -> tuple[str, Any]:
    """(Settings field, value) of one form field; HTTPException 422 with the reason."""
    target = FIELDS[name]
    try:
        value = batch.OVERRIDES[target](text)  # neural-style's init spellings read as ours, as --init's
    except (TypeError, ValueError, OverflowError) as e:
        raise HTTPException(422, f"bad {name} {text!r} ({first_line(e)})") from None
    if target == "init" and value not in INITS:
        raise HTTPException(422, f"init {text!r} is not one of {', '.join(INITS)}; a request cannot name a "
                                 f"file on the server")
    return target, value


class _Parser(MultiPartParser):
    """starlette's multipart parser, noting whether the body reached its closing boundary: python-multipart
    drops a last part cut short unsaid (its `finalize` checks nothing)."""
    closed = False

    def on_end(self) -> None:
        self.closed = True


def _cannot_store(e: OSError) -> HTTPException:
    """The server's disk, not the request: 507 when it is full."""
    full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    return HTTPException(507 if full else 503, f"the server cannot store the upload ({e.strerror or e}); try again "
                                               f"later")


async def _form(request: Request) -> FormData:
    """The request's form as `request.form` reads it; a multipart body with no closing boundary (a client or a
    proxy cut it short) is a 400 saying so, not a form that lacks the fields it sent."""
    limits = {"max_files": 1 + MAX_STYLES, "max_fields": 64, "max_part_size": 64 * 1024}
    kind, _ = parse_options_header(request.headers.get("Content-Type"))
    try:
        if kind != b"multipart/form-data":
            return await request.form(**limits)
        async with contextlib.aclosing(request.stream()) as stream:
            parser = _Parser(request.headers, stream, **limits)
            try:
                form = await parser.parse()
            except MultiPartException as e:  # as request.form says it
                raise HTTPException(400, e.message) from None
    except OSError as e:  # a part over 1 MB goes to the temp folder, which may be full
        log.error("cannot hold an upload in the temp folder %s: %s", tempfile.gettempdir(), e.strerror or e)
        raise _cannot_store(e) from None
    if not parser.closed:
        await form.close()
        raise HTTPException(400, "the upload is cut short (its multipart body has no closing boundary)")
    return form


async def _read_form(request: Request,
                     config: Config) -> tuple[UploadFile, list[UploadFile], dict[str, Any], bool, str | None]:
    try:
        form = await _form(request)
    except StarletteHTTPException as e:  # its parser stops at the file past max_files, in its own words and a 400
        if e.status_code == 400 and str(e.detail).startswith("Too many files"):
            raise HTTPException(422, f"more than {1 + MAX_STYLES} files; a job takes one content image and at most "
                                     f"{MAX_STYLES} style images (this server's max_styles)") from None
        raise
    content: list[UploadFile] = []
    styles: list[UploadFile] = []
    values: dict[str, Any] = {}
    keep: bool | None = None
    recipe: str | None = None
    for name, item in form.multi_items():
        if name in ("content", "style"):
            if not isinstance(item, UploadFile):
                raise HTTPException(422, f"{name} must be a file upload, not a text field")
            (content if name == "content" else styles).append(item)
        elif isinstance(item, UploadFile):
            raise HTTPException(422, f"{name} is a file; only content and style are files")
        elif (name in FIELDS or name in (RECIPE, "keep")) and not item.strip():  # a blank input: the server's value
            continue
        elif name == RECIPE:
            if recipe is not None:
                raise HTTPException(422, f"{name} is given twice")
            recipe = item.strip()
        elif name == "keep":
            if keep is not None:  # a hidden default and a checkbox: the last one won, unsaid
                raise HTTPException(422, f"{name} is given twice")
            try:
                keep = batch.OVERRIDES["preserve_colors"](item)  # the same yes/no reading
            except ValueError as e:
                raise HTTPException(422, f"bad keep {item!r} ({first_line(e)})") from None
        elif name in FIELDS:
            if FIELDS[name] in values:
                raise HTTPException(422, f"{name} is given twice")
            field, value = _field(name, item, config)
            values[field] = value
        else:
            raise HTTPException(422, f"unknown field {name[:40]!r}; fields: "
                                     f"{', '.join(['content', 'style', *FIELDS, RECIPE, 'keep'])}")
    if len(content) != 1:
        raise HTTPException(422, f"a job needs one content image (field content), got {len(content)}")
    if not styles:
        raise HTTPException(422, "a job needs at least one style image (field style)")
    return content[0], styles, values, bool(keep), recipe


def _check_pixels(path: Path, label: str, limit: int) -> None:
    """413 when an upload's header declares more pixels than the limit, before anything decodes it."""
    import warnings

    from PIL import Image

    from styleengine import paths

    try:
        with warnings.catch_warnings():  # load_upload says what the image holds, in the run's words
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
        pixels, size = width * height, f"is {width}x{height} px"
    except Image.DecompressionBombError as e:  # past twice PIL's limit: its pixel count, no size
        found = paths.bomb_pixels(e)
        if found is None or found <= limit:  # past PIL's limit, not the server's: the run's words
            raise HTTPException(413, f"refusing {label}: {paths.too_many_pixels(e)}") from None
        pixels, size = found, f"has {found} pixels"
    except (OSError, ValueError, SyntaxError, EOFError):  # not an image PIL can open: load_upload says what it is
        return
    if pixels > limit:  # the server's own limit first, whatever PIL's
        raise HTTPException(413, f"the {label} {size}; this server takes at most {limit / 1e6:g} megapixels")


def _check_own_files(settings: Settings) -> None:
    """HTTPException 503 where a file of the server's own (--init, a mask, weights), checked at its start, is gone
    or is no file now: the server's fault, said by the file's name only (a traceback and a 500, or a 422 that
    called the server's mask a corrupt upload)."""
    from styleengine import paths
    from styleengine.engine.settings import settings_inputs

    for role, path in settings_inputs(settings.init, settings.weights, content_masks=settings.content_masks,
                                      style_masks=settings.style_masks).items():
        problem = paths.not_a_file(path)
        if problem is not None:
            log.error("the server's %s %s %s", role, path, problem)
            raise HTTPException(503, f"the server's {role} {Path(path).name} {problem}; it cannot run jobs until "
                                     f"the file is back")


def _prepare(store: JobStore, job_id: str, folder: Path, content: UploadFile, styles: list[UploadFile],
             settings: Settings, config: Config, keep: bool, sent: Collection[str]) -> Job:
    """Save the uploads, decode them through the CLI's checks, check the run: the job to queue (HTTPException
    with the reason otherwise; `sent`: the Settings fields the request gave). Runs in a worker thread of the
    pool."""
    _check_own_files(settings)
    saved: list[tuple[Path, str]] = []
    try:
        store.own_folder(store.results)  # before the work: a result that cannot be kept fails nothing later
        store.own_folder(store.uploads)
        folder.mkdir()
        for index, upload in enumerate([content, *styles]):
            label = "content image" if index == 0 else (f"style image {index}" if len(styles) > 1 else "style image")
            path = folder / upload_name(index)
            upload.file.seek(0)
            with open(path, "wb") as out:
                shutil.copyfileobj(upload.file, out)
            saved.append((path, label))
    except ServerFolderGone as e:  # said as a job's reason is: the operator's paths not spelled out
        log.error("%s", first_line(e))
        raise HTTPException(503, store.for_clients(first_line(e))) from None
    except OSError as e:
        log.error("cannot store job %s's upload in %s: %s", job_id, folder, e.strerror or e)
        raise _cannot_store(e) from None
    for path, label in saved:
        _check_pixels(path, label, config.max_pixels)
    try:
        arrays = [load_upload(path, label) for path, label in saved]
        if settings.content_masks and len(settings.content_masks) != len(styles):  # a count the request cannot set
            raise UserError(f"the server's {len(settings.content_masks)} content masks are for "
                            f"{len(settings.content_masks)} style images, one each in order; this request sent "
                            f"{len(styles)}")
        check_run(settings, arrays[0].shape[:2], [a.shape[:2] for a in arrays[1:]],
                  style_labels=[label for _, label in saved[1:]])
    except TooThin as e:  # a client has the form's fields, not the flags, and none past the server's limit
        raise HTTPException(422, store.for_clients(_too_thin(e, config.max_size, settings))) from None
    except UserError as e:
        raise HTTPException(422, store.for_clients(_said(e, sent))) from None
    digest, init_image, read = _own_files(store, job_id, saved, settings)
    try:  # the server's masks against these pictures (another aspect ratio, a fade): this request's fault
        regions = masks.load(settings, arrays[0].shape[:2], [a.shape[:2] for a in arrays[1:]],
                             [label for _, label in saved[1:]], given=read) if read is not None else None
    except UserError as e:
        raise HTTPException(422, store.for_clients(_servers(first_line(e)))) from None
    return Job(job_id, settings, arrays[0], arrays[1:], folder, digest, keep=keep, masks=regions,
               init_image=init_image)


def _own_files(store: JobStore, job_id: str, saved: list[tuple[Path, str]], settings: Settings) -> tuple:
    """The job's hash, and the server's init and masks decoded from the bytes it holds: (hash, init image,
    masks.Read). Read twice, a mask replaced between the reads ran under the other's hash
    (probe 34a); weights loaded (at the start, or a replica's first job) that are not the file's bytes now are
    said. HTTPException 503: the server's own files are not as they were."""
    used: dict[str, tuple[str, str]] = {}
    try:
        digest = store.settings_hash(job_id, saved[0][0], [p for p, _ in saved[1:]], settings, used)
    except (UserError, OSError) as e:  # one of the server's own files, gone or unreadable since the check above
        log.error("job %s: cannot hash its files: %s", job_id, first_line(e))
        raise HTTPException(503, "the server cannot read its own files (its log says which); try again later"
                            ) from None
    weights = used.pop("weights file", None)
    own = [(role, path, sha) for role, (path, sha) in used.items() if role == "init image" or "mask" in role]
    try:  # changed under the request, or since the server loaded it
        if weights is not None and store.loaded_weights_sha256(settings) != weights[1]:
            raise UserError(f"weights file {weights[0]} changed after the server loaded it: restart the server to "
                            f"run the new file")
        pinned = batch.read_as_hashed(own, "while this request read it", "try again")
    except UserError as e:
        raise _own_fault(store, job_id, first_line(e)) from None
    try:  # broken
        with images.reading(pinned):
            return digest, load_init(settings), masks.read(settings)
    except UserError as e:
        raise _own_fault(store, job_id, f"{first_line(e)}; it cannot run jobs until it is mended") from None


def _own_fault(store: JobStore, job_id: str, said: str) -> HTTPException:
    """The 503 of a server's own file that is not as it was, logged whole, said to clients by its name."""
    log.error("job %s: %s", job_id, said)
    return HTTPException(503, store.for_clients(_servers(said)))


def _servers(said: str) -> str:
    """A reason about the server's own init, masks or weights said as theirs ("the server's content mask 2
    m.png is black everywhere", "cannot decode the server's content mask 2 ...")."""
    return re.sub(r"\b(?:the )?(content masks?|style masks?|init image|weights file)\b", r"the server's \1", said)


def _settings(base: Settings, values: dict[str, Any], config: Config, recipe: str | None = None) -> Settings:
    """The server's settings with a request's values (under a request's recipe: its defaults, the request's
    weights in its units), checked against its limits and resolved (HTTPException 422 with the reason)."""
    sent = set(values)
    try:
        if recipe is not None:
            values = recipe_values(recipe, values, flags=False)  # said as the form's fields are named
        settings = dataclasses.replace(base, **values)
        settings = dataclasses.replace(settings, distance_every=distance_every(settings.iterations))
        over = over_limits(settings, config.max_size, config.max_iters)
        if over is not None and recipe is not None:  # a value the request may not have sent
            over += f" (with recipe {recipe}, its defaults stand where size and iters are not sent)"
        if over is not None:
            raise HTTPException(422, over)
        settings.validate()
        return settings.resolved()
    except UserError as e:
        raise HTTPException(422, _said(e, sent)) from None


def _too_thin(error: TooThin, max_size: int, settings: Settings) -> str:
    """An image too thin for the job's size, with the fix a client has: the field that sets the size it needs
    where this server makes that size, else only cropping (the server's first scale is its own)."""
    if error.needed > max_size:
        return f"{error.head}, over this server's limit of {max_size} px: crop the image"
    first = dataclasses.replace(settings, size=error.needed).scale_plan()[0][0]
    if error.knob == "--size" and first < error.needed:  # that size starts coarser: refused again there
        return f"{error.head}, and at that size the server's first scale is {first} px: crop the image"
    if error.knob == "--start-size":
        return f"{error.head} at the server's first scale (--start-size): crop the image"
    if error.knob == "--size":  # that size, not "a larger" one: past it the server may start coarser, refused there
        return f"{error.head}: crop the image or send size {error.needed}"
    # a style's side is size x style_scale: the scale that gives it at the size the refusal was for
    size = settings.scale_plan()[0][0] if error.knob == "--start-size x --style-scale" else settings.size
    hundredths = math.ceil((error.needed - 0.5) * 100 / size)
    while round(size * hundredths / 100) < error.needed:
        hundredths += 1
    at = f" at the server's first scale ({size} px)" if size != settings.size else ""
    return f"{error.head}{at}: crop the image or send a style_scale of at least {hundredths / 100:g}"


def _said(error: UserError, sent: Collection[str]) -> str:
    """A request's error in one line, a setting by its form field where the request `sent` it (Settings fields),
    else as the server's own flag."""
    names = {target: name for name, target in FIELDS.items() if target in sent}
    if isinstance(error, SettingError) and error.setting not in names:
        names[error.setting] = f"the server's {flag_of(error.setting)}"
    return first_line(said_as(error, names))


def _static(name: str) -> Path:
    return Path(str(resources.files("styleengine.serve") / "static" / name))


def open_store(config: Config, warm: batch.Warm | None = None) -> JobStore:
    """The JobStore of `config` (UserError if its folder cannot be used or another server holds it); `warm`: a
    Warm holding the weights the start checked (None: a new one)."""
    from styleengine.export.cache import cache_root

    root = config.root if config.root is not None else cache_root() / "serve"
    return JobStore(root, max_queue=config.max_queue, warm=warm, own=own_files(config.settings))


def own_files(settings: Settings) -> list[str]:
    """The paths of the server's own files (--init, masks, weights)."""
    from styleengine.engine.settings import settings_inputs

    return [str(p) for p in settings_inputs(settings.init, settings.weights, content_masks=settings.content_masks,
                                            style_masks=settings.style_masks).values()]


def create_app(config: Config, store: JobStore | None = None,
               opener: Callable[[Config], JobStore] = open_store) -> FastAPI:
    """The application around `store` (None: opener(config) at startup); the store is closed when the app
    stops."""
    state: dict[str, Any] = {}
    given = store

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["store"] = given if given is not None else await run_in_threadpool(opener, config)
        try:
            yield
        finally:
            await run_in_threadpool(state["store"].close)

    app = FastAPI(title="styleengine", version="1", lifespan=lifespan,
                  description="Gatys-style neural style transfer on a warm engine: submit a job, follow its "
                              "progress, fetch the PNG.")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, limit=int(config.max_upload_mb * 2**20))

    def current() -> JobStore:
        return state["store"]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else "request"
        return _one_line(422, f"{where}: {errors[0].get('msg', 'invalid') if errors else 'invalid'}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        said = first_line(Exception(str(exc.detail)))
        store = state.get("store")
        shown = store.for_clients(said) if store is not None else said  # the server's folder not spelled out
        if shown != said:  # the operator's log keeps the whole line
            log.warning("%s %s: %s", request.method, request.url.path, said)
        response = _one_line(exc.status_code, shown)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if config.token and path.startswith("/api/") and path != "/api/health":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.query_params.get("token", "")
            if not secrets.compare_digest(given.encode(), config.token.encode()):
                return _one_line(401, "a token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)")
        try:
            return await call_next(request)
        except asyncio.CancelledError:  # uvicorn's graceful stop timed out on it (an upload still coming in)
            store = state.get("store")
            if store is None or not store.draining:
                raise
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11's
            if uncancel is not None:
                uncancel()  # answered: the cancel is spent here
            log.info("the server is stopping: %s %s, unfinished when its wait ran out, was answered 503",
                     request.method, path)
            return _one_line(503, "the server is stopping; submit the job again once it is back")

    async def job_or_404(job_id: str) -> Job:
        job = await current().lookup(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id[:40]!r} on this server")
        return job

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(_static("index.html"), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC:  # a fixed set: nothing in a request names a path
            raise HTTPException(404, f"no static file {name[:40]!r}")
        return FileResponse(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/health", summary="Whether the server is up, its defaults and limits")
    async def health() -> dict[str, Any]:
        s = config.settings
        return {"status": "ok", **current().counts(),
                "defaults": {"size": s.size, "iters": s.iterations, "style_weight": s.style_weight,
                             "content_weight": s.content_weight, "tv_weight": s.tv_weight,
                             "preserve_colors": s.preserve_colors, "model": s.model, "backend": s.backend,
                             "device": s.device, "precision": s.precision},
                "limits": {"max_size": config.max_size, "max_iters": config.max_iters,
                           "max_upload_mb": config.max_upload_mb, "max_pixels": config.max_pixels,
                           "max_styles": MAX_STYLES},
                "token_required": bool(config.token)}

    form_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["content", "style"],
        "properties": {"content": {"type": "string", "format": "binary", "description": OTHER_FIELDS["content"]},
                       "style": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "description": OTHER_FIELDS["style"]},
                       "keep": {"type": "boolean", "description": OTHER_FIELDS["keep"]},
                       RECIPE: {"type": "string", "enum": list(RECIPES), "description": OTHER_FIELDS[RECIPE]},
                       **{name: {"type": "string", "description": f"as the run's --{name.replace('_', '-')}"}
                          for name in FIELDS}}}}}}}

    @app.post("/api/jobs", status_code=202, openapi_extra=form_schema,
              summary="Submit a job: content, one or more style files, and the run's settings as form fields")
    async def submit(request: Request) -> JSONResponse:
        if current().draining:
            raise HTTPException(503, "the server is stopping; submit the job again once it is back")
        try:
            content, styles, values, keep, recipe = await _read_form(request, config)
        except ClientDisconnect:  # a tab closed, a connection lost: the network's, no fault of the server's
            if not current().draining:  # a stop's own: said by _auth where the stop cut it off
                log.info("a client went away during its upload; nothing queued")
            raise HTTPException(400, "the upload ended before its end") from None
        if len(styles) > MAX_STYLES:
            raise HTTPException(422, f"{len(styles)} style images; this server takes at most {MAX_STYLES}")
        settings = await run_in_threadpool(_settings, config.settings, values, config, recipe)
        job_id = new_id()
        folder = current().uploads / job_id
        try:
            job = await run_in_threadpool(_prepare, current(), job_id, folder, content, styles, settings, config, keep,
                                          set(values))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            current().submit(job)
        except QueueFull as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        return JSONResponse({"id": job.id, "status": job.status}, status_code=202,
                            headers={"Location": f"/api/jobs/{job.id}"})

    @app.get("/api/jobs", summary="The most recent jobs, newest first")
    async def listing(limit: int = 50) -> list[dict[str, Any]]:
        return await current().recent(max(0, min(limit, 500)))

    @app.get("/api/jobs/{job_id}", summary="A job's status (queued|running|done|failed|cancelled), iteration, "
                                           "losses and distances")
    async def status(job_id: str) -> dict[str, Any]:
        return (await job_or_404(job_id)).to_json()

    @app.get("/api/jobs/{job_id}/result", summary="The finished picture (PNG), or a failed job's last finite image",
             responses={200: {"content": {"image/png": {}}}})
    async def result(job_id: str) -> Response:
        job = await job_or_404(job_id)
        if not job.has_result:
            why = f": {job.reason}" if job.reason and job.status == "failed" else ""
            raise HTTPException(409, f"job {job_id} is {job.status}{why}; no result")
        try:
            data = await run_in_threadpool(current().result_bytes, job)
        except ResultGone as e:
            raise HTTPException(410, str(e)) from None
        return Response(data, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="styleengine-{job_id}.png"'})

    @app.get("/api/jobs/{job_id}/preview", summary="The latest preview (PNG)",
             responses={200: {"content": {"image/png": {}}}})
    async def preview(job_id: str) -> Response:
        job = await job_or_404(job_id)
        if job.preview is None:
            raise HTTPException(404, f"job {job_id} has no preview yet")
        return Response(job.preview, media_type="image/png")

    @app.delete("/api/jobs/{job_id}", summary="Cancel a job (a running one stops at its next iteration)")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = await job_or_404(job_id)
        if job.over:
            raise HTTPException(409, f"job {job_id} is already {job.status}")
        await run_in_threadpool(current().cancel, job)
        return (await job_or_404(job_id)).to_json()

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: status (JSON) and preview (a PNG data URL)",
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(job_id: str, request: Request) -> StreamingResponse:
        job = await job_or_404(job_id)
        return StreamingResponse(_stream(job, request, current()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app


async def _stream(job: Job, request: Request, store: JobStore) -> AsyncIterator[str]:
    """A job's news as server-sent events until it is over; the last watcher to go cancels it unless kept (a
    job this store runs: a Ray replica's streams of another replica's job only watch)."""
    watched = job
    owned = store.owns(job)
    job.watchers += 1
    sent, preview = -1, None
    quiet = 0.0
    news = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wake() -> None:
        loop.call_soon_threadsafe(news.set)
    job.wakers.append(wake)  # a change reaches the client at once, not at the next poll (a finished job's end
    # is what a client waits for)
    try:
        while True:
            job = job if owned else (await store.lookup(job.id) or job)
            if job.version != sent:
                sent = job.version
                yield f"event: status\ndata: {json.dumps(job.to_json())}\n\n"
                if job.preview is not None and job.preview != preview:  # by value: a remote job is a new snapshot
                    preview = job.preview
                    data = {"iteration": job.preview_iteration,
                            "image": "data:image/png;base64," + base64.b64encode(preview).decode()}
                    yield f"event: preview\ndata: {json.dumps(data)}\n\n"
                quiet = 0.0
            if job.over or store.draining:  # draining: the server stops; close() records the job
                return
            if await request.is_disconnected():
                return
            try:  # the poll stays: a disconnect and another replica's jobs (Ray) have no wake-up
                await asyncio.wait_for(news.wait(), EVENT_POLL_S)
            except asyncio.TimeoutError:
                pass
            news.clear()
            quiet += EVENT_POLL_S
            if quiet >= HEARTBEAT_S:
                quiet = 0.0
                yield ": still here\n\n"
    finally:
        job = watched
        job.wakers.remove(wake)
        job.watchers -= 1
        if owned and job.watchers == 0 and not job.keep and not job.over and not store.draining:
            log.info("job %s: its last watcher went away; cancelled", job.id)
            asyncio.get_running_loop().run_in_executor(None, store.cancel, job)  # a manifest line: not here
