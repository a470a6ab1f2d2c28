"""RLHF-PPO (`align.method=ppo`, sa_ray/ppo.py): GAE, the per-token rewards and the value loss against hand-worked
cases; the critic role (actors/critic.py, in-process) writing advantages and fitting beside the learner; the policy
learner without a critic."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from sa_ray.config import AlignConfig, ConfigError, ResourcesConfig
from sa_ray.ppo import RUNAWAY_REWARD, PPOLearner, gae, guarded_reward, token_rewards, value_loss
from tests.conftest import tiny_samples


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
    AlignConfig(method="ppo", deepspeed=1).validate()  # the learner holds the policy alone: ZeRO as for grpo
    assert ResourcesConfig().critic.ray_options() == {"num_cpus": 0.0, "num_gpus": 0.0, "resources": {}}


@pytest.fixture(scope="module")
def ppo_rows(tiny_aligned_ar):
    """Four rewarded samples of one prompt scored by the reference scorer (the policy as reference)."""
    from actors.reference import ReferenceScorer
    from sa_ray.groups import sample_row
    from sa_ray.models.vocab import EOS

    model_dir, vocab = tiny_aligned_ar
    prompt, samples = tiny_samples(vocab)
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


def _role(model_dir, **kw):
    from actors.critic import CriticRole

    return CriticRole(str(model_dir), _cfg(**kw))  # in-process: no Ray, so on the CPU


def _valued(ppo_rows, critic_dir=None) -> list[dict]:
    """The advantages stage on the fixture's rows: the role's output frame as the pair set holds it."""
    model_dir, rows = ppo_rows
    return _role(model_dir).advantages(pd.DataFrame(rows), critic_dir).to_dict("records")


def _pair_set(rows: list[dict], directory) -> str:
    os.makedirs(directory, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), f"{directory}/part-0.parquet")
    return str(directory)


def test_version_0s_advantages_are_the_gae_of_the_rewards_under_a_zero_critic(ppo_rows):
    _, rows = ppo_rows
    valued = _valued(ppo_rows)
    assert [r["utt_id"] for r in valued] == [r["utt_id"] for r in rows]  # the rows, with three columns more
    for r, v in zip(rows, valued):
        # V = 0 and the reference is the sampling policy: only the sample's reward, at its last token
        reward = guarded_reward(r["reward"], r["sample_ended"])
        adv, _ = gae([0.0] * (len(r["sample_ids"]) - 1) + [reward], [0.0] * len(r["sample_ids"]), 1.0, 0.95)
        assert v["values"] == pytest.approx([0.0] * len(adv), abs=1e-7)
        assert v["advantages"] == pytest.approx(adv, abs=1e-7) and v["returns"] == pytest.approx(adv, abs=1e-7)


def test_the_learner_whitens_the_advantages_and_trains_the_policy_alone(ppo_rows):
    model_dir, _ = ppo_rows
    valued = _valued(ppo_rows)
    learner = PPOLearner(model_dir, None, _cfg(), [dict(r) for r in valued])
    assert not hasattr(learner, "critic")
    flat = torch.tensor([a for r in valued for a in r["advantages"]], dtype=torch.float64)
    by_utt = {r["utt_id"]: r for r in learner.pairs}
    for r in valued:
        whitened = ((torch.tensor(r["advantages"], dtype=torch.float64) - flat.mean()) / (flat.std() + 1e-8)).tolist()
        assert by_utt[r["utt_id"]]["advantages"] == pytest.approx(whitened, abs=1e-6)
    m = learner.train_step()
    assert abs(m["kl"]) < 1e-6 and m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and "value_loss" not in m


def test_the_critic_steps_on_the_learners_batches(ppo_rows, monkeypatch):
    from sa_ray import ppo

    model_dir, _ = ppo_rows
    valued, cfg = _valued(ppo_rows), _cfg(steps=5)  # 4 rows, 2 a step: the order is drawn again at step 3
    learner = PPOLearner(model_dir, None, cfg, [dict(r) for r in valued])
    policy = [[r["utt_id"] for r in learner.next_batch()] for _ in range(cfg.steps)]
    seen = []
    loss = ppo.critic_loss
    monkeypatch.setattr(
        ppo, "critic_loss", lambda critic, batch: seen.append([r["utt_id"] for r in batch]) or loss(critic, batch)
    )
    ppo.train_critic(_role(model_dir)._serve(None), list(reversed(valued)), cfg)
    assert seen == policy


def test_the_critic_fit_is_deterministic_and_values_the_next_iteration(ppo_rows, tmp_path):
    """The role fits critic v1 on pair set 0 (twice, to the same tensors: a retried fit trains the same critic),
    the run commits it with its metrics and lineage, and v1's values are no longer the fresh critic's zeros."""
    from sa_ray import atomic, lineage
    from sa_ray.align_run import AlignRun

    model_dir, _ = ppo_rows
    rows_dir = _pair_set(_valued(ppo_rows), tmp_path / "pairs")
    role = _role(model_dir)
    metrics = role.fit(rows_dir, None, str(tmp_path / "a"))
    assert _role(model_dir).fit(rows_dir, None, str(tmp_path / "b")) == metrics
    assert set(metrics) == {"value_loss", "value_grad_norm"} and metrics["value_loss"] > 0
    for name in ("head.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_file(tmp_path / "a" / "head.safetensors")["weight"].abs().sum() > 0  # it learned

    made_from = {"base_fingerprint": "f00d", "base_dir": str(model_dir)}
    run = AlignRun(tmp_path / "run", made_from)
    assert run.critic_fitted(1) is None and run.critic_fitted(0) is None
    staging = atomic.aside(run.critic(1))
    role.fit(rows_dir, None, str(staging))
    run.commit_critic(staging, 1, metrics)
    assert run.critic_fitted(1) == metrics and lineage.read(run.critic(1))["base_fingerprint"] == "f00d"
    with pytest.raises(lineage.LineageError, match="critics/v1"):  # a critic fits only its own base
        AlignRun(tmp_path / "run", {**made_from, "base_fingerprint": "beef"})

    following = _valued(ppo_rows, str(run.critic(1)))
    assert any(abs(v) > 1e-6 for r in following for v in r["values"])
    assert role.advantages(pd.DataFrame(ppo_rows[1]), str(run.critic(1)))["values"].tolist() == [
        r["values"] for r in following
    ]


def test_ppo_trains_its_policy_under_zero_as_without(ppo_rows, zero_process_group):
    """The learner holds the policy alone, so align.deepspeed applies to it as to every method."""
    pytest.importorskip("deepspeed")
    model_dir, _ = ppo_rows
    valued = _valued(ppo_rows)
    plain, zero = (PPOLearner(model_dir, None, _cfg(deepspeed=z), [dict(r) for r in valued]) for z in (None, 1))
    p, z = ([lrn.train_step()["loss"] for _ in range(3)] for lrn in (plain, zero))
    assert z[0] == p[0] and z == pytest.approx(p, rel=1e-5)


def test_a_base_reference_scores_the_base_beside_the_sampling_policy(ppo_rows, tmp_path):
    """align.reference=base: each sample token under the version that sampled it (old) and under the base (ref),
    the base being that version with its adapter switched off."""
    from actors.reference import ReferenceScorer

    model_dir, rows = ppo_rows
    learner = PPOLearner(model_dir, None, _cfg(), _valued(ppo_rows))
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
