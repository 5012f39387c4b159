"""Server CPU accounting from Linux ``/proc``: a process tree's user + system seconds (MLServer's inference
worker processes are counted with its front end)."""

from __future__ import annotations

import math
import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 'state' on (the name may hold spaces)


def tree_cpu_seconds(root: int) -> float:
    """user + system CPU seconds of ``root`` and all its live descendants (Linux /proc; NaN elsewhere),
    so MLServer's inference worker process is counted with its front end."""
    if not Path("/proc").is_dir():
        return math.nan
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1] = ppid
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        todo.extend(children.get(pid, []))
    return total
