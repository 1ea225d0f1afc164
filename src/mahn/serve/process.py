"""Running `mahn serve`: the server itself, in this process or in N worker processes (run_server, run_workers).
`mahn serve` as a child process for tests and benchmarks is tests/servers.py."""

from __future__ import annotations

import socket
from pathlib import Path


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
