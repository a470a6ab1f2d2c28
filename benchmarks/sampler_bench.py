"""Throughput of `sa_ray.sampling.sample` against `model.generate` on a random Llama of the tiny size.

    python -m benchmarks.sampler_bench [--requests 32 --prompt-len 180 --new-tokens 200 --threads 1 2]

Both decode the same left-padded prompts with plain sampling (temperature 1, no top-k/top-p) and EOS
disabled (our allowed ids exclude it; generate gets min_new_tokens = max_new_tokens), so both emit
exactly requests x new-tokens tokens. Prints a Markdown table of tokens/s (best of --repeats runs).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sa_ray.models.vocab import EOS, PAD, Vocab
from sa_ray.sampling import SamplingConfig, sample


def build(args: argparse.Namespace) -> tuple[LlamaForCausalLM, Vocab, list[list[int]]]:
    torch.manual_seed(0)
    vocab = Vocab(tuple(f"ph{i}" for i in range(args.text_tokens)), args.codebook_size, aligned=True)
    config = LlamaConfig(vocab_size=vocab.size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         intermediate_size=args.intermediate, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    prompts = []
    for _ in range(args.requests):
        n = args.prompt_len + int(torch.randint(-10, 11, (1,), generator=g))
        prompts.append([1, *torch.randint(5, vocab.size, (n - 1,), generator=g).tolist()])
    return model, vocab, prompts


def run_ours(model, vocab: Vocab, prompts: list[list[int]], new_tokens: int, batch_size: int) -> int:
    allowed = [i for i in range(vocab.size) if i != EOS]  # full vocabulary as generate, EOS disabled
    out = sample(model, prompts, allowed, EOS, new_tokens, seeds=list(range(len(prompts))),
                 cfg=SamplingConfig(temperature=1.0, batch_size=batch_size))
    return sum(map(len, out))


def run_generate(model, prompts: list[list[int]], new_tokens: int, batch_size: int) -> int:
    total = 0
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[PAD] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 eos_token_id=EOS, pad_token_id=PAD)
        total += (out.shape[1] - width) * len(batch)
    return total


def timed(fn, repeats: int) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        best = min(best, time.perf_counter() - t0)
    return best, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=180)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--text-tokens", type=int, default=40)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", choices=["ours", "generate"], default=None, help="time one engine (for profiling)")
    args = p.parse_args()

    model, vocab, prompts = build(args)
    print(f"model: vocab {vocab.size}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
          f"{sum(x.numel() for x in model.parameters()) / 1e6:.1f}M params; {len(prompts)} prompts of "
          f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.new_tokens} new tokens each, "
          f"batch {args.batch_size}, best of {args.repeats}\n")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        run_ours(model, vocab, prompts[:2], 4, args.batch_size)  # warm-up (allocator, kernels)
        run_generate(model, prompts[:2], 4, args.batch_size)
        ours = gen = (float("nan"), 0)
        if args.only != "generate":
            ours = timed(lambda: run_ours(model, vocab, prompts, args.new_tokens, args.batch_size), args.repeats)
        if args.only != "ours":
            gen = timed(lambda: run_generate(model, prompts, args.new_tokens, args.batch_size), args.repeats)
        rows.append((threads, ours, gen))

    print("| threads | sample: s | sample: tok/s | generate: s | generate: tok/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads, (t_ours, n_ours), (t_gen, n_gen) in rows:
        print(f"| {threads} | {t_ours:.2f} | {n_ours / t_ours:.0f} | {t_gen:.2f} | {n_gen / t_gen:.0f} "
              f"| {t_gen / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
