"""GRPO (Shao et al. 2024, DeepSeekMath; for TTS: F5R-TTS, NeMo's Magpie-TTS): online policy optimisation from
groups of the policy's own samples, without a value model.

One iteration of the align loop: `align.samples_per_prompt` samples per prompt from policy version i, each scored by
`align.reward` (phones: minus its phone error rate; asr: SIM - WER), the rewards normalised within each prompt's
group into advantages (`sa_ray.groups`), every sample's tokens scored by the reference (base + v_i: the policy
that sampled them, so it is also GRPO's "old" policy; `align.reference=base` keeps the KL to the base), then
`align.steps` clipped policy-gradient steps
(`grpo_loss`) make version i+1, which the rollout engine serves for the next group. With `align.steps` steps of
`align.batch_size` samples covering the groups once, every policy update is followed by fresh rollouts of the
updated adapter: GRPO as its paper runs it; more steps reuse the samples, the clipped ratio keeping the update
close to the sampling policy (PPO's trust region).

The guard: a sample that never wrote EOS (a runaway, cut by its token budget) earns nothing for what it said: it
takes its group's lowest reward, so it never gets a positive advantage, and a group whose rewards all tie (every
sample as good, or every one a runaway) teaches nothing and is dropped (DAPO's dynamic sampling: its advantages are
all 0).
"""

from __future__ import annotations

import torch

from sa_ray.dpo import DPOLearner
from sa_ray.losses import pack, token_logprobs
from sa_ray.models.ar import IGNORE

LOGPS = ("old_token_logps", "ref_token_logps")  # the ReferenceScorer's per-token scores of each sample


def target_positions(prompt_len: int, target_len: int) -> slice:
    """Where a packed row's target tokens are scored in `token_logprobs`'s [B, T-1] output (labels shift by one)."""
    return slice(prompt_len - 1, prompt_len - 1 + target_len)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's objective (DeepSeekMath, Eq. 3; TRL's GRPOTrainer loss_type="grpo") on per-token logprobs [B, T]:

        ratio = exp(logp - old_logp)
        per token: -(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - beta * KL)
        KL = exp(ref - logp) - (ref - logp) - 1     (the k3 estimator: unbiased, >= 0)

    each sample's mean over its target tokens (`mask`), then the mean over samples. `old_logp` and `ref_logp` are
    constants (no gradient). `advantages`: one per sample [B] (GRPO) or one per token [B, T] (PPO's GAE)."""
    mask = mask.to(logp.dtype)
    old_logp, ref_logp = old_logp.detach(), ref_logp.detach()
    ratio = torch.exp(logp - old_logp)
    a = advantages.to(logp.dtype)
    a = a if a.dim() == 2 else a.unsqueeze(-1)  # a sample's one advantage on each of its tokens (GRPO)
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    tokens = mask.sum(-1).clamp(min=1)
    per_sample = (-(surrogate - beta * kl) * mask).sum(-1) / tokens
    loss = per_sample.mean()
    with torch.no_grad():
        clipped = ((ratio < 1 - clip_eps) & (a < 0)) | ((ratio > 1 + clip_eps) & (a > 0))
        metrics = {
            "loss": float(loss.detach()),
            "kl": float(((kl * mask).sum(-1) / tokens).mean()),
            "clip_fraction": float((clipped * mask).sum() / mask.sum().clamp(min=1)),
            "ratio_mean": float((ratio * mask).sum() / mask.sum().clamp(min=1)),
            "advantage_mean": float(((a * mask).sum(-1) / tokens).mean()),
            "policy_logp": float(((logp * mask).sum(-1) / tokens).mean()),
        }
    return loss, metrics


def sample_token_logprobs(token_lp: torch.Tensor, labels: torch.Tensor, rows: list[dict]) -> list[list[float]]:
    """Each row's target-token logprobs from `token_logprobs`'s output for `pack(prompts, samples)`: what the
    reference writes beside every sample and the learner reads back position for position."""
    out = []
    for i, r in enumerate(rows):
        at = target_positions(len(r["prompt_ids"]), len(r["sample_ids"]))
        assert bool((labels[i, at] != IGNORE).all()), "packed targets and positions disagree"
        out.append(token_lp[i, at].tolist())
    return out


def dense(values: list[list[float]], rows: list[dict], shape: torch.Size, device) -> torch.Tensor:
    """Per-row target-token values (`sample_token_logprobs`) back into `token_logprobs`'s [B, T-1] layout (0 off
    the targets)."""
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for i, (v, r) in enumerate(zip(values, rows)):
        out[i, target_positions(len(r["prompt_ids"]), len(v))] = torch.as_tensor(v, dtype=torch.float32)
    return out


class GRPOLearner(DPOLearner):
    """The LoRA learner of `align.method=grpo`: `DPOLearner`'s workers, data order, optimiser, checkpoints and
    export, on group rows (`sa_ray.groups.group_rows` + the ReferenceScorer's `old_token_logps` and `ref_token_logps`) instead of
    pairs. With the loop's default reference (the policy that sampled the rows) the two are the same numbers."""

    def __init__(self, base_dir, adapter_dir, cfg, rows: list[dict], **kwargs):
        rows = [r for r in rows if not r["group_tied"]]
        if not rows:
            raise ValueError(
                "GRPO: every prompt's samples earned the same reward, nothing to learn from; raise "
                "align.samples_per_prompt or align.temperature, or draw more prompts (align.prompts_per_iteration)"
            )
        super().__init__(base_dir, adapter_dir, cfg, rows, **kwargs)

    def loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        token_lp, labels, _ = token_logprobs(
            self.model_train, pack([r["prompt_ids"] for r in batch], [r["sample_ids"] for r in batch])
        )
        old, ref = (dense([r[k] for r in batch], batch, token_lp.shape, token_lp.device) for k in LOGPS)
        advantages = torch.tensor([r["advantage"] for r in batch], dtype=torch.float32, device=token_lp.device)
        loss, metrics = grpo_loss(token_lp, old, ref, labels != IGNORE, advantages, self.cfg.clip_eps, self.cfg.beta)
        metrics["reward"] = sum(r["reward"] for r in batch) / len(batch)
        return loss, metrics
