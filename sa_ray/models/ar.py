"""The AR codec LM: a plain Hugging Face decoder-only causal LM over the project's vocabulary.

Plain on purpose: saved as safetensors in HF layout, it loads unchanged in vLLM (token-id prompts,
`skip_tokenizer_init=True`) and in peft, and at cluster scale any pretrained causal LM can replace it
(`model.ar_path`, embeddings resized to the vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, Qwen2Config

from sa_ray.config import ModelConfig
from sa_ray.models.vocab import BOS, EOS, IGNORE, PAD, Vocab


def build_ar_model(cfg: ModelConfig, vocab: Vocab) -> PreTrainedModel:
    """A fresh model from the config, or `cfg.ar_path` with its embeddings resized to the vocabulary."""
    if cfg.ar_path:
        model = AutoModelForCausalLM.from_pretrained(cfg.ar_path, dtype=torch.float32)
        if model.get_input_embeddings().num_embeddings != vocab.size:
            model.resize_token_embeddings(vocab.size)
        return model
    common = dict(
        vocab_size=vocab.size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    hf_cfg = LlamaConfig(**common) if cfg.arch == "llama" else Qwen2Config(**common)
    return AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)


def save_ar(model: PreTrainedModel, vocab: Vocab, directory: str | Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    vocab.save(directory)


def load_ar(directory: str | Path) -> tuple[PreTrainedModel, Vocab]:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_safetensors=True)
    return model.eval(), Vocab.load(directory)


def collate_ar(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pads `input_ids`/`labels` of a list of examples into tensors with an attention mask."""
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), PAD, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = torch.as_tensor(e["input_ids"])
        labels[i, :k] = torch.as_tensor(e["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def ar_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over target positions, and the accuracy of codes among them."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE
    )
    with torch.no_grad():
        valid = labels != IGNORE
        acc = (logits.argmax(-1)[valid] == labels[valid]).float().mean()
    return loss, {"ar_loss": float(loss.detach()), "ar_acc": float(acc)}
