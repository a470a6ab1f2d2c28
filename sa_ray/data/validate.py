"""Input rules for utterances. A broken rule is a quarantine reason (or, in strict mode, an error).

Every reason is a short stable code (for counting and filtering) plus a detail for people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf

from sa_ray.audio import read_wav, resample, rms_db
from sa_ray.config import PrepareConfig
from sa_ray.text import has_letters

# Every rule the validation stage applies, in the order it applies them.
RULES = (
    "duplicate_id",
    "unreadable_transcript",  # found by the corpus reader: a transcript file that is not text
    "empty_transcript",
    "non_text_transcript",
    "unreadable_audio",
    "empty_audio",
    "too_short",
    "too_long",
    "silent_audio",
    "codec_failed",  # the codec's encode raised on audio that passed every rule before it
)


class BadInputError(ValueError):
    """Raised in strict mode: names the file and the rule it broke."""

    def __init__(self, utt_id: str, path: str, rule: str, detail: str):
        self.utt_id, self.path, self.rule, self.detail = utt_id, path, rule, detail
        super().__init__(f"{path} (utt_id {utt_id}) broke rule {rule}: {detail}")

    def __reduce__(self):  # survive the trip back from a Ray worker with its fields intact
        return (BadInputError, (self.utt_id, self.path, self.rule, self.detail))


@dataclass(frozen=True)
class Rejection:
    rule: str
    detail: str


def check_transcript(text: str | None) -> Rejection | None:
    if text is None or not text.strip():
        return Rejection("empty_transcript", "the transcript is empty")
    if not has_letters(text):
        return Rejection("non_text_transcript", f"the transcript has no letters: {text[:40]!r}")
    return None


def load_checked_audio(
    path: str, target_sr: int, rules: PrepareConfig
) -> tuple[np.ndarray | None, int, Rejection | None]:
    """Reads, resamples to `target_sr` and checks one file; returns (wav, original rate, rejection).

    The duration is read from the header first: a file longer than prepare.max_seconds is refused before it is
    decoded (hours of silence compress to a few kilobytes of FLAC and decode to gigabytes)."""
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile raises several types for missing, truncated or foreign files
        return None, 0, Rejection("unreadable_audio", f"{type(e).__name__}: {str(e)[:200]}")
    if info.samplerate > 0 and info.frames / info.samplerate > rules.max_seconds:
        seconds = info.frames / info.samplerate
        return (
            None,
            info.samplerate,
            Rejection(
                "too_long", f"{seconds:.2f} s (from the header, not decoded) > prepare.max_seconds={rules.max_seconds}"
            ),
        )
    try:
        wav, sr = read_wav(path)
    except Exception as e:  # libsndfile raises several types for missing, truncated or foreign files
        return None, 0, Rejection("unreadable_audio", f"{type(e).__name__}: {str(e)[:200]}")
    if len(wav) == 0:
        return None, sr, Rejection("empty_audio", "the file holds no samples")
    seconds = len(wav) / sr
    if seconds < rules.min_seconds:
        return None, sr, Rejection("too_short", f"{seconds:.2f} s < prepare.min_seconds={rules.min_seconds}")
    if seconds > rules.max_seconds:
        return None, sr, Rejection("too_long", f"{seconds:.2f} s > prepare.max_seconds={rules.max_seconds}")
    if not np.isfinite(wav).all():
        return None, sr, Rejection("unreadable_audio", "the samples contain NaN or infinity")
    level = rms_db(wav)
    if level < rules.silence_dbfs:
        return None, sr, Rejection("silent_audio", f"RMS {level:.1f} dBFS < prepare.silence_dbfs={rules.silence_dbfs}")
    return resample(wav, sr, target_sr), sr, None
