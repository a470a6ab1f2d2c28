"""The align loop's length and entropy guards (`sa_ray.guards`): what is measured on the rollouts, what is flagged."""

from __future__ import annotations

import pytest

from sa_ray.guards import RolloutGuards, duration_ratio, frames, length_exploit
from sa_ray.models.vocab import EOS, Vocab
from tests.conftest import ROLLOUT_BACKENDS

VOCAB = Vocab(("a", "b"), codebook_size=8, aligned=True)
A, B = VOCAB.text_ids(["a", "b"])
F = VOCAB.code_offset  # a frame


def test_rollout_duration_and_nll_per_token():
    golden = [A, F, F, B, F, F, EOS]  # 4 frames
    assert frames([A, F, EOS, F, F], VOCAB) == 1  # up to EOS; phones are no frames
    assert duration_ratio([A, F, F, F, B, F, F, F, EOS], golden, VOCAB) == 1.5
    guards = RolloutGuards()
    assert guards.stats() == {}
    guards.add([A, F, F, F, B, F, F, F, EOS], golden, VOCAB, logprob=-18.0, scored=9)
    guards.add([A, F, B, F, EOS], golden, VOCAB, logprob=-3.0, scored=5)
    guards.add([A, F, F, B, F, F, EOS], golden, VOCAB)  # not scored (an empty sample has nothing to score)
    assert guards.stats() == pytest.approx(
        {"rollout_duration_ratio": (1.5 + 0.5 + 1.0) / 3, "rollout_nll_per_token": 1.5}
    )


def test_replicas_tallies_merge_into_one_versions_stats():
    """align.rollout_engines > 1: each replica's sums add up (its samples' guards, its tokens), and their rates add
    up too, since the replicas sample side by side; a replica that sampled nothing counts for nothing."""
    from actors.rollout import merged_stats

    golden = [A, F, F, B, F, F, EOS]
    one, two = RolloutGuards(), RolloutGuards()
    one.add([A, F, F, F, B, F, F, F, EOS], golden, VOCAB, logprob=-18.0, scored=9)
    two.add([A, F, B, F, EOS], golden, VOCAB, logprob=-3.0, scored=5)
    two.add([A, F, F, B, F, F, EOS], golden, VOCAB)
    both = one + two
    assert both.stats() == pytest.approx({"rollout_duration_ratio": 1.0, "rollout_nll_per_token": 1.5})
    assert one.stats()["rollout_nll_per_token"] == 2.0  # the sum is new: neither part changed
    merged = merged_stats([(900, 3.0, one), (1000, 2.0, two), (0, 0.0, RolloutGuards())])
    assert merged == pytest.approx(
        {"rollout_tokens": 1900, "rollout_tokens_per_s": 300 + 500, "rollout_engines": 2, **both.stats()}
    )


@pytest.mark.parametrize(
    "ratio, previous, flagged",
    [
        (1.0, None, None),
        (0.8, None, None),  # the band's edges are inside
        (1.25, 1.1, None),  # +13.6%: within 15%
        (0.79, None, "outside [0.8, 1.25]"),
        (1.3, None, "outside [0.8, 1.25]"),
        (1.2, 1.0, "moved +20% from 1.000"),
        (0.9, 1.1, "moved -18% from 1.100"),
        (1.4, 1.0, "outside [0.8, 1.25]; duration ratio 1.400 moved +40%"),
        (None, 1.0, None),  # a pair set rolled out before the guards: nothing to judge
    ],
)
def test_length_exploit_flags_a_ratio_out_of_band_or_jumping(ratio, previous, flagged):
    note = length_exploit(ratio, previous)
    assert (note is None) if flagged is None else (flagged in note), note


@pytest.mark.parametrize(
    "backend, forced_phones",
    [("torch", False), ("torch", True), pytest.param("vllm", True, marks=ROLLOUT_BACKENDS[1].marks)],
)
def test_rollout_guards_from_the_sampled_logprobs_equal_a_second_scoring_pass(tmp_path, backend, forced_phones):
    """The rollout engine feeds the guards the logprobs the engine returned while sampling; the numbers are those
    of scoring every sample once more with the engine's `sequence_logprobs` (what it did before)."""
    import numpy as np
    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from actors.rollout import RolloutEngine, merged_stats
    from sa_ray.models.ar import save_ar

    vocab = Vocab(tuple("abcdef"), codebook_size=16, aligned=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=64,  # head_dim 32: vLLM's CPU attention has no smaller one
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.1,
        pad_token_id=0,
    )
    save_ar(LlamaForCausalLM(config).eval(), vocab, tmp_path)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        text = rng.integers(vocab.text_offset, vocab.code_offset, rng.integers(1, 4)).tolist()
        golden = [text[0], *vocab.code_ids(rng.integers(0, 16, rng.integers(3, 12))).tolist(), EOS]
        prompt = vocab.prompt(text, rng.integers(0, 16, 4))
        rows.append({"prompt_ids": prompt, "budget": [20, 0, 20, 20, 20, 20][i], "seed": i, "chosen_ids": golden})
    engine = RolloutEngine(backend, str(tmp_path), {"temperature": 1.0}, 8, 128, forced_phones=forced_phones)
    try:
        out = engine.rollout(pd.DataFrame(rows), {"version": 0, "adapter_dir": None})
        samples = list(out["sample_ids"])
        # the second pass the rollout engine made before it got the logprobs for free
        todo = [i for i, s in enumerate(samples) if s]  # as it did: only the non-empty samples
        scored = dict(
            zip(
                todo, engine.engine.sequence_logprobs([rows[i]["prompt_ids"] for i in todo], [samples[i] for i in todo])
            )
        )
    finally:
        engine.engine.close()
    assert samples[1] == [] and sum(map(len, samples)) > 30
    before = RolloutGuards()
    for i, (row, sample) in enumerate(zip(rows, samples)):
        before.add(sample, row["chosen_ids"], vocab, scored.get(i), len(sample))
    stats = merged_stats([engine.tally()])
    assert stats["rollout_tokens"] == sum(map(len, samples))
    tolerance = 1e-5 if backend == "torch" else 1e-3  # vLLM's decode vs prefill kernels, as tests/test_vllm.py
    assert {k: stats[k] for k in before.stats()} == pytest.approx(before.stats(), abs=tolerance)
    assert set(before.stats()) == {"rollout_duration_ratio", "rollout_nll_per_token"}
