"""The endpoint's routes as Ray Serve builds them in a replica (its class-based view over the FastAPI app), driven
in-process without starting Ray. A web-stack release that reads handler signatures differently (FastAPI no longer
resolving a postponed annotation `'Request'`, so every POST got FastAPI's own 422 asking for a query parameter
named `request`) fails here in seconds instead of in the slow HTTP tests.

`HARNESS` builds that app with a stand-in replica (the real request handling, a stand-in voice) in a child
interpreter; `stub_server` serves it with uvicorn on a loopback port, for the HTTP tests of the endpoint's limits
(tests/test_serve_limits.py) and its fuzzing (tests/test_serve_fuzz.py), no Ray either."""

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a child interpreter, so that the app's dependency overrides stay out of the test process. SETTINGS (a
# dict of ServeConfig fields) must be defined before it.
HARNESS = textwrap.dedent("""
    import asyncio, inspect, json, threading, time, types
    from fastapi import FastAPI
    from ray.serve._private.http_util import _walk_fastapi_routes
    import tempfile
    from actors import voice_server
    from sa_ray.config import ServeConfig
    from sa_ray.serve import PAGE
    from sa_ray.votes import VoteStore

    SERVER = voice_server.VoiceServer.func_or_class  # the deployment's class, as serve.ingress wrapped it
    SLOW_PARSE, SLOW_SPEAK = "__slow_parse__", "__slow_speak__"  # texts the stand-in takes seconds over

    class Replica:
        '''The servable object Serve injects as `self`: the endpoint's own request handling (`_parse`: the body
        decoded, its prompt_wav too) over a stand-in voice that records what reaches sampling.'''
        voice = types.SimpleNamespace(speakers=["mbrola-us1"], codec=types.SimpleNamespace(sample_rate=24000))
        settings = ServeConfig(**SETTINGS)
        policy = types.SimpleNamespace(uri="models:/tiny-policy@latest")
        # the real votes store, in settings.votes_path (the test's, to hand it takes) or a fresh file
        votes = VoteStore(
            settings.votes_path or f"{tempfile.mkdtemp()}/votes.sqlite", take_ttl=settings.take_ttl_seconds
        )
        page = PAGE.read_text()
        lock = threading.Lock()
        largest_batch = 0
        version, backend = "base", "torch"
        sampled = []

        def _parse(self, raw, version=""):
            if SLOW_PARSE.encode() in raw:
                time.sleep(5)  # blocks its thread: the event loop, were the endpoint to parse on it
            return SERVER._parse(self, raw, version)

        def _refresh(self):
            pass

        def _catalogue(self):
            return {"model": "tiny-policy", "versions": [{"version": "base", "aliases": []}]}

        async def _speak(self, request):
            Replica.sampled.append(request.text)
            if request.text == SLOW_SPEAK:
                await asyncio.sleep(30)
            return b"RIFF-a-take", {"X-Policy-Version": request.version or "base", "X-Ended": "true"}

    # the app a replica serves: the copy serve.ingress froze (cloudpickled) after building its class-based view
    app = next(cell.cell_contents for cell in SERVER.__init__.__closure__ if isinstance(cell.cell_contents, FastAPI))
    for route, _, _ in _walk_fastapi_routes(app):
        this = inspect.signature(route.endpoint).parameters["self"].default.dependency
        app.dependency_overrides[this] = Replica
    app.add_api_route("/_stub/sampled", lambda: {"texts": Replica.sampled})  # the test's view of sampling
""")

SERVE = """
import sys, uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stub_server(settings: dict, timeout: float = 240):
    """The endpoint's routes over the stand-in replica (HARNESS), served by uvicorn on a loopback port: yields
    its URL. `settings` are ServeConfig fields."""
    port = free_port()
    script = f"SETTINGS = {settings!r}\n{HARNESS}\n{SERVE}"
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; a file, not a pipe, never fills up
    child = subprocess.Popen([sys.executable, "-c", script, str(port)], cwd=REPO, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        while True:
            if child.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the stub server exited: {log.read().decode()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/_stub/sampled", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() - start > timeout:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


PROBE = """
from fastapi.testclient import TestClient

client = TestClient(app)
bodies = {"not_json": b"{", "unknown_speaker": {"text": "hi", "speaker": "x"},
          "too_long": {"text": "a" * 11, "speaker": "mbrola-us1"}}
out = {}
for name, body in bodies.items():
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/synthesize", content=data, headers={"Content-Type": "application/json"})
    out[name] = [response.status_code, response.json()]
out["sampled"] = Replica.sampled
print("RESULT " + json.dumps(out))
"""


def test_synthesize_reads_the_request_itself_once_serve_rewrote_the_handlers():
    script = f"SETTINGS = {{'max_text_chars': 10}}\n{HARNESS}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    # FastAPI's own validation error ({"detail": [...]}) would mean the handler never ran
    assert out["not_json"] == [400, {"error": "the body is not JSON", "field": "body"}]
    assert out["unknown_speaker"][1]["field"] == "speaker" and out["unknown_speaker"][0] in (400, 422)
    assert out["too_long"][1]["field"] == "text" and out["too_long"][0] in (400, 422)
    assert out["sampled"] == []  # a request that breaks a rule never reaches sampling


def test_no_module_with_routes_postpones_its_annotations():
    """FastAPI (through Serve's view) evaluates handler annotations at run time, and postponed (string) annotations
    are what it stopped resolving: a module that registers routes keeps its annotations evaluated."""
    routed = [path for path in REPO.glob("[as]*/**/*.py") if "serve.ingress" in path.read_text()]
    assert routed, "no module registers routes: this test looks in the wrong place"
    for path in routed:
        assert "from __future__ import annotations" not in path.read_text(), f"{path}: see the module docstring"
