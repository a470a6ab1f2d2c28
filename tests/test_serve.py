"""The Serve endpoint over real HTTP on the local Ray cluster: the base speaks until a policy version is
registered, then that version speaks without a redeploy; versions side by side, each request speaking with the
one it names; bad input gets a 4xx JSON error naming its field; the vLLM backend speaks as the torch one."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sa_ray.audio import wav_bytes

from .conftest import config_of, copy_prepared, tiny_adapter, tiny_argv

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: bytes | dict | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def endpoint(prepared_tiny, tiny_base, corpus_cache, tmp_path_factory, ray_local):
    from ray import serve

    from jobs import serve as serve_job

    _, prepared_argv, _ = prepared_tiny
    tmp = tmp_path_factory.mktemp("serve")
    copy_prepared(config_of(prepared_argv).run_dir, tmp)
    argv = tiny_argv(tmp, corpus_cache, f"align.base_model={tiny_base}", f"serve.port={_free_port()}", *SERVING)
    url = serve_job.main([*argv, "--detach"])
    yield url, config_of(argv)
    serve.shutdown()


# the torch backend (auto is vllm where it is installed): test_the_vllm_backend_serves_a_registered_adapter deploys
# vLLM's once
SERVING = [
    "serve.refresh_seconds=0",
    "resources.serve.num_cpus=0.5",
    "serve.batch_wait_seconds=0.5",
    "serve.backend=torch",
]


def test_a_version_that_is_not_registered_is_refused_before_deploying(endpoint, tiny_base):
    from jobs import serve as serve_job

    url, cfg = endpoint
    argv = [
        "--config",
        "configs/tiny.yaml",
        f"run_dir={cfg.run_dir}",
        f"tracking.uri={cfg.tracking.uri}",
        f"align.base_model={tiny_base}",
        "serve.model=models:/tiny-policy/9",
        "--detach",
    ]
    with pytest.raises(FileNotFoundError, match="version 9: models:/tiny-policy has no version 9"):
        serve_job.main(argv)
    assert _call(f"{url}/health")[0] == 200  # the running endpoint is untouched


def test_the_base_speaks_wav_and_a_seed_repeats_it(endpoint):
    url, _ = endpoint
    status, _, body = _call(f"{url}/health")
    health = json.loads(body)
    assert status == 200 and health["speakers"] == ["mbrola-en1", "mbrola-us1", "mbrola-us2"]
    request = {"text": "The cat sat on the mat.", "speaker": "mbrola-en1", "seed": 3}  # a held-out voice, too
    status, headers, wav = _call(f"{url}/synthesize", request)
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert headers["x-policy-version"] == health["version"]
    audio, sample_rate = sf.read(io.BytesIO(wav))
    assert sample_rate == health["sample_rate"] and len(audio) > 0.2 * sample_rate and abs(audio).max() > 0
    assert _call(f"{url}/synthesize", request)[2] == wav  # same seed, same version: the same speech
    assert _call(f"{url}/synthesize", {**request, "seed": 4})[2] != wav


def test_best_of_speaks_the_candidate_with_the_fewest_phone_errors_and_says_which(endpoint):
    url, _ = endpoint
    request = {"text": "The cat sat on the mat.", "speaker": "mbrola-us1", "seed": 3, "best_of": 3}
    status, headers, wav = _call(f"{url}/synthesize", request)
    assert status == 200 and wav[:4] == b"RIFF" and headers["x-best-of-scorer"] == "phones"
    scores = [float(s) for s in headers["x-best-of-scores"].split(",")]
    chosen = int(headers["x-best-of-chosen"])
    assert len(scores) == 3 and chosen == scores.index(max(scores))  # the argmax, ties to the lowest seed
    assert float(headers["x-best-of-score"]) == scores[chosen] <= 0  # minus a phone error rate
    assert _call(f"{url}/synthesize", request)[2] == wav  # the same request, the same choice and speech
    plain = _call(f"{url}/synthesize", {**request, "best_of": 1})[1]
    assert "x-best-of-chosen" not in plain  # best of 1: nothing scored


def test_a_listeners_vote_on_two_takes_keeps_the_tokens_each_take_wrote(endpoint, tiny_base):
    """Two takes of one text and voice (one seed: one voice prompt; two temperatures), each named by its X-Take-Id;
    a vote on them is answered 201 and exported with the tokens each take wrote (as long as its WAV), the prompt
    both were written after and what spoke them; a vote on takes of two texts is answered 422 naming the field."""
    from sa_ray import lineage
    from sa_ray.models.vocab import Vocab

    url, cfg = endpoint
    request = {"text": "The cat sat on the mat.", "speaker": "mbrola-us1", "seed": 11}
    (_, a, wav), (_, b, _), (_, other, _) = (
        _call(f"{url}/synthesize", body)
        for body in ({**request, "temperature": 1.0}, {**request, "temperature": 0.6}, {**request, "text": "Hello."})
    )
    ids = [h["x-take-id"] for h in (a, b, other)]
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 3
    status, _, body = _call(
        f"{url}/v1/votes", {"a": ids[0], "b": ids[1], "first": "b", "verdict": "a", "naturalness_a": 4}
    )
    assert status == 201
    vote_id = json.loads(body)["id"]
    status, headers, body = _call(f"{url}/v1/votes")
    assert status == 200 and headers["content-type"] == "application/json"
    (cast,) = [v for v in json.loads(body)["votes"] if v["id"] == vote_id]
    assert (cast["text"], cast["speaker"], cast["first"], cast["verdict"]) == (request["text"], "mbrola-us1", "b", "a")
    fingerprint = lineage.fingerprint(tiny_base, f"{cfg.run_dir}/codec", cfg.codec.kind)
    for side, headers, temperature in (("a", a, 1.0), ("b", b, 0.6)):
        take = cast[side]
        assert (take["take"], take["version"], take["temperature"], take["seed"]) == (
            headers["x-take-id"],
            headers["x-policy-version"],
            temperature,
            11,
        )
        assert take["base_fingerprint"] == fingerprint and take["ended"] == (headers["x-ended"] == "true")
    assert cast["a"]["naturalness"] == 4 and cast["b"]["naturalness"] is None
    assert cast["a"]["prompt_ids"] == cast["b"]["prompt_ids"] and cast["a"]["ar_tokens"] != cast["b"]["ar_tokens"]
    vocab = Vocab.load(tiny_base / "ar")
    assert vocab.prompt_text_ids(cast["a"]["prompt_ids"])  # the prompt asks for the text
    frames = len(vocab.parse_target(cast["a"]["ar_tokens"])[0])  # the tokens are the WAV's: as many frames
    frame_rate = json.loads((Path(cfg.run_dir) / "data" / "summary.json").read_text())["codec"]["frame_rate"]
    audio, sample_rate = sf.read(io.BytesIO(wav))
    assert len(audio) == pytest.approx(frames * sample_rate / frame_rate, abs=sample_rate / frame_rate)

    status, _, body = _call(f"{url}/v1/votes", {"a": ids[0], "b": ids[2], "first": "a", "verdict": "tie"})
    assert (status, json.loads(body)["field"]) == (422, "b")
    status, headers, body = _call(f"{url}/v1/votes?format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv") and ids[0] in body.decode()


def test_a_voice_given_as_prompt_wav_is_cloned(endpoint):
    url, cfg = endpoint
    row = pq.read_table(f"{cfg.run_dir}/data/heldout_voices", columns=["audio_path"]).slice(0, 1).to_pylist()[0]
    with open(row["audio_path"], "rb") as f:  # an utterance of the zero-shot voice, as a user would upload it
        request = {"text": "The cat sat on the mat.", "prompt_wav": base64.b64encode(f.read()).decode(), "seed": 1}
    status, headers, wav = _call(f"{url}/synthesize", request)
    assert status == 200 and headers["content-type"] == "audio/wav" and len(sf.read(io.BytesIO(wav))[0]) > 0
    assert _call(f"{url}/synthesize", request)[2] == wav
    speaker = _call(f"{url}/synthesize", {"text": request["text"], "speaker": "mbrola-us1", "seed": 1})[2]
    assert speaker != wav


def _b64_wav(seconds: float) -> str:
    return base64.b64encode(wav_bytes(np.zeros(int(seconds * 22050), np.float32), 22050)).decode()


def test_requests_arriving_together_share_a_batch_and_a_bad_one_fails_alone(endpoint):
    from concurrent.futures import ThreadPoolExecutor

    url, _ = endpoint
    bodies = [{"text": "The cat sat on the mat.", "speaker": "mbrola-us1", "seed": s} for s in range(3)]
    bodies.insert(1, {"text": "... -- ...", "speaker": "mbrola-us2"})  # nothing to say: refused, alone
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: _call(f"{url}/synthesize", b), bodies))
    assert [a[0] for a in answers] == [200, 422, 200, 200]
    assert json.loads(answers[1][2])["field"] == "text"
    assert all(a[2][:4] == b"RIFF" for i, a in enumerate(answers) if i != 1)
    assert json.loads(_call(f"{url}/health")[2])["largest_batch"] >= 2


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"{not json", 400, "body"),
        ([1, 2], 422, "body"),
        ({"speaker": "mbrola-us1"}, 422, "text"),
        ({"text": 7, "speaker": "mbrola-us1"}, 422, "text"),
        ({"text": "   ", "speaker": "mbrola-us1"}, 422, "text"),
        ({"text": "Hello there. " * 40, "speaker": "mbrola-us1"}, 422, "text"),  # over serve.max_text_chars
        (
            {"text": "Hello there, all of you. " * 15, "speaker": "mbrola-us1"},
            422,
            "text",
        ),  # over the model's positions
        ({"text": "... -- ...", "speaker": "mbrola-us1"}, 422, "text"),  # nothing to say
        ({"text": "Hello.", "speaker": "nobody"}, 422, "speaker"),
        ({"text": "Hello.", "speaker": "mbrola-us1", "seed": -1}, 422, "seed"),
        ({"text": "Hello.", "speaker": "mbrola-us1", "seed": True}, 422, "seed"),
        ({"text": "Hello.", "speaker": "mbrola-us1", "temperature": 9}, 422, "temperature"),
        ({"text": "Hello.", "speaker": "mbrola-us1", "temperature": "hot"}, 422, "temperature"),
        ({"text": "Hello.", "speaker": "mbrola-us1", "voice": "x"}, 422, "voice"),
        ({"text": "Hello.", "speaker": "mbrola-us1", "best_of": 99}, 422, "best_of"),  # over serve.max_best_of
        ({"text": "Hello."}, 422, "speaker"),  # no voice
        ({"text": "Hello.", "speaker": "mbrola-us1", "prompt_wav": _b64_wav(1.0)}, 422, "speaker"),  # two voices
        ({"text": "Hello.", "prompt_wav": "not base64!"}, 422, "prompt_wav"),
        ({"text": "Hello.", "prompt_wav": base64.b64encode(b"RIFF but not audio").decode()}, 422, "prompt_wav"),
        ({"text": "Hello.", "prompt_wav": _b64_wav(0.1)}, 422, "prompt_wav"),  # too short to hear a voice in
    ],
)
def test_bad_requests_get_a_4xx_json_error_naming_the_field(endpoint, body, status, field):
    url, _ = endpoint
    got, headers, content = _call(f"{url}/synthesize", body)
    error = json.loads(content)
    assert (got, error["field"]) == (status, field), error
    assert headers["content-type"] == "application/json" and error["error"]


def _register_adapter(
    cfg, base_dir, fingerprint: str | None = None, seed: int = 0, aliases=("latest", "champion"), tags=None
) -> int:
    """A LoRA adapter that changes the policy (B != 0, drawn from `seed`), registered as the next version and
    champion (or `aliases`, with `tags`), as the align job does; trained on `base_dir` (its lineage) unless another
    base `fingerprint` is given."""
    import mlflow

    from sa_ray import lineage, tracking

    folder = tiny_adapter(base_dir, f"{cfg.run_dir}/made_adapter", seed)
    fingerprint = fingerprint or lineage.fingerprint(base_dir, f"{cfg.run_dir}/codec", cfg.codec.kind)
    made_from = {"base_fingerprint": fingerprint, "base_dir": str(base_dir)}
    lineage.write(folder, made_from)
    tracking.setup(cfg)
    with mlflow.start_run() as run:
        tracking.log_artifact(folder, "adapters/v1")
    tags = {**lineage.tags(made_from), **(tags or {})}  # the version's tags, as the align job's
    return tracking.register_model(f"{cfg.name}-policy", run.info.run_id, "adapters/v1", list(aliases), tags)


def test_a_newly_registered_version_speaks_without_a_redeploy(endpoint, tiny_base):
    url, cfg = endpoint
    request = {"text": "The cat sat on the mat.", "speaker": "mbrola-us2", "seed": 0}
    assert json.loads(_call(f"{url}/health")[2])["version"] == "base"  # models:/tiny-policy@champion: none yet
    _, headers, base_wav = _call(f"{url}/synthesize", request)
    assert headers["x-policy-version"] == "base"

    version = _register_adapter(cfg, tiny_base)
    health = json.loads(_call(f"{url}/health")[2])
    assert (health["model"], health["version"]) == (f"models:/{cfg.name}-policy@champion", str(version))
    _, headers, wav = _call(f"{url}/synthesize", request)
    assert headers["x-policy-version"] == str(version) and wav != base_wav

    # the champion moved to an adapter trained on another base: never merged into this one, the endpoint keeps
    # speaking with the version it has, and a new deployment of it is refused, naming both bases
    other = _register_adapter(cfg, tiny_base, fingerprint="0123456789abcdef")
    assert json.loads(_call(f"{url}/health")[2])["version"] == str(version)
    _, headers, _ = _call(f"{url}/synthesize", request)
    assert headers["x-policy-version"] == str(version)
    from sa_ray.lineage import LineageError
    from sa_ray.serve import RegisteredPolicy

    with pytest.raises(
        LineageError, match=f"models:/{cfg.name}-policy/{other} .* was trained on base 0123456789abcdef"
    ):
        RegisteredPolicy.of_config(cfg, tiny_base).resolve()


def test_versions_side_by_side_each_request_speaks_with_the_version_it_names(endpoint, tiny_base):
    """Two versions registered beside the champion: named by number (in one batch), by alias or in Serve's
    multiplexed-model header, each request speaks with its own (X-Policy-Version, and other speech for the same
    request and seed); a version the registry does not hold is a 404 naming it, one of another base a 409;
    /v1/models lists every version with its aliases, base fingerprint and held-out WER."""
    from sa_ray import lineage

    url, cfg = endpoint
    one = _register_adapter(cfg, tiny_base, seed=1, aliases=["latest"], tags={lineage.WER_TAG: 0.5})
    two = _register_adapter(cfg, tiny_base, seed=2, aliases=["latest"], tags={lineage.WER_TAG: 0.25})
    request = {"text": "The cat sat on the mat.", "speaker": "mbrola-us2", "seed": 5}
    with ThreadPoolExecutor(2) as pool:  # within serve.batch_wait_seconds of each other: one batch
        (s1, h1, wav1), (s2, h2, wav2) = pool.map(
            lambda v: _call(f"{url}/synthesize", {**request, "version": v}), [one, str(two)]
        )
    assert (s1, h1["x-policy-version"], s2, h2["x-policy-version"]) == (200, str(one), 200, str(two))
    assert wav1[:4] == wav2[:4] == b"RIFF" and wav1 != wav2
    assert _call(f"{url}/synthesize", {**request, "version": one})[2] == wav1  # alone as in the batch
    _, headers, wav = _call(f"{url}/synthesize", {**request, "version": "latest"})
    assert headers["x-policy-version"] == str(two) and wav == wav2
    _, headers, wav = _call(f"{url}/synthesize", request, {"serve_multiplexed_model_id": str(one)})
    assert headers["x-policy-version"] == str(one) and wav == wav1
    status, _, body = _call(f"{url}/synthesize", {**request, "version": 99})
    assert status == 404 and json.loads(body)["field"] == "version" and "no version 99" in json.loads(body)["error"]
    status, _, body = _call(f"{url}/synthesize", {**request, "version": "v-next"})
    assert status == 404 and "'v-next'" in json.loads(body)["error"]
    assert _call(f"{url}/synthesize", {**request, "version": "1.5"})[0] == 422

    status, headers, body = _call(f"{url}/v1/models")
    assert status == 200 and headers["content-type"] == "application/json"
    models = json.loads(body)
    fingerprint = lineage.fingerprint(tiny_base, f"{cfg.run_dir}/codec", cfg.codec.kind)
    by_version = {v["version"]: v for v in models["versions"]}
    assert models["model"] == f"{cfg.name}-policy" and models["base_fingerprint"] == fingerprint
    assert by_version["base"]["base_fingerprint"] == fingerprint
    assert by_version[one]["heldout_sentences_wer"] == 0.5 and by_version[one]["base_fingerprint"] == fingerprint
    assert by_version[two]["heldout_sentences_wer"] == 0.25 and by_version[two]["aliases"] == ["latest"]
    assert by_version[two]["servable"] and list(by_version)[:2] == ["base", two]  # newest first
    foreign = [v["version"] for v in models["versions"] if not v["servable"]]
    if foreign:  # the champion of another base, after test_a_newly_registered_version_speaks_without_a_redeploy
        status, _, body = _call(f"{url}/synthesize", {**request, "version": foreign[0]})
        assert status == 409 and "0123456789abcdef" in json.loads(body)["error"]


def test_the_listening_page_speaks_and_takes_a_vote_in_chromium(endpoint, tmp_path):
    """The page at / in a real (headless) Chromium: the voices from /health, a take that plays, an error that
    names its field and marks its input; then a listening test: two of the servable versions of /v1/models
    speak the text at one seed in a random order, and the vote cast on the page is in the store
    with both takes, the order shown and the naturalness given, on the side it was given for."""
    import shutil

    from playwright.sync_api import sync_playwright

    url, _ = endpoint
    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: `bash scripts/install-system.sh --test` installs it"
    speakers = json.loads(_call(f"{url}/health")[2])["speakers"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{url}/")
        page.wait_for_function("document.querySelectorAll('#speaker option').length > 1")
        assert page.eval_on_selector_all("#speaker option", "els => els.map(e => e.value)")[:-1] == speakers
        page.select_option("#speaker", "mbrola-us2")
        page.fill("#text", "The cat sat on the mat.")
        page.click("#speak")
        audio = page.wait_for_selector("#takes li audio")
        duration = audio.evaluate(
            "a => new Promise(done => a.readyState >= 1 ? done(a.duration)"
            " : a.addEventListener('loadedmetadata', () => done(a.duration)))"
        )
        same, sample_rate = sf.read(
            io.BytesIO(
                _call(
                    f"{url}/synthesize",
                    {"text": "The cat sat on the mat.", "speaker": "mbrola-us2", "seed": 0, "temperature": 1.0},
                )[2]
            )
        )
        assert duration == pytest.approx(len(same) / sample_rate, abs=1e-3) and duration > 0  # the endpoint's take
        assert "mbrola-us2 · seed 0 · version" in page.inner_text("#takes li .meta")

        page.fill("#text", "... -- ...")
        page.click("#speak")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert page.inner_text("#error").startswith("text: nothing to say")
        assert "bad" in page.get_attribute("#text", "class")
        assert page.locator("#takes li").count() == 1

        page.fill("#text", "The cat sat on the mat.")
        page.click("#trial")
        page.wait_for_selector("#votes button", state="visible")
        for take in ("#take1", "#take2"):  # both takes play
            assert (
                page.eval_on_selector(
                    take,
                    "a => new Promise(done => a.readyState >= 1 ? done(a.duration)"
                    " : a.addEventListener('loadedmetadata', () => done(a.duration)))",
                )
                > 0
            )
        page.select_option("#nat2", "4")
        page.screenshot(path=str(tmp_path / "listening-test.png"), full_page=True)
        page.click("#votes button[data-verdict='1']")
        page.wait_for_function("document.getElementById('ab-status').textContent.includes('recorded')")
        vote_id = int(re.search(r"vote (\d+) recorded", page.inner_text("#ab-status")).group(1))
        browser.close()
    (cast,) = [v for v in json.loads(_call(f"{url}/v1/votes")[2])["votes"] if v["id"] == vote_id]
    shown_second = "b" if cast["first"] == "a" else "a"
    assert cast["verdict"] == cast["first"]  # take 1 was preferred: the side the page played first
    assert cast[shown_second]["naturalness"] == 4 and cast[cast["first"]]["naturalness"] is None
    assert cast["a"]["seed"] == cast["b"]["seed"] and cast["a"]["prompt_ids"] == cast["b"]["prompt_ids"]
    servable = {str(v["version"]) for v in json.loads(_call(f"{url}/v1/models")[2])["versions"] if v["servable"]}
    assert cast["a"]["version"] != cast["b"]["version"] and {cast["a"]["version"], cast["b"]["version"]} <= servable
    assert cast["text"] == "The cat sat on the mat." and cast["speaker"] == "mbrola-us2"
