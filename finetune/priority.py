"""Fine-tuning runs at a lower CPU priority than the rating app and its queue worker.

Training is a batch job: it can wait a second, a rater cannot. On a machine where a fine-tuning job and
the queue worker share the cores, the job raises its own nice value to ``settings.finetune_nice`` (10 by
default), so the scheduler gives the worker (and Streamlit) the CPU first and training takes what is
left; on idle cores it runs at full speed. The nice value ranks processes that compete in one
scheduling group: under systemd, where each service has its own cgroup, give the fine-tuning service a
lower ``CPUWeight=`` as well (``finetune/README.md``).
"""
from __future__ import annotations

import os


def lower_priority(niceness: int) -> int | None:
    """Raise this process's nice value to at least ``niceness`` (0: leave it); returns the nice value
    now, or None where the platform has no nice values. Never lowers a nice value set from outside
    (``nice -n 15 pickloop finetune run`` stays at 15)."""
    if not hasattr(os, "nice"):
        return None
    current = os.nice(0)
    if niceness > current:
        current = os.nice(niceness - current)
    return current
