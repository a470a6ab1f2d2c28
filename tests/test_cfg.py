"""Classifier-free guidance: condition dropout in training, guided decoding in the torch sampler and CodecTTS."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from sa_ray.config import ConfigError, load_config
from sa_ray.data.examples import PromptBank, ar_example, drop_condition, text_tokens
from sa_ray.models.ar import IGNORE, collate_ar
from sa_ray.models.vocab import BOS, EOS, SEP, SPEECH, Vocab, frames_per_phone
from sa_ray.sampling import SamplingConfig, _gumbel, guide, sample
from sa_ray.synthesis import CodecTTS, Request
from tests.conftest import tiny_llama, tiny_trainer

VOCAB = Vocab(text_tokens=tuple("abcdefgh"), codebook_size=32, aligned=True)
ALLOWED = VOCAB.generation_ids()  # text tokens + codes + EOS
FRAME_RATE = 43.066


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama(VOCAB.size)  # peaky enough that text and no text predict differently


def requests(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """n (prompt, unconditional prompt) pairs of the real layout: random text and voice prompts of random lengths."""
    rng = np.random.default_rng(seed)
    prompts, uncond = [], []
    for _ in range(n):
        text = rng.integers(VOCAB.text_offset, VOCAB.code_offset, rng.integers(2, 12)).tolist()
        codes = rng.integers(0, VOCAB.codebook_size, rng.integers(3, 15))
        prompts.append(VOCAB.prompt(text, codes))
        uncond.append(VOCAB.unconditional_prompt(codes))
    return prompts, uncond


def restricted_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Log-softmax over ALLOWED of the next token after `ids`: one full forward, no cache."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1, ALLOWED].float()
    return logits.log_softmax(-1)


# ------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=1.0, batch_size=3), SamplingConfig(temperature=0)])
def test_scale_1_is_the_unguided_path(model, cfg):
    prompts, uncond = requests(5)
    rows_seen = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: rows_seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        plain = sample(model, prompts, ALLOWED, EOS, 15, seeds=3, cfg=cfg)
        n_plain = len(rows_seen)
        scaled_1 = sample(model, prompts, ALLOWED, EOS, 15, seeds=3, cfg=cfg, uncond_prompts=uncond)
        assert cfg.cfg_scale == 1.0  # the default: guidance off
    finally:
        hook.remove()
    assert scaled_1 == plain
    assert rows_seen[n_plain:] == rows_seen[:n_plain]  # the same forwards, row for row: no twin was decoded


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_greedy_guided_steps_are_argmax_of_the_combination(model, scale):
    """Each greedy token is argmax(uncond + scale * (cond - uncond)) over the allowed ids, computed here from full
    forwards of both sequences (no cache, no batch) with the tokens written so far."""
    prompts, uncond = requests(3, seed=1)
    outs = sample(
        model,
        prompts,
        ALLOWED,
        EOS,
        12,
        seeds=0,
        cfg=SamplingConfig(temperature=0, cfg_scale=scale),
        uncond_prompts=uncond,
    )
    checked = 0
    for prompt, twin, out in zip(prompts, uncond, outs):
        assert out
        for t, token in enumerate(out):
            cond_lp = restricted_logprobs(model, prompt + out[:t])
            uncond_lp = restricted_logprobs(model, twin + out[:t])
            combined = uncond_lp + scale * (cond_lp - uncond_lp)
            top2 = combined.topk(2).values
            if top2[0] - top2[1] < 1e-4:  # a float tie: kernels may order it either way
                continue
            assert ALLOWED[int(combined.argmax())] == token, (scale, t)
            checked += 1
    assert checked >= len(outs) * 5
    if scale == 0.0:  # scale 0 is the unconditional model alone
        assert outs == sample(model, uncond, ALLOWED, EOS, 12, seeds=0, cfg=SamplingConfig(temperature=0))


def test_sampled_first_token_is_the_guided_gumbel_max(model):
    """With temperature, top-k and top-p the first token is exactly argmax(warped guided logits + the request's
    own noise): guidance happens before the warpers, and the seed contract is the unguided one."""
    prompts, uncond = requests(4, seed=2)
    scale, temperature, seeds = 2.5, 0.8, [11, 12, 13, 14]
    cfg = SamplingConfig(temperature=temperature, top_k=20, cfg_scale=scale)
    outs = sample(model, prompts, ALLOWED, EOS, 1, seeds=seeds, cfg=cfg, uncond_prompts=uncond)
    for prompt, twin, seed, out in zip(prompts, uncond, seeds, outs):
        guided = guide(restricted_logprobs(model, prompt)[None], restricted_logprobs(model, twin)[None], scale)[0]
        warped = guided / temperature
        warped[warped < warped.topk(20).values[-1]] = float("-inf")
        noise = _gumbel(torch.Generator().manual_seed(seed), len(ALLOWED))[0]
        assert out == [ALLOWED[int((warped + noise).argmax())]]


def test_guide_is_the_raw_logit_combination_up_to_a_constant():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    raw = uncond + 2.0 * (cond - uncond)
    assert torch.allclose(guide(cond, uncond, 2.0).softmax(-1), raw.softmax(-1), atol=1e-6)


def test_a_guided_request_is_the_same_alone_and_in_a_batch(model):
    prompts, uncond = requests(7, seed=3)
    cfg = SamplingConfig(temperature=1.0, batch_size=4, cfg_scale=2.0)
    together = sample(model, prompts, ALLOWED, EOS, 20, seeds=list(range(7)), cfg=cfg, uncond_prompts=uncond)
    for i in (0, 3, 6):
        alone = sample(model, [prompts[i]], ALLOWED, EOS, 20, seeds=[i], cfg=cfg, uncond_prompts=[uncond[i]])
        assert alone == [together[i]]
    # guidance changes what is sampled (the twin is really there)
    unguided = dataclasses.replace(cfg, cfg_scale=1.0)
    assert together != sample(model, prompts, ALLOWED, EOS, 20, seeds=list(range(7)), cfg=unguided)


def test_guidance_keeps_forced_phones(model):
    prompts, uncond = requests(4, seed=4)
    forced = [VOCAB.prompt_text_ids(p)[:3] for p in prompts]
    outs = sample(
        model,
        prompts,
        ALLOWED,
        EOS,
        40,
        seeds=5,
        cfg=SamplingConfig(temperature=1.0, cfg_scale=3.0),
        forced=forced,
        forced_ids=VOCAB.text_id_range,
        uncond_prompts=uncond,
    )
    for f, out in zip(forced, outs):
        written = [t for t in out if t in VOCAB.text_id_range]
        assert written == f[: len(written)]
        assert out[-1] != EOS or written == f  # EOS only after the last phone


def test_codec_tts_guides_with_the_unconditional_prompt(model):
    prompts, uncond = requests(3, seed=5)
    codes = [np.array([p[p.index(SEP) + 1 : -1]]) - VOCAB.code_offset for p in prompts]
    reqs = [Request("unused", c, seed=i) for i, c in enumerate(codes)]
    prompted = (prompts, [10] * 3, [VOCAB.prompt_text_ids(p) for p in prompts])
    greedy, guided_greedy = SamplingConfig(temperature=0), SamplingConfig(temperature=0, cfg_scale=2.0)
    tts = CodecTTS(model, VOCAB, torch.nn.Identity(), codec=None)  # one voice, any decoding: no state of guidance
    guided, _ = tts.generate(reqs, guided_greedy, prompted=prompted)
    assert guided == sample(model, prompts, ALLOWED, EOS, 10, [0, 1, 2], guided_greedy, uncond_prompts=uncond)
    off, _ = tts.generate(reqs, greedy, prompted=prompted)
    assert off == sample(model, prompts, ALLOWED, EOS, 10, [0, 1, 2], greedy)
    assert guided != off


def test_bad_guidance_is_refused(model):
    prompts, uncond = requests(2)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cfg_scale"):
            SamplingConfig(cfg_scale=bad)
    guided = SamplingConfig(cfg_scale=2.0)
    with pytest.raises(ValueError, match="unconditional prompt"):
        sample(model, prompts, ALLOWED, EOS, 5, seeds=0, cfg=guided)
    with pytest.raises(ValueError, match="unconditional prompt"):
        sample(model, prompts, ALLOWED, EOS, 5, seeds=0, cfg=guided, uncond_prompts=uncond[:1])
    with pytest.raises(ValueError, match="unconditional prompt"):
        sample(model, prompts, ALLOWED, EOS, 5, seeds=0, cfg=guided, uncond_prompts=[uncond[0], []])
    assert SamplingConfig(cfg_scale=0).cfg_scale == 0  # the unconditional model alone is allowed


def test_tune_decoding_rows_are_the_sampling_config_and_its_eval_overrides():
    """A searched decoding is SamplingConfig's fields but batch_size, and each is the eval.* setting of its name."""
    from jobs.tune_decoding import DECODING, decoding, overrides

    chosen = SamplingConfig(temperature=0.8, top_k=5, top_p=0.9, cfg_scale=2.0, batch_size=7)
    row = decoding(chosen)
    assert row == {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "cfg_scale": 2.0} and set(row) == set(DECODING)
    assert SamplingConfig(**row, batch_size=7) == chosen
    cfg = load_config(None, overrides({**row, "heldout_sentences_wer": 0.1}).split())
    assert {k: getattr(cfg.eval, k) for k in DECODING} == row


