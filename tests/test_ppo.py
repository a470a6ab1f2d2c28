"""RLHF-PPO (`align.method=ppo`, sa_ray/ppo.py): GAE, the per-token rewards and the value loss against hand-worked
cases; the learner's advantages from its critic, its resume, and the critic travelling with the adapter."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sa_ray.config import AlignConfig, ConfigError
from sa_ray.ppo import RUNAWAY_REWARD, PPOLearner, gae, guarded_reward, token_rewards, value_loss


def test_gae_matches_a_hand_computation():
    # delta_2 = 1 - 0.4 = 0.6; delta_1 = 0.4 - 0.2 = 0.2; delta_0 = 0.2 - 0.5 = -0.3
    # A_2 = 0.6, A_1 = 0.2 + 0.95 * 0.6 = 0.77, A_0 = -0.3 + 0.95 * 0.77 = 0.4315
    adv, ret = gae([0.0, 0.0, 1.0], [0.5, 0.2, 0.4], gamma=1.0, lam=0.95)
    assert adv == pytest.approx([0.4315, 0.77, 0.6]) and ret == pytest.approx([0.9315, 0.97, 1.0])
    # lambda 1: the returns are the discounted sums of the rewards, whatever the values
    _, ret = gae([0.5, -0.2, 1.0], [3.0, -1.0, 0.7], gamma=0.9, lam=1.0)
    assert ret == pytest.approx([0.5 - 0.9 * 0.2 + 0.81, -0.2 + 0.9, 1.0])
    assert gae([], [], 1.0, 0.95) == ([], [])


def test_token_rewards_carry_the_kl_penalty_and_the_reward_at_the_end():
    assert token_rewards([-1.0, -2.0], [-1.5, -1.0], 0.3, beta=0.1) == pytest.approx([-0.05, 0.1 + 0.3])
    assert token_rewards([], [], 0.3, 0.1) == []
    assert guarded_reward(0.0, ended=False) == RUNAWAY_REWARD and guarded_reward(-0.2, True) == -0.2
    assert guarded_reward(-3.0, ended=False) == -3.0  # already below the floor


def test_value_loss_is_the_clipped_squared_error():
    values = torch.tensor([[1.0, 0.0], [0.5, 9.0]])
    old = torch.tensor([[0.5, 0.0], [0.5, 0.0]])
    returns = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # row 0: t0 max((1-0)^2, (0.7-0)^2) = 1, t1 max(1, 1) = 1 -> 0.5 * mean(1, 1) = 0.5; row 1: t0 (0.5-2)^2 = 2.25
    assert float(value_loss(values, old, returns, mask, clip=0.2)) == pytest.approx((0.5 + 0.5 * 2.25) / 2)


def test_config_takes_ppo_and_the_base_as_reference():
    AlignConfig(method="ppo", reference="base").validate()
    with pytest.raises(ConfigError, match="align.reference must be policy or base"):
        AlignConfig(reference="start").validate()
    with pytest.raises(ConfigError, match="align.deepspeed=null"):
        AlignConfig(method="ppo", deepspeed=1).validate()


@pytest.fixture(scope="module")
def ppo_rows(tiny_aligned_ar):
    """Four rewarded samples of one prompt scored by the reference scorer (the policy as reference)."""
    from actors.reference import ReferenceScorer
    from sa_ray.grpo import sample_row
    from sa_ray.models.vocab import EOS

    model_dir, vocab = tiny_aligned_ar
    a, b, c, _ = vocab.text_ids(["a", "b", "c", "d"])
    code = vocab.code_offset
    prompt = vocab.prompt([a, b, c], [0, 1, 2])
    samples = [[a, code, b, code + 1, c, code + 2, EOS], [a, code, EOS], [a, code + 3, b, c, code, EOS], [a] * 9]
    rows = [
        sample_row(
            {"iteration": 0, "utt_id": f"u{i}", "sample_idx": 0, "prompt_ids": prompt, "sample_ids": x}
            | {"sample_ended": x[-1] == EOS, "reward": r}
        )
        for i, (x, r) in enumerate(zip(samples, [0.0, -0.67, -0.33, 0.0]))
    ]
    scored = ReferenceScorer(str(model_dir), batch_size=3).score_samples(pd.DataFrame(rows), 0, None)
    return model_dir, scored.to_dict("records")


def _cfg(**kw) -> AlignConfig:
    return AlignConfig(**{"method": "ppo", "batch_size": 2, "steps": 3, "lora_rank": 4, "lora_alpha": 8, **kw})


def test_the_learners_first_advantages_are_the_whitened_rewards_of_a_zero_critic(ppo_rows):
    model_dir, rows = ppo_rows
    learner = PPOLearner(model_dir, None, _cfg(), [dict(r) for r in rows])
    by_utt = {r["utt_id"]: r for r in learner.pairs}
    raw = []  # V = 0 and the reference is the sampling policy: only the sample's reward, at its last token
    for r in rows:
        reward = guarded_reward(r["reward"], r["sample_ended"])
        adv, _ = gae([0.0] * (len(r["sample_ids"]) - 1) + [reward], [0.0] * len(r["sample_ids"]), 1.0, 0.95)
        assert by_utt[r["utt_id"]]["values"] == pytest.approx([0.0] * len(adv), abs=1e-7)
        raw.append(adv)
    flat = torch.tensor([a for adv in raw for a in adv], dtype=torch.float64)
    for r, adv in zip(rows, raw):
        whitened = ((torch.tensor(adv, dtype=torch.float64) - flat.mean()) / (flat.std() + 1e-8)).tolist()
        assert by_utt[r["utt_id"]]["advantages"] == pytest.approx(whitened, abs=1e-6)
    m = learner.train_step()
    assert abs(m["kl"]) < 1e-6 and m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["value_loss"] > 0


def test_a_resumed_learner_reproduces_the_uninterrupted_one_and_the_critic_goes_with_the_adapter(ppo_rows, tmp_path):
    from sa_ray import lora

    model_dir, rows = ppo_rows
    whole = PPOLearner(model_dir, None, _cfg(), [dict(r) for r in rows])
    for _ in range(3):
        whole.train_step()
    first = PPOLearner(model_dir, None, _cfg(), [dict(r) for r in rows])
    first.train_step()
    first.save(tmp_path / "ckpt")
    resumed = PPOLearner(model_dir, None, _cfg(), [dict(r) for r in rows])
    resumed.load(tmp_path / "ckpt")
    for _ in range(2):
        resumed.train_step()
    for model in ("model", "critic"):
        a = lora.adapter_tensors(getattr(whole, model) if model == "model" else whole.critic.body)
        b = lora.adapter_tensors(getattr(resumed, model) if model == "model" else resumed.critic.body)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(whole.critic.head.weight, resumed.critic.head.weight)
    whole.export(tmp_path / "v1")
    head = load_file(tmp_path / "v1" / "critic" / "head.safetensors")
    assert torch.equal(head["weight"], whole.critic.head.weight) and head["weight"].abs().sum() > 0  # it learned
    # the next iteration's learner starts from v1's critic: its values are no longer the fresh critic's zeros
    following = PPOLearner(model_dir, tmp_path / "v1", _cfg(), [dict(r) for r in rows])
    assert any(abs(v) > 1e-6 for r in following.pairs for v in r["values"])


def test_a_base_reference_scores_the_base_beside_the_sampling_policy(ppo_rows, tmp_path):
    """align.reference=base: each sample token under the version that sampled it (old) and under the base (ref),
    the base being that version with its adapter switched off."""
    from actors.reference import ReferenceScorer

    model_dir, rows = ppo_rows
    learner = PPOLearner(model_dir, None, _cfg(), [dict(r) for r in rows])
    learner.train_step()
    learner.export(tmp_path / "v1")
    frame = pd.DataFrame([{k: r[k] for k in ("utt_id", "sample_idx", "prompt_ids", "sample_ids")} for r in rows])
    both = ReferenceScorer(str(model_dir), reference="base").score_samples(frame, 1, str(tmp_path / "v1"))
    policy = ReferenceScorer(str(model_dir)).score_samples(frame, 1, str(tmp_path / "v1"))
    for b, p, r in zip(both.to_dict("records"), policy.to_dict("records"), rows):
        assert b["old_token_logps"] == pytest.approx(p["old_token_logps"], abs=1e-6) == p["ref_token_logps"]
        assert b["ref_token_logps"] == pytest.approx(r["old_token_logps"], abs=1e-5)  # the base's, as at version 0
        assert b["ref_token_logps"] != pytest.approx(b["old_token_logps"], abs=1e-6)
    assert set(both["reference_version"]) == {0} and set(policy["reference_version"]) == {1}
