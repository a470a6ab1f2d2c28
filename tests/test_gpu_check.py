"""scripts/gpu-check.sh / scripts/gpu_check.py: the accelerator check runs for real here, on the CPU (--quick),
with Ray, vLLM, MLflow and DeepSpeed made unimportable, as on a bare CUDA image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
WRAPPER = REPO / "scripts" / "gpu-check.sh"

# A module set to None in sys.modules fails to import: the check must not need any of these.
BLOCKED = ("ray", "vllm", "mlflow", "deepspeed")
RUN_BLOCKED = (
    "import runpy, sys\n"
    f"for m in {BLOCKED!r}: sys.modules[m] = None\n"
    f"sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]\n"
    f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
)

MEASUREMENTS = {
    "sampler": ("tokens", "tokens_per_s", "seconds"),
    "reference_logprobs": ("pairs", "device_float32_vs_cpu_float32"),
    "learner": ("pairs_per_s", "steps_per_s", "step0_loss", "last_loss"),
    "nar_decode": (
        "audio_seconds",
        "nar_audio_s_per_s",
        "decode_cpu_audio_s_per_s",
        "vocoder_device_audio_s_per_s",
        "vocoder_device_float32_max_abs_diff_vs_cpu",
    ),
}
CHECKS = (
    "sampler_ran",
    "sampler_outputs_valid",
    "reference_logprobs_ran",
    "reference_logprobs_float32",
    "learner_ran",
    "learner_step0_loss_ln2",
    "learner_finite_and_moving",
    "nar_decode_ran",
    "nar_codes_valid",
    "codec_decode_valid",
    "vocoder_device_float32_matches_cpu",
)


def test_quick_cpu_run_without_ray_vllm_mlflow(tmp_path):
    out = tmp_path / "check.json"
    # one thread: on a shared 2-core machine two OpenMP threads spin against other processes (80 s instead of 15 s)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_BLOCKED, "--device", "cpu", "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["passed"] and report["failed"] == []
    assert set(BLOCKED) <= set(report["environment"]["absent_modules"])
    env_info = report["environment"]
    for key in ("torch", "transformers", "peft", "device", "device_name"):
        assert env_info[key], key
    assert env_info["device"] == "cpu" and report["precision"]["low_dtype"] == "float32"
    assert "float32" in report["precision"]["note"]  # says the bf16 parts ran in float32 here
    assert report["data"]["synthetic"] is True
    for section, keys in MEASUREMENTS.items():
        m = report["measurements"][section]
        assert "error" not in m, (section, m)
        for key in keys:
            assert key in m, (section, key)
    assert report["measurements"]["sampler"]["tokens_per_s"] > 0
    assert report["measurements"]["learner"]["pairs_per_s"] > 0
    assert report["measurements"]["nar_decode"]["nar_audio_s_per_s"] > 0
    assert abs(report["measurements"]["learner"]["step0_loss"] - 0.6931472) < 1e-3
    assert report["measurements"]["reference_logprobs"]["device_float32_vs_cpu_float32"]["finite"]
    for name in CHECKS:
        assert report["checks"][name]["passed"], (name, report["checks"][name])
    assert report["total_seconds"] < 120  # ~15 s here
    assert "wrote" in proc.stdout and str(out) in proc.stdout


def test_wrapper_help_and_missing_packages(tmp_path):
    help_ = subprocess.run(["bash", str(WRAPPER), "--help"], capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0, help_.stderr
    for option in ("--device", "--dtype", "--out", "--quick"):
        assert option in help_.stdout
    # a Python without site-packages: no torch, transformers or peft; the wrapper says what to install
    bare = tmp_path / "python-without-packages"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(WRAPPER), "--device", "cpu", "--quick", "--out", str(tmp_path / "x.json")],
        env={**os.environ, "PYTHON": str(bare)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "torch" in proc.stderr and "pip install" in proc.stderr and "peft" in proc.stderr
    assert not (tmp_path / "x.json").exists()
