"""A MOS predictor through transformers: any audio model with one regression output (a UTMOS-style
wav2vec2/WavLM/HuBERT fine-tuned on listening tests, saved in Hugging Face layout), from a local
directory or a hub id. No such weights ship offline, so evaluation skips MOS unless `eval.mos` names one.
"""

from __future__ import annotations

import numpy as np

from sa_ray.audio import resample
from sa_ray.metrics.hub import load_audio_model, model_label


class HFMOS:
    def __init__(self, model: str, device: str = "cpu") -> None:
        self.backend = f"hf:{model_label(model)}"
        self.device = device
        self._features, self._model = load_audio_model(model, "AutoModelForAudioClassification")
        if self._model.config.num_labels != 1:
            raise ValueError(
                f"MOS model {model!r} must predict one score (a regression head); it has "
                f"{self._model.config.num_labels} outputs"
            )
        self._model = self._model.to(device).eval()
        self.sample_rate = self._features.sampling_rate

    def score(self, wav: np.ndarray, sr: int) -> float:
        import torch

        wav = resample(np.asarray(wav, np.float32), sr, self.sample_rate)
        inputs = self._features(wav, sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.inference_mode():
            return float(self._model(input_values=inputs.input_values.to(self.device)).logits[0, 0])
