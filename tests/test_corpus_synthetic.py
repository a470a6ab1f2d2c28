import json
import os
from collections import Counter
from pathlib import Path

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
from sa_ray.corpus.voices import Prosody, Voice, VoiceError


def _have_mbrola(*names: str) -> bool:
    try:
        for name in names:
            Voice.parse(f"mbrola-{name}").check_available()
    except VoiceError:
        return False
    return True


needs_mbrola = pytest.mark.skipif(not _have_mbrola("us1", "us2"), reason="needs espeak-ng, mbrola, mbrola-us1/us2")


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
    by_voice = Counter(v.speaker for v, *_ in plan)
    assert by_voice == {"mbrola-us1": 34, "mbrola-us2": 34, "mbrola-en1": 5}
    assert {i for v, i, *_ in plan if v.speaker == "mbrola-en1"} == heldout
    assert plan_synthetic_corpus(_cfg(tmp_path, seed=1)) != plan


def test_align_sentences_are_new_sentences_of_the_training_voices_only(tmp_path):
    cfg = _cfg(tmp_path)
    plan = plan_synthetic_corpus(cfg)
    aligned = {(v.speaker, i) for v, i, *_ in plan if i in align_sentence_ids(cfg)}
    assert aligned == {(s, i) for s in ("mbrola-us1", "mbrola-us2") for i in range(30, 34)}
    # adding align sentences leaves the corpus's own sentences (what the base model trains on) unchanged
    assert [t for _, i, t, _ in plan if i < 30] == [
        t for _, _, t, _ in plan_synthetic_corpus(_cfg(tmp_path, align_sentences=0))
    ]
    assert make_sentences(34, cfg.seed)[:30] == make_sentences(30, cfg.seed)


def test_extra_train_sentences_add_training_utterances_and_move_nothing_else(tmp_path):
    cfg, bigger = _cfg(tmp_path), _cfg(tmp_path, extra_train_sentences=6)
    plan, more = plan_synthetic_corpus(cfg), plan_synthetic_corpus(bigger)
    assert list(extra_train_sentence_ids(bigger)) == list(range(34, 40))
    added = set(more) - set(plan)
    assert set(plan) < set(more)  # every utterance of the smaller corpus, the same text at the same index
    assert {(v.speaker, i) for v, i, *_ in added} == {
        (s, i) for s in ("mbrola-us1", "mbrola-us2") for i in range(34, 40)
    }
    assert heldout_sentence_ids(bigger) == heldout_sentence_ids(cfg)
    assert align_sentence_ids(bigger) == align_sentence_ids(cfg)
    texts = {t for _, _, t, _ in plan}
    assert not {t for _, _, t, _ in added} & texts  # new sentences, not new takes of old ones


def test_a_fresh_heldout_set_is_sentences_after_every_training_and_align_one(tmp_path):
    cfg, fresh = _cfg(tmp_path), _cfg(tmp_path, heldout_start=40)
    assert heldout_sentence_ids(fresh) == set(range(40, 45))
    plan, texts = plan_synthetic_corpus(fresh), make_sentences(45, cfg.seed)
    spoken = {(v.speaker, i) for v, i, *_ in plan}
    # every voice speaks the fresh sentences (the held-out voice nothing else); the corpus's own 30 all train
    assert {i for s, i in spoken if s == "mbrola-en1"} == set(range(40, 45))
    assert {i for s, i in spoken if s == "mbrola-us1"} == set(range(34)) | set(range(40, 45))
    assert all(t == texts[i] for _, i, t, _ in plan)
    assert align_sentence_ids(fresh) == align_sentence_ids(cfg)  # the align pool does not move
    with pytest.raises(ValueError, match=r"corpus.heldout_start must be null or >= 34"):
        _cfg(tmp_path, heldout_start=33)


