"""GRPO's and PPO's training rows from rewarded rollout samples: each sample's row, and a GRPO group's guarded rewards
and advantages. Plain Python and numpy, no torch: the pair set's pipeline stages run these in Ray Data workers,
which import this module, not the learner's (sa_ray.grpo: torch, transformers, peft, seconds of CPU a worker)."""

from __future__ import annotations

import numpy as np

ADVANTAGE_EPS = 1e-4  # TRL's GRPOTrainer: (r - mean) / (std + 1e-4)


def group_advantages(rewards: list[float]) -> list[float]:
    """(r - mean) / (std + 1e-4) within one prompt's group, std with Bessel's correction (TRL's GRPOTrainer:
    torch's default); a one-sample group has no spread and advantage 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(rewards) < 2:
        return [0.0] * len(rewards)
    return ((r - r.mean()) / (r.std(ddof=1) + ADVANTAGE_EPS)).tolist()


def guarded_rewards(rewards: list[float], ended: list[bool]) -> list[float]:
    """A sample that never ended (no EOS within its budget) takes the group's lowest reward."""
    floor = min(rewards)
    return [r if e else floor for r, e in zip(rewards, ended)]


def sample_row(s: dict) -> dict:
    """A rewarded rollout sample as a training row: its key, prompt, sample, whether it ended and its reward."""
    return {
        "iteration": int(s["iteration"]),
        "utt_id": s["utt_id"],
        "sample_idx": int(s["sample_idx"]),
        "prompt_ids": [int(t) for t in s["prompt_ids"]],
        "sample_ids": [int(t) for t in s["sample_ids"]],
        "sample_ended": bool(s["sample_ended"]),
        "reward": float(s["reward"]),
    }


def group_rows(samples: list[dict]) -> list[dict]:
    """Rewarded samples (rows with utt_id, sample_idx, prompt_ids, sample_ids, sample_ended, reward) -> one row per
    sample with its guarded `reward`, its `advantage` and whether its group's rewards all tie (`group_tied`: kept
    for the iteration's mean reward, never trained on)."""
    by_utt: dict[str, list[dict]] = {}
    for s in samples:
        by_utt.setdefault(s["utt_id"], []).append(s)
    rows = []
    for group in by_utt.values():
        group = sorted(group, key=lambda s: int(s["sample_idx"]))
        rewards = guarded_rewards([float(s["reward"]) for s in group], [bool(s["sample_ended"]) for s in group])
        tied = max(rewards) == min(rewards)
        for s, r, a in zip(group, rewards, group_advantages(rewards)):
            rows.append({**sample_row(s), "reward": r, "advantage": 0.0 if tied else a, "group_tied": tied})
    return rows
