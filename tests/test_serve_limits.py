"""What the endpoint refuses to spend on a request (docs/serve.md, "Limits"): a body over serve.max_body_bytes
(413 before it is read), a prompt_wav whose header says it is too long (422 before it is decoded: the silent-FLAC
bomb), a request without the token (401), one not answered in time (503 + Retry-After), more requests than the
replica and its queue hold (503 + Retry-After from Serve's proxy, and the endpoint recovers).

The first tests drive the endpoint's routes over a stand-in voice (uvicorn on loopback, no Ray: seconds); the slow
ones deploy the real endpoint on Ray Serve with actors.voice_server:app_builder, as a KubeRay RayService does."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .conftest import REPO, config_of, copy_prepared, tiny_argv
from .test_serve_fuzz import GOOD, TOKEN, _json, _wav, cases, check, post, silent_flac
from .test_serve_routes import free_port, stub_server

LIMIT = 2**16  # serve.max_body_bytes of the stand-in


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


# -- the prompt_wav, in this process ------------------------------------------------------------------------------


def test_the_silent_flac_bomb_is_refused_by_its_header_before_a_sample_is_decoded():
    from sa_ray.serve import BadRequest, parse_body

    bomb = silent_flac(600, 48000)  # 115 MB of float32 once decoded
    body = _json({"text": "Hi.", "prompt_wav": base64.b64encode(bomb).decode()})
    assert len(body) < 2**20, "the bomb must fit the default serve.max_body_bytes to test the decoder"
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(BadRequest) as refused:
            parse_body(body, ["mbrola-us1"], 400)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.body() == {
        "error": "lasts 600.00 s (its header says); a voice prompt lasts at most 30 s (and at least 0.5 s)",
        "field": "prompt_wav",
    }
    assert refused.value.status == 422
    # the body, its base64 decoded (~90 KB) and the parsed JSON: a few times the body, not the 115 MB of samples
    assert peak < 8 * len(body) < 2**20 * 8, peak
    assert elapsed < 2.0, elapsed


def test_a_prompt_is_decoded_as_before_and_what_no_file_should_hold_is_refused_or_clipped():
    import io

    import soundfile as sf

    from sa_ray.audio import read_wav
    from sa_ray.serve import BadRequest, parse_request

    def prompt(data: bytes):
        return parse_request({"text": "Hi.", "prompt_wav": base64.b64encode(data).decode()}, [], 400).prompt

    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (8000, 2)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, stereo, 16000, format="FLAC")
    wav, rate = prompt(buffer.getvalue())
    expected, expected_rate = read_wav(io.BytesIO(buffer.getvalue()))  # the whole file at once, as before
    assert rate == expected_rate == 16000 and np.array_equal(wav, expected)

    loud = np.full((8000, 1), 0.25, np.float32)
    loud[10] = 3e30  # a float file may hold any number
    buffer = io.BytesIO()
    sf.write(buffer, loud, 16000, format="WAV", subtype="FLOAT")
    wav, _ = prompt(buffer.getvalue())
    assert wav.max() == 1.0 and wav[11] == 0.25

    with pytest.raises(BadRequest, match="lasts 0.10 s"):  # line breaks in the base64 are no error
        parse_request({"text": "Hi.", "prompt_wav": base64.encodebytes(_wav(0.1)).decode()}, [], 400)


# -- the routes over a stand-in voice, on loopback -----------------------------------------------------------------


@pytest.fixture(scope="module")
def stub():
    settings = {"auth_token": TOKEN, "request_timeout_seconds": 2.0, "max_body_bytes": LIMIT}
    with stub_server(settings) as url:
        yield url


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", "Bearer caf\xe9"],
)
def test_without_the_token_every_route_but_the_page_answers_401(stub, authorization):
    headers = {"Authorization": authorization}
    for status, answer_headers, content in (
        post(stub, _json(GOOD), headers),
        _get(f"{stub}/health", {} if authorization is None else {"Authorization": authorization}),
        _get(f"{stub}/v1/models", {} if authorization is None else {"Authorization": authorization}),
    ):
        assert status == 401 and json.loads(content)["field"] == "authorization", content
        assert answer_headers["www-authenticate"].startswith("Bearer")
    status, headers, _ = _get(f"{stub}/")  # the page holds no data: it asks for the token (docs/serve.md)
    assert status == 200 and headers["content-type"].startswith("text/html")


def test_with_the_token_the_routes_answer(stub):
    status, _, content = _get(f"{stub}/health", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(content)["speakers"] == ["mbrola-us1"]
    status, _, content = _get(f"{stub}/v1/models", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(content)["versions"][0]["version"] == "base"
    assert post(stub, _json(GOOD), {"Authorization": f"bearer  {TOKEN} "})[0] == 200  # the scheme in any case


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_413_before_it_is_read(stub, chunked):
    body = _json({**GOOD, "text": "a" * (4 * LIMIT)})
    start = time.monotonic()
    status, headers, content = post(stub, body, chunked=chunked)
    assert status == 413 and headers["content-type"] == "application/json", content
    assert json.loads(content) == {
        "error": f"is {len(body)} bytes; at most {LIMIT} (serve.max_body_bytes): a prompt_wav of a few seconds of "
        "speech is enough"
        if not chunked
        else f"is over {LIMIT} bytes; at most {LIMIT} (serve.max_body_bytes): a prompt_wav of a few seconds of "
        "speech is enough",
        "field": "body",
    }
    assert time.monotonic() - start < 10
    # just under the limit is read, and judged on its merits
    fits = _json({**GOOD, "text": "a" * (LIMIT - 100)})
    assert len(fits) <= LIMIT and json.loads(post(stub, fits, chunked=chunked)[2])["field"] == "text"


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_of_the_body_is_sent(stub):
    """Content-Length: 50 MB and no body at all: the answer comes, so nothing was waited for."""
    connection = http.client.HTTPConnection("127.0.0.1", int(stub.rsplit(":", 1)[1]), timeout=30)
    connection.putrequest("POST", "/synthesize")
    for name, value in {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(50 * 2**20)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"].startswith(f"is {50 * 2**20} bytes")
    connection.close()


def test_a_request_not_answered_in_time_is_503_with_retry_after(stub):
    start = time.monotonic()
    status, headers, content = post(stub, _json({**GOOD, "text": "__slow_speak__"}))
    assert (status, headers["retry-after"], headers["content-type"]) == (503, "5", "application/json")
    assert "serve.request_timeout_seconds (2 s)" in json.loads(content)["error"]
    assert 1.5 < time.monotonic() - start < 10
    assert post(stub, _json(GOOD))[0] == 200


def test_health_answers_while_a_prompt_is_parsed(stub):
    """The stand-in's parse of this text blocks its thread for 5 s: were parsing on the event loop, /health would
    wait as long."""
    slow = threading.Thread(target=post, args=(stub, _json({**GOOD, "text": "__slow_parse__"})))
    slow.start()
    time.sleep(0.5)
    start = time.monotonic()
    status, _, _ = _get(f"{stub}/health", {"Authorization": f"Bearer {TOKEN}"})
    waited = time.monotonic() - start
    slow.join()
    assert status == 200 and waited < 2.5, waited


# -- what a deployment is built from -------------------------------------------------------------------------------


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(capsys, tmp_path, monkeypatch):
    from jobs import _cli
    from jobs import serve as serve_job
    from sa_ray.serve import TOKEN_ENV, is_loopback

    monkeypatch.delenv(TOKEN_ENV, raising=False)

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.2.3", "voice.example.com"]))
    argv = ["--config", str(REPO / "configs" / "tiny.yaml"), f"run_dir={tmp_path}", "serve.host=0.0.0.0"]
    with pytest.raises(SystemExit) as exited:
        _cli.run(serve_job.main, argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: serve.host=0.0.0.0") and "serve.auth_token" in error and "Traceback" not in error
    # with a token it gets past that check, to the next one (this run has no data)
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        serve_job.main([*argv, "serve.auth_token=s3cret"])


def test_the_application_builder_checks_its_args(tmp_path, monkeypatch):
    from actors.voice_server import app_builder
    from sa_ray.config import ConfigError
    from sa_ray.serve import TOKEN_ENV

    monkeypatch.delenv(TOKEN_ENV, raising=False)

    config = str(REPO / "configs" / "tiny.yaml")
    with pytest.raises(ConfigError, match="unknown; the args are config and overrides"):
        app_builder({"config": config, "override": []})
    with pytest.raises(ConfigError, match="overrides must be a list"):
        app_builder({"config": config, "overrides": "run_dir=/x"})
    with pytest.raises(ConfigError, match="serve.auth_token"):
        app_builder({"config": config, "overrides": [f"run_dir={tmp_path}", "serve.host=0.0.0.0"]})
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        app_builder({"config": config, "overrides": [f"run_dir={tmp_path}"]})
    # a RayService's token comes from a Secret, by the environment (clusters/kuberay/rayservice.yaml)
    monkeypatch.setenv(TOKEN_ENV, "from-a-secret")
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        app_builder({"config": config, "overrides": [f"run_dir={tmp_path}", "serve.host=0.0.0.0"]})


# -- the real endpoint on Ray Serve ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(prepared_tiny, tiny_base, corpus_cache, tmp_path_factory, ray_local):
    """The endpoint deployed by app_builder (as a RayService's serveConfigV2 does) with the smallest bounds: one
    request at a time, one waiting, a token; a second's batch wait keeps each request busy that long."""
    from ray import serve

    from actors.voice_server import app_builder

    _, prepared_argv, _ = prepared_tiny
    tmp = tmp_path_factory.mktemp("serve-limits")
    copy_prepared(config_of(prepared_argv).run_dir, tmp)
    argv = tiny_argv(
        tmp,
        corpus_cache,
        f"align.base_model={tiny_base}",
        "serve.model=base",
        "serve.backend=torch",
        "resources.serve.num_cpus=0.5",
        f"serve.auth_token={TOKEN}",
        "serve.max_ongoing_requests=1",
        "serve.max_queued_requests=1",
        "serve.batch_wait_seconds=1.0",
    )
    application = app_builder({"config": argv[1], "overrides": argv[2:]})
    deployment = application._bound_deployment  # what the config asked Serve for
    assert (deployment.max_ongoing_requests, deployment.max_queued_requests) == (1, 1)
    assert deployment.ray_actor_options["num_cpus"] == 0.5 and deployment.ray_actor_options["num_gpus"] == 0
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application, name="sa-ray-voice-limits", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.slow
def test_overload_is_answered_503_with_retry_after_at_once_and_the_endpoint_recovers(served):
    def timed(seed: int) -> tuple[int, dict, float]:
        start = time.monotonic()
        status, headers, _ = post(served, _json({**GOOD, "seed": seed}))
        return status, headers, time.monotonic() - start

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(timed, range(8)))
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) <= 3, statuses  # one at work, one waiting
    refused = [(headers, seconds) for status, headers, seconds in answers if status == 503]
    assert all(headers.get("retry-after") == "5" for headers, _ in refused), refused
    slowest_refusal = max(seconds for _, seconds in refused)
    fastest_answer = min(seconds for status, _, seconds in answers if status == 200)
    assert slowest_refusal < fastest_answer and slowest_refusal < 5, answers  # the proxy refuses without waiting
    status, headers, wav = post(served, _json(GOOD))
    assert (status, headers["content-type"], wav[:4]) == (200, "audio/wav", b"RIFF")