def test_sampling_and_slicing_keep_every_voice(tmp_path):
    sampled = plan_synthetic_corpus(_cfg(tmp_path, utterances_per_voice=10))
    # 10 sampled training sentences + the 5 held-out and the 4 align ones for each training voice
    assert Counter(v.speaker for v, *_ in sampled) == {"mbrola-us1": 19, "mbrola-us2": 19, "mbrola-en1": 5}
    sliced = plan_synthetic_corpus(_cfg(tmp_path, max_utterances=7))
    assert len(sliced) == 7 and {v.speaker for v, *_ in sliced} == {"mbrola-us1", "mbrola-us2", "mbrola-en1"}


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


# corpus.prosody / corpus.renditions: more than one right way to say a sentence


def test_prosody_rescales_durations_pitch_and_pauses_never_the_phones():
    lines = [["h", "73"], ["i", "34", "0", "179", "100", "191"], ["_", "150"], ["_", "1"], ["n", "69", "100", "172"]]
    assert Prosody().apply(lines) == lines  # the neutral prosody is the voice's own
    out = Prosody(rate=1.25, pitch=0.9, pause=2.0).apply(lines)
    assert [ln[0] for ln in out] == [ln[0] for ln in lines]
    # durations / rate (pauses x pause as well, a 1 ms phone stays), Hz x pitch, positions (%) untouched
    assert out == [
        ["h", "58"],
        ["i", "27", "0", "161", "100", "172"],
        ["_", "240"],
        ["_", "2"],
        ["n", "55", "100", "155"],
    ]
    draws = [Prosody.draw(0.15, f"k{i}") for i in range(200)]
    assert Prosody.draw(0.15, "k0") == draws[0]  # seeded by the key alone
    assert all(0.85 <= d.rate <= 1.15 and 0.85 <= d.pitch <= 1.15 and 0.7 <= d.pause <= 1.3 for d in draws)
    assert len(set(draws)) == 200  # the utterances are spoken 200 ways


def test_renditions_add_takes_of_train_and_align_sentences_in_training_voices(tmp_path):
    plan = plan_synthetic_corpus(_cfg(tmp_path))
    assert {item.rendition for item in plan} == {0}
    takes = plan_synthetic_corpus(_cfg(tmp_path, prosody=0.15, renditions=3))
    heldout = heldout_sentence_ids(_cfg(tmp_path))
    # 25 training + 4 align sentences x 3 takes, the 5 held-out ones once; the held-out voice as it was
    assert Counter(v.speaker for v, *_ in takes) == {"mbrola-us1": 92, "mbrola-us2": 92, "mbrola-en1": 5}
    assert {(v, i, t) for v, i, t, k in takes if k == 0} == {(v, i, t) for v, i, t, _ in plan}
    assert all(k == 0 for _, i, _, k in takes if i in heldout)
    assert plan_synthetic_corpus(_cfg(tmp_path, prosody=0.15)) == plan  # prosody alone adds no utterance


@needs_mbrola
def test_prosody_zero_is_the_corpus_as_it_always_was(tmp_path):
    cfg = _cfg(tmp_path, max_utterances=2)
    utts = build_synthetic_corpus(cfg, progress=False)
    assert [u.utt_id for u in utts] == ["mbrola-us1_0_00000", "mbrola-us2_0_00000"]
    for u in utts:  # the same place, metadata and bytes as the voice's plain rendering
        assert u.audio_path == str(tmp_path / u.speaker / f"{u.utt_id}.wav")
        meta = json.loads(Path(u.audio_path).with_suffix(".json").read_text())
        assert set(meta) == {"text", "phones", "phone_ms"}
        plain = tmp_path / "plain.wav"
        assert Voice.parse(u.speaker).synthesize(u.text, plain) == (list(u.phones), list(u.phone_ms))
        assert plain.read_bytes() == Path(u.audio_path).read_bytes()


