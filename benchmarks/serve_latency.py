"""What requests to the Serve endpoint cost: wall time per sentence and the real-time factor, over HTTP.

    python -m jobs.prepare codec.path=checkpoints/base/codec run_dir=runs/serve-bench corpus.max_utterances=240
    python -m benchmarks.serve_latency run_dir=runs/serve-bench align.base_model=checkpoints/base \
        [--requests 12] [--clients 1]

Starts `jobs.serve --detach` on a local Ray cluster (serve.port 8123 unless overridden), then sends the
held-out sentences of the run (each a new seed, speakers in turn) from --clients clients at once, after one
warm-up request. Real-time factor = seconds of speech made per second of wall time, all clients together
(above 1: faster than it plays); with several clients the endpoint samples their requests in batches.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import soundfile as sf


def _post(url: str, body: dict) -> tuple[float, float, str]:
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/synthesize", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=600) as response:
        wav, ended = response.read(), response.headers["X-Ended"]
    wall = time.perf_counter() - start
    audio, sample_rate = sf.read(io.BytesIO(wav))
    return wall, len(audio) / sample_rate, ended


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from ray import serve

    from jobs import serve as serve_job
    from sa_ray.config import load_config

    overrides = ["serve.port=8123", *args.overrides]
    cfg = load_config(args.config, overrides)
    url = serve_job.main(["--config", args.config, "--detach", *overrides])
    health = json.load(urllib.request.urlopen(f"{url}/health"))
    rows = pq.read_table(Path(cfg.run_dir) / "data" / "heldout_sentences", columns=["text"]).to_pylist()
    speakers = health["speakers"]
    _post(url, {"text": rows[0]["text"], "speaker": speakers[0]})  # warm-up: first-call allocations
    bodies = [
        {"text": rows[i % len(rows)]["text"], "speaker": speakers[i % len(speakers)], "seed": i}
        for i in range(args.requests)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(lambda body: _post(url, body), bodies))
    total = time.perf_counter() - start
    largest = json.load(urllib.request.urlopen(f"{url}/health"))["largest_batch"]
    serve.shutdown()
    walls, seconds = [r[0] for r in results], [r[1] for r in results]
    print(
        f"{health['model']} version {health['version']}: {len(results)} requests from {args.clients} client(s), "
        f"largest batch {largest}, {sum(r[2] == 'false' for r in results)} hit the length limit"
    )
    print(f"  wall per request   median {statistics.median(walls):.2f} s  (min {min(walls):.2f}, max {max(walls):.2f})")
    print(f"  speech per request median {statistics.median(seconds):.2f} s")
    print(f"  real-time factor   {sum(seconds) / total:.2f} (seconds of speech per second of wall time, all clients)")


if __name__ == "__main__":
    main()
