"""Readers for LibriSpeech, LibriTTS and VCTK layouts, on tiny corpora written in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sa_ray.audio import read_wav
from sa_ray.corpus.readers import read_corpus, read_librispeech, read_libritts, read_vctk


def _audio(path: Path, sr: int = 16000, seconds: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)  # format from suffix


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, chapter, lines in [
        ("84", "121123", ["84-121123-0000 GO DO YOU HEAR", "84-121123-0001 BUT IN LESS THAN FIVE MINUTES"]),
        ("1272", "128104", ["1272-128104-0000 MISTER QUILTER IS THE APOSTLE", "", "1272-128104-0001"]),
    ]:
        chapter_dir = root / spk / chapter
        _text(chapter_dir / f"{spk}-{chapter}.trans.txt", "\n".join(lines) + "\n")
        for line in lines:
            if line and line.split()[0] != "1272-128104-0001":  # this one's audio is missing
                _audio(chapter_dir / f"{line.split()[0]}.flac")
    _audio(root / "84" / "121123" / "84-121123-0009.flac")  # audio without a transcript line
    return root


def test_librispeech(librispeech: Path, caplog):
    with caplog.at_level(logging.WARNING):
        utts = read_librispeech(librispeech)
    assert [u.utt_id for u in utts] == ["1272-128104-0000", "1272-128104-0001", "84-121123-0000", "84-121123-0001"]
    assert [u.speaker for u in utts] == ["1272", "1272", "84", "84"]
    assert utts[0].text == "MISTER QUILTER IS THE APOSTLE"
    assert utts[1].text == ""  # kept: validation quarantines empty transcripts
    assert utts[3].text == "BUT IN LESS THAN FIVE MINUTES"
    assert {u.source for u in utts} == {"librispeech"}
    assert utts[0].audio_path == str(librispeech.absolute() / "1272" / "128104" / "1272-128104-0000.flac")
    assert read_wav(utts[0].audio_path)[1] == 16000
    # missing audio still listed, with the path it should have
    assert utts[1].audio_path.endswith("1272/128104/1272-128104-0001.flac")
    assert not Path(utts[1].audio_path).exists()
    assert "skipped 1 utterance(s)" in caplog.text and "84-121123-0009" in caplog.text
    # a root above the subset works too (recursive search)
    assert read_corpus("librispeech", librispeech.parent) == utts


def test_libritts(tmp_path: Path):
    root = tmp_path / "LibriTTS" / "dev-clean"
    d = root / "84" / "121123"
    _text(d / "84_121123_000008_000000.normalized.txt", "Go, do you hear?")
    _text(d / "84_121123_000008_000000.original.txt", "'Go, do you hear?'")
    _audio(d / "84_121123_000008_000000.wav", sr=24000)
    _text(d / "84_121123_000007_000001.original.txt", "Only the original text.")  # audio missing
    _audio(root / "652" / "130726" / "652_130726_000001_000000.wav", sr=24000)  # no transcript
    _text(root / "652" / "130726" / "652_130726_000002_000000.normalized.txt", "Second speaker.")
    _audio(root / "652" / "130726" / "652_130726_000002_000000.wav", sr=24000)

    utts = read_libritts(root)
    assert [u.utt_id for u in utts] == [
        "652_130726_000002_000000",
        "84_121123_000007_000001",
        "84_121123_000008_000000",
    ]
    assert [u.speaker for u in utts] == ["652", "84", "84"]
    assert [u.text for u in utts] == ["Second speaker.", "Only the original text.", "Go, do you hear?"]
    assert utts[2].audio_path == str(d.absolute() / "84_121123_000008_000000.wav")
    assert not Path(utts[1].audio_path).exists()
    assert {u.source for u in utts} == {"libritts"}
    assert read_wav(utts[2].audio_path)[1] == 24000


def test_vctk_092_prefers_mic1(tmp_path: Path, caplog):
    root = tmp_path / "VCTK-Corpus-0.92"
    _text(root / "txt" / "p225" / "p225_001.txt", "Please call Stella.\n")
    _text(root / "txt" / "p225" / "p225_002.txt", "Ask her to bring these things.")
    _text(root / "txt" / "p226" / "p226_001.txt", "Six spoons of fresh snow peas.")
    audio = root / "wav48_silence_trimmed"
    _audio(audio / "p225" / "p225_001_mic1.flac", sr=48000)
    _audio(audio / "p225" / "p225_001_mic2.flac", sr=48000)
    _audio(audio / "p225" / "p225_002_mic2.flac", sr=48000)  # only mic2 exists
    # p226_001 has no audio at all; p315 has audio but no transcripts
    _audio(audio / "p315" / "p315_001_mic1.flac", sr=48000)
    _audio(audio / "p315" / "p315_001_mic2.flac", sr=48000)

    with caplog.at_level(logging.WARNING):
        utts = read_corpus("vctk", root)
    assert [(u.utt_id, u.speaker) for u in utts] == [("p225_001", "p225"), ("p225_002", "p225"), ("p226_001", "p226")]
    assert utts[0].text == "Please call Stella."
    assert utts[0].audio_path == str(audio.absolute() / "p225" / "p225_001_mic1.flac")
    assert utts[1].audio_path.endswith("p225_002_mic2.flac")
    assert utts[2].audio_path == str(audio.absolute() / "p226" / "p226_001_mic1.flac")  # expected path
    assert not Path(utts[2].audio_path).exists()
    assert {u.source for u in utts} == {"vctk"}
    assert "skipped 1 utterance(s)" in caplog.text and "p315_001" in caplog.text


def test_vctk_080_wav48(tmp_path: Path):
    root = tmp_path / "VCTK-Corpus"
    _text(root / "txt" / "p225" / "p225_001.txt", "Please call Stella.")
    _text(root / "txt" / "p225" / "p225_003.txt", "Six spoons.")
    _audio(root / "wav48" / "p225" / "p225_001.wav", sr=48000)
    utts = read_vctk(root)
    assert [u.utt_id for u in utts] == ["p225_001", "p225_003"]
    assert utts[0].audio_path == str(root.absolute() / "wav48" / "p225" / "p225_001.wav")
    assert utts[1].audio_path == str(root.absolute() / "wav48" / "p225" / "p225_003.wav")  # missing, wav48 layout
    assert read_wav(utts[0].audio_path)[1] == 48000


def test_unknown_kind_names_the_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match=r"'timit'.*librispeech, libritts, vctk"):
        read_corpus("timit", tmp_path)


@pytest.mark.parametrize("kind", ["librispeech", "libritts", "vctk"])
def test_missing_or_empty_root_names_the_root(tmp_path: Path, kind: str):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        read_corpus(kind, missing)
    empty = tmp_path / "empty"
    _audio(empty / "stray" / "x.wav")  # files, but nothing this reader recognises
    with pytest.raises(FileNotFoundError, match=f"empty.*no {kind} transcripts"):
        read_corpus(kind, empty)
