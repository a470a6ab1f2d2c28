from pathlib import Path

import pytest
import yaml

from sa_ray.config import Config, ConfigError, load_config, parse_overrides, save_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def test_tiny_yaml_sets_only_what_differs_from_the_defaults():
    cfg = load_config(TINY)
    assert cfg.name == "tiny" and cfg.codec.kind == "mel_kmeans" and cfg.corpus.kind == "synthetic"
    # The defaults have one home, the dataclasses (--help-config lists them): a default repeated in a
    # config file is a second copy to keep in step.
    defaults = Config().flat()
    repeated = {
        key: value for key, value in _flat(yaml.safe_load(TINY.read_text()) or {}).items() if defaults.get(key) == value
    }
    assert not repeated, f"configs/tiny.yaml repeats defaults: {repeated}"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_cluster_example_loads_and_validates():
    cfg = load_config(REPO / "configs" / "librispeech-encodec.yaml")
    assert cfg.corpus.kind == "librispeech" and cfg.codec.kind == "encodec" and cfg.codec.n_codebooks == 8
    assert cfg.ray.address == "auto" and cfg.tracking.uri.startswith("http")
    # its evaluators reserve CPUs and a GPU share of their own: each evaluation runs beside the next version's making
    assert cfg.evaluates_beside and not load_config(TINY).evaluates_beside  # the tiny one's share the cores
    assert not load_config(
        REPO / "configs" / "librispeech-encodec.yaml", ["align.evaluate_beside=false"]
    ).evaluates_beside
    with pytest.raises(ConfigError, match="align.evaluate_beside"):
        load_config(TINY, ["align.evaluate_beside=sometimes"])


def test_overrides_are_typed_by_yaml_and_applied():
    cfg = load_config(
        TINY,
        [
            "codec.n_codebooks=8",
            "corpus.voices=[mbrola-us1, mbrola-en1]",
            "corpus.max_utterances=null",
            "prepare.min_seconds=1",
            "name=x",
        ],
    )
    assert cfg.codec.n_codebooks == 8 and cfg.corpus.voices == ["mbrola-us1", "mbrola-en1"]
    assert cfg.prepare.min_seconds == 1.0 and isinstance(cfg.prepare.min_seconds, float)
    assert cfg.name == "x" and cfg.experiment == "x"
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": [1, 2]}}


@pytest.mark.parametrize("mix", ["phones+0.5*sim-0.5*wer", "-0.5*wer+sim", "0.7*phones+0.3*model"])
def test_a_reward_mix_on_the_command_line_stays_as_written(mix):
    cfg = load_config(TINY, [f"align.reward={mix}", "align.method=grpo", "align.samples_per_prompt=2"])
    assert cfg.align.reward == mix and cfg.flat()["align.reward"] == mix  # the MLflow param, as given


