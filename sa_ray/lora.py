"""LoRA adapters on the AR model: the one module that touches peft's API.

An adapter version is a directory in PEFT layout (adapter_config.json + adapter_model.safetensors) that
vLLM serves as a LoRARequest and peft loads anywhere; the frozen base never moves. An adapter trained on tagged
prompts (Chain-of-Hindsight, `sa_ray.coh`) also holds `prompt_tag.json`, the tag it is prompted with.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict


def attach(
    base: torch.nn.Module, rank: int, alpha: int, targets: list[str], adapter_dir: str | Path | None = None
) -> PeftModel:
    """base + a trainable LoRA: a fresh adapter (B = 0, so the policy starts equal to the base) or
    `adapter_dir`'s weights to continue from. The base model object is wrapped in place."""
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"
    )
    return get_peft_model(base, config)


def load(base: torch.nn.Module, adapter_dir: str | Path) -> PeftModel:
    """base + a saved adapter, unmerged and frozen: exactly the learner's computation at its step 0."""
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()


def unload(model: torch.nn.Module) -> torch.nn.Module:
    """The frozen base again, its LoRA layers removed (not merged): the base weights stay in memory, untouched."""
    return model.unload() if isinstance(model, PeftModel) else model


def policy(base: torch.nn.Module, adapter_dir: str | Path | None) -> torch.nn.Module:
    """An inference copy of base + adapter with the adapter merged (plain HF model, as fast as the base); its
    config's `prompt_tag` is the adapter's (`prompt_tag`), which every voice built on it prompts with."""
    model = copy.deepcopy(base)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.config.prompt_tag = prompt_tag(adapter_dir)
    return model.eval()


PROMPT_TAG_FILE = "prompt_tag.json"


def prompt_tag(adapter_dir: str | Path | None) -> str | None:
    """The quality tag a policy version is prompted with (`good` for a CoH adapter); None for every other adapter
    and for the base."""
    path = None if adapter_dir is None else Path(adapter_dir) / PROMPT_TAG_FILE
    return json.loads(path.read_text())["tag"] if path is not None and path.is_file() else None


def save(model: PeftModel, directory: str | Path) -> None:
    model.save_pretrained(str(directory), safe_serialization=True)


def adapter_tensors(model: PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_tensors(model: PeftModel, tensors: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model, tensors)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter tensors do not fit the model: {unexpected[:5]}")
