"""sa_ray.sampling: allowed ids, per-request seeds, batch independence, EOS, greedy == generate()."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from sa_ray.models.vocab import EOS, PAD, Vocab
from sa_ray.sampling import SamplingConfig, sample
from tests.conftest import tiny_llama

VOCAB = Vocab(text_tokens=tuple("abcdefgh"), codebook_size=32, aligned=True)
CODES = list(range(VOCAB.code_offset, VOCAB.size))
ALLOWED = VOCAB.generation_ids()  # text tokens + codes + EOS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_llama(VOCAB.size)


def make_prompts(n: int, seed: int = 0, lo: int = 3, hi: int = 25) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [[1, *torch.randint(5, VOCAB.size, (k - 1,), generator=g).tolist()] for k in lengths]


def test_only_allowed_ids(model):
    # Make the forbidden ids (specials and text tokens) dominate the unrestricted distribution.
    biased = copy.deepcopy(model)
    allowed = [*CODES, EOS]
    forbidden = [i for i in range(VOCAB.size) if i not in allowed]
    with torch.no_grad():
        biased.lm_head.weight[forbidden] *= 30
    prompts = make_prompts(48)
    seen: set[int] = set()
    for cfg in (SamplingConfig(temperature=1.5, batch_size=16), SamplingConfig(temperature=1.5, top_p=0.95)):
        for out in sample(biased, prompts, allowed, EOS, 30, seeds=list(range(48)), cfg=cfg):
            assert set(out) <= set(allowed)
            seen |= set(out)
    assert len(seen) > len(allowed) // 2  # it samples, not a constant


def test_seeds_honoured(model):
    prompts = make_prompts(8)
    cfg = SamplingConfig(temperature=1.0, batch_size=8)
    a = sample(model, prompts, ALLOWED, EOS, 20, seeds=list(range(8)), cfg=cfg)
    b = sample(model, prompts, ALLOWED, EOS, 20, seeds=list(range(8)), cfg=cfg)
    c = sample(model, prompts, ALLOWED, EOS, 20, seeds=list(range(100, 108)), cfg=cfg)
    assert a == b
    assert all(x != y for x, y in zip(a, c))
    # One int seed derives a distinct stream per request: identical prompts still differ.
    same = sample(model, [prompts[0]] * 4, ALLOWED, EOS, 20, seeds=7, cfg=cfg)
    assert same == sample(model, [prompts[0]] * 4, ALLOWED, EOS, 20, seeds=7, cfg=cfg)
    assert len({tuple(x) for x in same}) == 4


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=1.0),
        SamplingConfig(temperature=0.8, top_k=5),
        SamplingConfig(temperature=1.2, top_p=0.9),
        SamplingConfig(temperature=0),
    ],
)
def test_batch_composition_independence(model, cfg):
    n = 14
    prompts = make_prompts(n, seed=1)
    budgets = [5 + 3 * i for i in range(n)]
    seeds = [1000 + i for i in range(n)]
    ref = sample(model, prompts, ALLOWED, EOS, budgets, seeds, SamplingConfig(**{**cfg.__dict__, "batch_size": n}))
    for batch_size, order in (
        (5, list(reversed(range(n)))),
        (1, list(range(n))),
        (4, [3, 11, 0, 7, 13, 1, 9, 2, 12, 5, 8, 4, 10, 6]),
    ):
        got = sample(
            model,
            [prompts[i] for i in order],
            ALLOWED,
            EOS,
            [budgets[i] for i in order],
            [seeds[i] for i in order],
            SamplingConfig(**{**cfg.__dict__, "batch_size": batch_size}),
        )
        assert [got[order.index(i)] for i in range(n)] == ref
    # A request sampled next to different neighbours, or with a larger budget, keeps its tokens.
    alone = sample(model, [prompts[3]], ALLOWED, EOS, 60, [seeds[3]], cfg)[0]
    assert alone[: len(ref[3])] == ref[3]


def test_stops_at_eos(model):
    allowed = [EOS, *CODES[:5]]  # EOS is one of six near-equally likely ids
    prompts = make_prompts(40, seed=2)
    outs = sample(model, prompts, allowed, EOS, 30, seeds=list(range(40)), cfg=SamplingConfig(batch_size=16))
    ended = 0
    for out in outs:
        assert EOS not in out[:-1]  # nothing after EOS
        assert out[-1] == EOS or len(out) == 30
        ended += out[-1] == EOS
    assert ended >= 30


def test_variable_max_new_tokens(model):
    prompts = make_prompts(6, seed=3)
    budgets = [0, 1, 4, 17, 9, 30]
    no_eos = sample(model, prompts, CODES, EOS, budgets, seeds=list(range(6)), cfg=SamplingConfig(batch_size=4))
    assert [len(o) for o in no_eos] == budgets
    with_eos = sample(
        model, prompts, [EOS, *CODES[:3]], EOS, budgets, seeds=list(range(6)), cfg=SamplingConfig(batch_size=4)
    )
    assert all(len(o) == b or (o and o[-1] == EOS and len(o) <= b) for o, b in zip(with_eos, budgets))


def generate_greedy(model, prompt: list[int], allowed: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        eos_token_id=EOS,
        pad_token_id=PAD,
        suppress_tokens=[i for i in range(VOCAB.size) if i not in allowed],
    )[0, len(prompt) :].tolist()
    return out[: out.index(EOS) + 1] if EOS in out else out


@pytest.mark.parametrize("allowed", [ALLOWED, [EOS, *CODES[:6]]])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # sdpa gets a ready 4D mask, the others a 2D one
def test_greedy_matches_generate(model, allowed, attention):
    if attention != model.config._attn_implementation:
        model = copy.deepcopy(model)
        model.set_attn_implementation(attention)
    prompts = make_prompts(7, seed=4)
    ours = sample(model, prompts, allowed, EOS, 40, seeds=0, cfg=SamplingConfig(temperature=0, batch_size=3))
    for prompt, out in zip(prompts, ours):
        assert out == generate_greedy(model, prompt, allowed, 40)  # generate alone: no padding at all


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    prompts = make_prompts(10, seed=5)
    greedy = sample(model, prompts, ALLOWED, EOS, 25, seeds=0, cfg=SamplingConfig(temperature=0))
    assert (
        sample(model, prompts, ALLOWED, EOS, 25, seeds=list(range(10)), cfg=SamplingConfig(temperature=1.3, top_k=1))
        == greedy
    )
    assert (
        sample(model, prompts, ALLOWED, EOS, 25, seeds=list(range(10)), cfg=SamplingConfig(temperature=1.0, top_p=1e-6))
        == greedy
    )


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=0.7, batch_size=512),
        SamplingConfig(temperature=1.0, top_k=6, batch_size=512),
        SamplingConfig(temperature=1.5, top_p=0.5, batch_size=512),
    ],
)
def test_first_token_distribution_matches_warpers(model, cfg):
    """The empirical first-token distribution is transformers' warped softmax over the allowed ids."""
    prompt, allowed, n = make_prompts(1, seed=6)[0], [EOS, *CODES[:12]], 3000
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1]
    masked = torch.full_like(logits, float("-inf"))
    masked[:, allowed] = logits[:, allowed]
    for warper in (
        TemperatureLogitsWarper(cfg.temperature),
        TopKLogitsWarper(cfg.top_k or VOCAB.size),
        TopPLogitsWarper(cfg.top_p),
    ):
        masked = warper(None, masked)
    expected = masked.softmax(-1)[0]
    outs = sample(model, [prompt] * n, allowed, EOS, 1, seeds=list(range(n)), cfg=cfg)
    counts = torch.bincount(torch.tensor([o[0] for o in outs]), minlength=VOCAB.size).double() / n
    assert (counts[expected == 0] == 0).all()
    assert torch.allclose(counts, expected.double(), atol=0.03)


