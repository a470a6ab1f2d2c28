"""Text + voice prompt -> speech: AR sample (layer 0, and phones when aligned) -> NAR -> codec decode.

`CodecTTS` bundles the three models a voice needs and is what the evaluator, the synthesize job and
Serve use. The AR step goes through `sa_ray.sampling` over the voice's own AR model, or through an engine of
`sa_ray.engines` (vLLM: the Serve endpoint's `serve.backend=vllm`) with the voice's adapter as a LoRA request;
`generate_each` samples requests of several voices (policy versions) over one engine in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from sa_ray import lora as lora_lib
from sa_ray.codec import Codec
from sa_ray.config import Config
from sa_ray.corpus.voices import Voice
from sa_ray.data.examples import char_tokens
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.models.vocab import EOS, Vocab, tag_prompt
from sa_ray.sampling import SamplingConfig, sample
from sa_ray.text import normalize_text


class TextError(ValueError):
    """Text this model cannot say (no sound in it, tokens outside its vocabulary, too long for its positions)."""


@dataclass
class Request:
    text: str
    prompt_codes: np.ndarray  # [L, frames] of another utterance of the target voice
    seed: int = 0
    speaker: str | None = None  # the voice's speaker id when known (it picks the phone set: `Spelling`)


@dataclass(frozen=True)
class Spelling:
    """How an aligned model's new text becomes phones. Training spelled each voice's text with that voice's own
    phonemiser (MBROLA voices differ: mbrola-us3 has no aspirated stops), so a voice the model was trained on
    is spelled the same way at inference (`own`); any other voice (a prompt wav, an unseen speaker) with the
    phones of `default`, a training voice."""

    default: str = "mbrola-us1"
    own: frozenset[str] = frozenset()

    @classmethod
    def of_config(cls, cfg: Config) -> Spelling:
        """`model.phone_voice` as the default; with `model.own_phones`, the synthetic corpus's training voices
        (MBROLA voices not held out) spelled as trained."""
        corpus, own = cfg.corpus, ()
        if cfg.model.own_phones and corpus.kind == "synthetic":
            own = [v for v in corpus.voices if v not in corpus.heldout_voices and v.startswith("mbrola-")]
        return cls(cfg.model.phone_voice, frozenset(own))

    def voice(self, speaker: str | None) -> Voice:
        return _voice(speaker if speaker in self.own else self.default)


@lru_cache(maxsize=256)
def _voice(name: str) -> Voice:
    """A voice name parsed once (Voice is a frozen dataclass of two strings: sharing one is safe); a bad name
    raises each time (exceptions are not cached)."""
    return Voice.parse(name)


@dataclass
class Synthesis:
    wav: np.ndarray
    codes: np.ndarray  # [L, frames]
    ar_tokens: list[int]  # the AR target as generated (phones + codes [+ EOS])
    ended: bool  # False when generation hit its length limit before EOS
    text_ids: list[int]  # the text tokens the request asked for (in the prompt)


class CodecTTS:
    def __init__(
        self,
        ar,
        vocab: Vocab,
        nar: NARModel,
        codec: Codec,
        spelling: Spelling | str = Spelling(),
        forced_phones: bool = False,
        engine=None,
        lora: tuple[str, int, str] | None = None,
    ):
        if forced_phones and not vocab.aligned:
            raise ValueError("forced phones need an aligned model (targets that write their phones)")
        self.ar, self.vocab, self.nar, self.codec = ar.eval(), vocab, nar.eval(), codec
        # an engine (sa_ray.engines: vLLM) samples the AR tokens instead of `sample` over `ar`, with `lora` (this
        # voice's adapter as (name, int id, directory); None: the base); `ar` is then the base, read for its
        # positions only
        self.engine, self.lora = engine, lora
        self._lora_tag = lora_lib.prompt_tag(lora[2]) if lora else None
        self.spelling = Spelling(spelling) if isinstance(spelling, str) else spelling
        self.spelling.voice(None)  # a bad default voice fails here, not at the first request
        # decode with the asked phones forced in order (`eval.forced_phones`): no phone errors by construction,
        # the model still chooses when each phone starts and every frame
        self.forced_phones = forced_phones

    @property
    def prompt_tag(self) -> str | None:
        """What a Chain-of-Hindsight policy is asked for (`good`): its adapter's, which a merged AR's config holds
        (`lora.policy`); None for any other policy."""
        return self._lora_tag if self.lora else getattr(self.ar.config, "prompt_tag", None)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        codec: Codec,
        spelling: Spelling | str = Spelling(),
        forced_phones: bool = False,
        device: str | torch.device = "cpu",
    ) -> CodecTTS:
        """The AR and NAR on `device`; the codec is the caller's (it stays where it was made)."""
        ar, vocab = load_ar(Path(model_dir) / "ar")
        nar = NARModel.from_pretrained(Path(model_dir) / "nar", device=device)
        return cls(ar.to(device), vocab, nar, codec, spelling, forced_phones)

    def text_tokens(self, text: str, speaker: str | None = None) -> tuple[list[str], float]:
        """Text tokens for new text in `speaker`'s voice and the expected number of frames (a length guide)."""
        if self.vocab.aligned:
            phones, ms = self.spelling.voice(speaker).phones(text)
            if all(p == "_" for p in phones):  # only the pauses every sentence gets at its ends
                raise TextError(f"nothing to say in {text[:40]!r}: it has no speakable words")
            return phones, sum(ms) / 1000 * self.codec.frame_rate
        chars = char_tokens(normalize_text(text))
        if not chars:
            raise TextError(f"nothing to say in {text[:40]!r}: it has no speakable words")
        return chars, len(chars) * 0.08 * self.codec.frame_rate  # ~80 ms a character

    def prompts(
        self, requests: list[Request], fit_positions: bool = False
    ) -> tuple[list[list[int]], list[int], list[list[int]]]:
        """AR prompts, max new tokens and text ids of each request. `fit_positions` refuses (TextError) a request
        whose prompt and speech budget exceed the positions the model was trained on (rope would run on past
        them, into speech nobody tested: what a server must refuse, not what an evaluation of a corpus meets)."""
        prompts, budgets, texts = [], [], []
        for r in requests:
            tokens, expected = self.text_tokens(r.text, r.speaker)
            try:
                text_ids = self.vocab.text_ids(tokens)
            except ValueError as exc:
                raise TextError(str(exc)) from None
            prompt = self.vocab.prompt(text_ids, r.prompt_codes[0])
            prompts.append(tag_prompt(prompt, self.prompt_tag) if self.prompt_tag else prompt)
            extra = len(text_ids) if self.vocab.aligned else 0
            budgets.append(extra + int(2 * expected) + 20)
            texts.append(text_ids)
            positions = self.ar.config.max_position_embeddings
            if fit_positions and len(prompts[-1]) + budgets[-1] > positions:
                raise TextError(
                    f"text too long for this model: its prompt ({len(prompts[-1])} tokens) and speech "
                    f"budget ({budgets[-1]}) exceed its {positions} positions; send one sentence at a time"
                )
        return prompts, budgets, texts

    def generate(
        self,
        requests: list[Request],
        sampling: SamplingConfig = SamplingConfig(),
        fit_positions: bool = False,
        prompted: tuple[list, list, list] | None = None,
        loras: list | None = None,
    ) -> tuple[list[list[int]], list[list[int]]]:
        """The AR stage alone: generated target tokens and the text ids asked for, per request. `prompted`:
        what `prompts(requests)` returned, when the caller has it already. `sampling.cfg_scale` != 1 (classifier-free
        guidance, `eval.cfg_scale`) decodes each request beside its text-less twin (`Vocab.unconditional_prompt`):
        the torch sampler only. `loras`: over an engine, each request's adapter (other versions' voices over the
        same engine: `generate_each`); by default this voice's."""
        prompts, budgets, texts = prompted or self.prompts(requests, fit_positions)
        options = {"forced": texts, "forced_ids": self.vocab.text_id_range} if self.forced_phones else {}
        seeds = [r.seed for r in requests]
        if self.engine is not None:
            if sampling.cfg_scale != 1:
                raise ValueError("an engine samples without classifier-free guidance: cfg_scale must be 1")
            return self.engine.generate(
                prompts,
                self.vocab.generation_ids(),
                EOS,
                budgets,
                seeds,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                lora=[self.lora] * len(requests) if loras is None else list(loras),
                **options,
            ), texts
        if sampling.cfg_scale != 1:  # the same voice prompt without the text: what condition dropout trained
            options["uncond_prompts"] = [self.vocab.unconditional_prompt(r.prompt_codes[0]) for r in requests]
        return sample(self.ar, prompts, self.vocab.generation_ids(), EOS, budgets, seeds, sampling, **options), texts

    def synthesize(
        self,
        requests: list[Request],
        sampling: SamplingConfig = SamplingConfig(),
        fit_positions: bool = False,
        prompted: tuple[list, list, list] | None = None,
    ) -> list[Synthesis]:
        generated, texts = self.generate(requests, sampling, fit_positions, prompted)
        return [self.finish(r, ids, t) for r, ids, t in zip(requests, generated, texts)]

    def finish(self, request: Request, ar_tokens: list[int], text_ids: list[int]) -> Synthesis:
        """Generated AR tokens -> all codec layers (NAR) -> waveform."""
        level0, owner, ended = self.vocab.parse_target(ar_tokens)
        if len(level0) == 0:
            return Synthesis(
                np.zeros(0, np.float32), np.zeros((self.codec.n_codebooks, 0), np.int64), ar_tokens, ended, text_ids
            )
        text = [i - self.vocab.text_offset for i in text_ids]
        frame_text = owner if self.vocab.aligned else None  # -1 marks frames before the first phone
        with torch.inference_mode():
            codes = self.nar.generate(text, request.prompt_codes, level0, frame_text)
        return Synthesis(self.codec.decode(codes), codes, ar_tokens, ended, text_ids)


