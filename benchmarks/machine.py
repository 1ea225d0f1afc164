"""Who else used the machine while a benchmark ran: the CPU seconds of the whole machine and of the benchmark's own
processes, whose difference over a measurement is what other processes used (serve_load.py, scale.py)."""

from __future__ import annotations

import os
from pathlib import Path

OTHER_CPU_LIMIT = 0.1  # cores: above this over a measurement, the machine was shared with other jobs


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy since boot, CPU seconds of this process and its live
    descendants, with the children each has waited for): their difference over a measurement is what other
    processes used."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    busy = sum(fields)  # user, nice, system: processes' time (interrupts, the loopback traffic's included, left out)
    parents, used = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while being read
            continue
        pid = int(stat.parent.name)
        # ppid; utime + stime, and cutime + cstime: the children it has waited for (wrk, a finished stage)
        parents[pid], used[pid] = int(after_name[1]), sum(int(x) for x in after_name[11:15])
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return busy / tick, sum(used.get(pid, 0) for pid in tree) / tick
