"""RewardModelRole: the learned reward model (`sa_ray.reward_model`) as a role. `jobs.reward_model` has it train on
the run's pairs and save its checkpoint; a scorer (e.g. Best-of-N) has it load a checkpoint once and score
batches of (prompt, target) token lists. It sits on the device `resources.reward_model` gives it."""

from __future__ import annotations

from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray import reward_model
from sa_ray.config import RewardModelConfig


class RewardModelRole(Metered):
    def __init__(self, checkpoint: str | None = None, num_gpus: float = 0.0, base_fingerprint: str | None = None):
        """With `checkpoint`, the reward model saved there (checked against `base_fingerprint` when given);
        without, none until `train`."""
        self.device = role_device("reward_model", num_gpus)
        self.model = None
        if checkpoint is not None:
            self.model = reward_model.RewardModel.load(
                checkpoint, device=self.device, base_fingerprint=base_fingerprint
            )

    @metered
    def train(self, base_dir: str, pairs: list[dict], cfg: RewardModelConfig, out_dir: str, made_from: dict) -> dict:
        """Trains on `pairs` (held-out sentences aside), saves the checkpoint to `out_dir`, keeps the model to score
        with, and returns the training report (`sa_ray.reward_model.train`)."""
        self.model, report = reward_model.train(base_dir, pairs, cfg, self.device, made_from)
        self.model.save(out_dir)
        return report

    @metered
    def score(self, prompts: list[list[int]], targets: list[list[int]]) -> list[float]:
        if self.model is None:
            raise RuntimeError("RewardModelRole: no reward model loaded or trained yet")
        return self.model.score(prompts, targets)

    def info(self) -> dict:
        """What the model was trained from and its held-out accuracy (its checkpoint's reward_model.json)."""
        return {} if self.model is None else dict(self.model.info)
