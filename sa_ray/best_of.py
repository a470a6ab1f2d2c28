"""Best-of-N: a request sampled N times, each candidate scored, the best one kept (an inference mode of
`jobs.synthesize --best-of` and of the Serve endpoint's `best_of`).

The N candidates are the request at seeds seed, seed+1, ..., seed+N-1, with the request's own voice prompt: the
first is what the request alone speaks (best of 1 is the plain request) and any candidate is reproduced by its
seed alone. Every candidate of every request is decoded in one `CodecTTS.generate` call (the sampler batches
them; requests of several voices, the Serve endpoint's policy versions, in one call per voice, or per engine:
`synthesis.generate_each`). A scorer that reads tokens (`phones`) scores them before the NAR model and the vocoder run, so only the
chosen candidate is rendered (as `reward_model`); a scorer that hears speech (`asr`, `asr_sim`) has every
candidate rendered.

The choice is the argmax of the scores, ties to the lowest index (the lowest seed): a function of the scores
alone, so the same request gives the same speech. `SCORERS` maps a scorer's name to its factory: `phones`,
`asr`, `asr_sim` and `reward_model` (the run's trained reward model, `reward_model.path`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from sa_ray.config import BEST_OF_SCORERS, Config, ConfigError
from sa_ray.metrics.speaker import cosine
from sa_ray.metrics.wer import wer
from sa_ray.models.vocab import Vocab
from sa_ray.preference import phone_reward
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Synthesis, generate_each


@dataclass
class Candidate:
    """One sample of a request: what a scorer reads."""

    request: Request  # the request at this candidate's seed
    prompt_ids: list[int]  # the AR prompt (the same for every candidate of a request)
    ar_tokens: list[int]  # the target it wrote
    text_ids: list[int]  # the text tokens it was asked to say
    speech: Synthesis | None = None  # rendered for a scorer that hears speech; None for one that reads tokens


@dataclass(frozen=True)
class Best:
    """What best-of-N made of one request: the chosen candidate's speech, its index (its seed is the request's seed
    + index) and every candidate's score, in seed order (empty for best of 1: nothing is scored); `prompt_ids` the AR
    prompt it was sampled from (with `synthesis.ar_tokens`, what a listener's vote on it trains: `sa_ray.votes`)."""

    synthesis: Synthesis
    chosen: int
    scores: tuple[float, ...]
    scorer: str | None = None
    prompt_ids: tuple[int, ...] = ()

    @property
    def score(self) -> float | None:
        return self.scores[self.chosen] if self.scores else None


class Scorer(Protocol):
    name: str
    hears: bool  # True: scores rendered speech (every candidate is rendered); False: scores the AR tokens

    def scores(self, candidates: list[Candidate]) -> list[float]:
        """One score per candidate of ONE request, higher is better."""
        ...


def choose(scores: Sequence[float]) -> int:
    """The index of the highest score; ties go to the lowest index. A NaN score (a scorer that failed on a
    candidate) never wins over a number."""
    if not scores:
        raise ValueError("best-of-N needs at least one candidate")
    # max keeps the first of equal keys: the lowest index wins a tie
    return max(range(len(scores)), key=lambda i: -math.inf if math.isnan(scores[i]) else scores[i])


def candidate_seeds(seed: int, n: int) -> list[int]:
    """The sampling seeds of a request's N candidates: its own seed first, so best of 1 is the plain request."""
    return [seed + k for k in range(n)]


def synthesize_best(
    tts: CodecTTS | list[CodecTTS],
    requests: list[Request],
    n: Sequence[int],
    scorer: Scorer | None,
    sampling: SamplingConfig = SamplingConfig(),
    fit_positions: bool = False,
    prompted: tuple[list, list, list] | None = None,
) -> list[Best]:
    """Each request's best of `n[i]` candidates by `scorer` (None: every n must be 1). `tts`: the voice of every
    request, or one per request (the Serve endpoint's policy versions, `synthesis.generate_each`: versions over
    one engine are sampled in one call). `prompted`: what `prompts(requests)` of their voices returned, when the
    caller has it already (as for `CodecTTS.synthesize`). A request of n 1 is exactly `synthesize` of it by its
    voice, so requests with and without best-of share one batch."""
    if len(n) != len(requests) or any(k < 1 for k in n):
        raise ValueError(f"one candidate count >= 1 per request; got {list(n)} for {len(requests)} requests")
    if scorer is None and any(k > 1 for k in n):
        raise ValueError("best of more than 1 needs a scorer")
    several = isinstance(tts, (list, tuple))
    voices = list(tts) if several else [tts] * len(requests)
    if len(voices) != len(requests):
        raise ValueError(f"one voice per request; got {len(voices)} for {len(requests)} requests")
    if prompted is None and several:  # each by its own voice (a version's prompt tag)
        each = [v.prompts([r], fit_positions) for v, r in zip(voices, requests)]
        prompted = tuple([p[k][0] for p in each] for k in range(3))
    prompts, budgets, texts = prompted or tts.prompts(requests, fit_positions)
    owner = [i for i, k in enumerate(n) for _ in range(k)]  # the request of each candidate, in order
    expanded = [replace(requests[i], seed=s) for i, k in enumerate(n) for s in candidate_seeds(requests[i].seed, k)]
    per_candidate = tuple([part[i] for i in owner] for part in (prompts, budgets, texts))  # prompted once a request
    generated = generate_each([voices[i] for i in owner], expanded, sampling, per_candidate)
    out, start = [], 0
    for i, k in enumerate(n):
        group = [Candidate(expanded[j], prompts[i], generated[j], texts[i]) for j in range(start, start + k)]
        out.append(_pick(voices[i], group, scorer))
        start += k
    return out


def _pick(tts: CodecTTS, candidates: list[Candidate], scorer: Scorer | None) -> Best:
    if len(candidates) == 1:  # best of 1: nothing to compare, nothing scored
        only = candidates[0]
        return Best(tts.finish(only.request, only.ar_tokens, only.text_ids), 0, (), prompt_ids=tuple(only.prompt_ids))
    if scorer.hears:
        for c in candidates:
            c.speech = tts.finish(c.request, c.ar_tokens, c.text_ids)
    scores = tuple(float(s) for s in scorer.scores(candidates))
    if len(scores) != len(candidates):
        raise ValueError(f"scorer {scorer.name} gave {len(scores)} scores for {len(candidates)} candidates")
    chosen = choose(scores)
    best = candidates[chosen]
    speech = best.speech if best.speech is not None else tts.finish(best.request, best.ar_tokens, best.text_ids)
    return Best(speech, chosen, scores, scorer.name, prompt_ids=tuple(best.prompt_ids))


# ------------------------------------------------------------------------------------------------------ scorers


class PhoneScorer:
    """Minus the phone error rate of the target each candidate wrote against the phones it was asked to say: the
    reward of `align.reward=phones` (`sa_ray.preference.phone_reward`). Free and noise-free, content only; it reads
    tokens, so only the chosen candidate is rendered. Aligned vocabularies only (targets that write their phones).
    Under `eval.forced_phones` every candidate scores 0 and the first is kept."""

    name, hears = "phones", False

    def __init__(self, vocab: Vocab):
        if not vocab.aligned:
            raise ConfigError(
                "scorer phones needs an aligned model (targets that write their phones); this one speaks plain "
                "codes: use the asr scorer"
            )
        self.vocab = vocab

    def scores(self, candidates: list[Candidate]) -> list[float]:
        return [phone_reward({"sample_ids": c.ar_tokens, "prompt_ids": c.prompt_ids}, self.vocab) for c in candidates]


class AsrScorer:
    """Minus the WER of the offline recogniser's transcript of each candidate's speech against the request's text;
    with a speaker encoder (`asr_sim`), plus the SIM of that speech to the voice prompt as the codec renders it:
    SIM - WER, the reward of `align.reward=asr` (`sa_ray.rewards.AsrSimReward`), whose real utterance inference
    does not have. Hears speech: every candidate is rendered (NAR, vocoder, recogniser: ~1 s each on a CPU)."""

    hears = True

    def __init__(self, asr, codec, sim=None):
        self.asr, self.codec, self.sim = asr, codec, sim
        self.name = "asr" if sim is None else "asr_sim"

    def scores(self, candidates: list[Candidate]) -> list[float]:
        sr = self.codec.sample_rate
        voice = None
        if self.sim is not None:  # the candidates of one request share its voice prompt: embedded once
            voice = self.sim.embed(self.codec.decode(candidates[0].request.prompt_codes), sr)
        out = []
        for c in candidates:
            wav = c.speech.wav
            heard = self.asr.transcribe(wav, sr) if len(wav) else ""  # speech that came out empty hears nothing
            score = -wer([c.request.text], [heard])
            if voice is not None:
                score += cosine(self.sim.embed(wav, sr), voice) if len(wav) else 0.0  # ...and resembles no one
            out.append(score)
        return out


class RewardModelScorer:
    """The trained reward model's score of each candidate's (prompt, target) (`sa_ray.reward_model`, trained by
    `jobs.reward_model` on the run's pairs). Reads tokens: only the chosen candidate is rendered."""

    name, hears = "reward_model", False

    def __init__(self, model):
        self.model = model

    def scores(self, candidates: list[Candidate]) -> list[float]:
        return self.model.score([c.prompt_ids for c in candidates], [c.ar_tokens for c in candidates])


def _reward_model(vocab: Vocab, codec, cfg: Config) -> Scorer:
    from sa_ray.reward_model import RewardModel, checkpoint_dir

    return RewardModelScorer(RewardModel.load(checkpoint_dir(cfg)))


def _phones(vocab: Vocab, codec, cfg: Config) -> Scorer:
    return PhoneScorer(vocab)


def _asr(vocab: Vocab, codec, cfg: Config, with_sim: bool = False) -> Scorer:
    from sa_ray.metrics.backends import make_asr, make_sim  # the recogniser loads only when asked for

    asr = make_asr(cfg.eval.asr, Path(cfg.run_dir) / "data", cfg.corpus)
    return AsrScorer(asr, codec, make_sim(cfg.eval.sim) if with_sim else None)


# name -> factory(vocab, codec, cfg): the backends come from the config (eval.asr, eval.sim), as the evaluation's
SCORERS: dict[str, Callable[[Vocab, object, Config], Scorer]] = {
    "phones": _phones,
    "asr": _asr,
    "asr_sim": lambda vocab, codec, cfg: _asr(vocab, codec, cfg, with_sim=True),
    "reward_model": _reward_model,
}
assert tuple(SCORERS) == BEST_OF_SCORERS  # the config validates the names without loading this module


def make_scorer(name: str, vocab: Vocab, codec, cfg: Config) -> Scorer:
    """The scorer `name` for a model of `vocab` speaking through `codec`."""
    if name not in SCORERS:
        raise ConfigError(f"unknown best-of scorer {name!r}; the scorers are {', '.join(sorted(SCORERS))}")
    return SCORERS[name](vocab, codec, cfg)


def default_scorer(vocab: Vocab) -> str:
    """phones where a target writes its phones (free, no recogniser's noise), else asr."""
    return "phones" if vocab.aligned else "asr"
