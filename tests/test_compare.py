"""jobs.compare on a real MLflow store: tables per ASR backend, CSV, plots, artifacts, clean errors."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest

from jobs import _cli, compare
from sa_ray import tracking
from sa_ray.config import load_config

from .conftest import REPO

CONFIG = str(REPO / "configs" / "tiny.yaml")

# method -> metric -> values at iterations 0, 1, 2
LOGGED = {
    "dpo": {"heldout_sentences_wer": [0.61, 0.52, 0.47], "gap_probe_acc": [0.93, 0.85, 0.74], "pairs": [120, 120, 118]},
    "rpo": {"heldout_sentences_wer": [0.61, 0.58, 0.55], "gap_probe_acc": [0.93, 0.9, 0.88], "pairs": [120, 119, 120]},
}


def _overrides(tmp) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp}/m.db", f"run_dir={tmp}/run"]


def _log_run(cfg, job: str, method: str, backend: str, metrics: dict[str, list[float]]) -> str:
    with tracking.job_run(cfg, job) as run:
        mlflow.set_tags({"sa_ray.method": method, "sa_ray.asr_backend": backend})
        for step in range(3):
            tracking.log_metrics({k: v[step] for k, v in metrics.items()}, step=step)
        if method == "dpo":  # a learner child run with the parent's tags is not an align run of its own
            with mlflow.start_run(nested=True, run_name="learner-iter0"):
                mlflow.set_tags({"sa_ray.job": job, "sa_ray.method": method, "sa_ray.asr_backend": backend})
                tracking.log_metrics({"heldout_sentences_wer": 7.0}, step=0)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two align runs (dpo, rpo) scored by one ASR backend, one by another, and a pretrain run."""
    tmp = tmp_path_factory.mktemp("compare")
    cfg = load_config(CONFIG, _overrides(tmp))
    ids = {m: _log_run(cfg, "align", m, "pocketsphinx-domain", v) for m, v in LOGGED.items()}
    ids["sft"] = _log_run(cfg, "align", "sft", "whisper-tiny", {"heldout_sentences_wer": [0.3, 0.2, 0.1]})
    _log_run(cfg, "pretrain", "none", "pocketsphinx-domain", {"heldout_sentences_wer": [9.0, 9.0, 9.0]})
    return tmp, ids


def test_compare_tables_csv_plots_and_artifacts(store, capsys):
    import matplotlib.image

    tmp, ids = store
    result = compare.main(["--config", CONFIG, *_overrides(tmp)])
    out = tmp / "run" / "compare"
    assert result["out"] == out
    markdown = (out / "compare.md").read_text()
    assert markdown in capsys.readouterr().out

    # one section per backend; the pretrain run (and its 9.0) is not an align run
    pocket, whisper = markdown.split("## ASR backend: pocketsphinx-domain")[1].split("## ASR backend: whisper-tiny")
    assert "| 9 |" not in markdown and "| 7 |" not in markdown and "learner" not in markdown
    lines = [line for line in pocket.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "method", "iteration", "heldout_sentences_wer", "gap_probe_acc", "pairs"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert len(cells) == 6  # 2 runs x 3 iterations
    for method, metrics in LOGGED.items():
        mine = [row for row in cells if row[1] == method]
        assert [row[2] for row in mine] == ["0", "1", "2"]
        assert all(ids[method][:8] in row[0] for row in mine)
        for col, name in enumerate(header[3:], start=3):
            assert [row[col] for row in mine] == [compare.fmt(v) for v in metrics[name]]
    assert "| sft |" not in pocket and "| sft |" in whisper and "0.1" in whisper  # never in one table

    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    dpo = [r for r in rows if r["method"] == "dpo"]
    assert [float(r["heldout_sentences_wer"]) for r in dpo] == LOGGED["dpo"]["heldout_sentences_wer"]
    assert {r["asr_backend"] for r in rows} == {"pocketsphinx-domain", "whisper-tiny"}

    image = matplotlib.image.imread(out / "pocketsphinx-domain" / "heldout_sentences_wer.png")
    assert image.shape[:2] == (450, 700)
    assert image[..., :3].std() > 0.05 and len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 20
    assert (out / "whisper-tiny" / "heldout_sentences_wer.png").is_file()
    assert not (out / "whisper-tiny" / "pairs.png").exists()  # that run logged no pairs

    client = tracking.client(load_config(CONFIG, _overrides(tmp)))
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id], "tags.`sa_ray.job` = 'compare'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
    assert {"compare/compare.md", "compare/compare.csv", "compare/pocketsphinx-domain", "compare/runs.json"} <= logged


