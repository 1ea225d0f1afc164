"""Running `mahn serve`: the server itself (run_server, run_workers), and `mahn serve` as a child process on
a free loopback port for the page's screenshot, the browser and end-to-end tests and the load benchmark."""

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


def run_server(run: Path, *, host: str, port: int, device: str, workers: int, threads: int, compare: Path | None,
               images_root: Path | None, index: str, ef_search: int) -> None:
    """`mahn serve`: the app of `run` on uvicorn, in this process or in `workers` processes. The runs are loaded
    here first, so a run that does not load stops the command before the port is taken."""
    import os

    import torch
    import uvicorn

    from mahn.device import resolve_device
    from mahn.index import check_index
    from mahn.serve.app import ENV, create_app

    check_index(index)  # a bad flag is refused before any run is read
    os.environ["OMP_NUM_THREADS"] = str(threads)  # worker processes inherit it
    torch.set_num_threads(threads)
    if workers == 1:
        uvicorn.run(create_app(run, device=device, compare=compare, images_root=images_root, index=index,
                               ef_search=ef_search), host=host, port=port)
        return
    for setting, value in (("run", run), ("device", device), ("compare", compare), ("images_root", images_root),
                           ("index", index), ("ef_search", ef_search)):
        if value is not None:
            os.environ[ENV[setting]] = str(value.resolve() if isinstance(value, Path) else value)
    resolve_device(device)
    create_app(run, device="cpu", compare=compare, images_root=images_root)  # check that the runs load, then fork
    run_workers(host, port, workers)


def run_workers(host: str, port: int, workers: int) -> None:
    """uvicorn's multi-process server over `mahn.serve.app:app_from_env`, with TCP_NODELAY on every connection.

    uvicorn binds the shared listening socket with protocol 0, so asyncio (which sets TCP_NODELAY only on
    sockets whose protocol is TCP) leaves Nagle's algorithm on, and each keep-alive response waits for the
    client's delayed ACK: about 40 ms per request on Linux (uvicorn issue #3149). The socket is rewrapped
    with its protocol set to TCP before the workers start; nothing else changes.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("mahn.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers)
    bound = config.bind_socket()
    listening = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    listening.set_inheritable(True)
    Multiprocess(config, sockets=[listening]).run()


def healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return response.status == 200
    return False
