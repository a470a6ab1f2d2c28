"""pretrain: supervised training of the AR and NAR codec LMs on golden tokens (the "weak" base model).

    python -m jobs.pretrain --config configs/tiny.yaml pretrain.steps=3000
    ray job submit --working-dir . -- python -m jobs.pretrain --config configs/tiny.yaml

Runs on Ray Train (`TorchTrainer`; DDP over gloo on CPU). Re-running the same command resumes from
the latest checkpoint under <run_dir>/pretrain/ray. The base model lands in <run_dir>/pretrain/model
(ar/: HF safetensors + vocab.json, loads in vLLM; nar/) and is registered in MLflow. With
`pretrain.init_from=DIR` (e.g. the shipped checkpoint) training is skipped: DIR becomes the base model and
is evaluated. With `pretrain.warm_start=DIR pretrain.warm_start_step=N` training goes on from DIR's weights at
step N of the schedule (fresh optimiser moments, re-warmed): e.g. the shipped base, which stopped at 2,500.
The model is registered in MLflow as `<config name>-base`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from jobs import _cli
from sa_ray import atomic, tracking
from sa_ray.data.examples import build_vocab
from sa_ray.data.prepare import require_prepared
from sa_ray.models import base_model_dir


def train(cfg, run_dir: Path, summary: dict, run_id: str) -> Path:
    """Fits the models on Ray Train; returns the exported model directory of the final checkpoint."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from actors.placement import train_backend
    from actors.pretrainer import train_loop

    data = run_dir / "data"
    meta = pq.read_table(data / "train", columns=["text_norm", "phones", "phone_ms"]).to_pylist()
    codec = summary["codec"]
    workers = cfg.pretrain.workers
    datasets = {
        "train": ray.data.read_parquet(str(data / "train")),
        "heldout": ray.data.read_parquet(str(data / "heldout_sentences")),
    }
    for ds in datasets.values():  # workers read them with the dataset's own DataContext: no bar per worker
        ds.context.enable_progress_bars = False
    res = cfg.resources.pretrain
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "model": cfg.model.__dict__,
            "pretrain": cfg.pretrain.__dict__,
            "vocab": build_vocab(meta, codec["codebook_size"]),
            "n_codebooks": codec["n_codebooks"],
            "frame_rate": codec["frame_rate"],
            "prompt_frames": cfg.model.prompt_frames(codec["frame_rate"]),
            "tracking_uri": tracking.resolve_uri(cfg.tracking.uri),
            "run_id": run_id,
            "threads": max(1, int(ray.available_resources().get("CPU", 1)) // workers),
            "num_gpus": res.num_gpus,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=res.num_gpus > 0, resources_per_worker=res.per_worker()
        ),
        torch_config=TorchConfig(backend=train_backend(res)),
        run_config=RunConfig(
            name="ray",
            storage_path=str((run_dir / "pretrain").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.pretrain.max_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),  # each worker takes its rows by id hash
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:  # the previous export stays until this one is whole
        return atomic.copy_in(Path(d) / "model", run_dir / "pretrain" / "model")


def evaluate(cfg, run_dir: Path, model_dir: Path) -> dict[str, dict]:
    """WER/SIM of synthesised held-out speech (offline ASR and speaker encoder), per held-out set."""
    from sa_ray.codec import load_codec
    from sa_ray.evaluation import evaluate_heldout, heldout_tables, prompt_banks
    from sa_ray.metrics.backends import make_asr, make_sim
    from sa_ray.synthesis import CodecTTS, Spelling

    codec = load_codec(cfg.codec, run_dir / "codec")
    tts = CodecTTS.load(model_dir, codec, Spelling.of_config(cfg))
    asr, sim = make_asr(cfg.eval.asr, run_dir / "data", cfg.corpus), make_sim(cfg.eval.sim)
    tables = heldout_tables(run_dir / "data")
    banks = prompt_banks(tables, cfg.model.prompt_frames(codec.frame_rate), codec.n_codebooks)
    return evaluate_heldout(tts, tables, banks, cfg.pretrain.eval_utterances, asr, sim, seed=cfg.pretrain.seed)


def main(argv: list[str] | None = None) -> dict:
    cfg, args = _cli.parse(argv, __doc__.splitlines()[0])
    run_dir = Path(cfg.run_dir)
    summary = require_prepared(run_dir)
    if cfg.pretrain.warm_start:  # absolute: the Ray Train workers read it
        cfg.pretrain.warm_start = str(base_model_dir(cfg, cfg.pretrain.warm_start, "set pretrain.warm_start to one"))

    with tracking.job_run(cfg, "pretrain", args.run_id) as run:
        if cfg.pretrain.init_from:  # e.g. the shipped base model: it becomes this run's model, untrained further
            model_dir = run_dir / "pretrain" / "model"  # (a copy: no Ray started for it)
            if Path(cfg.pretrain.init_from).resolve() != model_dir.resolve():
                atomic.copy_in(cfg.pretrain.init_from, model_dir, ignore=shutil.ignore_patterns("codec"))
        else:
            _cli.init_ray(cfg)
            model_dir = train(cfg, run_dir, summary, run.info.run_id)
        tracking.log_artifact(model_dir, "model")
        tracking.register_model(f"{cfg.name}-base", run.info.run_id, "model", ["latest"])
        metrics = evaluate(cfg, run_dir, model_dir) if cfg.pretrain.eval_utterances else {}
        tracking.log_metrics({f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items()})
    print(f"\nbase model: {model_dir}")
    if not metrics:
        return {"model_dir": str(model_dir), "metrics": metrics}
    print(
        f"{'held-out set':<18} {'n':>4} {'WER':>6} {'ceiling':>8} {'SIM':>6} {'SIM other':>9} {'dur':>5} {'no EOS':>7}"
    )
    for split, m in metrics.items():
        print(
            f"{split:<18} {m['n']:>4} {m['wer']:>6.3f} {m['golden_wer']:>8.3f} {m['sim']:>6.3f} "
            f"{m.get('sim_other_speaker', float('nan')):>9.3f} {m['duration_ratio']:>5.2f} {m['eos_failure_rate']:>7.2f}"
        )
    return {"model_dir": str(model_dir), "metrics": metrics}


if __name__ == "__main__":
    _cli.run(main)
