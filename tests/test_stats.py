"""Per-utterance word errors and the paired (cluster) bootstrap of a WER change, with its MDE."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from sa_ray.align_run import format_changes
from sa_ray.metrics.stats import MDE_Z, pool_seeds, record_wer_changes, wer_change, wer_change_stats
from sa_ray.metrics.wer import wer, word_errors

REFS = ["the cat sat on the mat", "a dog ran to the red house", "Will John wash your pineapple on Monday?"]


def test_word_errors_sum_to_the_corpus_wer():
    hyps = ["the cat sat on a mat", "a dog ran to the house red", "will john wash the pineapple on monday tuesday"]
    errors, words = word_errors(REFS, hyps)
    assert words == [6, 7, 7] and errors == [1, 2, 2]
    assert sum(errors) / sum(words) == pytest.approx(wer(REFS, hyps))


def test_wer_change_interval_holds_zero_for_noise_and_not_for_a_real_change():
    words = [8] * 80
    base = [2, 3, 1, 4] * 20
    assert wer_change(base, words, base, words) == (0.0, 0.0, 0.0)
    noisy = [3, 2, 4, 1] * 20  # the same WER, other utterances wrong: no change
    d, lo, hi = wer_change(base, words, noisy, words)
    assert d == 0.0 and lo < 0 < hi
    better = [e - 1 for e in base]  # one word fewer wrong in every utterance
    d, lo, hi = wer_change(base, words, better, words)
    assert d == pytest.approx(-1 / 8) and lo <= d <= hi < 0
    with pytest.raises(ValueError, match="same utterances"):
        wer_change(base, words, base[:-1], words[:-1])
    with pytest.raises(ValueError, match="different reference"):
        wer_change(base, words, base, [9] * 80)


def test_records_without_per_utterance_errors_give_no_change():
    base = {"iteration": 0, "heldout_sentences_utt_errors": [1, 2], "heldout_sentences_utt_words": [5, 5]}
    record = {"iteration": 1, "heldout_sentences_utt_errors": [0, 1], "heldout_sentences_utt_words": [5, 5]}
    changes = record_wer_changes(base, record)
    assert set(changes) == {
        "heldout_sentences_wer_change",
        "heldout_sentences_wer_change_lo",
        "heldout_sentences_wer_change_hi",
        "heldout_sentences_wer_change_mde",
        "heldout_sentences_wer_change_clusters",
    }
    assert changes["heldout_sentences_wer_change"] == pytest.approx(-0.2)
    assert changes["heldout_sentences_wer_change_clusters"] == 2  # no sentences recorded: each sample its own
    line = format_changes({**record, **changes})
    assert "sentences -0.200 [" in line and f"MDE {changes['heldout_sentences_wer_change_mde']:.3f}" in line
    assert record_wer_changes({"iteration": 0}, record) == {}
    assert "no per-utterance errors" in format_changes(record)


def test_pool_seeds_averages_numbers_concatenates_utterances_and_reports_the_spread():
    seed0 = {
        "heldout_sentences_wer": 0.40,
        "heldout_sentences_sim": 0.80,
        "heldout_sentences_golden_wer": 0.2,
        "heldout_sentences_utt_errors": [1, 3],
        "heldout_sentences_utt_words": [5, 5],
    }
    seed1 = {
        "adapter": None,
        "heldout_sentences_wer": 0.50,
        "heldout_sentences_sim": 0.78,
        "heldout_sentences_utt_errors": [2, 3],
        "heldout_sentences_utt_words": [5, 5],
    }
    pooled = pool_seeds([seed0, seed1])
    assert pool_seeds([seed1, seed0]).keys() == pooled.keys()  # names and paths (the adapter) are not pooled
    assert pooled["heldout_sentences_wer"] == pytest.approx(0.45)
    assert pooled["heldout_sentences_wer_spread"] == pytest.approx(0.05)
    assert pooled["heldout_sentences_sim_spread"] == pytest.approx(0.01)
    assert pooled["heldout_sentences_golden_wer"] == 0.2 and "heldout_sentences_golden_wer_spread" not in pooled
    assert pooled["heldout_sentences_utt_errors"] == [1, 3, 2, 3] and pooled["heldout_sentences_utt_words"] == [5] * 4
    # pooled evaluations pair like single ones: the change of a policy against the base over utterance-seed pairs
    change = record_wer_changes(
        pooled,
        pool_seeds(
            [{**seed0, "heldout_sentences_utt_errors": [0, 1]}, {**seed1, "heldout_sentences_utt_errors": [0, 1]}]
        ),
    )
    assert change["heldout_sentences_wer_change"] == pytest.approx((2 - 9) / 20)


# --- the cluster bootstrap by sentence -------------------------------------------------------------------------

BASE = [3, 0, 2, 5, 1, 4, 0, 2, 3, 1]
POLICY = [1, 0, 3, 2, 1, 2, 0, 1, 3, 0]
WORDS = [8, 5, 9, 12, 6, 10, 4, 7, 9, 5]


def test_without_clusters_the_draw_is_the_per_utterance_one_of_before():
    # the numbers the per-utterance bootstrap gave before clusters existed (same data, same seeds)
    assert wer_change(BASE, WORDS, POLICY, WORDS) == pytest.approx(
        (-0.10666666666666669, -0.18667032967032968, -0.014695378151260562), rel=1e-12
    )
    old = (-0.10666666666666669, -0.17396739130434782, -0.02631578947368421)
    assert wer_change(BASE, WORDS, POLICY, WORDS, samples=500, level=0.9, seed=7) == pytest.approx(old, rel=1e-12)
    # distinct keys (in any order of names) are the same draw: each sample its own cluster
    plain = wer_change_stats(BASE, WORDS, POLICY, WORDS)
    assert wer_change_stats(BASE, WORDS, POLICY, WORDS, clusters=[f"s{9 - i}" for i in range(10)]) == plain
    assert plain.clusters == 10 and (plain.delta, plain.lo, plain.hi) == wer_change(BASE, WORDS, POLICY, WORDS)


def test_cluster_bootstrap_matches_the_exact_enumeration_of_drawn_sentences():
    """Three sentences (of 3, 2 and 1 samples, interleaved as pooled seeds are): a draw is a multiset of three
    sentences, so the bootstrap distribution of the change is known exactly."""
    keys = ["a", "b", "a", "c", "b", "a"]
    base, policy, words = [2, 1, 0, 3, 2, 1], [0, 1, 1, 1, 3, 0], [5, 4, 6, 7, 5, 3]
    # by hand, per sentence: errors removed (base - policy) and words
    gain = {"a": (2 + 0 + 1) - (0 + 1 + 0), "b": (1 + 2) - (1 + 3), "c": 3 - 1}  # 2, -1, 2
    n_words = {"a": 5 + 6 + 3, "b": 4 + 5, "c": 7}  # 14, 9, 7
    atoms = Counter()  # change of WER -> probability, over the 3^3 equally likely ordered draws
    for draw in itertools.product("abc", repeat=3):
        atoms[-sum(gain[k] for k in draw) / sum(n_words[k] for k in draw)] += 1 / 27
    mean = sum(d * q for d, q in atoms.items())
    sd = math.sqrt(sum((d - mean) ** 2 * q for d, q in atoms.items()))

    got = wer_change_stats(base, words, policy, words, clusters=keys, samples=40_000)
    assert got.delta == pytest.approx(-3 / 30) and got.clusters == 3
    # each extreme is one sentence drawn three times (p = 1/27 > 2.5%): the interval's ends exactly
    assert (got.lo, got.hi) == (pytest.approx(-2 / 7), pytest.approx(1 / 9))
    assert (got.lo, got.hi) == (pytest.approx(min(atoms)), pytest.approx(max(atoms)))
    assert got.se == pytest.approx(sd, rel=0.03)  # 40k draws: the sd to about 1%
    assert got.mde == pytest.approx(MDE_Z * got.se) and MDE_Z == pytest.approx(1.959964 + 0.841621, abs=1e-6)
    assert got.mde == pytest.approx(2.80 * got.se, rel=1e-3)
    # and the draw is the one of a plain loop over sentences with the same generator
    idx = np.random.default_rng(0).integers(0, 3, size=(40_000, 3))
    loop = [-sum(gain["abc"[j]] for j in row) / sum(n_words["abc"[j]] for j in row) for row in idx]
    assert got.se == pytest.approx(float(np.std(loop, ddof=1)), rel=1e-9)


def test_perfectly_correlated_samples_of_a_sentence_widen_the_interval_by_the_root_of_their_number():
    """4 seeds of each of 60 sentences that all move alike: the per-sample draw counts 240 independent samples,
    the sentence draw 60, so its standard error and interval are about sqrt(4) = 2 times as wide."""
    rng = np.random.default_rng(1)
    per_sentence = rng.integers(0, 6, size=(60, 2))  # base and policy errors of each sentence
    base, policy = (np.repeat(per_sentence[:, j], 4).tolist() for j in (0, 1))
    words, keys = [10] * 240, np.repeat(np.arange(60), 4).tolist()
    samples = wer_change_stats(base, words, policy, words)
    sentences = wer_change_stats(base, words, policy, words, clusters=keys)
    assert sentences.delta == samples.delta and (sentences.clusters, samples.clusters) == (60, 240)
    assert 1.8 < sentences.se / samples.se < 2.2
    assert 1.7 < (sentences.hi - sentences.lo) / (samples.hi - samples.lo) < 2.3


def test_records_resample_their_sentences_and_refuse_different_ones():
    sentences = ["one", "two", "three", "one", "two", "three"]  # a sentence pooled over two seeds
    base = {"heldout_sentences_utt_errors": [1, 2, 0, 2, 1, 1], "heldout_sentences_utt_words": [5] * 6}
    record = {**base, "heldout_sentences_utt_errors": [0, 1, 0, 1, 1, 0]}
    both = record_wer_changes(
        {**base, "heldout_sentences_utt_sentences": sentences}, {**record, "heldout_sentences_utt_sentences": sentences}
    )
    assert both["heldout_sentences_wer_change_clusters"] == 3
    assert both["heldout_sentences_wer_change_mde"] > 0
    # one record of an older run: the other's sentences are the samples' (the pairing holds them the same)
    assert record_wer_changes(base, {**record, "heldout_sentences_utt_sentences": sentences}) == both
    assert record_wer_changes(base, record)["heldout_sentences_wer_change_clusters"] == 6
    with pytest.raises(ValueError, match="different sentences"):
        record_wer_changes(
            {**base, "heldout_sentences_utt_sentences": sentences},
            {**record, "heldout_sentences_utt_sentences": sentences[::-1]},
        )
    with pytest.raises(ValueError, match="one cluster key per sample"):
        wer_change_stats([1, 2], [5, 5], [0, 1], [5, 5], clusters=["a"])


def test_one_sentence_gives_an_interval_that_is_its_change_exactly():
    """Every draw of a single sentence takes all its samples: the change itself, to the last bit. The case is
    one where a change taken as a difference of the two WERs (11/42 -> 9/42: -0.047619047619047644) missed
    the draws' (9 - 11)/42 (-0.047619047619047616) by a rounding, putting the interval above its change."""
    base, policy, words = [2, 2, 2, 1, 3, 1], [1, 3, 1, 0, 2, 2], [7] * 6  # 3 voices x 2 seeds of 7 words
    change = wer_change_stats(base, words, policy, words, clusters=["the sentence"] * 6)
    assert change.clusters == 1 and change.delta == (9 - 11) / 42
    assert change.lo == change.delta == change.hi
