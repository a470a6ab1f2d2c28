"""sa-ray's LoRA preference learner step against TRL's DPOTrainer: preference pairs per second, side by side.

    pip install -r requirements/bench.txt                       # TRL (the `bench` extra; `make bench` installs it)
    python -m benchmarks.learner_bench                          # the shipped AR size (checkpoints/base/ar), 3 repeats
    python -m benchmarks.learner_bench --repeats 5 --steps 4 --json learner_bench.json
    python -m benchmarks.learner_bench --hidden 512 --layers 8 --repeats 5    # larger: 8 heads, MLP 1536
    python -m benchmarks.learner_bench --hidden 64 --layers 2 --batch-size 2 --prompt-len 20 \
        --min-len 8 --max-len 24 --steps 1 --repeats 1 --matmul-size 256     # seconds: does it run?

One process, one thread count (--threads, default every usable CPU), one AR model (a random-initialised Llama with
the shipped config, or --hidden/--layers/--heads/--intermediate), one set of pairs, and per repeat, interleaved:
- `sa-ray`: `sa_ray.dpo.DPOLearner.train_step`, the step the Ray Train worker (actors/learner.py `learn_loop`) runs,
  called in-process without Ray: the prompts through base+LoRA once, chosen and rejected on their keys and values
  (`sa_ray.losses.shared_prompt_logprobs`), the DPO loss on reference
  logprobs that came with the pairs, backward, clip, AdamW. The reference logprobs are computed beforehand by the
  ReferenceScorer role's own `score` (actors/reference.py), timed separately (`ref_pairs_per_s`).
- `trl`: TRL's DPOTrainer (`trainer.train()`), reference log-probs on the fly: its extra no-grad forward of the
  model with the adapter disabled is part of every step.
- `trl precompute`: DPOTrainer with `precompute_ref_log_probs=True`: the step reads the reference log-probs from the
  dataset; TRL's `_precompute_ref_logps` pass over all pairs is timed separately (`ref_pairs_per_s`; re-run each
  repeat with a fresh cache fingerprint so it is computed, never read back from the datasets cache).
- `matmul`: a float32 `torch.mm` of two --matmul-size squares at the same thread count, this machine's matmul FLOP/s.

Aligned: the same base weights, pairs (token ids; TRL gets them through a word-level tokenizer with one word per
token id, checked to tokenize back to exactly the same ids), batches in the same order (TRL's sampler sequential
over the pairs in the learner's own draw order, each repeat the same `--warmup + --steps` batches), batch size,
LoRA (rank, alpha, targets, dropout 0: AlignConfig's defaults through `sa_ray.lora.attach`'s LoraConfig), loss
(dpo = TRL's `sigmoid`, AlignConfig's beta), optimiser (torch AdamW, non-fused, betas (0.9, 0.95), no weight decay,
lr, warmup steps, clipping at grad_clip), float32 (TRL's default bf16 and gradient checkpointing are turned off), no
truncation, no evaluation, no logging, no checkpoints, no dataloader workers. Not aligned (TRL's own choices): TRL
scores only the completion positions through its fused LM head, in tiles (sa-ray scores them through a full
log-softmax; a prompt's positions skip the LM head in both); TRL puts the prompt through the model once per side, sa-ray
once per pair; TRL computes entropy, mean-logit and top-1 metrics each step; the
learning-rate schedule (TRL's cosine ends at 0, sa-ray's warmup_cosine at 10%: no speed difference).

Measured: seconds per optimiser step, each `--steps` steps after `--warmup` untimed ones per repeat (each repeat
runs the methods in another order); pairs/s = batch size / step seconds, as the median over repeats with the min and
max. `speed_vs_sa_ray`: a TRL method's pairs/s over sa-ray's in the same repeat (median, min, max over repeats): on a
shared machine whose load drifts, the paired ratio is the number to compare. The precomputed rows also give
`pairs_per_s_with_ref`: one epoch's pairs per second, reference pass included (1 / (1/train + 1/reference)).
`seconds.init`: building the learner or trainer (TRL's: tokenizing the pairs and, with precompute, its first pass).

FLOP/s of the sa-ray step: model FLOPs of its forward + backward, by formula, over the real (unpadded) tokens of
each timed batch: each prompt once, each side but its last token (`step_tokens`), a prompt's positions but its last
without the LM head. Per token: forward 2 P_dense (the frozen linear weights: q, k, v, o, gate, up, down of every layer
and the LM head) + 2 P_lora (each adapter's r x (in + out)) + attention 4 ctx d_attn per layer (QK^T and AV over the
causal context ctx = position + 1, d_attn = heads x head dim). Backward with a frozen base: activation gradients
only, 2 P_dense (no weight gradients for the base: not 6 x params), 4 P_lora (input and A/B gradients), 2 x the
attention forward, less 2 P_0 (layer 0's q, k, v weights and A matrices: their input, the normed frozen embeddings,
needs no gradient and autograd skips it). Per token: 4 P_dense + 6 P_lora - 2 P_0 + 12 ctx d_attn n_layers.
Uncounted: norms, softmaxes, the log-softmax, the optimiser. `mfu` = achieved FLOP/s / the median matmul FLOP/s of
the same run. `ratio.linear_flops_counted`: torch's FlopCounterMode count of the mm/addmm products of one timed
batch's forward + backward over the formula's linear part for the PADDED batch it executes (1.0: the formula counts
what runs; attention is not in it, its CPU kernel is not one FlopCounterMode counts); `ratio.padding`: the share
of the packed tensors that is padding (computed, not counted in the FLOP/s).
OMP_WAIT_POLICY defaults to PASSIVE (as benchmarks/sampler_bench.py: spinning OpenMP waiters stall on a shared box).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's precompute progress bar

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback  # noqa: E402

from sa_ray.config import AlignConfig  # noqa: E402
from sa_ray.models.vocab import BOS, EOS, PAD, SPECIALS, Vocab  # noqa: E402

SHIPPED = "checkpoints/base/ar"
METHODS = ("sa-ray", "trl", "trl-precompute")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ------------------------------------------------------------------------------------------------ model and pairs


def build_model(args: argparse.Namespace, directory: Path) -> Vocab:
    """The shipped AR config (its sizes overridden by the options), random weights, saved where load_ar reads it."""
    config = AutoConfig.from_pretrained(args.base)
    vocab = Vocab.load(args.base)
    config.hidden_size = args.hidden or config.hidden_size
    config.num_hidden_layers = args.layers or config.num_hidden_layers
    heads = args.heads or (config.num_attention_heads if not args.hidden else max(1, config.hidden_size // 64))
    config.num_attention_heads = config.num_key_value_heads = heads
    config.head_dim = config.hidden_size // heads
    config.intermediate_size = args.intermediate or (
        config.intermediate_size if not args.hidden else 3 * config.hidden_size
    )
    config.max_position_embeddings = max(config.max_position_embeddings, args.prompt_len * 2 + args.max_len)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    vocab.save(directory)
    return vocab


def make_pairs(args: argparse.Namespace, vocab: Vocab, n: int) -> list[dict]:
    """n pairs of random tokens: prompt ~--prompt-len (+-20%, BOS first), chosen and rejected of [--min-len,
    --max-len] tokens each, ending in EOS (as a rollout does)."""
    g = torch.Generator().manual_seed(args.seed)
    lo, hi = max(2, round(args.prompt_len * 0.8)), max(2, round(args.prompt_len * 1.2))

    def tokens(k: int) -> list[int]:
        return torch.randint(len(SPECIALS), vocab.size, (k,), generator=g).tolist()

    def length(a: int, b: int) -> int:
        return int(torch.randint(a, b + 1, (1,), generator=g))

    pairs = []
    for i in range(n):
        prompt = [BOS, *tokens(length(lo, hi) - 1)]
        chosen = [*tokens(length(args.min_len, args.max_len) - 1), EOS]
        rejected = [*tokens(length(args.min_len, args.max_len) - 1), EOS]
        pairs.append({"utt_id": f"u{i:05d}", "sample_idx": 0, "prompt_ids": prompt, "chosen_ids": chosen,
                      "rejected_ids": rejected})  # fmt: skip
    return pairs


# --------------------------------------------------------------------------------------------------------- FLOPs


def linear_flops_per_token(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(forward + backward FLOPs of the linear layers per token, of those the LM head's, P_dense, P_lora): 4 P_dense +
    6 P_lora - 2 P_0, with P_dense the frozen linear weights the tokens go through (LM head included, embeddings
    not), P_lora the adapters' A and B elements, and P_0 layer 0's q, k, v weights and their A matrices, whose input
    (the normed output of the frozen embeddings) needs no gradient, so autograd skips those products. The LM head's
    share (4 x its weights) is what a prompt position skips: only a prompt's last position is scored."""
    dense = lora = skipped = head = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            lora += p.numel()
        elif p.dim() == 2 and "embed_tokens" not in name:
            dense += p.numel()
            head += p.numel() if "lm_head" in name else 0
        first = any(f"layers.0.self_attn.{m}_proj." in name for m in "qkv")
        if first and p.dim() == 2 and "lora_B" not in name:
            skipped += p.numel()
    return 4 * dense + 6 * lora - 2 * skipped, 4 * head, dense, lora


