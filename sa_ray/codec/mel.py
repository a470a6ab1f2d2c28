"""The log-mel spectrogram the HiFi-GAN V1 generators were trained on, and a Griffin-Lim inverse.

The analysis follows HiFi-GAN's `meldataset.mel_spectrogram` exactly (reflect-pad (n_fft-hop)/2,
center=False, magnitude with a 1e-9 floor, slaney mel filterbank, natural log clamped at 1e-5): any
deviation shifts the features the trained vocoder expects and audibly degrades its output. With this
framing a waveform of N samples gives N // HOP frames, and the vocoder turns T frames into T * HOP
samples.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from sa_ray.audio import resample

SAMPLE_RATE = 22050
N_FFT = 1024
WIN_SIZE = 1024
HOP = 256
N_MELS = 80
FMIN = 0.0
FMAX = 8000.0
LOG_FLOOR = float(np.log(1e-5))  # the value of a silent mel bin

_PAD = (N_FFT - HOP) // 2


@lru_cache(maxsize=1)
def _mel_filterbank_np() -> np.ndarray:
    import librosa  # imported lazily: it costs about a second and only this module needs it

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX).astype(np.float32)


@lru_cache(maxsize=1)
def _mel_filterbank() -> torch.Tensor:
    return torch.from_numpy(_mel_filterbank_np())


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    return torch.hann_window(WIN_SIZE)


def log_mel_torch(wav: torch.Tensor) -> torch.Tensor:
    """Log-mel of 22050 Hz waveforms `[..., N]` -> `[..., N_MELS, N // HOP]` (float32)."""
    if wav.shape[-1] == 0:
        raise ValueError("cannot compute a mel spectrogram of an empty waveform")
    lead = wav.shape[:-1]
    x = wav.reshape(-1, wav.shape[-1]).float()
    # Reflect padding needs more samples than the pad; a short tail of zeros keeps tiny inputs legal
    # and yields at least two frames.
    if x.shape[-1] < 2 * HOP:
        x = torch.nn.functional.pad(x, (0, 2 * HOP - x.shape[-1]))
    x = torch.nn.functional.pad(x.unsqueeze(1), (_PAD, _PAD), mode="reflect").squeeze(1)
    spec = torch.stft(
        x, N_FFT, hop_length=HOP, win_length=WIN_SIZE, window=_window(), center=False, return_complex=True
    )
    mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    mel = torch.log(torch.clamp(_mel_filterbank() @ mag, min=1e-5))
    return mel.reshape(*lead, N_MELS, mel.shape[-1])


def log_mel(wav: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Log-mel of a mono waveform at any rate (resampled to 22050 Hz) -> float32 `[N_MELS, frames]`."""
    wav = resample(np.asarray(wav, dtype=np.float32).reshape(-1), sr, SAMPLE_RATE)
    with torch.inference_mode():
        return log_mel_torch(torch.from_numpy(np.ascontiguousarray(wav))).numpy()


def griffin_lim(logmel: np.ndarray, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """A vocoder-free inverse of `log_mel`: float32 wav of `frames * HOP` samples at 22050 Hz.

    Much buzzier than HiFi-GAN; it exists so decoding still works where the trained weights are
    absent. Seeded phase initialisation keeps the output reproducible.
    """
    import librosa

    logmel = np.asarray(logmel, dtype=np.float32)
    if logmel.ndim != 2 or logmel.shape[0] != N_MELS:
        raise ValueError(f"logmel must have shape [{N_MELS}, frames], got {logmel.shape}")
    n_frames = logmel.shape[1]
    mag = librosa.feature.inverse.mel_to_stft(
        np.exp(logmel), sr=SAMPLE_RATE, n_fft=N_FFT, power=1.0, fmin=FMIN, fmax=FMAX
    )
    # librosa's centred frames sit HOP/2 earlier than ours (pad (N_FFT-HOP)/2, uncentred): shift the
    # result by that much so the output lines up with the analysed waveform.
    wav = librosa.griffinlim(
        mag,
        n_iter=n_iter,
        hop_length=HOP,
        win_length=WIN_SIZE,
        n_fft=N_FFT,
        center=True,
        random_state=np.random.default_rng(seed),
    )
    wav = np.concatenate([np.zeros(HOP // 2, dtype=np.float32), wav.astype(np.float32)])
    out = np.zeros(n_frames * HOP, dtype=np.float32)
    n = min(len(out), len(wav))
    out[:n] = wav[:n]
    return np.clip(out, -1.0, 1.0)
