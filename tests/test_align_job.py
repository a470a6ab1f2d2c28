"""`jobs.align` end to end on a local Ray cluster: both rollout backends, and kill-and-resubmit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sa_ray import preference
from sa_ray.config import ConfigError
from sa_ray.preference import read_manifest, select_prompts
from tests.conftest import REPO, ROLLOUT_BACKENDS, copy_prepared, mlflow_store

pytestmark = pytest.mark.slow

ALIGN = [
    "align.iterations=2",
    "align.prompts_per_iteration=6",
    "align.steps=4",
    "align.batch_size=4",
    "align.warmup_steps=1",
    "align.checkpoint_every=2",
    "eval.utterances=2",
    "align.lora_rank=8",
    "align.lora_alpha=16",
    "align.lr=1e-3",
    "eval.gap_utterances=4",
]


def _argv(prepared_tiny, tiny_base, tmp_path, *extra) -> tuple[list[str], Path]:
    cfg, argv, _ = prepared_tiny
    run_dir = copy_prepared(cfg.run_dir, tmp_path)
    return [
        *argv,
        f"run_dir={run_dir}",
        f"align.base_model={tiny_base}",
        f"tracking.uri={mlflow_store(tmp_path / 'mlflow.db')}",
        *ALIGN,
        *extra,
    ], run_dir


def _expected_keys(run_dir: Path, iteration: int, n: int = 6) -> set[tuple]:
    ids = pq.read_table(run_dir / "data" / "align", columns=["utt_id"]).column("utt_id").to_pylist()
    return {(iteration, u, 0) for u in select_prompts(ids, n, 0, iteration)}


def _keys(pairs_dir: Path) -> list[tuple]:
    rows = pq.read_table(pairs_dir, columns=["iteration", "utt_id", "sample_idx"]).to_pylist()
    return sorted((r["iteration"], r["utt_id"], r["sample_idx"]) for r in rows)


@pytest.mark.parametrize("backend", ROLLOUT_BACKENDS)
def test_align_runs_two_iterations_and_logs_to_mlflow(
    backend, prepared_tiny, tiny_base, tmp_path, ray_local, capsys, monkeypatch
):
    from jobs import align
    from sa_ray import tracking
    from sa_ray.config import load_config

    # vLLM: one iteration without the gap analysis (the loop's logic is the torch run's; what vLLM adds is the
    # rollout engine, and its adapter swaps are tests/test_vllm.py's and test_align.py's)
    vllm = ["align.iterations=1", "eval.gap_utterances=0"] if backend == "vllm" else []
    replicas = 1 if vllm else 2  # torch: two engine replicas, each batch of requests dealt out over both
    evaluators = replicas  # torch: each evaluation spread over two evaluators (and evaluate's and tune_decoding's)
    argv, run_dir = _argv(
        prepared_tiny,
        tiny_base,
        tmp_path,
        f"align.backend={backend}",
        "align.replay=0.5",
        *vllm,
        f"align.rollout_engines={replicas}",
        f"eval.workers={evaluators}",
        *([] if vllm else ["align.evaluate_beside=true"]),  # each evaluation beside the next version's making
    )
    out = align.main(argv)
    records = out["records"]
    versions = [0, 1] if vllm else [0, 1, 2]
    assert [r["iteration"] for r in records] == versions
    for i in versions[:-1]:
        assert set(_keys(run_dir / "align" / "pairs" / f"iter_{i}")) == _expected_keys(run_dir, i)
    # the second learner trained on its pairs and the replayed half of the first's (a draw by key)
    replayed = [k for k in _keys(run_dir / "align" / "pairs" / "iter_0") if preference.replayed(k, 0.5, 0)]
    assert records[1]["train_pairs"] == 6 and (vllm or records[2]["train_pairs"] == 6 + len(replayed))
    for r in records[1:]:
        assert r["pairs"] == 6 and 0 <= r["heldout_sentences_wer"] and r["rollout_tokens_per_s"] > 0
        assert r["rollout_engines"] == replicas  # every replica sampled
        assert abs(r["dpo_loss"]) < 10 and 0 <= r["reward_acc"] <= 1
        # paired with the base's evaluation: the WER change and its interval
        assert (
            r["heldout_sentences_wer_change_lo"]
            <= r["heldout_sentences_wer_change"]
            <= r["heldout_sentences_wer_change_hi"]
        )
        # the iteration profile: each role's own work inside its stage's wall time, and its peak memory
        assert (
            0 < r["busy_rollout_seconds"] <= r["rollout_seconds"]
            and 0 < r["busy_reference_seconds"] <= r["rollout_seconds"]
        )
        assert (
            0 < r["busy_learner_seconds"] <= r["learn_seconds"]
            and 0 < r["busy_evaluator_seconds"] <= evaluators * r["eval_seconds"]  # side by side: summed
        )
        assert all(r[f"peak_rss_{role}_mb"] > 50 for role in ("rollout", "reference", "learner", "evaluator", "driver"))
    from benchmarks import iteration_profile

    profiled = iteration_profile.main(["--run-dir", str(run_dir)])
    assert [(p["version"], p["stage"]) for p in profiled if "stage" in p][:4] == [
        (0, "evaluate"),
        (1, "rollout"),
        (1, "learn"),
        (1, "evaluate"),
    ]
    summary = json.loads((run_dir / "align" / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == versions
    printed = capsys.readouterr().out
    assert "WER sent" in printed and f"iter {versions[-1]}: WER change vs base" in printed
    assert f"rollout engine: {backend} (" in printed  # the user is told which engine sampled
    assert vllm or "version 0: evaluating (beside version 1)\nversion 1: rolling out pairs from version 0" in printed
    # each adapter is a PEFT directory and carries the learner's probe value
    for k in versions[1:]:
        adapter = run_dir / "align" / "adapters" / f"v{k}"
        assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "probe.json").is_file()

    cfg = load_config(argv[1], argv[2:])
    client = tracking.client(cfg)
    run = client.get_run(out["run_id"])
    assert run.data.tags["sa_ray.job"] == "align" and run.data.tags["sa_ray.method"] == cfg.align.method
    assert run.data.tags["sa_ray.rollout_engine"].startswith(backend)
    wer = client.get_metric_history(out["run_id"], "heldout_sentences_wer")
    assert sorted(m.step for m in wer) == versions
    assert sorted(m.step for m in client.get_metric_history(out["run_id"], "pairs")) == versions[1:]
    assert tracking.alias_version(f"{cfg.name}-policy", "latest", tracking.resolve_uri(cfg.tracking.uri)) is not None
    for r in records if not vllm else []:  # the distribution gap of every policy version
        assert 0 <= r["gap_probe_acc"] <= 1 and 0 <= r["gap_paired_probe_acc"] <= 1
        assert r["nar_golden_wer"] >= 0 and r["nar_synthetic_wer"] >= 0
    gaps = {a.path for a in client.list_artifacts(out["run_id"], "gap")}
    assert gaps == (set() if vllm else {f"gap/iter_{k}.png" for k in range(3)})
    artifacts = {a.path for a in client.list_artifacts(out["run_id"], f"samples/iter_{versions[-1]}")}
    assert artifacts and all(p.endswith(".wav") for p in artifacts)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{out['run_id']}'"
    )
    assert len(children) == len(versions) - 1
    assert all(client.get_metric_history(c.info.run_id, "dpo_loss") for c in children)

    if backend == "torch":  # `evaluate` scores the registered policy through its MLflow model URI
        from jobs import evaluate

        ev = evaluate.main(
            [
                "--config",
                argv[1],
                "--adapter",
                "models:/tiny-policy@latest",
                "--out",
                str(tmp_path / "ev.json"),
                *argv[2:],
            ]
        )
        assert ev["metrics"]["heldout_sentences_n"] == 2 and 0 <= ev["metrics"]["gap_probe_acc"] <= 1
        written = json.loads((tmp_path / "ev.json").read_text())  # what analysis.wer_changes --run pairs by seed
        assert (
            written["seed"] == 0
            and written["heldout_sentences_utt_errors"] == ev["metrics"]["heldout_sentences_utt_errors"]
        )
        ev_run = client.get_run(ev["run_id"])
        assert ev_run.data.tags["sa_ray.asr_backend"] == "pocketsphinx-domain-lm"
        assert "heldout_voices_wer" in ev_run.data.metrics

        # its best decoding, searched on dev (never on test)
        from jobs import tune_decoding

        tune = ["--config", argv[1], "--adapter", "models:/tiny-policy@latest", "--temperature", "0,1"]
        tuned = tune_decoding.main([*tune, *argv[2:]])
        assert [d["temperature"] for d in tuned["decodings"]] == [0.0, 1.0]
        assert tuned["best"]["heldout_sentences_wer"] == min(d["heldout_sentences_wer"] for d in tuned["decodings"])
        assert "best on dev: eval.temperature=" in capsys.readouterr().out
        with pytest.raises(ConfigError, match="decoding is chosen on dev"):
            tune_decoding.main([*tune, *argv[2:], "eval.split=test"])

        # killed after v1 and v2 were committed but before their records: the resumed job evaluates them, never
        # retrains them; with early stopping it waits for each evaluation, so v1's runs alone this time, not beside
        # v2's rollout and learner as before: the same metrics to the last digit
        for k in (1, 2):
            (run_dir / "align" / "records" / f"iter_{k}.json").unlink()
        monkeypatch.setattr("actors.learner.fit_learner", lambda *a, **k: pytest.fail("a version was trained again"))
        capsys.readouterr()
        again = align.main([*argv, "align.early_stopping=5"])  # resumed under a changed setting: said, recorded
        assert again["run_id"] == out["run_id"] and again["records"][2]["dpo_loss"] == records[2]["dpo_loss"]
        measured = [key for key in records[1] if key.startswith(("heldout_", "gap_", "nar_"))]
        assert len(measured) > 20 and {key: again["records"][1][key] for key in measured} == {
            key: records[1][key] for key in measured
        }
        assert [r["align_settings"]["early_stopping"] for r in again["records"]] == [0, 5, 5]
        changed = "align.early_stopping: 0 -> 5"
        assert (
            f"note: version 1 is made with settings that differ from version 0's: {changed}" in capsys.readouterr().out
        )
        assert client.get_run(out["run_id"]).data.tags["sa_ray.settings_changed.v1"] == changed

        # v1 and v2 were registered before the kill: the resumed job registers nothing twice, and every version
        # carries the base it was trained on
        versions = client.search_model_versions("name = 'tiny-policy'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        base = {v.tags["sa_ray.base_fingerprint"] for v in versions}
        assert len(base) == 1 and {v.tags["sa_ray.run_id"] for v in versions} == {out["run_id"]}
        assert (
            json.loads((run_dir / "align" / "adapters" / "v2" / "lineage.json").read_text())["base_fingerprint"] in base
        )

        # an adapter of this base is refused on another base, naming both
        from sa_ray.lineage import LineageError

        other = tmp_path / "other-base"
        shutil.copytree(tiny_base, other)
        (other / "ar" / "README").write_text("another base")  # its files differ: another fingerprint
        with pytest.raises(LineageError, match="was trained on base .* not on the base loaded here"):
            evaluate.main(
                ["--config", argv[1], "--base", str(other), "--adapter", "models:/tiny-policy@latest", *argv[2:]]
            )


# What `ray.init` raises when a local instance's raylet exits before registering: on a loaded machine Ray 2.60's raylet
# gives its dashboard agent a fixed 15 s to write its port file (ray-project/ray#65983; docs/environment.md). A job
# that starts a Ray instance of its own beside the suite's others is started once more when that is why it ended.
RAY_START_TIMEOUT = "The current node timed out during startup"


def test_killed_mid_learner_after_its_pairs_were_committed_resubmitted_completes_with_the_expected_pairs(
    prepared_tiny, tiny_base, tmp_path
):
    """SIGKILLed (driver and its local cluster) in the middle of its learner, its pair set committed, resubmitted:
    the pairs are never rolled out again, the learner goes on from its checkpoint, and one MLflow run holds it all."""
    argv, run_dir = _argv(
        prepared_tiny, tiny_base, tmp_path, "align.backend=torch", "align.iterations=1", "eval.gap_utterances=0"
    )
    cmd = [sys.executable, "-m", "jobs.align", *argv]
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local cluster, like a fresh submission
    env.pop("RAY_ADDRESS")
    pairs0 = run_dir / "align" / "pairs" / "iter_0"
    learner0 = run_dir / "align" / "learner" / "iter_0"

    def kill_when(reached, moment: str) -> None:
        log = tmp_path / "killed-run.log"  # what the job said, for a failure to show
        for attempt in (1, 2):  # a second start only where Ray's own start-up timed out (RAY_START_TIMEOUT)
            with log.open("w") as out:
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=out, stderr=out)
            try:
                deadline = time.time() + 600
                while not reached():
                    if attempt == 1 and proc.poll() is not None and RAY_START_TIMEOUT in log.read_text():
                        break
                    ended = proc.poll() is not None or time.time() > deadline
                    assert not ended, f"the job ended before {moment}:\n{log.read_text()[-3000:]}"
                    time.sleep(0.5)
                else:
                    return
            finally:
                with contextlib.suppress(ProcessLookupError):  # the job dies right then, driver and local cluster
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    kill_when(lambda: any(learner0.glob("checkpoint_*")), "its learner's first checkpoint")
    committed = read_manifest(pairs0)
    assert committed is not None and not (run_dir / "align" / "adapters" / "v1").exists()

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode and RAY_START_TIMEOUT in done.stderr:  # Ray's start-up, not the job's: once more
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_manifest(pairs0) == committed  # never rolled out again
    keys = _keys(pairs0)
    assert len(keys) == len(set(keys)) and set(keys) == _expected_keys(run_dir, 0)  # none lost or duplicated
    assert not list((run_dir / "align" / "pairs").glob(".*staging*"))
    state = json.loads((run_dir / "align" / "state.json").read_text())
    summary = json.loads((run_dir / "align" / "summary.json").read_text())
    assert summary["run_id"] == state["run_id"] and len(summary["iterations"]) == 2  # one MLflow run, resumed


def test_ranked_pairs_run_end_to_end(prepared_tiny, tiny_base, tmp_path, ray_local):
    """align.pairs=ranked through the whole pipeline: N samples per prompt -> rewards (split over two
    RewardScorers) -> best vs worst per utterance -> reference -> learner -> adapter v1, on the torch backend; every
    evaluation at two sampling seeds, with the policy's held-out phone error rate. (Rewards by phone errors: the
    GRPO test below.)"""
    from jobs import align

    argv, run_dir = _argv(
        prepared_tiny,
        tiny_base,
        tmp_path,
        "align.backend=torch",
        "align.pairs=ranked",
        "align.samples_per_prompt=3",
        "align.prompts_per_iteration=4",
        "align.reward_workers=2",
        "align.iterations=1",
        "eval.gap_utterances=0",
        "eval.seeds=2",
    )
    out = align.main(argv)
    pairs_dir = run_dir / "align" / "pairs" / "iter_0"
    manifest = read_manifest(pairs_dir)
    assert manifest["strategy"] == "ranked" and manifest["samples"] == 12
    pairs = pq.read_table(pairs_dir).to_pylist()
    ids = pq.read_table(run_dir / "data" / "align", columns=["utt_id"]).column("utt_id").to_pylist()
    prompts = set(select_prompts(ids, 4, 0, 0))
    assert 0 < len(pairs) <= 4 and len({p["utt_id"] for p in pairs}) == len(pairs)  # at most one pair per prompt
    assert out["records"][1]["pairs"] == len(pairs) == manifest["pairs"]
    for p in pairs:
        assert p["utt_id"] in prompts and 0 <= p["sample_idx"] < 3  # keyed by the rejected (worst) sample
        assert p["chosen_reward"] > p["rejected_reward"] and p["chosen_ids"] != p["rejected_ids"]
        assert p["reference_version"] == 0
    assert (run_dir / "align" / "adapters" / "v1" / "adapter_model.safetensors").is_file()
    for side in ("chosen", "rejected"):  # the policy's best and worst samples, per iteration in the record
        assert out["records"][1][f"pairs_{side}_reward"] == pytest.approx(np.mean([p[f"{side}_reward"] for p in pairs]))
    for r in out["records"]:  # two sampling seeds per evaluation: utterance-seed pairs and the spread across seeds
        assert len(r["heldout_sentences_utt_errors"]) == 2 * r["heldout_sentences_n"] == 4
        assert 0 <= r["heldout_sentences_wer_spread"] <= 1
        assert 0 <= r["heldout_sentences_phone_error_rate"] and 0 <= r["heldout_voices_phone_error_rate"]


def test_listeners_votes_become_the_pairs_an_iteration_trains_on(prepared_tiny, tiny_base, tmp_path, ray_local, capsys):
    """align.pairs=votes: takes of the tiny base spoken as the endpoint speaks them (PolicyVoice, no Serve) and voted
    on in the run's votes store; each vote A > B of one prompt becomes a pair (chosen = A's tokens), a tie, a take of
    another base and takes of two voice crops are left out and counted; the pairs are scored by the reference and
    trained on (adapter v1), and the reward model's pair source reads them. The run resumed with
    align.pairs=golden+votes: the golden pairs and the one vote cast since (the earlier ones are not made pairs
    again) make version 2."""
    from jobs import align
    from sa_ray import lineage, votes
    from sa_ray.codec import load_codec
    from sa_ray.config import load_config
    from sa_ray.reward_model import read_pair_sets
    from sa_ray.serve import PolicyVoice, SpeechRequest
    from sa_ray.synthesis import Spelling

    argv, run_dir = _argv(
        prepared_tiny,
        tiny_base,
        tmp_path,
        "align.backend=torch",
        "align.pairs=votes",
        "align.iterations=1",
        "align.steps=2",
        "eval.gap_utterances=0",
    )
    cfg = load_config(argv[1], argv[2:])
    codec = load_codec(cfg.codec, run_dir / "codec")
    voice = PolicyVoice(
        tiny_base, codec, run_dir / "data", cfg.model.prompt_frames(codec.frame_rate), Spelling.of_config(cfg)
    )
    text = "The cat sat on the mat."
    requests = [
        SpeechRequest(text, "mbrola-us1", seed, temperature)
        for seed, temperature in ((1, 1.0), (1, 1.4), (1, 0.7), (2, 1.0))
    ]
    made = [best for best, _ in voice.speak(requests)]  # no registry: the base speaks
    fingerprint = lineage.fingerprint(tiny_base, run_dir / "codec", cfg.codec.kind)
    takes = [votes.Take.spoken(r, m, "base", None, fingerprint) for r, m in zip(requests, made)]
    # one seed, one voice crop: one prompt; seed 2 crops another
    assert len({t.prompt_ids for t in takes[:3]}) == 1 and takes[3].prompt_ids != takes[0].prompt_ids
    assert len({t.ar_tokens for t in takes}) == 4
    store = votes.VoteStore(run_dir / "votes.sqlite")  # where the endpoint of this run keeps them
    t0, t1, t2, t3, elsewhere = store.add_takes([*takes, replace(takes[1], base_fingerprint="ffffffffffffffff")])
    for a, b, verdict in ((t0, t1, "a"), (t2, t0, "b"), (t1, t2, "tie"), (t0, t3, "a"), (elsewhere, t0, "a")):
        store.add_vote(votes.parse_vote({"a": a, "b": b, "first": "a", "verdict": verdict}))

    out = align.main(argv)
    printed = capsys.readouterr().out
    assert f"votes: 5 in {run_dir / 'votes.sqlite'}, 2 new pairs; left out: 1 ties; 1 with a take spoken on " in printed
    pairs_dir = run_dir / "align" / "pairs" / "iter_0"
    manifest = read_manifest(pairs_dir)
    assert manifest["strategy"] == "votes" and manifest["vote_pairs"] == manifest["pairs"] == 2
    assert manifest["votes_left_out"] == {
        "tie": 1,
        "other_base": 1,
        "prompted_differently": 1,
        "same_tokens": 0,
        "used": 0,
    }
    pairs = sorted(pq.read_table(pairs_dir).to_pylist(), key=lambda p: p["utt_id"])
    assert [(p["utt_id"], p["chosen_ids"], p["rejected_ids"]) for p in pairs] == [
        ("vote-1", list(takes[0].ar_tokens), list(takes[1].ar_tokens)),
        ("vote-2", list(takes[0].ar_tokens), list(takes[2].ar_tokens)),
    ]
    for p in pairs:  # the prompt the takes were written after, scored by the reference (version 0: the base)
        assert p["prompt_ids"] == list(takes[0].prompt_ids) and p["reference_version"] == 0
        assert np.isfinite(p["ref_chosen_logp"]) and np.isfinite(p["ref_rejected_logp"])
    record = out["records"][1]
    assert record["pairs"] == record["vote_pairs"] == 2 and np.isfinite(record["dpo_loss"])
    assert (run_dir / "align" / "adapters" / "v1" / "adapter_model.safetensors").is_file()
    assert len(read_pair_sets([pairs_dir])) == 2  # jobs.reward_model trains on them as on any pair set

    # the next round, resumed with the golden pairs beside the votes: only the vote cast since becomes a pair
    store.add_vote(votes.parse_vote({"a": t2, "b": t1, "first": "b", "verdict": "b"}))
    out = align.main([*argv, "align.pairs=golden+votes", "align.iterations=2"])
    assert "votes: 6 in " in capsys.readouterr().out
    manifest = read_manifest(run_dir / "align" / "pairs" / "iter_1")
    assert (
        manifest["strategy"] == "golden+votes"
        and manifest["vote_pairs"] == 1
        and manifest["votes_left_out"]["used"] == 2
    )
    pairs = pq.read_table(run_dir / "align" / "pairs" / "iter_1").to_pylist()
    (voted,) = [p for p in pairs if p["utt_id"].startswith("vote-")]
    assert (voted["utt_id"], voted["chosen_ids"], voted["rejected_ids"]) == (
        "vote-6",
        list(takes[1].ar_tokens),
        list(takes[2].ar_tokens),
    )
    assert len(pairs) > 1 and {p["reference_version"] for p in pairs} == {1}  # golden ones too, scored by v1
    assert out["records"][2]["vote_pairs"] == 1 and (run_dir / "align" / "adapters" / "v2").is_dir()


def _tiny_reward_model(run_dir: Path, base: Path):
    """A reward model trained on the base in <run_dir>/reward_model (where align.reward=model loads it)."""
    import random

    from sa_ray import lineage
    from sa_ray.config import RewardModelConfig, load_config
    from sa_ray.data.examples import PromptBank
    from sa_ray.models.vocab import EOS, Vocab
    from sa_ray.preference import split_example
    from sa_ray.reward_model import train

    rows, vocab = pq.read_table(run_dir / "data" / "train").to_pylist()[:16], Vocab.load(base / "ar")
    frame_rate = json.loads((run_dir / "data" / "summary.json").read_text())["codec"]["frame_rate"]
    bank, pairs = PromptBank.from_rows(rows, 20, 1), []
    for row in rows:
        prompt, golden = split_example(
            row, bank.draw(row["speaker"], row["utt_id"], random.Random(0)), vocab, frame_rate
        )
        pairs.append(
            {
                "utt_id": row["utt_id"],
                "prompt_ids": prompt,
                "chosen_ids": golden,
                "rejected_ids": golden[: len(golden) // 2] + [EOS],
            }
        )
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), [f"run_dir={run_dir}"])
    made_from = {
        "base_fingerprint": lineage.fingerprint(base, run_dir / "codec", cfg.codec.kind),
        "base_dir": str(base),
    }
    model, _ = train(base, pairs, RewardModelConfig(steps=4, batch_size=4, heldout_fraction=0.25), made_from=made_from)
    model.save(run_dir / "reward_model")
    return model


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_grpo_and_ppo_run_an_iteration_end_to_end_and_log_a_finite_kl(
    method, prepared_tiny, tiny_base, tmp_path, ray_local
):
    """align.method=grpo|ppo: 4 samples per prompt rewarded (grpo: by their phone errors; ppo: by a trained reward
    model, its own role), every sample token scored by the sampling policy and the reference (ppo: the base),
    clipped policy-gradient steps on Ray Train -> v1; the KL to the reference reaches MLflow at every learner step,
    finite. grpo: advantages normalised in each prompt's group. ppo: the critic role wrote each sample's values,
    advantages and returns into the pair set (version 0: a zero critic) and fitted critic v1 beside the learner,
    its value loss in the learner's child run."""
    from jobs import align
    from sa_ray import tracking
    from sa_ray.config import load_config
    from sa_ray.groups import group_advantages, guarded_rewards
    from sa_ray.metrics.phones import phone_error_rate
    from sa_ray.models.vocab import Vocab
    from sa_ray.ppo import gae, guarded_reward

    argv, run_dir = _argv(
        prepared_tiny,
        tiny_base,
        tmp_path,
        "align.backend=torch",
        f"align.method={method}",
        "align.samples_per_prompt=4",
        "align.iterations=1",
        "eval.gap_utterances=0",
        "align.temperature=1.5",
        *(["align.reference=base", "align.reward=model"] if method == "ppo" else ["align.reward=phones"]),
    )
    if method == "ppo":  # a reward model of the base: golden targets over their first halves, a few steps
        reward_model = _tiny_reward_model(run_dir, tiny_base)
    out = align.main(argv)
    rows_dir = run_dir / "align" / "pairs" / "iter_0"
    rows, vocab = pq.read_table(rows_dir).to_pylist(), Vocab.load(tiny_base / "ar")
    assert read_manifest(rows_dir)["strategy"] == {"grpo": "groups", "ppo": "samples"}[method] and len(rows) == 24
    for utt in {r["utt_id"] for r in rows}:
        group = sorted((r for r in rows if r["utt_id"] == utt), key=lambda r: r["sample_idx"])
        raw = [-phone_error_rate(r["sample_ids"], vocab.prompt_text_ids(r["prompt_ids"]), vocab) for r in group]
        for r in group:  # version 0 sampled: the reference is the sampling policy, whichever align.reference says
            assert len(r["ref_token_logps"]) == len(r["sample_ids"]) and r["ref_token_logps"] == r["old_token_logps"]
        if method == "ppo":  # the reward model's scores, the role's as the library's
            scores = reward_model.score([r["prompt_ids"] for r in group], [r["sample_ids"] for r in group])
            assert [r["reward"] for r in group] == pytest.approx(scores, abs=1e-5)
            for r in group:  # the fresh critic values every state 0: GAE of the reward at the last token alone
                n, reward = len(r["sample_ids"]), guarded_reward(r["reward"], r["sample_ended"])
                adv, _ = gae([0.0] * (n - 1) + [reward], [0.0] * n, 1.0, 0.95)
                assert r["values"] == [0.0] * n and r["advantages"] == pytest.approx(adv) == r["returns"]
            continue
        rewards = guarded_rewards(raw, [r["sample_ended"] for r in group])
        assert [r["reward"] for r in group] == pytest.approx(rewards)
        tied = max(rewards) == min(rewards)
        assert [r["advantage"] for r in group] == pytest.approx([0.0] * 4 if tied else group_advantages(rewards))
    record = out["records"][1]
    assert record["rollout_reward"] == pytest.approx(np.mean([r["reward"] for r in rows]))
    v1 = run_dir / "align" / "adapters" / "v1"
    assert np.isfinite(record["kl"]) and (v1 / "adapter_model.safetensors").is_file()
    critic = run_dir / "align" / "critics" / "v1"  # the critic's own directory: the adapter is the policy alone
    assert (critic / "head.safetensors").is_file() == (method == "ppo") and not (v1 / "critic").exists()
    cfg = load_config(argv[1], argv[2:])
    client = tracking.client(cfg)
    assert client.get_run(out["run_id"]).data.tags["sa_ray.reward"] == cfg.align.reward  # as given
    (child,) = client.search_runs(
        [client.get_run(out["run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{out['run_id']}'"
    )
    kl = client.get_metric_history(child.info.run_id, "kl")
    assert sorted(m.step for m in kl) == [1, 2, 3, 4] and all(np.isfinite(m.value) for m in kl)
    if method == "ppo":  # the critic role logged its steps into the learner's child run; its last in the record
        for key in ("value_loss", "value_grad_norm"):
            history = {m.step: m.value for m in client.get_metric_history(child.info.run_id, key)}
            assert sorted(history) == [1, 2, 3, 4] and all(np.isfinite(v) for v in history.values())
            assert record[key] == json.loads((critic / "critic.json").read_text())[key] == pytest.approx(history[4])


def test_missing_held_out_audio_stops_the_job_before_any_work(prepared_tiny, tiny_base, tmp_path, capsys):
    """The evaluation needs the held-out utterances' real audio; prepared data run from another directory (a
    relative corpus.cache_dir) says so in one line, before Ray starts, not as a traceback from an actor."""
    import shutil

    import pyarrow as pa

    from jobs import _cli, align

    argv, run_dir = _argv(prepared_tiny, tiny_base, tmp_path, "align.backend=torch")
    voices = run_dir / "data" / "heldout_voices"
    table = pq.read_table(voices)
    moved = [f"elsewhere/{Path(p).name}" for p in table.column("audio_path").to_pylist()]
    shutil.rmtree(voices)
    voices.mkdir()
    pq.write_table(
        table.set_column(table.schema.get_field_index("audio_path"), "audio_path", pa.array(moved)),
        voices / "part-0.parquet",
    )
    with pytest.raises(SystemExit) as stop:
        _cli.run(align.main, argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"the audio of {len(moved)} of {len(moved)} utterances is missing" in err
    assert str(voices) in err and moved[0] in err and "Traceback" not in err
    assert not (run_dir / "align").exists()  # nothing started
