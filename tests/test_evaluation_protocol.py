"""The evaluation protocol: dev/test halves by sentence, an even spread of utterances, and text spelled in the
phones each voice was trained on."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sa_ray.config import ConfigError, load_config
from sa_ray.corpus.voices import Voice
from sa_ray.evaluation import dev_test, pick_heldout, sentence_key
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.synthesis import CodecTTS, Request, Spelling
from tests.conftest import REPO

VOICES = ("mbrola-us1", "mbrola-us2", "mbrola-us3")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _heldout(sentences: int = 10) -> list[dict]:
    """Held-out rows as prepare orders them: voice after voice, each speaking every sentence."""
    return [
        {"utt_id": f"{v}_{i}", "speaker": v, "text": f"Sentence number {i}."} for v in VOICES for i in range(sentences)
    ]


def test_dev_and_test_halves_split_by_sentence_and_cover_the_held_out_set():
    rows = _heldout()
    dev, test = dev_test(rows, "dev"), dev_test(rows, "test")
    dev_sentences, test_sentences = {sentence_key(r) for r in dev}, {sentence_key(r) for r in test}
    assert not dev_sentences & test_sentences  # no sentence in both: a voice of it in dev, another in test
    assert len(dev_sentences) == len(test_sentences) == 5
    assert sorted(r["utt_id"] for r in dev + test) == sorted(r["utt_id"] for r in rows)
    assert all(sum(r["speaker"] == v for r in dev) == 5 for v in VOICES)  # every voice of a sentence comes along
    assert dev_test(rows, "all") == rows
    # the halves depend on the sentences alone: the unseen voice's set (the same sentences) splits alike, and so
    # does the set read in another order
    unseen = [{**r, "speaker": "mbrola-en1"} for r in rows if r["speaker"] == "mbrola-us1"]
    assert {sentence_key(r) for r in dev_test(unseen, "dev")} == dev_sentences
    assert dev_test(rows[::-1], "dev") == dev[::-1]
    with pytest.raises(ValueError, match="eval.split"):
        dev_test(rows, "train")


def test_the_split_is_a_validated_setting():
    cfg = load_config(None, ["eval.split=test", "eval.top_p=0.9"])
    assert (cfg.eval.split, cfg.eval.top_p) == ("test", 0.9)
    assert load_config(None, []).eval.split == "dev"  # tuning never looks at test by default
    with pytest.raises(ConfigError, match="eval.split"):
        load_config(None, ["eval.split=heldout"])
    with pytest.raises(ConfigError, match="eval.top_p"):
        load_config(None, ["eval.top_p=0"])


def test_held_out_utterances_are_an_even_spread_over_every_voice():
    rows = _heldout(40)  # 120 rows, voice after voice
    picked = pick_heldout(rows, 80)
    assert len(picked) == 80 and len({r["utt_id"] for r in picked}) == 80
    assert {r["speaker"] for r in picked} == set(VOICES)  # not the first 80: those are two voices only
    assert pick_heldout(rows, 500) == rows
    assert pick_heldout(_heldout(80), 80) == _heldout(80)[::3]  # the spread of earlier evaluations, unchanged


def test_training_voices_are_spelled_with_their_own_phones_and_others_with_the_default():
    cfg = load_config(None, [])
    spelling = Spelling.of_config(cfg)
    assert spelling.own == frozenset(VOICES)  # the corpus's voices, less the held-out mbrola-en1
    assert spelling.voice("mbrola-us3") == Voice.parse("mbrola-us3")
    for speaker in ("mbrola-en1", None, "festival-kal_diphone"):  # unseen, a prompt wav, another engine
        assert spelling.voice(speaker) == Voice.parse(cfg.model.phone_voice)
    assert Spelling.of_config(load_config(None, ["model.own_phones=false"])).own == frozenset()


@needs_espeak
def test_an_aligned_model_is_asked_for_the_phones_its_voice_was_trained_on():
    """mbrola-us3 speaks without aspirated stops: its prompts now hold its own phones, as its training rows do."""
    base = REPO / "checkpoints" / "base"
    ar, vocab = load_ar(base / "ar")
    tts = CodecTTS(
        ar, vocab, NARModel.from_pretrained(base / "nar"), _Codec(), Spelling.of_config(load_config(None, []))
    )
    text, prompt = "Peter kept the cat at the top of the tower.", np.zeros((1, 4), np.int64)

    def asked(speaker):
        return tts.prompts([Request(text, prompt, 0, speaker)])[2][0]

    own = Voice.parse("mbrola-us3").phones(text)[0]  # what prepare stored for an utterance of mbrola-us3
    assert asked("mbrola-us3") == vocab.text_ids(own)
    assert asked("mbrola-us3") != asked("mbrola-us1")  # p_h, t_h, k_h in us1's phones
    assert asked("mbrola-en1") == asked(None) == asked("mbrola-us1")  # en1's own phones are not in the vocabulary


class _Codec:
    """What `CodecTTS.prompts` reads of a codec."""

    frame_rate = 50.0
    n_codebooks = 1
