"""The rollout engines side by side: codec tokens/s of the vLLM engine, the torch engine and `model.generate`, and the
time each engine takes to switch to a new adapter version.

    python -m benchmarks.rollout_bench [--requests 128 --prompt-len 180 --new-tokens 200 --repeats 3]
        [--json rollout_bench.json]

One random Llama of `benchmarks.sampler_bench`'s sizes and prompts, saved as the loop's AR model, with two LoRA
adapters of the loop's rank and targets. Both engines are the loop's own (`actors.rollout.make_engine`: vLLM with
LoRA enabled, or the torch sampler) and sample as the loop does, through an adapter (vLLM: a LoRA request; torch:
the adapter merged into a copy); `generate` samples the base. All sample at temperature 1 with EOS disabled, so each
emits requests x new-tokens tokens; "forced" makes every request write a script of new_tokens // 3 phones in order
(`align.forced_phones`). The adapter switch is what `RolloutEngine.load_adapter` costs once per iteration: the first
probe logprob under a new adapter version (loading it and one forward), beside the same probe again (the forward).
The runs alternate within each repeat so that all see the same load; medians with [min, max] over --repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.learner_bench import spread
from benchmarks.sampler_bench import build, run_generate
from sa_ray.models.ar import save_ar
from sa_ray.models.vocab import EOS

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def save_adapters(model, directory: Path, rank: int, count: int) -> list[Path]:
    """`count` LoRA adapters on `model` (random B, so that each version's policy differs from the base)."""
    from sa_ray import lora

    model, paths = copy.deepcopy(model), []
    for k in range(count):
        torch.manual_seed(100 + k)
        policy = lora.attach(model, rank, 2 * rank, LORA_TARGETS)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        paths.append(directory / f"v{k + 1}")
        lora.save(policy, paths[-1])
        model = lora.unload(policy)  # the base again, for the next adapter
    return paths


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (
        ("requests", 128),
        ("prompt-len", 180),
        ("new-tokens", 200),
        ("batch-size", 32),
        ("hidden", 256),
        ("layers", 6),
        ("heads", 4),
        ("intermediate", 1024),
        ("text-tokens", 40),
        ("codebook-size", 256),
        ("lora-rank", 16),
        ("repeats", 3),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from actors.rollout import make_engine

    model, vocab, prompts = build(args)
    allowed = [i for i in range(vocab.size) if i != EOS]
    phones = list(vocab.text_id_range)
    script = {
        "forced": [[phones[(i + k) % len(phones)] for k in range(args.new_tokens // 3)] for i in range(len(prompts))],
        "forced_ids": phones,
    }
    seeds, tokens = list(range(len(prompts))), args.requests * args.new_tokens
    probe = (prompts[0], prompts[1][: args.new_tokens])
    times: dict[tuple[str, str], list[float]] = {}
    switches: dict[str, list[float]] = {}  # the first probe under a new version; and the same probe again
    probes: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "ar"
        save_ar(model, vocab, model_dir)
        adapters = save_adapters(model, Path(tmp), args.lora_rank, 2)
        max_len = args.prompt_len + args.new_tokens + 16
        engines, starts = {}, {}
        for name in ("vllm", "torch"):  # the start: loading the model (vLLM: its engine core, profiling, KV cache)
            start = time.perf_counter()
            engines[name] = make_engine(name, model_dir, args.lora_rank, max_len, seed=0)
            starts[name] = time.perf_counter() - start
        version = 0

        def switch(name: str) -> tuple[float, tuple]:
            """A new adapter version on the engine, proved by the probe: seconds, and the version's LoRA."""
            nonlocal version
            version += 1
            lora = (f"v{version}", version, str(adapters[version % 2]))
            start = time.perf_counter()
            engines[name].sequence_logprob(*probe, lora=lora)
            return time.perf_counter() - start, lora

        for name in engines:  # warm-up (allocator, kernels, vLLM's first LoRA)
            _, lora = switch(name)
            engines[name].generate(prompts[:2], allowed, EOS, 4, seeds[:2], lora=lora)
        run_generate(model, prompts[:2], 4, args.batch_size)
        for _ in range(args.repeats):
            for name, engine in engines.items():
                seconds, lora = switch(name)
                start = time.perf_counter()
                engine.sequence_logprob(*probe, lora=lora)
                switches.setdefault(name, []).append(seconds)
                probes.setdefault(name, []).append(time.perf_counter() - start)
                for mode, extra in (("free", {}), ("forced", script)):
                    start = time.perf_counter()
                    out = engine.generate(prompts, allowed, EOS, args.new_tokens, seeds, lora=lora, **extra)
                    times.setdefault((name, mode), []).append(time.perf_counter() - start)
                    assert sum(map(len, out)) == tokens, (name, mode)  # EOS really off
            start = time.perf_counter()
            assert run_generate(model, prompts, args.new_tokens, args.batch_size) == tokens
            times.setdefault(("generate", "free"), []).append(time.perf_counter() - start)
        for engine in engines.values():
            engine.close()

    rows = [{"engine": name, "run": "engine start", "seconds": s} for name, s in starts.items()]
    rows += [
        {"engine": name, "run": run, "seconds": spread(s[name])}
        for run, s in (("adapter switch", switches), ("probe", probes))
        for name in s
    ]
    rows += [
        {"engine": name, "run": mode, "tokens": tokens, "tok_per_s": spread([tokens / s for s in seconds])}
        for (name, mode), seconds in times.items()
    ]
    print(
        f"{args.requests} requests x {args.new_tokens} new tokens, batch {args.batch_size} (torch), "
        f"{torch.get_num_threads()} torch threads, LoRA rank {args.lora_rank}; medians [min, max] of {args.repeats}\n"
    )
    print("| engine | free tok/s | forced tok/s | x generate | adapter switch s (probe alone) | engine start s |")
    print("|---|---|---|---:|---:|---:|")
    base = statistics.median(tokens / s for s in times[("generate", "free")])
    for name in (*engines, "generate"):
        cells = []
        for mode in ("free", "forced"):
            rate = [tokens / s for s in times.get((name, mode), [])]
            cells.append(f"{statistics.median(rate):.0f} [{min(rate):.0f}, {max(rate):.0f}]" if rate else "-")
        free = statistics.median(tokens / s for s in times[(name, "free")])
        switch_s = (
            f"{statistics.median(switches[name]):.3f} ({statistics.median(probes[name]):.3f})"
            if name in switches
            else "-"
        )
        start_s = f"{starts[name]:.1f}" if name in starts else "-"
        print(f"| {name} | {cells[0]} | {cells[1]} | {free / base:.2f}x | {switch_s} | {start_s} |")
    print("\nadapter switch: the first probe under a new version (loading it included); probe alone: the same again")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":  # vLLM's CPU engine core is spawned: it re-imports this module
    main()
