"""Speech recognition for intelligibility metrics. Offline default: pocketsphinx (bundles its en-us model).

Every result names the backend that produced it: WERs from different recognisers are not comparable,
and neither are WERs from the same recogniser with different language models (see `backend`).

Why a domain language model: the built-in corpus's sentences come from a grammar and are often
semantically odd ("Will John wash your pineapple?"), so pocketsphinx's generic LM pulls the decode
towards likelier English ("well done wash your pineapple") and WER measures the LM's prior more
than the audio. `build_domain_lm` writes a small n-gram LM and dictionary from the TRAINING
sentences only, so that the recogniser knows the domain's words and grammar but not the test
sentences themselves.
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sa_ray.audio import resample
from sa_ray.config import CorpusConfig
from sa_ray.corpus.sentences import make_sentences
from sa_ray.text import normalize_text

log = logging.getLogger(__name__)

BOS, EOS = "<s>", "</s>"


class PocketSphinxASR:
    """pocketsphinx with its bundled en-us acoustic model; its generic LM unless `lm_path` is given.

    `lm_path`: an ARPA (or pocketsphinx binary) LM, e.g. from `build_domain_lm`; `dict_path`: the
    pronunciation dictionary for it (default: the bundled cmudict). The LM file's name goes into
    `backend`, so results decoded with different LMs are never mistaken for comparable ones.
    """

    backend = "pocketsphinx"
    sample_rate = 16000

    def __init__(self, lm_path: str | Path | None = None, dict_path: str | Path | None = None) -> None:
        from pocketsphinx import Decoder

        # Only override what was given: Decoder fills in the bundled defaults for the rest.
        paths = {k: str(v) for k, v in (("lm", lm_path), ("dict", dict_path)) if v is not None}
        if lm_path is not None:
            self.backend = f"pocketsphinx+lm:{Path(lm_path).name}"
        self._new_decoder = lambda: Decoder(samprate=self.sample_rate, loglevel="FATAL", **paths)
        self._new_decoder()  # fail here, not at the first utterance, on a bad LM or dictionary

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        """The transcript of `wav` alone. A fresh decoder per utterance (~50 ms): a decoder's feature
        normalisation adapts across utterances, so the same audio decoded after different others got
        different transcripts (measured: 2 of 8 utterances changed with the decoding order)."""
        pcm = (np.clip(resample(wav, sr, self.sample_rate), -1.0, 1.0) * 32767).astype(np.int16)
        d = self._new_decoder()
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""


# --------------------------------------------------------------------------------------------- #
# Domain language model


def domain_asr(data_dir: str | Path, corpus: CorpusConfig) -> PocketSphinxASR:
    """pocketsphinx with an n-gram LM of the domain's text (`domain_lm`)."""
    lm_dir = domain_lm(data_dir, corpus)
    return PocketSphinxASR(str(lm_dir / "domain.lm"), str(lm_dir / "domain.dict"))


def domain_lm(data_dir: str | Path, corpus: CorpusConfig) -> Path:
    """The directory of the domain's n-gram LM and dictionary, `<data_dir>/asr_lm`: built once, by `jobs.prepare`
    (or by the first recogniser of data prepared before it did).

    The generic LM's prior fights the corpus's unusual sentences (original audio of held-out
    sentences: WER 0.44 generic vs 0.24 with an LM of the 1,520 training sentences), so a domain LM
    lets WER measure the speech, not the prior. Its text is the training transcripts; for the built-in
    corpus, the grammar's sentences (8,000 of them, which makes a better LM), and never a held-out one.
    """
    lm_dir = Path(data_dir) / "asr_lm"
    if not (lm_dir / "domain.lm").is_file():
        texts = pq.read_table(Path(data_dir) / "train", columns=["text"]).column("text").to_pylist()
        if corpus.kind == "synthetic":
            held = {
                normalize_text(t)
                for split in ("heldout_sentences", "heldout_voices")
                for t in pq.read_table(Path(data_dir) / split, columns=["text"]).column("text").to_pylist()
            }
            texts = [
                t for t in make_sentences(max(8000, corpus.n_sentences), corpus.seed) if normalize_text(t) not in held
            ]
        # Built aside and renamed into place whole: roles that start together (an evaluator and its reward
        # scorers) each build it, and none may read another's half-written LM.
        staging = lm_dir.parent / f".{lm_dir.name}.staging-{uuid.uuid4().hex[:8]}"
        build_domain_lm(sorted(set(texts)), staging)
        try:
            staging.rename(lm_dir)
        except OSError:  # another process's LM is in place (of the same text, so the same LM)
            shutil.rmtree(staging)
            if not (lm_dir / "domain.lm").is_file():
                raise
    return lm_dir


