"""A new model without downtime: load a run beside the served one, check it, then swap it in.

The new run is loaded and warmed in a thread while the old one goes on answering; it must answer a
recommendation with finite scores before it is swapped in. The swap itself is one assignment
(`engines["main"] = new`): a request picks its engine once, so requests in flight finish on the old one and
the next ones see the new one. A run that fails to load or to answer leaves the old one serving, and the error
says why.

Items added through the service (POST /items) live in the served run's `added/` folder. Reloading the same
run keeps them (they are on disk). Switching to another run carries them over (`catalog.carry_added`) under
the old run's add lock, so an add is either carried or lands on the new run; when the new model cannot read
content the swap is refused with 409, unless the request says `drop_added` (the items then stay in the old
run's folder, not served).

With `mahn serve --workers N` each worker holds its own model: SIGHUP to the server's main process replaces
the workers one by one, each new one serving before its old one stops (uvicorn's supervisor), and the
endpoint answers 409 with that advice.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mahn.catalog import carry_added
from mahn.errors import DataError
from mahn.serve.engine import Engine


class SwapRefused(Exception):
    """A swap that would lose served items, or cannot be done in this process (409)."""


@dataclass
class Swapper:
    """Swaps the engine named "main" of an app's `engines` dict; one swap at a time. `load(run)` loads an engine
    with the server's settings (device, images root, index)."""

    engines: dict[str, Engine]
    load: Callable[[Path], Engine]
    workers: int = 1
    swaps: int = 0

    def __post_init__(self):
        self.lock = threading.Lock()

    def swap(self, run: Path | None = None, drop_added: bool = False) -> dict:
        """Load `run` (None: the served run's path again, links resolved anew) and swap it in."""
        if self.workers > 1:
            raise SwapRefused(f"this server runs {self.workers} worker processes, each with its own model: send "
                              f"SIGHUP to its main process (pid {os.getppid()}) to replace them one by one")
        started = time.perf_counter()
        with self.lock:
            old = self.engines["main"]
            target = Path(run) if run is not None else old.run
            if not (target / "config.json").is_file():
                raise DataError("not a training run (no config.json)", target)
            same = os.path.realpath(target) == os.path.realpath(old.run)
            new = self.load(target)
            check_answers(new)
            with old.add_lock:  # no add lands on the old run from here on
                carried = {"carried": 0, "skipped": []}
                if same:
                    new.recommender.refresh_if_changed()  # items added while the new copy loaded
                elif not drop_added:
                    try:
                        recommender = new.recommender
                        carried = carry_added(old.run, new.run, loaded=(recommender.model, recommender.dataset))
                    except DataError as error:
                        raise SwapRefused(f"the items added to the served run would not be served by the new one "
                                          f"({error}); send drop_added: true to swap anyway (they stay in "
                                          f"{old.run}/added)") from error
                    recommender.refresh()
                self.engines["main"] = new
                old.retired = True
                old.batcher.close()  # its queued requests are answered, then its thread stops
            self.swaps += 1
            previous = old.version
        del old
        give_back_memory()  # the old run, once the requests holding it are done
        later = threading.Timer(RELEASE_AFTER_S, give_back_memory)
        later.daemon = True  # never holds up a shutdown
        later.start()
        return {"run": str(new.run), "version": new.version, "previous_version": previous,
                "carried": carried["carried"], "skipped": carried["skipped"],
                "seconds": round(time.perf_counter() - started, 2)}


RELEASE_AFTER_S = 5.0  # time for the requests in flight on the old run to finish


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_FROM = 128 * 1024  # bytes


def map_large_allocations() -> None:
    """glibc: serve allocations of 128 KiB and more from their own mappings, unmapped when freed. By default glibc
    raises this threshold after a large block is freed, and from then on large tensors live in the heap, where
    a freed run leaves holes that are not given back; a fixed threshold keeps a swapped-out run's tables and
    weights returnable. Called once at the start of `mahn serve`."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_FROM)


def freeze_loaded() -> None:
    """Take every object alive now (the loaded runs, the libraries) out of the garbage collector's scans. A full
    collection walks every tracked object, and on a busy server one stalls the requests in flight by tens of ms
    (serve_load's p99); frozen objects are still freed when their last reference goes. Called once the runs are
    loaded, and again after a swap."""
    gc.collect()
    gc.freeze()


def give_back_memory() -> None:
    """Collect what a swapped-out run held and hand the freed heap back to the system. glibc's allocator keeps
    freed memory for reuse, so without this a server that swaps runs keeps the old run's pages."""
    gc.unfreeze()  # the old run's reference cycles were frozen with it
    freeze_loaded()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def check_answers(engine: Engine) -> None:
    """The loaded run recommends: one history of its first item, finite scores."""
    recommender = engine.recommender
    if len(recommender) < 2:
        raise DataError("the run serves fewer than 2 items", engine.run)
    answer = recommender.recommend([recommender.keys[0]], k=1)
    if not answer or not math.isfinite(answer[0].score):
        raise DataError("the run does not give finite scores", engine.run)


@contextlib.contextmanager
def writable(engines: dict[str, Engine], name: str):
    """The engine serving `name` now, its add lock held: an add that waited for a swap goes to the new run."""
    while True:
        engine = engines[name]
        with engine.add_lock:
            if not engine.retired:
                yield engine
                return
