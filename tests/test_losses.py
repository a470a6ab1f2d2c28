"""align.length_normalize: the preference margin on each side's per-token mean logprob, by hand and through the
reference scorer and the learner (step 0 is still ln 2); ipo and simpo, always on per-token means, against TRL's
formulas written out on per-token logprobs and masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sa_ray.losses import LN2, METHODS, preference_loss
from tests.conftest import tiny_samples


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_length_normalised_loss_and_gradient_match_a_hand_computation():
    g = torch.Generator().manual_seed(1)
    n_c = torch.tensor([120, 7, 300, 1, 55])
    n_r = torch.tensor([80, 260, 3, 1, 0])  # 0: a side with no counted token (margin_tokens=errors) stays 0
    rc, rr = -n_c * 1.1 - torch.rand(5, generator=g), -n_r * 1.3 - torch.rand(5, generator=g)
    pc0, pr0 = rc + torch.randn(5, generator=g) * 3, rr + torch.randn(5, generator=g) * 3
    nll = torch.rand(5, generator=g) + 1
    beta, eps, alpha, gamma = 0.01, 0.2, 0.5, 0.3

    def margins() -> list[float]:  # each side's mean per counted token (at least 1), then the usual log-ratio margin
        c, r = n_c.clamp(min=1).tolist(), n_r.clamp(min=1).tolist()
        return [(float(pc0[i]) - float(rc[i])) / c[i] - (float(pr0[i]) - float(rr[i])) / r[i] for i in range(5)]

    def by_hand(method: str) -> float:
        total = 0.0
        for i, m in enumerate(margins()):
            if method == "ipo":
                total += (m - 1 / (2 * beta)) ** 2
            elif method == "simpo":  # reference-free: the policy's per-token means alone
                c, r = n_c.clamp(min=1).tolist(), n_r.clamp(min=1).tolist()
                total += -math.log(_sig(beta * (float(pc0[i]) / c[i] - float(pr0[i]) / r[i]) - gamma))
            elif method == "cdpo":
                total += -(1 - eps) * math.log(_sig(beta * m)) - eps * math.log(_sig(-beta * m))
            else:
                total += 0.0 if method == "sft" else -math.log(_sig(beta * m))
                total += alpha * float(nll[i]) if method in ("rpo", "sft") else 0.0
        return total / 5

    for method in METHODS:
        pc, pr = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
        loss, metrics = preference_loss(
            pc,
            pr,
            rc,
            rr,
            method,
            beta,
            eps,
            chosen_nll=nll,
            nll_weight=alpha,
            token_counts=(n_c, n_r),
            simpo_gamma=gamma,
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
def scored_pairs(tiny_aligned_ar):
    """Four pairs of unequal lengths, scored by the reference scorer: (model dir, pair records)."""
    import pandas as pd

    from actors.reference import ReferenceScorer
    from sa_ray.models.vocab import EOS

    model_dir, vocab = tiny_aligned_ar
    a, b, c, _ = vocab.text_ids(["a", "b", "c", "d"])
    code = vocab.code_offset
    prompt, (whole, early, repeated, endless) = tiny_samples(vocab)
    pairs = [
        {"utt_id": f"u{i}", "sample_idx": 0, "iteration": 0, "prompt_ids": prompt, "chosen_ids": ch, "rejected_ids": rj}
        for i, (ch, rj) in enumerate(
            [
                (whole, early),
                ([b], [c]),  # a correction: one token each
                (repeated, [a, code + 5, c, code, code, code, code, EOS]),
                ([a, code, b, code, c, code, EOS], endless),
            ]
        )
    ]
    scored = ReferenceScorer(str(model_dir), batch_size=3).score(pd.DataFrame(pairs), 0, None).to_dict("records")
    return model_dir, scored


def test_step0_of_a_length_normalised_learner_is_ln2(scored_pairs):
    """The reference scorer writes each side's sum and its token count; the learner divides both by the counts it
    counts itself: policy == reference at step 0, so the loss is ln 2 and every margin 0."""
    from sa_ray.config import AlignConfig
    from sa_ray.dpo import DPOLearner

    model_dir, scored = scored_pairs
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


def _trl_inputs(seed: int, zero_rejected: bool = False) -> dict[str, torch.Tensor]:
    """Per-token logprobs [B, T] of policy (leaves, for gradients) and reference with right-padded loss masks of
    unequal lengths (~100-300 tokens, as the align loop's targets), as TRL's trainers hold them."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 320
    n_c = torch.tensor([300, 7, 150, 1, 95, 260])
    n_r = torch.tensor([120, 310, 2, 1, 0 if zero_rejected else 40, 260])
    mask = {k: torch.arange(T)[None, :] < n[:, None] for k, n in (("c", n_c), ("r", n_r))}
    # the policy near the reference, token by token, so the margins are of the order the losses see
    ref = {k: -torch.rand(B, T, generator=g) * 3 for k in "cr"}
    pol = {k: (ref[k] + torch.randn(B, T, generator=g) * 0.3).requires_grad_() for k in "cr"}
    return {"pol": pol, "ref": ref, "mask": mask, "n_c": n_c, "n_r": n_r}


def _ours(x: dict, method: str, beta: float, **kw) -> tuple[torch.Tensor, dict[str, float]]:
    """sa_ray's loss from what the learner hands it: each side's SUMMED logprob and its token count."""
    pc, pr = ((x["pol"][k] * x["mask"][k]).sum(-1) for k in "cr")
    rc, rr = ((x["ref"][k] * x["mask"][k]).sum(-1) for k in "cr")
    return preference_loss(pc, pr, rc, rr, method, beta, token_counts=(x["n_c"], x["n_r"]), **kw)


def _grads(loss: torch.Tensor, x: dict) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [x["pol"]["c"], x["pol"]["r"]]))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_is_trls_per_token_mean_form(beta):
    """TRL's DPOTrainer, loss_type="ipo": chosen_scores = summed log-ratio, chosen_avg_score = chosen_scores /
    chosen_mask.sum(1).clamp(min=1), the same for the rejected, loss = mean((avg_c - avg_r - 1/(2 beta))^2)."""
    x = _trl_inputs(2, zero_rejected=True)

    def trl() -> torch.Tensor:
        scores = {k: ((x["pol"][k] - x["ref"][k]) * x["mask"][k]).sum(1) for k in "cr"}
        avg = {k: scores[k] / x["mask"][k].sum(1).clamp(min=1.0) for k in "cr"}
        return ((avg["c"] - avg["r"] - 1 / (2 * beta)) ** 2).mean()

    want = trl()
    got, metrics = _ours(x, "ipo", beta)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert metrics["dpo_loss"] == metrics["loss"] == pytest.approx(float(want.detach()), rel=1e-5)
    for a, b in zip(_grads(got, x), _grads(want, x)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    # and in closed form: d/d logp_t of the chosen = 2 (m - 1/(2 beta)) / (B n_c) on its masked tokens, 0 elsewhere
    got, _ = _ours(x, "ipo", beta)
    gc, gr = _grads(got, x)
    n_c, n_r = x["n_c"].clamp(min=1).float(), x["n_r"].clamp(min=1).float()
    with torch.no_grad():
        m = sum(
            ((x["pol"][k] - x["ref"][k]) * x["mask"][k]).sum(-1) / n * sign
            for k, n, sign in (("c", n_c, 1), ("r", n_r, -1))
        )
    coef = 2 * (m - 1 / (2 * beta)) / 6
    assert torch.allclose(gc, (coef / n_c)[:, None] * x["mask"]["c"], rtol=1e-4, atol=1e-9)
    assert torch.allclose(gr, (-coef / n_r)[:, None] * x["mask"]["r"], rtol=1e-4, atol=1e-9)


def test_ipo_without_token_counts_is_refused_naming_why():
    s = torch.tensor([-120.0, -40.0])
    with pytest.raises(ValueError, match="ipo is defined on each side's per-token MEAN logprob"):
        preference_loss(s, s - 1, s, s, "ipo", 0.1)
    with pytest.raises(ValueError, match="simpo is defined on each side's per-token MEAN logprob"):
        preference_loss(s, s - 1, s, s, "simpo", 0.1)


@pytest.mark.parametrize("beta, gamma", [(2.0, 0.5), (10.0, 1.6), (0.1, 0.0)])
def test_simpo_is_trls_cpo_simpo(beta, gamma):
    """TRL's CPOTrainer, loss_type="simpo": logps = (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    (average_log_prob), logits = (chosen_logps - rejected_logps) - simpo_gamma / beta,
    loss = mean(-logsigmoid(beta * logits)); rewards = beta * logps."""
    x = _trl_inputs(3)

    def trl() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logps = {k: (x["pol"][k] * x["mask"][k]).sum(-1) / x["mask"][k].sum(-1) for k in "cr"}
        logits = (logps["c"] - logps["r"]) - gamma / beta
        return (
            -torch.nn.functional.logsigmoid(beta * logits).mean(),
            beta * logps["c"].detach(),
            beta * logps["r"].detach(),
        )

    want, chosen_rewards, rejected_rewards = trl()
    got, metrics = _ours(x, "simpo", beta, simpo_gamma=gamma)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert metrics["dpo_loss"] == metrics["loss"] == pytest.approx(float(want.detach()), rel=1e-5)
    for a, b in zip(_grads(got, x), _grads(want, x)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    # the rewards are the policy's own per-token means, scaled by beta (as TRL's CPO logs them)
    assert metrics["chosen_reward"] == pytest.approx(float(chosen_rewards.mean()), rel=1e-5)
    assert metrics["rejected_reward"] == pytest.approx(float(rejected_rewards.mean()), rel=1e-5)
    assert metrics["reward_margin"] == pytest.approx(float((chosen_rewards - rejected_rewards).mean()), rel=1e-5)
    assert metrics["reward_acc"] == pytest.approx(float((chosen_rewards > rejected_rewards).float().mean()))
    assert metrics["policy_chosen_logp"] == pytest.approx(float(chosen_rewards.mean()) / beta, rel=1e-5)
    # closed form: d/d logp_t of the chosen = -beta sigmoid(-(beta m - gamma)) / (B n_c) on its masked tokens
    got, _ = _ours(x, "simpo", beta, simpo_gamma=gamma)
    gc, gr = _grads(got, x)
    n_c, n_r = x["n_c"].float(), x["n_r"].float()
    with torch.no_grad():
        m = (x["pol"]["c"] * x["mask"]["c"]).sum(-1) / n_c - (x["pol"]["r"] * x["mask"]["r"]).sum(-1) / n_r
        coef = -beta * torch.sigmoid(-(beta * m - gamma)) / 6
    assert torch.allclose(gc, (coef / n_c)[:, None] * x["mask"]["c"], rtol=1e-4, atol=1e-9)
    assert torch.allclose(gr, (-coef / n_r)[:, None] * x["mask"]["r"], rtol=1e-4, atol=1e-9)


def test_simpo_ignores_the_reference():
    x = _trl_inputs(4)
    loss, metrics = _ours(x, "simpo", 2.0)
    grads = _grads(loss, x)
    g = torch.Generator().manual_seed(5)
    for ref in ({k: -torch.rand(6, 320, generator=g) * 9 for k in "cr"}, {k: torch.zeros(6, 320) for k in "cr"}):
        other, other_metrics = _ours({**x, "ref": ref}, "simpo", 2.0)
        assert float(other.detach()) == float(loss.detach()) and other_metrics == metrics
        assert all(torch.equal(a, b) for a, b in zip(_grads(other, x), grads))


def test_config_takes_simpo_and_refuses_a_negative_gamma():
    from sa_ray.config import ConfigError, load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_config(tiny, ["align.method=simpo", "align.simpo_gamma=1.2"])
    assert (cfg.align.method, cfg.align.simpo_gamma) == ("simpo", 1.2)
    assert load_config(tiny).align.simpo_gamma == 0.5  # TRL's simpo_gamma default
    assert load_config(tiny, ["align.simpo_gamma=0"]).align.simpo_gamma == 0
    with pytest.raises(ConfigError, match="align.simpo_gamma must be >= 0"):
        load_config(tiny, ["align.simpo_gamma=-0.1"])
    with pytest.raises(ConfigError, match="align.method must be dpo, cdpo, ipo, rpo, sft, simpo, coh, grpo or ppo"):
        load_config(tiny, ["align.method=orpo"])


@pytest.mark.parametrize("method", ["ipo", "simpo"])
def test_the_learner_gives_ipo_and_simpo_per_token_means_whatever_length_normalize_says(scored_pairs, method):
    """Step 0 (policy == reference): ipo's margin is 0, its loss (1/(2 beta))^2; simpo's is TRL's on the per-token
    means the reference scorer wrote. align.length_normalize=true changes nothing for either."""
    from sa_ray.config import AlignConfig
    from sa_ray.dpo import DPOLearner

    model_dir, scored = scored_pairs
    beta, gamma = 0.5, 0.3
    steps = {}
    for normalise in (False, True):
        cfg = AlignConfig(
            method=method, beta=beta, simpo_gamma=gamma, length_normalize=normalise, batch_size=4, steps=2,
            lora_rank=4, lora_alpha=8,
        )  # fmt: skip
        steps[normalise] = DPOLearner(model_dir, None, cfg, scored).train_step()
    for key in ("dpo_loss", "loss", "reward_margin", "chosen_reward", "rejected_reward", "policy_chosen_logp"):
        assert steps[True][key] == pytest.approx(steps[False][key], rel=1e-6, abs=1e-9), key
    mean_c = torch.tensor([p["ref_chosen_logp"] / p["ref_chosen_tokens"] for p in scored], dtype=torch.float64)
    mean_r = torch.tensor([p["ref_rejected_logp"] / p["ref_rejected_tokens"] for p in scored], dtype=torch.float64)
    if method == "ipo":
        want = (1 / (2 * beta)) ** 2
        assert abs(steps[False]["reward_margin"]) < 1e-7
    else:
        want = float(-torch.nn.functional.logsigmoid(beta * (mean_c - mean_r) - gamma).mean())
        assert steps[False]["chosen_reward"] == pytest.approx(beta * float(mean_c.mean()), rel=1e-5)
    assert steps[False]["dpo_loss"] == pytest.approx(want, rel=1e-5)


def test_a_prompt_run_once_for_all_its_continuations_gives_what_packing_gives(tmp_path):
    """`shared_prompt_logprobs` against `token_logprobs` on the packed sequences: values and gradients, through a
    LoRA adapter as the learner has, with prompts of several lengths and an empty continuation."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from sa_ray.losses import pack, shared_prompt_logprobs, token_logprobs
    from sa_ray.models.ar import IGNORE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # a trained adapter: B is zero when LoRA starts
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    rng = torch.Generator().manual_seed(1)

    def seq(n: int) -> list[int]:
        return torch.randint(1, 97, (n,), generator=rng).tolist()

    prompts = [seq(5), seq(11), seq(8)]
    sides = [[seq(7), seq(3), seq(9)], [seq(4), [], seq(12)], [seq(6), seq(6), seq(1)]]  # chosen, rejected, golden

    packed_lp, packed_labels, _ = token_logprobs(model, pack(prompts * 3, [c for side in sides for c in side]))
    shared_lp, labels = shared_prompt_logprobs(model, prompts, sides)
    for row, cont in enumerate(c for side in sides for c in side):
        start = len(prompts[row % 3]) - 1  # where `pack`'s shifted labels put token 0
        assert labels[row, : len(cont)].tolist() == cont == packed_labels[row, start : start + len(cont)].tolist()
        assert (labels[row, len(cont) :] == IGNORE).all()
        assert torch.allclose(shared_lp[row, : len(cont)], packed_lp[row, start : start + len(cont)], atol=1e-5)
    assert torch.allclose(shared_lp.sum(-1), packed_lp.sum(-1), atol=1e-5)

    def grads(total: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        (total * torch.arange(1, 10)).sum().backward()  # a weight per row: each row's gradient counts apart
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    packed_grads = grads(token_logprobs(model, pack(prompts * 3, [c for side in sides for c in side]))[0].sum(-1))
    shared_grads = grads(shared_prompt_logprobs(model, prompts, sides)[0].sum(-1))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(packed_grads, shared_grads))
