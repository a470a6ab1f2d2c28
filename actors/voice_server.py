"""VoiceServer: the Ray Serve deployment that speaks with the latest policy (sa_ray.serve does the work).

    POST /synthesize  {"text": "...", "speaker": "mbrola-us1", "seed": 0, "temperature": 1.0}  -> audio/wav
                      ("prompt_wav": base64 of ~3 s of a voice to clone, instead of "speaker")
    GET  /health      -> {"model": "models:/tiny-policy@latest", "version": 3, "speakers": [...], ...}
    GET  /            -> a listening page (sa_ray/web/voice.html) over the two

Bad input is answered with a 4xx JSON error {"error", "field"}. A replica looks its alias up again at most every
`serve.refresh_seconds` and merges in a version it has not served yet, so each version an align job registers is
heard without a redeploy; the response's X-Policy-Version header says which version spoke.
"""

import asyncio
import json
import logging
import math
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from sa_ray.audio import wav_bytes
from sa_ray.codec import load_codec
from sa_ray.config import Config
from sa_ray.serve import (
    PAGE,
    BadRequest,
    PolicyVoice,
    RegisteredPolicy,
    SpeechRequest,
    parse_request,
)

app = FastAPI(title="sa-ray voice", docs_url=None, redoc_url=None)
log = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=8)
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
            cfg.model.phone_voice,
            cfg.eval.forced_phones,
        )
        self.policy = RegisteredPolicy.of_config(cfg)
        self.page = PAGE.read_text()
        self._speak.set_max_batch_size(cfg.serve.max_batch)
        self._speak.set_batch_wait_timeout_s(cfg.serve.batch_wait_seconds)
        self.largest_batch = 0
        self.lock = threading.Lock()  # one version at a time: a swap never happens under a request
        self.version: int | None | str = "unloaded"
        self.checked = -math.inf
        self._refresh()

    def _refresh(self) -> None:
        """Follows the alias; a registry that cannot be reached keeps the version already served (after start-up)."""
        if time.monotonic() - self.checked < self.settings.refresh_seconds:
            return
        try:
            version, adapter = self.policy.resolve()
        except Exception:
            if self.version == "unloaded":
                raise
            log.warning("could not look up %s; still serving version %s", self.policy.uri, self.version, exc_info=True)
            return
        finally:
            self.checked = time.monotonic()
        if version != self.version:
            self.voice.use(adapter)
            self.version = version
            log.info("serving %s: version %s", self.policy.uri, "base" if version is None else version)

    @serve.batch
    async def _speak(self, requests: list[SpeechRequest]) -> list[tuple[bytes, str, bool] | BadRequest]:
        """Requests arriving within `serve.batch_wait_seconds` of each other (up to `serve.max_batch`) are sampled
        as one batch: one forward per step for all of them."""
        return await asyncio.to_thread(self._speak_now, requests)

    def _speak_now(self, requests: list[SpeechRequest]) -> list[tuple[bytes, str, bool] | BadRequest]:
        with self.lock:
            self._refresh()
            version, self.largest_batch = self._version_label(), max(self.largest_batch, len(requests))
            return [
                out
                if isinstance(out, BadRequest)
                else (wav_bytes(out.wav, self.voice.codec.sample_rate), version, out.ended)
                for out in self.voice.speak(requests)
            ]

    def _version_label(self) -> str:
        return "base" if self.version is None else str(self.version)

    @app.get("/", response_class=HTMLResponse)
    def listen(self) -> str:
        """A page to type a sentence, pick a voice (or upload one) and hear each version's take."""
        return self.page

    @app.get("/health")
    def health(self) -> dict:
        # a readiness probe must not wait for a running batch (seconds): it follows the alias only when idle,
        # and otherwise reports the version that batch is spoken by
        if self.lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self.lock.release()
        return {
            "model": self.policy.uri,
            "version": self._version_label(),
            "speakers": self.voice.speakers,
            "sample_rate": self.voice.codec.sample_rate,
            "max_text_chars": self.settings.max_text_chars,
            "largest_batch": self.largest_batch,
        }

    @app.post("/synthesize")
    async def synthesize(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "the body is not JSON", "field": "body"}, status_code=400)
        try:
            result = await self._speak(parse_request(body, self.voice.speakers, self.settings.max_text_chars))
            if isinstance(result, BadRequest):
                raise result
        except BadRequest as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        wav, version, ended = result
        return Response(
            wav, media_type="audio/wav", headers={"X-Policy-Version": version, "X-Ended": "true" if ended else "false"}
        )
