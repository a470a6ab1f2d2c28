"""The ASR/SIM reward of ranked pairs (`sa_ray.rewards`), on stand-in models: which speech is scored against what,
in which order, and how WER and SIM make the reward. Real models score real samples in tests/test_align.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sa_ray.audio import write_wav
from sa_ray.data.examples import PromptBank
from sa_ray.metrics.speaker import SpeakerEncoder
from sa_ray.preference import voice_prompt
from sa_ray.rewards import AsrSimReward, train_prompt_bank

SR = 16000


class FakeTTS:
    """Renders a sample as a tone as long as its token list (none: no speech), noting each prompt it was given."""

    vocab = SimpleNamespace(prompt_text_ids=lambda ids: list(ids[1:]))
    codec = SimpleNamespace(sample_rate=SR)

    def __init__(self):
        self.prompts = []

    def finish(self, request, ar_tokens, text_ids):
        self.prompts.append(request.prompt_codes)
        return SimpleNamespace(wav=np.full(100 * len(ar_tokens), 0.1, np.float32))


class FakeASR:
    def transcribe(self, wav, sr):
        return "the cat sat" if len(wav) > 100 else "a dog"


class FakeSIM(SpeakerEncoder):
    """Embeds a clip as (1, its length in hundreds of samples): the real utterances (300 samples) are (1, 3)."""

    def embed(self, wav, sr):
        return np.array([1.0, len(wav) / 100])


def _bank() -> PromptBank:
    codes = {f"u{i}": np.arange(2 * 30).reshape(2, 30) + i for i in range(3)}
    return PromptBank({"s1": [(u, c) for u, c in codes.items()]}, prompt_frames=10)


def _sample(tmp_path, utt_id: str, tokens: int, iteration: int = 1) -> dict:
    path = tmp_path / f"{utt_id}.wav"
    write_wav(path, np.zeros(300, np.float32), SR)
    return {
        "utt_id": utt_id,
        "speaker": "s1",
        "text": "the cat sat",
        "prompt_ids": [0, 5, 6],
        "seed": 3,
        "sample_ids": list(range(tokens)),
        "iteration": iteration,
        "audio_path": str(path),
    }


def test_reward_is_sim_minus_wer_per_sample_in_order(tmp_path):
    tts = FakeTTS()
    samples = [_sample(tmp_path, "u0", 3), _sample(tmp_path, "u1", 1), _sample(tmp_path, "u2", 0)]
    out = AsrSimReward(tts, FakeASR(), FakeSIM(), _bank(), seed=7).rewards(samples)
    assert out["sample_wer"] == [0.0, 1.0, 1.0]  # silence hears nothing: every word missed
    # cosines with the real (1, 3): (1, 3) itself, (1, 1) at (1 + 3) / sqrt(2 * 10); silence resembles no one
    assert out["sample_sim"] == pytest.approx([1.0, 4 / 20**0.5, 0.0])
    np.testing.assert_allclose(out["reward"], np.array([1.0, 4 / 20**0.5 - 1, -1.0]))
    # each sample is rendered with the voice prompt rollout drew for it (seed, iteration, utterance)
    for prompt, sample in zip(tts.prompts, samples):
        np.testing.assert_array_equal(prompt, voice_prompt(_bank(), sample, 7, 1))


def test_no_samples_no_rewards():
    out = AsrSimReward(FakeTTS(), FakeASR(), FakeSIM(), _bank(), seed=0).rewards([])
    assert out["sample_wer"] == [] and out["sample_sim"] == [] and len(out["reward"]) == 0


def test_train_prompt_bank_keeps_every_codec_layer(tmp_path):
    rows = [
        {"utt_id": f"u{i}", "speaker": "s1", "codes_0": [i] * 5, "codes_1": [10 + i] * 5, "text": "x"} for i in range(2)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train")
    bank = train_prompt_bank(tmp_path, prompt_frames=4, n_codebooks=2)
    assert [u for u, _ in bank.by_speaker["s1"]] == ["u0", "u1"]
    assert bank.by_speaker["s1"][1][1].tolist() == [[1] * 5, [11] * 5]
