"""Evaluator role: loads the codec, NAR model, offline ASR and speaker encoder ONCE, then scores any policy
(base + adapter) on the held-out sets: metrics, the distribution gap and samples to listen to."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray import lora
from sa_ray.codec import load_codec
from sa_ray.config import Config
from sa_ray.evaluation import dev_test, distribution_gap, evaluate_heldout, golden_side, heldout_tables, prompt_banks
from sa_ray.losses import pack, sequence_logprobs
from sa_ray.metrics.backends import MOS_SKIPPED, make_asr, make_mos, make_sim
from sa_ray.metrics.stats import pool_seeds
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.preference import split_example, voice_prompt
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Spelling


class Evaluator(Metered):
    def __init__(self, cfg: Config, base_dir: str):
        # Every core of the node: the evaluator works while the rollout engine and the learner wait (Ray would
        # give a zero-CPU actor one thread), and the vocoder, most of its time, runs about 1.5x faster on two (`benchmarks.eval_bench`).
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        run_dir = Path(cfg.run_dir)
        self.cfg, self.data_dir = cfg, run_dir / "data"
        self.codec = load_codec(cfg.codec, run_dir / "codec")
        device = role_device("evaluator", cfg.resources.evaluator.num_gpus)  # the AR and NAR; the codec stays on CPU
        self.base, self.vocab = load_ar(Path(base_dir) / "ar")
        self.base.to(device)
        self.nar = NARModel.from_pretrained(Path(base_dir) / "nar", device=device)
        self.asr = make_asr(cfg.eval.asr, self.data_dir, cfg.corpus)
        self.sim = make_sim(cfg.eval.sim)
        self.mos = make_mos(cfg.eval.mos)
        self.tables = heldout_tables(self.data_dir)
        self.prompt_frames = cfg.model.prompt_frames(self.codec.frame_rate)
        self.banks = prompt_banks(self.tables, self.prompt_frames, self.codec.n_codebooks)
        self.sampling = SamplingConfig.of_eval(cfg.eval)
        self._policy: tuple[str | None, CodecTTS] | None = None
        self._golden: dict | None = None  # the distribution gap's golden side, made once

    def _rows(self) -> list[dict]:
        """The held-out sentences of `eval.split`: what every figure of a version is measured on."""
        return dev_test(self.tables["heldout_sentences"], self.cfg.eval.split)

    def backends(self) -> dict[str, str]:
        """Tags naming what produced the numbers: every WER names its ASR, every SIM its speaker model."""
        return {
            "sa_ray.asr_backend": self.asr.backend,
            "sa_ray.sim_backend": self.sim.backend,
            "sa_ray.mos_backend": self.mos.backend if self.mos else MOS_SKIPPED,
        }

    def _tts(self, adapter_dir: str | None) -> CodecTTS:
        """The voice of policy base + adapter, built (merged) once per version: evaluate, gap and samples share it."""
        if self._policy is None or self._policy[0] != adapter_dir:
            self._policy = None  # let the previous version's copy go before the next one is made
            ar = lora.policy(self.base, adapter_dir)
            self._policy = (
                adapter_dir,
                CodecTTS(
                    ar,
                    self.vocab,
                    self.nar,
                    self.codec,
                    Spelling.of_config(self.cfg),
                    self.cfg.eval.forced_phones,
                ),
            )
        return self._policy[1]

    @metered
    def evaluate(
        self,
        adapter_dir: str | None,
        ceiling: bool = False,
        sampling: SamplingConfig | None = None,
    ) -> dict[str, float]:
        """Held-out metrics, flat (`heldout_sentences_wer`, ...), averaged over `eval.seeds` sampling seeds,
        with the seed-to-seed spread (`..._wer_spread`: half the range) when there are several, and the
        per-utterance word errors (`..._utt_errors`, `..._utt_words`: lists) behind the WERs. `sampling`: another
        decoding than the protocol's (temperature, top-k, top-p, guidance scale: a decoding search,
        `jobs.tune_decoding`); the cached voice is the same for every decoding."""
        tts, e = self._tts(adapter_dir), self.cfg.eval
        nll, acc = self.golden_nll(tts.ar)
        flat = {"heldout_sentences_golden_nll": nll, "heldout_sentences_golden_acc": acc}
        runs = [
            evaluate_heldout(
                tts,
                self.tables,
                self.banks,
                e.utterances,
                self.asr,
                self.sim,
                seed=e.seed + 1000 * s,
                sampling=sampling or self.sampling,
                ceiling=ceiling and s == 0,
                mos=self.mos,
                split=e.split,
            )
            for s in range(e.seeds)
        ]
        flat.update(
            pool_seeds(
                [{f"{split}_{key}": v for split, metrics in run.items() for key, v in metrics.items()} for run in runs]
            )
        )
        return flat

    def golden_nll(self, model, n: int = 80, batch_size: int = 16) -> tuple[float, float]:
        """Teacher-forced NLL per target token, and next-token accuracy, of the golden held-out sentences under
        `model` (fixed prompts; over the full vocabulary, like every logprob of the loop)."""
        rows, bank = self._rows()[:n], self.banks["heldout_sentences"]
        pairs = [split_example(r, voice_prompt(bank, r, 0, 0), self.vocab, self.codec.frame_rate) for r in rows]
        logp, tokens, hits = 0.0, 0, 0
        with torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                lp, count, hit = sequence_logprobs(model, pack([p for p, _ in chunk], [c for _, c in chunk]), hits=True)
                logp, tokens, hits = logp + float(lp.sum()), tokens + int(count.sum()), hits + int(hit.sum())
        return -logp / max(tokens, 1), hits / max(tokens, 1)

    @metered
    def gap(self, adapter_dir: str | None, plot_title: str) -> tuple[dict[str, float], bytes]:
        """The distribution gap (`sa_ray.evaluation.distribution_gap`) of policy base + adapter on
        `eval.gap_utterances` held-out sentences, embedded by the fixed base: (metrics, t-SNE PNG)."""
        tts, rows, bank = (
            self._tts(adapter_dir),
            self._rows()[: self.cfg.eval.gap_utterances],
            self.banks["heldout_sentences"],
        )
        if self._golden is None:  # the same for every version: the base's NAR, the codec and the base
            self._golden = golden_side(tts, self.base, rows, bank, self.asr, self.sim)
        return distribution_gap(tts, self.base, rows, bank, self.asr, self.sim, self.sampling, plot_title, self._golden)

    @metered
    def samples(self, adapter_dir: str | None, n: int = 2) -> list[tuple[str, np.ndarray, int]]:
        """A few held-out sentences spoken by the policy: (name, wav, sample rate), to listen to in MLflow."""
        tts, rows, bank = self._tts(adapter_dir), self._rows()[:n], self.banks["heldout_sentences"]
        rng = random.Random(0)
        outs = tts.synthesize(
            [
                Request(r["text"], bank.draw(r["speaker"], r["utt_id"], rng), i, r["speaker"])
                for i, r in enumerate(rows)
            ],
            self.sampling,
        )
        return [(f"{r['utt_id']}.wav", o.wav, self.codec.sample_rate) for r, o in zip(rows, outs)]