@pytest.mark.slow
def test_serve_answers_the_limits_and_the_fuzz_as_the_routes_do(served):
    assert _get(f"{served}/health")[0] == 401
    status, _, content = _get(f"{served}/health", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(content)["speakers"] == ["mbrola-en1", "mbrola-us1", "mbrola-us2"]
    big = _json({**GOOD, "text": "a" * (2**20 + 1)})  # over the default serve.max_body_bytes
    for chunked in (False, True):
        start = time.monotonic()
        status, _, content = post(served, big, chunked=chunked)
        assert (status, json.loads(content)["field"]) == (413, "body") and time.monotonic() - start < 30
    # every case of the fuzz, text that parses reaching the real text front end this time
    wrong = {case.id: problem for case in cases() if (problem := check(case, *post(served, case.body)))}
    assert not wrong, json.dumps(wrong, indent=1, ensure_ascii=False)
    assert post(served, _json(GOOD))[0] == 200


@pytest.mark.slow
def test_the_page_takes_the_token_from_its_address(served):
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: `bash scripts/install-system.sh --test` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{served}/#token={TOKEN}")
        page.wait_for_function("document.querySelectorAll('#speaker option').length > 1")
        assert "#" not in page.url  # the token left the address bar (and the history)
        page.select_option("#speaker", "mbrola-us2")
        page.click("#speak")
        page.wait_for_selector("#takes li audio")
        assert page.inner_text("#error") == ""
        browser.close()
