"""What forced phones (`align.forced_phones`) cost the vLLM rollout engine: its tokens/s with and without them.

    python -m benchmarks.vllm_forced_bench [--requests 128 --prompt-len 180 --new-tokens 200 --repeats 3]
        [--json vllm_forced_bench.json]

The random Llama of `benchmarks.sampler_bench` (the same sizes and prompts), saved and served by
`VLLMEngine`; both runs sample at temperature 1 with EOS disabled, so both emit requests x new-tokens
tokens. The forced run makes every request write a script of new_tokens // 3 phones in order through the
`ForcedTokens` logits processor (a Python call per request and step). The two alternate (best of --repeats).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.sampler_bench import build
from sa_ray.models.ar import save_ar
from sa_ray.models.vocab import EOS


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (
        ("requests", 128),
        ("prompt-len", 180),
        ("new-tokens", 200),
        ("hidden", 256),
        ("layers", 6),
        ("heads", 4),
        ("intermediate", 1024),
        ("text-tokens", 40),
        ("codebook-size", 256),
        ("repeats", 3),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from sa_ray.engines.vllm_engine import VLLMEngine

    model, vocab, prompts = build(args)
    allowed = [i for i in range(vocab.size) if i != EOS]
    phones = list(vocab.text_id_range)
    script = [[phones[(i + k) % len(phones)] for k in range(args.new_tokens // 3)] for i in range(len(prompts))]
    seeds = list(range(len(prompts)))
    with tempfile.TemporaryDirectory() as model_dir:
        save_ar(model, vocab, model_dir)
        with VLLMEngine(model_dir, max_model_len=args.prompt_len + args.new_tokens + 16) as engine:
            start_seconds = engine.start_seconds
            runs = {"free": {}, "forced": {"forced": script, "forced_ids": phones}}
            engine.generate(prompts[:2], allowed, EOS, 4, seeds[:2])  # warm-up
            best = {name: float("inf") for name in runs}
            for _ in range(args.repeats):
                for name, extra in runs.items():
                    start = time.perf_counter()
                    out = engine.generate(prompts, allowed, EOS, args.new_tokens, seeds, temperature=1.0, **extra)
                    best[name] = min(best[name], time.perf_counter() - start)
                    assert sum(map(len, out)) == args.requests * args.new_tokens  # EOS really off
    tokens = args.requests * args.new_tokens
    print(f"vLLM, {args.requests} requests x {args.new_tokens} new tokens, best of {args.repeats}")
    print("| run | s | tok/s |\n|---|---:|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {tokens / seconds:.0f} |")
    print(f"\nforced phones: {best['free'] / best['forced']:.2f}x the speed of free sampling")
    rows = [{"run": "engine start", "seconds": start_seconds}]
    rows += [{"run": name, "tokens": tokens, "seconds": s, "tok_per_s": tokens / s} for name, s in best.items()]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":  # vLLM's CPU engine core is spawned: it re-imports this module
    main()
