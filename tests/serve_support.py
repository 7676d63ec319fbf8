"""Helpers of the tests of `negspace serve` and `negspace score`: a saved detector, images, a real
uvicorn server on 127.0.0.1 (in a thread of this process, or a `negspace serve` subprocess), a
free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from negspace.cli import main


def model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


def write_images(folder: Path, n: int, seed: int, size=(30, 40), fmt: str = "jpg") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:04d}.{fmt}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def save_detector(root: Path, model, method: str = "neglabel", extra: list[str] = ()) -> Path:
    """A detector saved by `negspace eval --save-detector` (3 classes, 6 ID and 6 OOD images)."""
    write_images(root / "id", 6, seed=0)
    write_images(root / "ood", 6, seed=1)
    classes = root / "classes.txt"
    classes.write_text("red square\ngreen square\nblue square\n", encoding="utf-8")
    assert (
        main(
            [
                "eval",
                "--method",
                method,
                "--classes",
                str(classes),
                "--id",
                str(root / "id"),
                "--ood",
                f"o={root / 'ood'}",
                "--num-negatives",
                "300",
                "--groups",
                "10",
                "--batch-size",
                "4",
                "--out",
                str(root / f"eval-{method}"),
                "--save-detector",
                str(root / f"det-{method}"),
                *extra,
                *model_args(model),
            ]
        )
        == 0
    )
    return root / f"det-{method}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def thread_server(app):
    """``app`` under a real uvicorn on 127.0.0.1 (a free port), in a thread; yields the URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def start_process(args: list[str], port: int, timeout: float = 60.0) -> subprocess.Popen:
    """`negspace serve ARGS --port PORT` in a subprocess, once it is ready (within ``timeout`` s)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from negspace.cli import main; sys.exit(main())",
            "serve",
            *args,
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_ready(f"http://127.0.0.1:{port}", timeout=timeout, process=process)
    return process


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value in a Prometheus text page (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