def test_training_mode_restored(model):
    model.train()
    try:
        sample(model, make_prompts(2), ALLOWED, EOS, 3, seeds=0, cfg=SamplingConfig())
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=1.5, batch_size=5), SamplingConfig(temperature=0)])
def test_forced_ids_are_written_in_order_and_eos_only_after_the_last(model, cfg):
    """Forced decoding (eval.forced_phones): the constrained ids (the text tokens) appear exactly as each
    request's forced list, in order, EOS only after the last; the free ids (codes) are still sampled; a
    request's tokens do not depend on its neighbours."""
    biased = copy.deepcopy(model)
    text = VOCAB.text_ids(list("abcdefgh"))
    with torch.no_grad():  # text tokens and EOS dominate: unconstrained, they would be written at random
        biased.lm_head.weight[[*text, EOS]] *= 4
    prompts = make_prompts(12, seed=3)
    g = torch.Generator().manual_seed(3)
    forced = [[text[j] for j in torch.randint(0, 8, (k,), generator=g).tolist()] for k in range(1, 13)]
    seeds = list(range(12))
    outs = sample(biased, prompts, ALLOWED, EOS, 200, seeds, cfg, forced=forced, forced_ids=text)
    free = sample(biased, prompts, ALLOWED, EOS, 200, seeds, cfg)
    ended = 0
    for out, want in zip(outs, forced):
        written = [t for t in out if t in text]
        assert written == want[: len(written)]  # the asked ids, in order, none other
        if out[-1] == EOS:
            assert written == want and EOS not in out[:-1]
            ended += 1
        assert any(t in CODES for t in out)  # frames in between are the model's choice
    assert ended >= (10 if not cfg.greedy else 1)  # greedy may loop on codes, a random model's argmax
    assert sum(out != f for out, f in zip(outs, free)) >= 10  # the constraint changed what was written
    alone = sample(biased, prompts[4:5], ALLOWED, EOS, 200, seeds[4:5], cfg, forced=forced[4:5], forced_ids=text)
    assert alone[0] == outs[4]
    with pytest.raises(ValueError, match="forced"):
        sample(biased, prompts[:1], ALLOWED, EOS, 5, [0], cfg, forced=[[CODES[0]]], forced_ids=text)


