"""The voice behind the Serve endpoint: a JSON request, validated, -> speech of the current policy, as WAV.

No Ray here (actors/voice_server.py makes it a Ray Serve deployment). `parse_body` turns a body into a
`SpeechRequest` or a `BadRequest` naming the field and the rule (the endpoint answers it with a 4xx JSON
error); a `prompt_wav`'s length is read from its header and refused before a sample is decoded. `PolicyVoice`
loads the base AR + NAR + codec once and merges one policy version (a LoRA adapter) into a copy of the AR when
told to, as the evaluator does, so a served version speaks as it was evaluated; a request's `best_of` N has N
candidates sampled in its batch and the best by `serve.best_of_scorer` spoken (`sa_ray.best_of`), which
`speech_headers` reports. `served_model` and `check_exposure` are the checks made before a deployment is built
(jobs.serve and the RayService builder).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import math
import os
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from sa_ray import best_of, lineage, lora, tracking, votes
from sa_ray.audio import read_mono
from sa_ray.bad_request import BadRequest
from sa_ray.codec import Codec
from sa_ray.config import Config, ConfigError, ServeConfig
from sa_ray.data.examples import PromptBank
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.models.vocab import Vocab
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Spelling, TextError

PAGE = Path(__file__).parent / "web" / "voice.html"  # the listening page the endpoint serves at /
MAX_TEMPERATURE = 2.0
PROMPT_SECONDS = (0.5, 30.0)  # a voice to clone: long enough to hear, short enough to read in one go
PROMPT_RATES = (8_000, 192_000)  # Hz: from the telephone to the studio
PROMPT_CHANNELS = 8
MAX_PROMPT_BYTES = 8 * 2**20  # the file itself (serve.max_body_bytes, 1 MiB by default, bounds it first)
TOKEN_ENV = "SA_RAY_SERVE_TOKEN"  # serve.auth_token when the config leaves it empty: no secret on a command line


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    speaker: str | None  # a voice of the prepared data, or None: `prompt` is the voice
    seed: int = 0
    temperature: float = 1.0
    prompt: tuple[np.ndarray, int] | None = None  # (mono wav, sample rate) of the voice to clone
    best_of: int = 1  # candidates sampled (seeds seed .. seed+best_of-1), the best by serve.best_of_scorer spoken


_FIELDS = ("text", "speaker", "prompt_wav", "seed", "temperature", "best_of")


def parse_body(raw: bytes, speakers: list[str], max_text_chars: int, max_best_of: int = 1) -> SpeechRequest:
    """A request's body (bytes) -> SpeechRequest; not JSON is a BadRequest of status 400 (field `body`)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested past the C stack
        raise BadRequest("body", "the body is not JSON", 400) from None
    return parse_request(body, speakers, max_text_chars, max_best_of)


