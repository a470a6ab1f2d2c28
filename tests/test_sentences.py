"""The sentence grammar of the built-in corpus."""

from __future__ import annotations

import re

import pytest

from sa_ray.corpus.sentences import MAX_WORDS, MIN_WORDS, make_sentences
from sa_ray.text import normalize_text


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return make_sentences(4000, seed=0)


def _words(sentence: str) -> list[str]:
    return re.findall(r"[a-z']+", sentence.lower())


def test_deterministic_and_prefix_stable():
    assert make_sentences(300, seed=7) == make_sentences(300, seed=7)
    assert make_sentences(100, seed=7) == make_sentences(300, seed=7)[:100]
    assert make_sentences(0, seed=7) == []


def test_different_seeds_differ():
    a, b = make_sentences(200, seed=1), make_sentences(200, seed=2)
    assert len(set(a) & set(b)) < 10


def test_distinct_even_after_normalisation(sentences):
    assert len(sentences) == 4000
    assert len({normalize_text(s) for s in sentences}) == 4000


def test_shape_length_and_charset(sentences):
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    assert sum(5 <= n <= 9 for n in lengths) / len(lengths) > 0.75  # mostly 5-9 words
    for s in sentences:
        assert s.isascii() and s[0].isupper() and s[-1] in ".?!", s
        assert "  " not in s and " ," not in s and "_" not in s, s
    enders = {s[-1] for s in sentences}
    assert enders == {".", "?", "!"}  # statements, questions and exclamations all occur


def test_vocabulary_and_variety(sentences):
    tokens = [_words(s) for s in sentences]
    vocab = {w for t in tokens for w in t}
    bigrams = {b for t in tokens for b in zip(t, t[1:])}
    assert len(vocab) >= 1000
    assert len(bigrams) >= 10000


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_no_two_sentences_share_more_than_60_percent_in_order():
    # Exhaustive over all pairs of a smaller sample (the filter is exact; this checks it).
    tokens = [_words(s) for s in make_sentences(400, seed=3)]
    for i, a in enumerate(tokens):
        for b in tokens[i + 1 :]:
            assert _lcs(a, b) <= 0.6 * max(len(a), len(b)), (a, b)


def test_grammar_has_room_for_8000():
    assert len(make_sentences(8000, seed=11)) == 8000


def test_negative_n_rejected():
    with pytest.raises(ValueError):
        make_sentences(-1, seed=0)
