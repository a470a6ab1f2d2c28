"""Choosing the ASR and speaker-similarity backends of evaluation from a spec string.

ASR specs:  "pocketsphinx" (default; bundled, offline, with the domain LM of `sa_ray.metrics.asr.domain_asr`),
            "whisper:<local dir or hub id>" ("whisper" alone: openai/whisper-large-v3, the field's standard).
SIM specs:  "resemblyzer" (default; bundled, offline),
            "wavlm:<local dir or hub id>" ("wavlm" alone: microsoft/wavlm-base-plus-sv).
MOS specs:  "none" (default: no MOS predictor ships offline, so MOS is skipped and the run says so),
            "hf:<local dir or hub id>" (an audio model with one regression output, UTMOS-style).

Every object returned has a `.backend` string that goes beside each metric it produces: WERs of different
recognisers (and SIMs of different speaker encoders) are on different scales and must never be mixed.
The transformers backends are imported only when asked for: loading transformers costs seconds and
memory that the offline defaults do not need.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sa_ray.metrics import asr

DEFAULT_ASR = "pocketsphinx"
DEFAULT_SIM = "resemblyzer"
DEFAULT_WHISPER = "openai/whisper-large-v3"
DEFAULT_WAVLM = "microsoft/wavlm-base-plus-sv"


class DomainPocketSphinxASR:
    """A `PocketSphinxASR` with the domain LM, named by what it is rather than by its LM file's name.

    PocketSphinxASR names itself "pocketsphinx+lm:domain.lm"; evaluation has always recorded this
    configuration as "pocketsphinx-domain-lm", and a renamed backend would split its history in MLflow.
    """

    backend = "pocketsphinx-domain-lm"

    def __init__(self, asr) -> None:
        self.asr = asr

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        return self.asr.transcribe(wav, sr)

    def transcribe_batch(self, items: list[tuple[np.ndarray, int]]) -> list[str]:
        # pocketsphinx decodes one utterance at a time; the method exists so callers can batch any backend.
        return [self.asr.transcribe(wav, sr) for wav, sr in items]


def make_asr(
    spec: str = DEFAULT_ASR,
    data_dir: str | Path | None = None,
    corpus_cfg=None,
    device: str = "cpu",
    domain_asr: Callable | None = None,
):
    """The ASR backend named by `spec` (see the module docstring); it has `.transcribe(wav, sr) -> str`,
    `.transcribe_batch([(wav, sr), ...]) -> [str, ...]` and `.backend`.

    "pocketsphinx" needs `data_dir` and `corpus_cfg` (its LM is built from the training text there);
    `domain_asr` replaces `sa_ray.metrics.asr.domain_asr`, the builder of that LM.
    ValueError for an unknown spec, FileNotFoundError for a local model path that does not exist.
    """
    kind, model = _split(spec)
    if kind in ("pocketsphinx", DomainPocketSphinxASR.backend) and model is None:
        if data_dir is None or corpus_cfg is None:
            raise ValueError(f"ASR backend {spec!r} needs data_dir and corpus_cfg to build its domain LM")
        return DomainPocketSphinxASR((domain_asr or asr.domain_asr)(data_dir, corpus_cfg))
    if kind == "whisper":
        from sa_ray.metrics.whisper_asr import WhisperASR

        return WhisperASR(model or DEFAULT_WHISPER, device=device)
    raise ValueError(f"unknown ASR backend {spec!r}: expected 'pocketsphinx' or 'whisper:<local dir or hub id>'")


def make_sim(spec: str = DEFAULT_SIM, device: str = "cpu"):
    """The speaker-similarity backend named by `spec`; it has `.similarity((wav, sr), (wav, sr)) -> float`,
    `.embed(wav, sr)` and `.backend`. Errors as for `make_asr`."""
    kind, model = _split(spec)
    if kind == "resemblyzer" and model is None:
        from sa_ray.metrics.speaker import ResemblyzerSIM

        return ResemblyzerSIM()  # already named "resemblyzer"
    if kind == "wavlm":
        from sa_ray.metrics.wavlm_sim import WavLMSIM

        return WavLMSIM(model or DEFAULT_WAVLM, device=device)
    raise ValueError(
        f"unknown speaker-similarity backend {spec!r}: expected 'resemblyzer' or 'wavlm:<local dir or hub id>'"
    )


MOS_SKIPPED = "none (skipped: no MOS predictor; eval.mos=hf:<model dir> names one)"


def make_mos(spec: str = "none", device: str = "cpu"):
    """The MOS predictor named by `spec` (`.score(wav, sr) -> float`, `.backend`), or None for "none"."""
    kind, model = _split(spec)
    if kind == "none" and model is None:
        return None
    if kind == "hf" and model:
        from sa_ray.metrics.mos import HFMOS

        return HFMOS(model, device=device)
    raise ValueError(f"unknown MOS backend {spec!r}: expected 'none' or 'hf:<local dir or hub id>'")


def _split(spec: str) -> tuple[str, str | None]:
    """ "kind:model" -> (kind, model); "kind" -> (kind, None). A spec with an empty model is an error."""
    kind, sep, model = str(spec).strip().partition(":")
    if sep and not model.strip():
        raise ValueError(f"backend spec {spec!r} names no model after ':'")
    return kind.strip().lower(), (model.strip() if sep else None)
