"""What requests to the Serve endpoint cost: wall time per sentence and speech made per second, over HTTP, per
backend (the torch sampler, vLLM) and number of clients.

    python -m jobs.prepare codec.path=checkpoints/base/codec run_dir=runs/serve-bench corpus.max_utterances=240
    python -m benchmarks.serve_latency run_dir=runs/serve-bench align.base_model=checkpoints/base \
        [--backend torch|vllm|both] [--clients 1,8] [--requests 16]

For each backend, deploys `jobs.serve --detach` with serve.backend set (serve.port 8123 unless overridden) on a local
Ray cluster, sends one warm-up request, then for each number of clients the held-out sentences of the run (each a new
seed, speakers in turn) from that many clients at once. Reported: the median and 99th percentile of the wall time
per request, and the real-time factor: seconds of speech made per second of wall time, all clients together
(above 1: faster than it plays). With several clients the endpoint samples their requests in batches (up to
serve.max_batch); with vLLM a batch is one engine call.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf


def _post(url: str, body: dict) -> tuple[float, float, str] | None:
    """One request: (wall seconds, speech seconds, X-Ended), or None when it is not answered 200."""
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/synthesize", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            wav, ended = response.read(), response.headers["X-Ended"]
    except (urllib.error.URLError, TimeoutError):  # an HTTP error status too: counted, not fatal to the run
        return None
    wall = time.perf_counter() - start
    audio, sample_rate = sf.read(io.BytesIO(wav))
    return wall, len(audio) / sample_rate, ended


def measure(url: str, bodies: list[dict], clients: int) -> dict:
    """`bodies` sent from `clients` clients at once: wall per request (p50, p99), speech per request, real-time
    factor, requests that hit the length limit, and requests not answered 200 (`errors`)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = list(pool.map(lambda body: _post(url, body), bodies))
    total = time.perf_counter() - start
    results = [r for r in answered if r is not None] or [(float("nan"), 0.0, "")]
    walls, seconds = [r[0] for r in results], [r[1] for r in results]
    return {
        "p50": float(np.percentile(walls, 50)),
        "p99": float(np.percentile(walls, 99)),
        "speech": float(np.median(seconds)),
        "rtf": sum(seconds) / total,
        "cut": sum(r[2] == "false" for r in results),
        "errors": sum(r is None for r in answered),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--backend", choices=["torch", "vllm", "both"], default="both")
    p.add_argument("--clients", default="1,8", help="comma-separated numbers of clients at once")
    p.add_argument("--requests", type=int, default=16, help="requests per number of clients")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from ray import serve

    from jobs import serve as serve_job
    from sa_ray.config import load_config

    overrides = ["serve.port=8123", *args.overrides]
    cfg = load_config(args.config, overrides)
    rows = pq.read_table(Path(cfg.run_dir) / "data" / "heldout_sentences", columns=["text"]).to_pylist()
    print(f"{args.requests} requests per row; wall per request p50 / p99; real-time factor of all clients together")
    print(
        f"{'backend':<8} {'clients':>7} {'p50 s':>7} {'p99 s':>7} {'speech s':>8} {'RTF':>6} {'largest batch':>13} "
        f"{'errors':>6}"
    )
    for backend in ["torch", "vllm"] if args.backend == "both" else [args.backend]:
        start = time.perf_counter()
        url = serve_job.main(["--config", args.config, "--detach", *overrides, f"serve.backend={backend}"])
        health = json.load(urllib.request.urlopen(f"{url}/health"))
        assert health["backend"] == backend, health
        speakers = health["speakers"]
        _post(url, {"text": rows[0]["text"], "speaker": speakers[0]})  # warm-up: first-call allocations
        ready = time.perf_counter() - start
        for clients in [int(c) for c in args.clients.split(",")]:
            bodies = [
                {"text": rows[i % len(rows)]["text"], "speaker": speakers[i % len(speakers)], "seed": i}
                for i in range(args.requests)
            ]
            m = measure(url, bodies, clients)
            largest = json.load(urllib.request.urlopen(f"{url}/health"))["largest_batch"]
            print(
                f"{backend:<8} {clients:>7} {m['p50']:>7.2f} {m['p99']:>7.2f} {m['speech']:>8.2f} {m['rtf']:>6.2f} "
                f"{largest:>13} {m['errors']:>6}" + (f"  ({m['cut']} hit the length limit)" if m["cut"] else ""),
                flush=True,
            )
        print(f"{backend:<8} deployed and warm in {ready:.0f} s (version {health['version']} of {health['model']})")
    serve.shutdown()


if __name__ == "__main__":
    main()
