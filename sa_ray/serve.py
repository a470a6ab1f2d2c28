"""The voice behind the Serve endpoint: a JSON request, validated, -> speech of the policy version it names, as WAV.

No Ray here (actors/voice_server.py makes it a Ray Serve deployment). `parse_body` turns a body into a
`SpeechRequest` or a `BadRequest` naming the field and the rule (the endpoint answers it with a 4xx JSON
error); a `prompt_wav`'s length is read from its header and refused before a sample is decoded. `PolicyVoice`
loads the base AR + NAR + codec once and speaks each request with the version it names (`sa_ray.versions`:
serve.model's when it names none), as the evaluator does: with the torch sampler over a copy of the AR with that
version's LoRA adapter merged in, or with one vLLM engine over the base that samples every version as a LoRA
request (`serve.backend`). A request's `best_of` N has N candidates sampled in its batch and the best by
`serve.best_of_scorer` spoken (`sa_ray.best_of`), which `speech_headers` reports. `served_model` and
`check_exposure` are the checks made before a deployment is built (jobs.serve and the RayService builder).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import math
import os
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
from mlflow.exceptions import MlflowException

from sa_ray import best_of, lora, votes
from sa_ray.audio import read_mono
from sa_ray.bad_request import BadRequest
from sa_ray.codec import Codec
from sa_ray.config import Config, ConfigError, ServeConfig
from sa_ray.data.examples import PromptBank
from sa_ray.engines import resolve_backend
from sa_ray.lineage import LineageError
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from sa_ray.models.vocab import Vocab
from sa_ray.sampling import SamplingConfig
from sa_ray.synthesis import CodecTTS, Request, Spelling, TextError
from sa_ray.versions import LoadedVersions, RefusedVersion, RegisteredPolicy, UnknownVersion, label, parse_version

log = logging.getLogger(__name__)
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
    version: str | None = None  # the policy version to speak with (sa_ray.versions.parse_version); None: serve.model's


_FIELDS = ("text", "speaker", "prompt_wav", "seed", "temperature", "best_of", "version")
MULTIPLEXED_HEADER = "serve_multiplexed_model_id"  # Ray Serve's model header: the version when the body names none


def parse_body(
    raw: bytes, speakers: list[str], max_text_chars: int, max_best_of: int = 1, version: str | None = None
) -> SpeechRequest:
    """A request's body (bytes) -> SpeechRequest; not JSON is a BadRequest of status 400 (field `body`).
    `version`: what the request named outside its body (MULTIPLEXED_HEADER), for a body that names none."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested past the C stack
        raise BadRequest("body", "the body is not JSON", 400) from None
    request = parse_request(body, speakers, max_text_chars, max_best_of)
    if request.version is None and version:
        try:
            request = replace(request, version=parse_version(version))
        except ValueError as exc:
            raise BadRequest("version", f"(the {MULTIPLEXED_HEADER} header) {exc}") from None
    return request


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
    try:
        version = parse_version(body["version"]) if "version" in body else None
    except ValueError as exc:
        raise BadRequest("version", str(exc)) from None
    return SpeechRequest(text, body.get("speaker"), seed, float(temperature), prompt, n, version)


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
    serve_backend(cfg)
    return base_dir


def serve_backend(cfg: Config) -> str:
    """What samples the endpoint's AR tokens (auto: vllm where it is installed, else torch; on a CPU too, unlike
    `align.backend`: one engine serves every version, where the torch backend holds a merged copy per version);
    but vLLM samples without classifier-free guidance, so auto is torch where eval.cfg_scale != 1, and vllm there
    a ConfigError."""
    backend = resolve_backend(cfg.serve.backend)
    if backend == "vllm" and cfg.eval.cfg_scale != 1:
        if cfg.serve.backend == "vllm":
            raise ConfigError(
                f"serve.backend=vllm samples without classifier-free guidance, and eval.cfg_scale is "
                f"{cfg.eval.cfg_scale:g}: set eval.cfg_scale=1, or serve.backend=torch (or auto)"
            )
        return "torch"
    return backend


