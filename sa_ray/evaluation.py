"""Held-out evaluation of a voice: synthesise, transcribe, compare speakers.

Reports, per set of utterances: WER of the synthesised speech against its text, SIM between the
synthesised speech and the speaker's real utterance of the same sentence (and, as a floor, real speech
of another speaker from `others`), the duration ratio (generated / golden frames), the phone error rate
of aligned targets (the phones the AR model wrote against the ones it was asked to say: content errors
without the recogniser's noise) and the share of samples with any phone error, the duration error (mean
|log| of the duration ratio: too long and too short both count) and the share of samples that hit the length
limit before EOS. The
ceiling (golden codes of all layers decoded by the same codec) is reported beside them.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from sa_ray.data.examples import PromptBank, row_codes
from sa_ray.metrics.gap import embedding_plot, mean_pooled_states, mmd_rbf, paired_probe_accuracy, probe_accuracy
from sa_ray.metrics.phones import phone_errors
from sa_ray.metrics.speaker import cosine
from sa_ray.metrics.wer import wer, word_errors
from sa_ray.preference import split_example, voice_prompt
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request
from sa_ray.text import normalize_text

EVAL_BATCH = 16  # held-out requests sampled in one AR batch: the unit an evaluation is spread over processes by


@dataclass
class HeldoutPlan:
    """What `evaluate_tts` scores at one seed: the rows, each one's request (voice prompt and sampling seed) and the
    real utterance of another speaker its SIM floor is measured against, all drawn up front in one fixed order, so
    that any batch of it is scored alike in any process (`score_utterances`)."""

    rows: list[dict]
    requests: list[Request]
    others: list[dict | None]


def plan_heldout(rows: list[dict], bank: PromptBank, seed: int, others: list[dict] | None = None) -> HeldoutPlan:
    """`rows`' plan at `seed`: prompts from `bank`, the SIM floor's speaker from `others` (default: `rows`)."""
    rng = random.Random(seed)
    requests = heldout_requests(rows, bank, rng, seed)
    return HeldoutPlan(rows, requests, [_other_speaker(others or rows, row, rng) for row in rows])


def score_utterances(
    tts: CodecTTS,
    plan: HeldoutPlan,
    start: int,
    stop: int,
    asr,
    sim,
    sampling: SamplingConfig = SamplingConfig(),
    ceiling: bool = True,
    mos=None,
) -> list[dict]:
    """Rows `start:stop` of `plan` synthesised (one AR batch) and scored: one plain record per utterance, which
    `summarize_utterances` turns into a set's metrics."""
    rows, records, sr = plan.rows[start:stop], [], tts.codec.sample_rate
    outs = tts.synthesize(plan.requests[start:stop], sampling)
    for row, other, out in zip(rows, plan.others[start:stop], outs):
        voice = sim.embed(out.wav, sr) if len(out.wav) else None  # once, for both SIMs
        record = {
            "hyp": asr.transcribe(out.wav, sr) if len(out.wav) else "",
            "sim": cosine(voice, sim.embed_file(row["audio_path"])) if voice is not None else 0.0,
            "sim_other": (
                cosine(voice, sim.embed_file(other["audio_path"])) if other is not None and voice is not None else None
            ),
            "ratio": out.codes.shape[1] / max(1, row["frames"]),
            "repeat": repetition_rate(out.codes[0]),
            "ended": out.ended,
        }
        if tts.vocab.aligned:
            record["phone_edits"], record["phones"] = (
                phone_errors(out.ar_tokens, out.text_ids, tts.vocab),
                len(out.text_ids),
            )
        if mos is not None and len(out.wav):
            record["mos"] = mos.score(out.wav, sr)
        if ceiling:
            record["golden_hyp"] = asr.transcribe(tts.codec.decode(row_codes(row, tts.codec.n_codebooks)), sr)
        records.append(record)
    return records


def summarize_utterances(rows: list[dict], records: list[dict]) -> dict[str, float]:
    """A set's metrics from its rows' `score_utterances` records, in row order."""
    refs = [r["text"] for r in rows]
    errors, words = word_errors(refs, [rec["hyp"] for rec in records])
    ratios = [rec["ratio"] for rec in records]
    result = {
        "wer": sum(errors) / sum(words),
        "utt_errors": errors,
        "utt_words": words,  # corpus WER, from its parts
        "utt_sentences": [sentence_key(r) for r in rows],  # the bootstrap's clusters
        "sim": float(np.mean([rec["sim"] for rec in records])),
        "duration_ratio": float(np.mean(ratios)),
        "duration_error": float(np.mean(np.abs(np.log(np.maximum(ratios, 1e-3))))),
        "eos_failure_rate": 1.0 - float(np.mean([rec["ended"] for rec in records])),
        "repetition_rate": float(np.mean([rec["repeat"] for rec in records])),
        "n": len(rows),
    }
    if phones := sum(rec.get("phones", 0) for rec in records):
        result["phone_error_rate"] = sum(rec["phone_edits"] for rec in records) / phones
        result["phone_error_samples"] = sum(rec["phone_edits"] > 0 for rec in records) / len(rows)
    if sims_other := [rec["sim_other"] for rec in records if rec["sim_other"] is not None]:
        result["sim_other_speaker"] = float(np.mean(sims_other))  # real speech of ANOTHER speaker: the SIM floor
    if scores := [rec["mos"] for rec in records if "mos" in rec]:
        result["mos"] = float(np.mean(scores))
    if records and "golden_hyp" in records[0]:
        result["golden_wer"] = wer(refs, [rec["golden_hyp"] for rec in records])
    return result


