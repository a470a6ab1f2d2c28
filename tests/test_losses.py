"""align.length_normalize: the preference margin on each side's per-token mean logprob, by hand and through the
reference scorer and the learner (step 0 is still ln 2)."""

from __future__ import annotations

import math

import pytest
import torch

from sa_ray.losses import LN2, preference_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_length_normalised_loss_and_gradient_match_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    n_c = torch.tensor([120, 7, 300, 1, 55])
    n_r = torch.tensor([80, 260, 3, 1, 0])  # 0: a side with no counted token (margin_tokens=errors) stays 0
    rc, rr = -n_c * 1.1 - torch.rand(5, generator=g), -n_r * 1.3 - torch.rand(5, generator=g)
    pc0, pr0 = rc + torch.randn(5, generator=g) * 3, rr + torch.randn(5, generator=g) * 3
    nll = torch.rand(5, generator=g) + 1
    beta, eps, alpha = 0.01, 0.2, 0.5

    def margins() -> list[float]:  # each side's mean per counted token (at least 1), then the usual log-ratio margin
        c, r = n_c.clamp(min=1).tolist(), n_r.clamp(min=1).tolist()
        return [(float(pc0[i]) - float(rc[i])) / c[i] - (float(pr0[i]) - float(rr[i])) / r[i] for i in range(5)]

    def by_hand(method: str) -> float:
        total = 0.0
        for i, m in enumerate(margins()):
            if method == "ipo":
                total += (m - 1 / (2 * beta)) ** 2
            elif method == "cdpo":
                total += -(1 - eps) * math.log(_sig(beta * m)) - eps * math.log(_sig(-beta * m))
            else:
                total += 0.0 if method == "sft" else -math.log(_sig(beta * m))
                total += alpha * float(nll[i]) if method in ("rpo", "sft") else 0.0
        return total / 5

    for method in ("dpo", "cdpo", "ipo", "rpo", "sft"):
        pc, pr = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
        loss, metrics = preference_loss(
            pc, pr, rc, rr, method, beta, eps, chosen_nll=nll, nll_weight=alpha, token_counts=(n_c, n_r)
        )
        assert float(loss.detach()) == pytest.approx(by_hand(method), rel=1e-5), method
        if method in ("dpo", "rpo"):
            # d/d pi_c of -log sigmoid(beta m) / B is -beta sigmoid(-beta m) / (B n_c); the NLL is no function of pi
            loss.backward()
            c, r = n_c.clamp(min=1).tolist(), n_r.clamp(min=1).tolist()
            want_c = [-beta * _sig(-beta * m) / (5 * c[i]) for i, m in enumerate(margins())]
            want_r = [beta * _sig(-beta * m) / (5 * r[i]) for i, m in enumerate(margins())]
            assert pc.grad.tolist() == pytest.approx(want_c, rel=1e-4), method
            assert pr.grad.tolist() == pytest.approx(want_r, rel=1e-4), method
    # the metrics are per token then
    _, m = preference_loss(pc0, pr0, rc, rr, "dpo", beta, token_counts=(n_c, n_r))
    assert m["reward_margin"] == pytest.approx(beta * sum(margins()) / 5, rel=1e-5)
    assert m["policy_chosen_logp"] == pytest.approx(float((pc0 / n_c).mean()), rel=1e-5)
    # without counts: the summed margin of before
    _, summed = preference_loss(pc0, pr0, rc, rr, "dpo", beta)
    assert summed["reward_margin"] == pytest.approx(float(beta * ((pc0 - rc) - (pr0 - rr)).mean()), rel=1e-5)
    # policy == reference: ln 2 whatever the lengths
    zero, _ = preference_loss(rc, rr, rc, rr, "dpo", beta, token_counts=(n_c, n_r))
    assert float(zero) == pytest.approx(LN2, abs=1e-7)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 1-layer random AR model on a 4-phone aligned vocabulary: logprobs, not speech, are what is tested."""
    from sa_ray.config import ModelConfig
    from sa_ray.models.ar import build_ar_model, save_ar
    from sa_ray.models.vocab import Vocab

    torch.manual_seed(0)
    vocab = Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=True)
    cfg = ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_positions=64)
    out = tmp_path_factory.mktemp("tiny-ar")
    save_ar(build_ar_model(cfg, vocab), vocab, out)
    return out, vocab


def test_step0_of_a_length_normalised_learner_is_ln2(tiny_model):
    """The reference scorer writes each side's sum and its token count; the learner divides both by the counts it
    counts itself: policy == reference at step 0, so the loss is ln 2 and every margin 0."""
    import pandas as pd

    from actors.reference import ReferenceScorer
    from sa_ray.config import AlignConfig
    from sa_ray.dpo import DPOLearner
    from sa_ray.models.vocab import EOS

    model_dir, vocab = tiny_model
    a, b, c, _ = vocab.text_ids(["a", "b", "c", "d"])
    code = vocab.code_offset
    prompt = vocab.prompt([a, b, c], [0, 1, 2])
    pairs = [
        {"utt_id": f"u{i}", "sample_idx": 0, "iteration": 0, "prompt_ids": prompt, "chosen_ids": ch, "rejected_ids": rj}
        for i, (ch, rj) in enumerate(
            [
                ([a, code, b, code + 1, c, code + 2, EOS], [a, code, EOS]),
                ([b], [c]),  # a correction: one token each
                ([a, code + 3, b, code + 4, code + 4, c, code, EOS], [a, code + 5, c, code, code, code, code, EOS]),
                ([a, code, b, code, c, code, EOS], [a] * 9),
            ]
        )
    ]
    scored = ReferenceScorer(str(model_dir), batch_size=3).score(pd.DataFrame(pairs), 0, None).to_dict("records")
    assert [p["ref_chosen_tokens"] for p in scored] == [7, 1, 8, 7]
    assert [p["ref_rejected_tokens"] for p in scored] == [3, 1, 8, 9]
    cfg = AlignConfig(method="rpo", beta=0.01, length_normalize=True, batch_size=4, steps=2, lora_rank=4, lora_alpha=8)
    m = DPOLearner(model_dir, None, cfg, scored).train_step()  # metrics of the step-0 forward
    assert abs(m["dpo_loss"] - LN2) < 1e-6 and abs(m["reward_margin"]) < 1e-7
    per_token = sum(p["ref_chosen_logp"] / p["ref_chosen_tokens"] for p in scored) / 4
    assert m["policy_chosen_logp"] == pytest.approx(per_token, rel=1e-5)  # the policy side is per token too
    # a pair set scored over other tokens than this learner's margin is refused, not silently trained on
    changed = [{**p, "ref_rejected_tokens": p["ref_rejected_tokens"] + 1} for p in scored]
    with pytest.raises(ValueError, match="align.margin_tokens changed"):
        DPOLearner(model_dir, None, cfg, changed).train_step()
