"""Codecs behind one interface (`Codec`): the offline mel k-means codec and transformers' EnCodec/Mimi."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sa_ray.codec.base import Codec
from sa_ray.config import CodecConfig, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["Codec", "load_or_fit_codec", "load_codec"]


def load_codec(cfg: CodecConfig, codec_dir: str | Path, device: str | torch.device = "cpu") -> Codec:
    """The codec a prepared dataset was made with (mel_kmeans: its saved codebooks, on the CPU; the neural codecs
    on `device`)."""
    if cfg.kind == "mel_kmeans":
        from sa_ray.codec.mel_kmeans import MelKMeansCodec

        return MelKMeansCodec.load(codec_dir)
    from sa_ray.codec.hf_codec import HFCodec

    if cfg.path:
        return HFCodec.from_pretrained(cfg.path, n_codebooks=cfg.n_codebooks, device=device)
    # No weights given: a seeded random model with filled codebooks (smoke runs; its audio is noise).
    return HFCodec.from_config(cfg.kind, seed=0, init_codebooks=True, n_codebooks=cfg.n_codebooks, device=device)


def load_or_fit_codec(
    cfg: CodecConfig, codec_dir: str | Path, seed: int, training_audio: Callable[[], Iterable[tuple[np.ndarray, int]]]
) -> Codec:
    """Loads the codec saved in `codec_dir`, fitting and saving it first when it is trained here.

    A fitted codec is never refitted while the config asks for the same shape: the codes already
    written with it must keep their meaning.
    """
    codec_dir = Path(codec_dir)
    if cfg.kind != "mel_kmeans":
        return load_codec(cfg, codec_dir)
    from sa_ray.codec.mel_kmeans import MelKMeansCodec

    if cfg.path:  # a fitted codec to use as is (e.g. the one shipped with the base model in checkpoints/base/codec)
        if not (Path(cfg.path) / "codec.json").is_file():
            raise FileNotFoundError(f"codec.path={cfg.path} holds no fitted mel_kmeans codec (codec.json)")
        codec = MelKMeansCodec.load(cfg.path)
        shape = (codec.n_codebooks, codec.codebook_size, codec.stack)
        if shape != (cfg.n_codebooks, cfg.codebook_size, cfg.stack):
            raise ConfigError(
                f"codec.path={cfg.path} is a {shape[0]} x {shape[1]} codec with stack {shape[2]}; the config "
                f"asks for {cfg.n_codebooks} x {cfg.codebook_size} with stack {cfg.stack}"
            )
        codec.save(codec_dir)
        return codec
    if (codec_dir / "codec.json").is_file():
        codec = MelKMeansCodec.load(codec_dir)
        if (codec.n_codebooks, codec.codebook_size, codec.stack) == (cfg.n_codebooks, cfg.codebook_size, cfg.stack):
            return codec
        # The config asks for another codec: its data is re-prepared from scratch, so refit.

    codec = MelKMeansCodec.fit(
        training_audio(),
        n_codebooks=cfg.n_codebooks,
        codebook_size=cfg.codebook_size,
        stack=cfg.stack,
        seed=seed,
        vocoder=cfg.vocoder,
    )
    codec.save(codec_dir)
    return codec
