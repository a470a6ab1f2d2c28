"""Preference data of the align loop: rollout requests, pairs, the adapter probe and the per-iteration pair set.

Every row is keyed (iteration, utt_id, sample_idx). A request's voice prompt and sampling seed are pure
functions of (seed, iteration, utt_id, sample_idx), so re-running a stage reproduces it exactly.

Pair strategies:
- golden (the paper): chosen = the golden target, rejected = the model's own sample of the same prompt.
- ranked (Tian et al.): N samples per prompt scored by a reward, chosen = best, rejected = worst.
  Golden-vs-synthetic pairs are trivially separable for a weak model. Rewards: `asr` (SIM - WER of the
  sample's speech through NAR, vocoder, offline ASR and speaker encoder; ~1 s a sample here) or `phones`
  (minus the phone error rate of the target the sample wrote: free, noise-free, content only).
- corrections (on-policy, aligned vocabularies): every sample with a content error gives a pair on its FIRST wrong
  decision (`sa_ray.corrections`): prompt = AR prompt + the sample up to it, chosen = [the token that was due],
  rejected = [the token the sample wrote]. The margin is on that one decision; the sample's right ones stay out.
- votes (`sa_ray.votes`): a listener preferred one of two takes of the endpoint: chosen = its tokens, rejected =
  the other's, prompt = the one both were written after. Alone, or beside golden or ranked pairs.
"""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sa_ray import atomic, corrections
from sa_ray.data.examples import PromptBank, ar_example
from sa_ray.metrics.phones import phone_error_rate
from sa_ray.models.vocab import SPEECH, Vocab

KEY = ("iteration", "utt_id", "sample_idx")
MANIFEST = "_manifest.json"  # "_": Parquet readers skip it


def request_seed(seed: int, iteration: int, utt_id: str, sample_idx: int) -> int:
    entropy = [seed, iteration, zlib.crc32(utt_id.encode()), sample_idx]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def split_example(row: dict, prompt: np.ndarray, vocab: Vocab, frame_rate: float) -> tuple[list[int], list[int]]:
    """A prepared row + voice prompt -> (AR prompt ending in [SPEECH], golden target ending in EOS)."""
    ids = ar_example(row, prompt, vocab, frame_rate)["input_ids"]
    head = ids.index(SPEECH) + 1
    return ids[:head], ids[head:]


def rollout_requests(
    rows: list[dict],
    vocab: Vocab,
    bank: PromptBank,
    frame_rate: float,
    iteration: int,
    seed: int,
    samples: int,
    max_len: int,
) -> list[dict]:
    """One request per (utterance, sample): its AR prompt, the golden target, a token budget and a seed."""
    out = []
    for row in rows:
        prompt_ids, golden = split_example(row, voice_prompt(bank, row, seed, iteration), vocab, frame_rate)
        budget = min(2 * len(golden) + 20, max_len - len(prompt_ids))  # room for a slow sample, never the context
        for k in range(samples):
            out.append(
                {
                    "iteration": iteration,
                    "utt_id": row["utt_id"],
                    "sample_idx": k,
                    "speaker": row["speaker"],
                    "text": row["text"],
                    "audio_path": row["audio_path"],
                    "prompt_ids": prompt_ids,
                    "chosen_ids": golden,
                    "budget": budget,
                    "seed": request_seed(seed, iteration, row["utt_id"], k),
                }
            )
    return out


def voice_prompt(bank: PromptBank, row: dict, seed: int, iteration: int) -> np.ndarray:
    """The voice prompt of `row`'s requests in an iteration (all codec layers of the bank): reproducible."""
    return bank.draw(row["speaker"], row["utt_id"], random.Random(f"{seed}:{iteration}:{row['utt_id']}"))


def select_prompts(utt_ids: list[str], n: int, seed: int, iteration: int) -> list[str]:
    """A fresh, reproducible draw of `n` training utterances for an iteration."""
    ids = sorted(utt_ids)
    random.Random(f"prompts:{seed}:{iteration}").shuffle(ids)
    return sorted(ids[:n])


def replayed(key: tuple, fraction: float, seed: int) -> bool:
    """Whether an earlier iteration's pair (its KEY) is replayed at `fraction` (`align.replay`): a draw that is a
    pure function of the key and the seed, so every worker and every resumed learner trains on the same pairs."""
    iteration, utt_id, sample_idx = key
    return request_seed(seed, int(iteration), f"replay:{utt_id}", int(sample_idx)) < fraction * 2**63


def replayed_row(row: dict, fraction: float, seed: int) -> bool:
    """`replayed` of a pair set's row: the learner's Ray Data filter (a light module, which the task's worker imports
    to run it)."""
    return replayed((row["iteration"], row["utt_id"], row["sample_idx"]), fraction, seed)


def golden_pairs(samples: list[dict]) -> list[dict]:
    """chosen = golden, rejected = sample; a sample equal to the golden target is no preference and is dropped."""
    return [
        {**_pair_fields(s), "chosen_ids": list(s["chosen_ids"]), "rejected_ids": list(s["sample_ids"])}
        for s in samples
        if list(s["sample_ids"]) != list(s["chosen_ids"])
    ]


def phone_reward(sample: dict, vocab: Vocab) -> float:
    """Minus the share of the prompt's phones that the sample's target got wrong (0 = every phone right)."""
    return -phone_error_rate(sample["sample_ids"], vocab.prompt_text_ids(sample["prompt_ids"]), vocab)


