"""Readers for recorded corpora: LibriSpeech, LibriTTS and VCTK directory layouts.

Readers only list files and read transcripts; audio is loaded (and checked) later, in parallel, by
the validation stage. That is also why an utterance whose audio file is missing is still returned
with the path its audio should have: validation quarantines it with a reason, where a reader
dropping it would lose it silently. Audio without a transcript cannot become an utterance; it is
skipped, and the count is logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sa_ray.corpus.types import Utterance

log = logging.getLogger(__name__)


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"corpus root {str(path)!r} does not exist or is not a directory")
    return path


def _files(root: Path, *suffixes: str) -> list[Path]:
    """Every file under root whose name ends with one of the suffixes, in a stable order. Hidden files are not
    the corpus's (macOS leaves `._<name>.flac` resource forks and .DS_Store beside every file it copies)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.name.endswith(suffixes)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


class NotText(ValueError):
    """A transcript file that is not UTF-8 text (binary bytes, NUL characters)."""


def _read_text(path: Path) -> str:
    """A transcript file's text; NotText when it holds something else (no guessing at a binary file's lines)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotText(f"{path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 4]!r})") from None
    if "\x00" in text:
        raise NotText(f"{path} is not text (it holds NUL bytes)")
    return text.strip()


def _unreadable(path: Path, utt_id: str, speaker: str, source: str, why: str) -> Utterance:
    """One quarantine entry for a transcript file that could not be read: named, never silently dropped."""
    return Utterance(utt_id, speaker, "", str(path), source, rule="unreadable_transcript", detail=why)


def _finish(utts: list[Utterance], skipped: list[str], root: Path, source: str, expected: str) -> list[Utterance]:
    """Logs the utterances skipped for want of a transcript, refuses an empty corpus, sorts by utt_id."""
    if skipped:
        log.warning(
            "%s: skipped %d utterance(s) with audio but no transcript under %s (e.g. %s)",
            source,
            len(skipped),
            root,
            ", ".join(skipped[:3]),
        )
    if not utts:
        raise FileNotFoundError(f"corpus root {str(root)!r} holds no {source} transcripts; expected {expected}")
    return sorted(utts, key=lambda u: (u.utt_id, u.audio_path))


def read_librispeech(root: str | Path) -> list[Utterance]:
    """root/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt, lines "<utt_id> <TRANSCRIPT>", with
    <utt_id>.flac beside it. Any directory above the speakers works as root (files are searched
    recursively). A line without a transcript gives an utterance with empty text (quarantined later).
    """
    base = _check_root(root)
    utts, listed = [], set()
    for trans in _files(base, ".trans.txt"):
        try:
            lines = _read_text(trans).splitlines()
        except NotText as e:  # one entry for the file: its bytes are no utterance ids
            utts.append(_unreadable(trans, trans.name, trans.name.split("-")[0], "librispeech", str(e)))
            continue
        for line in lines:
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            listed.add(audio)
            utts.append(
                Utterance(
                    utt_id=utt_id,
                    speaker=utt_id.split("-")[0],
                    text=text.strip(),
                    audio_path=str(audio),
                    source="librispeech",
                )
            )
    skipped = [p.stem for p in _files(base, ".flac") if p not in listed]
    return _finish(
        utts,
        skipped,
        base,
        "librispeech",
        "<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with <utt_id>.flac beside it",
    )


def read_libritts(root: str | Path) -> list[Utterance]:
    """root/<speaker>/<chapter>/<utt_id>.normalized.txt (or, failing that, .original.txt) with
    <utt_id>.wav beside it; the speaker is the first "_" field of the utt_id (84_121123_000008_000000).
    """
    base = _check_root(root)
    transcripts: dict[Path, Path] = {}  # audio path -> transcript file, normalized preferred
    for txt in _files(base, ".original.txt", ".normalized.txt"):
        stem = txt.name.removesuffix(".original.txt").removesuffix(".normalized.txt")
        audio = txt.parent / f"{stem}.wav"
        if txt.name.endswith(".normalized.txt") or audio not in transcripts:
            transcripts[audio] = txt
    utts = []
    for audio, txt in transcripts.items():
        try:
            text = _read_text(txt)
        except NotText as e:
            utts.append(_unreadable(txt, audio.stem, audio.stem.split("_")[0], "libritts", str(e)))
            continue
        utts.append(Utterance(audio.stem, audio.stem.split("_")[0], text, str(audio), "libritts"))
    skipped = [p.stem for p in _files(base, ".wav") if p not in transcripts]
    return _finish(
        utts,
        skipped,
        base,
        "libritts",
        "<root>/<speaker>/<chapter>/<utt_id>.normalized.txt with <utt_id>.wav beside it",
    )


# VCTK audio locations for one utterance, best first: release 0.92 (silence-trimmed FLAC, two
# microphones; mic1 first, the usual choice of TTS recipes) then release 0.80 (wav48 WAV).
_VCTK_AUDIO: list[Callable[[Path, str, str], Path]] = [
    lambda root, spk, utt: root / "wav48_silence_trimmed" / spk / f"{utt}_mic1.flac",
    lambda root, spk, utt: root / "wav48_silence_trimmed" / spk / f"{utt}_mic2.flac",
    lambda root, spk, utt: root / "wav48" / spk / f"{utt}.wav",
]


def read_vctk(root: str | Path) -> list[Utterance]:
    """root/txt/<spk>/<spk>_<nnn>.txt with audio in root/wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac
    (mic2 when mic1 is absent) or root/wav48/<spk>/<spk>_<nnn>.wav.

    When no audio file exists, the utterance gets the path its audio would have in the layout the
    root uses (wav48 for a root that only has wav48/, else the mic1 FLAC).
    """
    base = _check_root(root)
    fallback = (
        _VCTK_AUDIO[2]
        if (base / "wav48").is_dir() and not (base / "wav48_silence_trimmed").is_dir()
        else _VCTK_AUDIO[0]
    )
    utts = []
    transcribed: set[tuple[str, str]] = set()
    txt_dir = base / "txt"
    for txt in _files(txt_dir, ".txt") if txt_dir.is_dir() else []:
        spk, utt_id = txt.parent.name, txt.stem
        audio = next(
            (p for p in (f(base, spk, utt_id) for f in _VCTK_AUDIO) if p.is_file()), fallback(base, spk, utt_id)
        )
        transcribed.add((spk, utt_id))
        try:
            utts.append(Utterance(utt_id, spk, _read_text(txt), str(audio), "vctk"))
        except NotText as e:
            utts.append(_unreadable(txt, utt_id, spk, "vctk", str(e)))
    audio_only = {
        (p.parent.name, p.stem.removesuffix("_mic1").removesuffix("_mic2"))
        for d in ("wav48_silence_trimmed", "wav48")
        if (base / d).is_dir()
        for p in _files(base / d, ".flac", ".wav")
    }
    skipped = [utt for _, utt in sorted(audio_only - transcribed)]
    return _finish(
        utts,
        skipped,
        base,
        "vctk",
        "<root>/txt/<spk>/<spk>_<nnn>.txt with <root>/wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac "
        "or <root>/wav48/<spk>/<spk>_<nnn>.wav",
    )


READERS: dict[str, Callable[[str | Path], list[Utterance]]] = {
    "librispeech": read_librispeech,
    "libritts": read_libritts,
    "vctk": read_vctk,
}


def read_corpus(kind: str, root: str | Path) -> list[Utterance]:
    """Every utterance of a recorded corpus of the given kind, sorted by utt_id."""
    if kind not in READERS:
        raise ValueError(
            f"unknown corpus kind {kind!r}; valid kinds: {', '.join(READERS)} "
            "(the synthetic corpus is built by sa_ray.corpus.synthetic, not read)"
        )
    return READERS[kind](root)
