"""The voice behind the Serve endpoint: a JSON request, validated, -> speech of the current policy, as WAV.

No Ray here (actors/voice_server.py makes it a Ray Serve deployment). `parse_request` turns a body into a
`SpeechRequest` or a `BadRequest` naming the field and the rule (the endpoint answers it with a 4xx JSON
error); `PolicyVoice` loads the base AR + NAR + codec once and merges one policy version (a LoRA adapter)
into a copy of the AR when told to, as the evaluator does, so a served version speaks as it was evaluated.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sa_ray import lora, tracking
from sa_ray.audio import read_wav
from sa_ray.codec import Codec
from sa_ray.data.examples import PromptBank
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Synthesis, TextError

PAGE = Path(__file__).parent / "web" / "voice.html"  # the listening page the endpoint serves at /
MAX_TEMPERATURE = 2.0
PROMPT_SECONDS = (0.5, 30.0)  # a voice to clone: long enough to hear, short enough to read in one go
MAX_PROMPT_BYTES = 8 * 2**20


class BadRequest(ValueError):
    """A request that breaks a rule; `status` is the HTTP code to answer with (4xx)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    speaker: str | None  # a voice of the prepared data, or None: `prompt` is the voice
    seed: int = 0
    temperature: float = 1.0
    prompt: tuple[np.ndarray, int] | None = None  # (mono wav, sample rate) of the voice to clone


_FIELDS = ("text", "speaker", "prompt_wav", "seed", "temperature")


def parse_request(body: object, speakers: list[str], max_text_chars: int) -> SpeechRequest:
    """A decoded JSON body -> SpeechRequest; every rule broken is a BadRequest naming its field."""
    if not isinstance(body, dict):
        raise BadRequest("body", f"must be a JSON object with fields {', '.join(_FIELDS)}; got {type(body).__name__}")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise BadRequest(unknown[0], f"unknown field; the fields are {', '.join(_FIELDS)}")
    if ("speaker" in body) == ("prompt_wav" in body):
        raise BadRequest(
            "speaker", "give one voice: a `speaker` of the health answer's list, or a `prompt_wav` to clone"
        )
    for name in ("text", "speaker", "prompt_wav"):
        if name == "text" and name not in body:
            raise BadRequest(name, "is required")
        if name in body and not isinstance(body[name], str):
            raise BadRequest(name, f"must be a string; got {type(body[name]).__name__}")
    text = body["text"].strip()
    if not text:
        raise BadRequest("text", "must not be empty")
    if len(text) > max_text_chars:
        raise BadRequest("text", f"is {len(text)} characters; at most {max_text_chars} (send one sentence at a time)")
    if "speaker" in body and body["speaker"] not in speakers:
        raise BadRequest("speaker", f"unknown speaker {body['speaker'][:60]!r}; the voices are {', '.join(speakers)}")
    prompt = _prompt_audio(body["prompt_wav"]) if "prompt_wav" in body else None
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise BadRequest("seed", "must be an integer in [0, 2**63)")
    temperature = body.get("temperature", 1.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or not 0 <= temperature <= MAX_TEMPERATURE
    ):
        raise BadRequest("temperature", f"must be a number in [0, {MAX_TEMPERATURE}] (0 = greedy)")
    return SpeechRequest(text, body.get("speaker"), seed, float(temperature), prompt)


def _prompt_audio(encoded: str) -> tuple[np.ndarray, int]:
    """base64 of an audio file (wav, flac, ...) -> (mono wav, rate), within PROMPT_SECONDS."""
    if len(encoded) > MAX_PROMPT_BYTES * 4 // 3 + 4:
        raise BadRequest("prompt_wav", f"is over {MAX_PROMPT_BYTES // 2**20} MB; a few seconds of speech are enough")
    try:
        wav, sample_rate = read_wav(io.BytesIO(base64.b64decode(encoded, validate=True)))
    except binascii.Error:
        raise BadRequest("prompt_wav", "is not base64") from None
    except sf.LibsndfileError:
        raise BadRequest("prompt_wav", "is not an audio file soundfile reads (wav, flac, ogg, ...)") from None
    seconds = len(wav) / sample_rate
    if not PROMPT_SECONDS[0] <= seconds <= PROMPT_SECONDS[1]:
        raise BadRequest(
            "prompt_wav",
            f"lasts {seconds:.2f} s; a voice prompt lasts {PROMPT_SECONDS[0]} to {PROMPT_SECONDS[1]:.0f} s",
        )
    return wav, sample_rate


