"""Chain-of-Hindsight (`align.method=coh`, sa_ray/coh.py): the quality tags in and out of a prompt, the learner's LM
loss on tagged pairs against a sequence-by-sequence computation, and the tag an adapter carries reaching every voice
built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sa_ray import lora
from sa_ray.config import AlignConfig
from sa_ray.models.vocab import BOS, QUALITY_TAGS, SEP, SPEECH, Vocab, tag_prompt, untag_prompt
from tests.conftest import tiny_samples


def test_a_tag_goes_before_speech_and_comes_out_again():
    vocab = Vocab(("a", "b", "c"), codebook_size=8, aligned=True)
    a, b, c = vocab.text_ids(["a", "b", "c"])
    prompt = vocab.prompt([a, b, c], [0, 1, 2])
    good = tag_prompt(prompt, "good")
    assert good == [*prompt[:-1], QUALITY_TAGS["good"], SPEECH] and QUALITY_TAGS == {"good": BOS, "bad": SEP}
    assert Vocab.prompt_text_ids(good) == [a, b, c]  # the text reads the same
    assert tag_prompt(good, "bad") == [*prompt[:-1], SEP, SPEECH]  # a tag replaces a tag
    assert untag_prompt(good) == untag_prompt(tag_prompt(good, "bad")) == untag_prompt(prompt) == prompt
    # a prompt without a voice prompt: its last token before SPEECH is the text's SEP, not a tag
    for bare in ([BOS, a, SEP, SPEECH], [BOS, SEP, SPEECH]):
        assert untag_prompt(bare) == bare and untag_prompt(tag_prompt(bare, "bad")) == bare
    # a correction's prompt runs on past SPEECH: the tag still goes before the first SPEECH
    correction = [*prompt, a, vocab.code_offset]
    assert tag_prompt(correction, "good") == [*prompt[:-1], BOS, SPEECH, a, vocab.code_offset]


def _pairs(vocab: Vocab) -> list[dict]:
    prompt, samples = tiny_samples(vocab)
    sides = [(samples[0], samples[1]), (samples[2], samples[3])]
    return [
        {"utt_id": f"u{i}", "sample_idx": 0, "iteration": 0, "prompt_ids": prompt, "chosen_ids": ch, "rejected_ids": rj}
        for i, (ch, rj) in enumerate(sides)
    ]


def _nll(model, prompt: list[int], target: list[int]) -> float:
    """Per-token NLL of `target` after `prompt`, one unpadded sequence at a time."""
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    at = range(len(prompt) - 1, len(prompt) - 1 + len(target))
    return -float(sum(logp[t, ids[0, t + 1]] for t in at)) / len(target)


def test_the_learner_trains_the_chosen_after_good_and_the_rejected_after_bad(tiny_aligned_ar, tmp_path):
    from sa_ray.coh import CoHLearner
    from sa_ray.models.ar import load_ar

    model_dir, vocab = tiny_aligned_ar
    pairs = _pairs(vocab)
    cfg = AlignConfig(method="coh", batch_size=2, steps=2, lora_rank=4, lora_alpha=8)
    learner = CoHLearner(model_dir, None, cfg, pairs)
    loss, m = learner.loss(pairs)  # step 0: a fresh adapter is the base
    base, _ = load_ar(model_dir)
    good = [_nll(base, tag_prompt(p["prompt_ids"], "good"), p["chosen_ids"]) for p in pairs]
    bad = [_nll(base, tag_prompt(p["prompt_ids"], "bad"), p["rejected_ids"]) for p in pairs]
    assert m["good_nll"] == pytest.approx(np.mean(good), rel=1e-5)
    assert m["bad_nll"] == pytest.approx(np.mean(bad), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(np.mean(good + bad), rel=1e-5)
    # the untagged prompt is another sequence: the tag is really in what the model reads
    assert _nll(base, pairs[0]["prompt_ids"], pairs[0]["chosen_ids"]) != pytest.approx(good[0], rel=1e-6)
    for _ in range(2):
        learner.train_step()
    learner.export(tmp_path / "v1")
    assert lora.prompt_tag(tmp_path / "v1") == "good" and lora.prompt_tag(None) is None
    policy = lora.policy(base, tmp_path / "v1")
    assert policy.config.prompt_tag == "good" and lora.policy(base, None).config.prompt_tag is None


def test_a_voice_on_a_coh_policy_prompts_with_the_good_tag(prepared_in_process, base_in_process):
    from sa_ray.codec import load_codec
    from sa_ray.synthesis import CodecTTS, Request

    cfg, _, _ = prepared_in_process
    codec = load_codec(cfg.codec, Path(cfg.run_dir) / "codec")
    tts = CodecTTS.load(base_in_process, codec)
    request = Request("Hi there.", np.zeros((codec.n_codebooks, 8), dtype=np.int64), 0)
    (plain,), _, _ = tts.prompts([request])
    tts.ar.config.prompt_tag = "good"  # what lora.policy sets from a CoH adapter
    (tagged,), _, _ = tts.prompts([request])
    assert tagged == tag_prompt(plain, "good") != plain
