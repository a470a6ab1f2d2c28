"""The record every corpus source produces before validation and tokenisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Utterance:
    utt_id: str  # unique within a prepared dataset
    speaker: str
    text: str  # the transcript as written (normalised later by sa_ray.text)
    audio_path: str
    source: str  # "mbrola", "festival", "librispeech", "libritts", "vctk", ...
    # Phone-level alignment reported by the synthesiser itself (None for recorded corpora):
    # symbols and durations in milliseconds, covering the audio file from its first sample.
    phones: tuple[str, ...] | None = None
    phone_ms: tuple[int, ...] | None = None
    # A problem the reader found (quarantined later, with this rule and detail), e.g. a transcript that is not text
    rule: str | None = None
    detail: str | None = None

    def to_row(self) -> dict:
        row = asdict(self)
        row["phones"] = list(self.phones) if self.phones is not None else None
        row["phone_ms"] = list(self.phone_ms) if self.phone_ms is not None else None
        return row
