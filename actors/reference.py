"""ReferenceScorer role: the frozen reference of an iteration scores chosen and rejected with `sa_ray.dpo.pair_logprobs`,
the learner's own function, and (GRPO, PPO) every sample token under the sampling policy and the reference. The
reference is base + the adapter that produced the iteration's samples, or the base (`align.reference`)."""

from __future__ import annotations

import pandas as pd
import torch

from actors import failpoints
from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray import lora
from sa_ray.dpo import MarginTokens, pair_logprobs, probe_logprob
from sa_ray.grpo import sample_token_logprobs
from sa_ray.losses import pack, token_logprobs
from sa_ray.models.ar import load_ar


class ReferenceScorer(Metered):
    def __init__(
        self,
        model_dir: str,
        batch_size: int = 16,
        margin_tokens: str = "all",
        num_gpus: float = 0.0,
        reference: str = "policy",
    ):
        """`reference` (`align.reference`): `policy`, the version that sampled (the loop's default), or `base`."""
        self.reference = reference
        base, vocab = load_ar(model_dir)
        device = role_device("reference", num_gpus)
        self.model, self.batch_size = base.requires_grad_(False).eval().to(device), batch_size
        self.margin = MarginTokens(vocab, margin_tokens)  # as the learner's margin counts
        self.version, self.adapter_dir = 0, None

    def load_adapter(self, version: int, adapter_dir: str | None) -> None:
        """Unmerged peft, exactly as the learner computes at its step 0 (so the DPO loss starts at ln 2), on the
        base loaded at start-up: the previous version's LoRA layers come off, the base weights never reload."""
        base = lora.unload(self.model)
        self.model = base if adapter_dir is None else lora.load(base, adapter_dir)
        self.version, self.adapter_dir = version, adapter_dir

    def _serve(self, version: int, adapter_dir: str | None) -> None:
        if version != self.version or adapter_dir != self.adapter_dir:  # e.g. after a restart
            self.load_adapter(version, adapter_dir)

    @metered
    def probe(self, probe: dict) -> float:
        return probe_logprob(self.model, probe)

    @metered
    def score(self, batch: pd.DataFrame, version: int, adapter_dir: str | None) -> pd.DataFrame:
        self._serve(*self._reference(version, adapter_dir))
        rows = batch.to_dict("records")
        chosen, rejected, n_chosen, n_rejected = [], [], [], []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                c, r, _, nc, nr = pair_logprobs(
                    self.model, rows[start : start + self.batch_size], self.margin, counts=True
                )
                chosen += c.tolist()
                rejected += r.tolist()
                n_chosen += nc.tolist()
                n_rejected += nr.tolist()
        failpoints.hit("reference.after_score")  # tests: the process dies with the call's scores unreturned
        batch = batch.copy()
        batch["ref_chosen_logp"], batch["ref_rejected_logp"] = chosen, rejected
        # sums, and the tokens they are over: align.length_normalize divides both sides by them, and the learner
        # checks its margin counts the same tokens
        batch["ref_chosen_tokens"], batch["ref_rejected_tokens"] = n_chosen, n_rejected
        batch["reference_version"] = self.version
        return batch

    def _reference(self, version: int, adapter_dir: str | None) -> tuple[int, str | None]:
        return (0, None) if self.reference == "base" else (version, adapter_dir)

    @metered
    def score_samples(self, batch: pd.DataFrame, version: int, adapter_dir: str | None) -> pd.DataFrame:
        """GRPO's and PPO's rows: every sample token's logprob under the policy that sampled it (`old_token_logps`)
        and under the reference (`ref_token_logps`; the same numbers when the reference is that policy), by the
        learner's own function."""
        rows = batch.to_dict("records")
        self._serve(version, adapter_dir)
        old = self._token_logprobs(rows)
        reference_version = self._reference(version, adapter_dir)[0]
        if reference_version != version:  # the base: the same model with its adapter switched off, never reloaded
            with self.model.disable_adapter():
                ref = self._token_logprobs(rows)
        else:
            ref = old
        failpoints.hit("reference.after_score")
        return batch.assign(old_token_logps=old, ref_token_logps=ref, reference_version=reference_version)

    def _token_logprobs(self, rows: list[dict]) -> list[list[float]]:
        logps = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                part = rows[start : start + self.batch_size]
                token_lp, labels, _ = token_logprobs(
                    self.model, pack([r["prompt_ids"] for r in part], [r["sample_ids"] for r in part])
                )
                logps += sample_token_logprobs(token_lp, labels, part)
        return logps