def parse_request(body: object, speakers: list[str], max_text_chars: int, max_best_of: int = 1) -> SpeechRequest:
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
    if odd := next((c for c in text if _control(c)), None):
        raise BadRequest("text", f"holds a control character or a lone surrogate ({ascii(odd)}): send plain text")
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
    n = body.get("best_of", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_best_of:
        raise BadRequest(
            "best_of", f"must be an integer in [1, {max_best_of}] (serve.max_best_of): the candidates sampled, 1 = off"
        )
    return SpeechRequest(text, body.get("speaker"), seed, float(temperature), prompt, n)


def _control(c: str) -> bool:
    """A character no text to say holds: C0/C1 controls (but tab and newlines) and lone surrogates (which JSON's
    \\ud800 escapes can carry and UTF-8 cannot encode)."""
    return unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r"


def _seconds(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 1e5 else f"{seconds:.3g} s"


def _prompt_audio(encoded: str) -> tuple[np.ndarray, int]:
    """base64 of an audio file (wav, flac, ...) -> (mono wav, rate), within PROMPT_SECONDS.

    The length is read from the file's header (frames / rate) and refused before any sample is decoded: 600 s of
    silence is a ~90 KB FLAC that would decode to 115 MB of float32 at 48 kHz. Then at most the frames the header
    promised are decoded, mixed to mono block by block (a header that lies about its length cannot make it decode
    more; one that promised more than the file holds is measured again after). NaN or infinite samples are
    refused; samples beyond full scale (a float file's) are clipped to [-1, 1]."""
    if len(encoded) > MAX_PROMPT_BYTES * 4 // 3 + 4:
        raise BadRequest("prompt_wav", f"is over {MAX_PROMPT_BYTES // 2**20} MB; a few seconds of speech are enough")
    try:  # line breaks (`base64` without -w0) are no error; anything else outside the alphabet is
        data = base64.b64decode("".join(encoded.split()), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise BadRequest("prompt_wav", "is not base64") from None
    try:
        sound = sf.SoundFile(io.BytesIO(data))
    except (RuntimeError, ValueError, TypeError):  # sf.LibsndfileError is a RuntimeError
        raise BadRequest("prompt_wav", "is not an audio file soundfile reads (wav, flac, ogg, mp3, ...)") from None
    with sound:
        rate, channels, frames = sound.samplerate, sound.channels, sound.frames
        if not PROMPT_RATES[0] <= rate <= PROMPT_RATES[1]:
            raise BadRequest("prompt_wav", f"is sampled at {rate} Hz; at {PROMPT_RATES[0]} to {PROMPT_RATES[1]} Hz")
        if not 1 <= channels <= PROMPT_CHANNELS:
            raise BadRequest("prompt_wav", f"has {channels} channels; at most {PROMPT_CHANNELS}")
        if frames / rate > PROMPT_SECONDS[1]:  # refused on its header's word, before a sample is decoded
            raise BadRequest(
                "prompt_wav",
                f"lasts {_seconds(frames / rate)} (its header says); a voice prompt lasts at most "
                f"{PROMPT_SECONDS[1]:.0f} s (and at least {PROMPT_SECONDS[0]} s)",
            )
        try:
            wav = read_mono(sound, frames)
        except (RuntimeError, ValueError, TypeError):
            raise BadRequest("prompt_wav", "could not be decoded: a damaged or truncated audio file") from None
    seconds = len(wav) / rate
    if not PROMPT_SECONDS[0] <= seconds <= PROMPT_SECONDS[1]:
        raise BadRequest(
            "prompt_wav",
            f"lasts {_seconds(seconds)}; a voice prompt lasts {PROMPT_SECONDS[0]} to {PROMPT_SECONDS[1]:.0f} s",
        )
    if not np.isfinite(wav).all():
        raise BadRequest("prompt_wav", "holds samples that are not numbers (NaN or infinite)")
    return np.clip(wav, -1.0, 1.0, out=wav), rate  # a float file may hold any number: full scale is +-1


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(settings: ServeConfig) -> None:
    """An endpoint that listens beyond this machine must ask for a token."""
    if not is_loopback(settings.host) and not settings.auth_token:
        raise ConfigError(
            f"serve.host={settings.host} listens beyond this machine, and serve.auth_token is empty: set "
            f"serve.auth_token (or ${TOKEN_ENV}) to a secret every request then carries as `Authorization: Bearer "
            "<token>`, or serve.host=127.0.0.1"
        )


def served_model(cfg: Config) -> Path:
    """The checks before a deployment is built: the run's prepared data, its base model (align.base_model, else
    <run_dir>/pretrain/model, as the align job), options that fit that model, a token off loopback, a votes store
    that opens. Sets what the replicas are given: cfg.run_dir and the votes store's path made absolute (they may
    start in another working directory), an empty serve.auth_token taken from $SA_RAY_SERVE_TOKEN (a Kubernetes
    Secret's, in clusters/kuberay/rayservice.yaml). Returns the base model's directory."""
    from sa_ray.data.prepare import require_prepared
    from sa_ray.models import base_model_dir
    from sa_ray.models.vocab import Vocab

    cfg.serve.auth_token = cfg.serve.auth_token or os.environ.get(TOKEN_ENV, "")
    check_exposure(cfg.serve)
    cfg.run_dir = str(Path(cfg.run_dir).resolve())
    require_prepared(cfg.run_dir)
    cfg.serve.votes_path = str(votes.store_path(cfg).resolve())
    votes.VoteStore(cfg.serve.votes_path, cfg.serve.votes_journal)  # made (or refused, named) here, not in a replica
    base_dir = base_model_dir(cfg)
    cfg.eval.check_model(Vocab.load(base_dir / "ar").aligned)
    return base_dir


class RegisteredPolicy:
    """Which policy version to serve: `base`, a fixed `models:/<name>/<version>`, or `models:/<name>@<alias>`,
    followed: `resolve` looks the alias up again and downloads a version it has not seen (into `cache_dir`).
    An alias with no version yet (`champion` before any version beat the base beyond noise) serves the base until
    one appears. A version trained on another base than `base_dir` is refused (sa_ray.lineage), naming both."""

    def __init__(self, uri: str, tracking_uri: str, cache_dir: str | Path, base_dir: Path, base_fingerprint: str):
        self.uri, self.tracking_uri, self.cache_dir = uri, tracking_uri, Path(cache_dir)
        self.name, self.alias, self.version = (None, None, None) if uri == "base" else tracking.model_ref(uri)
        self.base_dir, self.base_fingerprint = base_dir, base_fingerprint

    @classmethod
    def of_config(cls, cfg, base_dir: str | Path) -> RegisteredPolicy:
        """`serve.model` of a config, looked up in its tracking store, cached under <run_dir>/serve/adapters, for
        the base in `base_dir` with the codec of <run_dir>/codec."""
        base_dir = Path(base_dir)
        return cls(
            cfg.serve.model_uri(cfg.name),
            tracking.resolve_uri(cfg.tracking.uri),
            Path(cfg.run_dir) / "serve" / "adapters",
            base_dir,
            lineage.fingerprint(base_dir, Path(cfg.run_dir) / "codec", cfg.codec.kind),
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
        lineage.check(local, self.base_fingerprint, self.base_dir, f"models:/{self.name}/{version} ({self.uri})")
        return version, local


class PolicyVoice:
    """Base AR + NAR + codec, loaded once; `use` swaps in a policy version; `speak` answers one request."""

    def __init__(
        self,
        base_dir: str | Path,
        codec: Codec,
        data_dir: str | Path,
        prompt_frames: int,
        spelling: Spelling,
        forced_phones: bool = False,
        sampling: SamplingConfig = SamplingConfig(),
        scorer: Callable[[Vocab], best_of.Scorer] | None = None,
    ):
        self.base, self.vocab = load_ar(Path(base_dir) / "ar")
        self.nar, self.codec = NARModel.from_pretrained(Path(base_dir) / "nar"), codec
        self.spelling, self.forced_phones = spelling, forced_phones
        # the decoding of every request but its temperature, which the request states (the voice server: the
        # guidance scale of eval.cfg_scale)
        self.sampling = sampling
        self.bank, self.prompt_frames = PromptBank.of_voices(data_dir, prompt_frames, codec.n_codebooks), prompt_frames
        self.speakers = sorted(self.bank.by_speaker)
        self.tts: CodecTTS | None = None
        # best-of-N picks by `scorer`, by default the phones a candidate wrote: free, scored before rendering (only
        # the chosen one is vocoded); a model whose targets write no phones then speaks best of 1 only
        self.scorer = scorer(self.vocab) if scorer else best_of.PhoneScorer(self.vocab) if self.vocab.aligned else None

    def use(self, adapter_dir: str | Path | None) -> None:
        """base + the adapter (None: the base alone), merged into a copy; the base weights stay untouched."""
        self.tts = None  # the previous version's copy goes before the next is made
        self.tts = CodecTTS(
            lora.policy(self.base, adapter_dir),
            self.vocab,
            self.nar,
            self.codec,
            self.spelling,
            self.forced_phones,
        )

    def speak(self, requests: list[SpeechRequest]) -> list[best_of.Best | BadRequest]:
        """Requests that arrived together, sampled as one batch per temperature (a request's `best_of` candidates
        all in it); one whose text cannot be said gets its BadRequest and the others their speech. The voice prompt
        and the sampling follow each `seed`: the same request to the same version gives the same speech (up to
        float rounding when it shares a batch)."""
        out: list[best_of.Best | BadRequest | None] = [None] * len(requests)
        groups: dict[float, list[tuple[int, Request, tuple, int]]] = {}
        for i, r in enumerate(requests):
            if r.best_of > 1 and self.scorer is None:
                out[i] = BadRequest(
                    "best_of",
                    "must be 1 for this model: best-of-N picks by the phones a candidate wrote, and this model's "
                    "targets write none (plain codes; serve.best_of_scorer=asr picks by the recogniser)",
                )
                continue
            if r.prompt is None:
                prompt = self.bank.draw(r.speaker, "", random.Random(r.seed))
            else:  # the first prompt_frames of the voice given, as `jobs.synthesize --prompt-wav`
                prompt = self.codec.encode(*r.prompt)[:, : self.prompt_frames]
            request = Request(r.text, prompt, r.seed, r.speaker if r.prompt is None else None)
            try:
                prompted = self.tts.prompts([request], fit_positions=True)  # alone: its error is its own
            except TextError as exc:
                out[i] = BadRequest("text", str(exc))
                continue
            groups.setdefault(r.temperature, []).append((i, request, prompted, r.best_of))
        for temperature, group in groups.items():
            prompted = tuple([p[k][0] for _, _, p, _ in group] for k in range(3))  # (prompts, budgets, texts) of all
            made = best_of.synthesize_best(
                self.tts,
                [request for _, request, _, _ in group],
                [n for *_, n in group],
                self.scorer,
                replace(self.sampling, temperature=temperature),
                prompted=prompted,
            )
            for (i, *_), best in zip(group, made):
                out[i] = best
        return out


def speech_headers(best: best_of.Best, version: str) -> dict[str, str]:
    """The headers of a spoken answer: the version that spoke, whether the sample ended, and for best of N > 1
    which candidate was kept (its seed is the request's + that index), its score and every candidate's."""
    headers = {"X-Policy-Version": version, "X-Ended": "true" if best.synthesis.ended else "false"}
    if best.scores:
        headers |= {
            "X-Best-Of-Chosen": str(best.chosen),
            "X-Best-Of-Score": f"{best.score:.6g}",
            "X-Best-Of-Scores": ",".join(f"{s:.6g}" for s in best.scores),
            "X-Best-Of-Scorer": best.scorer,
        }
    return headers
