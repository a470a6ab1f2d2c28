"""The LoRA preference learner: plain PyTorch, no Ray (actors/learner.py runs it in Ray Train workers).

The policy is base + LoRA; it starts from the adapter that produced the iteration's rejected samples (a
fresh, zero adapter at iteration 0), which is also the iteration's reference, so step 0 has policy ==
reference. Reference logprobs come precomputed with each pair (the ReferenceScorer used `pair_logprobs`,
as the learner does): the learner never holds a reference model. Chosen and rejected sequences of a batch
go through ONE concatenated forward. Data order is a pure function of (seed, epoch, rank) and the
checkpoint holds adapter, optimiser, scheduler, RNG and data position: a resumed run reproduces the
uninterrupted one step for step.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sa_ray import lora
from sa_ray.checkpoint import load_state, save_state
from sa_ray.config import AlignConfig
from sa_ray.losses import pack, preference_loss, sequence_logprobs, token_logprobs
from sa_ray.metrics.phones import wrong_phone_positions
from sa_ray.models.ar import IGNORE, load_ar
from sa_ray.models.vocab import EOS, Vocab
from sa_ray.pretrain import warmup_cosine


class MarginTokens:
    """Which target tokens a pair's margin sums over (`align.margin_tokens`). `all`: every one. `phones`: the
    phone tokens and EOS of the aligned layout, i.e. the decisions that say what is spoken (which phone next,
    when to stop) and not how it sounds (the frames). `errors`: the chosen's phones and EOS against only the
    decisions the rejected got wrong (`wrong_phone_positions`), so the phones a rejected sample got right
    are not pushed down with its mistakes. `frames`: the code tokens alone, how it sounds (what rollouts with
    forced phones leave free to differ)."""

    def __init__(self, vocab: Vocab, tokens: str):
        if tokens not in ("all", "frames") and (tokens not in ("phones", "errors") or not vocab.aligned):
            # AlignConfig.check_model says why to a user
            raise ValueError(f"no margin over {tokens!r} tokens for this vocabulary (aligned={vocab.aligned})")
        self.vocab, self.tokens = vocab, tokens
        self.phone_ids = torch.tensor([*vocab.text_id_range, EOS])

    def mask(self, pairs: list[dict], labels: torch.Tensor) -> torch.Tensor | None:
        """Which label positions count, for the chosen rows then the rejected rows of `pair_logprobs`'s pack
        ([2n, T]); None: all of them."""
        if self.tokens == "all":
            return None
        n = len(pairs)
        if self.tokens == "frames":
            return (labels[: 2 * n] >= self.vocab.code_offset) & (labels[: 2 * n] < self.vocab.size)
        keep = torch.isin(labels[: 2 * n], self.phone_ids.to(labels.device))
        if self.tokens == "errors":
            keep[n:] = False
            for i, p in enumerate(pairs):
                start = len(p["prompt_ids"]) - 1  # labels are shifted by one: target token j scores at start + j
                text = self.vocab.prompt_text_ids(p["prompt_ids"])
                wrong = wrong_phone_positions(p["rejected_ids"], text, self.vocab)
                keep[n + i, torch.tensor([start + j for j in wrong], dtype=torch.long)] = True
        return keep


def pair_logprobs(
    model: torch.nn.Module, pairs: list[dict], margin: MarginTokens | None = None, nll_target: str = "chosen"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen [B] and rejected [B] logprobs summed over their target tokens (over those `margin` counts when
    given), and the mean logprob per token over ALL tokens of each pair's chosen (or, with
    `nll_target="golden"`, its golden target): rpo's NLL. One forward."""
    n = len(pairs)
    conts = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    if nll_target == "golden":
        conts += [p["golden_ids"] for p in pairs]
    token_lp, labels, _ = token_logprobs(model, pack([p["prompt_ids"] for p in pairs] * (len(conts) // n), conts))
    mask = None if margin is None else margin.mask(pairs, labels)
    logp = (token_lp[: 2 * n] if mask is None else token_lp[: 2 * n] * mask).sum(-1)
    nll_rows = slice(2 * n, 3 * n) if nll_target == "golden" else slice(0, n)
    return logp[:n], logp[n:], token_lp[nll_rows].sum(-1) / (labels[nll_rows] != IGNORE).sum(-1)


def probe_logprob(model: torch.nn.Module, probe: dict) -> float:
    """The adapter probe's value under `model`: the same function every engine is checked against."""
    with torch.inference_mode():
        return float(sequence_logprobs(model, pack([probe["prompt"]], [probe["continuation"]]))[0][0])


class DPOLearner:
    def __init__(
        self,
        base_dir: str | Path,
        adapter_dir: str | Path | None,
        cfg: AlignConfig,
        pairs: list[dict],
        rank: int = 0,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    ):
        self.cfg, self.rank = cfg, rank
        self.pairs = sorted(pairs, key=lambda p: (p["utt_id"], p["sample_idx"]))
        if not self.pairs:
            raise ValueError("no preference pairs to learn from")
        # a golden pair's chosen IS its golden target; dpo, cdpo and ipo have no NLL term
        self.nll_target = cfg.nll_target if cfg.pairs == "ranked" and cfg.method in ("rpo", "sft") else "chosen"
        if self.nll_target == "golden" and "golden_ids" not in self.pairs[0]:
            raise ValueError(
                "align.nll_target=golden: these ranked pairs carry no golden_ids (written by an older "
                "version of sa-ray); roll the iteration out again"
            )
        torch.manual_seed(cfg.seed)  # the fresh adapter's A matrices: equal on every worker
        base, vocab = load_ar(base_dir)
        base.requires_grad_(False)
        self.margin = MarginTokens(vocab, cfg.margin_tokens)
        self.model = lora.attach(base, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, adapter_dir)
        self.model_train = wrap(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = {"adapter": torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)}
        self.schedulers = {
            "adapter": torch.optim.lr_scheduler.LambdaLR(
                self.optimizers["adapter"], warmup_cosine(cfg.warmup_steps, cfg.steps)
            )
        }
        self.step_count, self.epoch, self.position = 0, 0, 0

    # ----------------------------------------------------------------------------------------- data

    def next_batch(self) -> list[dict]:
        bs = min(self.cfg.batch_size, len(self.pairs))
        if self.position + bs > len(self.pairs):
            self.epoch, self.position = self.epoch + 1, 0
        order = list(range(len(self.pairs)))
        random.Random(f"{self.cfg.seed}:{self.epoch}:{self.rank}").shuffle(order)
        batch = [self.pairs[i] for i in order[self.position : self.position + bs]]
        self.position += bs
        return batch

    # ---------------------------------------------------------------------------------------- steps

    def loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, nll_mean = pair_logprobs(self.model_train, batch, self.margin, self.nll_target)
        ref_c = torch.tensor([p["ref_chosen_logp"] for p in batch], dtype=chosen.dtype, device=chosen.device)
        ref_r = torch.tensor([p["ref_rejected_logp"] for p in batch], dtype=chosen.dtype, device=chosen.device)
        loss, metrics = preference_loss(
            chosen,
            rejected,
            ref_c,
            ref_r,
            self.cfg.method,
            self.cfg.beta,
            self.cfg.label_smoothing,
            chosen_nll=-nll_mean,
            nll_weight=self.cfg.nll_weight,
        )
        if self.nll_target == "golden" and "chosen_nll" in metrics:
            metrics["golden_nll"] = metrics.pop("chosen_nll")
        return loss, metrics

    def train_step(self) -> dict[str, float]:
        self.model_train.train()
        loss, metrics = self.loss(self.next_batch())
        opt, sched = self.optimizers["adapter"], self.schedulers["adapter"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        opt.step()
        sched.step()
        self.step_count += 1
        metrics["lr"] = sched.get_last_lr()[0]
        return metrics

    # ---------------------------------------------------------------------------------- checkpoints

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        save_state(
            d,
            {},
            self.optimizers,
            self.schedulers,
            {"step": self.step_count, "epoch": self.epoch, "position": self.position},
        )
        save_file(lora.adapter_tensors(self.model), d / "adapter_state.safetensors")

    def load(self, directory: str | Path) -> None:
        d = Path(directory)
        lora.load_adapter_tensors(self.model, load_file(d / "adapter_state.safetensors"))
        extra = load_state(d, {}, self.optimizers, self.schedulers)
        self.step_count, self.epoch, self.position = extra["step"], extra["epoch"], extra["position"]

    def export(self, directory: str | Path, probe: dict | None = None) -> None:
        """The adapter in PEFT layout (vLLM LoRARequest / peft) and, when given, the probe's value for it."""
        lora.save(self.model, directory)
        if probe is not None:
            self.model.eval()
            value = probe_logprob(self.model, probe)
            (Path(directory) / "probe.json").write_text(json.dumps({**probe, "logprob": value}))
