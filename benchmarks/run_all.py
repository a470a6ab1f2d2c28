"""Every benchmark in turn, one table of their numbers and one JSON file (`make bench`).

    python -m benchmarks.run_all [--quick] [--json bench.json] [--run-dir runs/tiny] [--base checkpoints/base]
    python -m benchmarks.run_all --quick --skip rollout_bench --args "train_step_bench=--threads 2"

Each benchmark runs as `python -m benchmarks.<name> ... --json <tmp>` in a fresh process, so one's threads and
memory do not shape the next one's numbers. --quick: tiny sizes and one repeat (CI: do they run and write
numbers?); otherwise each benchmark's documented defaults. The evaluation and codec benchmarks need a prepared
run (`make demo`), rollout_bench needs vllm and learner_bench needs TRL (`pip install -r requirements/bench.txt`,
which `make bench` does); without them they are listed as skipped, with the reason.
A failed benchmark is listed as failed and makes the exit status non-zero, after the rest have run.
serve_latency (starts Ray Serve on a run of its own) and run_wall_time (reads logged runs) are run by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The row keys that are measurements, and their units; every other key of a row describes its setting.
UNITS = {
    "seconds": "s",
    "cpu_seconds": "CPU s",
    "tok_per_s": "tok/s",
    "s_per_step": "s/step",
    "s_per_utt": "s/utt",
    "stages": "s/utt",
    "wer": "WER",
    "codec_rtf": "codec s / audio s",
    "pairs_per_s": "pairs/s",
    "ref_pairs_per_s": "pairs/s",
    "pairs_per_s_with_ref": "pairs/s",
    "flops_per_s": "FLOP/s",
    "flop_per_step": "FLOP",
    "mfu": "of matmul FLOP/s",
    "ratio": "ratio",
    "busy_seconds": "s",
    "other_seconds": "s",
    "other_share": "of wall",
    "peak_rss_mb": "MiB",
    "rollout_seconds": "s",
    "learn_seconds": "s",
    "per_pair_seconds": "s/pair",
    "r2": "R^2",
    "speed_vs_sa_ray": "x sa-ray's pairs/s",
}
# head size 64 / 2 = 32: the smallest vLLM's CPU attention serves (tests/test_vllm.py)
TINY_LLAMA = "--hidden 64 --layers 2 --heads 2 --intermediate 128 --requests 4 --prompt-len 20 --new-tokens 8"
# sa-ray's learner step vs TRL's DPOTrainer, on a tiny AR model: 2 pairs a step, one timed step
LEARNER_QUICK = (
    "--hidden 64 --layers 2 --batch-size 2 --prompt-len 20 --min-len 8 --max-len 24 --steps 1 --repeats 1 "
    "--matmul-size 256"
)


def plan(args: argparse.Namespace) -> dict[str, tuple[list[str], str | None]]:
    """Benchmark name -> (its arguments, why it is skipped or None)."""
    q, run, base = args.quick, shlex.quote(args.run_dir), shlex.quote(args.base)  # quoted: the plan is split below
    prepared = (Path(args.run_dir) / "data").is_dir()
    unprepared = None if prepared else f"no prepared run: {args.run_dir}/data is missing (make demo)"
    aligned = any(Path(args.run_dir).glob("align/records/iter_*.json"))
    unaligned = None if aligned else f"no align run: {args.run_dir}/align/records is empty (make demo)"
    no_vllm = None if importlib.util.find_spec("vllm") else "vllm is not installed"
    no_trl = None if importlib.util.find_spec("trl") else "trl is not installed (pip install -r requirements/bench.txt)"
    benches = {
        "sampler_bench": (f"{TINY_LLAMA} --batch-size 4 --threads 1 --repeats 1 --forced" if q else "--forced", None),
        "train_step_bench": ("--batch 2 --length 32 --repeats 1" if q else "", None),
        "rollout_bench": (f"{TINY_LLAMA} --repeats 1" if q else "", no_vllm),
        "learner_bench": (LEARNER_QUICK if q else "", no_trl),
        "codec_intelligibility": (f"--run-dir {run} --n {2 if q else 40}", unprepared),
        "iteration_profile": (f"--run-dir {run}", unaligned),
        "iteration_scaling": (
            f"--run-dir {run} --base {base}" + (" --sizes 4,8,12 --batch-size 4" if q else ""),
            unprepared,
        ),
        "rollout_replicas": (
            f"--run-dir {run} --base {base}" + (" --pairs 8 --batch-size 4" if q else ""),
            unprepared,
        ),
        "eval_bench": (
            f"--base {base} --n {2 if q else 16} --threads {1 if q else '1,2 --workers 2'} run_dir={run} "
            f"codec.path={base}/codec",
            unprepared,
        ),
    }
    extra = dict(a.partition("=")[::2] for a in args.args)
    skip = {name: f"--skip {name}" for name in args.skip}
    skip.update({name: "not in --only" for name in benches if args.only and name not in args.only})
    return {
        name: ([*shlex.split(argv), *shlex.split(extra.get(name, ""))], skip.get(name) or reason)
        for name, (argv, reason) in benches.items()
    }


def run(name: str, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json", str(out), *argv]
        print(f"{name}: python {shlex.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        result = {"name": name, "command": cmd[1:], "seconds": time.perf_counter() - start}
        if proc.returncode == 0 and out.exists():
            print(f"{name}: done in {result['seconds']:.0f} s", flush=True)
            return {**result, "status": "ok", "rows": json.loads(out.read_text())}
    lines = (proc.stdout + proc.stderr).strip().splitlines() or [""]
    print("\n".join(lines[-20:]), file=sys.stderr)  # enough of its output to see why
    return {**result, "status": "failed", "reason": f"exit {proc.returncode}: {lines[-1][:200]}"}


def metrics(row: dict) -> tuple[str, list[tuple[str, float, str]]]:
    """A row as (its setting, [(metric, value, unit)]); nested measurements (eval stages, WER per ASR) flattened."""
    setting = " ".join(f"{k}={v}" for k, v in row.items() if k not in UNITS)
    found = []
    for key, value in row.items():
        if key in UNITS:
            for sub, x in value.items() if isinstance(value, dict) else [("", value)]:
                if x is not None:  # e.g. no codec time for the original audio
                    found.append((f"{key}.{sub}" if sub else key, float(x), UNITS[key]))
    return setting, found


def table(results: list[dict]) -> str:
    lines = ["| benchmark | setting | metric | value | unit |", "|---|---|---|---:|---|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | - | {r['status']}: {r['reason']} | | |")
        for row in r.get("rows", []):
            setting, found = metrics(row)
            for metric, value, unit in found:
                shown = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
                lines.append(f"| {r['name']} | {setting} | {metric} | {shown} | {unit} |")
    return "\n".join(lines)


def machine() -> dict:
    import torch  # only here: run_all itself measures nothing

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg(),  # a shared machine's numbers depend on it
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks that they run")
    ap.add_argument("--json", default="bench.json", help="write the machine facts and every row here")
    ap.add_argument("--run-dir", default="runs/tiny", help="a prepared run, for the evaluation and codec ones")
    ap.add_argument("--base", default="checkpoints/base", help="the base model (and its codec) to evaluate")
    ap.add_argument("--only", nargs="+", default=[], help="run these benchmarks only")
    ap.add_argument("--skip", nargs="+", default=[], help="skip these benchmarks")
    ap.add_argument("--args", action="append", default=[], help='NAME="ARGS": more arguments for one benchmark')
    args = ap.parse_args(argv)
    jobs = plan(args)
    unknown = {*args.only, *args.skip, *(a.partition("=")[0] for a in args.args)} - set(jobs)
    if unknown:
        ap.error(f"no benchmark {', '.join(sorted(unknown))}; there are {', '.join(jobs)}")
    facts = machine()
    results = []
    for name, (bench_argv, reason) in jobs.items():
        if reason:
            print(f"{name}: skipped ({reason})", flush=True)
            results.append({"name": name, "status": "skipped", "reason": reason})
        else:
            results.append(run(name, bench_argv))
    print(f"\n{table(results)}\n")
    Path(args.json).write_text(json.dumps({"quick": args.quick, "machine": facts, "benchmarks": results}, indent=1))
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    sys.exit(any(r["status"] == "failed" for r in main()))
