"""An offline discrete codec: residual k-means over stacked log-mel frames, decoded with HiFi-GAN.

No pretrained neural codec can be downloaded here, so codes come from quantising the mel features a
trained vocoder understands. `stack` consecutive mel frames (hop 256 at 22050 Hz) form one code frame,
so stack=2 gives 43.07 code frames a second. Level 0's codebook quantises the frame itself and is the
token the AR model predicts; each further level quantises what the previous levels left over, and
decoding sums the centroids of however many levels it is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from sa_ray.codec import hifigan, mel
from sa_ray.codec.base import Codec

log = logging.getLogger(__name__)

CODEBOOKS_FILE = "codebooks.safetensors"
CONFIG_FILE = "codec.json"
_SHIPPED_MODELS = ("universal", "LJSpeech")
_CHUNK = 32768  # rows per distance matmul: bounds memory at chunk x codebook_size floats


def stack_frames(logmel: np.ndarray, stack: int) -> np.ndarray:
    """`[N_MELS, T]` -> `[ceil(T / stack), stack * N_MELS]`; the last frame repeats to fill a group."""
    n_frames = logmel.shape[1]
    pad = -n_frames % stack
    if pad:
        logmel = np.concatenate([logmel, np.repeat(logmel[:, -1:], pad, axis=1)], axis=1)
    return np.ascontiguousarray(logmel.T.reshape(-1, stack * mel.N_MELS))


def unstack_frames(features: np.ndarray, stack: int) -> np.ndarray:
    """Inverse of `stack_frames` (padding frames included): `[frames, stack * N_MELS]` -> `[N_MELS, frames * stack]`."""
    return np.ascontiguousarray(features.reshape(-1, mel.N_MELS).T)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for each row of x."""
    c_sq = centroids.pow(2).sum(1)
    idx, dist = [], []
    for chunk in x.split(_CHUNK):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin.
        d = c_sq - 2.0 * chunk @ centroids.T
        best, arg = d.min(1)
        idx.append(arg)
        dist.append((best + chunk.pow(2).sum(1)).clamp_min(0.0))
    return torch.cat(idx), torch.cat(dist)


def _kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centroid is drawn with probability proportional to D(x)^2."""
    first = int(torch.randint(len(x), (1,), generator=gen))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        # Duplicated points leave D^2 all zero once every distinct point is a centroid.
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        pick = int(torch.multinomial(weights.double(), 1, generator=gen))
        centroids.append(x[pick])
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centroids)


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, n_iter: int = 30, init_sample: int = 20000) -> torch.Tensor:
    """Lloyd's k-means (k-means++ seeded on a subsample), float32 centroids `[k, D]`, deterministic given gen."""
    init_rows = torch.randperm(len(x), generator=gen)[:init_sample]
    centroids = _kmeans_pp_init(x[init_rows], k, gen)
    assign = torch.full((len(x),), -1, dtype=torch.long)
    for _ in range(n_iter):
        new_assign, d2 = _nearest(x, centroids)
        changed = int((new_assign != assign).sum())
        assign = new_assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x.double())
        updated = (sums / counts.clamp_min(1).unsqueeze(1)).float()
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            # Re-seed empty clusters on the worst-served points rather than letting them go to waste.
            updated[empty] = x[d2.topk(len(empty)).indices]
        centroids = updated
        if changed <= len(x) // 1000:
            break
    return centroids