def step_tokens(pair: dict) -> tuple[int, list[int]]:
    """What one pair puts through the model in a learner step (`sa_ray.losses.shared_prompt_logprobs`): its prompt
    once, and each side but its last token (token t predicts token t + 1; the prompt's last position predicts
    token 0)."""
    return len(pair["prompt_ids"]), [len(pair["chosen_ids"]) - 1, len(pair["rejected_ids"]) - 1]


def step_flops(batch: list[dict], linear: int, head: int, layers: int, d_attn: int) -> float:
    """Model FLOPs of one LoRA training step's forward + backward over the batch's real (unpadded) tokens: the
    linear layers' per token (a prompt's positions but its last without the LM head), and attention's
    3 x 4 x ctx x d_attn per layer and token, ctx the causal context (the module docstring)."""
    total = 0.0
    for p in batch:
        prompt, sides = step_tokens(p)
        total += prompt * (linear - head) + head + 12 * layers * d_attn * prompt * (prompt + 1) / 2
        for m in sides:  # contexts prompt + 1 ... prompt + m
            total += m * linear + 12 * layers * d_attn * (m * prompt + m * (m + 1) / 2)
    return total


def counted_linear_flops(learner, batch: list[dict]) -> float:
    """torch's FlopCounterMode count of the (add)mm products of one forward + backward of the learner's loss on
    `batch` (gradients discarded): the linear layers as executed, on the padded batch."""
    from torch.utils.flop_counter import FlopCounterMode

    learner.model_train.train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = learner.loss(batch)
        loss.backward()
    learner.stepper.optimizer.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts()["Global"]
    return float(sum(v for op, v in counts.items() if str(op) in ("aten.mm", "aten.addmm")))


