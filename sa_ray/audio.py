"""Waveform I/O and resampling (soundfile + scipy; no torchaudio, which does not load here)."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of a mono float waveform; a no-op when the rates match."""
    wav = np.asarray(wav, dtype=np.float32)
    if sr_in == sr_out:
        return wav
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(wav, sr_out // g, sr_in // g).astype(np.float32)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Reads any libsndfile format (wav, flac, ...) as mono float32. Raises on unreadable files."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return wav.mean(axis=1), int(sr)


def write_wav(path: str | Path, wav: np.ndarray, sr: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16")


def rms_db(wav: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")
