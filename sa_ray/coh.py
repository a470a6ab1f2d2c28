"""Chain-of-Hindsight (Liu et al. 2023; the SpeechAlign paper's CoH baseline): `align.method=coh`.

The pairs' two sides become two supervised examples told apart by a quality tag in the AR prompt: the chosen
(the golden target, or the better sample) after the `good` tag, the rejected (the model's own sample) after the
`bad` tag, both trained with the LM loss (each sequence's per-token NLL, averaged over the 2n sequences). At
inference the policy is asked for `good`: a CoH adapter carries its tag (`lora.prompt_tag`), `lora.policy` hands it
to the merged model's config, so every voice built on that adapter (evaluation, synthesize, Serve: `CodecTTS`)
prompts with it, and the next iteration's rollouts do too (actors/pipeline.py).

The tag is one token just before [SPEECH] (`sa_ray.models.vocab.tag_prompt`: special ids that never stand there,
so the base needs no new embedding rows; the LoRA learns what they mean at that place).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sa_ray import lora
from sa_ray.dpo import DPOLearner
from sa_ray.losses import pack, token_logprobs
from sa_ray.models.ar import IGNORE
from sa_ray.models.vocab import QUALITY_TAGS, tag_prompt


class CoHLearner(DPOLearner):
    """`DPOLearner`'s workers, data order, optimiser, checkpoints and export, with CoH's LM loss on tagged pairs
    (any pair strategy: golden, ranked, corrections); its export marks the adapter as prompted with `good`."""

    def loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(batch)
        prompts = [tag_prompt(p["prompt_ids"], "good") for p in batch] + [
            tag_prompt(p["prompt_ids"], "bad") for p in batch
        ]
        targets = [p["chosen_ids"] for p in batch] + [p["rejected_ids"] for p in batch]
        token_lp, labels, _ = token_logprobs(self.model_train, pack(prompts, targets))
        nll = -token_lp.sum(-1) / (labels != IGNORE).sum(-1).clamp(min=1)
        loss = nll.mean()
        return loss, {
            "loss": float(loss.detach()),
            "good_nll": float(nll[:n].mean().detach()),
            "bad_nll": float(nll[n:].mean().detach()),
        }

    def export(self, directory: str | Path, probe: dict | None = None) -> None:
        super().export(directory, probe)
        (Path(directory) / lora.PROMPT_TAG_FILE).write_text(json.dumps({"tag": "good", "tags": QUALITY_TAGS}))