def build_domain_lm(sentences: list[str], out_dir: str | Path, order: int = 3) -> tuple[Path, Path]:
    """Writes `domain.lm` (ARPA, `order`-gram) and `domain.dict` under `out_dir`; returns their paths.

    Pass TRAINING sentences only, never the held-out ones you will score: the LM should know the
    domain's vocabulary and grammar, not the test sentences, or WER is flattered by memorisation.
    Sentences are normalised with `normalize_text` (as WER references are); duplicates count once
    per occurrence, so pass distinct sentences for a model of the grammar rather than of the data's
    repetitions.

    Smoothing: interpolated Witten-Bell, stored in ARPA backoff form (for interpolated models the
    backoff weight of history h is exactly 1 - lambda(h), and every stored n-gram holds its
    interpolated probability). Unigrams are maximum likelihood: every word in the dictionary was
    seen in training, and the decoder cannot output any other word anyway.

    Words the bundled cmudict lacks: a regular -s form of a word it has (plurals and third
    persons like "cellos", "mends") gets the stem's pronunciation plus /s/, /z/ or /ɪz/. Any other
    missing word is logged as a warning and every sentence containing it is dropped: pocketsphinx
    cannot decode a word without a pronunciation, and cutting only the word out would invent
    n-grams that were never said. ValueError when no sentence is left.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    cmudict = _read_cmudict()
    sents = [s.split() for s in map(normalize_text, sentences) if s]
    prons: dict[str, list[str]] = {}
    missing: set[str] = set()
    for word in {w for s in sents for w in s}:
        p = cmudict.get(word) or _s_form(word, cmudict)
        if p:
            prons[word] = p
        else:
            missing.add(word)
    if missing:
        before = len(sents)
        sents = [s for s in sents if missing.isdisjoint(s)]
        log.warning(
            "build_domain_lm: %d words not in cmudict, dropped %d of %d sentences: %s",
            len(missing),
            before - len(sents),
            before,
            " ".join(sorted(missing)),
        )
    if not sents:
        raise ValueError("no sentence left to train the domain LM on")
    vocab = sorted({w for s in sents for w in s})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm_path, dict_path = out / "domain.lm", out / "domain.dict"
    lm_path.write_text(_arpa(sents, order))
    with dict_path.open("w") as f:
        for word in vocab:
            for i, p in enumerate(prons[word]):
                # cmudict's convention for alternative pronunciations: word, word(2), word(3), ...
                f.write(f"{word}{f'({i + 1})' if i else ''} {p}\n")
    return lm_path, dict_path


def _read_cmudict() -> dict[str, list[str]]:
    """The cmudict bundled with pocketsphinx: word -> its pronunciations (phones joined by spaces)."""
    from pocketsphinx import get_model_path

    out: dict[str, list[str]] = defaultdict(list)
    with open(Path(get_model_path()) / "en-us" / "cmudict-en-us.dict") as f:
        for line in f:
            word, *phones = line.split()
            if phones:
                out[word.split("(")[0]].append(" ".join(phones))
    return dict(out)


_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}
_VOICELESS = {"P", "T", "K", "F", "TH"}


def _s_form(word: str, cmudict: dict[str, list[str]]) -> list[str]:
    """Pronunciations of a regular -s/-es/-ies form (cellos, mends, couches, cherries) from its stem's.

    The suffix follows English phonology: /ɪz/ after sibilants, /s/ after other voiceless
    consonants, /z/ otherwise. [] when the word is not such a form of a cmudict word.
    """
    if not word.endswith("s"):
        return []
    stems = [word[:-1]]
    if word.endswith("ies"):
        stems.append(word[:-3] + "y")
    if word.endswith("es"):
        stems.append(word[:-2])
    for stem in stems:
        if stem in cmudict:
            out = []
            for p in cmudict[stem]:
                last = p.split()[-1]
                out.append(p + (" IH Z" if last in _SIBILANTS else " S" if last in _VOICELESS else " Z"))
            return out
    return []


def _arpa(sents: list[list[str]], order: int) -> str:
    """ARPA text of an interpolated Witten-Bell `order`-gram model of `sents` (lists of words)."""
    counts: list[Counter] = [Counter() for _ in range(order)]  # counts[n - 1]: n-gram -> count
    for s in sents:
        toks = [BOS, *s, EOS]
        for n in range(1, order + 1):
            for i in range(len(toks) - n + 1):
                counts[n - 1][tuple(toks[i : i + n])] += 1
    del counts[0][(BOS,)]  # <s> only ever starts a context; it is never predicted

    # Per history: how many n-gram tokens follow it (c) and how many distinct words (t).
    hist_c: Counter = Counter()
    hist_t: Counter = Counter()
    for table in counts[1:]:
        for g, c in table.items():
            hist_c[g[:-1]] += c
            hist_t[g[:-1]] += 1
    n_words = sum(counts[0].values())

    prob: dict[tuple[str, ...], float] = {}

    def p(g: tuple[str, ...]) -> float:
        # Witten-Bell: P(w|h) = (c(h w) + t(h) P(w|h')) / (c(h) + t(h)), h' = h minus its first word.
        if g not in prob:
            if len(g) == 1:
                prob[g] = counts[0][g] / n_words
            else:
                h = g[:-1]
                prob[g] = (counts[len(g) - 1][g] + hist_t[h] * p(g[1:])) / (hist_c[h] + hist_t[h])
        return prob[g]

    def backoff(h: tuple[str, ...]) -> str:
        # An n-gram that is never a history needs no backoff weight (the reader takes 1).
        return f"\t{math.log10(hist_t[h] / (hist_c[h] + hist_t[h])):.6f}" if h in hist_c else ""

    sections = []
    for n in range(1, order + 1):
        lines = []
        if n == 1:
            lines.append(f"-99.000000\t{BOS}{backoff((BOS,))}")  # log10(0), by ARPA convention
        for g in sorted(counts[n - 1]):
            lines.append(f"{math.log10(p(g)):.6f}\t{' '.join(g)}{backoff(g) if n < order else ''}")
        sections.append((n, lines))

    header = ["\\data\\", *(f"ngram {n}={len(lines)}" for n, lines in sections), ""]
    body = [part for n, lines in sections for part in (f"\\{n}-grams:", *lines, "")]
    return "\n".join([*header, *body, "\\end\\", ""])
