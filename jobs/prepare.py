"""prepare: corpus -> validated utterances -> codec tokens -> Parquet (train / held-out splits).

    python -m jobs.prepare --config configs/tiny.yaml corpus.max_utterances=200
    ray job submit --working-dir . -- python -m jobs.prepare --config configs/tiny.yaml

Idempotent: a run whose inputs and config match the prepared data does nothing. Bad input is
quarantined with a reason (or, with prepare.strict=true, stops the job naming the file and rule).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jobs import _cli
from sa_ray import atomic, tracking
from sa_ray.codec import load_or_fit_codec
from sa_ray.config import Config, save_config
from sa_ray.data.prepare import (
    QUARANTINE,
    SPLITS,
    fingerprint,
    load_corpus,
    manifest_rows,
    read_summary,
    summarize,
    with_output,
    write_output,
)
from sa_ray.data.validate import BadInputError, load_checked_audio
from sa_ray.metrics.asr import domain_lm


def codec_training_audio(cfg: Config, rows: list[dict], sample_rate: int = 22050):
    """The first `codec.fit_utterances` valid training utterances, read one at a time."""
    taken = 0
    for row in rows:
        if taken >= cfg.codec.fit_utterances:
            return
        if row["split"] != "train" or row["pre_rule"]:
            continue
        wav, _, rejection = load_checked_audio(row["audio_path"], sample_rate, cfg.prepare)
        if rejection is None:
            taken += 1
            yield wav, sample_rate


def print_summary(summary: dict, data_dir: Path) -> None:
    print(f"\nprepared {summary['kept']} of {summary['utterances']} utterances into {data_dir}")
    for split, s in summary["splits"].items():
        print(f"  {split:<18} {s['utterances']:>6} utterances {s['hours'] * 60:>7.1f} min")
    print(f"  {'quarantined':<18} {summary['quarantined']:>6}", end="")
    print(
        "  " + ", ".join(f"{k}: {v}" for k, v in summary["quarantine_reasons"].items())
        if summary["quarantined"]
        else ""
    )
    c = summary["codec"]
    print(
        f"  codec {c['kind']}: {c['n_codebooks']} x {c['codebook_size']} codes at {c['frame_rate']} Hz, "
        f"{c['sample_rate']} Hz audio"
    )


def main(argv: list[str] | None = None) -> dict:
    cfg, args = _cli.parse(argv, __doc__.splitlines()[0])
    run_dir = Path(cfg.run_dir)
    data_dir = run_dir / "data"

    # Setup: list the corpus (building the synthetic one if needed) and decide the splits.
    utts, reserved = load_corpus(cfg.corpus)
    rows = manifest_rows(utts, cfg.corpus, reserved)
    fp = fingerprint(cfg, rows)
    previous = read_summary(data_dir)
    if previous is not None and previous["fingerprint"] == fp:
        print(f"already prepared (fingerprint {fp}); nothing to do")
        print_summary(previous, data_dir)
        return previous

    codec = load_or_fit_codec(cfg.codec, run_dir / "codec", cfg.corpus.seed, lambda: codec_training_audio(cfg, rows))

    # Tokenise on Ray Data: an actor pool of tokenisers, each loading the codec once.
    _cli.init_ray(cfg)
    import ray
    from ray.data.expressions import col

    from actors.tokenizer import UtteranceTokenizer

    def tokenized(encode: bool) -> ray.data.Dataset:
        return ray.data.from_items(rows).map_batches(
            UtteranceTokenizer,
            fn_constructor_kwargs={
                "codec": cfg.codec.__dict__,
                "codec_dir": str(run_dir / "codec"),
                "prepare": cfg.prepare.__dict__,
                "phonemes": cfg.corpus.phonemes,
                "encode": encode,
                "num_gpus": cfg.resources.tokenizer.num_gpus,
            },
            compute=ray.data.ActorPoolStrategy(size=cfg.prepare.encoders),
            batch_size=cfg.prepare.batch_size,
            batch_format="pyarrow",
            **cfg.resources.tokenizer.ray_options(),
        )

    if cfg.prepare.strict:  # a validation-only pass that stops streaming at the first bad file
        for bad in tokenized(encode=False).filter(expr=col("status") == "quarantined").take(1):
            raise BadInputError(bad["utt_id"], bad["audio_path"], bad["rule"], bad["detail"])
    ds = tokenized(encode=True).materialize()

    # Write every split into a staging folder, then swap it in: readers never see half a dataset.
    staging = data_dir.with_name("data.staging")
    shutil.rmtree(staging, ignore_errors=True)
    # Each output (a split, the quarantine) is one file sorted by utt_id: one group each, all written in one pass.
    outputs = ds.map_batches(with_output, batch_format="pyarrow").groupby("output")
    written = outputs.map_groups(write_output, batch_format="pyarrow", fn_kwargs=dict(out_dir=str(staging)))
    done = set(written.to_pandas()["output"])
    for name in {*SPLITS, QUARANTINE} - done:  # an empty output still has a readable table
        write_output(with_output(ds.schema().base_schema.empty_table()), staging, name)

    meta = ds.select_columns(["split", "status", "rule", "duration", "orig_sample_rate"]).iter_rows()
    summary = summarize(meta, fp, codec)
    (staging / "summary.json").write_text(json.dumps(summary, indent=2))
    save_config(cfg, staging / "config.yaml")  # what made this dataset, for later stages and people
    atomic.swap_in(staging, data_dir)  # the old dataset stays readable until the new one is in place
    domain_lm(data_dir, cfg.corpus)  # the recognisers' LM: built here once, not by each role that starts first

    # Save: the record of this preparation in MLflow.
    with tracking.job_run(cfg, "prepare", args.run_id):
        tracking.log_metrics(
            {
                "utterances": summary["utterances"],
                "kept": summary["kept"],
                "quarantined": summary["quarantined"],
                "resampled": summary["resampled"],
                **{f"{s}_utterances": v["utterances"] for s, v in summary["splits"].items()},
                **{f"{s}_hours": v["hours"] for s, v in summary["splits"].items()},
                **{f"quarantine_{k}": v for k, v in summary["quarantine_reasons"].items()},
            }
        )
        tracking.log_artifact(data_dir / "summary.json")
        tracking.log_artifact(data_dir / "quarantine", "quarantine")
        tracking.log_artifact(run_dir / "codec", "codec")
    print_summary(summary, data_dir)
    return summary


if __name__ == "__main__":
    _cli.run(main)
