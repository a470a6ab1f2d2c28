"""How sure a change in WER is: a paired bootstrap over utterances.

Two evaluations of the same utterances (same sentences, prompts and sampling seeds; e.g. the base and an
aligned policy) give per-utterance word errors. Resampling utterances, with each utterance's pair kept
together, gives an interval for the change of the corpus WER that includes the sampling noise of
generation (each utterance's sample is one draw) and the choice of sentences, without running more seeds.
"""

from __future__ import annotations

import numpy as np


def wer_change(
    base_errors: list[int],
    base_words: list[int],
    errors: list[int],
    words: list[int],
    samples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(WER - base WER, lower, upper bound of its `level` interval) for paired per-utterance errors."""
    b_err, b_words, err, n_words = (np.asarray(x, dtype=np.float64) for x in (base_errors, base_words, errors, words))
    if not len(err) == len(b_err) == len(n_words) == len(b_words) or len(err) == 0:
        raise ValueError(f"paired evaluations of the same utterances needed: {len(b_err)} vs {len(err)} utterances")
    if not np.array_equal(b_words, n_words):
        raise ValueError("the two evaluations scored different reference texts")
    delta = err.sum() / n_words.sum() - b_err.sum() / b_words.sum()
    idx = np.random.default_rng(seed).integers(0, len(err), size=(samples, len(err)))
    deltas = (err[idx].sum(1) - b_err[idx].sum(1)) / n_words[idx].sum(1)
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return float(delta), float(lo), float(hi)


def record_wer_changes(base: dict, record: dict, splits=("heldout_sentences", "heldout_voices")) -> dict[str, float]:
    """`<split>_wer_change` (and `_lo`, `_hi`) of an evaluation record against the base's, for the splits whose
    per-utterance errors both records hold (records of older runs have none: nothing is returned for them)."""
    out = {}
    for split in splits:
        keys = (f"{split}_utt_errors", f"{split}_utt_words")
        if all(k in base and k in record for k in keys):
            delta, lo, hi = wer_change(base[keys[0]], base[keys[1]], record[keys[0]], record[keys[1]])
            out.update({f"{split}_wer_change": delta, f"{split}_wer_change_lo": lo, f"{split}_wer_change_hi": hi})
    return out


def pool_seeds(evaluations: list[dict]) -> dict:
    """Flat evaluations of the same utterances at several sampling seeds -> one: numbers averaged (a key only
    some hold, like the golden ceiling of the first seed, from those), per-utterance lists concatenated
    (utterance-seed pairs, what `wer_change` then resamples), and `<key>_spread` (half the range across
    seeds) for every WER and SIM measured at more than one seed. Other values (names, paths) are left out."""
    out = {}
    for key in dict.fromkeys(k for e in evaluations for k in e):  # every key any seed holds, in order
        values = [e[key] for e in evaluations if key in e]
        if isinstance(values[0], list):
            out[key] = [v for seed_values in values for v in seed_values]
            continue
        if not isinstance(values[0], (int, float)) or isinstance(values[0], bool):
            continue
        out[key] = float(np.mean(values))
        if len(values) > 1 and key.endswith(("_wer", "_sim")):
            out[f"{key}_spread"] = float((max(values) - min(values)) / 2)
    return out
