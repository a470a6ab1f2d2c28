"""The LoRA preference learner: plain PyTorch, no Ray (actors/learner.py runs it in Ray Train workers).

The policy is base + LoRA; it starts from the adapter that produced the iteration's rejected samples (a
fresh, zero adapter at iteration 0), which is also the iteration's reference, so step 0 has policy ==
reference. Reference logprobs come precomputed with each pair (the ReferenceScorer used `pair_logprobs`,
as the learner does): the learner never holds a reference model. A batch's prompts run once, and its chosen
and rejected sequences together on their keys and values (`shared_prompt_logprobs`). The checkpoint holds
adapter, optimiser, scheduler, RNG and data position: a resumed run reproduces the uninterrupted one step for step.

Workers. `align.batch_size` is the pairs of one optimiser step, whatever the number of workers: every
worker holds ALL pairs and draws the same order (seeded by seed and epoch, not rank); a step takes the next
`batch_size` pairs of it and worker r of `world` computes the loss on the r-th of `world` equal blocks. The
loss is a mean over pairs (`preference_loss`), so DDP's average of the workers' gradients (or ZeRO's
reduce-scatter, which averages too) is the gradient of the whole step's mean loss: `world` workers train the
adapter one worker trains on the same batch, up to float32 summation order (tests/test_learner_scale.py).

The optimiser step is a `Stepper` (`sa_ray/engines/deepspeed_engine.py`): plain torch AdamW, or DeepSpeed
ZeRO stage 1/2 with `align.deepspeed`. Both checkpoint the adapter and torch AdamW's per-parameter layout,
so a run resumes with or without ZeRO, on any number of workers.
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
from sa_ray.engines.deepspeed_engine import make_stepper
from sa_ray.losses import PER_TOKEN_METHODS, pack, preference_loss, sequence_logprobs, shared_prompt_logprobs
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
        """Which label positions count, for the chosen rows then the rejected rows of `pair_logprobs`'s labels
        ([2n, T], column j the continuation's token j); None: all of them."""
        if self.tokens == "all":
            return None
        n = len(pairs)
        if self.tokens == "frames":
            return (labels[: 2 * n] >= self.vocab.code_offset) & (labels[: 2 * n] < self.vocab.size)
        keep = torch.isin(labels[: 2 * n], self.phone_ids.to(labels.device))
        if self.tokens == "errors":
            keep[n:] = False
            for i, p in enumerate(pairs):
                text = self.vocab.prompt_text_ids(p["prompt_ids"])
                wrong = wrong_phone_positions(p["rejected_ids"], text, self.vocab)
                keep[n + i, torch.tensor(wrong, dtype=torch.long)] = True  # column j: the continuation's token j
        return keep


def pair_logprobs(
    model: torch.nn.Module,
    pairs: list[dict],
    margin: MarginTokens | None = None,
    nll_target: str = "chosen",
    counts: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Chosen [B] and rejected [B] logprobs summed over their target tokens (over those `margin` counts when
    given), and the mean logprob per token over ALL tokens of each pair's chosen (or, with
    `nll_target="golden"`, its golden target): rpo's NLL. With `counts`, also how many tokens each chosen and
    rejected sum is over (`align.length_normalize` divides by them). Each prompt runs once for all its sides
    (`shared_prompt_logprobs`)."""
    n = len(pairs)
    sides = ["chosen_ids", "rejected_ids"] + (["golden_ids"] if nll_target == "golden" else [])
    token_lp, labels = shared_prompt_logprobs(
        model, [p["prompt_ids"] for p in pairs], [[p[side] for p in pairs] for side in sides]
    )
    mask = None if margin is None else margin.mask(pairs, labels)
    logp = (token_lp[: 2 * n] if mask is None else token_lp[: 2 * n] * mask).sum(-1)
    nll_rows = slice(2 * n, 3 * n) if nll_target == "golden" else slice(0, n)
    out = logp[:n], logp[n:], token_lp[nll_rows].sum(-1) / (labels[nll_rows] != IGNORE).sum(-1)
    if not counts:
        return out
    counted = ((labels[: 2 * n] != IGNORE) if mask is None else mask).sum(-1)
    return (*out, counted[:n], counted[n:])


def _check_reference_counts(batch: list[dict], n_chosen: torch.Tensor, n_rejected: torch.Tensor) -> None:
    """The pair set's reference summed over as many tokens as the learner's margin counts (pair sets scored before
    the counts were written carry none). Else the margins start off zero: align.margin_tokens changed since."""
    if "ref_chosen_tokens" not in batch[0]:
        return
    written = [(int(p["ref_chosen_tokens"]), int(p["ref_rejected_tokens"])) for p in batch]
    if written != list(zip(n_chosen.tolist(), n_rejected.tolist())):
        raise ValueError(
            "the pair set's reference logprobs sum over other tokens than this learner's margin "
            "(align.margin_tokens changed since the pairs were rolled out?); roll the iteration out again"
        )


def probe_logprob(model: torch.nn.Module, probe: dict) -> float:
    """The adapter probe's value under `model`: the same function every engine is checked against."""
    with torch.inference_mode():
        return float(sequence_logprobs(model, pack([probe["prompt"]], [probe["continuation"]]))[0][0])


def pair_key(p: dict) -> tuple:
    """A training row's key, (iteration, utt_id, sample_idx): replayed pairs of earlier iterations may share an
    utterance. Rows are sorted by it, so the order never depends on how they were read."""
    return int(p.get("iteration", 0)), p["utt_id"], p["sample_idx"]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of an epoch's n rows (sorted by `pair_key`): seeded by seed and epoch, not by rank, so every worker
    (and the PPO critic, training beside the learner) draws the same. ":0" is the rank the seed named when each
    worker drew its own order, so one worker still draws the order it drew then (earlier runs reproduce)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}:0").shuffle(order)
    return order


