"""Wall time of logged training, read from MLflow metric timestamps (how the base model's 89 minutes were read).

    python -m benchmarks.run_wall_time --tracking-uri sqlite:///mlruns/mlflow.db --experiment tiny   # pretrain runs
    python -m benchmarks.run_wall_time --tracking-uri sqlite:///mlruns/mlflow.db --runs <id>,<id> --metric ar_loss

Per run: the steps a per-step metric covers, the time from its first to its last logged value, and seconds
per step; then the total over the runs (a resumed training is several runs, or one run logged twice).
"""

from __future__ import annotations

import argparse

from mlflow.tracking import MlflowClient


def wall_time(client: MlflowClient, run_id: str, metric: str) -> dict | None:
    history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.timestamp)
    if len(history) < 2:
        return None
    seconds = (history[-1].timestamp - history[0].timestamp) / 1000
    steps = history[-1].step - history[0].step
    return {
        "run_id": run_id,
        "first_step": history[0].step,
        "last_step": history[-1].step,
        "seconds": seconds,
        "s_per_step": seconds / max(steps, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    ap.add_argument("--experiment", help="every run of this experiment that logged --metric")
    ap.add_argument("--runs", help="comma-separated run ids (instead of --experiment)")
    ap.add_argument("--metric", default="ar_loss", help="a metric logged at every training step")
    args = ap.parse_args(argv)
    client = MlflowClient(args.tracking_uri)
    if args.runs:
        run_ids = args.runs.split(",")
    else:
        experiment = client.get_experiment_by_name(args.experiment or "")
        if experiment is None:
            raise SystemExit(
                f"error: no experiment {args.experiment!r} in {args.tracking_uri} (give --experiment or --runs)"
            )
        run_ids = [r.info.run_id for r in client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])]
    rows = [r for r in (wall_time(client, run_id, args.metric) for run_id in run_ids) if r]
    for r in rows:
        print(
            f"{r['run_id']}  steps {r['first_step']:>6}-{r['last_step']:<6} {r['seconds'] / 60:7.1f} min "
            f"{r['s_per_step']:6.2f} s/step"
        )
    total = sum(r["seconds"] for r in rows)
    print(f"total: {total / 60:.1f} min of {args.metric!r} logging over {len(rows)} runs")
    return rows


if __name__ == "__main__":
    main()
