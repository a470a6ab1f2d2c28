"""`make test` runs the Ray tier as two halves side by side (scripts/test.sh), split by test file in tests/conftest.py:
every file must run in exactly one of them, and the first half's files must exist (a renamed one would leave that
half empty and the split undone)."""

from pathlib import Path

from tests.conftest import FIRST_HALF, _other_half

HERE = Path(__file__).parent


def test_the_first_half_names_test_files_that_exist():
    assert FIRST_HALF
    assert all((HERE / name).is_file() for name in FIRST_HALF), FIRST_HALF


def test_every_test_file_runs_in_exactly_one_half_and_in_a_run_of_the_whole(monkeypatch):
    files = sorted(HERE.glob("test_*.py"))
    halves = {}
    for half in ("1", "2"):
        monkeypatch.setenv("SA_RAY_TEST_HALF", half)
        halves[half] = {path.name for path in files if not _other_half(path)}
    assert halves["1"] == set(FIRST_HALF)
    assert halves["1"].isdisjoint(halves["2"]) and halves["1"] | halves["2"] == {path.name for path in files}
    monkeypatch.delenv("SA_RAY_TEST_HALF")
    assert not any(_other_half(path) for path in files)  # outside `make test` (plain pytest) every file runs