def test_a_voice_name_is_parsed_once():
    from sa_ray.corpus.voices import VoiceError
    from sa_ray.synthesis import Spelling

    spelling = Spelling("mbrola-us1", frozenset({"mbrola-us3"}))
    assert spelling.voice(None) is spelling.voice("someone-else") is Spelling().voice(None)
    assert spelling.voice("mbrola-us3").name == "us3"
    for _ in range(2):  # a bad name is refused every time: errors are not cached
        with pytest.raises(VoiceError):
            Spelling("nonsense").voice(None)


@pytest.mark.parametrize(
    "override, field",
    [
        ("eval.cfg_scale=-0.5", "eval.cfg_scale"),
        ("eval.cfg_scale=.inf", "eval.cfg_scale"),
        ("pretrain.cond_dropout=1.0", "pretrain.cond_dropout"),
        ("pretrain.cond_dropout=-0.1", "pretrain.cond_dropout"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, [override])


def test_config_takes_good_values():
    cfg = load_config(None, ["eval.cfg_scale=2", "pretrain.cond_dropout=0.1"])
    assert cfg.eval.cfg_scale == 2.0 and isinstance(cfg.eval.cfg_scale, float) and cfg.pretrain.cond_dropout == 0.1
    defaults = load_config(None)
    assert defaults.eval.cfg_scale == 1.0 and defaults.pretrain.cond_dropout == 0.0  # off unless asked


# ------------------------------------------------------------------------------------------- training


def tiny_rows(n_speakers: int = 3, per_speaker: int = 4) -> list[dict]:
    """Aligned prepared rows (phones, their durations, two codec layers), small enough to build in a test."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(n_speakers):
        for u in range(per_speaker):
            phones = [str(p) for p in rng.choice(list("abcdefgh"), int(rng.integers(3, 8)))]
            ms = rng.integers(30, 120, len(phones)).tolist()
            frames = int(round(sum(ms) * FRAME_RATE / 1000))
            codes = rng.integers(0, 32, (2, frames))
            rows.append(
                {
                    "utt_id": f"s{s}_u{u}",
                    "speaker": f"s{s}",
                    "phones": phones,
                    "phone_ms": ms,
                    "text_norm": "unused",
                    "codes_0": codes[0].tolist(),
                    "codes_1": codes[1].tolist(),
                }
            )
    return rows


def test_dropped_example_is_the_unconditional_prompt_and_the_same_target():
    rows = tiny_rows()
    vocab = Vocab(tuple("abcdefgh"), 32, True)
    row = rows[0]
    prompt = PromptBank.from_rows(rows, 20, 2).draw(row["speaker"], row["utt_id"], random.Random(0))
    cond = ar_example(row, prompt, vocab, FRAME_RATE)
    dropped = ar_example(row, prompt, vocab, FRAME_RATE, drop_text=True)
    head = vocab.unconditional_prompt(prompt[0])
    # the layout inference guides with: [BOS] [SEP] prompt-codes [SPEECH], no text
    assert head == [BOS, SEP, *vocab.code_ids(prompt[0]).tolist(), SPEECH]
    text_ids = vocab.text_ids(text_tokens(row, vocab))
    target = vocab.target(row["codes_0"], text_ids, frames_per_phone(row["phone_ms"], FRAME_RATE, len(row["codes_0"])))
    assert dropped == {"input_ids": head + target, "labels": [IGNORE] * len(head) + target}  # phones still learned
    assert cond == {"input_ids": vocab.prompt(text_ids, prompt[0]) + target, "labels": cond["labels"]}
    assert ar_example(row, prompt, vocab, FRAME_RATE, drop_text=False) == cond


def test_condition_dropout_draw_is_deterministic():
    ids = [f"utt{i}" for i in range(2000)]
    draws = [drop_condition(0, u, 3, 0.1) for u in ids]
    assert draws == [drop_condition(0, u, 3, 0.1) for u in ids]  # a pure function: resumed runs repeat it
    assert 0.08 < np.mean(draws) < 0.12
    assert draws != [drop_condition(0, u, 4, 0.1) for u in ids]  # a fresh draw each epoch
    assert draws != [drop_condition(1, u, 3, 0.1) for u in ids]  # and each seed
    assert not any(drop_condition(0, u, 3, 0.0) for u in ids)


def unpad(batch: dict) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_trainer_drops_the_drawn_examples_and_nothing_else():
    """Dropout 0 gives the batches of today's recipe (built by hand here); dropout p changes exactly the drawn
    examples to their unconditional form, with the same voice prompts and the same NAR batch."""
    rows = tiny_rows()
    off = tiny_trainer(rows, steps=8, batch_size=4)
    on = tiny_trainer(rows, steps=8, batch_size=4, cond_dropout=0.5)
    vocab, dropped_any = off.vocab, False
    for _ in range(5):  # more than one epoch of 12 rows
        start = off._advance()
        off.position -= off.cfg.batch_size  # peek: next_batch advances again
        batch_rows = [off.rows[i] for i in off._order()[start : start + off.cfg.batch_size]]
        rng = random.Random(f"0:{off.epoch}:0:{start}")
        by_hand = [ar_example(r, off.bank.draw(r["speaker"], r["utt_id"], rng), vocab, FRAME_RATE) for r in batch_rows]
        epoch = off.epoch
        (ar_off, nar_off), (ar_on, nar_on) = off.next_batch(), on.next_batch()
        assert unpad(ar_off) == unpad(collate_ar(by_hand))
        for r, plain, guided in zip(batch_rows, unpad(ar_off), unpad(ar_on)):
            if drop_condition(0, r["utt_id"], epoch, 0.5):
                dropped_any = True
                text = len(r["phones"])
                assert guided == [BOS, *plain[text + 1 :]]  # the text gone, prompt and target the same
            else:
                assert guided == plain
        assert all(torch.equal(nar_off[k], nar_on[k]) for k in nar_off if isinstance(nar_off[k], torch.Tensor))
    assert dropped_any
