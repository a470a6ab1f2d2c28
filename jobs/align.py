"""align: the SpeechAlign loop: rollout -> pairs -> reference -> LoRA preference learner -> evaluate, N times.

    python -m jobs.align --config configs/tiny.yaml align.iterations=3
    ray job submit --working-dir . -- python -m jobs.align --config configs/tiny.yaml run_dir=/abs/runs/tiny

Roles (actors/): RolloutEngine (vLLM or torch), ReferenceScorer, Evaluator, reward scorers, the critic (ppo), all
created once; the Learner runs on Ray Train. Policy version k (0 = the base) is made by four named stages, each with
its inputs and outputs in the open: `roll_out` (pairs from version k-1) -> `learn` (version k) -> `Evaluation`
-> `publish` (actors/align_stages.py). Every stage's output is keyed and committed (sa_ray/align_run.py): re-running the same command resumes
after the last completed stage, inside the same MLflow parent run.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pyarrow.parquet as pq

from jobs import _cli
from sa_ray import lineage, tracking, votes
from sa_ray.align_run import AlignRun, format_changes, format_summary, format_table, stalled_since
from sa_ray.config import Config
from sa_ray.data.examples import PromptBank
from sa_ray.data.prepare import check_heldout_audio, require_prepared
from sa_ray.models import base_model_dir
from sa_ray.models.vocab import Vocab
from sa_ray.preference import probe_sequence

if typing.TYPE_CHECKING:
    from actors.align_stages import Loop


def main(argv: list[str] | None = None) -> dict:
    cfg, args = _cli.parse(argv, __doc__.splitlines()[0])
    loop = setup(cfg)
    try:
        return align(loop, args.run_id)
    finally:
        from actors.pipeline import stop_roles

        stop_roles(loop.roles)


def align(loop: Loop, run_id: str | None) -> dict:
    """Makes and records every policy version the run still lacks, in one MLflow run (resumed by `run_id`). With
    `align.evaluate_beside`, version k's evaluation runs while version k+1 is rolled out and trained (the evaluators
    are roles of their own); with `align.early_stopping` each is waited for: it decides whether there is a next."""
    from actors.align_stages import Evaluation, finish_version, make_version  # torch: not at import time

    cfg, run = loop.cfg, loop.run
    with tracking.job_run(cfg, "align", run_id or (run.load("state.json") or {}).get("run_id")) as mlrun:
        run.save("state.json", {"run_id": mlrun.info.run_id})
        loop.run_id = mlrun.info.run_id
        tracking.set_tags(loop.tags)
        records: list[dict] = []
        previous, evaluating = None, None  # evaluating: a version made, its evaluation running beside the next
        patience = cfg.align.early_stopping
        beside = cfg.evaluates_beside and not patience  # early stopping needs each evaluation before the next
        for k in range(cfg.align.iterations + 1):  # policy version k = the base after k iterations
            done = run.record(k)
            record = done or make_version(loop, k, previous)
            if evaluating:
                report(finish_version(loop, *evaluating, records), records, patience)
                evaluating = None
            if done:
                stop = report(done, records, patience)
            elif beside:
                evaluating, stop = (record, Evaluation.start(loop, k, beside=k < cfg.align.iterations)), False
            else:
                stop = report(finish_version(loop, record, Evaluation.start(loop, k), records), records, patience)
            previous = record
            if stop:
                break
        if evaluating:
            report(finish_version(loop, *evaluating, records), records, patience)
        run.save("summary.json", {"run_id": mlrun.info.run_id, "iterations": records})
        tracking.log_artifact(run.root / "summary.json")
    print("\n" + format_summary(records))
    return {"run_id": mlrun.info.run_id, "records": records, "root": str(run.root)}


def report(record: dict, records: list[dict], patience: int) -> bool:
    """Version k's record joins the run's and is printed; True when early stopping ends the run here."""
    records.append(record)
    print(format_table(records[-1:]) if record["iteration"] else format_table(records), flush=True)
    if record["iteration"]:
        print(format_changes(record), flush=True)
    if "champion_note" in record:
        aliases = ", ".join(record["aliases"])
        print(f"registered as version {record['registered_version']} ({aliases}); {record['champion_note']}")
    if (best_k := stalled_since(records, patience)) is not None:
        print(f"early stop: no better held-out WER since iteration {best_k}")
        return True
    return False


def setup(cfg: Config) -> Loop:
    """Checks the prepared data and the base model, starts Ray and the roles, fixes the probe."""
    run_dir = Path(cfg.run_dir)
    summary, base_dir = require_prepared(run_dir), base_model_dir(cfg)
    check_heldout_audio(run_dir / "data")
    made_from = {
        "base_fingerprint": lineage.fingerprint(base_dir, run_dir / "codec", cfg.codec.kind),
        "base_dir": str(base_dir),
        "config": cfg.name,
        "eval_protocol": lineage.protocol_key(cfg.eval.protocol()),
    }
    run = AlignRun(run_dir, made_from)
    vocab, frame_rate = Vocab.load(base_dir / "ar"), summary["codec"]["frame_rate"]
    cfg.align.check_model(vocab.aligned)
    if "reward_model" in cfg.align.reward_roles:
        from sa_ray.reward_model import checkpoint_dir  # here: the driver imports no torch model code otherwise

        checkpoint_dir(cfg)  # a missing reward model is said before Ray starts
    if cfg.align.uses_votes:
        votes.load_votes(votes.align_source(cfg))  # so is a missing votes store
    cfg.eval.check_model(vocab.aligned)
    prompt_frames = cfg.model.prompt_frames(frame_rate)

    _cli.init_ray(cfg)
    import ray

    from actors.align_stages import Loop
    from actors.pipeline import start_roles

    roles = start_roles(cfg, base_dir, made_from["base_fingerprint"])
    engine, replicas = ray.get(roles["rollout"][0].describe.remote()), len(roles["rollout"])
    print(f"rollout engine: {engine}" + (f" x {replicas}" if replicas > 1 else ""), flush=True)
    tags = {
        "sa_ray.method": cfg.align.method,
        "sa_ray.pairs": cfg.align.pairs,
        # the reward as given (a mix reads as written); a run that rewards no sample has none
        **({"sa_ray.reward": cfg.align.reward} if cfg.align.rewards_samples else {}),
        "sa_ray.rollout_engine": engine,
        **ray.get(roles["evaluator"][0].backends.remote()),
    }
    train_rows = pq.read_table(run_dir / "data" / "train", columns=["utt_id", "speaker", "codes_0"]).to_pylist()
    bank_ref = ray.put(PromptBank.from_rows(train_rows, prompt_frames, 1))
    heldout = pq.read_table(run_dir / "data" / "heldout_sentences").to_pylist()
    probe = run.load("probe.json") or probe_sequence(
        min(heldout, key=lambda r: r["utt_id"]), vocab, PromptBank.from_rows(heldout, prompt_frames, 1), frame_rate
    )
    run.save("probe.json", probe)
    return Loop(cfg, run, base_dir, vocab, frame_rate, roles, bank_ref, probe, tags, made_from)


if __name__ == "__main__":
    _cli.run(main)
