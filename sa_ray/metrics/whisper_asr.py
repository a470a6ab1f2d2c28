"""Whisper speech recognition through transformers: the field's standard ASR for TTS intelligibility.

The one module that touches Whisper's API. Decoding is greedy (no sampling, one beam) so that the
same audio always gets the same transcript; the text comes back as Whisper wrote it (WER normalises).
"""

from __future__ import annotations

import numpy as np

from sa_ray.audio import resample
from sa_ray.metrics.hub import model_label, resolve_model


class WhisperASR:
    """Whisper from a local model directory or a hub id (e.g. openai/whisper-large-v3).

    `language`: the language token to force ("en"); None lets Whisper detect it per utterance. English-only
    checkpoints (*.en) take no language, and none is passed to them. On CUDA the model runs in float16,
    as Whisper is usually run on GPUs; on CPU in float32.
    """

    sample_rate = 16000

    def __init__(self, model: str, device: str = "cpu", language: str | None = "en", batch_size: int = 16) -> None:
        source, local_only = resolve_model(model)  # before importing transformers: a bad path fails fast
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.backend = f"whisper:{model_label(model)}"
        self.device, self.batch_size = device, batch_size
        self.dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        self.processor = WhisperProcessor.from_pretrained(source, local_files_only=local_only)
        self.model = (
            WhisperForConditionalGeneration.from_pretrained(source, local_files_only=local_only, dtype=self.dtype)
            .to(device)
            .eval()
        )
        self.sample_rate = self.processor.feature_extractor.sampling_rate
        gen = self.model.generation_config
        # Multilingual checkpoints are told the language and task (otherwise they may translate, or guess
        # the language); English-only ones reject both, and generation configs older than `lang_to_id`
        # cannot take them and fall back to their own forced_decoder_ids.
        self._prompt: dict = {}
        if getattr(gen, "is_multilingual", True) and hasattr(gen, "lang_to_id"):
            self._prompt = {"task": "transcribe", **({"language": language} if language else {})}

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        return self.transcribe_batch([(wav, sr)])[0]

    def transcribe_batch(self, items: list[tuple[np.ndarray, int]]) -> list[str]:
        """Transcripts of [(wav, sr), ...], in order, decoded `batch_size` at a time.

        Audio up to Whisper's window (30 s) is decoded in one pass; longer audio needs Whisper's
        sequential long-form algorithm, which decodes differently. The two kinds are batched separately,
        so that an item's transcript never depends on what it was batched with.
        """
        wavs = [resample(np.asarray(wav, np.float32), sr, self.sample_rate) for wav, sr in items]
        out = [""] * len(wavs)  # empty audio: nothing said (and the feature extractor rejects it)
        window = self.processor.feature_extractor.n_samples
        short = [i for i, w in enumerate(wavs) if 0 < len(w) <= window]
        long = [i for i, w in enumerate(wavs) if len(w) > window]
        for group, long_form in ((short, False), (long, True)):
            for start in range(0, len(group), self.batch_size):
                index = group[start : start + self.batch_size]
                for i, text in zip(index, self._decode([wavs[i] for i in index], long_form)):
                    out[i] = text
        return out

    def _decode(self, wavs: list[np.ndarray], long_form: bool) -> list[str]:
        import torch

        # Short-form input is padded to the 30 s window Whisper was trained on; long-form input is
        # padded only to the longest item, and the attention mask tells generate where each one ends.
        extra = {"truncation": False, "padding": "longest"} if long_form else {}
        feats = self.processor.feature_extractor(
            wavs, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True, **extra
        )
        with torch.inference_mode():
            ids = self.model.generate(
                feats.input_features.to(self.device, self.dtype),
                attention_mask=feats.attention_mask.to(self.device),
                do_sample=False,
                num_beams=1,
                **self._prompt,
            )
        # Whisper's text starts with the space of its first word token; nothing else is touched.
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
