"""Ray Data's pooled workers import the module of every stage function they run, once per worker process: the
modules of the pipelines' stages stay free of torch, transformers, peft and mlflow (seconds of CPU a worker)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# actors.pipeline: the rollout pipeline's stages (with GRPO's and PPO's row builders, sa_ray.groups);
# sa_ray.preference: the learner's replay filter; sa_ray.data.prepare: prepare's grouping and writing stages
STAGE_MODULES = ("actors.pipeline", "sa_ray.groups", "sa_ray.preference", "sa_ray.data.prepare")


def test_the_stage_functions_modules_import_nothing_heavy():
    script = (
        f"import sys\nfor m in {STAGE_MODULES!r}: __import__(m)\n"
        "heavy = sorted({'torch', 'transformers', 'peft', 'mlflow', 'scipy'} & set(sys.modules))\n"
        "assert not heavy, heavy\nprint('light')"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "light"
