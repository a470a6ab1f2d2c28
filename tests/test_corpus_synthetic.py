import os
from collections import Counter

import pytest
import soundfile as sf

from sa_ray.config import CorpusConfig
from sa_ray.corpus.sentences import make_sentences
from sa_ray.corpus.synthetic import (
    align_sentence_ids,
    build_synthetic_corpus,
    extra_train_sentence_ids,
    heldout_sentence_ids,
    plan_synthetic_corpus,
)
from sa_ray.corpus.voices import Voice, VoiceError


def _cfg(tmp_path, **kw):
    base = dict(
        cache_dir=str(tmp_path),
        n_sentences=30,
        heldout_sentences=5,
        align_sentences=4,
        voices=["mbrola-us1", "mbrola-us2", "mbrola-en1"],
        heldout_voices=["mbrola-en1"],
    )
    cfg = CorpusConfig(**{**base, **kw})
    cfg.validate()
    return cfg


def test_plan_is_deterministic_and_keeps_heldout_voices_to_heldout_sentences(tmp_path):
    cfg = _cfg(tmp_path)
    plan = plan_synthetic_corpus(cfg)
    assert plan == plan_synthetic_corpus(cfg)
    heldout = heldout_sentence_ids(cfg)
    assert len(heldout) == 5
    by_voice = Counter(v.speaker for v, _, _ in plan)
    assert by_voice == {"mbrola-us1": 34, "mbrola-us2": 34, "mbrola-en1": 5}
    assert {i for v, i, _ in plan if v.speaker == "mbrola-en1"} == heldout
    assert plan_synthetic_corpus(_cfg(tmp_path, seed=1)) != plan


def test_align_sentences_are_new_sentences_of_the_training_voices_only(tmp_path):
    cfg = _cfg(tmp_path)
    plan = plan_synthetic_corpus(cfg)
    aligned = {(v.speaker, i) for v, i, _ in plan if i in align_sentence_ids(cfg)}
    assert aligned == {(s, i) for s in ("mbrola-us1", "mbrola-us2") for i in range(30, 34)}
    # adding align sentences leaves the corpus's own sentences (what the base model trains on) unchanged
    assert [t for _, i, t in plan if i < 30] == [
        t for _, _, t in plan_synthetic_corpus(_cfg(tmp_path, align_sentences=0))
    ]
    assert make_sentences(34, cfg.seed)[:30] == make_sentences(30, cfg.seed)


def test_extra_train_sentences_add_training_utterances_and_move_nothing_else(tmp_path):
    cfg, bigger = _cfg(tmp_path), _cfg(tmp_path, extra_train_sentences=6)
    plan, more = plan_synthetic_corpus(cfg), plan_synthetic_corpus(bigger)
    assert list(extra_train_sentence_ids(bigger)) == list(range(34, 40))
    added = set(more) - set(plan)
    assert set(plan) < set(more)  # every utterance of the smaller corpus, the same text at the same index
    assert {(v.speaker, i) for v, i, _ in added} == {
        (s, i) for s in ("mbrola-us1", "mbrola-us2") for i in range(34, 40)
    }
    assert heldout_sentence_ids(bigger) == heldout_sentence_ids(cfg)
    assert align_sentence_ids(bigger) == align_sentence_ids(cfg)
    texts = {t for _, _, t in plan}
    assert not {t for _, _, t in added} & texts  # new sentences, not new takes of old ones


def test_sampling_and_slicing_keep_every_voice(tmp_path):
    sampled = plan_synthetic_corpus(_cfg(tmp_path, utterances_per_voice=10))
    # 10 sampled training sentences + the 5 held-out and the 4 align ones for each training voice
    assert Counter(v.speaker for v, _, _ in sampled) == {"mbrola-us1": 19, "mbrola-us2": 19, "mbrola-en1": 5}
    sliced = plan_synthetic_corpus(_cfg(tmp_path, max_utterances=7))
    assert len(sliced) == 7 and {v.speaker for v, _, _ in sliced} == {"mbrola-us1", "mbrola-us2", "mbrola-en1"}


def test_build_synthesises_once_with_alignment(tmp_path):
    cfg = _cfg(tmp_path, max_utterances=6)
    utts = build_synthetic_corpus(cfg, progress=False)
    assert len(utts) == 6 and len({u.utt_id for u in utts}) == 6
    for u in utts:
        info = sf.info(u.audio_path)
        assert info.samplerate == 16000 and 0.5 < info.duration < 10
        # MBROLA renders exactly the phones espeak-ng laid out
        assert abs(sum(u.phone_ms) / 1000 - info.duration) < 0.02
        assert u.phones[0] == "_" and u.phones[-1] == "_" and u.source == "mbrola"
    mtimes = {u.audio_path: os.stat(u.audio_path).st_mtime_ns for u in utts}
    again = build_synthetic_corpus(cfg, progress=False)
    assert again == utts
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())  # cached: not synthesised again


def test_voice_names_are_checked():
    with pytest.raises(VoiceError, match="<engine>-<name>"):
        Voice.parse("us1")
    with pytest.raises(VoiceError, match="mbrola-zz9"):
        Voice.parse("mbrola-zz9").check_available()