def matmul_flops(n: int, repeats: int = 5) -> list[float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        out.append(2 * n**3 / (time.perf_counter() - start))
    return out


# ---------------------------------------------------------------------------------------------------------- TRL


def word_tokenizer(vocab: Vocab):
    """A tokenizer whose words are the token ids (`<17>`), so TRL's text pipeline yields exactly our ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {f"<{i}>": i for i in range(vocab.size)}
    tok = Tokenizer(WordLevel(words, unk_token=f"<{PAD}>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=f"<{PAD}>", eos_token=f"<{EOS}>", bos_token=f"<{BOS}>", unk_token=f"<{PAD}>"
    )


def text(ids: list[int]) -> str:
    return " ".join(f"<{i}>" for i in ids)


class StepClock(TrainerCallback):
    """The time at the end of every optimiser step of a Trainer."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def make_trl(model_dir: Path, out_dir: Path, cfg: AlignConfig, ordered: list[dict], vocab: Vocab, precompute: bool,
             steps: int):  # fmt: skip
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    class TimedDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            # a fingerprint of its own each time: TRL reuses a cached pass for the same dataset and model hash
            self._precompute_model_hash = (self._precompute_model_hash, uuid.uuid4().hex)
            self.unscored = dataset
            start = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            self.__dict__.setdefault("precompute_seconds", []).append(time.perf_counter() - start)
            return out

    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=cfg.lr,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=cfg.grad_clip,
        optim="adamw_torch",  # torch.optim.AdamW, as sa-ray's Stepper (TRL's default is the fused one)
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        beta=cfg.beta,
        loss_type=["sigmoid"],
        label_smoothing=0.0,
        precompute_ref_log_probs=precompute,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=None,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        seed=cfg.seed,
    )
    peft_config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=list(cfg.lora_targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    rows = [
        {"prompt": text(p["prompt_ids"]), "chosen": " " + text(p["chosen_ids"]), "rejected": " " + text(p["rejected_ids"])}
        for p in ordered
    ]  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = TimedDPOTrainer(
        model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=word_tokenizer(vocab),
        peft_config=peft_config,
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    got = trainer.train_dataset
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
        if got[key] != [p[key] for p in ordered]:
            raise RuntimeError(f"TRL tokenized the pairs' {key} to other ids than sa-ray's")
    return trainer


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--threads", type=int, default=usable, help="torch threads for everything (default: all usable)")
    ap.add_argument("--base", default=SHIPPED, help="AR model directory whose config.json and vocab.json to use")
    ap.add_argument("--hidden", type=int, default=None, help="hidden size (default: the shipped model's)")
    ap.add_argument("--layers", type=int, default=None, help="layers (default: the shipped model's)")
    ap.add_argument("--heads", type=int, default=None, help="attention heads (default: shipped, or hidden / 64)")
    ap.add_argument("--intermediate", type=int, default=None, help="MLP size (default: shipped, or 3 x hidden)")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: AlignConfig's)")
    ap.add_argument("--prompt-len", type=int, default=180, help="mean prompt tokens (uniform within +-20%%)")
    ap.add_argument("--min-len", type=int, default=100, help="shortest chosen/rejected continuation")
    ap.add_argument("--max-len", type=int, default=300, help="longest chosen/rejected continuation")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each repeat")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="repeats, each method in turn")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {','.join(METHODS)}")
    ap.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n fp32 matmul peak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(unknown)}; of {METHODS}")
    if args.warmup < 1 or args.steps < 1:  # a TRL step is timed from the end of the one before it
        ap.error("--warmup and --steps must be >= 1")
    if any(m.startswith("trl") for m in methods):
        import datasets
        import transformers
        import trl  # noqa: F401  (imported here, not inside the timed trainer construction)

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="learner_bench_") as tmp:  # the model, TRL's output_dir
        rows = measure(args, methods, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def measure(args: argparse.Namespace, methods: list[str], tmp: Path) -> list[dict]:
    from actors.reference import ReferenceScorer
    from sa_ray.dpo import DPOLearner

    steps_per_repeat = args.warmup + args.steps
    model_dir = tmp / "ar"
    vocab = build_model(args, model_dir)
    defaults = AlignConfig()
    cfg = AlignConfig(method="dpo", batch_size=args.batch_size or defaults.batch_size, steps=steps_per_repeat)
    pairs = make_pairs(args, vocab, cfg.batch_size * steps_per_repeat)

    # sa-ray: the reference role scores the pairs, the learner takes them
    scorer = ReferenceScorer(str(model_dir), batch_size=cfg.batch_size, margin_tokens=cfg.margin_tokens)
    scored = scorer.score(pd.DataFrame(pairs), 0, None).to_dict("records")
    start = time.perf_counter()
    learner = DPOLearner(model_dir, None, cfg, scored)
    init = {"sa-ray": time.perf_counter() - start}
    hf = learner.model.get_base_model().config
    batches = [learner.next_batch() for _ in range(steps_per_repeat)]  # the learner's own draw order ...
    learner.epoch, learner.position = 0, 0  # ... which every repeat replays
    ordered = [p for b in batches for p in b]
    linear, head, dense, lora = linear_flops_per_token(learner.model)
    d_attn = hf.num_attention_heads * (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    timed = batches[args.warmup :]
    flops = [step_flops(b, linear, head, hf.num_hidden_layers, d_attn) for b in timed]
    tokens = [[step_tokens(p) for p in b] for b in timed]
    real = [sum(prompt + sum(sides) for prompt, sides in t) for t in tokens]
    # as the learner pads them: the prompts [batch, longest prompt], the sides [2 x batch, longest side - 1]
    padded_prompts = [len(t) * max(prompt for prompt, _ in t) for t in tokens]
    padded_sides = [2 * len(t) * max(max(sides) for _, sides in t) for t in tokens]
    linear_check = counted_linear_flops(learner, timed[0]) / (
        padded_prompts[0] * (linear - head) + len(timed[0]) * head + padded_sides[0] * linear
    )
    padded = [a + b for a, b in zip(padded_prompts, padded_sides)]
    print(
        f"AR model: hidden {hf.hidden_size}, {hf.num_hidden_layers} layers, {hf.num_attention_heads} heads, "
        f"MLP {hf.intermediate_size}, vocab {hf.vocab_size}: P_dense {dense / 1e6:.2f} M, P_lora {lora / 1e6:.3f} M, "
        f"{statistics.mean(flops) / 1e9:.1f} GFLOP per step; {len(pairs)} pairs, batch {cfg.batch_size}, "
        f"{sum(real) / len(real) / cfg.batch_size:.0f} tokens per pair, {1 - sum(real) / sum(padded):.0%} "
        f"padding; torch's count of the linear FLOPs / the formula's: {linear_check:.4f}; "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    trainers = {}
    for m, pre in (("trl", False), ("trl-precompute", True)):
        if m in methods:
            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            trainers[m] = make_trl(model_dir, tmp / m, cfg, ordered, vocab, pre, steps_per_repeat)
            init[m] = time.perf_counter() - start

    step_s = {m: [] for m in methods}  # per repeat: the mean timed step
    ref_s = {"sa-ray": [], "trl-precompute": []}  # per repeat: seconds of the whole reference pass
    mm = []
    for r in range(args.repeats):
        torch.set_num_threads(args.threads)
        mm += matmul_flops(args.matmul_size)
        for m in methods[r % len(methods) :] + methods[: r % len(methods)]:  # each repeat starts with another one
            torch.set_num_threads(args.threads)
            if m == "sa-ray":
                start = time.perf_counter()
                scorer.score(pd.DataFrame(pairs), 0, None)
                ref_s[m].append(time.perf_counter() - start)
                learner.epoch, learner.position = 0, 0
                times = []
                for k in range(steps_per_repeat):
                    start = time.perf_counter()
                    learner.train_step()
                    if k >= args.warmup:
                        times.append(time.perf_counter() - start)
            else:
                trainer = trainers[m]
                if m == "trl-precompute" and r > 0:  # the first pass ran in the trainer's construction
                    trainer._precompute_ref_logps(trainer.unscored, "train", cfg.batch_size)
                if m == "trl-precompute":
                    ref_s[m].append(trainer.precompute_seconds[-1])
                clock = StepClock()
                trainer.callback_handler.callbacks.append(clock)
                try:
                    trainer.train()
                finally:
                    trainer.callback_handler.callbacks.remove(clock)
                if len(clock.ends) != steps_per_repeat:
                    raise RuntimeError(f"TRL ran {len(clock.ends)} steps, not {steps_per_repeat}")
                times = [b - a for a, b in zip(clock.ends[args.warmup - 1 :], clock.ends[args.warmup :])]
            step_s[m].append(sum(times) / len(times))
            print(f"repeat {r + 1}/{args.repeats} {m}: {cfg.batch_size * len(times) / sum(times):.2f} pairs/s",
                  flush=True)  # fmt: skip

    peak = statistics.median(mm)
    rows = [{"method": "matmul fp32", "n": args.matmul_size, "threads": args.threads, "flops_per_s": spread(mm)}]
    names = {"sa-ray": "sa-ray DPOLearner", "trl": "TRL DPOTrainer", "trl-precompute": "TRL DPOTrainer precompute"}
    mean_flops = statistics.mean(flops)
    for m in methods:
        pps = [cfg.batch_size / s for s in step_s[m]]
        row = {"method": names[m], "threads": args.threads, "hidden": hf.hidden_size, "layers": hf.num_hidden_layers,
               "batch": cfg.batch_size, "s_per_step": spread(step_s[m]), "pairs_per_s": spread(pps),
               "seconds": {"init": init[m]}}  # fmt: skip
        if m in ref_s:  # the reference pass over all pairs, outside the step
            ref_pps = [len(pairs) / s for s in ref_s[m]]
            row["seconds"]["reference"] = statistics.median(ref_s[m])
            row["ref_pairs_per_s"] = spread(ref_pps)
            row["pairs_per_s_with_ref"] = spread([1 / (1 / a + 1 / b) for a, b in zip(pps, ref_pps)])
        if "sa-ray" in step_s and m != "sa-ray":  # paired within each repeat: robust to a machine's load drifting
            row["speed_vs_sa_ray"] = spread([a / b for a, b in zip(step_s["sa-ray"], step_s[m])])
        if m == "sa-ray":
            row["flops_per_s"] = spread([mean_flops / s for s in step_s[m]])
            row["mfu"] = spread([mean_flops / s / peak for s in step_s[m]])
            row["flop_per_step"] = mean_flops
            row["ratio"] = {"padding": 1 - sum(real) / sum(padded), "linear_flops_counted": linear_check}
        rows.append(row)
    print(table(rows, peak))
    return rows


def table(rows: list[dict], peak: float) -> str:
    lines = [
        "| method | pairs/s median [min, max] | x sa-ray, same repeat | s/step | reference pass pairs/s | "
        "pairs/s incl. reference | FLOP/s | of matmul |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows[1:]:
        p = r["pairs_per_s"]
        ref = r.get("ref_pairs_per_s")
        both = r.get("pairs_per_s_with_ref")
        f = r.get("flops_per_s")
        lines.append(
            f"| {r['method']} | {p['median']:.2f} [{p['min']:.2f}, {p['max']:.2f}] | "
            + (f"{v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]" if (v := r.get("speed_vs_sa_ray")) else "1")
            + f" | {r['s_per_step']['median']:.2f} | "
            + (f"{ref['median']:.2f} | {both['median']:.2f}" if ref else "(in the step) | " + f"{p['median']:.2f}")
            + (f" | {f['median'] / 1e9:.1f} G | {r['mfu']['median']:.0%} |" if f else " | | |")
        )
    mm = rows[0]["flops_per_s"]
    lines.append(
        f"\nmatmul fp32 {rows[0]['n']}^3 at {rows[0]['threads']} threads: {peak / 1e9:.1f} GFLOP/s median "
        f"[{mm['min'] / 1e9:.1f}, {mm['max'] / 1e9:.1f}]"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
