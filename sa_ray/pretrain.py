"""Supervised training of the AR and NAR models on golden tokens (the "weak" base model).

`CodecLMTrainer` is plain PyTorch and knows nothing of Ray: `actors/pretrainer.py` runs it inside Ray
Train workers, tests run it directly. Data order is a pure function of (seed, epoch, rank), and the
checkpoint holds weights, optimiser moments, schedulers, the RNG and the data position, so a resumed
run reproduces the uninterrupted one step for step. The optimiser step is a `Stepper`
(`sa_ray/engines/deepspeed_engine.py`): plain AdamW, or DeepSpeed ZeRO stage 1/2 when
`PretrainConfig.deepspeed` names a stage; both write the same checkpoint layout.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sa_ray.checkpoint import load_state, save_state
from sa_ray.config import ModelConfig, PretrainConfig
from sa_ray.data.examples import PromptBank, ar_example, drop_condition, nar_example
from sa_ray.engines.deepspeed_engine import make_stepper
from sa_ray.models.ar import ar_loss, build_ar_model, collate_ar, load_ar, save_ar
from sa_ray.models.nar import NARConfig, NARModel, collate_nar
from sa_ray.models.vocab import Vocab


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bfloat16 in hardware. A CPU without AVX512-BF16 or AMX emulates it: measured on
    an AVX2-only AMD EPYC here, a bf16-autocast training step of the tiny recipe took 29 s against 1.0 s in fp32."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no way to tell, and emulated bf16 costs far more than fp32 loses
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def rewarmed(schedule: Callable[[int], float], start: int, warmup: int) -> Callable[[int], float]:
    """`schedule` from step `start` on, ramped up again over `warmup` steps: a warm start's AdamW moments are
    fresh, and a full-size first update from zero moments would jolt the trained weights."""
    return lambda step: schedule(step) * min(1.0, max(0, step - start + 1) / max(1, warmup))


class CodecLM(torch.nn.Module):
    """AR + NAR as one module, so one DDP wrapper all-reduces both models' gradients."""

    def __init__(self, ar: torch.nn.Module, nar: NARModel):
        super().__init__()
        self.ar, self.nar = ar, nar

    def forward(self, ar_batch: dict, nar_batch: dict, generator: torch.Generator | None = None):
        loss_ar, metrics = ar_loss(self.ar, ar_batch)
        loss_nar, nar_metrics = self.nar.loss(nar_batch, generator=generator)
        return loss_ar + loss_nar, {**metrics, **nar_metrics}


