"""Text front end: English normalisation (for TTS input and WER scoring) and phonemisation.

`normalize_text` is deliberately self-contained (no extra packages) and idempotent, so the same
function can be applied to corpus transcripts, synthesiser prompts and ASR hypotheses alike.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata

PHONEME_BACKENDS = ("espeak", "chars")

# The token that separates words in `phonemize` output (phones themselves are separated by spaces).
WORD_SEP = "|"

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
# Longer digit strings (ids, phone numbers) are read digit by digit rather than as one huge number.
_MAX_CARDINAL_DIGITS = 15


def _cardinal(n: int) -> str:
    """American style, no "and": 105 -> "one hundred five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_cardinal(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{_cardinal(high)} {name}" + (f" {_cardinal(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _ordinal(n: int) -> str:
    words = _cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


def _integer(s: str) -> str:
    """A digit string as spoken: leading zeros and very long strings digit by digit."""
    if (len(s) > 1 and s[0] == "0") or len(s) > _MAX_CARDINAL_DIGITS:
        return _digits(s)
    return _cardinal(int(s))


def _year_or_integer(s: str) -> str:
    """Four-digit numbers 1001-2999 read as years (1984 -> nineteen eighty four), the usual TTS convention."""
    n = int(s)
    if len(s) != 4 or s[0] == "0" or not 1000 < n < 3000:
        return _integer(s)
    if 2000 <= n < 2010:
        return _cardinal(n)  # two thousand five
    high, low = divmod(n, 100)
    if low == 0:
        return f"{_cardinal(high)} hundred"
    if low < 10:
        return f"{_cardinal(high)} oh {_cardinal(low)}"
    return f"{_cardinal(high)} {_cardinal(low)}"


def _clock(hours: str, minutes: str) -> str:
    """12:00 -> twelve o'clock, 3:05 -> three oh five, 10:30 -> ten thirty."""
    m = int(minutes)
    tail = "o'clock" if m == 0 else f"oh {_cardinal(m)}" if m < 10 else _cardinal(m)
    return f"{_cardinal(int(hours))} {tail}"


def _plural(words: str) -> str:
    """nineteen ninety -> nineteen nineties; six -> sixes."""
    if words.endswith("y"):
        return words[:-1] + "ies"
    return words + ("es" if words.endswith(("x", "s")) else "s")


def _decimal(whole: str, frac: str) -> str:
    return (_integer(whole) + " " if whole else "") + "point " + _digits(frac)


# Currency symbol -> (unit, units, subunit, subunits).
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}


def _money(m: re.Match) -> str:
    unit, units, sub, subs = _CURRENCIES[m["sym"]]
    whole, frac, scale = m["whole"], m["frac"], m["scale"]
    if scale:  # $2.5 million -> two point five million dollars
        amount = _decimal(whole, frac) if frac else _integer(whole)
        return f" {amount} {scale.lower()} {units} "
    if frac and len(frac) != 2:
        return f" {_decimal(whole, frac)} {units} "
    parts = []
    if int(whole or "0") or not frac or not int(frac):
        parts.append(f"{_integer(whole or '0')} {unit if int(whole or '0') == 1 else units}")
    if frac and int(frac):
        parts.append(f"{_cardinal(int(frac))} {sub if int(frac) == 1 else subs}")
    return " " + " and ".join(parts) + " "


# Abbreviations expanded whether or not a period follows (none of them is also an English word).
_ABBREV = {
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "jr": "junior",
    "sr": "senior",
    "prof": "professor",
    "etc": "et cetera",
    "vs": "versus",
    "mt": "mount",
    "sgt": "sergeant",
    "capt": "captain",
    "lt": "lieutenant",
    "ft": "feet",
    "approx": "approximately",
}
# These are also ordinary words or letter pairs, so they only expand with their period.
_ABBREV_DOTTED = {
    "ms": "miss",
    "gen": "general",
    "col": "colonel",
    "co": "company",
    "ltd": "limited",
    "ave": "avenue",
    "rd": "road",
    "e.g": "for example",
    "i.e": "that is",
}

