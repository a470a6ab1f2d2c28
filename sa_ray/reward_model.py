"""A Bradley-Terry reward model of the run's preference pairs: plain PyTorch, no Ray (actors/reward_model.py runs it).

r(prompt, target) is a scalar head on the AR model's final hidden state (after its last norm) at the target's last
token; the base AR model carries a trainable LoRA (`sa_ray.lora`) and the head is trained with it, on
-log sigmoid(r_chosen - r_rejected) over any pair rows (golden vs synthetic, ranked, corrections; human votes
once they are pairs). The head starts at zero, so an untrained model scores every sequence 0: loss ln 2,
accuracy 0.5 (a tie counts half).

Why a LoRA and not a frozen backbone with a head: the frozen model's last hidden state is trained to say which
token comes NEXT, not whether what came before was good. On the tiny slice's golden-vs-sampled pairs (a quarter
of the sentences held out) heads on frozen states reached 0.6-0.95 held-out accuracy depending on the head
(linear, a 64-unit MLP), the pooling (last token, mean over the target) and the split; a rank-8 LoRA with a linear
head reached 0.9-1.0 on five splits after 30 steps of 8 pairs (about 10 s on one core).

Pairs are split into train and held-out by SENTENCE, deterministically by the seed: every pair of a held-out
sentence is held out, whichever voice, utterance, iteration or sample it came from, so the reported accuracy
is on text the model never trained on. The sentence is the prompt's text tokens ([BOS] text [SEP] ...); a
prompt without text falls back to its utt_id.

A checkpoint directory holds `reward_model.safetensors` (the head and the LoRA tensors), `reward_model.json`
(what it was trained from: base directory and fingerprint, settings, pair counts, held-out accuracy) and, when
trained with a lineage, `lineage.json` (`sa_ray.lineage`). The base AR model itself is not copied: like a policy
adapter, the reward model fits only the base it was trained on (`RewardModel.load(..., base_fingerprint=...)`
checks it).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sa_ray import atomic, lineage, lora
from sa_ray.config import RewardModelConfig
from sa_ray.losses import pack
from sa_ray.models.ar import load_ar
from sa_ray.models.vocab import SEP
from sa_ray.preference import damaged_files, read_manifest
from sa_ray.pretrain import warmup_cosine

log = logging.getLogger(__name__)

WEIGHTS, INFO = "reward_model.safetensors", "reward_model.json"
PAIR_COLUMNS = ["utt_id", "prompt_ids", "chosen_ids", "rejected_ids"]


class PairSetError(FileNotFoundError):
    """No usable preference pairs where they were looked for (a FileNotFoundError: jobs report it in one line)."""


# ------------------------------------------------------------------------------------------------ pairs


def committed_pair_sets(run_dir: str | Path) -> list[Path]:
    """The align run's committed pair sets (`<run_dir>/align/pairs/iter_<i>/` with a manifest), by iteration."""
    root = Path(run_dir) / "align" / "pairs"
    found = [d for d in root.glob("iter_*") if d.is_dir() and read_manifest(d) is not None]
    if not found:
        raise PairSetError(f"no committed pair set in {root}: run `python -m jobs.align` first, or pass --pairs DIR")
    return sorted(found, key=lambda d: int(d.name.removeprefix("iter_")))


def read_pair_sets(dirs: list[str | Path]) -> list[dict]:
    """The pair rows of committed pair sets; PairSetError naming the directory that is not one, changed since it
    was committed, or (all together) holds no pair."""
    pairs = []
    for d in map(Path, dirs):
        manifest = read_manifest(d)
        if manifest is None:
            raise PairSetError(f"{d} is not a committed pair set (no _manifest.json)")
        if damaged := damaged_files(d, manifest):
            raise PairSetError(f"{d}: {', '.join(damaged)} changed since the pair set was committed")
        if any(d.glob("*.parquet")):
            pairs += pq.read_table(d, columns=PAIR_COLUMNS).to_pylist()
    if not pairs:
        raise PairSetError(f"no preference pairs in {', '.join(map(str, dirs))}")
    return pairs


def sentence_key(pair: dict) -> str:
    """What the held-out split keeps together: the prompt's text tokens (one sentence in every voice, take,
    iteration and sample), else the utterance."""
    prompt = list(pair["prompt_ids"])
    text = prompt[1 : prompt.index(SEP)] if SEP in prompt else []
    return "text:" + ",".join(map(str, text)) if text else "utt:" + pair["utt_id"]


