"""GRPO (`align.method=grpo`, sa_ray/grpo.py): group advantages and the runaway guard against hand-worked cases, the
clipped objective's value and gradient against a token-by-token computation, and the learner's step 0 on rows the
reference scored (policy == old policy == reference: ratio 1, KL 0)."""

from __future__ import annotations

import math

import pytest
import torch

from sa_ray.config import AlignConfig, ConfigError
from sa_ray.groups import ADVANTAGE_EPS, group_advantages, group_rows, guarded_rewards
from sa_ray.grpo import GRPOLearner, grpo_loss
from tests.conftest import tiny_samples


def test_group_advantages_match_a_hand_computation():
    # mean -0.5; deviations 0.5, 0, -0.5, 0; Bessel's std sqrt((0.25 + 0.25) / 3)
    std = math.sqrt(0.5 / 3)
    a = group_advantages([0.0, -0.5, -1.0, -0.5])
    assert a == pytest.approx([0.5 / (std + ADVANTAGE_EPS), 0.0, -0.5 / (std + ADVANTAGE_EPS), 0.0], rel=1e-12)
    assert group_advantages([-0.3]) == [0.0] and group_advantages([0.2, 0.2]) == [0.0, 0.0]


def test_a_runaway_sample_never_earns_more_than_its_groups_worst():
    # the runaway (no EOS) wrote its phones best of all, but it never stopped
    assert guarded_rewards([0.0, -0.2, -0.6], [False, True, True]) == [-0.6, -0.2, -0.6]
    s = dict(iteration=0, prompt_ids=[1, 5, 3, 4], sample_ids=[5, 9, 2])
    samples = [
        {**s, "utt_id": "u1", "sample_idx": 1, "reward": -0.2, "sample_ended": True},
        {**s, "utt_id": "u1", "sample_idx": 0, "reward": 0.0, "sample_ended": False},
        {**s, "utt_id": "u1", "sample_idx": 2, "reward": -0.6, "sample_ended": True},
        {**s, "utt_id": "u2", "sample_idx": 0, "reward": -0.1, "sample_ended": True},  # a tie: nothing to learn
        {**s, "utt_id": "u2", "sample_idx": 1, "reward": -0.1, "sample_ended": True},
    ]
    rows = group_rows(samples)
    u1 = [r for r in rows if r["utt_id"] == "u1"]
    assert [r["sample_idx"] for r in u1] == [0, 1, 2] and [r["reward"] for r in u1] == [-0.6, -0.2, -0.6]
    assert [r["advantage"] for r in u1] == pytest.approx(group_advantages([-0.6, -0.2, -0.6]))
    assert u1[0]["advantage"] < 0 and not any(r["group_tied"] for r in u1)
    u2 = [r for r in rows if r["utt_id"] == "u2"]
    assert len(u2) == 2 and all(r["group_tied"] and r["advantage"] == 0.0 for r in u2)


def _by_hand(logp, old, ref, mask, adv, eps, beta):
    """The objective token by token in Python floats (DeepSeekMath Eq. 3 with the k3 KL)."""
    total = 0.0
    for i in range(len(adv)):
        terms = []
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            d = ref[i][t] - logp[i][t]
            terms.append(-(min(ratio * adv[i], clipped * adv[i]) - beta * (math.exp(d) - d - 1)))
        total += sum(terms) / max(len(terms), 1)
    return total / len(adv)


@pytest.mark.parametrize("eps,beta", [(0.2, 0.04), (0.1, 0.5)])
def test_grpo_loss_and_gradient_match_a_token_by_token_computation(eps, beta):
    g = torch.Generator().manual_seed(3)
    B, T = 5, 40
    lengths = torch.tensor([40, 3, 17, 1, 0])  # unequal targets, and an empty one (a sample of no token)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g) * 3
    ref = old + torch.randn(B, T, generator=g) * 0.2
    logp = (old + torch.randn(B, T, generator=g) * 0.4).requires_grad_()  # ratios inside and outside the clip
    adv = torch.tensor([1.3, -0.7, 0.4, -1.1, 0.9])
    loss, metrics = grpo_loss(logp, old, ref, mask, adv, eps, beta)
    as_lists = [x.detach().tolist() for x in (logp, old, ref)]
    assert float(loss.detach()) == pytest.approx(_by_hand(*as_lists, mask.tolist(), adv.tolist(), eps, beta), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp of the per-token term: -A * ratio where the unclipped side is the min (0 where clipped), + beta * (1 -
    # exp(ref - logp)); each sample's tokens weigh 1 / (its length * B)
    with torch.no_grad():
        ratio = torch.exp(logp - old)
        a = adv[:, None]
        unclipped = (ratio * a) <= (ratio.clamp(1 - eps, 1 + eps) * a)
        d = -a * ratio * unclipped + beta * (1 - torch.exp(ref - logp))
        expected = d * mask / (lengths.clamp(min=1)[:, None] * B)
    assert torch.allclose(grad, expected, atol=1e-7)
    assert metrics["kl"] > 0 and 0 < metrics["clip_fraction"] < 1


def test_config_takes_grpo_with_groups_only():
    AlignConfig(method="grpo", samples_per_prompt=4).validate()
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        AlignConfig(method="grpo", samples_per_prompt=1).validate()
    with pytest.raises(ConfigError, match="align.pairs and align.margin_tokens"):
        AlignConfig(method="grpo", samples_per_prompt=4, pairs="ranked").validate()
    with pytest.raises(ConfigError, match="clip_eps"):
        AlignConfig(method="grpo", samples_per_prompt=4, clip_eps=1.5).validate()


def test_the_learners_step0_has_ratio_1_and_kl_0_on_rows_the_reference_scored(tiny_aligned_ar):
    """The reference's token logprobs are the learner's own function: at step 0 the policy is the old policy and
    the reference, so every ratio is 1, the KL 0, and the loss minus the mean advantage of the step's samples."""
    import pandas as pd

    from actors.reference import ReferenceScorer

    model_dir, vocab = tiny_aligned_ar
    prompt, samples = tiny_samples(vocab)
    s = [
        {"utt_id": "u", "sample_idx": i, "iteration": 0, "prompt_ids": prompt, "sample_ids": x, "sample_ended": i < 3}
        for i, x in enumerate(samples)
    ]
    rows = group_rows([{**x, "reward": r} for x, r in zip(s, [0.0, -0.67, -0.33, 0.0])])
    scored = ReferenceScorer(str(model_dir), batch_size=3).score_samples(pd.DataFrame(rows), 0, None)
    scored = scored.to_dict("records")
    assert [len(r["ref_token_logps"]) for r in scored] == [len(x) for x in samples]
    cfg = AlignConfig(method="grpo", samples_per_prompt=4, batch_size=4, steps=2, lora_rank=4, lora_alpha=8)
    learner = GRPOLearner(model_dir, None, cfg, scored)
    for batch in (scored[:2], scored[1:]):  # (a whole group's advantages sum to 0)
        loss, m = learner.loss(batch)
        assert abs(m["kl"]) < 1e-6 and m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["clip_fraction"] == 0
        assert float(loss.detach()) == pytest.approx(-sum(r["advantage"] for r in batch) / len(batch), abs=1e-6) != 0
    assert math.isfinite(learner.train_step()["kl"])
    tied = [{**r, "group_tied": True, "advantage": 0.0} for r in scored]
    with pytest.raises(ValueError, match="same reward"):
        GRPOLearner(model_dir, None, cfg, tied)
