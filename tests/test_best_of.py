"""Best-of-N (sa_ray/best_of.py): the chosen candidate is the argmax of its scorer (ties: the lowest seed), the phone
scorer is minus the phone error rate of what a candidate wrote and refuses a vocabulary that writes no phones, only
the chosen candidate is rendered when the scorer reads tokens; `jobs.synthesize --best-of` and the Serve voice on
the tiny model; the endpoint's `best_of` bound (serve.max_best_of)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sa_ray.best_of import (
    SCORERS,
    AsrScorer,
    Best,
    Candidate,
    PhoneScorer,
    candidate_seeds,
    choose,
    make_scorer,
    synthesize_best,
)
from sa_ray.config import Config, ConfigError
from sa_ray.models.vocab import EOS, Vocab
from sa_ray.synthesis import Request, Spelling, Synthesis

VOCAB = Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=True)
A, B, C, D = VOCAB.text_ids(["a", "b", "c", "d"])
FRAMES = VOCAB.code_ids([1, 2]).tolist()
ASKED = [A, B, C]
RIGHT = [A, *FRAMES, B, *FRAMES, C, *FRAMES, EOS]  # phone error rate 0
SKIPPED_B = [A, *FRAMES, C, *FRAMES, EOS]  # 1 of 3 phones wrong
TWO_WRONG = [A, *FRAMES, B, B, *FRAMES, D, *FRAMES, EOS]  # a repeated b, c -> d: 2 of 3
PROMPT_CODES = np.zeros((2, 4), np.int64)


class ScriptedTTS:
    """A stand-in CodecTTS asked to say ASKED, whose sample at seed s is `writes[s % len(writes)]`; it records the
    seeds of each generate call and of each candidate rendered."""

    def __init__(self, writes: list[list[int]], vocab: Vocab = VOCAB):
        self.writes, self.vocab = writes, vocab
        self.generated: list[list[int]] = []
        self.rendered: list[int] = []

    def prompts(self, requests, fit_positions=False):
        prompt = self.vocab.prompt(ASKED, PROMPT_CODES[0])
        return [prompt] * len(requests), [40] * len(requests), [ASKED] * len(requests)

    def generate(self, requests, sampling=None, fit_positions=False, prompted=None):
        self.generated.append([r.seed for r in requests])
        return [list(self.writes[r.seed % len(self.writes)]) for r in requests], prompted[2]

    def finish(self, request, ar_tokens, text_ids):
        self.rendered.append(request.seed)
        wav = np.full(8, request.seed, np.float32)
        return Synthesis(wav, np.zeros((2, 1), np.int64), ar_tokens, True, text_ids)


def _candidates(writes: list[list[int]]) -> list[Candidate]:
    prompt = VOCAB.prompt(ASKED, PROMPT_CODES[0])
    return [Candidate(Request("abc", PROMPT_CODES, seed), prompt, w, ASKED) for seed, w in enumerate(writes)]


# -- the chooser ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, chosen",
    [
        ([0.1, 0.5, 0.2], 1),
        ([-0.3, -0.1, -0.2], 1),
        ([0.5, 0.2, 0.5], 0),  # a tie: the lowest index (the lowest seed)
        ([-1.0, 0.0, 0.0, 0.0], 1),
        ([0.0, 0.0, 0.0], 0),
        ([7.0], 0),
        ([math.nan, -5.0, math.nan], 1),  # a scorer that failed on a candidate never wins over a number
        ([math.nan, math.nan], 0),
    ],
)
def test_choose_is_the_argmax_and_a_tie_goes_to_the_lowest_index(scores, chosen):
    assert choose(scores) == chosen


def test_choose_of_nothing_is_refused_and_the_seeds_follow_the_request():
    with pytest.raises(ValueError, match="at least one"):
        choose([])
    assert candidate_seeds(7, 3) == [7, 8, 9] and candidate_seeds(0, 1) == [0]


# -- the phone scorer and the choice, on hand-built tokens -----------------------------------------------------------


def test_the_phone_scorer_is_minus_the_phone_error_rate_of_what_each_candidate_wrote():
    scores = PhoneScorer(VOCAB).scores(_candidates([RIGHT, SKIPPED_B, TWO_WRONG, [*RIGHT, D, D]]))
    assert scores == pytest.approx([0.0, -1 / 3, -2 / 3, 0.0])  # nothing after EOS counts


def test_best_of_keeps_the_argmax_of_the_phone_scores_and_renders_only_it():
    tts = ScriptedTTS([TWO_WRONG, SKIPPED_B, RIGHT, RIGHT])  # seeds 2 and 6 tie at 0 with seeds 3, 7
    requests = [Request("abc", PROMPT_CODES, 4), Request("abc", PROMPT_CODES, 10), Request("abc", PROMPT_CODES, 0)]
    made = synthesize_best(tts, requests, [4, 1, 2], PhoneScorer(VOCAB))
    assert tts.generated == [[4, 5, 6, 7, 10, 0, 1]]  # every candidate of every request in one generate call
    first, plain, last = made
    assert first.scores == pytest.approx((-2 / 3, -1 / 3, 0.0, 0.0)) and first.chosen == 2  # seed 6, not 7
    assert first.score == 0.0 and first.scorer == "phones" and first.synthesis.ar_tokens == RIGHT
    assert (plain.chosen, plain.scores, plain.score, plain.synthesis.ar_tokens) == (0, (), None, RIGHT)  # 10 % 4
    assert last.chosen == 1 and last.synthesis.ar_tokens == SKIPPED_B
    assert tts.rendered == [6, 10, 1]  # the chosen ones only: phones are scored before the vocoder


class Heard:
    """A stand-in scorer that hears speech: the score of a candidate is given by its rendered wav's value."""

    name, hears = "heard", True

    def __init__(self, by_seed: dict[int, float]):
        self.by_seed = by_seed

    def scores(self, candidates):
        assert all(c.speech is not None for c in candidates), "a scorer that hears gets every candidate rendered"
        return [self.by_seed[int(c.speech.wav[0])] for c in candidates]