def split_pairs(pairs: list[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): round(fraction x sentences) sentences drawn by the seed, at least one on each side
    when the fraction is > 0; a pure function of the set of sentences, not of the pairs' order."""
    keys = sorted({sentence_key(p) for p in pairs})
    if heldout_fraction == 0:
        return list(pairs), []
    if len(keys) < 2:
        raise PairSetError(f"the pairs hold {len(keys)} sentence(s): at least 2 are needed to hold some out")
    random.Random(f"reward_model:{seed}").shuffle(keys)
    held = set(keys[: min(len(keys) - 1, max(1, round(heldout_fraction * len(keys))))])
    return [p for p in pairs if sentence_key(p) not in held], [p for p in pairs if sentence_key(p) in held]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_chosen - r_rejected): the chosen wins with probability sigmoid(margin)."""
    return -F.logsigmoid(chosen - rejected).mean()


# ------------------------------------------------------------------------------------------------ model


class RewardModel:
    def __init__(self, base_dir: str | Path, cfg: RewardModelConfig, device: str | torch.device = "cpu"):
        """A fresh reward model on `base_dir` (ar/ + nar/): a zero head and a fresh LoRA (seeded by cfg.seed)."""
        self.cfg, self.base_dir = cfg, Path(base_dir)
        self.info: dict = {}  # what it was trained from and how it did (the checkpoint's reward_model.json)
        self.made_from: dict = {}  # its lineage (sa_ray.lineage), when the job gave one
        torch.manual_seed(cfg.seed)  # the LoRA's A matrices
        ar, _ = load_ar(self.base_dir / "ar")
        ar.requires_grad_(False)
        self.model = lora.attach(ar, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        self.decoder = ar.base_model  # the transformer without its LM head; the LoRA layers sit inside it
        self.head = torch.nn.Linear(ar.config.hidden_size, 1, bias=False)  # a bias cancels in every margin
        torch.nn.init.zeros_(self.head.weight)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.head.to(self.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())

    def set_training(self, mode: bool) -> RewardModel:
        self.model.train(mode)
        self.head.train(mode)
        return self

    def rewards(self, prompts: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
        """r [B] of each (prompt, target), differentiable: one right-padded forward, the head at each row's last
        token (padding comes after it, so a causal model's state there is the unpadded one)."""
        batch = pack(prompts, targets)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.decoder(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1
        return self.head(hidden[torch.arange(len(prompts), device=self.device), last]).squeeze(-1).float()

    def score(self, prompts: list[list[int]], targets: list[list[int]]) -> list[float]:
        """r of each (prompt, target), in batches of `score_batch_size`: higher = more like what was chosen."""
        self.set_training(False)
        size, out = self.cfg.score_batch_size, []
        with torch.inference_mode():
            for start in range(0, len(prompts), size):
                out += self.rewards(prompts[start : start + size], targets[start : start + size]).tolist()
        return out

    def evaluate(self, pairs: list[dict]) -> dict[str, float]:
        """accuracy (chosen scored above rejected; a tie counts half), mean margin and BT loss over `pairs`."""
        if not pairs:
            return {}
        prompts = [list(p["prompt_ids"]) for p in pairs]
        scores = self.score(
            prompts * 2, [list(p["chosen_ids"]) for p in pairs] + [list(p["rejected_ids"]) for p in pairs]
        )
        chosen, rejected = torch.tensor(scores[: len(pairs)]), torch.tensor(scores[len(pairs) :])
        wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
        return {
            "accuracy": float(wins.mean()),
            "margin": float((chosen - rejected).mean()),
            "loss": float(bradley_terry_loss(chosen, rejected)),
        }

    # ------------------------------------------------------------------------------------ checkpoint

    def save(self, directory: str | Path) -> Path:
        """The checkpoint directory, appearing whole (written beside it, then swapped in)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = atomic.aside(directory)
        staging.mkdir()
        try:
            tensors = {"head.weight": self.head.weight.detach().cpu().contiguous()}
            tensors |= {f"lora.{k}": v.cpu() for k, v in lora.adapter_tensors(self.model).items()}
            save_file(tensors, staging / WEIGHTS)
            info = {
                **self.info,
                "base_dir": str(self.base_dir),
                "settings": dataclasses.asdict(self.cfg),
                "made_from": self.made_from,
            }
            (staging / INFO).write_text(json.dumps(info, indent=1, sort_keys=True))
            if self.made_from:
                lineage.write(staging, self.made_from)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return atomic.swap_in(staging, directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        base_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        base_fingerprint: str | None = None,
    ) -> RewardModel:
        """A saved reward model on its base (`base_dir`, default: the one it was trained on), ready to score. With
        `base_fingerprint`, LineageError unless it was trained on that base."""
        directory = Path(directory)
        if not (directory / INFO).is_file():
            raise FileNotFoundError(f"{directory} is not a reward model checkpoint (no {INFO})")
        info = json.loads((directory / INFO).read_text())
        base = Path(base_dir or info["base_dir"])
        if not (base / "ar" / "vocab.json").is_file():
            raise FileNotFoundError(
                f"{directory} was trained on the base model {base}, which is not there: pass base_dir"
            )
        if base_fingerprint is not None:
            lineage.check(directory, base_fingerprint, base, f"reward model {directory}")
        model = cls(base, RewardModelConfig(**info["settings"]), device)
        tensors = load_file(directory / WEIGHTS)
        with torch.no_grad():
            model.head.weight.copy_(tensors.pop("head.weight"))
        lora.load_adapter_tensors(model.model, {k.removeprefix("lora."): v for k, v in tensors.items()})
        model.info, model.made_from = info, info.get("made_from", {})
        return model.set_training(False)


# --------------------------------------------------------------------------------------------- training


def _batches(pairs: list[dict], size: int, seed: int):
    """Endless batches of `size` pairs: a fresh seeded order every pass, as the DPO learner draws them."""
    size, epoch = min(size, len(pairs)), 0
    while True:
        order = list(range(len(pairs)))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            yield [pairs[i] for i in order[start : start + size]]
        epoch += 1


def train(
    base_dir: str | Path,
    pairs: list[dict],
    cfg: RewardModelConfig,
    device: str | torch.device = "cpu",
    made_from: dict | None = None,
) -> tuple[RewardModel, dict]:
    """A reward model trained on the train side of `pairs` (`split_pairs`) and its report: pair and sentence
    counts, train and held-out accuracy, margin and loss, and `history` (loss, accuracy, lr per step). `made_from`
    (the lineage: base_fingerprint, base_dir, config, ...) goes into its checkpoint."""
    train_pairs, heldout = split_pairs(pairs, cfg.heldout_fraction, cfg.seed)
    model = RewardModel(base_dir, cfg, device)
    params = model.parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.steps))
    history = []
    model.set_training(True)
    for batch in itertools.islice(_batches(train_pairs, cfg.batch_size, cfg.seed), cfg.steps):
        r = model.rewards(
            [p["prompt_ids"] for p in batch] * 2, [p["chosen_ids"] for p in batch] + [p["rejected_ids"] for p in batch]
        )
        chosen, rejected = r[: len(batch)], r[len(batch) :]
        loss = bradley_terry_loss(chosen, rejected)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        acc = float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())
        history.append({"loss": float(loss.detach()), "accuracy": acc, "grad_norm": grad_norm, "lr": lr})
    report = {
        "pairs": len(pairs),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout),
        "train_sentences": len({sentence_key(p) for p in train_pairs}),
        "heldout_sentences": len({sentence_key(p) for p in heldout}),
        **{f"train_{k}": v for k, v in model.evaluate(train_pairs).items()},
        **{f"heldout_{k}": v for k, v in model.evaluate(heldout).items()},
    }
    model.info, model.made_from = report, dict(made_from or {})
    log.info("reward model: %s", report)
    return model, {**report, "history": history}


def checkpoint_dir(cfg) -> Path:
    """The reward model a run's scorers load (`reward_model.path`, default <run_dir>/reward_model); a missing one is
    a FileNotFoundError saying how to make it."""
    path = Path(cfg.reward_model.path or Path(cfg.run_dir) / "reward_model")
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"no trained reward model in {path} (reward_model.path): train one with "
            f"`python -m jobs.reward_model run_dir={cfg.run_dir}` after an align iteration has made pairs"
        )
    return path
