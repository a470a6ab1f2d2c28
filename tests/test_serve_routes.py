"""The endpoint's routes as Ray Serve builds them in a replica (its class-based view over the FastAPI app), driven
in-process without starting Ray. A web-stack release that reads handler signatures differently (FastAPI no longer
resolving a postponed annotation `'Request'`, so every POST got FastAPI's own 422 asking for a query parameter
named `request`) fails here in seconds instead of in the slow HTTP tests."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A child interpreter, so that the app's dependency overrides stay out of the test process.
PROBE = textwrap.dedent("""
    import inspect, json
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from ray.serve._private.http_util import _walk_fastapi_routes
    from actors import voice_server

    class Replica:  # the servable object Serve injects as `self`; these requests are refused before sampling
        voice = type("Voice", (), {"speakers": ["mbrola-us1"]})
        settings = type("Settings", (), {"max_text_chars": 10})

        async def _speak(self, request):
            raise AssertionError("a request that breaks a rule reached sampling")

    # the app a replica serves: the copy serve.ingress froze (cloudpickled) after building its class-based view
    init = voice_server.VoiceServer.func_or_class.__init__
    app = next(cell.cell_contents for cell in init.__closure__ if isinstance(cell.cell_contents, FastAPI))
    for route, _, _ in _walk_fastapi_routes(app):
        this = inspect.signature(route.endpoint).parameters["self"].default.dependency
        app.dependency_overrides[this] = Replica
    client = TestClient(app)
    bodies = {"not_json": b"{", "unknown_speaker": {"text": "hi", "speaker": "x"},
              "too_long": {"text": "a" * 11, "speaker": "mbrola-us1"}}
    out = {}
    for name, body in bodies.items():
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post("/synthesize", content=data, headers={"Content-Type": "application/json"})
        out[name] = [response.status_code, response.json()]
    print("RESULT " + json.dumps(out))
""")


def test_synthesize_reads_the_request_itself_once_serve_rewrote_the_handlers():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    # FastAPI's own validation error ({"detail": [...]}) would mean the handler never ran
    assert out["not_json"] == [400, {"error": "the body is not JSON", "field": "body"}]
    assert out["unknown_speaker"][1]["field"] == "speaker" and out["unknown_speaker"][0] in (400, 422)
    assert out["too_long"][1]["field"] == "text" and out["too_long"][0] in (400, 422)


def test_no_module_with_routes_postpones_its_annotations():
    """FastAPI (through Serve's view) evaluates handler annotations at run time, and postponed (string) annotations
    are what it stopped resolving: a module that registers routes keeps its annotations evaluated."""
    routed = [path for path in REPO.glob("[as]*/**/*.py") if "serve.ingress" in path.read_text()]
    assert routed, "no module registers routes: this test looks in the wrong place"
    for path in routed:
        assert "from __future__ import annotations" not in path.read_text(), f"{path}: see the module docstring"
