"""Rollout throughput against rollout engine replicas (`align.rollout_engines`) on a multi-node Ray cluster made on
this machine: one align iteration per replica count, each engine on a node of its own.

    python -m benchmarks.rollout_replicas --run-dir runs/tiny --base checkpoints/base        # after make demo
    python -m benchmarks.rollout_replicas --engines 1,2 --pairs 256 --json replicas.json align.backend=torch

The cluster (`ray.cluster_utils.Cluster`): a head without resources and --nodes rollout nodes, each declaring one
`rollout_node` and --node-cpus CPUs; the engines ask for a whole `rollout_node` each, so each replica has a node to
itself (the other roles run beside them). Each count is `benchmarks.iteration_scaling`'s iteration (golden pairs,
one learner epoch, the evaluation cut to the least) at --pairs prompts, in a fresh run directory. Read from each
record: the engines' tokens/s together (`rollout_tokens_per_s`: each replica's rate, summed), their sampling seconds
(`busy_rollout_seconds`, summed over replicas) and the stage's wall time (`rollout_seconds`: sampling, the reference's
scoring and Parquet, streamed). On one machine the nodes share its cores: what this measures here is the
orchestration (dealing batches out, merging their stats), not a speed-up; on a cluster each node brings its own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.iteration_scaling import run_size
from jobs._cli import free_port


def start_cluster(nodes: int, cpus: int):
    """A head without resources and `nodes` nodes with `cpus` CPUs and one `rollout_node` each."""
    from ray.cluster_utils import Cluster

    dashboard = free_port()
    # Ray Train asks the State API whether its controller lives: this cluster's dashboard, not the machine's newest
    # Ray instance (jobs._cli.start_local_ray says why); the nodes' processes inherit the variable
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    head = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, resources={"rollout_node": 1})
    return cluster


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/tiny", help="a prepared run (make demo's by default)")
    ap.add_argument("--base", default="checkpoints/base", help="the base model the iterations start from")
    ap.add_argument("--engines", default="1,2", help="comma-separated replica counts")
    ap.add_argument("--pairs", type=int, default=256, help="prompts (one pair each) of every iteration")
    ap.add_argument("--batch-size", type=int, default=16, help="align.batch_size (steps = pairs / batch size)")
    ap.add_argument("--nodes", type=int, default=0, help="rollout nodes (default: the largest replica count)")
    ap.add_argument("--node-cpus", type=int, default=2, help="logical CPUs of each node")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("overrides", nargs="*", help="more dotted.key=value overrides for every run")
    args = ap.parse_args(argv)
    counts = sorted(int(n) for n in args.engines.split(","))
    nodes = args.nodes or counts[-1]
    if nodes < counts[-1]:
        raise SystemExit(f"--nodes {nodes}: {counts[-1]} replicas need as many rollout nodes")
    run_dir = Path(args.run_dir)
    if not (run_dir / "data").is_dir():
        raise SystemExit(f"no prepared run: {run_dir}/data is missing (make demo)")
    cluster = start_cluster(nodes, args.node_cpus)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in counts:
                overrides = [
                    f"ray.address={cluster.address}",
                    f"align.rollout_engines={n}",
                    "resources.rollout={num_cpus: 0, num_gpus: 0, resources: {rollout_node: 1}}",
                    *args.overrides,
                ]
                record = run_size(
                    run_dir, args.base, args.pairs, args.batch_size, Path(tmp) / f"engines-{n}", overrides
                )
                rows.append(
                    {
                        "engines": n,
                        "pairs": args.pairs,
                        "tok_per_s": record["rollout_tokens_per_s"],
                        "busy_seconds": record["busy_rollout_seconds"],
                        "rollout_seconds": record["rollout_seconds"],
                    }
                )
    finally:
        cluster.shutdown()
    print(f"\n{args.pairs} pairs an iteration, {nodes} rollout nodes of {args.node_cpus} CPUs on this machine")
    print("| engines | engines' tok/s together | sampling s (all replicas) | rollout stage s |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engines']} | {r['tok_per_s']:.0f} | {r['busy_seconds']:.1f} | {r['rollout_seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
