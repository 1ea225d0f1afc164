"""Running `mahn serve`: the server itself, in this process or in N worker processes (run_server, run_workers).
`mahn serve` as a child process for tests and benchmarks is tests/servers.py."""

from __future__ import annotations

import socket
from pathlib import Path

GRACE_SECONDS = 30  # on SIGTERM, requests in flight get this long to finish
WORKER_START_SECONDS = 300  # SIGHUP with --workers N: a new worker may take this long to load the run


def run_server(run: Path, *, host: str, port: int, device: str, workers: int, threads: int, compare: Path | None,
               images_root: Path | None, index: str, ef_search: int, probes: int, access) -> None:
    """`mahn serve`: the app of `run` on uvicorn, in this process or in `workers` processes. The runs are loaded
    here first, so a run that does not load stops the command before the port is taken. SIGTERM drains the
    requests in flight (up to GRACE_SECONDS); SIGHUP reloads the run without dropping a request."""
    import os

    import torch
    import uvicorn

    from mahn.device import resolve_device
    from mahn.index import check_index
    from mahn.serve.access import TOKEN_ENV, check_exposure
    from mahn.serve.app import ENV, create_app
    from mahn.serve.swap import freeze_loaded, map_large_allocations

    check_index(index)  # a bad flag is refused before any run is read
    check_exposure(host, access)
    map_large_allocations()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # worker processes inherit it
    torch.set_num_threads(threads)
    if workers == 1:
        app = create_app(run, device=device, compare=compare, images_root=images_root, index=index,
                         ef_search=ef_search, probes=probes, access=access)
        reload_on_hangup(app.state.swapper)
        freeze_loaded()
        uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=GRACE_SECONDS)
        return
    for setting, value in (("run", run), ("device", device), ("compare", compare), ("images_root", images_root),
                           ("index", index), ("ef_search", ef_search), ("probes", probes),
                           ("protect", access.protect),
                           ("read_only", "1" if access.read_only else None), ("workers", workers)):
        if value is not None:
            os.environ[ENV[setting]] = str(value.absolute() if isinstance(value, Path) else value)
    if access.token is not None:
        os.environ[TOKEN_ENV] = access.token  # the workers' environment, readable by this user only
    resolve_device(device)
    create_app(run, device="cpu", compare=compare, images_root=images_root)  # check that the runs load, then fork
    run_workers(host, port, workers)


def reload_on_hangup(swapper) -> None:
    """SIGHUP reloads the served run (its path read anew) in a thread; the outcome is logged."""
    import logging
    import signal
    import threading

    log = logging.getLogger("uvicorn.error")

    def reload() -> None:
        try:
            outcome = swapper.swap()
            log.info("SIGHUP: serving %s, version %s (was %s), %.1f s", outcome["run"], outcome["version"],
                     outcome["previous_version"], outcome["seconds"])
        except Exception as error:  # the old run goes on serving
            log.error("SIGHUP: the run was not swapped in, the old one goes on serving: %s", error)

    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, name="sighup-reload").start())


def run_workers(host: str, port: int, workers: int) -> None:
    """uvicorn's multi-process server over `mahn.serve.app:app_from_env`, with TCP_NODELAY on every connection.

    uvicorn binds the shared listening socket with protocol 0, so asyncio (which sets TCP_NODELAY only on
    sockets whose protocol is TCP) leaves Nagle's algorithm on, and each keep-alive response waits for the
    client's delayed ACK: about 40 ms per request on Linux (uvicorn issue #3149). The socket is rewrapped
    with its protocol set to TCP before the workers start; nothing else changes.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("mahn.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                            timeout_graceful_shutdown=GRACE_SECONDS, timeout_worker_healthcheck=WORKER_START_SECONDS)
    bound = config.bind_socket()
    listening = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    listening.set_inheritable(True)
    Multiprocess(config, sockets=[listening]).run()
