"""How sure a change in WER is: a paired cluster bootstrap over sentences; and how sure a listeners' win rate is.

Two evaluations of the same samples (same sentences, prompts and sampling seeds; e.g. the base and an
aligned policy) give per-sample word errors. Resampling with each sample's pair kept together gives an
interval for the change of the corpus WER that includes the sampling noise of generation (each sample is one
draw) and the choice of sentences, without running more seeds. The samples of one sentence (its sampling seeds
and, in the held-out sentence set, its several voices) are correlated, so they are drawn together, as one
cluster: resampling them one by one would count them as independent evidence and narrow the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# the minimum detectable change is this many standard errors: 80% power at two-sided alpha 0.05 (~2.80)
MDE_Z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)


@dataclass(frozen=True)
class WERChange:
    """A WER change and how sure it is: `delta` = WER - base WER, [`lo`, `hi`] its bootstrap interval, `se` the
    bootstrap standard deviation, `mde` the change this comparison detects 80% of the time at alpha 0.05
    (`MDE_Z` * `se`), `clusters` the number of independent units (sentences) resampled."""

    delta: float
    lo: float
    hi: float
    se: float
    mde: float
    clusters: int


def wer_change_stats(
    base_errors: list[int],
    base_words: list[int],
    errors: list[int],
    words: list[int],
    clusters: list | None = None,
    samples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> WERChange:
    """The change of corpus WER between two evaluations of the same samples, by a paired bootstrap that draws
    `clusters` (one hashable key per sample, e.g. its sentence; None = every sample its own cluster, as for
    records of older runs) with replacement, all samples of a drawn cluster together."""
    b_err, b_words, err, n_words = (np.asarray(x, dtype=np.float64) for x in (base_errors, base_words, errors, words))
    if not len(err) == len(b_err) == len(n_words) == len(b_words) or len(err) == 0:
        raise ValueError(f"paired evaluations of the same utterances needed: {len(b_err)} vs {len(err)} utterances")
    if not np.array_equal(b_words, n_words):
        raise ValueError("the two evaluations scored different reference texts")
    if clusters is not None:
        if len(clusters) != len(err):
            raise ValueError(f"one cluster key per sample needed: {len(clusters)} keys for {len(err)} samples")
        # clusters numbered in order of first appearance, so distinct keys give the per-sample draw exactly
        number: dict = {}
        which = np.fromiter((number.setdefault(key, len(number)) for key in clusters), dtype=np.int64, count=len(err))
        err, b_err, n_words = (np.bincount(which, weights=x, minlength=len(number)) for x in (err, b_err, n_words))

    def changes(idx: np.ndarray) -> np.ndarray:
        # one row of cluster indices a draw: its errors less the base's over its words (the same words)
        return (err[idx].sum(1) - b_err[idx].sum(1)) / n_words[idx].sum(1)

    # the change is the draw of every cluster once, by the same arithmetic as each bootstrap draw: a draw that
    # takes the same clusters (one sentence: every draw) is the change exactly, not the change up to rounding
    (delta,) = changes(np.arange(len(err))[None])
    deltas = changes(np.random.default_rng(seed).integers(0, len(err), size=(samples, len(err))))
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    se = float(deltas.std(ddof=1)) if samples > 1 else 0.0
    return WERChange(float(delta), float(lo), float(hi), se, MDE_Z * se, len(err))


def wer_change(*args, **kwargs) -> tuple[float, float, float]:
    """(WER - base WER, lower, upper bound of its `level` interval): `wer_change_stats` without the rest."""
    change = wer_change_stats(*args, **kwargs)
    return change.delta, change.lo, change.hi


def sentence_clusters(base: dict, record: dict, split: str) -> list | None:
    """The cluster keys of a split's samples (`<split>_utt_sentences`) for a paired comparison of two
    evaluations: None where neither records them (older runs); one record's where only it does (the pairing
    already holds the samples the same); an error where both do and they differ (not the same samples)."""
    key = f"{split}_utt_sentences"
    ours, theirs = base.get(key), record.get(key)
    if ours is not None and theirs is not None and list(ours) != list(theirs):
        where = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise ValueError(
            f"{key}: the two evaluations scored different sentences (first difference at sample {where} of "
            f"{len(ours)} vs {len(theirs)}): not a paired comparison"
        )
    return ours if ours is not None else theirs


def record_wer_changes(base: dict, record: dict, splits=("heldout_sentences", "heldout_voices")) -> dict[str, float]:
    """`<split>_wer_change` (and `_lo`, `_hi`, `_mde` and the number of sentence `_clusters`) of an evaluation
    record against the base's, for the splits whose per-utterance errors both records hold (records of older
    runs have none: nothing is returned for them). Samples are resampled by sentence where it is recorded."""
    out = {}
    for split in splits:
        keys = (f"{split}_utt_errors", f"{split}_utt_words")
        if all(k in base and k in record for k in keys):
            clusters = sentence_clusters(base, record, split)
            c = wer_change_stats(base[keys[0]], base[keys[1]], record[keys[0]], record[keys[1]], clusters)
            out.update({f"{split}_wer_change{end}": v for end, v in (("", c.delta), ("_lo", c.lo), ("_hi", c.hi))})
            out.update({f"{split}_wer_change_mde": c.mde, f"{split}_wer_change_clusters": c.clusters})
    return out


def pool_seeds(evaluations: list[dict]) -> dict:
    """Flat evaluations of the same utterances at several sampling seeds -> one: numbers averaged (a key only
    some hold, like the golden ceiling of the first seed, from those), per-utterance lists concatenated
    (`<split>_utt_sentences` too, so `wer_change` draws all seeds of a sentence together), and `<key>_spread`
    (half the range across seeds) for every WER and SIM measured at more than one seed. Other values (names,
    paths) are left out."""
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


def wilson_interval(wins: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `wins` / `n` (`wins` may hold halves: a tie counted half a win).

    Why Wilson and not the bootstrap above: a listening test compares two versions over tens of votes, often nearly
    all one way, where a percentile bootstrap collapses (5 wins of 5 resample to [1, 1]) and the normal (Wald)
    interval leaves [0, 1]; Wilson's keeps its coverage there (5 of 5: [0.57, 1]) and is a formula, no draws.
    Votes are taken as independent: each is one listener's judgement of one pair of takes. A tie counted as half a
    win varies less than a coin flip would, so with ties the interval errs wide."""
    if n <= 0:
        raise ValueError(f"a win rate needs at least one vote; got n={n}")
    if not 0 <= wins <= n:
        raise ValueError(f"wins must be in [0, n={n}]; got {wins}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p, z2 = wins / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)
