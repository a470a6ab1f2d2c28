"""Sequence log-probabilities and the preference losses of the align loop (DPO and its relatives).

One function behind each kind of logprob of the loop: `shared_prompt_logprobs` for the learner's policy terms and the
ReferenceScorer's reference terms (so at step 0 of an iteration, policy == reference, the DPO loss is exactly ln 2
and the margins are 0), `token_logprobs` (summed per row by `sequence_logprobs`) for the adapter probe, the sample
scorers and everything else; the two agree to float rounding (tests/test_losses.py).

Losses (Rafailov et al. 2023 and the variants the SpeechAlign paper compares), with
h = beta * [(pi_c - ref_c) - (pi_r - ref_r)] the scaled log-ratio margin:
- dpo:   -log sigmoid(h)
- cdpo:  conservative DPO, labels flipped with probability eps: -(1-eps) log sigmoid(h) - eps log sigmoid(-h)
- ipo:   (m - 1/(2 beta))^2 with m = (pi_c - ref_c) - (pi_r - ref_r) on PER-TOKEN MEAN logprobs, always (Azar et al.;
         the form behind the paper's results and TRL's DPOTrainer loss_type="ipo": on sums, beta would mean
         something else for every target length)
- rpo:   dpo + alpha * NLL of the chosen sequence per token (as CosyVoice: keeps the chosen likely, which a
         trivially separable golden-vs-synthetic pair set otherwise erodes)
- sft:   alpha * NLL of the chosen only: the paper's control, continued supervised training on the golden
         targets for the same compute as a preference iteration (the DPO loss is still reported)
- simpo: -log sigmoid(beta * (pi_c - pi_r) - gamma) on PER-TOKEN MEAN policy logprobs, always; reference-free
         (Meng et al. 2024; TRL's CPOTrainer loss_type="simpo"), gamma the target reward margin (`align.simpo_gamma`)
pi and ref are each side's logprob summed over its target tokens, or with `align.length_normalize` (and for ipo and
simpo whatever it says) its mean per token (`preference_loss`'s `token_counts`): with beta 0.01 and rpo, the
SFT-dominant regime of CosyVoice's DPO recipe and Magpie-TTS.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sa_ray.models.ar import IGNORE

METHODS = ("dpo", "cdpo", "ipo", "rpo", "sft", "simpo")
PER_TOKEN_METHODS = ("ipo", "simpo")  # on per-token mean logprobs whatever align.length_normalize says


def pack(prompts: list[list[int]], continuations: list[list[int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """(prompt, continuation) pairs -> right-padded input_ids, attention_mask and labels on the continuation."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.as_tensor(s)
        labels[i, len(p) : len(s)] = torch.as_tensor(s[len(p) :])
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(token | prefix) at every position [B, T-1] (0 where nothing is labelled), the labels they score
    (IGNORE off the continuation) and the float32 logits behind them.

    Over the FULL vocabulary in float32 (a raw log-softmax, as vLLM's prompt logprobs), so the torch
    and vLLM engines can be checked against the learner's value.
    """
    device = next(model.parameters()).device  # packed on the CPU; the model may sit on a GPU
    logits = (
        model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        .logits[:, :-1]
        .float()
    )
    labels = batch["labels"][:, 1:].to(device)
    token_lp = torch.gather(F.log_softmax(logits, dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return token_lp * (labels != IGNORE), labels, logits


def shared_prompt_logprobs(
    model: torch.nn.Module, prompts: list[list[int]], continuations: list[list[list[int]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` of k continuations of each of n prompts, each prompt through the model ONCE.

    `continuations` holds k lists of n (continuation j of prompt i is `continuations[j][i]`: a pair's chosen, its
    rejected, ...). Each prompt (left-padded, so every one ends at the last column) runs once; its keys and values
    are then repeated for its k continuations, which run on them (right-padded, positions going on from their
    prompt's length). A speech prompt (text and a 3 s voice prompt) is about as long as the speech it asks for, so
    `pack`ing prompt + continuation k times computes the prompt k times: for a pair, a quarter of the tokens. Same
    values as `token_logprobs(model, pack(prompts * k, <the continuations in order>))`, up to float rounding, in
    continuation coordinates: rows j*n + i, column t scores token t of the continuation ([k*n, C]; 0 and IGNORE
    past a row's end). Returns (logprobs, labels)."""
    device = next(model.parameters()).device
    n, k = len(prompts), len(continuations)
    width = max(len(p) for p in prompts)
    ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.as_tensor(p), 1
    ids, mask = ids.to(device), mask.to(device)
    first = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1)
    cache = first.past_key_values
    cache.batch_repeat_interleave(k)  # row i*k + j: prompt i's keys and values for its continuation j
    rows = [continuations[j][i] for i in range(n) for j in range(k)]
    length = max(1, max(len(c) for c in rows))
    labels = torch.full((n * k, length), IGNORE, dtype=torch.long)
    for r, c in enumerate(rows):
        labels[r, : len(c)] = torch.as_tensor(c, dtype=torch.long)
    labels = labels.to(device)
    logits = first.logits[:, -1:].repeat_interleave(k, 0)  # the prompt's last position predicts token 0
    if length > 1:  # token t + 1 is predicted at token t
        positions = mask.sum(-1).repeat_interleave(k)[:, None] + torch.arange(length - 1, device=device)
        rest = model(
            input_ids=labels[:, :-1].clamp(min=0),
            attention_mask=torch.cat([mask.repeat_interleave(k, 0), (labels[:, :-1] != IGNORE).long()], 1),
            position_ids=positions,
            past_key_values=cache,
        ).logits
        logits = torch.cat([logits, rest], 1)
    token_lp = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    order = torch.tensor([i * k + j for j in range(k) for i in range(n)], device=device)  # back to rows j*n + i
    return (token_lp * (labels != IGNORE))[order], labels[order]


