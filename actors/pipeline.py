"""The align loop's long-lived roles (`start_roles`) and one iteration's pair set as a Ray Data pipeline between them:

    prompt rows -> requests -> RolloutEngine -> [reward terms -> their mix] -> pair builder -> ReferenceScorer
                -> [Critic] -> Parquet
                                                  listeners' votes (sa_ray.votes) -/

Batches stream through map_batches stages; the engines are actors created once per job, called from
zero-CPU forwarding tasks, so the driver never holds an iteration and no engine restarts per iteration.
The pairs land in a staging directory and are committed (manifest + atomic rename) only when complete.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from actors.placement import actor_options
from sa_ray import groups, preference, reward_mix
from sa_ray.config import SAMPLE_METHODS
from sa_ray.models.vocab import tag_prompt

# The stages below run as Ray tasks in pooled workers, each of which imports this module first: so it imports only
# what they run (pandas, the pair and group builders). The roles, models and the learners' modules (torch,
# transformers, peft, vLLM: seconds of CPU a worker) load where they are used, in start_roles' actors.

PAIR_COLUMNS = ["iteration", "utt_id", "sample_idx", "prompt_ids", "chosen_ids", "rejected_ids"]
ROW_COLUMNS = ["utt_id", "speaker", "text", "text_norm", "phones", "phone_ms", "audio_path", "codes_0"]

# a vote's pair beside the pairs of a rollout strategy (align.pairs=golden+votes, ranked+votes): the columns both
# have, a ranked pair's rewards NaN for a vote (it has none; the manifest's means skip them)
MIXED_COLUMNS = {"golden": PAIR_COLUMNS, "ranked": [*PAIR_COLUMNS, "chosen_reward", "rejected_reward"]}


def _requests(
    batch: pd.DataFrame,
    vocab,
    bank_ref,
    frame_rate: float,
    iteration: int,
    seed: int,
    samples: int,
    max_len: int,
    quality: str | None,
) -> pd.DataFrame:
    bank = ray.get(bank_ref) if isinstance(bank_ref, ray.ObjectRef) else bank_ref
    requests = preference.rollout_requests(
        batch.to_dict("records"), vocab, bank, frame_rate, iteration, seed, samples, max_len
    )
    if quality:  # a Chain-of-Hindsight policy is prompted with its tag (sa_ray.coh)
        requests = [{**r, "prompt_ids": tag_prompt(r["prompt_ids"], quality)} for r in requests]
    return pd.DataFrame(requests)


# A small iteration (one block) cannot use the two tasks `_through_actors` allows, and Ray Data says so each time
warnings.filterwarnings("ignore", r"The maximum number of concurrent tasks for 'MapBatches\(_", UserWarning)


def _through_actors(ds, fn, batch_size: int, **fn_kwargs):
    """A stage whose tasks hand their batch to role actors (`fn`: `_call`, `_dealt`, ...) and wait. They use no CPU
    of their own (num_cpus=0), and two at a time keep each actor busy (one call running, the next queued: an actor
    takes one call at a time); unbounded, every waiting task held a worker process of its own, and Ray started ~30
    for a 2,048-prompt rollout (each a Python start and the stage's imports) to no gain."""
    return ds.map_batches(
        fn, batch_format="pandas", batch_size=batch_size, num_cpus=0, concurrency=2, fn_kwargs=fn_kwargs
    )


def _call(batch: pd.DataFrame, actor, method: str, args: tuple) -> pd.DataFrame:
    return ray.get(getattr(actor, method).remote(batch, *args))


def _dealt(batch: pd.DataFrame, actors: list, method: str, args: tuple = ()) -> pd.DataFrame:
    """One batch dealt out over `actors` in contiguous parts (a prompt's samples stay together) and processed side by
    side: the rollout engine replicas, the reward scorers (row order is free: each row carries its own columns, and
    the pair builders group by utterance)."""
    n = max(1, min(len(actors), len(batch)))
    cuts = [len(batch) * i // n for i in range(n + 1)]
    calls = [getattr(a, method).remote(batch.iloc[lo:hi], *args) for a, lo, hi in zip(actors, cuts, cuts[1:])]
    return pd.concat(ray.get(calls), ignore_index=True)


def _phone_reward(batch: pd.DataFrame, vocab) -> pd.DataFrame:
    return batch.assign(reward_phones=[preference.phone_reward(s, vocab) for s in batch.to_dict("records")])


def _golden(batch: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(preference.golden_pairs(batch.to_dict("records")), columns=PAIR_COLUMNS)


def _corrections(batch: pd.DataFrame, vocab) -> pd.DataFrame:
    return pd.DataFrame(
        preference.correction_pairs(batch.to_dict("records"), vocab),
        columns=PAIR_COLUMNS + ["error_kind", "error_position"],
    )


def _ranked(group: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        preference.ranked_pairs(group.to_dict("records")),
        columns=PAIR_COLUMNS + ["chosen_reward", "rejected_reward", "golden_ids"],
    )


def _groups(group: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(groups.group_rows(group.to_dict("records")))


def _ppo_rows(batch: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([groups.sample_row(s) for s in batch.to_dict("records")])


def _model_reward(batch: pd.DataFrame, model) -> pd.DataFrame:
    prompts, samples = ([list(map(int, x)) for x in batch[c]] for c in ("prompt_ids", "sample_ids"))
    return batch.assign(reward_model=ray.get(model.score.remote(prompts, samples)))


def _mixed(batch: pd.DataFrame, terms: dict[str, float]) -> pd.DataFrame:
    return batch.assign(reward=reward_mix.mixed_reward(batch, terms))


def _rewarded(samples, a, vocab, roles):
    """Each sample with its `reward` (`align.reward`): each term's stage writes its columns (SIM and WER by the
    RewardScorers, phone errors in the pipeline, the trained reward model's score), then their weighted sum."""
    terms, needs = a.reward_terms, a.reward_roles
    if "scorers" in needs:
        samples = _through_actors(samples, _dealt, 16 * len(roles["scorers"]), actors=roles["scorers"], method="reward")
    if "phones" in terms:
        samples = samples.map_batches(_phone_reward, batch_format="pandas", fn_kwargs=dict(vocab=vocab))
    if "reward_model" in needs:
        samples = _through_actors(samples, _model_reward, 32, model=roles["reward_model"])
    return samples.map_batches(_mixed, batch_format="pandas", fn_kwargs=dict(terms=terms))


def _vote_dataset(voted, quality: str | None, columns: list[str]):
    """The votes' pairs (`sa_ray.votes.VotePairs`) as a dataset of `columns`, each asked as this run's policy is
    prompted (a Chain-of-Hindsight policy: with its tag, as its rollouts are)."""
    rows = [
        {
            **dict.fromkeys(columns, float("nan")),
            **row,
            "prompt_ids": tag_prompt(row["prompt_ids"], quality) if quality else row["prompt_ids"],
        }
        for row in voted.rows
    ]
    # Arrow blocks, as the pair builders' outputs are: a batch of the union never mixes two block types
    return ray.data.from_arrow(pa.Table.from_pandas(pd.DataFrame(rows, columns=columns), preserve_index=False))


def make_pairs(
    iteration: int,
    cfg,
    data_dir: Path,
    out_dir: Path,
    vocab,
    bank_ref,
    frame_rate: float,
    roles: dict,
    policy: dict,
    voted=None,
) -> dict:
    """Runs the pipeline for `iteration` and commits `out_dir`; returns its manifest. `voted`: the listeners' pairs
    of this iteration (`sa_ray.votes.VotePairs`), for an align.pairs with votes."""
    from sa_ray import lora

    a = cfg.align
    quality = lora.prompt_tag(policy["adapter_dir"])  # a Chain-of-Hindsight policy is asked with its tag
    if a.rollout_pairs is None:  # align.pairs=votes: the listeners' pairs alone, nothing rolled out
        pairs = _vote_dataset(voted, quality, PAIR_COLUMNS)
        prompts = len({tuple(row["prompt_ids"]) for row in voted.rows})
        return _score_and_commit(
            iteration, cfg, out_dir, roles, policy, pairs, {"prompts": prompts, "samples": 0}, voted
        )
    source = data_dir / a.prompt_split
    ids = pq.read_table(source, columns=["utt_id"]).column("utt_id").to_pylist() if source.is_dir() else []
    if not ids:
        raise ValueError(
            f"align.prompt_split={a.prompt_split!r}: no utterances in {source} (prepare with "
            "corpus.align_sentences > 0, or set align.prompt_split=train)"
        )
    chosen = set(preference.select_prompts(ids, a.prompts_per_iteration, a.seed, iteration))
    max_len = cfg.model.max_positions
    # Blocks of 16 prompts, so that the stages stream: Ray Data reads the small split as ONE block, and each stage
    # then waited for the whole iteration of the one before it. Same pairs; on 2 shared cores the same stage time
    # (scoring is CPU-bound either way: the align table's `rollout s` was 252 against 242 for `align.pairs=ranked
    # align.reward=asr align.samples_per_prompt=4 align.prompts_per_iteration=64 align.reward_workers=2
    # align.backend=torch`); where the engine and the scorers have their own devices, sampling and scoring overlap.
    blocks = -(-len(chosen) // 16)
    ds = (
        ray.data.read_parquet(str(source), columns=ROW_COLUMNS)
        .filter(lambda r: r["utt_id"] in chosen)
        .repartition(blocks)
    )
    requests = ds.map_batches(
        _requests,
        batch_format="pandas",
        batch_size=32,
        fn_kwargs=dict(
            vocab=vocab,
            bank_ref=bank_ref,
            frame_rate=frame_rate,
            iteration=iteration,
            seed=a.seed,
            samples=a.samples_per_prompt,
            max_len=max_len,
            quality=quality,
        ),
    )
    samples = _through_actors(
        requests, _dealt, 64 * len(roles["rollout"]), actors=roles["rollout"], method="rollout", args=(policy,)
    )
    if a.method == "grpo":  # every sample, with its advantage in its prompt's group
        pairs = _rewarded(samples, a, vocab, roles).groupby("utt_id", num_partitions=min(blocks, 8))
        pairs = pairs.map_groups(_groups, batch_format="pandas")
    elif a.method == "ppo":  # every sample with its reward; the critic makes the advantages once it is scored
        pairs = _rewarded(samples, a, vocab, roles).map_batches(_ppo_rows, batch_format="pandas")
    elif a.rollout_pairs == "golden":
        pairs = samples.map_batches(_golden, batch_format="pandas")
    elif a.rollout_pairs == "corrections":  # each sample alone: its first wrong decision, if any
        pairs = samples.map_batches(_corrections, batch_format="pandas", fn_kwargs=dict(vocab=vocab))
    else:
        # an utterance's samples may straddle two batches: group them (a few partitions, not Ray's default 200)
        pairs = _rewarded(samples, a, vocab, roles).groupby("utt_id", num_partitions=min(blocks, 8))
        pairs = pairs.map_groups(_ranked, batch_format="pandas")
    if voted is not None and voted.rows:
        columns = MIXED_COLUMNS[a.rollout_pairs]
        pairs = pairs.select_columns(columns).union(_vote_dataset(voted, quality, columns))
    rolled = {"prompts": len(chosen), "samples": len(chosen) * a.samples_per_prompt}
    return _score_and_commit(iteration, cfg, out_dir, roles, policy, pairs, rolled, voted)


def _score_and_commit(iteration: int, cfg, out_dir: Path, roles: dict, policy: dict, pairs, counts: dict, voted):
    """The iteration's pairs (or samples) scored by the reference (and valued by the critic), written to a staging
    directory and committed with their manifest."""
    a = cfg.align
    scored = _through_actors(
        pairs,
        _call,
        32,
        actor=roles["reference"],
        method="score_samples" if a.method in SAMPLE_METHODS else "score",
        args=(policy["version"], policy["adapter_dir"]),
    )
    if a.method == "ppo":  # values, advantages and returns by the critic of the version that sampled
        scored = _through_actors(
            scored, _call, 32, actor=roles["critic"], method="advantages", args=(policy["critic_dir"],)
        )
    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    scored.write_parquet(str(staging))
    # the engines' tokens/s and guards of the version's rollouts; align.pairs=votes rolled nothing out
    stats = {}
    if a.rollout_pairs is not None:
        from actors.rollout import merged_stats

        stats = merged_stats(ray.get([engine.tally.remote() for engine in roles["rollout"]]))
    return preference.commit_pairs(
        staging,
        out_dir,
        {
            "iteration": iteration,
            **counts,
            "strategy": {"grpo": "groups", "ppo": "samples"}.get(a.method, a.pairs),
            "policy_version": policy["version"],
            **stats,
            **(voted.stats() if voted is not None else {}),
        },
    )


def start_roles(cfg, base_dir: Path, base_fingerprint: str | None = None) -> dict:
    """The loop's long-lived roles, each placed by its `resources.<role>` (actors/placement.py), the reward's as
    its terms need them (`AlignConfig.reward_roles`); a reward model only if it was trained on this base
    (`base_fingerprint`)."""
    from actors.critic import CriticRole
    from actors.evaluator import start_evaluators
    from actors.reference import ReferenceScorer
    from actors.reward_model import RewardModelRole
    from actors.reward_scorer import RewardScorer
    from actors.rollout import RolloutEngine
    from sa_ray.reward_model import checkpoint_dir

    a, res = cfg.align, cfg.resources
    sampling = {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p}
    # engine replicas spread over the nodes that have their resources (one per GPU node, as far as there are nodes)
    spread = {"scheduling_strategy": "SPREAD"} if a.rollout_engines > 1 else {}
    engine_args = (
        a.backend,
        str(base_dir / "ar"),
        sampling,
        a.lora_rank,
        cfg.model.max_positions,
        a.seed,
        a.forced_phones,
    )
    roles = {
        "rollout": [
            ray.remote(RolloutEngine)
            .options(**actor_options(res.rollout, **spread))
            .remote(*engine_args, resources=res.rollout, vllm=cfg.vllm, dedicated=True)
            for _ in range(a.rollout_engines)
        ],
        "reference": ray.remote(ReferenceScorer)
        .options(**actor_options(res.reference))
        .remote(
            str(base_dir / "ar"), margin_tokens=a.margin_tokens, num_gpus=res.reference.num_gpus, reference=a.reference
        ),
        "evaluator": start_evaluators(cfg, base_dir),
    }
    # a reward with ASR or SIM terms: reward_workers scorers side by side (the costly stage: every sample goes
    # through NAR, vocoder and ASR); they score while the evaluator waits for its next version, so no core is shared
    needs = a.reward_roles
    if "reward_model" in needs:
        roles["reward_model"] = (
            ray.remote(RewardModelRole)
            .options(**actor_options(res.reward_model))
            .remote(str(checkpoint_dir(cfg)), res.reward_model.num_gpus, base_fingerprint)
        )
    roles["scorers"] = [
        ray.remote(RewardScorer).options(**actor_options(res.reward)).remote(cfg, str(base_dir))
        for _ in range(a.reward_workers if "scorers" in needs else 0)
    ]
    if a.method == "ppo":  # PPO's value model: advantages in the pipeline, trained beside the learner
        roles["critic"] = (
            ray.remote(CriticRole)
            .options(**actor_options(res.critic))
            .remote(str(base_dir / "ar"), a, res.critic.num_gpus)
        )
    return roles


def stop_roles(roles: dict) -> None:
    """Ends the loop's roles and frees their models' memory: a driver that lives on after its job (a notebook, a test
    session) would otherwise keep them for as long as anything (Ray Data's plans among them) holds a handle."""
    for handle in (h for hs in roles.values() for h in (hs if isinstance(hs, list) else [hs])):
        ray.kill(handle)
