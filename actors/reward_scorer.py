"""RewardScorer role: loads the base's NAR model, the codec, the ASR and the speaker encoder ONCE, then rewards
rollout samples for the asr, wer and sim terms of `align.reward` (`sa_ray.rewards`). The pipeline runs
`align.reward_workers` of them side by side: every sample goes through NAR, vocoder and ASR."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray.codec import load_codec
from sa_ray.config import Config
from sa_ray.metrics.backends import make_asr, make_sim
from sa_ray.rewards import AsrSimReward, train_prompt_bank
from sa_ray.synthesis import CodecTTS, Spelling


class RewardScorer(Metered):
    def __init__(self, cfg: Config, base_dir: str):
        run_dir = Path(cfg.run_dir)
        codec = load_codec(cfg.codec, run_dir / "codec")
        device = role_device("reward", cfg.resources.reward.num_gpus)
        # holds the base AR too; rendering never runs it
        tts = CodecTTS.load(base_dir, codec, Spelling.of_config(cfg), device=device)
        bank = train_prompt_bank(run_dir / "data", cfg.model.prompt_frames(codec.frame_rate), codec.n_codebooks)
        self.scorer = AsrSimReward(
            tts, make_asr(cfg.eval.asr, run_dir / "data", cfg.corpus), make_sim(cfg.eval.sim), bank, cfg.align.seed
        )

    @metered
    def reward(self, batch: pd.DataFrame) -> pd.DataFrame:
        """`batch` with each sample's `sample_wer`, `sample_sim` and `reward`."""
        return batch.assign(**self.scorer.rewards(batch.to_dict("records")))
