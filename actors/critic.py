"""CriticRole: PPO's value model (`sa_ray.ppo.Critic`) as a role of its own, on the device `resources.critic` gives it.

In the pipeline it values each batch of an iteration's samples with the critic of the policy version that sampled
them and writes `values`, `advantages` and `returns` into the rows (`sa_ray.ppo.advantages`), so the committed pair
set holds them. In `learn(k)` it fits critic version k on pair set k-1 beside the policy learner
(`sa_ray.ppo.train_critic`) and saves it where the driver commits it (`AlignRun.commit_critic`).
"""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow.parquet as pq
import torch

from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray import ppo
from sa_ray.config import AlignConfig
from sa_ray.tracking import RunLogger


class CriticRole(Metered):
    def __init__(self, base_dir: str, cfg: AlignConfig, num_gpus: float = 0.0):
        self.base_dir, self.cfg = base_dir, cfg
        self.device = role_device("critic", num_gpus)
        self.critic, self.critic_dir = None, None

    def _serve(self, critic_dir: str | None) -> ppo.Critic:
        """The critic saved in `critic_dir`, or a fresh one (None): loaded once, kept while it is asked for."""
        if self.critic is None or critic_dir != self.critic_dir:
            torch.manual_seed(self.cfg.seed + 1)  # a fresh critic's LoRA: the same every time, not the policy's
            self.critic = ppo.Critic(self.base_dir, self.cfg, critic_dir).to(self.device).eval()
            self.critic_dir = critic_dir
        return self.critic

    @metered
    def advantages(self, batch: pd.DataFrame, critic_dir: str | None) -> pd.DataFrame:
        """The batch's rows with the values, GAE advantages and returns of the critic in `critic_dir`."""
        rows = ppo.advantages(self._serve(critic_dir), batch.to_dict("records"), self.cfg)
        return batch.assign(**{key: [r[key] for r in rows] for key in ("values", "advantages", "returns")})

    @metered
    def fit(
        self,
        rows_dir: str,
        critic_dir: str | None,
        out_dir: str,
        run_id: str | None = None,
        tracking_uri: str | None = None,
    ) -> dict[str, float]:
        """The critic in `critic_dir` (the one that valued these rows; None: a fresh one) trained on the pair set in
        `rows_dir`, saved to `out_dir`; each step's metrics logged into MLflow run `run_id` (the learner's child
        run); returns the last step's. A retried call starts over and trains the same critic."""
        rows = pq.read_table(rows_dir).to_pylist()
        logger = RunLogger(tracking_uri, run_id) if run_id else None
        history = ppo.train_critic(self._serve(critic_dir), rows, self.cfg, logger and logger.log)
        shutil.rmtree(out_dir, ignore_errors=True)  # what an attempt that died left
        self.critic.save(out_dir)
        self.critic = None  # trained past `critic_dir`'s weights: the next call loads what it asks for
        return history[-1]
