"""compare: tables and plots of runs across methods and iterations, from the config's MLflow experiment.

    python -m jobs.compare --config configs/tiny.yaml            # every align run of the experiment
    python -m jobs.compare --runs 3f2a1c0d,align-tiny --out cmp  # named runs (ids or names), any experiment

Reads each selected run's metric history (step = iteration) and writes into --out (default
<run_dir>/compare): compare.md (one table per ASR backend, since WER from different recognisers is not
comparable), compare.csv (every metric) and, per backend, one PNG per key metric (one line per run).
Where listeners voted on the endpoint's takes (the votes store of align.votes_path, or --votes), compare.md also
has each pair of versions' win rate with its 95% interval, and win_rates.csv the same.
The files are logged to the job's own MLflow run (tag sa_ray.job=compare) and the tables printed.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

from tqdm import tqdm

from jobs import _cli
from sa_ray import tracking, votes
from sa_ray.config import load_config
from sa_ray.plots import metric_curves

# the table's columns, in this order, when a run logged them; the CSV keeps every metric. A WER change is shown
# with its 95% interval (`_lo`, `_hi`); its `_mde` is the change that evaluation detects 80% of the time: a
# change below it that shows no effect is no evidence
KEY_METRICS = (
    "heldout_sentences_wer",
    "heldout_sentences_wer_change",
    "heldout_sentences_wer_change_mde",
    "heldout_sentences_phone_error_rate",
    "heldout_sentences_sim",
    "heldout_voices_wer",
    "heldout_voices_wer_change",
    "heldout_voices_wer_change_mde",
    "heldout_voices_sim",
    "heldout_sentences_mos",
    "heldout_voices_mos",
    "gap_probe_acc",
    "gap_paired_probe_acc",
    "gap_mmd",
    "nar_golden_wer",
    "nar_synthetic_wer",
    "dpo_loss",
    "reward_acc",
    "kl",
    "rollout_reward",
    "pairs",
    "rollout_seconds",
    "learn_seconds",
)
_FIXED = ("run", "run_id", "method", "asr_backend", "iteration")


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Overrides: dotted.key=value")
    _cli.add_job_options(ap)
    ap.add_argument("--config", default=_cli.DEFAULT_CONFIG, help=f"YAML config (default {_cli.DEFAULT_CONFIG})")
    ap.add_argument("--out", default=None, help="output folder (default <run_dir>/compare)")
    ap.add_argument("--job", default="align", help="compare the runs tagged sa_ray.job=JOB (default align)")
    ap.add_argument("--runs", default=None, help="comma-separated run ids or names, instead of --job")
    ap.add_argument(
        "--votes",
        default=None,
        help="a votes store (or its JSON export) whose win rates to report (default: align.votes_path's, if it exists)",
    )
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = ap.parse_args(argv)
    return load_config(args.config, args.overrides), args


def open_store(cfg):
    """The MLflow client, once the store is known to exist (opening a SQLite store creates it)."""
    uri = cfg.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri}: run a job first, or set tracking.uri")
    return tracking.client(cfg)


def select_runs(cfg, client, job: str, wanted: set[str]) -> list:
    """The experiment's runs of `job`; or the runs `wanted` names (ids or names), in any experiment of the store
    (each arm of `make arms` / `make compare-methods` is an experiment of its own, named by its config name)."""
    uri = cfg.tracking.uri
    if wanted:
        experiments = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise FileNotFoundError(
                f"no MLflow experiment {cfg.experiment!r} in {uri}: run `python -m jobs.{job}` "
                "first, or set tracking.experiment"
            )
        experiments = [exp.experiment_id]
    query = "" if wanted else f"tags.`sa_ray.job` = '{job}'"
    runs, token = [], None
    while True:  # search_runs pages its answer
        page = client.search_runs(experiments, query, order_by=["attributes.start_time ASC"], page_token=token)
        runs += list(page)
        if not (token := page.token):
            break
    if wanted:
        runs = [r for r in runs if {r.info.run_id, r.info.run_name} & wanted]
        missing = wanted - {k for r in runs for k in (r.info.run_id, r.info.run_name)}
        if missing:
            raise FileNotFoundError(f"no run with id or name {sorted(missing)} in {uri}")
    else:  # child runs (an iteration's learner) are parts of a job run, not results to compare
        runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not runs:
        raise FileNotFoundError(
            f"no runs tagged sa_ray.job={job} in experiment {cfg.experiment!r}: run `python -m jobs.{job}` first"
        )
    return runs


def read_rows(client, runs: list) -> list[dict]:
    """One row per (run, iteration) with every metric the run logged at that step."""
    rows = []
    for run in tqdm(runs, desc="compare: read runs", unit="run", disable=len(runs) < 10):
        steps: dict[int, dict] = {}
        for key in run.data.metrics:
            # a resumed run may log a step again: oldest first, so the latest value wins
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp):
                steps.setdefault(m.step, {})[key] = m.value
        tags = run.data.tags
        fixed = {
            "run": f"{run.info.run_name} ({run.info.run_id[:8]})",
            "run_id": run.info.run_id,
            "method": tags.get("sa_ray.method", "?"),
            "asr_backend": tags.get("sa_ray.asr_backend", "unknown"),
        }
        rows += [{**fixed, "iteration": step, **steps[step]} for step in sorted(steps)]
    return rows


def fmt(value) -> str:
    if value is None or math.isnan(value):
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def cell(row: dict, metric: str) -> str:
    """A metric's table cell; a WER change with its 95% interval where the evaluation logged one."""
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if metric.endswith("_wer_change") and fmt(row.get(metric)) and fmt(lo) and fmt(hi):
        return f"{row[metric]:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return fmt(row.get(metric))


