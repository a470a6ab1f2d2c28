"""The one codec interface every stage talks to.

A codec turns a mono waveform into integer codes `[n_codebooks, frames]` (residual layers; layer 0 is
the one the AR model predicts) and back. Implementations: `mel_kmeans` (offline, trained on the
corpus) and `hf_codec` (EnCodec / Mimi through transformers).
"""

from __future__ import annotations

import abc

import numpy as np


class Codec(abc.ABC):
    """encode(wav, sr) -> int64 codes [n_codebooks, frames]; decode(codes) -> float32 wav at sample_rate."""

    sample_rate: int
    frame_rate: float
    n_codebooks: int
    codebook_size: int

    @abc.abstractmethod
    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray: ...

    @abc.abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray: ...

    def _check_codes(self, codes: np.ndarray, min_layers: int = 1) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or not (min_layers <= codes.shape[0] <= self.n_codebooks):
            raise ValueError(
                f"codes must have shape [layers, frames] with {min_layers}..{self.n_codebooks} layers, "
                f"got {codes.shape}"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        return codes.astype(np.int64)
