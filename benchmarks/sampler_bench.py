"""Throughput of `sa_ray.sampling.sample` against `model.generate` on a random Llama of the tiny size.

    python -m benchmarks.sampler_bench [--requests 32 --prompt-len 180 --new-tokens 200 --threads 1 2] [--forced]
        [--json sampler_bench.json]

Both decode the same left-padded prompts with plain sampling (temperature 1, no top-k/top-p) and EOS
disabled (our allowed ids exclude it; generate gets min_new_tokens = max_new_tokens), so both emit
exactly requests x new-tokens tokens. Prints a Markdown table of tokens/s (best of --repeats runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# OpenMP threads spin while they wait by default; on a shared, loaded machine a spinning thread that lost
# its core stalls the other one, and 2-thread runs came out 3-100x slower than 1-thread runs here.
# Sleeping waiters make the thread counts comparable. Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from sa_ray.models.vocab import EOS, PAD, Vocab  # noqa: E402
from sa_ray.sampling import SamplingConfig, sample  # noqa: E402


def build(args: argparse.Namespace) -> tuple[LlamaForCausalLM, Vocab, list[list[int]]]:
    torch.manual_seed(0)
    vocab = Vocab(tuple(f"ph{i}" for i in range(args.text_tokens)), args.codebook_size, aligned=True)
    config = LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    prompts = []
    for _ in range(args.requests):
        n = args.prompt_len + int(torch.randint(-10, 11, (1,), generator=g))
        prompts.append([1, *torch.randint(5, vocab.size, (n - 1,), generator=g).tolist()])
    return model, vocab, prompts


def run_ours(
    model, vocab: Vocab, prompts: list[list[int]], new_tokens: int, batch_size: int, forced: bool = False
) -> int:
    allowed = [i for i in range(vocab.size) if i != EOS]  # full vocabulary as generate, EOS disabled
    phones = list(vocab.text_id_range)
    # --forced: every request must write a script of new_tokens // 3 phones in order (eval.forced_phones)
    script = (
        {
            "forced": [[phones[(i + k) % len(phones)] for k in range(new_tokens // 3)] for i in range(len(prompts))],
            "forced_ids": phones,
        }
        if forced
        else {}
    )
    out = sample(
        model,
        prompts,
        allowed,
        EOS,
        new_tokens,
        seeds=list(range(len(prompts))),
        cfg=SamplingConfig(temperature=1.0, batch_size=batch_size),
        **script,
    )
    return sum(map(len, out))


def run_generate(model, prompts: list[list[int]], new_tokens: int, batch_size: int) -> int:
    total = 0
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[PAD] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=EOS,
                pad_token_id=PAD,
            )
        total += (out.shape[1] - width) * len(batch)
    return total


def timed(fns: dict, repeats: int) -> dict[str, tuple[float, float, int]]:
    """name -> (best wall s, CPU s of that run, tokens); the engines alternate so both see the same load."""
    best: dict[str, tuple[float, float, int]] = {name: (float("inf"), 0.0, 0) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            tokens = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if wall < best[name][0]:
                best[name] = (wall, cpu, tokens)
    return best


def main(argv: list[str] | None = None) -> list[dict]:
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
    p.add_argument("--only", choices=["sample", "generate"], default=None, help="time one engine (for profiling)")
    p.add_argument("--forced", action="store_true", help="also time sample with forced phones (eval.forced_phones)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    model, vocab, prompts = build(args)
    print(
        f"model: vocab {vocab.size}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"{sum(x.numel() for x in model.parameters()) / 1e6:.1f}M params; {len(prompts)} prompts of "
        f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.new_tokens} new tokens each, "
        f"batch {args.batch_size}, best of {args.repeats}\n"
    )
    fns = {
        "sample": lambda: run_ours(model, vocab, prompts, args.new_tokens, args.batch_size),
        "generate": lambda: run_generate(model, prompts, args.new_tokens, args.batch_size),
    }
    if args.only:
        fns = {args.only: fns[args.only]}
    if args.forced:
        fns["forced"] = lambda: run_ours(model, vocab, prompts, args.new_tokens, args.batch_size, forced=True)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        run_ours(model, vocab, prompts[:2], 4, args.batch_size)  # warm-up (allocator, kernels)
        run_generate(model, prompts[:2], 4, args.batch_size)
        best = timed(fns, args.repeats)
        assert all(n == args.requests * args.new_tokens for _, _, n in best.values()), best  # EOS really off
        rows.append((threads, best))

    nan = (float("nan"), float("nan"), 0)
    print("| threads | sample: s (CPU s) | sample: tok/s | generate: s (CPU s) | generate: tok/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads, best in rows:
        (w_s, c_s, n_s), (w_g, c_g, n_g) = best.get("sample", nan), best.get("generate", nan)
        print(
            f"| {threads} | {w_s:.2f} ({c_s:.2f}) | {n_s / w_s:.0f} | {w_g:.2f} ({c_g:.2f}) | {n_g / w_g:.0f} "
            f"| {w_g / w_s:.2f}x |"
        )
    for threads, best in rows:
        if "forced" in best and "sample" in best:
            (w_f, c_f, n_f), w_s = best["forced"], best["sample"][0]
            print(
                f"\nsample with forced phones, {threads} threads: {w_f:.2f} s ({c_f:.2f}), {n_f / w_f:.0f} tok/s, "
                f"{w_s / w_f:.2f}x the speed of free sampling"
            )
    print("\ns: best wall time of the repeats; CPU s: process CPU time of that run (all threads).")
    results = [
        {"engine": name, "threads": threads, "seconds": w, "cpu_seconds": c, "tokens": n, "tok_per_s": n / w}
        for threads, best in rows
        for name, (w, c, n) in best.items()
    ]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
