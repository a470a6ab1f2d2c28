"""Speech recognition for intelligibility metrics. Offline default: pocketsphinx (bundles its en-us model).

Every result names the backend that produced it: WERs from different recognisers are not comparable.
"""

from __future__ import annotations

import numpy as np

from sa_ray.audio import resample


class PocketSphinxASR:
    backend = "pocketsphinx"
    sample_rate = 16000

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=self.sample_rate, loglevel="FATAL")

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        pcm = (np.clip(resample(wav, sr, self.sample_rate), -1.0, 1.0) * 32767).astype(np.int16)
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""