class PolicyVoice:
    """Base AR + NAR + codec, loaded once; `speak` answers a batch of requests, each with the version it names.

    `policy` resolves a version's name (None: every request speaks with the base); the voices of the last
    `max_versions` versions spoken with are held (`sa_ray.versions.LoadedVersions`). Without `engine` a version
    speaks through the torch sampler over a copy of the AR with its adapter merged in; with one (a vLLM engine
    over the base, `sa_ray.engines.vllm_engine`, LoRA enabled for `max_versions` adapters) every version is a LoRA
    request to it, and a batch's versions are sampled in one engine call."""

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
        policy: RegisteredPolicy | None = None,
        engine=None,
        max_versions: int = 3,
    ):
        self.base, self.vocab = load_ar(Path(base_dir) / "ar")
        self.nar, self.codec = NARModel.from_pretrained(Path(base_dir) / "nar"), codec
        self.spelling, self.forced_phones = spelling, forced_phones
        # the decoding of every request but its temperature, which the request states (the voice server: the
        # guidance scale of eval.cfg_scale)
        self.sampling = sampling
        self.bank, self.prompt_frames = PromptBank.of_voices(data_dir, prompt_frames, codec.n_codebooks), prompt_frames
        self.speakers = sorted(self.bank.by_speaker)
        self.policy, self.engine = policy, engine
        self.loaded = LoadedVersions(max_versions, self._load)
        # best-of-N picks by `scorer`, by default the phones a candidate wrote: free, scored before rendering (only
        # the chosen one is vocoded); a model whose targets write no phones then speaks best of 1 only
        self.scorer = scorer(self.vocab) if scorer else best_of.PhoneScorer(self.vocab) if self.vocab.aligned else None

    def _load(self, version: int | None, adapter: Path | None) -> CodecTTS:
        """A version's voice: base + its adapter merged into a copy (the base weights stay untouched), or, over the
        engine, the base and the adapter as a LoRA request (its int id is the version number: vLLM caches adapters
        by id, and a version's files never change)."""
        if self.engine is None:
            ar, lora_request = lora.policy(self.base, adapter), None
        else:
            ar, lora_request = self.base, None if version is None else (f"v{version}", version, str(adapter))
            if lora_request is not None:
                self._fits_engine(version, adapter)
                try:  # a bad adapter fails here, alone, not in a batch
                    self.engine.load_lora(lora_request)
                except Exception as exc:
                    raise RefusedVersion(
                        f"version {version}: the vLLM engine could not load its adapter: {exc}"
                    ) from exc
        return CodecTTS(
            ar, self.vocab, self.nar, self.codec, self.spelling, self.forced_phones, self.engine, lora_request
        )

    def _fits_engine(self, version: int, adapter: Path) -> None:
        rank = json.loads((adapter / "adapter_config.json").read_text()).get("r", 0)
        if rank > self.engine.max_lora_rank:
            raise RefusedVersion(
                f"version {version}: its adapter has rank {rank}, and the vLLM engine serves ranks up to "
                f"{self.engine.max_lora_rank} (align.lora_rank): raise align.lora_rank, or serve.backend=torch"
            )

    def version(self, asked: str | None = None) -> tuple[str, CodecTTS] | BadRequest:
        """The version `asked` names (`parse_version`'s; None: serve.model's) as X-Policy-Version says it, and its
        voice, loaded unless held; or why it cannot speak: 404 no such version or alias, 409 an adapter of another
        base (or one the engine cannot load), 503 the registry out of reach."""
        try:
            version, adapter = (None, None) if self.policy is None else self.policy.resolve(asked)
            return label(version), self.loaded.get(version, adapter)
        except UnknownVersion as exc:
            return BadRequest("version", str(exc), 404)
        except (LineageError, RefusedVersion) as exc:
            return BadRequest("version", str(exc), 409)
        except (MlflowException, OSError) as exc:
            log.warning("could not look up version %s", asked, exc_info=True)
            return BadRequest(
                "version", f"version {asked or self.policy.uri}: the registry did not answer ({exc})", 503
            )

    def speak(self, requests: list[SpeechRequest]) -> list[tuple[best_of.Best, str] | BadRequest]:
        """Requests that arrived together -> each one's best candidate and the version that spoke it, sampled as one
        batch per temperature (a request's `best_of` candidates all in it, every version's requests together:
        one sampler call per version, or one engine call); a request whose text cannot be said or whose version
        cannot speak gets its BadRequest and the others their speech. The voice prompt and the sampling follow each
        `seed`: the same request to the same version gives the same speech (up to float rounding when it shares a
        batch)."""
        out: list[tuple[best_of.Best, str] | BadRequest | None] = [None] * len(requests)
        groups: dict[float, list[_Asked]] = {}
        versions: dict[str | None, tuple[str, CodecTTS] | BadRequest] = {}  # each named looked up once a batch
        for i, r in enumerate(requests):
            if r.best_of > 1 and self.scorer is None:
                out[i] = BadRequest(
                    "best_of",
                    "must be 1 for this model: best-of-N picks by the phones a candidate wrote, and this model's "
                    "targets write none (plain codes; serve.best_of_scorer=asr picks by the recogniser)",
                )
                continue
            if r.version not in versions:
                versions[r.version] = self.version(r.version)
            speaker = versions[r.version]
            if isinstance(speaker, BadRequest):
                out[i] = speaker
                continue
            if r.prompt is None:
                prompt = self.bank.draw(r.speaker, "", random.Random(r.seed))
            else:  # the first prompt_frames of the voice given, as `jobs.synthesize --prompt-wav`
                prompt = self.codec.encode(*r.prompt)[:, : self.prompt_frames]
            request = Request(r.text, prompt, r.seed, r.speaker if r.prompt is None else None)
            try:
                prompted = speaker[1].prompts([request], fit_positions=True)  # alone: its error is its own
            except TextError as exc:
                out[i] = BadRequest("text", str(exc))
                continue
            groups.setdefault(r.temperature, []).append(_Asked(i, request, *speaker, prompted, r.best_of))
        for temperature, group in groups.items():
            made = best_of.synthesize_best(
                [a.voice for a in group],
                [a.request for a in group],
                [a.best_of for a in group],
                self.scorer,
                replace(self.sampling, temperature=temperature),
                prompted=tuple([a.prompted[k][0] for a in group] for k in range(3)),  # (prompts, budgets, texts)
            )
            for asked, best in zip(group, made):
                out[asked.index] = (best, asked.version)
        return out


class _Asked(NamedTuple):
    """A request of a batch, ready to sample: its place, its version and that version's voice and prompt."""

    index: int
    request: Request
    version: str
    voice: CodecTTS
    prompted: tuple
    best_of: int


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
