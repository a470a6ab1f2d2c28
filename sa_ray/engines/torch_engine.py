"""The torch rollout engine: `VLLMEngine`'s interface over our KV-cached sampler (the CPU fallback backend).

Adapters are served like vLLM serves them: per call, as (name, int id, directory), cached by int id (so a
reused id serves the weights loaded first, exactly vLLM's behaviour, and the adapter probe catches it).
The adapter is merged into a copy of the base for sampling speed; scoring uses the same merged copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from sa_ray import lora as lora_lib
from sa_ray.engines.vllm_engine import LoRA
from sa_ray.losses import pack, sequence_logprobs
from sa_ray.models.ar import load_ar
from sa_ray.sampling import SamplingConfig, sample


class TorchEngine:
    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 32,
        max_model_len: int = 1024,
        device: str | torch.device = "cpu",
        **_ignored,
    ) -> None:
        self.base, self.vocab = load_ar(model_dir)
        self.base.requires_grad_(False).to(device)
        self.model_dir, self.batch_size, self.max_model_len = str(model_dir), batch_size, max_model_len
        self._lora_id: int | None = None
        self._lora_model: torch.nn.Module | None = None
        self.start_seconds = 0.0

    def _model(self, lora: LoRA | None) -> torch.nn.Module:
        if lora is None:
            return self.base
        name, int_id, path = lora
        if int(int_id) < 1:
            raise ValueError("LoRA int ids start at 1")
        if self._lora_id != int(int_id):  # one adapter resident at a time: the loop switches once per iteration
            self._lora_model = lora_lib.policy(self.base, path)
            self._lora_id = int(int_id)
        return self._lora_model

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
        """`sample`'s ids per prompt; with `return_logprobs`, (ids, the raw full-vocabulary logprob of each id).
        `lora` may be one per request, as vLLM's, if they are all one adapter (one is merged at a time)."""
        if isinstance(lora, list):
            if len(set(lora)) > 1:
                raise ValueError("the torch engine samples one adapter per call; got several")
            lora = lora[0] if lora else None
        cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, batch_size=self.batch_size)
        return sample(
            self._model(lora),
            prompts,
            allowed_ids,
            eos_id,
            max_new_tokens,
            seeds,
            cfg,
            forced,
            forced_ids,
            return_logprobs=return_logprobs,
        )

    def sequence_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], lora: LoRA | None = None
    ) -> list[float]:
        model = self._model(lora)
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                batch = pack(
                    list(prompts[start : start + self.batch_size]), list(continuations[start : start + self.batch_size])
                )
                out += sequence_logprobs(model, batch)[0].tolist()
        return out

    def sequence_logprob(self, prompt: list[int], continuation: list[int], lora: LoRA | None = None) -> float:
        return self.sequence_logprobs([prompt], [continuation], lora=lora)[0]

    def close(self) -> None:
        self._lora_model = None