_RE_ST = re.compile(r"\b(?i:st)\b\.?(?=(\s+[A-Z])?)")  # case-sensitive lookahead: capitalised name
# "no." is only "number" before a digit ("No. 5"); at the end of a sentence it is the word no.
_RE_NUMBER_SIGN = re.compile(r"\b(no)\.\s*(?=[0-9])", re.IGNORECASE)
_RE_ABBREV = re.compile(r"\b(" + "|".join(_ABBREV) + r")\b\.?", re.IGNORECASE)
_RE_ABBREV_DOTTED = re.compile(r"(?<![\w.])(" + "|".join(re.escape(a) for a in _ABBREV_DOTTED) + r")\.", re.IGNORECASE)
_RE_MONEY = re.compile(
    r"(?P<sym>[$£€¥])\s?(?P<whole>[0-9]*)(?:\.(?P<frac>[0-9]+))?"
    r"(?:\s?(?P<scale>thousand|million|billion|trillion)\b)?",
    re.IGNORECASE,
)
_RE_PERCENT = re.compile(r"([0-9]*)(?:\.([0-9]+))?\s?%")
_RE_CLOCK = re.compile(r"\b([0-9]{1,2}):([0-9]{2})\b")
_RE_THOUSANDS = re.compile(r"\b[0-9]{1,3}(?:,[0-9]{3})+\b")
_RE_ORDINAL = re.compile(r"\b([0-9]+)(?:st|nd|rd|th)\b", re.IGNORECASE)
_RE_DECADES = re.compile(r"\b([0-9]+)'?s\b")  # 1990s, 90's
_RE_DECIMAL = re.compile(r"([0-9]*)\.([0-9]+)")
_RE_INTEGER = re.compile(r"[0-9]+")
# Apostrophe look-alikes that NFKC leaves alone.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def _expand_st(m: re.Match) -> str:
    # "St. Louis" / "ST PAUL": saint before a capitalised name; "Main St." / "main st": street.
    return " saint " if m.group(1) else " street "


