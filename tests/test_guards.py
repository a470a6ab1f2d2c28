"""The align loop's length and entropy guards (`sa_ray.guards`): what is measured on the rollouts, what is flagged."""

from __future__ import annotations

import pytest

from sa_ray.guards import RolloutGuards, duration_ratio, frames, length_exploit
from sa_ray.models.vocab import EOS, Vocab

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
