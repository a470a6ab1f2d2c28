"""Evaluator role: loads the codec, NAR model, offline ASR and speaker encoder ONCE, then scores any policy
(base + adapter) on the held-out sets: metrics, the distribution gap and samples to listen to."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actors.placement import role_device
from actors.usage import Metered, metered
from sa_ray import lora
from sa_ray.codec import load_codec
from sa_ray.config import Config
from sa_ray.evaluation import (
    EVAL_BATCH,
    HeldoutPlan,
    dev_test,
    distribution_gap,
    golden_side,
    heldout_rows,
    heldout_tables,
    plan_heldout,
    prompt_banks,
    score_utterances,
    summarize_utterances,
)
from sa_ray.losses import pack, sequence_logprobs
from sa_ray.metrics.backends import MOS_SKIPPED, make_asr, make_mos, make_sim
from sa_ray.metrics.stats import pool_seeds
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.preference import split_example, voice_prompt
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Spelling


class Evaluator(Metered):
    def __init__(self, cfg: Config, base_dir: str, share: int = 1):
        # The node's cores, shared by `share` evaluators (eval.workers): they work while the rollout engine and the
        # learner wait (Ray would give a zero-CPU actor one thread). Two single-threaded evaluators beat one on two
        # threads: the recogniser and the speaker model use one core whatever torch is given (docs/evaluation.md).
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // share))
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
        self._plans: dict[tuple[str, int], HeldoutPlan] = {}

    def threads(self) -> int:
        """The torch threads this evaluator computes on."""
        return torch.get_num_threads()

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

    def units(self) -> list[tuple[str, int, int, int]]:
        """A version's evaluation as batches of held-out utterances, `(set, seed, start, stop)`: every held-out set
        at every sampling seed (`eval.seeds`), `EVAL_BATCH` utterances a batch. Any evaluator scores any of them
        alike (`score`), so `evaluate_version` spreads them over several."""
        e = self.cfg.eval
        return [
            (name, e.seed + 1000 * s, start, min(start + EVAL_BATCH, len(rows)))
            for s in range(e.seeds)
            for name, rows in self._picked.items()
            for start in range(0, len(rows), EVAL_BATCH)
        ]

    @functools.cached_property
    def _picked(self) -> dict[str, list[dict]]:
        return heldout_rows(self.tables, self.cfg.eval.utterances, self.cfg.eval.split)

    def _plan(self, name: str, seed: int) -> HeldoutPlan:
        if (name, seed) not in self._plans:
            rows, others = self._picked[name], self.tables["heldout_sentences"]
            self._plans[name, seed] = plan_heldout(rows, self.banks[name], seed, others)
        return self._plans[name, seed]

    @metered
    def score(
        self, adapter_dir: str | None, units: list[tuple], ceiling: bool = False, sampling: SamplingConfig | None = None
    ) -> list[list[dict]]:
        """The per-utterance records of `units` (from `units()`) spoken by policy base + adapter; with `ceiling`,
        each also holds the transcript of its golden codes (at the first seed only)."""
        return [
            score_utterances(
                self._tts(adapter_dir),
                self._plan(name, seed),
                start,
                stop,
                self.asr,
                self.sim,
                sampling or self.sampling,
                ceiling=ceiling and seed == self.cfg.eval.seed,
                mos=self.mos,
            )
            for name, seed, start, stop in units
        ]

    def summarize(self, units: list[tuple], records: list[list[dict]]) -> dict[str, float]:
        """A version's held-out metrics, flat (`heldout_sentences_wer`, ...), from every unit's records: each set's
        at each seed, pooled over the seeds with their spread (`..._wer_spread`: half the range) when there are
        several, and the per-utterance word errors (`..._utt_errors`, `..._utt_words`: lists) behind the WERs."""
        runs: dict[int, dict[str, list[dict]]] = {}
        for (name, seed, _, _), recs in zip(units, records):
            runs.setdefault(seed, {}).setdefault(name, []).extend(recs)
        return pool_seeds(
            [
                {
                    f"{name}_{key}": v
                    for name, recs in sets.items()
                    for key, v in summarize_utterances(self._plan(name, seed).rows, recs).items()
                }
                for seed, sets in runs.items()
            ]
        )

    @metered
    def golden_fit(self, adapter_dir: str | None) -> dict[str, float]:
        """How well policy base + adapter predicts the golden held-out sentences (`golden_nll`)."""
        nll, acc = self.golden_nll(self._tts(adapter_dir).ar)
        return {"heldout_sentences_golden_nll": nll, "heldout_sentences_golden_acc": acc}

    @metered
    def evaluate(
        self,
        adapter_dir: str | None,
        ceiling: bool = False,
        sampling: SamplingConfig | None = None,
    ) -> dict[str, float]:
        """Held-out metrics of policy base + adapter in this one process: `golden_fit`, then every unit scored and
        summarised (`evaluate_version` spreads the same work over several evaluators). `sampling`: another decoding
        than the protocol's (temperature, top-k, top-p, guidance scale: a decoding search, `jobs.tune_decoding`);
        the cached voice is the same for every decoding."""
        units, fit = self.units(), self.golden_fit(adapter_dir)
        records = [
            self.score(adapter_dir, [u], ceiling, sampling)[0] for u in tqdm(units, desc="evaluate", unit="batch")
        ]
        return {**fit, **self.summarize(units, records)}

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


def start_evaluators(cfg: Config, base_dir: str | Path) -> list:
    """`eval.workers` Evaluator actors, each placed by `resources.evaluator`, sharing their node's cores."""
    import ray

    from actors.placement import actor_options

    n = cfg.eval.workers
    options = actor_options(cfg.resources.evaluator)
    return [ray.remote(Evaluator).options(**options).remote(cfg, str(base_dir), share=n) for _ in range(n)]