def write_section(rows: list[dict], backend: str, out: Path) -> tuple[list[str], list[Path]]:
    """The Markdown lines and plots of one ASR backend's rows."""
    present = {k for r in rows for k in r} - set(_FIXED)
    metrics = [m for m in KEY_METRICS if m in present] or sorted(present)
    lines = [
        f"## ASR backend: {backend}",
        "",
        "| " + " | ".join(["run", "method", "iteration", *metrics]) + " |",
        "|" + "---|" * (3 + len(metrics)),
    ]
    lines += [
        "| " + " | ".join([r["run"], r["method"], str(r["iteration"]), *(cell(r, m) for m in metrics)]) + " |"
        for r in rows
    ]
    labelled = [{**r, "label": f"{r['method']}: {r['run']}"} for r in rows]
    folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", backend)
    plots = [
        metric_curves(labelled, m, folder / f"{m}.png", "label", title=f"{m} ({backend})")
        for m in metrics
        if any(fmt(r.get(m)) for r in rows)
    ]  # an all-NaN metric has no curve
    lines += [""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots] + [""]
    return lines, plots


WIN_RATE_COLUMNS = ("a", "b", "n", "wins_a", "wins_b", "ties", "rate", "lo", "hi")


def win_rate_section(source: Path) -> tuple[list[str], list[votes.WinRate]]:
    """The Markdown lines of the listeners' win rates: per pair of versions, A the newer (`sa_ray.votes.win_rates`)."""
    cast = votes.load_votes(source)
    rates = votes.win_rates(cast)
    lines = [
        "## Listening tests: win rates",
        "",
        f"{len(cast)} votes in {source}. A is the newer version; a tie counts half a win for each side (and is "
        "counted apart); the interval is Wilson's 95% score interval of the win rate (`sa_ray/metrics/stats.py`).",
        "",
    ]
    if rates:
        lines += ["| A vs B | n | wins A | wins B | ties | win rate A [95%] |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {w.a} vs {w.b} | {w.n} | {w.wins_a} | {w.wins_b} | {w.ties} | {votes.format_rate(w)} |" for w in rates
        ]
    else:
        lines.append("No vote compares two versions yet (both takes of every vote were spoken by one version).")
    return [*lines, ""], rates


def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse(argv)
    wanted = {w.strip() for w in (args.runs or "").split(",") if w.strip()}
    client = open_store(cfg)
    runs = select_runs(cfg, client, args.job, wanted)
    rows = read_rows(client, runs)
    if not rows:
        raise FileNotFoundError(f"the {len(runs)} selected runs logged no metrics yet")
    out = Path(args.out) if args.out else Path(cfg.run_dir) / "compare"
    out.mkdir(parents=True, exist_ok=True)

    lines, files = [f"# compare: experiment {cfg.experiment}, {len(runs)} runs", ""], []
    for backend in sorted({r["asr_backend"] for r in rows}):
        section, plots = write_section([r for r in rows if r["asr_backend"] == backend], backend, out)
        lines, files = lines + section, files + plots
    source = Path(args.votes) if args.votes else votes.align_source(cfg)
    rates = None
    if args.votes or source.is_file():  # a store named and missing is an error; the default, a run without votes
        section, rates = win_rate_section(source)
        lines += section
        with open(out / "win_rates.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=WIN_RATE_COLUMNS)
            writer.writeheader()
            writer.writerows({k: getattr(w, k) for k in WIN_RATE_COLUMNS} for w in rates)
        files.append(out / "win_rates.csv")
    markdown = "\n".join(lines)
    (out / "compare.md").write_text(markdown)
    metrics = sorted({k for r in rows for k in r} - set(_FIXED))
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*_FIXED, *metrics])
        writer.writeheader()
        writer.writerows(rows)
    files = [out / "compare.md", out / "compare.csv", *files]

    with tracking.job_run(cfg, "compare"):
        for path in files:  # only what this run wrote, never other files of --out
            tracking.log_artifact(path, (Path("compare") / path.parent.relative_to(out)).as_posix())
        tracking.log_dict({"runs": [r.info.run_id for r in runs]}, "compare/runs.json")
    print(f"{markdown}\nwritten to {out}")
    return {"out": out, "rows": rows, "markdown": markdown, "files": files, "win_rates": rates}


if __name__ == "__main__":
    _cli.run(main)
