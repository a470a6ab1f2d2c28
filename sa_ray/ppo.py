"""RLHF-PPO (Ouyang et al. 2022; the SpeechAlign paper's PPO comparison): `align.method=ppo`.

The roles: the policy (base + LoRA: `PPOLearner` on Ray Train), the frozen reference (the ReferenceScorer;
`align.reference=base` for the classic KL-to-the-start penalty), the reward (`align.reward`: phones, asr, or a
trained reward model) and the critic (`actors/critic.py`), its own model: the frozen base + a LoRA of its own + a
scalar head on the last hidden state (`Critic`). Plain PyTorch here, no Ray.

One iteration: the rollout engine samples with policy version i; each sample's reward; the reference and the
sampling policy score every token (`ref_token_logps`, `old_token_logps`); then critic version i (`advantages`):
  1. per-token rewards (`token_rewards`): -beta * (old - ref) at every token, plus the sample's reward at its last;
  2. its values V_t of the states before every token (`Critic.forward`);
  3. GAE (`gae`: gamma, lambda; V = 0 after the last token), returns = advantages + V;
all written into the rows before the pair set is committed. Then, side by side, the learner whitens the
advantages over the iteration's tokens (`whiten`) and takes `align.steps` steps of the clipped policy objective
(`sa_ray.grpo.grpo_loss` with per-token advantages and no KL term: the KL is in the rewards), while the critic
takes as many steps of the clipped value loss 0.5 max((V - R)^2, (V_old + clip(V - V_old) - R)^2) on the same
batches (`train_critic`), making critic version i+1.
A sample that never wrote EOS (cut by its budget) gets at most `RUNAWAY_REWARD`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sa_ray import lora
from sa_ray.config import AlignConfig
from sa_ray.dpo import DPOLearner, epoch_order, pair_key
from sa_ray.engines.deepspeed_engine import make_stepper
from sa_ray.grpo import dense, grpo_loss, target_positions
from sa_ray.losses import pack, token_logprobs
from sa_ray.models.ar import IGNORE, load_ar
from sa_ray.pretrain import warmup_cosine

RUNAWAY_REWARD = -1.0  # the phone reward of a sample that said every phone wrong; SIM - WER at SIM 0, WER 1
GAMMA, LAMBDA, VALUE_CLIP = 1.0, 0.95, 0.2  # InstructGPT's / TRL's PPO defaults for language models


def guarded_reward(reward: float, ended: bool) -> float:
    """A runaway sample (no EOS within its budget) earns at most RUNAWAY_REWARD."""
    return float(reward) if ended else min(float(reward), RUNAWAY_REWARD)


def token_rewards(old_logps: list[float], ref_logps: list[float], reward: float, beta: float) -> list[float]:
    """Per-token rewards of one sample: the KL penalty -beta * (old - ref) at each token (the sampling policy's
    log-ratio to the reference, the per-token KL estimate), plus the sample's reward at its last token."""
    out = [-beta * (o - r) for o, r in zip(old_logps, ref_logps)]
    if out:
        out[-1] += reward
    return out


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimation over one sample's tokens (Schulman et al. 2016), the episode ending after
    its last token (V = 0 there): delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1}.
    Returns (advantages, returns = advantages + values)."""
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        following = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * following - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values)]


class Critic(torch.nn.Module):
    """V(state before each target token): the frozen base with its own LoRA and a scalar head on the last hidden
    state (zero-initialised: every value starts at 0)."""

    def __init__(self, base_dir: str | Path, cfg: AlignConfig, critic_dir: str | Path | None = None):
        super().__init__()
        base, _ = load_ar(base_dir)
        base.requires_grad_(False)
        adapter = None if critic_dir is None else Path(critic_dir) / "adapter"
        self.body = lora.attach(base, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, adapter)
        self.head = torch.nn.Linear(base.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        if critic_dir is not None:
            self.head.load_state_dict(load_file(Path(critic_dir) / "head.safetensors"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values [B, T-1], position t the state before token t+1 (`token_logprobs`'s layout)."""
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return self.head(hidden.hidden_states[-1][:, :-1].float()).squeeze(-1)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        lora.save(self.body, d / "adapter")
        save_file(self.head_tensors(), d / "head.safetensors")

    def head_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}