class DPOLearner:
    def __init__(
        self,
        base_dir: str | Path,
        adapter_dir: str | Path | None,
        cfg: AlignConfig,
        pairs: list[dict],
        rank: int = 0,
        world: int = 1,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    ):
        """`pairs`: ALL the iteration's pairs, on every worker. `wrap` (Ray Train's prepare_model: the worker's
        device, DDP when world > 1) is for the plain path; a ZeRO engine places the model and reduces itself."""
        self.cfg, self.rank, self.world = cfg, rank, world
        self.pairs = sorted(pairs, key=pair_key)
        if not self.pairs:
            raise ValueError("no preference pairs to learn from")
        if cfg.batch_size % world:
            raise ValueError(f"align.batch_size ({cfg.batch_size}) must be a multiple of the workers ({world})")
        # fewer pairs than a batch: a step takes them all, as many as split evenly over the workers
        self.step_pairs = min(cfg.batch_size, len(self.pairs) - len(self.pairs) % world)
        if self.step_pairs == 0:
            raise ValueError(f"{len(self.pairs)} preference pairs cannot be split over {world} learner workers")
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
        self.stepper = make_stepper(
            self.model,
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=(0.9, 0.95),
            weight_decay=0.0,
            schedule=warmup_cosine(cfg.warmup_steps, cfg.steps),
            grad_clip=cfg.grad_clip,
            zero_stage=cfg.deepspeed,
            wrap=wrap,
        )
        self.model_train = self.stepper.module  # DDP / the ZeRO engine around self.model, or self.model itself
        self.device = next(self.model.parameters()).device
        self.optimizers = {"adapter": self.stepper.optimizer}
        self.schedulers = {"adapter": self.stepper.scheduler}
        self.step_count, self.epoch, self.position = 0, 0, 0

    # ----------------------------------------------------------------------------------------- data

    def next_batch(self) -> list[dict]:
        """This worker's block of the step's pairs; `position` counts the pairs of all workers."""
        if self.position + self.step_pairs > len(self.pairs):
            self.epoch, self.position = self.epoch + 1, 0
        order = epoch_order(len(self.pairs), self.cfg.seed, self.epoch)
        share = self.step_pairs // self.world
        start = self.position + self.rank * share
        self.position += self.step_pairs
        return [self.pairs[i] for i in order[start : start + share]]

    # ---------------------------------------------------------------------------------------- steps

    def loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, nll_mean, n_c, n_r = pair_logprobs(
            self.model_train, batch, self.margin, self.nll_target, counts=True
        )
        ref_c = torch.tensor([p["ref_chosen_logp"] for p in batch], dtype=chosen.dtype, device=chosen.device)
        ref_r = torch.tensor([p["ref_rejected_logp"] for p in batch], dtype=chosen.dtype, device=chosen.device)
        _check_reference_counts(batch, n_c, n_r)
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
            # the reference summed over the very tokens the policy just counted (same function, same margin);
            # ipo and simpo are on per-token means whatever align.length_normalize says
            token_counts=(n_c, n_r) if self.cfg.length_normalize or self.cfg.method in PER_TOKEN_METHODS else None,
            simpo_gamma=self.cfg.simpo_gamma,
        )
        if self.nll_target == "golden" and "chosen_nll" in metrics:
            metrics["golden_nll"] = metrics.pop("chosen_nll")
        return loss, metrics

    def train_step(self) -> dict[str, float]:
        self.model_train.train()
        loss, metrics = self.loss(self.next_batch())
        self.stepper.backward(loss)
        grad_norm = self.stepper.step()  # of the step's averaged gradient: the same on every worker
        self.step_count += 1
        metrics = self._mean_over_workers(metrics)
        return {**metrics, "grad_norm": grad_norm, "lr": self.stepper.lr, "train_pairs": len(self.pairs)}

    def _mean_over_workers(self, metrics: dict[str, float]) -> dict[str, float]:
        """The step's metrics over all its pairs, not this worker's block: each is a mean over pairs and the
        blocks are equal, so the mean of the workers' values (every worker computes the same keys)."""
        if self.world == 1:
            return metrics
        import torch.distributed as dist

        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)  # NCCL: on GPU
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist()))

    # ---------------------------------------------------------------------------------- checkpoints

    def save(self, directory: str | Path) -> None:
        """Rank 0 writes. Under ZeRO every rank must call it: gathering the optimiser state is collective."""
        if self.rank != 0:
            if self.cfg.deepspeed:
                self.optimizers["adapter"].state_dict()  # this rank's share of the gather rank 0 writes
            return
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
        """Every rank loads; the adapter first, since ZeRO refreshes its fp32 master weights from the model."""
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
