"""Directories that appear whole or not at all, and replace an older copy without a moment of absence.

`swap_in(staging, target)` makes a fully written `staging` directory the `target`. Where `target` exists, the two
are exchanged in one system call (Linux `renameat2(RENAME_EXCHANGE)`), so a reader finds the old directory or the
new one, never neither and never a half; the old copy is deleted only once the new one is in place. Elsewhere (a
file system or OS without the exchange) the old copy is renamed aside first and deleted after: the path is missing
for the instant between two renames, and nothing is ever half-written. Both sides must be on one file system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _libc_renameat2() -> Callable | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_renameat2 = _libc_renameat2()


def exchange(a: str | Path, b: str | Path) -> None:
    """Swaps two existing paths in one step; OSError(ENOSYS / EINVAL / ...) where the system cannot."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def aside(target: Path) -> Path:
    """A sibling name for a staging or retired copy of `target` (hidden; one per call)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")


def swap_in(staging: str | Path, target: str | Path) -> Path:
    """`staging` (complete) becomes `target`; an older `target` is removed once the new one is in place."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return target
    try:
        exchange(staging, target)
        old = staging  # after the exchange, the staging name holds the old copy
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
            raise
        old = aside(target)
        os.replace(target, old)
        os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def copy_in(source: str | Path, target: str | Path, **copytree_kwargs) -> Path:
    """A copy of `source` becomes `target` whole (written beside it, then `swap_in`)."""
    target = Path(target)
    staging = aside(target)
    try:
        shutil.copytree(source, staging, **copytree_kwargs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return swap_in(staging, target)
