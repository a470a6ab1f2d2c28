"""Per-utterance word errors and the paired bootstrap of a WER change."""

import pytest

from sa_ray.align_run import format_changes
from sa_ray.metrics.stats import pool_seeds, record_wer_changes, wer_change
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
    }
    assert changes["heldout_sentences_wer_change"] == pytest.approx(-0.2)
    assert "sentences -0.200 [" in format_changes({**record, **changes})
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
