"""align: the SpeechAlign loop: rollout -> pairs -> reference -> LoRA preference learner -> evaluate, N times.

    python -m jobs.align --config configs/tiny.yaml align.iterations=3
    ray job submit --working-dir . -- python -m jobs.align --config configs/tiny.yaml run_dir=/abs/runs/tiny

Roles (actors/): RolloutEngine (vLLM or torch), ReferenceScorer, Evaluator, all created once; the Learner
runs on Ray Train. Every stage's output is keyed and committed (sa_ray/align_run.py): re-running the same
command resumes after the last completed stage, inside the same MLflow parent run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pyarrow.parquet as pq

from jobs import _cli
from sa_ray import tracking
from sa_ray.align_run import AlignRun, format_changes, format_table, settings_changes
from sa_ray.data.examples import PromptBank
from sa_ray.evaluation import check_heldout_audio
from sa_ray.metrics.stats import record_wer_changes
from sa_ray.models.vocab import Vocab
from sa_ray.preference import probe_sequence


def main(argv: list[str] | None = None) -> dict:
    cfg, args = _cli.parse(argv, __doc__.splitlines()[0])
    a, run_dir = cfg.align, Path(cfg.run_dir)
    summary, base_dir = _cli.prepared(run_dir), _cli.base_model(cfg)
    check_heldout_audio(run_dir / "data")
    run = AlignRun(run_dir)
    vocab, frame_rate = Vocab.load(base_dir / "ar"), summary["codec"]["frame_rate"]
    a.check_model(vocab.aligned)
    cfg.eval.check_model(vocab.aligned)
    prompt_frames = cfg.model.prompt_frames(frame_rate)

    _cli.init_ray(cfg)
    import ray

    from actors.learner import fit_learner
    from actors.pipeline import make_pairs, start_roles

    state = run.load("state.json") or {}
    with tracking.job_run(cfg, "align", args.run_id or state.get("run_id")) as mlrun:
        run.save("state.json", {"run_id": mlrun.info.run_id})
        roles = start_roles(cfg, base_dir)
        engine = ray.get(roles["rollout"].describe.remote())
        print(f"rollout engine: {engine}", flush=True)
        tracking.set_tags({"sa_ray.method": a.method, "sa_ray.pairs": a.pairs, "sa_ray.rollout_engine": engine,
                           **ray.get(roles["evaluator"].backends.remote())})
        train_rows = pq.read_table(run_dir / "data" / "train", columns=["utt_id", "speaker", "codes_0"]).to_pylist()
        bank_ref = ray.put(PromptBank.from_rows(train_rows, prompt_frames, 1))
        heldout = pq.read_table(run_dir / "data" / "heldout_sentences").to_pylist()
        probe = run.load("probe.json") or probe_sequence(
            min(heldout, key=lambda r: r["utt_id"]), vocab, PromptBank.from_rows(heldout, prompt_frames, 1), frame_rate)
        run.save("probe.json", probe)

        records = []
        for k in range(a.iterations + 1):  # policy version k = the base after k iterations
            record = run.record(k)
            if record is None:
                record = {"iteration": k, "align_settings": dataclasses.asdict(a)}
                if k > 0 and (changed := settings_changes(records[-1].get("align_settings", record["align_settings"]),
                                                          record["align_settings"])):
                    print(f"note: version {k} is made with settings that differ from version {k - 1}'s: "
                          + "; ".join(changed), flush=True)
                    tracking.set_tags({f"sa_ray.settings_changed.v{k}": "; ".join(changed)[:5000]})
                if k > 0:
                    i = k - 1
                    policy = {"version": i, "adapter_dir": str(run.adapter(i)) if i else None,
                              "probe": run.probe(i) or {**probe, "logprob": ray.get(roles["reference"].probe.remote(probe))},
                              "tolerance": a.probe_tolerance}
                    start = time.perf_counter()
                    manifest = run.pairs_done(i) or make_pairs(i, cfg, run_dir / "data", run.pairs(i), vocab, bank_ref,
                                                               frame_rate, roles, policy)
                    record.update(pairs=manifest["pairs"], prompts=manifest["prompts"],
                                  rollout_tokens_per_s=manifest.get("rollout_tokens_per_s"),
                                  rollout_seconds=time.perf_counter() - start)
                    record.update({f"pairs_{k}": manifest[k] for k in ("chosen_reward", "rejected_reward") if k in manifest})
                    start = time.perf_counter()
                    learned = run.learned(k)  # v_k committed by a job killed before its record: not trained again
                    if learned is None:
                        learned = fit_learner(cfg, run, i, base_dir, probe, mlrun.info.run_id)
                    record.update(learned, learn_seconds=time.perf_counter() - start)
                start = time.perf_counter()
                adapter = str(run.adapter(k)) if k else None
                record.update(ray.get(roles["evaluator"].evaluate.remote(adapter, ceiling=k == 0)))
                if k > 0:  # paired with the base's evaluation: same utterances, prompts and seeds
                    record.update(record_wer_changes(records[0], record))
                record["eval_seconds"] = time.perf_counter() - start
                if a.gap_utterances:
                    gap, png = ray.get(roles["evaluator"].gap.remote(adapter, f"golden vs synthetic, iteration {k}"))
                    record.update(gap)
                    tracking.log_bytes(png, f"gap/iter_{k}.png")
                for name, wav, sr in ray.get(roles["evaluator"].samples.remote(adapter)):
                    tracking.log_wav(wav, sr, f"samples/iter_{k}/{name}")
                tracking.log_metrics({key: v for key, v in record.items() if key != "iteration"}, step=k)
                if k > 0:
                    best = min(r["heldout_sentences_wer"] for r in [*records[1:], record])  # among adapters
                    tracking.log_artifact(run.adapter(k), f"adapters/v{k}")
                    aliases = ["latest"] + (["best"] if record["heldout_sentences_wer"] <= best else [])
                    record["registered_version"] = tracking.register_model(
                        f"{cfg.name}-policy", mlrun.info.run_id, f"adapters/v{k}", aliases)
                run.save_record(k, record)
            records.append(record)
            print(format_table(records[-1:]) if k else format_table(records), flush=True)
            if k:
                print(format_changes(record), flush=True)
            if a.early_stopping and k > a.early_stopping:
                best_k = min(range(len(records)), key=lambda j: records[j]["heldout_sentences_wer"])
                if k - best_k >= a.early_stopping:
                    print(f"early stop: no better held-out WER since iteration {best_k}")
                    break
        run.save("summary.json", {"run_id": mlrun.info.run_id, "iterations": records})
        tracking.log_artifact(run.root / "summary.json")
    print("\n" + format_table(records))
    print("\n".join(format_changes(r) for r in records[1:]))
    base = records[0]
    print(f"golden ceiling (same codec, same ASR): WER sent {base.get('heldout_sentences_golden_wer', float('nan')):.3f}, "
          f"WER voice {base.get('heldout_voices_golden_wer', float('nan')):.3f}; SIM to another speaker (floor): "
          f"sent {base.get('heldout_sentences_sim_other_speaker', float('nan')):.3f}, "
          f"voice {base.get('heldout_voices_sim_other_speaker', float('nan')):.3f}")
    return {"run_id": mlrun.info.run_id, "records": records, "root": str(run.root)}


if __name__ == "__main__":
    _cli.run(main)
