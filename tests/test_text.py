"""The text front end: normalisation, letter check, phonemisation (espeak-ng and chars)."""

from __future__ import annotations

import shutil

import pytest

from sa_ray.text import PHONEME_BACKENDS, has_letters, normalize_text, phonemize

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@pytest.mark.parametrize(
    "raw, expected",
    [
        # case, punctuation, whitespace
        ("Hello,   World!", "hello world"),
        ("  Well -- that's   it...  ", "well that's it"),
        ("\u201cQuoted\u201d words; don\u2019t (really) care.", "quoted words don't really care"),
        ("'Single quotes' and rock'n'roll", "single quotes and rock'n'roll"),
        ("Tabs\tand\nnewlines", "tabs and newlines"),
        ("\uff26\uff35\uff2c\uff2c width", "full width"),  # NFKC
        # integers, ordinals, years, decimals, big numbers, digit strings
        ("I have 3 cats and 21 dogs.", "i have three cats and twenty one dogs"),
        ("105 and 1,000,000", "one hundred five and one million"),
        ("the 1st, 2nd, 3rd, 11th, 12th and 40th", "the first second third eleventh twelfth and fortieth"),
        ("In 1984 and 1905 and 1900", "in nineteen eighty four and nineteen oh five and nineteen hundred"),
        ("from 2008 to 2019", "from two thousand eight to twenty nineteen"),
        ("the 1990s", "the nineteen nineties"),
        ("pi is 3.14", "pi is three point one four"),
        ("call 007", "call zero zero seven"),
        # currency and percent
        ("It costs $5.", "it costs five dollars"),
        ("$1 or $3.50 or $0.25", "one dollar or three dollars and fifty cents or twenty five cents"),
        ("$2.5 million", "two point five million dollars"),
        ("\u00a310", "ten pounds"),
        ("50% off, 2.5% fee", "fifty percent off two point five percent fee"),
        # abbreviations
        ("Dr. Smith met Mr. and Mrs. Jones.", "doctor smith met mister and missus jones"),
        ("St. Paul lives on Main St.", "saint paul lives on main street"),
        ("MR BROWN", "mister brown"),
        ("apples, pears, etc.", "apples pears et cetera"),
        ("No. 5 said no.", "number five said no"),
        ("Tom & Jerry", "tom and jerry"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("raw", ["Dr. Smith paid $3.50 on the 3rd of May, 1984!", "St. Louis, 50%", "It's 12:30."])
def test_normalize_text_is_idempotent(raw):
    once = normalize_text(raw)
    assert normalize_text(once) == once


def test_has_letters():
    assert has_letters("a")
    assert has_letters("123 go")
    assert has_letters("\u00e9t\u00e9")  # any script counts
    assert not has_letters("")
    assert not has_letters("  123 -- 4.5 !? ")


def test_chars_backend():
    assert phonemize(["Hello, world!", "I'm 2"], backend="chars") == ["h e l l o | w o r l d", "i ' m | t w o"]
    assert phonemize(["...", ""], backend="chars") == ["", ""]


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(ValueError, match="espeak, chars"):
        phonemize(["x"], backend="festival")
    assert PHONEME_BACKENDS == ("espeak", "chars")


def test_missing_espeak_says_what_to_do(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match=r"apt-get install espeak-ng.*chars"):
        phonemize(["hello"], backend="espeak")


@needs_espeak
def test_espeak_format():
    (out,) = phonemize(["Hello, world!"])
    words = out.split(" | ")
    assert len(words) == 2
    assert words[0].split() == ["h", "\u0259", "l", "\u02c8o\u028a"]  # h ə l ˈoʊ
    assert words[1].split()[0] == "w" and words[1].split()[-1] == "d"
    assert "_" not in out and "  " not in out


@needs_espeak
def test_espeak_batch_equals_one_call_per_sentence():
    texts = [
        "The cat sat on the mat.",
        "",
        "Dr. Smith paid $5, then left!",
        "Is it raining?",
        "no punctuation here",
        "?!",
        "Could you help me carry these boxes, please?",
    ]
    batch = phonemize(texts)
    assert len(batch) == len(texts)
    assert batch == [phonemize([t])[0] for t in texts]
    assert batch[1] == "" and batch[5] == ""
    # punctuation and numbers go through normalize_text first
    assert batch[2] == phonemize(["doctor smith paid five dollars then left"])[0]


@needs_espeak
def test_espeak_long_text_falls_back_without_misaligning():
    # espeak-ng breaks a very long clause over several output lines; the batch must stay aligned.
    long = "the quick brown fox jumps over the lazy dog and " * 30
    out = phonemize(["hello there", long, "goodbye"])
    assert out[0] == phonemize(["hello there"])[0]
    assert out[2] == phonemize(["goodbye"])[0]
    assert out[1].count(" | ") == len(long.split()) - 1