@pytest.mark.parametrize(
    "override, needle",
    [
        ("corpus.nope=1", "corpus.nope"),  # unknown key, named with its section
        ("nope.x=1", "nope"),  # unknown section
        ("codec.n_codebooks=four", "codec.n_codebooks must be int"),
        ("codec.n_codebooks=true", "codec.n_codebooks must be int"),
        ("codec.n_codebooks=0", "codec.n_codebooks must be in [1, 32]"),
        ("prepare.min_seconds=50", "prepare.min_seconds must be > 0 and < prepare.max_seconds"),
        ("corpus.kind=timit", "corpus.kind must be one of"),
        ("corpus.kind=vctk", "corpus.root is required"),
        ("corpus.heldout_voices=[mbrola-us9]", "corpus.heldout_voices must be among corpus.voices"),
        ("corpus.voices=mbrola-us1", "corpus.voices must be a list"),
        ("codec.vocoder=wavenet", "codec.vocoder must be hifigan or griffinlim"),
        ("just-a-word", "must look like dotted.key=value"),
        ("model.heads=16", "head sizes vLLM serves"),
        ("align.reward=bleu", "align.reward must be a term or a weighted sum of terms"),
        ("align.reward=wer", "wer is an error rate (higher is worse): give it a negative weight"),
        ("align.margin_tokens=costs", "align.margin_tokens must be all, phones, errors or frames"),
        ("align.nll_target=sample", "align.nll_target must be chosen or golden"),
        ("serve.model=tiny-policy@latest", "serve.model must be models:/<name>@<alias>"),
        ("serve.model=models:/tiny-policy", "serve.model must be models:/<name>@<alias>"),
        ("pretrain.warm_start_step=100", "pretrain.warm_start_step needs pretrain.warm_start"),
        (
            "pretrain.warm_start_step=6000",
            "pretrain.warm_start_step must be in [0, pretrain.stop_after or pretrain.steps)",
        ),
        ("serve.port=0", "serve.port must be in [1, 65535]"),
        ("eval.gap_utterances=2", "eval.gap_utterances must be 0 (off) or >= 4"),
        ("eval.seeds=0", "eval.utterances and eval.seeds must be >= 1"),
        ("align.rollout_engines=0", "align.rollout_engines must be >= 1"),
        # the evaluation protocol moved under eval.*: the old key names the new one
        ("align.eval_utterances=80", "align.eval_utterances has moved to eval.utterances"),
        ("align.eval_seeds=2", "align.eval_seeds has moved to eval.seeds"),
        ("align.gap_utterances=0", "align.gap_utterances has moved to eval.gap_utterances"),
        # what a role asks Ray for lives under resources.<role>
        ("align.use_gpu=true", "align.use_gpu has moved to resources.learner.num_gpus"),
        ("pretrain.use_gpu=true", "pretrain.use_gpu has moved to resources.pretrain.num_gpus"),
        ("serve.num_cpus=0.5", "serve.num_cpus has moved to resources.serve.num_cpus"),
        ("resources.rollout.num_gpus=-1", "resources.rollout.num_cpus and .num_gpus must be >= 0"),
        ("resources.learner.num_gpus=1.5", "resources.learner.num_gpus must be a fraction <= 1 or a whole number"),
        ("resources.evaluator.resources={GPU: 1}", "resources.evaluator.resources: ask GPU by num_cpus/num_gpus"),
        ("resources.evaluator.resources={cpu_node: 0}", "resources.evaluator.resources.cpu_node must be > 0"),
        ("resources.evaluator.resources=[cpu_node]", "resources.evaluator.resources must be a mapping"),
        ("resources.gpu={num_gpus: 1}", "unknown config key(s) resources.gpu"),
        ("vllm.tensor_parallel_size=2", "resources.rollout.num_gpus must be 2"),
        ("vllm.dtype=int8", "vllm.dtype must be float32, bfloat16 or float16"),
        ("align.workers=3", "align.batch_size (16) must be a multiple of align.workers (3)"),
        ("align.deepspeed=3", "align.deepspeed must be a ZeRO stage (1 or 2) or null"),
    ],
)
def test_bad_values_fail_before_any_work_naming_the_field(override, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(TINY, [override])
    assert needle in str(err.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(TINY, ["codec.stack=1", "corpus.seed=7"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert cfg.flat()["codec.stack"] == 1


def test_roles_take_their_ray_resources_from_config():
    cfg = load_config(
        TINY,
        [
            "resources.rollout={num_gpus: 1, resources: {gpu_node: 0.01}}",
            "resources.learner.num_gpus=1",
            "vllm.tensor_parallel_size=1",
        ],
    )
    assert cfg.resources.rollout.ray_options() == {"num_cpus": 0.0, "num_gpus": 1.0, "resources": {"gpu_node": 0.01}}
    assert cfg.resources.learner.per_worker() == {"CPU": 1.0, "GPU": 1.0}
    assert cfg.resources.pretrain.per_worker() == {"CPU": 1.0}  # today's CPU default: no GPU key at all
    assert cfg.resources.names() == {"gpu_node"}
    assert cfg.flat()["resources.rollout.resources.gpu_node"] == 0.01