class CodecLMTrainer:
    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: PretrainConfig,
        vocab: Vocab,
        n_codebooks: int,
        frame_rate: float,
        rows: list[dict],
        bank: PromptBank,
        rank: int = 0,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    ):
        self.cfg, self.vocab, self.rank = train_cfg, vocab, rank
        self.n_codebooks, self.frame_rate, self.bank = n_codebooks, frame_rate, bank
        self.rows = sorted(rows, key=lambda r: r["utt_id"])
        torch.manual_seed(train_cfg.seed)  # same initial weights on every worker
        self.ar = build_ar_model(model_cfg, vocab)
        self.nar = NARModel(
            NARConfig(
                n_codebooks=n_codebooks,
                codebook_size=vocab.codebook_size,
                n_text_tokens=len(vocab.text_tokens),
                hidden=model_cfg.nar_hidden,
                layers=model_cfg.nar_layers,
                heads=model_cfg.nar_heads,
                ff=4 * model_cfg.nar_hidden,
            )
        )
        self.model = CodecLM(self.ar, self.nar)
        torch.manual_seed(train_cfg.seed + 1000 * (rank + 1))  # dropout differs per worker
        schedule = warmup_cosine(train_cfg.warmup_steps, train_cfg.steps)
        if train_cfg.warm_start:
            schedule = rewarmed(schedule, train_cfg.warm_start_step, train_cfg.warmup_steps)
        # `wrap` (DDP) applies to the plain path only: a ZeRO engine reduces gradients itself
        self.stepper = make_stepper(
            self.model,
            self.model.parameters(),
            lr=train_cfg.lr,
            betas=(0.9, 0.98),
            weight_decay=train_cfg.weight_decay,
            schedule=schedule,
            grad_clip=train_cfg.grad_clip,
            zero_stage=train_cfg.deepspeed,
            wrap=wrap,
        )
        self.model_train = self.stepper.module
        self.optimizers = {"model": self.stepper.optimizer}
        self.schedulers = {"model": self.stepper.scheduler}
        # where `wrap` (Ray Train's prepare_model: the worker's GPU when it has one) or the ZeRO engine put it;
        # every batch goes there
        self.device = next(self.model.parameters()).device
        self.device_type = self.device.type
        self.bf16 = train_cfg.bf16 and native_bf16(self.device_type)
        if train_cfg.bf16 and not self.bf16 and rank == 0:
            warnings.warn(
                f"pretrain.bf16: this {self.device_type} has no bfloat16 matmuls, training in float32 "
                "(emulated bf16 is ~30x slower)",
                stacklevel=2,
            )
        self.step_count, self.epoch, self.position = 0, 0, 0
        self.nar_gen = torch.Generator().manual_seed(train_cfg.seed + rank)

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    # ----------------------------------------------------------------------------------- data

    def _order(self) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.cfg.seed}:{self.epoch}:{self.rank}").shuffle(order)
        return order

    def _examples(
        self, rows: list[dict], bank: PromptBank, rng: random.Random, drop: list[bool] | None = None
    ) -> tuple[dict, dict]:
        """`drop`: which rows' AR examples lose their text (condition dropout); the NAR keeps every condition."""
        ar, nar = [], []
        for i, row in enumerate(rows):
            prompt = bank.draw(row["speaker"], row["utt_id"], rng)
            ar.append(ar_example(row, prompt, self.vocab, self.frame_rate, drop_text=bool(drop and drop[i])))
            nar.append(nar_example(row, prompt, self.vocab, self.frame_rate, self.n_codebooks))
        return to_device(collate_ar(ar), self.device), to_device(collate_nar(nar), self.device)

    def _advance(self) -> int:
        """Moves the data position one batch on; returns where that batch starts in this epoch's order."""
        if self.position + self.cfg.batch_size > len(self.rows):
            self.epoch, self.position = self.epoch + 1, 0
        self.position += self.cfg.batch_size
        return self.position - self.cfg.batch_size

    def next_batch(self) -> tuple[dict, dict]:
        start = self._advance()
        indices = self._order()[start : start + self.cfg.batch_size]
        rng = random.Random(f"{self.cfg.seed}:{self.epoch}:{self.rank}:{start}")  # prompt choice
        rows = [self.rows[i] for i in indices]
        drop = [drop_condition(self.cfg.seed, r["utt_id"], self.epoch, self.cfg.cond_dropout) for r in rows]
        return self._examples(rows, self.bank, rng, drop)

    # ---------------------------------------------------------------------------------- steps

    def train_step(self) -> dict[str, float]:
        ar_batch, nar_batch = self.next_batch()
        self.model_train.train()
        with self._autocast():
            loss, metrics = self.model_train(ar_batch, nar_batch, self.nar_gen)
        self.stepper.backward(loss)
        metrics["grad_norm"] = self.stepper.step()
        self.step_count += 1
        metrics["lr"] = self.stepper.lr
        return metrics

    @torch.no_grad()
    def evaluate(self, rows: list[dict], bank: PromptBank, batch_size: int = 16) -> dict[str, float]:
        """Teacher-forced losses on held-out rows with fixed prompts (comparable across steps)."""
        self.model.eval()
        rng = random.Random(self.cfg.seed)
        totals: dict[str, list[float]] = {}
        for start in range(0, len(rows), batch_size):
            ar_batch, nar_batch = self._examples(rows[start : start + batch_size], bank, rng)
            with self._autocast():
                _, m = self.model(ar_batch, nar_batch, torch.Generator().manual_seed(start))
            for k, v in m.items():
                totals.setdefault(k, []).append(v)
        return {f"heldout_{k}": float(np.mean(v)) for k, v in totals.items()}

    # ------------------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path) -> None:
        """Rank 0 writes. Under ZeRO every rank must call it: gathering the optimiser state is collective."""
        if self.rank != 0:
            if self.cfg.deepspeed:
                self.optimizers["model"].state_dict()  # this rank's share of the gather rank 0 writes
            return
        save_state(
            directory,
            {"model": self.model},
            self.optimizers,
            self.schedulers,
            {
                "step": self.step_count,
                "epoch": self.epoch,
                "position": self.position,
                "nar_gen": self.nar_gen.get_state().tolist(),
            },
        )

    def warm_start(self, model_dir: str | Path, step: int) -> None:
        """Takes the weights of a saved base model (`export`'s or ship_base's layout) and goes on at `step`: the
        data order and the schedule are where the run that reached `step` had them; the moments start at zero."""
        model_dir = Path(model_dir)
        ar, vocab = load_ar(model_dir / "ar")
        if vocab != self.vocab:
            raise ValueError(
                f"{model_dir}/ar/vocab.json is not this run's vocabulary: pretrain.warm_start must be "
                "a model trained on the same data (prepared with its codec: codec.path=<model>/codec)"
            )
        try:
            self.ar.load_state_dict(ar.state_dict())
            self.nar.load_state_dict(NARModel.from_pretrained(model_dir / "nar").state_dict())
        except RuntimeError as exc:  # shapes or names differ
            raise ValueError(
                f"pretrain.warm_start={model_dir} does not have this config's model shape "
                f"(model.*): {str(exc).splitlines()[0]}"
            ) from None
        while self.step_count < step:
            self._advance()
            self.step_count += 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose, no step was taken
            warnings.simplefilter("ignore", UserWarning)
            self.schedulers["model"].last_epoch = step - 1
            self.schedulers["model"].step()

    def load(self, directory: str | Path) -> None:
        extra = load_state(directory, {"model": self.model}, self.optimizers, self.schedulers)
        self.step_count, self.epoch, self.position = extra["step"], extra["epoch"], extra["position"]
        self.nar_gen.set_state(torch.tensor(extra["nar_gen"], dtype=torch.uint8))

    def export(self, directory: str | Path) -> None:
        """The base model in its serving layout: ar/ (HF + vocab.json, loads in vLLM) and nar/."""
        save_ar(self.ar, self.vocab, Path(directory) / "ar")
        self.nar.save_pretrained(Path(directory) / "nar")