def evaluate_version(
    evaluators: list,
    adapter_dir: str | None,
    ceiling: bool = False,
    sampling: SamplingConfig | None = None,
    gap_title: str | None = None,
    samples: int = 0,
    progress: bool = True,
) -> tuple[dict[str, float], bytes | None, list[tuple[str, np.ndarray, int]]]:
    """One version's evaluation spread over `evaluators`: each batch of held-out utterances (`Evaluator.units`),
    the golden fit, the distribution gap (with a `gap_title`; always on the last evaluator, which keeps its golden
    side) and `samples` wavs go to whichever evaluator is free next; the first summarises. The metrics equal one
    evaluator's (`Evaluator.evaluate`, then `gap`) on as many threads each. `progress`: a bar on the terminal (not
    for an evaluation beside other stages, whose lines it would break). Returns (metrics, gap PNG or None,
    samples)."""
    import ray

    lead = evaluators[0]
    units = ray.get(lead.units.remote())
    calls = [("golden_fit", (adapter_dir,), None)]
    if gap_title:
        calls.append(("gap", (adapter_dir, gap_title), len(evaluators) - 1))
    if samples:
        calls.append(("samples", (adapter_dir, samples), None))
    head = len(calls)
    calls += [("score", (adapter_dir, [unit], ceiling, sampling), None) for unit in units]
    done = _spread(evaluators, calls, progress)
    results = {method: result for (method, _, _), result in zip(calls[:head], done[:head])}
    metrics = {**results["golden_fit"], **ray.get(lead.summarize.remote(units, [r[0] for r in done[head:]]))}
    gap, png = results.get("gap", ({}, None))
    return {**metrics, **gap}, png, results.get("samples", [])


def _spread(evaluators: list, calls: list[tuple[str, tuple, int | None]], progress: bool) -> list:
    """Each `(method, args, pinned)` of `calls` run on the evaluator `pinned` names, or on the next free one when
    it names none, at most one call per evaluator at a time; the results in call order."""
    import ray

    results, todo, free, busy = [None] * len(calls), list(range(len(calls))), list(range(len(evaluators))), {}
    with tqdm(total=len(calls), desc=f"evaluate on {len(evaluators)}", unit="task", disable=not progress) as bar:
        while todo or busy:
            for i in list(todo):
                pinned = calls[i][2]
                worker = pinned if pinned in free else (free[0] if pinned is None and free else None)
                if worker is not None:
                    method, args, _ = calls[i]
                    free.remove(worker)
                    todo.remove(i)
                    busy[getattr(evaluators[worker], method).remote(*args)] = (i, worker)
            [ref], _ = ray.wait(list(busy))
            i, worker = busy.pop(ref)
            results[i] = ray.get(ref)
            free.append(worker)
            bar.update()
    return results
