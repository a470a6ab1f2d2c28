"""The asr, wer and sim terms of `align.reward` (`sa_ray.reward_mix`): each rollout sample is rendered to speech by
the base's NAR model and the codec, then scored: its WER, its SIM to its speaker's real utterance, and SIM - WER."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sa_ray.data.examples import PromptBank
from sa_ray.metrics.speaker import cosine
from sa_ray.metrics.wer import wer
from sa_ray.preference import voice_prompt
from sa_ray.synthesis import CodecTTS, Request


def train_prompt_bank(data_dir: str | Path, prompt_frames: int, n_codebooks: int) -> PromptBank:
    """The training split's voice prompts with all codec layers: rollout drew each sample's prompt from it
    (layer 0 only), and the NAR model needs the prompt's every layer to render the sample."""
    columns = ["utt_id", "speaker"] + [f"codes_{i}" for i in range(n_codebooks)]
    rows = pq.read_table(Path(data_dir) / "train", columns=columns).to_pylist()
    return PromptBank.from_rows(rows, prompt_frames, n_codebooks)


class AsrSimReward:
    """Scores rollout samples (rows with text, prompt_ids, sample_ids, seed, iteration, speaker, utt_id and the
    real utterance's audio_path). `tts` renders them (only its NAR model and codec run), `bank` gives back the
    voice prompts rollout drew at `seed`."""

    def __init__(self, tts: CodecTTS, asr, sim, bank: PromptBank, seed: int):
        self.tts, self.asr, self.sim, self.bank, self.seed = tts, asr, sim, bank, seed

    def score(self, sample: dict) -> tuple[float, float]:
        """(WER, SIM) of one sample's speech; speech that came out empty hears nothing and resembles no one."""
        prompt = voice_prompt(self.bank, sample, self.seed, int(sample["iteration"]))
        text_ids = self.tts.vocab.prompt_text_ids(sample["prompt_ids"])
        out = self.tts.finish(
            Request(sample["text"], prompt, int(sample["seed"])), list(sample["sample_ids"]), text_ids
        )
        sr = self.tts.codec.sample_rate
        hyp = self.asr.transcribe(out.wav, sr) if len(out.wav) else ""
        sim = cosine(self.sim.embed(out.wav, sr), self.sim.embed_file(sample["audio_path"])) if len(out.wav) else 0.0
        return wer([sample["text"]], [hyp]), sim

    def rewards(self, samples: list[dict]) -> dict[str, list[float] | np.ndarray]:
        """Per sample, in order: `sample_wer`, `sample_sim` and `reward` = sample_sim - sample_wer."""
        wers, sims = [], []
        for sample in samples:
            w, s = self.score(sample)
            wers.append(w)
            sims.append(s)
        return {"sample_wer": wers, "sample_sim": sims, "reward": np.asarray(sims) - np.asarray(wers)}
