"""`python -m benchmarks.run_all --quick` (what `make bench` runs, at tiny sizes): every benchmark runs and writes
numbers, the ones that cannot run say why, and a failed one fails the run. Never a speed threshold."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks.run_all import metrics
from tests.conftest import REPO


def run_all(tmp_path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "benchmarks.run_all", "--quick", "--json", str(out), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    print(proc.stdout, proc.stderr)
    return proc.returncode, {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}


def measured(bench: dict) -> dict[str, list[float]]:
    """metric -> its values over the benchmark's rows."""
    assert bench["status"] == "ok", bench
    values: dict[str, list[float]] = {}
    for row in bench["rows"]:
        for metric, value, _ in metrics(row)[1]:
            values.setdefault(metric, []).append(value)
    return values


def all_finite_positive(values: list[float]) -> bool:
    return bool(values) and all(math.isfinite(v) and v > 0 for v in values)


def test_quick_run_writes_numbers_says_why_it_skipped_and_fails_on_a_failure(tmp_path):
    # one run for all three (each benchmark is a fresh process: seconds of imports): rollout_bench starts a vLLM
    # engine (~40-70 s here, left out), the sampler gets a setting torch refuses, the run dir does not exist
    code, benches = run_all(
        tmp_path,
        "--skip",
        "rollout_bench",
        "--run-dir",
        str(tmp_path / "no-run"),
        "--args",
        "sampler_bench=--threads 0",
    )
    assert code != 0  # a failed benchmark fails the run, after the others ran
    assert benches["sampler_bench"]["status"] == "failed"
    assert "thread" in benches["sampler_bench"]["reason"].lower()  # torch's own complaint, passed on
    train = measured(benches["train_step_bench"])
    assert all_finite_positive(train["s_per_step"]) and len(train["s_per_step"]) == 2  # fp32, bf16
    assert "--skip" in benches["rollout_bench"]["reason"]
    for name in ("codec_intelligibility", "eval_bench", "iteration_scaling", "rollout_replicas"):
        assert benches[name]["status"] == "skipped" and "no-run/data" in benches[name]["reason"]
    assert (
        benches["iteration_profile"]["status"] == "skipped" and "no-run/align" in benches["iteration_profile"]["reason"]
    )


def test_the_scaling_fit_reads_a_fixed_cost_and_a_cost_per_pair():
    from benchmarks.iteration_scaling import fit, main

    fixed, per_pair, r2 = fit([64, 128, 256], [20 + 0.5 * n for n in (64, 128, 256)])
    assert (fixed, per_pair, r2) == (pytest.approx(20), pytest.approx(0.5), pytest.approx(1))
    assert fit([1, 2, 3], [1, 5, 2])[2] < 0.5  # not a line
    with pytest.raises(SystemExit, match="at least three sizes"):
        main(["--sizes", "8,16"])
