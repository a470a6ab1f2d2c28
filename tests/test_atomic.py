"""Directories swapped in whole: a reader never finds the target missing or half-written, the old copy goes only
once the new one is in place, and a failed copy leaves the target as it was."""

from __future__ import annotations

import errno
import os
import shutil
import threading

import pytest

from sa_ray import atomic


def _tree(root, marker: str, files: int = 20):
    root.mkdir()
    for i in range(files):
        (root / f"part-{i}.txt").write_text(marker)
    return root


def _markers(target) -> set[str]:
    return {p.read_text() for p in target.iterdir()}


@pytest.mark.skipif(atomic._renameat2 is None, reason="no renameat2 on this system")
def test_a_reader_always_finds_one_whole_version_while_it_is_swapped(tmp_path):
    target = _tree(tmp_path / "data", "v0")
    seen, stop = [], threading.Event()

    def read() -> None:  # as a reader holding the directory it opened (a path re-resolved per file may cross)
        while not stop.is_set():
            try:
                fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                seen.append("missing")
                continue
            try:
                markers, names = set(), os.listdir(fd)
                for name in names:
                    with open(os.open(name, os.O_RDONLY, dir_fd=fd)) as f:
                        markers.add(f.read())
                seen.append(frozenset(markers) if len(names) == 20 else "half")
            except FileNotFoundError:
                seen.append("half")
            finally:
                if seen[-1] == "half" and os.fstat(fd).st_ino != os.stat(target).st_ino:
                    seen[-1] = "retired"  # the old copy, emptied once the new one was in place: allowed
                os.close(fd)

    reader = threading.Thread(target=read)
    reader.start()
    for v in range(1, 60):
        atomic.swap_in(_tree(tmp_path / f"staging-{v}", f"v{v}"), target)
    stop.set()
    reader.join()
    whole = [s for s in seen if s != "retired"]
    assert whole and "missing" not in seen and "half" not in seen and all(len(s) == 1 for s in whole)
    assert _markers(target) == {"v59"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # every old copy removed, no staging left


def test_without_the_exchange_the_old_copy_is_renamed_aside_until_the_new_one_is_in(tmp_path, monkeypatch):
    def unsupported(a, b):
        raise OSError(errno.EINVAL, "no exchange on this file system")

    monkeypatch.setattr(atomic, "exchange", unsupported)
    target = _tree(tmp_path / "model", "old")
    atomic.swap_in(_tree(tmp_path / "staging", "new"), target)
    assert _markers(target) == {"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_first_swap_is_a_rename_and_a_failed_copy_leaves_the_target_alone(tmp_path):
    target = tmp_path / "out"
    atomic.swap_in(_tree(tmp_path / "staging", "first"), target)
    assert _markers(target) == {"first"}

    source = _tree(tmp_path / "src", "second")

    def copy_until_the_disk_fills(src, dst):
        if src.endswith("part-3.txt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return shutil.copy2(src, dst)

    with pytest.raises(shutil.Error, match="No space left"):
        atomic.copy_in(source, target, copy_function=copy_until_the_disk_fills)
    assert _markers(target) == {"first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # its half copy removed
    atomic.copy_in(source, target)
    assert _markers(target) == {"second"}


def test_a_committed_pair_set_knows_when_a_file_changed_on_disk(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sa_ray.align_run import AlignRun
    from sa_ray.preference import commit_pairs

    run = AlignRun(tmp_path / "run")
    staging = tmp_path / "staging"
    staging.mkdir()
    rows = [{"iteration": 0, "utt_id": f"u{i}", "sample_idx": 0, "chosen_ids": [1, 2, i]} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), staging / "part-0.parquet")
    manifest = commit_pairs(staging, run.pairs(0), {"iteration": 0})
    assert run.pairs_done(0) == manifest and set(manifest["files_sha256"]) == {"part-0.parquet"}
    part = run.pairs(0) / "part-0.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    assert run.pairs_done(0) is None  # made again, never trained on
    part.unlink()
    assert run.pairs_done(0) is None
