"""`mahn serve` as a child process on a free loopback port, for the end-to-end and browser tests, the load
benchmark (benchmarks/serve_load.py) and the page's screenshot (scripts/screenshot.py); the last two put this
folder on their import path."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    url: str
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mahn_serve(*arguments: str) -> list[str]:
    """The command line of `mahn serve ARGUMENTS` with this interpreter."""
    return [sys.executable, "-m", "mahn", "serve", *arguments]


@contextlib.contextmanager
def serving(command: Callable[[int], list[str]], *, timeout: float = 120.0, env: dict | None = None,
            log: Path | None = None) -> Iterator[Server]:
    """Start `command(port)`, yield once GET /health answers, and stop it (SIGINT, then kill) on leaving.

    Its output goes to `log` (or a temporary file: a pipe nobody reads could fill and stall the server)
    and is quoted in the RuntimeError raised when the server stops or does not answer in `timeout` s.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w+b") if log else tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command(port), stdout=output, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not healthy(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    state = "stopped" if process.poll() is not None else f"did not answer in {timeout:.0f} s"
                    raise RuntimeError(f"the server {state}:\n{output.read().decode(errors='replace')[-4000:]}")
                time.sleep(0.2)
            yield Server(url, process)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return response.status == 200
    return False
