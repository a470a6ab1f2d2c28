"""The dependency locks: every package, transitive ones included, pinned for the platform CI tests on.

    python scripts/lock.py            # (make lock) resolve each set with pip and write requirements/<set>.txt
    python scripts/lock.py --check    # exit 1 when pyproject.toml's dependencies changed since the locks were made

pyproject.toml keeps ranges for people who install sa-ray as a library; scripts/install.sh installs from the lock
(`pip install -c requirements/<set>.txt ...`), so a fresh machine gets exactly what CI tested. Each set is
resolved by pip itself (`pip install --dry-run --ignore-installed --report`), with this machine's pip settings
for the CPU sets (they hold the CPU torch wheel) and the plain package index for the GPU set (CUDA torch).
Each lock's first lines carry a fingerprint of the dependency tables it was made from; `--check` compares.
requirements/build.txt pins the installer (the pip that resolved the locks) and the build backend
(pyproject's build-system.requires), passed to pip as `--build-constraint`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
PYTHON, PLATFORM = "3.11", "manylinux_2_28_x86_64"  # the platform the locks are for (CI's)
# set -> the optional-dependency groups installed on top of `dependencies`
SETS = {"base": [], "test": ["test"], "cpu-vllm": ["test", "cpu-vllm"], "gpu": ["gpu"]}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirements(name: str) -> list[str]:
    if name == "build":
        return pyproject()["build-system"]["requires"]
    p = pyproject()["project"]
    return [*p["dependencies"], *(r for g in SETS[name] for r in p["optional-dependencies"][g])]


def header(name: str) -> str:
    """The lock's first lines: what it is for and a fingerprint of what it was made from in pyproject.toml."""
    made_from = {"requires-python": pyproject()["project"]["requires-python"], "requirements": requirements(name)}
    digest = hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]
    return (
        f"# sa-ray lock '{name}' for CPython {PYTHON} on {PLATFORM}: made by `make lock`, do not edit.\n"
        f"# pyproject fingerprint: {digest}\n"
    )


def resolve(name: str) -> list[tuple[str, str]]:
    """(name, version) of every package pip would install for the set on a fresh machine."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-qq",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            *requirements(name),
        ]
        env = dict(os.environ)
        if name == "gpu":  # a CUDA machine: the package index's torch (CUDA), not this machine's CPU wheel or its cap
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", PIP_CONSTRAINT="")
        subprocess.run(cmd, check=True, env=env)
        installs = json.loads(report.read_text())["install"]
    return sorted((i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"]) for i in installs)


def stale() -> list[str]:
    """The locks whose fingerprint no longer matches pyproject.toml (or that are missing)."""
    out = []
    for name in [*SETS, "build"]:
        path = LOCKS / f"{name}.txt"
        if not path.exists() or not path.read_text().startswith(header(name)):
            out.append(name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the locks match pyproject.toml")
    names = [*SETS, "build"]
    parser.add_argument("sets", nargs="*", default=names, help=f"which locks to make, of {names} (default: all)")
    args = parser.parse_args()
    if unknown := set(args.sets) - set(names):
        parser.error(f"unknown lock {sorted(unknown)}; the locks are {names}")
    if args.check:
        if names := stale():
            print(
                f"requirements/{{{','.join(names)}}}.txt do not match pyproject.toml's dependencies: run `make lock`",
                file=sys.stderr,
            )
            return 1
        print("locks match pyproject.toml")
        return 0
    LOCKS.mkdir(exist_ok=True)
    for name in args.sets:
        pins = resolve(name)
        if name == "build":
            pins = [("pip", version("pip")), *pins]
        (LOCKS / f"{name}.txt").write_text(header(name) + "".join(f"{n}=={v}\n" for n, v in pins))
        print(f"requirements/{name}.txt: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