def generate_each(
    voices: list[CodecTTS], requests: list[Request], sampling: SamplingConfig, prompted: tuple[list, list, list]
) -> list[list[int]]:
    """The AR tokens of each request by its own voice (`voices[i]` speaks `requests[i]`; `prompted`: each
    request's prompt, budget and text ids, by its voice). Voices over one engine are sampled in ONE engine call,
    each request with its voice's adapter, so that vLLM batches the versions together; a voice with an AR model of
    its own samples its requests in one call."""
    out: list[list[int]] = [[] for _ in requests]
    groups: dict[int, list[int]] = {}
    for i, voice in enumerate(voices):
        engine = getattr(voice, "engine", None)  # getattr: a stand-in voice (tests/test_best_of.py) has none
        groups.setdefault(id(voice if engine is None else engine), []).append(i)
    for rows in groups.values():
        part = tuple([p[i] for i in rows] for p in prompted)
        lead, asked = voices[rows[0]], [requests[i] for i in rows]
        if getattr(lead, "engine", None) is None:
            made, _ = lead.generate(asked, sampling, prompted=part)
        else:
            made, _ = lead.generate(asked, sampling, prompted=part, loras=[voices[i].lora for i in rows])
        for i, ids in zip(rows, made):
            out[i] = ids
    return out
