"""Prepared utterances -> training examples of the AR and NAR models.

Each example pairs an utterance with a voice prompt: a crop of ANOTHER utterance of the same speaker
(zero-shot voice cloning, as in the paper). Prompts come from a `PromptBank`, small enough (codes
only) to hand to every training worker whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sa_ray.models.vocab import IGNORE, Vocab, frames_per_phone


def row_codes(row: dict, n_codebooks: int | None = None) -> np.ndarray:
    """`codes_0..codes_{L-1}` columns of a prepared row -> int64 [L, frames]."""
    keys = sorted((k for k in row if k.startswith("codes_")), key=lambda k: int(k.split("_")[1]))
    keys = keys[:n_codebooks] if n_codebooks else keys
    return np.stack([np.asarray(row[k], dtype=np.int64) for k in keys])


def is_aligned(rows: list[dict]) -> bool:
    """Aligned layout when every utterance carries the synthesiser's phone durations."""
    return bool(rows) and all(r.get("phone_ms") is not None and len(r["phone_ms"]) > 0 for r in rows)


def build_vocab(rows: list[dict], codebook_size: int) -> Vocab:
    """Text tokens = the phones of an aligned corpus, else the characters of the normalised text."""
    aligned = is_aligned(rows)
    tokens: set[str] = set()
    for r in rows:
        tokens.update(r["phones"] if aligned else char_tokens(r["text_norm"]))
    return Vocab(tuple(sorted(tokens)), codebook_size, aligned)


def char_tokens(text: str) -> list[str]:
    """Characters of normalised text as text tokens, `|` marking word boundaries."""
    return ["|" if c == " " else c for c in text]


def text_tokens(row: dict, vocab: Vocab) -> list[str]:
    return list(row["phones"]) if vocab.aligned else char_tokens(row["text_norm"])


@dataclass
class PromptBank:
    """speaker -> [(utt_id, codes [L, frames])] to draw voice prompts from."""

    by_speaker: dict[str, list[tuple[str, np.ndarray]]]
    prompt_frames: int

    @classmethod
    def from_rows(cls, rows: list[dict], prompt_frames: int, n_codebooks: int) -> PromptBank:
        bank: dict[str, list] = {}
        for r in sorted(rows, key=lambda r: r["utt_id"]):
            bank.setdefault(r["speaker"], []).append((r["utt_id"], row_codes(r, n_codebooks)))
        return cls(bank, prompt_frames)

    @classmethod
    def of_voices(cls, data_dir: str | Path, prompt_frames: int, n_codebooks: int) -> PromptBank:
        """Every voice of a prepared run (the training voices and the zero-shot held-out ones), for synthesis."""
        rows = [
            r
            for split in ("train", "heldout_voices")
            if (Path(data_dir) / split).exists()
            for r in pq.read_table(Path(data_dir) / split).to_pylist()
        ]
        if not rows:
            raise FileNotFoundError(f"no prepared utterances in {data_dir} to take voice prompts from")
        return cls.from_rows(rows, prompt_frames, n_codebooks)

    def draw(self, speaker: str, exclude: str, rng: random.Random) -> np.ndarray:
        """A random crop of up to `prompt_frames` from another utterance of `speaker`."""
        pool = [c for u, c in self.by_speaker.get(speaker, []) if u != exclude]
        if not pool:
            raise ValueError(f"speaker {speaker!r} has no other utterance to take a voice prompt from")
        codes = pool[rng.randrange(len(pool))]
        start = rng.randrange(max(1, codes.shape[1] - self.prompt_frames + 1))
        return codes[:, start : start + self.prompt_frames]


def ar_example(row: dict, prompt: np.ndarray, vocab: Vocab, frame_rate: float, drop_text: bool = False) -> dict:
    """input_ids = [BOS] text [SEP] prompt [SPEECH] target [EOS]; labels only on target and EOS. `drop_text`:
    the unconditional form (`Vocab.unconditional_prompt`, no text) with the same target, phones included, so
    the model also learns p(phones + frames | voice) for classifier-free guidance."""
    codes = np.asarray(row["codes_0"], dtype=np.int64)
    text_ids = vocab.text_ids(text_tokens(row, vocab))
    head = vocab.unconditional_prompt(prompt[0]) if drop_text else vocab.prompt(text_ids, prompt[0])
    if vocab.aligned:
        target = vocab.target(codes, text_ids, frames_per_phone(row["phone_ms"], frame_rate, len(codes)))
    else:
        target = vocab.target(codes)
    return {"input_ids": head + target, "labels": [IGNORE] * len(head) + target}


def drop_condition(seed: int, utt_id: str, epoch: int, p: float) -> bool:
    """Whether condition dropout (`pretrain.cond_dropout` = p) drops this utterance's text in this epoch: a draw
    of its own from (seed, utterance, epoch), so a resumed or warm-started run drops the same examples, and the
    data order and voice prompts (other random streams) do not change with p."""
    return p > 0 and random.Random(f"{seed}:cond_dropout:{utt_id}:{epoch}").random() < p


def nar_example(row: dict, prompt: np.ndarray, vocab: Vocab, frame_rate: float, n_codebooks: int) -> dict:
    """Text-token indices, the prompt's codes, the target's codes and the phone each frame voices."""
    codes = row_codes(row, n_codebooks)
    text = [i - vocab.text_offset for i in vocab.text_ids(text_tokens(row, vocab))]
    frame_text = None
    if vocab.aligned:
        counts = frames_per_phone(row["phone_ms"], frame_rate, codes.shape[1])
        frame_text = np.repeat(np.asarray(text, dtype=np.int64), counts)
    return {"text": text, "prompt": prompt, "codes": codes, "frame_text": frame_text}
