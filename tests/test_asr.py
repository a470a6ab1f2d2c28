"""pocketsphinx ASR with a domain language model: the ARPA file, the dictionary, missing words, WER."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sa_ray.audio import read_wav
from sa_ray.corpus.sentences import make_sentences
from sa_ray.metrics.asr import PocketSphinxASR, build_domain_lm
from sa_ray.metrics.wer import wer
from sa_ray.text import normalize_text

SENTENCES = make_sentences(50, seed=0)


def _mbrola_available() -> bool:
    if shutil.which("espeak-ng") is None:
        return False
    voices = subprocess.run(["espeak-ng", "--voices=mb"], capture_output=True, text=True).stdout
    return "mb-us1" in voices


@pytest.fixture(scope="module")
def domain_lm(tmp_path_factory) -> tuple[Path, Path]:
    return build_domain_lm(SENTENCES, tmp_path_factory.mktemp("lm"))


def _read_arpa(path: Path) -> tuple[dict[int, int], dict[tuple[str, ...], tuple[float, float]]]:
    """(header counts, n-gram -> (log10 prob, log10 backoff weight))."""
    header, ngrams, section = {}, {}, None
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"ngram (\d+)=(\d+)", line):
            header[int(m[1])] = int(m[2])
        elif m := re.fullmatch(r"\\(\d+)-grams:", line):
            section = int(m[1])
        elif section and line and not line.startswith("\\"):
            fields = line.split("\t")
            words = tuple(fields[1].split())
            assert len(words) == section, line
            ngrams[words] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return header, ngrams


def test_arpa_header_counts_and_normalisation(domain_lm):
    lm_path, _ = domain_lm
    assert lm_path.read_text().startswith("\\data\\\n") and lm_path.read_text().endswith("\\end\\\n")
    header, ngrams = _read_arpa(lm_path)
    assert sorted(header) == [1, 2, 3]
    for n, count in header.items():
        assert count == sum(len(g) == n for g in ngrams) > 0

    # With backoff, every history's distribution over the vocabulary must sum to one.
    vocab = [g[0] for g in ngrams if len(g) == 1 and g[0] != "<s>"]

    def logp(g: tuple[str, ...]) -> float:
        return ngrams[g][0] if g in ngrams else ngrams.get(g[:-1], (0, 0))[1] + logp(g[1:])

    for h in [("<s>",), ("the",), ("<s>", normalize_text(SENTENCES[0]).split()[0])]:
        assert sum(10 ** logp(h + (w,)) for w in vocab) == pytest.approx(1.0, abs=1e-4)


def test_dictionary_covers_the_lm_vocabulary(domain_lm):
    lm_path, dict_path = domain_lm
    _, ngrams = _read_arpa(lm_path)
    lm_words = {g[0] for g in ngrams if len(g) == 1} - {"<s>", "</s>"}
    entries = [line.split() for line in dict_path.read_text().splitlines()]
    assert {e[0].split("(")[0] for e in entries} == lm_words
    assert all(len(e) >= 2 for e in entries)


def test_pocketsphinx_loads_the_domain_lm(domain_lm):
    asr = PocketSphinxASR(*domain_lm)
    assert asr.backend == "pocketsphinx+lm:domain.lm"  # never confused with the default LM's WER
    assert PocketSphinxASR().backend == "pocketsphinx"


def test_words_missing_from_cmudict(tmp_path, caplog):
    # -s forms of cmudict words get a pronunciation; other unknown words drop their sentences.
    sents = ["The man mends old cellos.", "A zorblax ate the bread.", "The man ate the bread."]
    with caplog.at_level(logging.WARNING, logger="sa_ray.metrics.asr"):
        lm_path, dict_path = build_domain_lm(sents, tmp_path)
    assert "zorblax" in caplog.text and "dropped 1 of 3 sentences" in caplog.text
    pron = dict(line.split(" ", 1) for line in dict_path.read_text().splitlines())
    assert pron["mends"] == "M EH N D Z" and pron["cellos"] == "CH EH L OW Z"
    assert "zorblax" not in pron
    _, ngrams = _read_arpa(lm_path)
    assert ("a",) not in ngrams  # only the dropped sentence had "a"
    assert ("man", "ate") in ngrams and ("man", "mends") in ngrams
    PocketSphinxASR(lm_path, dict_path)

    with pytest.raises(ValueError, match="no sentence left"):
        build_domain_lm(["The zorblax quuxed."], tmp_path / "empty")


@pytest.mark.skipif(not _mbrola_available(), reason="needs espeak-ng with the mb-us1 MBROLA voice")
def test_domain_lm_beats_the_generic_lm(domain_lm, tmp_path):
    texts = SENTENCES[:3]
    audio = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "mb-us1", "-w", str(path), text], check=True, capture_output=True)
        audio.append(read_wav(path))
    domain = wer(texts, [PocketSphinxASR(*domain_lm).transcribe(*a) for a in audio])
    default = wer(texts, [PocketSphinxASR().transcribe(*a) for a in audio])
    assert domain < 0.5
    assert domain <= default


def test_a_transcript_depends_on_its_audio_alone_not_on_what_was_decoded_before(prepared_in_process):
    """A decoder's cepstral mean normalisation adapts as it goes: with one shared decoder, "the plane leaves
    late" became "the plane leaves lake" after muffled speech and noise (1 of these 4 changed)."""
    import numpy as np
    import pyarrow.parquet as pq

    cfg, _, _ = prepared_in_process
    rows = sorted(pq.read_table(Path(cfg.run_dir) / "data" / "train").to_pylist(), key=lambda r: r["utt_id"])
    wavs = [read_wav(r["audio_path"]) for r in rows if r["speaker"] == "mbrola-us2"][:4]
    asr = PocketSphinxASR()
    first = [asr.transcribe(w, sr) for w, sr in wavs]
    rng = np.random.default_rng(0)
    for w, sr in wavs:  # very different audio in between: quiet, muffled speech and loud noise
        asr.transcribe(np.convolve(w, np.ones(40) / 40, mode="same") * 0.1, sr)
        asr.transcribe((rng.standard_normal(sr) * 0.3).astype(np.float32), sr)
    assert [asr.transcribe(w, sr) for w, sr in wavs] == first