@needs_mbrola
def test_prosody_varies_how_not_what_reproducibly_and_in_its_own_cache(tmp_path):
    plain = build_synthetic_corpus(_cfg(tmp_path, max_utterances=4), progress=False)
    cfg = _cfg(tmp_path, max_utterances=4, prosody=0.15)
    varied = build_synthetic_corpus(cfg, progress=False)
    assert [u.utt_id for u in varied] == [u.utt_id for u in plain]
    metas = []
    for p, v in zip(plain, varied):
        assert v.phones == p.phones and v.phone_ms != p.phone_ms  # the same phones, other timing
        assert Path(v.audio_path).parent.parent == tmp_path / "prosody-0.15"  # never the deterministic files
        # the durations still describe the audio, to within a few ms
        assert abs(sum(v.phone_ms) / 1000 - sf.info(v.audio_path).duration) < 0.02
        metas.append(json.loads(Path(v.audio_path).with_suffix(".json").read_text())["prosody"])
    assert len({json.dumps(m) for m in metas}) == 4  # each utterance its own draw
    # another process, another cache: the same draws and the same audio
    again = build_synthetic_corpus(_cfg(tmp_path / "other", max_utterances=4, prosody=0.15), progress=False)
    assert [(u.phones, u.phone_ms) for u in again] == [(u.phones, u.phone_ms) for u in varied]
    assert all(Path(a.audio_path).read_bytes() == Path(b.audio_path).read_bytes() for a, b in zip(again, varied))
    # both corpora live in one cache, each reused as it is; a file of other prosody is rebuilt
    mtimes = {u.audio_path: os.stat(u.audio_path).st_mtime_ns for u in plain + varied}
    assert build_synthetic_corpus(_cfg(tmp_path, max_utterances=4), progress=False) == plain
    assert build_synthetic_corpus(cfg, progress=False) == varied
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())
    other = build_synthetic_corpus(_cfg(tmp_path, max_utterances=1, prosody=0.3), progress=False)
    assert other[0].phone_ms != varied[0].phone_ms and "prosody-0.3" in other[0].audio_path
    meta = Path(varied[0].audio_path).with_suffix(".json")
    meta.write_text(meta.read_text().replace('"rate": ', '"rate": 1'))  # a cached file of some other rate
    assert build_synthetic_corpus(cfg, progress=False) == varied
    assert os.stat(varied[0].audio_path).st_mtime_ns != mtimes[varied[0].audio_path]


@needs_mbrola
def test_renditions_are_distinct_takes_with_suffixed_ids(tmp_path):
    utts = build_synthetic_corpus(_cfg(tmp_path, max_utterances=5, prosody=0.15, renditions=2), progress=False)
    # round-robin over the voices: the held-out voice's first sentence is held out, spoken once
    first = min(heldout_sentence_ids(_cfg(tmp_path)))
    ids = ["mbrola-us1_0_00000_r0", "mbrola-us2_0_00000_r0", f"mbrola-en1_0_{first:05d}_r0"]
    assert [u.utt_id for u in utts] == ids + ["mbrola-us1_0_00000_r1", "mbrola-us2_0_00000_r1"]
    us1 = [u for u in utts if u.speaker == "mbrola-us1"]
    assert us1[0].text == us1[1].text and us1[0].phones == us1[1].phones and us1[0].phone_ms != us1[1].phone_ms


def test_bad_prosody_and_renditions_are_refused_naming_the_field(tmp_path):
    for kw, field in [
        (dict(prosody=-0.1), "corpus.prosody"),
        (dict(prosody=0.5), "corpus.prosody"),
        (dict(renditions=0), "corpus.renditions"),
        (dict(renditions=2), "corpus.renditions"),  # takes without prosody would all be the same audio
        (dict(prosody=0.1, voices=["mbrola-us1", "festival-kal_diphone"], heldout_voices=[]), "corpus.prosody"),
        (dict(prosody=0.1, kind="librispeech", root="x"), "corpus.prosody"),
    ]:
        with pytest.raises(ValueError, match=field):
            _cfg(tmp_path, **kw)
