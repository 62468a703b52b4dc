"""Shared by the serve tests: tiny PNGs, a server's settings, a uvicorn on a free loopback port."""
from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from typing import Any, Iterator

import numpy as np
from PIL import Image

from styleengine.engine.stylise import Settings

# random VGG16 weights on the CPU, fp32 direct convolutions: the same path on every machine
SETTINGS = Settings(model="vgg16", weights="random", size=40, iterations=3, backend="torch", device="cpu",
                    precision="fp32", conv="direct")


def png(height: int = 32, width: int = 40, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def files(content: bytes | None = None, *styles: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    styles = styles or (png(40, 40, 1),)
    return ([("content", ("content.png", content if content is not None else png(), "image/png"))]
            + [("style", (f"style{i}.png", s, "image/png")) for i, s in enumerate(styles)])


def wait_for(client: Any, job_id: str, statuses: tuple[str, ...] = ("done", "failed", "cancelled"),
             timeout: float = 120.0, prefix: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{prefix}/api/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout} s: {job}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def serve_process(results_dir: Any, timeout: float = 120.0, nohup: bool = False) -> tuple[Any, str]:
    """`styleengine serve` (random VGG16, 40 px, CPU) in its own process on a free loopback port, once it answers:
    (the Popen, its base URL). The caller stops it (SIGTERM) and kills it if it is still there. `nohup`: started
    with SIGHUP ignored, as nohup starts it."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    port = free_port()
    command = [sys.executable, "-m", "styleengine", "serve", "--port", str(port), "--results-dir", str(results_dir),
               "--model", "vgg16", "--weights", "random", "--backend", "torch", "--device", "cpu",
               "--precision", "fp32", "--size", "40"]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url + "/api/health", timeout=2)
            return server, url
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError(server.stdout.read() if server.stdout else "serve did not start")
            time.sleep(0.2)
