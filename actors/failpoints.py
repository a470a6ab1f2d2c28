"""Failpoints: named places where a role's process dies on purpose, for fault-injection tests.

    SA_RAY_FAILPOINTS=rollout.after_generate,reference.after_score  SA_RAY_FAILPOINT_DIR=/tmp/fp  python -m jobs.align

Each named point kills the process that reaches it first (`os._exit`, as a SIGKILL or an OOM kill would: no
clean-up, the call's work lost) exactly once per job: the marker it leaves in SA_RAY_FAILPOINT_DIR lets the
restarted process, and every later one, pass. Unset (always, outside tests), `hit` is a dictionary lookup.
The variables reach the roles' processes with their runtime environment (actors/placement.py).
"""

from __future__ import annotations

import os
from pathlib import Path

NAMES = "SA_RAY_FAILPOINTS"
DIR = "SA_RAY_FAILPOINT_DIR"


def environment() -> dict[str, str]:
    """The failpoint variables of this process, to hand to the roles it starts."""
    return {k: os.environ[k] for k in (NAMES, DIR) if os.environ.get(k)}


def hit(name: str) -> None:
    if name not in os.environ.get(NAMES, "").split(","):
        return
    marker = Path(os.environ[DIR]) / name
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first process to get here dies
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(137)
