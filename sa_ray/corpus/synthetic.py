"""The built-in multi-speaker corpus, synthesised locally and reproducibly from a seed.

Sentences come from the project's grammar (`sentences.py`); each training voice speaks the training
sentences (or a seeded sample of them), the held-out sentences and the align sentences (the grammar's
next `align_sentences`, which the base model never trains on: the align loop's prompts; then any
`extra_train_sentences`, more training data that moves neither of the others); held-out voices
speak only the held-out sentences, so zero-shot evaluation never sees their audio in training. Audio is built once
into `cache_dir` and reused: a file that exists is never synthesised again.

By default each voice speaks a sentence one way. With `prosody` > 0 every utterance gets its own seeded rate,
pitch and pause scale (the same phones), and with `renditions` > 1 each train and align sentence is spoken that
many times by each training voice: more than one right answer per prompt, which is what a preference can add to
plain SFT. That corpus is cached in its own subfolder (`prosody-<amount>/`) beside the deterministic one.
"""

from __future__ import annotations

import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from sa_ray.config import CorpusConfig
from sa_ray.corpus.sentences import make_sentences
from sa_ray.corpus.types import Utterance
from sa_ray.corpus.voices import Prosody, Voice


class Planned(NamedTuple):
    """One utterance of the plan: `rendition` counts the takes of a sentence by a voice (0 unless renditions > 1)."""

    voice: Voice
    idx: int
    text: str
    rendition: int = 0


def heldout_sentence_ids(cfg: CorpusConfig) -> set[int]:
    """The sentence indices no model trains on: a seeded choice among the corpus's, or the grammar's sentences
    from `heldout_start` on (a fresh set, after every training and align sentence)."""
    if cfg.heldout_start is not None:
        return set(range(cfg.heldout_start, cfg.heldout_start + cfg.heldout_sentences))
    return set(random.Random(cfg.seed + 1).sample(range(cfg.n_sentences), cfg.heldout_sentences))


def align_sentence_ids(cfg: CorpusConfig) -> range:
    """The align loop's sentences: the grammar's next ones after the corpus's (its sentences are prefix-stable)."""
    return range(cfg.n_sentences, cfg.n_sentences + cfg.align_sentences)


def extra_train_sentence_ids(cfg: CorpusConfig) -> range:
    """Training sentences after the align ones, so that adding them moves no held-out or align sentence."""
    start = cfg.n_sentences + cfg.align_sentences
    return range(start, start + cfg.extra_train_sentences)


def corpus_sentences(cfg: CorpusConfig) -> list[str]:
    """The grammar's sentences up to the last one the corpus speaks (indexed by sentence id)."""
    return make_sentences(
        max([extra_train_sentence_ids(cfg).stop, *(i + 1 for i in heldout_sentence_ids(cfg))]), cfg.seed
    )


def plan_synthetic_corpus(cfg: CorpusConfig) -> list[Planned]:
    """(voice, sentence index, text, rendition) for every utterance of the corpus, in a fixed order."""
    sentences = corpus_sentences(cfg)
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
        # Held-out sentences keep one take: evaluation scores against one golden utterance per (voice, sentence).
        plan += [
            Planned(voice, i, sentences[i], k)
            for i in ids
            for k in range(1 if i in heldout or spec in cfg.heldout_voices else cfg.renditions)
        ]
    if cfg.max_utterances is not None:
        # A slice that still covers every voice: round-robin over voices.
        by_voice: dict[str, list] = {}
        for item in plan:
            by_voice.setdefault(item[0].speaker, []).append(item)
        plan = [it for group in zip(*by_voice.values()) for it in group][: cfg.max_utterances]
    return plan


def utterance_id(cfg: CorpusConfig, item: Planned) -> str:
    """`<voice>_<seed>_<sentence>`, plus `_r<k>` when there are renditions (so existing corpora keep their ids)."""
    take = f"_r{item.rendition}" if cfg.renditions > 1 else ""
    return f"{item.voice.speaker}_{cfg.seed}_{item.idx:05d}{take}"


def utterance_prosody(cfg: CorpusConfig, item: Planned) -> Prosody | None:
    """The utterance's own prosody, a pure function of (seed, voice, sentence, take); None when corpus.prosody=0.

    The first take's key has no rendition in it, so adding renditions adds takes and redraws none.
    """
    if cfg.prosody == 0:
        return None
    take = f":{item.rendition}" if item.rendition else ""
    return Prosody.draw(cfg.prosody, f"prosody:{cfg.seed}:{item.voice.speaker}:{item.idx}{take}")


def corpus_dir(cfg: CorpusConfig) -> Path:
    """Where the audio lives: `cache_dir` itself for the deterministic corpus (as it always has), a subfolder per
    prosody amount otherwise, so the two never share a file and can both stay in one cache."""
    root = Path(cfg.cache_dir)
    return root if cfg.prosody == 0 else root / f"prosody-{cfg.prosody:g}"


def build_synthetic_corpus(cfg: CorpusConfig, workers: int | None = None, progress: bool = True) -> list[Utterance]:
    """Synthesises what is missing from the cache and returns every utterance of the plan."""
    plan = plan_synthetic_corpus(cfg)
    for spec in cfg.voices:
        Voice.parse(spec).check_available()
    root = corpus_dir(cfg)

    def one(item: Planned) -> Utterance:
        voice, text = item.voice, item.text
        utt_id = utterance_id(cfg, item)
        prosody = utterance_prosody(cfg, item)
        # The drawn prosody is part of the file's identity (deterministic files have no "prosody" key): it is
        # kept in the .json only, since the prepared Parquet has no column for it
        wanted = {"text": text, "prosody": prosody.to_dict() if prosody is not None else None}
        wav = root / voice.speaker / f"{utt_id}.wav"
        meta = wav.with_suffix(".json")
        cached = json.loads(meta.read_text()) if wav.is_file() and meta.is_file() else {}
        if cached and {k: cached.get(k) for k in wanted} == wanted:
            align = cached
        else:
            tmp = wav.with_name(wav.stem + f".tmp{os.getpid()}.wav")
            result = voice.synthesize(text, tmp, prosody)
            align = {"text": text, "phones": result[0] if result else None, "phone_ms": result[1] if result else None}
            if prosody is not None:
                align["prosody"] = wanted["prosody"]
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