class RegisteredPolicy:
    """Which policy version to serve: `base`, a fixed `models:/<name>/<version>`, or `models:/<name>@<alias>`,
    followed: `resolve` looks the alias up again and downloads a version it has not seen (into `cache_dir`).
    An alias with no version yet (no align iteration registered) serves the base until one appears."""

    def __init__(self, uri: str, tracking_uri: str, cache_dir: str | Path):
        self.uri, self.tracking_uri, self.cache_dir = uri, tracking_uri, Path(cache_dir)
        self.name, self.alias, self.version = (None, None, None) if uri == "base" else tracking.model_ref(uri)

    @classmethod
    def of_config(cls, cfg) -> RegisteredPolicy:
        """`serve.model` of a config, looked up in its tracking store, cached under <run_dir>/serve/adapters."""
        return cls(
            cfg.serve.model_uri(cfg.name),
            tracking.resolve_uri(cfg.tracking.uri),
            Path(cfg.run_dir) / "serve" / "adapters",
        )

    def resolve(self) -> tuple[int | None, Path | None]:
        """(version, its adapter directory); (None, None) for the base."""
        if self.name is None:
            return None, None
        version = self.version or tracking.alias_version(self.name, self.alias, self.tracking_uri)
        if version is None:
            return None, None
        local = self.cache_dir / self.name / f"v{version}"
        if not (local / "adapter_config.json").is_file():
            tracking.download_model(f"models:/{self.name}/{version}", local, self.tracking_uri)
        return version, local


class PolicyVoice:
    """Base AR + NAR + codec, loaded once; `use` swaps in a policy version; `speak` answers one request."""

    def __init__(
        self,
        base_dir: str | Path,
        codec: Codec,
        data_dir: str | Path,
        prompt_frames: int,
        phone_voice: str,
        forced_phones: bool = False,
    ):
        self.base, self.vocab = load_ar(Path(base_dir) / "ar")
        self.nar, self.codec = NARModel.from_pretrained(Path(base_dir) / "nar"), codec
        self.phone_voice, self.forced_phones = phone_voice, forced_phones
        self.bank, self.prompt_frames = PromptBank.of_voices(data_dir, prompt_frames, codec.n_codebooks), prompt_frames
        self.speakers = sorted(self.bank.by_speaker)
        self.tts: CodecTTS | None = None

    def use(self, adapter_dir: str | Path | None) -> None:
        """base + the adapter (None: the base alone), merged into a copy; the base weights stay untouched."""
        self.tts = None  # the previous version's copy goes before the next is made
        self.tts = CodecTTS(
            lora.policy(self.base, adapter_dir), self.vocab, self.nar, self.codec, self.phone_voice, self.forced_phones
        )

    def speak(self, requests: list[SpeechRequest]) -> list[Synthesis | BadRequest]:
        """Requests that arrived together, sampled as one batch per temperature; one whose text cannot be said
        gets its BadRequest and the others their speech. The voice prompt and the sampling follow each `seed`:
        the same request to the same version gives the same speech (up to float rounding when it shares a batch)."""
        out: list[Synthesis | BadRequest | None] = [None] * len(requests)
        groups: dict[float, list[tuple[int, Request, tuple]]] = {}
        for i, r in enumerate(requests):
            if r.prompt is None:
                prompt = self.bank.draw(r.speaker, "", random.Random(r.seed))
            else:  # the first prompt_frames of the voice given, as `jobs.synthesize --prompt-wav`
                prompt = self.codec.encode(*r.prompt)[:, : self.prompt_frames]
            request = Request(r.text, prompt, r.seed)
            try:
                prompted = self.tts.prompts([request], fit_positions=True)  # alone: its error is its own
            except TextError as exc:
                out[i] = BadRequest("text", str(exc))
                continue
            groups.setdefault(r.temperature, []).append((i, request, prompted))
        for temperature, group in groups.items():
            prompted = tuple([p[k][0] for _, _, p in group] for k in range(3))  # (prompts, budgets, texts) of all
            made = self.tts.synthesize(
                [request for _, request, _ in group], SamplingConfig(temperature=temperature), prompted=prompted
            )
            for (i, _, _), synthesis in zip(group, made):
                out[i] = synthesis
        return out