def test_compare_named_runs(store, tmp_path):
    tmp, ids = store
    result = compare.main(["--config", CONFIG, "--out", str(tmp_path / "one"), "--runs", ids["rpo"], *_overrides(tmp)])
    assert {r["method"] for r in result["rows"]} == {"rpo"} and len(result["rows"]) == 3
    with pytest.raises(FileNotFoundError, match="no run with id or name"):
        compare.main(["--config", CONFIG, "--runs", "nosuchrun", *_overrides(tmp)])


def test_named_runs_are_found_in_every_experiment(store, tmp_path):
    """`make arms` / `make compare-methods` give each arm its own config name, so its own experiment: --runs names
    them across experiments."""
    tmp, ids = store
    other = load_config(CONFIG, [*_overrides(tmp), "name=method-x"])  # experiment method-x, run align-method-x
    _log_run(other, "align", "simpo", "pocketsphinx-domain", {"heldout_sentences_wer": [0.61, 0.6, 0.5]})
    result = compare.main(
        ["--config", CONFIG, "--out", str(tmp_path), "--runs", f"align-method-x,{ids['rpo']}", *_overrides(tmp)]
    )
    assert {r["method"] for r in result["rows"]} == {"rpo", "simpo"} and len(result["rows"]) == 6


def test_missing_experiment_store_or_runs_is_a_clean_error(store, tmp_path, capsys):
    tmp, _ = store
    with pytest.raises(SystemExit) as exit_info:
        _cli.run(compare.main, ["--config", CONFIG, *_overrides(tmp), "tracking.experiment=nope"])
    assert exit_info.value.code == 2
    assert "error: no MLflow experiment 'nope'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        compare.main(["--config", CONFIG, *_overrides(tmp_path)])
    assert not (tmp_path / "m.db").exists()  # looking did not create a store
    with pytest.raises(FileNotFoundError, match="no runs tagged sa_ray.job=evaluate"):
        compare.main(["--config", CONFIG, "--job", "evaluate", *_overrides(tmp)])


def test_metric_curves_skips_missing_values(tmp_path):
    from sa_ray.plots import metric_curves

    table = [{"run": "a", "iteration": i, "wer": w} for i, w in enumerate([0.5, float("nan"), 0.3])]
    table.append({"run": "b", "iteration": 0})  # a run without the metric draws no line
    assert metric_curves(table, "wer", tmp_path / "wer.png").is_file()
    with pytest.raises(ValueError, match="no row of the table has a value for 'sim'"):
        metric_curves(table, "sim", tmp_path / "sim.png")


def test_metric_curves_draw_intervals_where_rows_have_them(tmp_path):
    import matplotlib.image

    from sa_ray.plots import metric_curves

    table = [{"run": "a", "iteration": i, "wer_change": d} for i, d in enumerate([0.0, 0.05, 0.01])]
    plain = matplotlib.image.imread(metric_curves(table, "wer_change", tmp_path / "plain.png"))
    for row in table[1:]:  # iteration 0 (the base) has no interval: it is the reference
        row.update(wer_change_lo=row["wer_change"] - 0.05, wer_change_hi=row["wer_change"] + 0.05)
    bars = matplotlib.image.imread(metric_curves(table, "wer_change", tmp_path / "bars.png"))
    assert plain.shape == bars.shape and (plain != bars).any()  # the error bars are drawn


def test_each_wer_change_is_shown_beside_its_minimum_detectable_change():
    for split in ("heldout_sentences", "heldout_voices"):
        at = compare.KEY_METRICS.index(f"{split}_wer_change")
        assert compare.KEY_METRICS[at + 1] == f"{split}_wer_change_mde"


def test_a_wer_change_is_shown_with_its_interval(tmp_path):
    """The table's WER change cell holds the change and its 95% interval; the CSV keeps the three numbers apart."""
    cfg = load_config(CONFIG, _overrides(tmp_path))
    change = {"heldout_sentences_wer_change": [0.0, -0.031, -0.05], "heldout_sentences_wer_change_mde": [0.06] * 3}
    bounds = {
        "heldout_sentences_wer_change_lo": [0.0, -0.072, -0.09],
        "heldout_sentences_wer_change_hi": [0.0, 0.01, -0.004],
    }
    _log_run(cfg, "align", "sft", "pocketsphinx-domain", {**change, **bounds})
    markdown = compare.main(["--config", CONFIG, *_overrides(tmp_path)])["out"] / "compare.md"
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[3:] == ["heldout_sentences_wer_change", "heldout_sentences_wer_change_mde"]  # bounds in the cell
    cells = [[c.strip() for c in line.strip("|").split("|")][3] for line in rows[1:]]
    assert cells == ["+0.000 [+0.000, +0.000]", "-0.031 [-0.072, +0.010]", "-0.050 [-0.090, -0.004]"]
