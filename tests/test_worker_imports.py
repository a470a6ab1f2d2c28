"""Ray Data's pooled workers import the module of every stage function they run, once per worker process: the
modules of the pipelines' stages stay free of torch, transformers, peft and mlflow (seconds of CPU a worker). The
align job's driver only starts roles and Ray Train runs: it imports no transformers or peft (the roles do)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# actors.pipeline: the rollout pipeline's stages (with GRPO's and PPO's row builders, sa_ray.groups);
# sa_ray.preference: the learner's replay filter; sa_ray.data.prepare: prepare's grouping and writing stages
STAGE_MODULES = ("actors.pipeline", "sa_ray.groups", "sa_ray.preference", "sa_ray.data.prepare")


# what the align job's driver imports: the job, its stages (the learner's Ray Train launch among them)
DRIVER_MODULES = ("jobs.align", "actors.align_stages")


def _imports_none_of(modules: tuple[str, ...], heavy: set[str]) -> None:
    script = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"heavy = sorted({heavy!r} & set(sys.modules))\n"
        "assert not heavy, heavy\nprint('light')"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "light"


def test_the_stage_functions_modules_import_nothing_heavy():
    _imports_none_of(STAGE_MODULES, {"torch", "transformers", "peft", "mlflow", "scipy"})


def test_the_align_driver_imports_no_model_library():
    _imports_none_of(DRIVER_MODULES, {"transformers", "peft"})
