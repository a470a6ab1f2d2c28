"""Speaker similarity from WavLM speaker-verification x-vectors through transformers
(e.g. microsoft/wavlm-base-plus-sv, the usual SIM encoder of zero-shot TTS papers).

Same conventions as `ResemblyzerSIM` (`sa_ray.metrics.speaker.SpeakerEncoder`): `similarity((wav, sr), (wav, sr))`
is the cosine of the two embeddings, and audio too short to embed gives a zero embedding, hence similarity 0.
"""

from __future__ import annotations

import numpy as np

from sa_ray.audio import resample
from sa_ray.metrics.hub import load_audio_model, model_label
from sa_ray.metrics.speaker import SpeakerEncoder


class WavLMSIM(SpeakerEncoder):
    def __init__(self, model: str, device: str = "cpu") -> None:
        self.backend = f"wavlm:{model_label(model)}"
        self.device = device
        self._features, self._model = load_audio_model(model, "WavLMForXVector")
        self._model = self._model.to(device).eval()
        self.sample_rate = self._features.sampling_rate
        self.dim = self._model.config.xvector_output_dim
        self._min_samples = _min_samples(self._model.config)

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        import torch

        wav = resample(np.asarray(wav, np.float32), sr, self.sample_rate)
        if len(wav) < self._min_samples:  # too short for the TDNN's context: no voice to compare
            return np.zeros(self.dim, np.float32)
        inputs = self._features(wav, sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.inference_mode():
            # One unpadded utterance: the attention mask would be all ones, so it is not passed.
            emb = self._model(input_values=inputs.input_values.to(self.device)).embeddings[0]
        return emb.float().cpu().numpy()


def _min_samples(cfg) -> int:
    """The fewest samples WavLMForXVector can embed: its statistics pooling takes a standard deviation
    over the TDNN's output frames, which needs at least 2 of them (1 gives NaN, 0 an error)."""
    frames = 2 + sum(d * (k - 1) for k, d in zip(cfg.tdnn_kernel, cfg.tdnn_dilation))
    for kernel, stride in reversed(list(zip(cfg.conv_kernel, cfg.conv_stride))):
        frames = (frames - 1) * stride + kernel  # the input length a conv layer needs for `frames` outputs
    return frames
