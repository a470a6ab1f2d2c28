"""The ASR/SIM reward of ranked pairs (`sa_ray.rewards`), on stand-in models: which speech is scored against what,
in which order, and how WER and SIM make the reward. Real models score real samples in tests/test_align.py.
Then `align.reward` as a weighted sum of terms (`sa_ray.reward_mix`): parsed, validated, mixed."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sa_ray.audio import write_wav
from sa_ray.config import AlignConfig, ConfigError
from sa_ray.data.examples import PromptBank
from sa_ray.metrics.speaker import SpeakerEncoder
from sa_ray.preference import voice_prompt
from sa_ray.reward_mix import mixed_reward, reward_roles, reward_terms
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


@pytest.mark.parametrize(
    "spec, terms",
    [
        ("asr", {"asr": 1.0}),  # a plain name: weight 1
        ("phones", {"phones": 1.0}),
        ("model", {"model": 1.0}),
        ("phones+0.5*sim-0.5*wer", {"phones": 1.0, "sim": 0.5, "wer": -0.5}),
        ("0.7*phones+0.3*model", {"phones": 0.7, "model": 0.3}),
        (" 2 * phones - 1e-1*wer ", {"phones": 2.0, "wer": -0.1}),  # spaces around operators, an exponent
        ("+sim-.25*wer", {"sim": 1.0, "wer": -0.25}),
        ("-wer", {"wer": -1.0}),
        ("asr-0.5*sim", {"asr": 1.0, "sim": -0.5}),  # takes half the SIM back out of asr: 0.5 SIM - WER
    ],
)
def test_reward_terms_read_a_weighted_sum_in_the_order_given(spec, terms):
    got = reward_terms(spec)
    assert got == terms and list(got) == list(terms)


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("", "it is empty: name a term (asr, wer, sim, phones, model)"),
        ("  ", "it is empty"),
        ("bleu", "unknown term 'bleu' (terms: asr, wer, sim, phones, model)"),
        ("phones+0.5*Sim", "unknown term 'Sim'"),
        ("phones+0.5sim", "cannot read '+0.5sim': a term is [weight*]name, joined by + or -"),
        ("phones 0.5*sim", "cannot read 'phones 0.5*sim'"),
        ("pho nes", "cannot read 'pho nes'"),
        ("phones+", "cannot read '+'"),
        ("phones*0.5", "cannot read 'phones*0.5'"),
        ("phones--wer", "cannot read '--wer'"),
        ("phones+0.5*phones", "phones is named twice: give each term once, with its whole weight"),
        ("phones+0*sim", "sim has weight 0: leave it out"),
        ("phones+wer", "wer is an error rate (higher is worse): give it a negative weight"),
        ("1e999*phones", "phones's weight 1e999 is not a finite number"),
    ],
)
def test_reward_terms_refuse_what_they_cannot_read_naming_the_rule_and_the_term(spec, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        reward_terms(spec)


def test_align_reward_errors_name_the_field_the_rule_and_the_term():
    with pytest.raises(ConfigError) as err:
        AlignConfig(reward="phones+0.5*bleu").validate()
    assert str(err.value) == (
        "align.reward must be a term or a weighted sum of terms (e.g. phones+0.5*sim-0.5*wer): "
        "unknown term 'bleu' (terms: asr, wer, sim, phones, model); got 'phones+0.5*bleu'"
    )


def test_the_roles_a_reward_starts_follow_its_terms():
    assert reward_roles(reward_terms("phones")) == set()  # computed in the pipeline, no role
    assert reward_roles(reward_terms("sim")) == reward_roles(reward_terms("-wer")) == {"scorers"}
    assert reward_roles(reward_terms("phones-0.5*wer+0.2*model")) == {"scorers", "reward_model"}
    ranked = dict(pairs="ranked", samples_per_prompt=2)
    assert AlignConfig(reward="asr", **ranked).reward_roles == {"scorers"}
    assert AlignConfig(reward="0.7*phones+0.3*model", method="grpo", samples_per_prompt=2).reward_roles == {
        "reward_model"
    }
    assert AlignConfig(reward="model", method="ppo").reward_roles == {"reward_model"}
    golden = AlignConfig(reward="asr+model")  # golden pairs read no reward: nothing to start, whatever it says
    assert not golden.rewards_samples and golden.reward_roles == set()
    assert all(AlignConfig(**kw).rewards_samples for kw in (ranked, dict(method="grpo"), dict(method="ppo")))


@pytest.mark.parametrize("run", [dict(pairs="ranked"), dict(method="grpo"), dict(method="ppo")], ids=str)
def test_forced_phones_refuse_a_phones_only_reward_and_keep_a_mix(run):
    """Forced samples write every phone right: a phones-only reward ties them all; in a mix the phones term adds the
    same 0 to every sample and the other terms still tell them apart."""
    for reward in ("phones", "2*phones"):
        with pytest.raises(ConfigError, match=re.escape(f"align.forced_phones=true with align.reward={reward}: every")):
            AlignConfig(reward=reward, forced_phones=True, samples_per_prompt=2, **run).validate()
    AlignConfig(reward="phones+0.5*sim-0.5*wer", forced_phones=True, samples_per_prompt=2, **run).validate()


def test_a_mix_with_phones_needs_a_model_that_writes_its_phones():
    with pytest.raises(ConfigError, match=re.escape("align.reward=0.5*phones+sim needs a model whose targets write")):
        AlignConfig(reward="0.5*phones+sim", method="grpo", samples_per_prompt=2).check_model(aligned=False)
    AlignConfig(reward="sim-wer", method="grpo", samples_per_prompt=2).check_model(aligned=False)
    AlignConfig(reward="0.5*phones+sim", method="grpo", samples_per_prompt=2).check_model(aligned=True)


def test_the_mix_is_the_weighted_sum_of_each_terms_column():
    batch = pd.DataFrame(
        {
            "sample_wer": [0.0, 0.5, 1.0],
            "sample_sim": [0.9, 0.6, 0.0],
            "reward_phones": [0.0, -0.25, -1.0],
            "reward_model": [1.5, -0.5, 0.0],
        }
    )
    expected = {
        "phones+0.5*sim-0.5*wer": [0 + 0.45 - 0, -0.25 + 0.3 - 0.25, -1 + 0 - 0.5],
        "0.7*phones+0.3*model": [0 + 0.45, -0.175 - 0.15, -0.7 + 0],
        "asr": [0.9 - 0, 0.6 - 0.5, 0 - 1.0],
        "asr-0.5*sim+2*model": [0.9 - 0.45 + 3, 0.1 - 0.3 - 1, -1 - 0 + 0],
    }
    for spec, rewards in expected.items():
        assert mixed_reward(batch, reward_terms(spec)).tolist() == pytest.approx(rewards), spec


def test_a_plain_name_rewards_exactly_as_its_stage_does(tmp_path):
    # asr: the scorer's own SIM - WER, bit for bit
    samples = [_sample(tmp_path, "u0", 3), _sample(tmp_path, "u1", 1), _sample(tmp_path, "u2", 0)]
    out = AsrSimReward(FakeTTS(), FakeASR(), FakeSIM(), _bank(), seed=7).rewards(samples)
    np.testing.assert_array_equal(mixed_reward(pd.DataFrame(out), reward_terms("asr")).to_numpy(), out["reward"])
    # phones, model: the column itself, a perfect phone score's -0.0 included
    column = [-0.0, -0.25, -1 / 3, 0.7]
    for name, col in (("phones", "reward_phones"), ("model", "reward_model")):
        got = mixed_reward(pd.DataFrame({col: column}), reward_terms(name)).to_numpy()
        assert got.tolist() == column and np.signbit(got).tolist() == np.signbit(column).tolist()


@pytest.mark.slow
def test_the_pipeline_writes_each_terms_column_then_their_mix(ray_local):
    """`_rewarded` on Ray Data with stand-in scorers and reward model: each term's stage adds its column, whichever
    scorer a row went to, and `reward` is their weighted sum; a plain `asr` is the scorers' reward unchanged."""
    import ray

    from actors.pipeline import _rewarded
    from sa_ray.models.vocab import EOS, Vocab

    @ray.remote
    class Scorer:  # WER and SIM as the rows say
        def reward(self, batch):
            sim, wer = batch["sim_in"], batch["wer_in"]
            return batch.assign(sample_wer=wer, sample_sim=sim, reward=sim - wer)

    @ray.remote
    class Model:  # scores a sample by its length
        def score(self, prompts, samples):
            return [float(len(s)) for s in samples]

    vocab = Vocab(("a", "b"), codebook_size=4, aligned=True)
    a, b = vocab.text_ids(["a", "b"])
    code = int(vocab.code_ids([0])[0])
    right, wrong = [a, code, b, code, EOS], [a, code, EOS]  # phone error rates 0 and 1/2
    rows = pd.DataFrame(
        {
            "utt_id": ["u0", "u0", "u1", "u1"],
            "sample_idx": [0, 1, 0, 1],
            "prompt_ids": [vocab.prompt([a, b], [0])] * 4,
            "sample_ids": [right, wrong, wrong, right],
            "wer_in": [0.0, 0.5, 1.0, 0.25],
            "sim_in": [0.9, 0.8, 0.1, 0.7],
        }
    )
    roles = {"scorers": [Scorer.remote(), Scorer.remote()], "reward_model": Model.remote()}

    def rewarded(reward: str) -> pd.DataFrame:
        cfg = AlignConfig(pairs="ranked", samples_per_prompt=2, reward=reward)
        out = _rewarded(ray.data.from_pandas(rows), cfg, vocab, roles).to_pandas()
        return out.sort_values(["utt_id", "sample_idx"], ignore_index=True)

    out = rewarded("phones+0.5*sim-0.5*wer+0.1*model")
    assert out["reward_phones"].tolist() == [0.0, -0.5, -0.5, 0.0]
    assert out["reward_model"].tolist() == [5.0, 3.0, 3.0, 5.0]
    assert out["sample_wer"].tolist() == [0.0, 0.5, 1.0, 0.25]
    hand = [0 + 0.45 - 0 + 0.5, -0.5 + 0.4 - 0.25 + 0.3, -0.5 + 0.05 - 0.5 + 0.3, 0 + 0.35 - 0.125 + 0.5]
    assert out["reward"].tolist() == pytest.approx(hand)
    plain = rewarded("asr")
    assert plain["reward"].tolist() == (plain["sim_in"] - plain["wer_in"]).tolist()
    assert "reward_phones" not in plain and "reward_model" not in plain