def test_a_scorer_that_hears_gets_every_candidate_rendered_once():
    tts = ScriptedTTS([RIGHT])
    (best,) = synthesize_best(tts, [Request("abc", PROMPT_CODES, 3)], [3], Heard({3: 0.1, 4: 0.9, 5: 0.9}))
    assert (best.chosen, best.scores, int(best.synthesis.wav[0])) == (1, (0.1, 0.9, 0.9), 4)
    assert tts.rendered == [3, 4, 5]  # the chosen one is not rendered twice


def test_best_of_more_than_one_needs_a_scorer_and_counts_of_at_least_one():
    tts = ScriptedTTS([RIGHT])
    with pytest.raises(ValueError, match="needs a scorer"):
        synthesize_best(tts, [Request("abc", PROMPT_CODES)], [2], None)
    with pytest.raises(ValueError, match=">= 1"):
        synthesize_best(tts, [Request("abc", PROMPT_CODES)], [0], PhoneScorer(VOCAB))
    (best,) = synthesize_best(tts, [Request("abc", PROMPT_CODES)], [1], None)  # best of 1: off, no scorer needed
    assert best.scores == () and tts.rendered == [0]


def test_the_phone_scorer_refuses_a_vocabulary_that_writes_no_phones():
    plain = Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=False)
    with pytest.raises(ConfigError, match="scorer phones needs an aligned model.*use the asr scorer"):
        PhoneScorer(plain)
    with pytest.raises(ConfigError, match="aligned"):
        make_scorer("phones", plain, None, Config())
    with pytest.raises(ConfigError, match="unknown best-of scorer 'nope'; the scorers are asr, asr_sim, phones"):
        make_scorer("nope", VOCAB, None, Config())
    assert {"phones", "asr", "asr_sim"} <= set(SCORERS)  # a reward model's scorer joins them there


class _Recogniser:
    def __init__(self, heard: dict[int, str]):
        self.heard = heard

    def transcribe(self, wav, sr):
        return self.heard[int(wav[0])]


class _Encoder:
    """A speaker encoder whose embedding of a clip is [1, value]: the prompt (zeros) embeds as [1, 0]."""

    def embed(self, wav, sr):
        return np.array([1.0, float(wav[0])])


class _Codec:
    sample_rate = 16000

    def decode(self, codes):
        return np.zeros(16, np.float32)


def test_the_asr_scorer_is_minus_the_wer_plus_the_sim_to_the_voice_prompt_when_asked():
    candidates = _candidates([RIGHT, RIGHT, RIGHT])
    for c in candidates:
        c.request = replace(c.request, text="The cat sat.")
        c.speech = Synthesis(np.full(8, c.request.seed, np.float32), np.zeros((2, 1)), RIGHT, True, ASKED)
    candidates[2].speech.wav = np.zeros(0, np.float32)  # came out empty: hears nothing, resembles no one
    asr = _Recogniser({0: "the cat sat", 1: "the hat sat"})
    assert AsrScorer(asr, _Codec()).scores(candidates) == pytest.approx([0.0, -1 / 3, -1.0])
    with_sim = AsrScorer(asr, _Codec(), _Encoder())
    assert with_sim.name == "asr_sim" and with_sim.hears
    assert with_sim.scores(candidates) == pytest.approx([1.0, -1 / 3 + 1 / math.sqrt(2), -1.0])


