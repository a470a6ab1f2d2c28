"""What a role spends: the seconds of its own work and its process's peak memory (the iteration profile).

A role's `@metered` methods add the time spent inside them to the role's busy seconds; `Metered.usage()` returns
them with the peak resident set of the actor's process. The align loop reads every role's usage around each
version it makes (`actors.align_stages.usage_record`): a stage's wall time less its roles' busy seconds is what
Ray scheduling, serialisation, Parquet I/O and waiting cost (`benchmarks/iteration_profile.py` prints it).
"""

from __future__ import annotations

import functools
import resource
import sys
import time


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB (Linux counts ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def metered(method):
    """Counts the seconds spent inside `method` (a role's method: one call at a time) as the role's busy time; a
    metered method called by another is counted once, in its caller's."""

    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        if self.__dict__.get("_metering"):
            return method(self, *args, **kwargs)
        start, self._metering = time.perf_counter(), True
        try:
            return method(self, *args, **kwargs)
        finally:
            self._metering = False
            self.busy_seconds = getattr(self, "busy_seconds", 0.0) + time.perf_counter() - start

    return timed


class Metered:
    """A role whose `@metered` methods count its busy seconds; `usage()` is the role's remote method for them."""

    busy_seconds = 0.0

    def usage(self) -> dict[str, float]:
        return {"busy_seconds": self.busy_seconds, "peak_rss_mb": peak_rss_mb()}