def sequence_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], hits: bool = False
) -> tuple[torch.Tensor, ...]:
    """Sum of log p(token | prefix) over labelled positions per row, and the number of those positions
    (with `hits`, also how many of them are the model's argmax: teacher-forced accuracy)."""
    token_lp, labels, logits = token_logprobs(model, batch)
    valid = labels != IGNORE
    out = token_lp.sum(-1), valid.sum(-1)
    return (*out, ((logits.argmax(-1) == labels) & valid).sum(-1)) if hits else out


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    method: str = "dpo",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_nll: torch.Tensor | None = None,
    nll_weight: float = 1.0,
    token_counts: tuple[torch.Tensor, torch.Tensor] | None = None,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over pairs and its metrics; `chosen_nll` (per-token NLL of each chosen sequence) is rpo's extra term.

    `token_counts` (chosen [B], rejected [B]: the tokens each summed logprob is over) makes the margin
    length-normalised (`align.length_normalize`): each side's policy and reference logprob become per-token means
    before the margin is formed, as TRL's `loss_type="ipo"` and SimPO do. The summed margin of a ~300-token
    sequence otherwise outweighs the per-token-mean NLL by its length; all logprob metrics are then per token.
    ipo and simpo are defined on those means, so they need `token_counts` (a ValueError without).

    simpo is reference-free: `ref_chosen` and `ref_rejected` are ignored (the loop still scores them, so every method
    reads the same pair set); its rewards in the metrics are the policy's own beta * mean logprob (as TRL's CPO
    trainer) and its `dpo_loss` is the simpo loss value, as each method's is its own.
    """
    if method not in METHODS:
        raise ValueError(f"unknown preference method {method!r}; one of {METHODS}")
    if method in PER_TOKEN_METHODS and token_counts is None:
        raise ValueError(
            f"{method} is defined on each side's per-token MEAN logprob (as TRL's loss_type={method!r}): pass "
            "token_counts, the tokens each summed logprob is over"
        )
    if token_counts is not None:
        # a side with no counted token (margin_tokens=errors, a rejected without a wrong decision) sums to 0: stays 0
        n_c, n_r = (n.to(policy_chosen.dtype).clamp(min=1) for n in token_counts)
        policy_chosen, ref_chosen = policy_chosen / n_c, ref_chosen / n_c
        policy_rejected, ref_rejected = policy_rejected / n_r, ref_rejected / n_r
    if method == "simpo":
        # as TRL's CPOTrainer.cpo_loss, loss_type == "simpo" (trl/experimental/cpo/cpo_trainer.py, main f2cd577):
        # logits = (chosen_logps - rejected_logps) - simpo_gamma / beta; losses = -logsigmoid(beta * logits) at
        # label_smoothing 0, on get_batch_logps(average_log_prob=loss_type in ["ipo", "simpo"]); rewards are
        # beta * policy_{chosen,rejected}_logps. Here label_smoothing stays cdpo's alone.
        chosen_reward, rejected_reward = policy_chosen, policy_rejected
    else:
        chosen_reward = policy_chosen - ref_chosen
        rejected_reward = policy_rejected - ref_rejected
    margin = chosen_reward - rejected_reward
    if method == "ipo":
        # as TRL's DPOTrainer, loss_type == "ipo" (trl/trainer/dpo_trainer.py): each side's log-ratio over its
        # completion_mask.sum(1).clamp(min=1) tokens, then (delta - 1 / (2 beta))^2 (Eq. 17 of Azar et al.)
        losses = (margin - 1 / (2 * beta)) ** 2
    elif method == "simpo":
        losses = -F.logsigmoid(beta * margin - simpo_gamma)
    else:
        eps = label_smoothing if method == "cdpo" else 0.0
        losses = -(1 - eps) * F.logsigmoid(beta * margin) - eps * F.logsigmoid(-beta * margin)
    loss = losses.mean()
    metrics = {"dpo_loss": float(loss.detach())}
    if method in ("rpo", "sft"):
        if chosen_nll is None:
            raise ValueError(f"{method} needs the chosen sequences' NLL")
        nll = chosen_nll.mean()
        loss = nll_weight * nll + (loss if method == "rpo" else 0.0)
        metrics["chosen_nll"] = float(nll.detach())
    with torch.no_grad():
        metrics.update(
            {
                "loss": float(loss.detach()),
                "reward_acc": float((margin > 0).float().mean()),
                "reward_margin": float(beta * margin.mean()),
                "chosen_reward": float(beta * chosen_reward.mean()),
                "rejected_reward": float(beta * rejected_reward.mean()),
                "policy_chosen_logp": float(policy_chosen.mean()),
                "policy_rejected_logp": float(policy_rejected.mean()),
            }
        )
    return loss, metrics


LN2 = math.log(2.0)  # the DPO loss when policy == reference