# -- the endpoint's bound ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, 0, -1, 2.0, 1.5, True, "2", None, [2], 10**30])
def test_a_best_of_out_of_its_bound_or_not_an_integer_is_refused_naming_the_field_and_the_rule(value):
    from sa_ray.serve import BadRequest, parse_request

    body = {"text": "Hi.", "speaker": "mbrola-us1", "best_of": value}
    with pytest.raises(BadRequest) as refused:
        parse_request(body, ["mbrola-us1"], 400, max_best_of=4)
    assert refused.value.status == 422  # a rule broken, as every other field's (docs/serve.md)
    assert refused.value.body() == {
        "error": "must be an integer in [1, 4] (serve.max_best_of): the candidates sampled, 1 = off",
        "field": "best_of",
    }


def test_best_of_defaults_to_one_and_its_bound_is_a_serve_setting():
    from sa_ray.config import ServeConfig
    from sa_ray.serve import BadRequest, parse_request

    good = {"text": "Hi.", "speaker": "mbrola-us1"}
    assert parse_request(good, ["mbrola-us1"], 400, max_best_of=4).best_of == 1
    assert parse_request({**good, "best_of": 4}, ["mbrola-us1"], 400, max_best_of=4).best_of == 4
    with pytest.raises(BadRequest, match=r"best_of: must be an integer in \[1, 1\]"):
        parse_request({**good, "best_of": 2}, ["mbrola-us1"], 400)  # a caller that sets no bound: best-of off
    assert ServeConfig().max_best_of >= 1
    with pytest.raises(ConfigError, match="serve.max_best_of must be >= 1"):
        ServeConfig(max_best_of=0).validate()


def test_the_answer_names_the_chosen_candidate_and_its_score_in_headers():
    from sa_ray.serve import speech_headers

    speech = Synthesis(np.zeros(4, np.float32), np.zeros((2, 1)), RIGHT, False, ASKED)
    assert speech_headers(Best(speech, 0, ()), "3") == {"X-Policy-Version": "3", "X-Ended": "false"}
    assert speech_headers(Best(speech, 1, (-0.25, 0.0, 0.0), "phones"), "base") == {
        "X-Policy-Version": "base",
        "X-Ended": "false",
        "X-Best-Of-Chosen": "1",
        "X-Best-Of-Score": "0",
        "X-Best-Of-Scores": "-0.25,0,0",
        "X-Best-Of-Scorer": "phones",
    }


# -- on the tiny model (the in-process slice and base) --------------------------------------------------------------


TEXT = "Hi there."  # short: rendering (the codec's decoder) is what costs here, ~0.5 s a second of speech


@pytest.fixture(scope="module")
def voice(prepared_in_process, base_in_process):
    """The Serve voice over the tiny base (no Ray): its base's voice is the CodecTTS the synthesize job builds."""
    import torch

    from sa_ray.codec import load_codec
    from sa_ray.serve import PolicyVoice

    cfg, _, _ = prepared_in_process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # stable and fast on a shared machine
    codec = load_codec(cfg.codec, Path(cfg.run_dir) / "codec")
    voice = PolicyVoice(
        base_in_process, codec, Path(cfg.run_dir) / "data", cfg.model.prompt_frames(codec.frame_rate), Spelling()
    )
    yield voice
    torch.set_num_threads(threads)


def test_on_the_tiny_model_the_best_of_n_is_the_argmax_of_the_phone_scores_of_n_seeds(voice):
    version, tts = voice.version()  # no registry: the base
    assert version == "base" and tts.vocab.aligned
    request = Request(TEXT, voice.bank.draw("mbrola-us1", "", random.Random(0)), 11, "mbrola-us1")
    best, one = synthesize_best(tts, [request, request], [4, 1], PhoneScorer(tts.vocab))
    # the same seeds sampled in a batch of the same shape (11 to 14, then 11 again), scored by hand
    generated, _ = tts.generate([replace(request, seed=s) for s in (11, 12, 13, 14, 11)])
    asked = tts.vocab.prompt_text_ids(tts.prompts([request])[0][0])
    by_hand = [-_per(ids, asked, tts.vocab) for ids in generated[:4]]
    assert best.scores == pytest.approx(by_hand)
    assert best.chosen == choose(by_hand) and best.synthesis.ar_tokens == generated[best.chosen]
    # the chosen candidate is the one rendered (the tiny base may choose one that wrote no frame: then no sound)
    assert best.synthesis.codes.shape[1] == len(tts.vocab.parse_target(generated[best.chosen])[0])
    # best of 1 is the request alone at its own seed: the first candidate of its best of N
    assert one.scores == () and one.synthesis.ar_tokens == generated[4] == generated[0]


