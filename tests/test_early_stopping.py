"""align.early_stopping: the loop stops when `patience` versions after the best held-out WER did no better."""

from sa_ray.align_run import stalled_since


def _records(*wers):
    return [{"iteration": k, "heldout_sentences_wer": w} for k, w in enumerate(wers)]


def test_stops_once_patience_versions_after_the_best_did_no_better():
    assert stalled_since(_records(0.5, 0.4, 0.45, 0.41), 2) == 1  # v2 and v3 no better than v1
    assert stalled_since(_records(0.5, 0.4, 0.45), 2) is None  # only one version after the best so far
    assert stalled_since(_records(0.5, 0.4, 0.45, 0.39), 2) is None  # v3 is the new best
    assert stalled_since(_records(0.5, 0.5, 0.5), 2) == 0  # the base best: a tie is no better
    assert stalled_since(_records(0.5), 1) is None  # the base alone


def test_patience_zero_never_stops():
    assert stalled_since(_records(0.3, 0.9, 0.9, 0.9, 0.9), 0) is None
