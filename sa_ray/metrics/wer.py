"""Word and character error rates on normalised text (sa_ray.text.normalize_text on both sides)."""

from __future__ import annotations

import jiwer

from sa_ray.text import normalize_text


def _pairs(refs: list[str], hyps: list[str]) -> tuple[list[str], list[str]]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(r) for r in refs]
    if not all(refs):
        raise ValueError("a reference transcript is empty after normalisation")
    return refs, [normalize_text(h) for h in hyps]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus-level WER: total word errors over total reference words."""
    return float(jiwer.wer(*_pairs(refs, hyps)))


def cer(refs: list[str], hyps: list[str]) -> float:
    return float(jiwer.cer(*_pairs(refs, hyps)))


def word_errors(refs: list[str], hyps: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance: word errors (substitutions + deletions + insertions) and reference words; their sums
    give the corpus WER, and resampling them gives its uncertainty (`sa_ray.metrics.stats`)."""
    errors, words = [], []
    for ref, hyp in zip(*_pairs(refs, hyps)):
        out = jiwer.process_words(ref, hyp)
        errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(len(ref.split()))
    return errors, words