@pytest.mark.parametrize("mode", ["plain", "forced", "guided", "forced+guided"])
def test_returned_logprobs_are_the_raw_model_logprobs_of_the_samples(model, mode):
    """`return_logprobs`: per sampled token, log p under the model's raw full-vocabulary log-softmax, exactly what
    `losses.token_logprobs` teacher-forces on the sampled sequence, though the tokens were drawn from a restricted,
    forced, guided, tempered and truncated distribution; the tokens are those of the call without it."""
    from sa_ray.losses import pack, token_logprobs
    from sa_ray.models.ar import IGNORE

    text = VOCAB.text_ids(list("abcdefgh"))
    prompts = make_prompts(10, seed=8)
    kw: dict = {}
    if "forced" in mode:
        g = torch.Generator().manual_seed(8)
        kw.update(forced=[[text[j] for j in torch.randint(0, 8, (3,), generator=g).tolist()] for _ in prompts])
        kw.update(forced_ids=text)
    if "guided" in mode:
        kw.update(uncond_prompts=[[1, *p[-2:]] for p in prompts])
    allowed = [EOS, *text, *CODES[:20]]  # a restriction: the raw logprobs are still over the full vocabulary
    cfg = SamplingConfig(temperature=1.5, top_k=12, batch_size=4, cfg_scale=2.5 if "guided" in mode else 1.0)
    outs, logprobs = sample(
        model, prompts, allowed, EOS, [30, 0, *[30] * 8], list(range(10)), cfg, **kw, return_logprobs=True
    )
    assert outs == sample(model, prompts, allowed, EOS, [30, 0, *[30] * 8], list(range(10)), cfg, **kw)
    assert outs[1] == [] and logprobs[1] == []
    assert [len(lp) for lp in logprobs] == [len(o) for o in outs] and sum(map(len, outs)) > 100
    keep = [i for i, o in enumerate(outs) if o]
    with torch.no_grad():
        expected, labels, _ = token_logprobs(model, pack([prompts[i] for i in keep], [outs[i] for i in keep]))
    for row, i in enumerate(keep):
        want = expected[row][labels[row] != IGNORE]
        assert torch.allclose(torch.tensor(logprobs[i]), want, atol=1e-5), (i, logprobs[i], want.tolist())
    assert max(max(lp) for lp in logprobs if lp) < 0
