"""Choosing the ASR and speaker-similarity backends of evaluation from a spec string.

ASR specs:  "pocketsphinx" (default; bundled, offline, with the domain LM of `sa_ray.evaluation.domain_asr`),
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

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

DEFAULT_ASR = "pocketsphinx"
DEFAULT_SIM = "resemblyzer"
DEFAULT_WHISPER = "openai/whisper-large-v3"
DEFAULT_WAVLM = "microsoft/wavlm-base-plus-sv"

# A Hugging Face hub id: "name" or "owner/name", of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?")


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


def make_asr(spec: str = DEFAULT_ASR, data_dir: str | Path | None = None, corpus_cfg=None, device: str = "cpu",
             domain_asr: Callable | None = None):
    """The ASR backend named by `spec` (see the module docstring); it has `.transcribe(wav, sr) -> str`,
    `.transcribe_batch([(wav, sr), ...]) -> [str, ...]` and `.backend`.

    "pocketsphinx" needs `data_dir` and `corpus_cfg` (its LM is built from the training text there);
    `domain_asr` replaces `sa_ray.evaluation.domain_asr` (imported lazily: evaluation imports the metrics).
    ValueError for an unknown spec, FileNotFoundError for a local model path that does not exist.
    """
    kind, model = _split(spec)
    if kind in ("pocketsphinx", DomainPocketSphinxASR.backend) and model is None:
        if data_dir is None or corpus_cfg is None:
            raise ValueError(f"ASR backend {spec!r} needs data_dir and corpus_cfg to build its domain LM")
        if domain_asr is None:
            from sa_ray.evaluation import domain_asr
        return DomainPocketSphinxASR(domain_asr(data_dir, corpus_cfg))
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
    raise ValueError(f"unknown speaker-similarity backend {spec!r}: expected 'resemblyzer' or "
                     "'wavlm:<local dir or hub id>'")


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
    """"kind:model" -> (kind, model); "kind" -> (kind, None). A spec with an empty model is an error."""
    kind, sep, model = str(spec).strip().partition(":")
    if sep and not model.strip():
        raise ValueError(f"backend spec {spec!r} names no model after ':'")
    return kind.strip().lower(), (model.strip() if sep else None)


# --------------------------------------------------------------------------------------------- #
# Model locations, shared by the transformers backends


def resolve_model(name: str) -> tuple[str, bool]:
    """(what to pass to `from_pretrained`, local_files_only) for a local model directory or a hub id.

    An existing directory wins over a hub id of the same spelling. A name that cannot be a hub id
    (absolute, ~ or ./ prefixed, or with more than one '/') must exist: FileNotFoundError naming it, raised
    before transformers is loaded. `local_files_only` follows HF_HUB_OFFLINE, so that an offline machine
    fails at once with the cache's error instead of waiting on network timeouts.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), _offline()
    if path.exists():
        raise FileNotFoundError(f"model path {name!r} is a file; expected a model directory")
    if name.startswith((".", "~", "/")) or not _HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"model directory {name!r} does not exist (and {name!r} is not a hub id)")
    return name, _offline()


def load_audio_model(name: str, model_class: str):
    """(feature extractor, model) of a transformers audio model: a local directory or hub id, where
    `model_class` names the transformers class (imported only now: a bad path fails before transformers)."""
    source, local_only = resolve_model(name)
    import transformers

    features = transformers.AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
    return features, getattr(transformers, model_class).from_pretrained(source, local_files_only=local_only)


def model_label(name: str) -> str:
    """The model's name in a backend string: a hub id as given, a local directory by its own name
    (a full path would make the same model's results look different on every machine)."""
    path = Path(name).expanduser()
    return path.resolve().name if path.is_dir() else name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