def ranked_pairs(samples: list[dict]) -> list[dict]:
    """Per utterance: the best-rewarded sample is chosen and the worst rejected (ties: no pair); the pair keeps
    the utterance's golden target too (`align.nll_target=golden`)."""
    by_utt: dict[str, list[dict]] = {}
    for s in samples:
        by_utt.setdefault(s["utt_id"], []).append(s)
    pairs = []
    for group in by_utt.values():
        group = sorted(group, key=lambda s: (-s["reward"], s["sample_idx"]))
        best, worst = group[0], group[-1]
        if best["reward"] > worst["reward"] and list(best["sample_ids"]) != list(worst["sample_ids"]):
            pairs.append(
                {
                    **_pair_fields(worst),
                    "chosen_ids": list(best["sample_ids"]),
                    "rejected_ids": list(worst["sample_ids"]),
                    "chosen_reward": float(best["reward"]),
                    "rejected_reward": float(worst["reward"]),
                    "golden_ids": list(best["chosen_ids"]),
                }
            )
    return pairs


def correction_pairs(samples: list[dict], vocab: Vocab) -> list[dict]:
    """One pair per sample with a content error, on its first wrong decision (`corrections.first_wrong_decision`):
    prompt = AR prompt + the sample's tokens before it, chosen = [the due token], rejected = [the written one].
    A sample's last phone may last `FINAL_FRAMES_FACTOR` times the golden target's before a missing EOS is due."""
    pairs = []
    for s in samples:
        sample, golden = [int(t) for t in s["sample_ids"]], list(s["chosen_ids"])
        allowance = corrections.FINAL_FRAMES_FACTOR * max(1, corrections.final_phone_frames(golden, vocab))
        asked = vocab.prompt_text_ids(list(s["prompt_ids"]))
        wrong = corrections.first_wrong_decision(sample, asked, vocab, max_final_frames=allowance)
        if wrong is not None:
            pairs.append(
                {
                    **_pair_fields(s),
                    "prompt_ids": [int(t) for t in s["prompt_ids"]] + sample[: wrong.position],
                    "chosen_ids": [wrong.chosen],
                    "rejected_ids": [wrong.rejected],
                    "error_kind": wrong.kind,
                    "error_position": wrong.position,
                }
            )
    return pairs


def _pair_fields(s: dict) -> dict:
    return {
        "iteration": int(s["iteration"]),
        "utt_id": s["utt_id"],
        "sample_idx": int(s["sample_idx"]),
        "prompt_ids": list(s["prompt_ids"]),
    }


def probe_sequence(row: dict, vocab: Vocab, bank: PromptBank, frame_rate: float) -> dict:
    """The fixed sequence whose logprob proves which adapter version an engine serves."""
    prompt_ids, golden = split_example(
        row, bank.draw(row["speaker"], row["utt_id"], random.Random(0)), vocab, frame_rate
    )
    return {"utt_id": row["utt_id"], "prompt": prompt_ids, "continuation": golden}


# ---------------------------------------------------------------------------------- the pair set on disk


def commit_pairs(staging: str | Path, final: str | Path, stats: dict) -> dict:
    """Seals a fully written staging directory as the iteration's pair set: checks the keys are unique,
    writes the manifest, then renames (atomic on one file system). Returns the manifest."""
    staging, final = Path(staging), Path(final)
    table = None
    if any(staging.glob("*.parquet")):  # the keys, ranked pairs' rewards, corrections' kinds; not the token lists
        names = pq.ParquetDataset(staging).schema.names
        wanted = (*KEY, "chosen_reward", "rejected_reward", "error_kind", "reward")
        table = pq.read_table(staging, columns=[c for c in wanted if c in names])
    keys = table.select(list(KEY)).to_pylist() if table is not None else []
    tuples = sorted((k["iteration"], k["utt_id"], k["sample_idx"]) for k in keys)
    if len(set(tuples)) != len(tuples):
        raise RuntimeError(f"{staging}: duplicate pair keys; refusing to commit")
    manifest = {
        **stats,
        "pairs": len(tuples),
        "keys_sha256": hashlib.sha256(json.dumps(tuples).encode()).hexdigest(),
        "files_sha256": {p.name: _sha256(p) for p in sorted(staging.glob("*.parquet"))},
    }
    for side in ("chosen", "rejected"):  # ranked pairs: how good the policy's best and worst samples were
        if table is not None and f"{side}_reward" in table.column_names:
            rewards = np.asarray(table.column(f"{side}_reward").to_pylist(), dtype=float)
            rewards = rewards[~np.isnan(rewards)]  # a listener's pair beside them (ranked+votes) has no reward
            if len(rewards):
                manifest[f"{side}_reward"] = float(np.mean(rewards))
    if table is not None and "reward" in table.column_names and len(table):  # grpo's groups: the samples' reward
        manifest["sample_reward"] = float(np.mean(table.column("reward").to_numpy()))
    if table is not None and "error_kind" in table.column_names:  # corrections: which decisions the pairs fix
        kinds = table.column("error_kind").to_pylist()
        manifest["error_kinds"] = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # only a dangling directory without a manifest can be at `final` (read_manifest returned None)
    atomic.swap_in(staging, final)
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damaged_files(final: str | Path, manifest: dict) -> list[str]:
    """The files of a committed pair set that are missing or differ from their checksum in the manifest (a disk
    or a hand that changed them since); a manifest of an older version, without checksums, vouches for none."""
    final = Path(final)
    return [
        name
        for name, digest in manifest.get("files_sha256", {}).items()
        if not (final / name).is_file() or _sha256(final / name) != digest
    ]


def read_manifest(final: str | Path) -> dict | None:
    path = Path(final) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