def advantages(critic: Critic, rows: list[dict], cfg: AlignConfig, batch_size: int = 16) -> list[dict]:
    """Each row (prompt_ids, sample_ids, reward, sample_ended, old_token_logps, ref_token_logps) with the critic's
    `values` of its tokens, and its `advantages` (GAE, not yet whitened) and `returns`."""
    device = next(critic.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            packed = pack([r["prompt_ids"] for r in part], [r["sample_ids"] for r in part])
            values = critic(packed["input_ids"].to(device), packed["attention_mask"].to(device))
            for i, r in enumerate(part):
                v = values[i, target_positions(len(r["prompt_ids"]), len(r["sample_ids"]))].tolist()
                reward = guarded_reward(r["reward"], r["sample_ended"])
                rewards = token_rewards(list(r["old_token_logps"]), list(r["ref_token_logps"]), reward, cfg.beta)
                adv, ret = gae(rewards, v, GAMMA, LAMBDA)
                out.append({**r, "values": v, "advantages": adv, "returns": ret})
    return out


def whiten(rows: list[dict]) -> None:
    """The rows' advantages, in place, to mean 0 and std 1 over all their tokens."""
    flat = torch.tensor([a for r in rows for a in r["advantages"]], dtype=torch.float64)
    mean, std = flat.mean(), flat.std() if len(flat) > 1 else torch.tensor(1.0, dtype=torch.float64)
    for r in rows:
        r["advantages"] = ((torch.tensor(r["advantages"], dtype=torch.float64) - mean) / (std + 1e-8)).tolist()


def value_loss(values: torch.Tensor, old_values, returns, mask, clip: float) -> torch.Tensor:
    """PPO's clipped value loss, each sample's mean over its tokens, then the mean over samples."""
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def critic_loss(critic: Critic, batch: list[dict]) -> torch.Tensor:
    """The clipped value loss of a batch of rows: their `values` are V_old, their `returns` the targets."""
    device = next(critic.parameters()).device
    packed = pack([r["prompt_ids"] for r in batch], [r["sample_ids"] for r in batch])
    values = critic(packed["input_ids"].to(device), packed["attention_mask"].to(device))
    old, returns = (dense([r[key] for r in batch], batch, values.shape, device) for key in ("values", "returns"))
    mask = (packed["labels"][:, 1:] != IGNORE).to(device)
    return value_loss(values, old, returns, mask, VALUE_CLIP)


def train_critic(critic: Critic, rows: list[dict], cfg: AlignConfig, on_step=None) -> list[dict[str, float]]:
    """`align.steps` steps of the clipped value loss towards the rows' returns (V_old: their `values`, written by
    this critic before any step), each on the batch the policy learner takes at that step from the same rows (its
    order, `align.batch_size`, lr schedule and grad clip). Returns each step's metrics, also given to `on_step`."""
    rows = sorted(rows, key=pair_key)
    step_rows = min(cfg.batch_size, len(rows) - len(rows) % cfg.workers)  # as the learner's step_pairs
    stepper = make_stepper(
        critic,
        [p for p in critic.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        weight_decay=0.0,
        schedule=warmup_cosine(cfg.warmup_steps, cfg.steps),
        grad_clip=cfg.grad_clip,
    )
    critic.train()
    history, epoch, position = [], 0, 0
    for step in range(1, cfg.steps + 1):
        if position + step_rows > len(rows):
            epoch, position = epoch + 1, 0
        batch = [rows[i] for i in epoch_order(len(rows), cfg.seed, epoch)[position : position + step_rows]]
        position += step_rows
        loss = critic_loss(critic, batch)
        stepper.backward(loss)
        history.append({"value_loss": float(loss.detach()), "value_grad_norm": stepper.step()})
        if on_step is not None:
            on_step(history[-1], step)
    critic.eval()
    return history


class PPOLearner(DPOLearner):
    """`DPOLearner`'s workers, data order, optimiser, checkpoints and export for the policy alone, on the rows of
    the advantages stage (prompt_ids, sample_ids, reward, sample_ended, old_token_logps, ref_token_logps,
    advantages): the critic is a role of its own (`actors/critic.py`)."""

    def __init__(self, base_dir, adapter_dir, cfg: AlignConfig, rows: list[dict], **kwargs):
        super().__init__(base_dir, adapter_dir, cfg, rows, **kwargs)
        whiten(self.pairs)  # the same on every worker: every worker holds every row

    def loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        token_lp, labels, _ = token_logprobs(
            self.model_train, pack([r["prompt_ids"] for r in batch], [r["sample_ids"] for r in batch])
        )
        mask = labels != IGNORE
        at = lambda key: dense([r[key] for r in batch], batch, token_lp.shape, token_lp.device)  # noqa: E731
        old, ref = at("old_token_logps"), at("ref_token_logps")
        loss, metrics = grpo_loss(token_lp, old, ref, mask, at("advantages"), self.cfg.clip_eps, beta=0.0)
        with torch.no_grad():  # the policy's KL to the reference, as the penalty in the rewards estimates it
            metrics["kl"] = float((((token_lp - ref) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean())
        metrics["reward"] = sum(guarded_reward(r["reward"], r["sample_ended"]) for r in batch) / len(batch)
        return loss, metrics