def normalize_text(text: str) -> str:
    """English text -> lower-case words separated by single spaces.

    NFKC, abbreviations (mr, mrs, dr, st, etc, ...), currency ($5 -> five dollars), percent,
    clock times (3:05 -> three oh five), ordinals (3rd -> third), years (1984 -> nineteen eighty
    four), decimals (2.5 -> two point five) and integers are spelled out; punctuation is dropped,
    except apostrophes inside words ("don't" stays, "'quoted'" loses them). Idempotent:
    normalising twice changes nothing.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    # Abbreviations first: the St heuristic needs the original capitalisation.
    text = _RE_ST.sub(_expand_st, text)
    text = _RE_ABBREV.sub(lambda m: _ABBREV[m.group(1).lower()] + " ", text)
    text = _RE_ABBREV_DOTTED.sub(lambda m: _ABBREV_DOTTED[m.group(1).lower()] + " ", text)
    text = _RE_NUMBER_SIGN.sub("number ", text)
    text = _RE_CLOCK.sub(lambda m: f" {_clock(m[1], m[2])} ", text)
    text = _RE_THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _RE_MONEY.sub(lambda m: _money(m) if m["whole"] or m["frac"] else m.group(0), text)
    text = _RE_PERCENT.sub(
        lambda m: f" {_decimal(m[1], m[2]) if m[2] else _integer(m[1])} percent " if m[1] or m[2] else m.group(0), text
    )
    text = _RE_ORDINAL.sub(lambda m: f" {_ordinal(int(m[1]))} ", text)
    text = _RE_DECADES.sub(lambda m: f" {_plural(_year_or_integer(m[1]))} ", text)
    text = _RE_DECIMAL.sub(lambda m: f" {_decimal(m[1], m[2])} ", text)
    text = _RE_INTEGER.sub(lambda m: f" {_year_or_integer(m.group(0))} ", text)
    text = text.lower().replace("&", " and ")
    # Everything that is not a word character, apostrophe or space becomes a space...
    text = re.sub(r"[^\w\s']|_", " ", text)
    # ...and apostrophes survive only between word characters (don't, o'clock).
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def has_letters(text: str) -> bool:
    """True when the text contains at least one alphabetic character (in any script)."""
    return any(ch.isalpha() for ch in text)


# --------------------------------------------------------------------------------------------- #
# Phonemisation


def phonemize(texts: list[str], backend: str = "espeak", language: str = "en-us") -> list[str]:
    """Phoneme strings for `texts` (each normalised with `normalize_text` first), one per text.

    Format: phones separated by single spaces, words separated by " | ", e.g.
        espeak: "hello world" -> "h ə l ˈoʊ | w ˈɜː l d"
        chars:  "hello world" -> "h e l l o | w o r l d"
    espeak phones are espeak-ng's IPA symbols with stress marks (ˈ primary, ˌ secondary) kept on
    the vowel they precede and length marks (ː) on their vowel; words are espeak's, which sometimes
    runs short function words together ("in the" -> "ɪ n ð ə"). A text that normalises to nothing
    gives "". The "chars" backend needs nothing installed; `language` only affects espeak.
    """
    if backend not in PHONEME_BACKENDS:
        raise ValueError(f"unknown phoneme backend {backend!r}; valid backends: {', '.join(PHONEME_BACKENDS)}")
    norm = [normalize_text(t) for t in texts]
    if backend == "chars":
        return [f" {WORD_SEP} ".join(" ".join(word) for word in t.split()) for t in norm]
    return _espeak(norm, language)


def _espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "phoneme backend 'espeak' needs the espeak-ng program, which is not on PATH: install it "
            "(e.g. `apt-get install espeak-ng`) or use the 'chars' phoneme backend"
        )
    return exe


def _run_espeak(exe: str, lines: list[str], language: str) -> list[str]:
    """One espeak-ng process for all `lines`; returns its non-empty output lines.

    Text on stdin (without -f/--stdin) is read line by line, and each line ends with a period, so
    every input line is one clause and comes back as one output line. `--sep=_` separates phones
    inside a word while words stay separated by spaces.
    """
    if not re.fullmatch(r"[A-Za-z0-9_+-]+", language):
        raise ValueError(f"invalid espeak-ng language/voice name {language!r}")
    proc = subprocess.run(
        [exe, "-q", "--ipa", "--sep=_", "-v", language],
        input="".join(f"{line}.\n" for line in lines),
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
    return [ln for ln in proc.stdout.splitlines() if ln.strip()]


# espeak-ng marks a switch to another language's rules inline, e.g. "(fr)kafe(en)"; not a phone.
_RE_LANG_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)")


def _format_espeak(lines: list[str]) -> str:
    words = [w for line in lines for w in _RE_LANG_SWITCH.sub(" ", line).split()]
    return f" {WORD_SEP} ".join(" ".join(p for p in w.split("_") if p) for w in words)


def _espeak(norm: list[str], language: str) -> list[str]:
    exe = _espeak_binary()
    todo = [i for i, t in enumerate(norm) if t]
    out = [""] * len(norm)
    lines = _run_espeak(exe, [norm[i] for i in todo], language) if todo else []
    if len(lines) == len(todo):
        for i, line in zip(todo, lines):
            out[i] = _format_espeak([line])
    else:
        # espeak-ng splits very long clauses over several lines, so the batch no longer lines up
        # with its input: fall back to one call per text and join whatever lines each one gives.
        for i in todo:
            out[i] = _format_espeak(_run_espeak(exe, [norm[i]], language))
    return out