def evaluate_tts(
    tts: CodecTTS,
    rows: list[dict],
    bank: PromptBank,
    asr,
    sim,
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    batch_size: int = EVAL_BATCH,
    ceiling: bool = True,
    desc: str = "evaluate",
    others: list[dict] | None = None,
    mos=None,
) -> dict[str, float]:
    plan, records = plan_heldout(rows, bank, seed, others), []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        records += score_utterances(tts, plan, start, start + batch_size, asr, sim, sampling, ceiling, mos)
    return summarize_utterances(rows, records)


def heldout_requests(rows: list[dict], bank: PromptBank, rng: random.Random, seed: int) -> list[Request]:
    """What `evaluate_tts` synthesises at `seed`: a voice prompt of each row's speaker and a sampling seed."""
    return [
        Request(r["text"], bank.draw(r["speaker"], r["utt_id"], rng), seed + i, r["speaker"])
        for i, r in enumerate(rows)
    ]


def pick_heldout(rows: list[dict], n: int) -> list[dict]:
    """An even spread of `n` utterances of a held-out set (every voice of it): the same ones every time."""
    return [rows[i * len(rows) // n] for i in range(n)] if n < len(rows) else list(rows)


SPLITS = ("dev", "test", "all")


def sentence_key(row: dict) -> str:
    """What utterances of one sentence share (its voices and sampling seeds): the bootstrap's cluster."""
    return normalize_text(row["text"])


def dev_test(rows: list[dict], split: str) -> list[dict]:
    """The `dev` or `test` half of held-out rows, split by SENTENCE (a sentence and all its voices fall in one
    half; both halves are never trained on): settings are chosen on dev, and a claim is confirmed once on test.
    The halves depend only on the set of sentences, so both held-out sets (which speak the same sentences) split
    alike and every run of a corpus splits the same way. `all`: every row."""
    if split not in SPLITS:
        raise ValueError(f"eval.split must be one of {SPLITS}; got {split!r}")
    if split == "all":
        return list(rows)
    sentences = sorted({sentence_key(r) for r in rows})
    random.Random("sa-ray dev/test").shuffle(sentences)
    half = set(sentences[: (len(sentences) + 1) // 2] if split == "dev" else sentences[(len(sentences) + 1) // 2 :])
    return [r for r in rows if sentence_key(r) in half]


def repetition_rate(level0: np.ndarray) -> float:
    """Share of frames whose first-layer code repeats the previous frame's (stuck or looping generations)."""
    codes = np.asarray(level0)
    return float(np.mean(codes[1:] == codes[:-1])) if len(codes) > 1 else 0.0


def heldout_tables(data_dir: str | Path) -> dict[str, list[dict]]:
    """The prepared held-out sets: unseen sentences of training voices, and unseen voices."""
    return {s: pq.read_table(Path(data_dir) / s).to_pylist() for s in ("heldout_sentences", "heldout_voices")}


def prompt_banks(tables: dict[str, list[dict]], prompt_frames: int, n_codebooks: int) -> dict[str, PromptBank]:
    """Per held-out set, the bank its voice prompts come from: the set's own utterances of the same speaker."""
    return {split: PromptBank.from_rows(rows, prompt_frames, n_codebooks) for split, rows in tables.items() if rows}


def heldout_rows(tables: dict[str, list[dict]], n: int, split: str = "all") -> dict[str, list[dict]]:
    """The utterances an evaluation scores per held-out set: an even spread of `n` of the `split` half
    (`dev_test`) of each (the same ones every time)."""
    out = {}
    for name, rows in tables.items():
        if not rows:
            continue
        half = dev_test(rows, split)
        if not half:
            raise ValueError(
                f"eval.split={split}: {name} has {len(rows)} utterances, none in that half; use eval.split=all"
            )
        out[name] = pick_heldout(half, n)
    return out


def evaluate_heldout(
    tts: CodecTTS,
    tables: dict[str, list[dict]],
    banks: dict[str, PromptBank],
    n: int,
    asr,
    sim,
    seed: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    ceiling: bool = True,
    mos=None,
    split: str = "all",
) -> dict[str, dict[str, float]]:
    """`evaluate_tts` on `heldout_rows` of each held-out set, voice prompts drawn from `banks[name]` (the set's own
    utterances of the same speaker, either half: a prompt is the voice, not the sentence)."""
    return {
        name: evaluate_tts(
            tts,
            picked,
            banks[name],
            asr,
            sim,
            seed=seed,
            sampling=sampling,
            desc=f"{name} ({split})",
            ceiling=ceiling,
            others=tables["heldout_sentences"],
            mos=mos,
        )
        for name, picked in heldout_rows(tables, n, split).items()
    }


def distribution_gap(
    tts: CodecTTS,
    base,
    rows: list[dict],
    bank: PromptBank,
    asr,
    sim,
    sampling: SamplingConfig,
    plot_title: str,
    golden: dict | None = None,
) -> tuple[dict[str, float], bytes]:
    """The paper's distribution gap of the voice `tts` on held-out `rows` (prompts from `bank`):
    - NAR gap: WER/SIM of speech from (golden layer 0 + NAR) vs (the policy's layer 0 + NAR);
    - token gap: golden vs synthetic targets embedded by the FIXED `base` AR model (mean-pooled last layer,
      one space for every policy), as a linear probe's accuracy (0.5 = no gap), the same probe on
      pair-centred embeddings (a consistent shift the sentence would hide), MMD and a t-SNE PNG.
    `golden`: `golden_side(...)` of the same rows when the caller kept it (it is the same for every policy)."""
    golden = golden or golden_side(tts, base, rows, bank, asr, sim)
    requests = [Request(r["text"], voice_prompt(bank, r, 0, 0), 7919 + i, r["speaker"]) for i, r in enumerate(rows)]
    synthetic = tts.synthesize(requests, sampling)
    sr = tts.codec.sample_rate
    hyps, sims = [], []
    for row, syn in zip(rows, synthetic):
        hyps.append(asr.transcribe(syn.wav, sr) if len(syn.wav) else "")
        sims.append(cosine(sim.embed(syn.wav, sr), sim.embed_file(row["audio_path"])) if len(syn.wav) else 0.0)
    prompts, starts = golden["prompts"], [len(p) for p in golden["prompts"]]
    y = mean_pooled_states(base, [p + syn.ar_tokens for p, syn in zip(prompts, synthetic)], starts)
    g, refs = golden["states"], [r["text"] for r in rows]
    metrics = {
        "nar_golden_wer": wer(refs, golden["hyps"]),
        "nar_synthetic_wer": wer(refs, hyps),
        "nar_golden_sim": float(np.mean(golden["sims"])),
        "nar_synthetic_sim": float(np.mean(sims)),
        "gap_probe_acc": probe_accuracy(g, y),
        "gap_paired_probe_acc": paired_probe_accuracy(g, y),
        "gap_mmd": mmd_rbf(g, y),
    }
    with tempfile.TemporaryDirectory() as tmp:
        return metrics, embedding_plot(g, y, Path(tmp) / "gap.png", plot_title).read_bytes()


def golden_side(tts: CodecTTS, base, rows: list[dict], bank: PromptBank, asr, sim) -> dict:
    """The golden half of `distribution_gap`: each row's golden layer 0 through the NAR and codec (its transcript
    and SIM), its AR prompt, and its target's embedding by `base`. It depends on the base's NAR, the codec and
    `base` only, never on the policy: one evaluator computes it once for every version it scores."""
    sr, out = tts.codec.sample_rate, {"hyps": [], "sims": [], "prompts": []}
    targets = []
    for row in rows:
        prompt = voice_prompt(bank, row, 0, 0)
        prompt_ids, target = split_example(row, prompt, tts.vocab, tts.codec.frame_rate)
        gold = tts.finish(
            Request(row["text"], prompt, 0, row["speaker"]), target, tts.vocab.prompt_text_ids(prompt_ids)
        )
        out["hyps"].append(asr.transcribe(gold.wav, sr) if len(gold.wav) else "")
        out["sims"].append(cosine(sim.embed(gold.wav, sr), sim.embed_file(row["audio_path"])) if len(gold.wav) else 0.0)
        out["prompts"].append(prompt_ids)
        targets.append(prompt_ids + target)
    out["states"] = mean_pooled_states(base, targets, [len(p) for p in out["prompts"]])
    return out


def _other_speaker(rows: list[dict], row: dict, rng: random.Random) -> dict | None:
    pool = [r for r in rows if r["speaker"] != row["speaker"]]
    return pool[rng.randrange(len(pool))] if pool else None
