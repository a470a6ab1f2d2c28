"""Evaluator role: loads the codec, NAR model, offline ASR and speaker encoder ONCE, then scores any policy
(base + adapter) on the held-out sets, and rewards rollout samples for ranked pairs."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from sa_ray import lora
from sa_ray.audio import read_wav
from sa_ray.codec import load_codec
from sa_ray.config import Config
from sa_ray.data.examples import PromptBank
from sa_ray.evaluation import evaluate_heldout, heldout_tables, prompt_banks
from sa_ray.metrics.backends import MOS_SKIPPED, make_asr, make_mos, make_sim
from sa_ray.metrics.gap import embedding_plot, mean_pooled_states, mmd_rbf, paired_probe_accuracy, probe_accuracy
from sa_ray.metrics.stats import pool_seeds
from sa_ray.metrics.wer import wer
from sa_ray.losses import pack, sequence_logprobs
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.preference import split_example, voice_prompt
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request

class Evaluator:
    def __init__(self, cfg: Config, base_dir: str):
        run_dir = Path(cfg.run_dir)
        self.cfg, self.data_dir = cfg, run_dir / "data"
        self.codec = load_codec(cfg.codec, run_dir / "codec")
        self.base, self.vocab = load_ar(Path(base_dir) / "ar")
        self.nar = NARModel.from_pretrained(Path(base_dir) / "nar")
        self.asr = make_asr(cfg.eval.asr, self.data_dir, cfg.corpus)
        self.sim = make_sim(cfg.eval.sim)
        self.mos = make_mos(cfg.eval.mos)
        self.tables = heldout_tables(self.data_dir)
        self.prompt_frames = cfg.model.prompt_frames(self.codec.frame_rate)
        self.banks = prompt_banks(self.tables, self.prompt_frames, self.codec.n_codebooks)
        self.sampling = SamplingConfig(temperature=cfg.eval.temperature, top_k=cfg.eval.top_k)
        self._train_bank: PromptBank | None = None
        self._policy: tuple[str | None, CodecTTS] | None = None

    def backends(self) -> dict[str, str]:
        """Tags naming what produced the numbers: every WER names its ASR, every SIM its speaker model."""
        return {"sa_ray.asr_backend": self.asr.backend, "sa_ray.sim_backend": self.sim.backend,
                "sa_ray.mos_backend": self.mos.backend if self.mos else MOS_SKIPPED}

    def _tts(self, adapter_dir: str | None) -> CodecTTS:
        """The voice of policy base + adapter, built (merged) once per version: evaluate, gap and samples share it."""
        if self._policy is None or self._policy[0] != adapter_dir:
            self._policy = None  # let the previous version's copy go before the next one is made
            ar = lora.policy(self.base, adapter_dir)
            self._policy = adapter_dir, CodecTTS(ar, self.vocab, self.nar, self.codec, self.cfg.model.phone_voice,
                                                 self.cfg.eval.forced_phones)
        return self._policy[1]

    def evaluate(self, adapter_dir: str | None, ceiling: bool = False) -> dict[str, float]:
        """Held-out metrics, flat (`heldout_sentences_wer`, ...), averaged over `align.eval_seeds` sampling seeds,
        with the seed-to-seed spread (`..._wer_spread`: half the range) when there are several, and the
        per-utterance word errors (`..._utt_errors`, `..._utt_words`: lists) behind the WERs."""
        tts, a = self._tts(adapter_dir), self.cfg.align
        nll, acc = self.golden_nll(tts.ar)
        flat = {"heldout_sentences_golden_nll": nll, "heldout_sentences_golden_acc": acc}
        runs = [evaluate_heldout(tts, self.tables, self.banks, a.eval_utterances, self.asr, self.sim,
                                 seed=a.seed + 1000 * s, sampling=self.sampling, ceiling=ceiling and s == 0,
                                 mos=self.mos)
                for s in range(a.eval_seeds)]
        flat.update(pool_seeds([{f"{split}_{key}": v for split, metrics in run.items() for key, v in metrics.items()}
                                for run in runs]))
        return flat

    def golden_nll(self, model, n: int = 80, batch_size: int = 16) -> tuple[float, float]:
        """Teacher-forced NLL per target token, and next-token accuracy, of the golden held-out sentences under
        `model` (fixed prompts; over the full vocabulary, like every logprob of the loop)."""
        rows, bank = self.tables["heldout_sentences"][:n], self.banks["heldout_sentences"]
        pairs = [split_example(r, voice_prompt(bank, r, 0, 0), self.vocab, self.codec.frame_rate) for r in rows]
        logp, tokens, hits = 0.0, 0, 0
        with torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                lp, count, hit = sequence_logprobs(model, pack([p for p, _ in chunk], [c for _, c in chunk]), hits=True)
                logp, tokens, hits = logp + float(lp.sum()), tokens + int(count.sum()), hits + int(hit.sum())
        return -logp / max(tokens, 1), hits / max(tokens, 1)

    def gap(self, adapter_dir: str | None, plot_title: str) -> tuple[dict[str, float], bytes]:
        """The paper's distribution gap on `align.gap_utterances` held-out sentences:
        - NAR gap: WER/SIM of speech from (golden layer 0 + NAR) vs (the policy's layer 0 + NAR);
        - token gap: golden vs synthetic targets embedded by the FIXED base AR model (mean-pooled last layer,
          one space for every iteration), as a linear probe's accuracy (0.5 = no gap), the same probe on
          pair-centred embeddings (a consistent shift the sentence would hide), MMD and a t-SNE PNG."""
        rows, bank = self.tables["heldout_sentences"][: self.cfg.align.gap_utterances], self.banks["heldout_sentences"]
        tts = self._tts(adapter_dir)
        requests = [Request(r["text"], voice_prompt(bank, r, 0, 0), 7919 + i) for i, r in enumerate(rows)]
        synthetic = tts.synthesize(requests, self.sampling)
        golden_seqs, synth_seqs, starts, wers, sims = [], [], [], {"golden": [], "synthetic": []}, {"golden": [], "synthetic": []}
        for row, req, syn in zip(rows, requests, synthetic):
            prompt_ids, golden = split_example(row, req.prompt_codes, self.vocab, self.codec.frame_rate)
            text_ids = self.vocab.prompt_text_ids(prompt_ids)
            gold = tts.finish(req, golden, text_ids)
            real = read_wav(row["audio_path"])
            for kind, out in (("golden", gold), ("synthetic", syn)):
                hyp = self.asr.transcribe(out.wav, self.codec.sample_rate) if len(out.wav) else ""
                wers[kind].append(hyp)
                sims[kind].append(self.sim.similarity((out.wav, self.codec.sample_rate), real) if len(out.wav) else 0.0)
            golden_seqs.append(prompt_ids + golden)
            synth_seqs.append(prompt_ids + syn.ar_tokens)
            starts.append(len(prompt_ids))
        refs = [r["text"] for r in rows]
        g = mean_pooled_states(self.base, golden_seqs, starts)
        y = mean_pooled_states(self.base, synth_seqs, starts)
        metrics = {"nar_golden_wer": wer(refs, wers["golden"]), "nar_synthetic_wer": wer(refs, wers["synthetic"]),
                   "nar_golden_sim": float(np.mean(sims["golden"])), "nar_synthetic_sim": float(np.mean(sims["synthetic"])),
                   "gap_probe_acc": probe_accuracy(g, y), "gap_paired_probe_acc": paired_probe_accuracy(g, y),
                   "gap_mmd": mmd_rbf(g, y)}
        with tempfile.TemporaryDirectory() as tmp:
            png = embedding_plot(g, y, Path(tmp) / "gap.png", plot_title)
            return metrics, png.read_bytes()

    def samples(self, adapter_dir: str | None, n: int = 2) -> list[tuple[str, np.ndarray, int]]:
        """A few held-out sentences spoken by the policy: (name, wav, sample rate), to listen to in MLflow."""
        tts, rows, bank = self._tts(adapter_dir), self.tables["heldout_sentences"][:n], self.banks["heldout_sentences"]
        rng = random.Random(0)
        outs = tts.synthesize([Request(r["text"], bank.draw(r["speaker"], r["utt_id"], rng), i) for i, r in enumerate(rows)],
                              self.sampling)
        return [(f"{r['utt_id']}.wav", o.wav, self.codec.sample_rate) for r, o in zip(rows, outs)]

    def reward(self, batch: pd.DataFrame) -> pd.DataFrame:
        """reward = SIM to the speaker's real utterance - WER of the sample, per rollout sample (ranked pairs)."""
        if self._train_bank is None:
            rows = pq.read_table(self.data_dir / "train", columns=["utt_id", "speaker"] + [
                f"codes_{i}" for i in range(self.codec.n_codebooks)]).to_pylist()
            self._train_bank = PromptBank.from_rows(rows, self.prompt_frames, self.codec.n_codebooks)
        tts = CodecTTS(self.base, self.vocab, self.nar, self.codec, self.cfg.model.phone_voice)
        wers, sims = [], []
        for row in batch.to_dict("records"):
            prompt = voice_prompt(self._train_bank, row, self.cfg.align.seed, int(row["iteration"]))
            text_ids = self.vocab.prompt_text_ids(row["prompt_ids"])
            out = tts.finish(Request(row["text"], prompt, int(row["seed"])), list(row["sample_ids"]), text_ids)
            hyp = self.asr.transcribe(out.wav, self.codec.sample_rate) if len(out.wav) else ""
            wers.append(wer([row["text"]], [hyp]))
            sims.append(self.sim.similarity((out.wav, self.codec.sample_rate), read_wav(row["audio_path"]))
                        if len(out.wav) else 0.0)
        batch = batch.copy()
        batch["sample_wer"], batch["sample_sim"] = wers, sims
        batch["reward"] = np.asarray(sims) - np.asarray(wers)
        return batch