class MelKMeansCodec(Codec):
    """Residual k-means codes over stacked HiFi-GAN log-mel frames.

    `vocoder`: "hifigan" (the shipped universal generator), "hifigan:LJSpeech", "hifigan:<path to a
    .pth.tar or .safetensors generator, config.json beside it>", or "griffinlim". Missing HiFi-GAN
    weights fall back to Griffin-Lim with a warning.
    """

    sample_rate = mel.SAMPLE_RATE

    def __init__(self, codebooks: np.ndarray, stack: int, vocoder: str = "hifigan"):
        codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        if stack < 1 or codebooks.ndim != 3 or codebooks.shape[2] != stack * mel.N_MELS:
            raise ValueError(
                f"codebooks must have shape [levels, size, stack * {mel.N_MELS}] with stack >= 1, "
                f"got {codebooks.shape} and stack={stack}"
            )
        if not (vocoder == "hifigan" or vocoder == "griffinlim" or vocoder.startswith("hifigan:")):
            raise ValueError(f"unknown vocoder {vocoder!r}")
        self.codebooks = codebooks
        self._codebooks_t = torch.from_numpy(codebooks)
        self.stack = stack
        self.n_codebooks, self.codebook_size = codebooks.shape[:2]
        self.frame_rate = mel.SAMPLE_RATE / mel.HOP / stack
        self.vocoder = vocoder
        self._warned_fallback = False

    @classmethod
    def fit(
        cls,
        wavs: Iterable[tuple[np.ndarray, int]],
        n_codebooks: int = 4,
        codebook_size: int = 256,
        stack: int = 2,
        seed: int = 0,
        max_frames: int = 100_000,
        n_iter: int = 30,
        vocoder: str = "hifigan",
    ) -> MelKMeansCodec:
        """Fits the residual codebooks level by level on (wav, sample_rate) pairs; deterministic in seed."""
        feats = [stack_frames(mel.log_mel(wav, sr), stack) for wav, sr in wavs]
        if not feats:
            raise ValueError("fit needs at least one waveform")
        x = torch.from_numpy(np.concatenate(feats))
        gen = torch.Generator().manual_seed(seed)
        if len(x) > max_frames:
            x = x[torch.randperm(len(x), generator=gen)[:max_frames]]
        if len(x) < codebook_size:
            raise ValueError(f"{len(x)} training frames cannot fill a codebook of {codebook_size}")
        levels = []
        for _ in range(n_codebooks):
            centroids = kmeans(x, codebook_size, gen, n_iter=n_iter)
            levels.append(centroids)
            x = x - centroids[_nearest(x, centroids)[0]]
        return cls(torch.stack(levels).numpy(), stack, vocoder)

    @property
    def content_hash(self) -> str:
        """sha256 of the code -> mel mapping (codebooks and stack): equal hashes mean equal meanings of codes."""
        h = hashlib.sha256(f"mel_kmeans:stack={self.stack}:shape={self.codebooks.shape}:".encode())
        h.update(self.codebooks.astype("<f4").tobytes())
        return h.hexdigest()

    def features(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Stacked log-mel frames of a mono waveform: float32 `[frames, stack * N_MELS]`."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"wav must be a non-empty mono 1-D array, got shape {wav.shape}")
        return stack_frames(mel.log_mel(wav, sr), self.stack)

    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        residual = torch.from_numpy(self.features(wav, sr))
        codes = []
        for level in self._codebooks_t:
            idx = _nearest(residual, level)[0]
            codes.append(idx)
            residual = residual - level[idx]
        return torch.stack(codes).numpy().astype(np.int64)

    def codes_to_logmel(self, codes: np.ndarray) -> np.ndarray:
        """The log-mel `[N_MELS, frames * stack]` that the first `codes.shape[0]` levels describe."""
        codes = self._check_codes(codes)
        summed = np.zeros((codes.shape[1], self.codebooks.shape[2]), dtype=np.float32)
        for level, idx in enumerate(codes):
            summed += self.codebooks[level][idx]
        return unstack_frames(summed, self.stack)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        logmel = self.codes_to_logmel(codes)
        if logmel.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        generator = self._generator()
        if generator is None:
            return mel.griffin_lim(logmel)
        return generator.vocode(logmel)

    def _generator(self) -> hifigan.HiFiGAN | None:
        if self.vocoder == "griffinlim":
            return None
        arg = self.vocoder.partition(":")[2] or "universal"
        try:
            if arg in _SHIPPED_MODELS:
                return hifigan.cached_hifigan(model=arg)
            return hifigan.cached_hifigan(checkpoint=arg)
        except hifigan.HiFiGANWeightsNotFound as err:
            if not self._warned_fallback:
                log.warning("HiFi-GAN unavailable, decoding with Griffin-Lim instead (much lower quality): %s", err)
                self._warned_fallback = True
            return None

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"codebooks": self.codebooks}, str(directory / CODEBOOKS_FILE))
        config = {
            "type": "mel_kmeans",
            "stack": self.stack,
            "n_codebooks": self.n_codebooks,
            "codebook_size": self.codebook_size,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "mel": {"n_mels": mel.N_MELS, "n_fft": mel.N_FFT, "hop": mel.HOP, "fmin": mel.FMIN, "fmax": mel.FMAX},
            "vocoder": self.vocoder,
            "content_hash": self.content_hash,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, vocoder: str | None = None) -> MelKMeansCodec:
        """Loads a saved codec; `vocoder` overrides the saved one. Raises ValueError on a corrupt save."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text())
        if config.get("type") != "mel_kmeans":
            raise ValueError(f"{directory}: not a mel_kmeans codec ({config.get('type')!r})")
        codec = cls(
            load_file(str(directory / CODEBOOKS_FILE))["codebooks"], int(config["stack"]), vocoder or config["vocoder"]
        )
        if codec.content_hash != config["content_hash"]:
            raise ValueError(f"{directory}: codebooks do not match the content hash in {CONFIG_FILE}")
        return codec
