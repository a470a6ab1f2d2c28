"""Waveform I/O and resampling (soundfile + scipy; no torchaudio, which does not load here)."""

from __future__ import annotations

import io
from math import gcd
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling of a mono float waveform; a no-op when the rates match."""
    from scipy.signal import resample_poly  # here: a second of imports that most of this module's users never need

    wav = np.asarray(wav, dtype=np.float32)
    if sr_in == sr_out:
        return wav
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(wav, sr_out // g, sr_in // g).astype(np.float32)


def read_wav(source: str | Path | BinaryIO) -> tuple[np.ndarray, int]:
    """Reads any libsndfile format (wav, flac, ...) from a path or a file object as mono float32. Raises on
    unreadable input."""
    wav, sr = sf.read(str(source) if isinstance(source, (str, Path)) else source, dtype="float32", always_2d=True)
    return wav.mean(axis=1), int(sr)


def read_mono(sound: sf.SoundFile, frames: int, block_samples: int = 2**18) -> np.ndarray:
    """At most `frames` frames of an open file, mixed down to mono float32 block by block: memory is the mono
    result plus one block (`block_samples` samples of all channels), whatever the channel count. Fewer frames
    come back when the file ends first (a header that promised more than the file holds)."""
    out = np.empty(max(0, frames), np.float32)
    block, n = max(1, block_samples // max(1, sound.channels)), 0
    while n < len(out):
        chunk = sound.read(min(block, len(out) - n), dtype="float32", always_2d=True)
        if not len(chunk):
            break
        out[n : n + len(chunk)] = chunk.mean(axis=1)
        n += len(chunk)
    return out[:n]


def wav_bytes(wav: np.ndarray, sr: int) -> bytes:
    """A 16-bit PCM WAV file's bytes (samples clipped to [-1, 1])."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_wav(path: str | Path, wav: np.ndarray, sr: int) -> None:
    """16-bit PCM in the format the name's extension says (wav, flac, ...), samples clipped to [-1, 1]."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16")


def rms_db(wav: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")