def _per(ids, asked, vocab) -> float:
    from sa_ray.metrics.phones import phone_error_rate

    return phone_error_rate(ids, asked, vocab)


def test_the_serve_voice_speaks_best_of_within_its_batch(voice):
    from sa_ray.serve import BadRequest, SpeechRequest, speech_headers

    requests = [
        SpeechRequest(TEXT, "mbrola-us1", seed=3, best_of=3),
        SpeechRequest(TEXT, "mbrola-us2", seed=3),
        SpeechRequest("... -- ...", "mbrola-us1", best_of=2),  # nothing to say: refused alone
    ]
    (best, version), (plain, _), refused = voice.speak(requests)
    assert (
        version == "base"
        and len(best.scores) == 3
        and best.chosen == choose(best.scores)
        and best.score == max(best.scores)
    )
    assert plain.scores == () and plain.chosen == 0 and plain.synthesis.text_ids
    assert isinstance(refused, BadRequest) and refused.field == "text"
    headers = speech_headers(best, "base")
    assert headers["X-Best-Of-Chosen"] == str(best.chosen) and headers["X-Best-Of-Scorer"] == "phones"
    # a model whose targets write no phones has nothing to pick by: best_of > 1 is refused before sampling
    scorer, voice.scorer = voice.scorer, None
    try:
        (refused,) = voice.speak([requests[0]])
    finally:
        voice.scorer = scorer
    assert isinstance(refused, BadRequest) and refused.field == "best_of" and "must be 1" in refused.message


def test_the_serve_voice_picks_by_the_scorer_its_setting_names(prepared_in_process, base_in_process):
    """serve.best_of_scorer=asr: every candidate rendered and heard by the evaluation's recogniser, the chosen one
    the argmax of minus their WERs; the setting refuses a scorer that does not exist."""
    from sa_ray.codec import load_codec
    from sa_ray.config import ServeConfig
    from sa_ray.serve import PolicyVoice, SpeechRequest

    cfg, _, _ = prepared_in_process
    codec = load_codec(cfg.codec, Path(cfg.run_dir) / "codec")
    voice = PolicyVoice(
        base_in_process,
        codec,
        Path(cfg.run_dir) / "data",
        cfg.model.prompt_frames(codec.frame_rate),
        Spelling(),
        scorer=lambda vocab: make_scorer("asr", vocab, codec, cfg),
    )
    ((best, _),) = voice.speak([SpeechRequest(TEXT, "mbrola-us1", seed=3, best_of=2)])
    assert best.scorer == "asr" and len(best.scores) == 2 and all(-1e9 < s <= 0 for s in best.scores)
    assert best.chosen == choose(best.scores)
    with pytest.raises(ConfigError, match="serve.best_of_scorer must be one of phones, asr, asr_sim, reward_model"):
        ServeConfig(best_of_scorer="loudest").validate()


def test_synthesize_best_of_prints_every_candidate_and_keeps_the_best(
    prepared_in_process, base_in_process, tmp_path, capsys, one_thread
):
    import re

    from jobs import synthesize
    from sa_ray.audio import read_wav

    _, argv, _ = prepared_in_process
    out = tmp_path / "best.wav"
    job = ["--config", argv[1], "--text", TEXT, "--speaker", "mbrola-us2", "--model", str(base_in_process)]
    synthesize.main([*job, "--best-of", "3", "--seed", "5", "--out", str(out), *argv[2:]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "best of 3 by phones:", lines
    found = [
        re.fullmatch(r"  candidate (\d) \(seed (\d)\): ([+-]\d+\.\d{4})(  <- chosen)?", line) for line in lines[1:4]
    ]
    assert all(found), lines
    scores = [float(m.group(3)) for m in found]
    assert [int(m.group(2)) for m in found] == [5, 6, 7]
    assert [m.group(4) is not None for m in found] == [k == choose(scores) for k in range(3)]
    assert lines[4].startswith(f"{out}: ") and read_wav(out)[1] > 0
