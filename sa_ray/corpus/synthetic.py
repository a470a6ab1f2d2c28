"""The built-in multi-speaker corpus, synthesised locally and deterministically from a seed.

Sentences come from the project's grammar (`sentences.py`); each training voice speaks the training
sentences (or a seeded sample of them), the held-out sentences and the align sentences (the grammar's
next `align_sentences`, which the base model never trains on: the align loop's prompts; then any
`extra_train_sentences`, more training data that moves neither of the others); held-out voices
speak only the held-out sentences, so zero-shot evaluation never sees their audio in training. Audio is built once
into `cache_dir` and reused: a file that exists is never synthesised again.
"""

from __future__ import annotations

import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from sa_ray.config import CorpusConfig
from sa_ray.corpus.sentences import make_sentences
from sa_ray.corpus.types import Utterance
from sa_ray.corpus.voices import Voice


def heldout_sentence_ids(cfg: CorpusConfig) -> set[int]:
    """Seeded choice of the sentence indices no model trains on."""
    return set(random.Random(cfg.seed + 1).sample(range(cfg.n_sentences), cfg.heldout_sentences))


def align_sentence_ids(cfg: CorpusConfig) -> range:
    """The align loop's sentences: the grammar's next ones after the corpus's (its sentences are prefix-stable)."""
    return range(cfg.n_sentences, cfg.n_sentences + cfg.align_sentences)


def extra_train_sentence_ids(cfg: CorpusConfig) -> range:
    """Training sentences after the align ones, so that adding them moves no held-out or align sentence."""
    start = cfg.n_sentences + cfg.align_sentences
    return range(start, start + cfg.extra_train_sentences)


def plan_synthetic_corpus(cfg: CorpusConfig) -> list[tuple[Voice, int, str]]:
    """(voice, sentence index, text) for every utterance of the corpus, in a fixed order."""
    sentences = make_sentences(extra_train_sentence_ids(cfg).stop, cfg.seed)
    heldout = heldout_sentence_ids(cfg)
    train_ids = [i for i in range(cfg.n_sentences) if i not in heldout] + list(extra_train_sentence_ids(cfg))
    plan = []
    for spec in cfg.voices:
        voice = Voice.parse(spec)
        if spec in cfg.heldout_voices:
            ids = sorted(heldout)
        else:
            ids = train_ids
            if cfg.utterances_per_voice is not None and cfg.utterances_per_voice < len(ids):
                rng = random.Random(f"{cfg.seed}:{spec}")  # str seeds are stable across processes
                ids = sorted(rng.sample(ids, cfg.utterances_per_voice))
            ids = sorted(set(ids) | heldout) + list(align_sentence_ids(cfg))
        plan += [(voice, i, sentences[i]) for i in ids]
    if cfg.max_utterances is not None:
        # A slice that still covers every voice: round-robin over voices.
        by_voice: dict[str, list] = {}
        for item in plan:
            by_voice.setdefault(item[0].speaker, []).append(item)
        plan = [it for group in zip(*by_voice.values()) for it in group][: cfg.max_utterances]
    return plan


def build_synthetic_corpus(cfg: CorpusConfig, workers: int | None = None, progress: bool = True) -> list[Utterance]:
    """Synthesises what is missing from the cache and returns every utterance of the plan."""
    plan = plan_synthetic_corpus(cfg)
    for spec in cfg.voices:
        Voice.parse(spec).check_available()
    root = Path(cfg.cache_dir)

    def one(item: tuple[Voice, int, str]) -> Utterance:
        voice, idx, text = item
        utt_id = f"{voice.speaker}_{cfg.seed}_{idx:05d}"
        wav = root / voice.speaker / f"{utt_id}.wav"
        meta = wav.with_suffix(".json")
        if wav.is_file() and meta.is_file() and json.loads(meta.read_text())["text"] == text:
            align = json.loads(meta.read_text())
        else:
            tmp = wav.with_name(wav.stem + f".tmp{os.getpid()}.wav")
            result = voice.synthesize(text, tmp)
            align = {"text": text, "phones": result[0] if result else None, "phone_ms": result[1] if result else None}
            meta.write_text(json.dumps(align))
            tmp.replace(wav)  # the wav appears only when complete: a killed build never leaves half a file
        return Utterance(
            utt_id=utt_id,
            speaker=voice.speaker,
            text=text,
            audio_path=str(wav),
            source=voice.engine,
            phones=tuple(align["phones"]) if align["phones"] else None,
            phone_ms=tuple(align["phone_ms"]) if align["phone_ms"] else None,
        )

    # Synthesis is subprocess-bound, so threads keep every core busy.
    with ThreadPoolExecutor(workers or max(2, (os.cpu_count() or 1) * 2)) as pool:
        it = pool.map(one, plan)
        # Redraw rarely when the output is a log file rather than a terminal.
        redraw = 0.1 if sys.stderr.isatty() else 15.0
        return list(
            tqdm(it, total=len(plan), desc="corpus: synthesise", unit="utt", disable=not progress, mininterval=redraw)
        )
