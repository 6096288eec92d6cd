"""How many threads llama.cpp gets by default: the cores nobody else is using right now.

llama.cpp's OpenMP worker threads spin at every barrier. When one of them is descheduled
because another process wants its core, the others spin waiting for it, and decoding with every
core becomes slower than with fewer (docs/generation.md, "Threads": on the 2-core machine with
one other busy process, 2 threads decode at 0.4x-0.65x the speed of 1). So the default is

    threads = max(1, cores - round(busy cores of other processes))

with the busy cores sampled from ``/proc/stat`` over a quarter of a second when the model is
loaded. CPU time of this process and its descendants (the Prefect server a build starts while
the model loads, tool workers) is not counted: those are the build's own, short-lived work. The
1-minute load average would count them, and would still count a compile that just finished.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.25

log = logging.getLogger("prmforge.policy")


@dataclass(frozen=True)
class _CpuTicks:
    busy: int  # all CPUs, clock ticks not idle and not waiting for I/O
    total: int
    own: int  # this process tree's user + system ticks


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _own_tree_ticks(proc: Path) -> int:
    """utime + stime of this process and its descendants (clock ticks, as /proc/stat)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        # Fields after the command name (which may contain spaces) start at ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    total, pending = 0, [os.getpid()]
    while pending:
        pid = pending.pop()
        total += ticks.get(pid, 0)
        pending.extend(children.get(pid, ()))
    return total


def _sample(proc: Path) -> _CpuTicks:
    cpu = (proc / "stat").read_text().splitlines()[0].split()[1:9]  # user nice system idle iowait irq softirq steal
    values = [int(value) for value in cpu]
    idle = values[3] + values[4]
    return _CpuTicks(busy=sum(values) - idle, total=sum(values), own=_own_tree_ticks(proc))


def busy_cores_of_others(seconds: float = SAMPLE_SECONDS, proc: Path = Path("/proc")) -> float | None:
    """Cores kept busy by processes outside this process tree, averaged over ``seconds``.

    None where ``/proc`` cannot be read (not Linux).
    """
    try:
        before = _sample(proc)
        time.sleep(seconds)
        after = _sample(proc)
    except (OSError, ValueError, IndexError):
        return None
    total = after.total - before.total
    if total <= 0:
        return None
    system_cpus = os.cpu_count() or 1
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / total * system_cpus)


def default_threads(*, quiet: bool = False) -> int:
    """``max(1, cores - round(busy cores of other processes))``; all cores where /proc is missing.

    Taking fewer than all cores is logged (a warning, unless ``quiet``: the llama.cpp preflight's
    short probe): the same build then runs slower than on an idle machine, and the user should
    know why (the texts are the same either way)."""
    cores = usable_cores()
    busy = busy_cores_of_others()
    if busy is None:
        return cores
    threads = max(1, cores - round(busy))
    if threads < cores and not quiet:
        log.warning("llama.cpp decodes with %d of %d cores: other processes keep %.1f busy "
                    "(set policy.n_threads to choose)", threads, cores, busy)
    return threads
