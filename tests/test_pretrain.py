"""The codec LM's supervised training: loss masking, exact resume, and the Ray Train job end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sa_ray.data.examples import PromptBank, ar_example, build_vocab, row_codes
from sa_ray.models.ar import IGNORE
from sa_ray.models.vocab import SEP, SPEECH
from tests.conftest import tiny_trainer

TINY_MODEL = [
    "model.hidden=64",
    "model.layers=2",
    "model.heads=2",
    "model.intermediate=128",
    "model.nar_hidden=64",
    "model.nar_layers=1",
    "model.nar_heads=2",
    "model.prompt_seconds=1.0",
]


@pytest.fixture(scope="module")
def train_rows(prepared_in_process):
    cfg, _, _ = prepared_in_process
    return pq.read_table(Path(cfg.run_dir) / "data" / "train").to_pylist()


def test_loss_covers_only_the_target(train_rows):
    row = train_rows[0]
    vocab = build_vocab(train_rows, 32)
    assert vocab.aligned  # MBROLA rows carry phone durations
    prompt = PromptBank.from_rows(train_rows, 20, 2).draw(row["speaker"], row["utt_id"], __import__("random").Random(0))
    ex = ar_example(row, prompt, vocab, 43.066)
    ids, labels = np.array(ex["input_ids"]), np.array(ex["labels"])
    speech = int(np.argmax(ids == SPEECH))
    assert (labels[: speech + 1] == IGNORE).all()  # text, SEP, prompt codes, SPEECH: no loss
    assert (labels[speech + 1 :] == ids[speech + 1 :]).all()  # every target token and EOS: loss
    assert ids[len(row["phones"]) + 1] == SEP
    # the target spells each phone once, followed by its frames; the codes are the golden layer 0
    codes, owner, ended = vocab.parse_target(ids[speech + 1 :])
    assert ended and (codes == row_codes(row)[0]).all()
    assert vocab.is_text(ids[speech + 1 :]).sum() == len(row["phones"])


def test_resumed_training_reproduces_the_uninterrupted_run(train_rows, tmp_path):
    torch.set_num_threads(1)
    straight = tiny_trainer(train_rows, steps=12, batch_size=4)
    losses = [straight.train_step()["ar_loss"] for _ in range(10)]

    first = tiny_trainer(train_rows, steps=12, batch_size=4)
    for _ in range(6):
        first.train_step()
    first.save(tmp_path / "ckpt")
    del first
    resumed = tiny_trainer(train_rows, steps=12, batch_size=4, seed=0)
    resumed.load(tmp_path / "ckpt")
    assert resumed.step_count == 6
    again = [resumed.train_step()["ar_loss"] for _ in range(4)]
    assert again == losses[6:]  # bit for bit: weights, Adam moments, schedule, RNG and data position


def test_warm_start_goes_on_where_the_saved_model_stopped(train_rows, tmp_path):
    """The shipped base keeps weights only: a warm start takes them and the run's data order and schedule at
    the step it stopped, with fresh moments ramped up again (warmup_steps=2 in tiny_trainer)."""
    torch.set_num_threads(1)
    straight = tiny_trainer(train_rows, steps=12, batch_size=4)
    for _ in range(6):
        straight.train_step()
    straight.export(tmp_path / "model")
    lr_at = {6: straight.stepper.lr}

    warm = tiny_trainer(train_rows, steps=12, batch_size=4, warm_start=str(tmp_path / "model"), warm_start_step=6)
    warm.warm_start(tmp_path / "model", 6)
    assert (warm.step_count, warm.epoch, warm.position) == (straight.step_count, straight.epoch, straight.position)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(warm.model.state_dict()[name], tensor), name
    assert warm.stepper.lr == pytest.approx(lr_at[6] / 2)  # first of the two re-warmup steps
    ar_straight, _ = straight.next_batch()
    ar_warm, _ = warm.next_batch()
    assert torch.equal(ar_warm["input_ids"], ar_straight["input_ids"])  # the same rows, prompts, order
    straight.train_step(), warm.train_step()  # step 7 (after the batch above): the ramp is over
    assert warm.stepper.lr == pytest.approx(straight.stepper.lr) and warm.step_count == straight.step_count == 7

    other = build_vocab(train_rows, 16)  # a model whose codes mean something else
    other.save(tmp_path / "model" / "ar")
    with pytest.raises(ValueError, match="not this run's vocabulary"):
        tiny_trainer(train_rows, steps=12, batch_size=4).warm_start(tmp_path / "model", 6)


def test_bf16_autocast_only_where_the_device_multiplies_bf16(train_rows, monkeypatch):
    import warnings

    import sa_ray.pretrain as pretrain_lib

    monkeypatch.setattr(pretrain_lib, "native_bf16", lambda device: False)  # an AVX2-only CPU: bf16 is emulated
    with pytest.warns(UserWarning, match="pretrain.bf16"):
        emulated = tiny_trainer(train_rows, steps=2, batch_size=4, bf16=True)
    with emulated._autocast():
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(pretrain_lib, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        native = tiny_trainer(train_rows, steps=2, batch_size=4, bf16=True)
    with native._autocast():
        assert torch.is_autocast_enabled("cpu")


def test_batches_follow_the_model_to_its_device(train_rows):
    """Ray Train's prepare_model moves the model to the worker's GPU (resources.pretrain.num_gpus); the batches, collated on
    the CPU, must follow it. No GPU here: the meta device stands in for "not where collate made them"."""
    trainer = tiny_trainer(train_rows, steps=2, batch_size=4, wrap=lambda m: m.to("meta"))
    ar_batch, nar_batch = trainer.next_batch()
    assert {t.device.type for t in [*ar_batch.values(), *nar_batch.values()]} == {"meta"}
    assert trainer.device_type == "meta"


@pytest.mark.slow
def test_the_in_process_slice_is_what_the_prepare_job_writes(prepared_in_process, prepared_tiny):
    """The unit tier trains on conftest's prepare_in_process (jobs.prepare's library calls without Ray Data):
    it must be the job's slice, so that what the unit tests show holds for the job's data. The same summary
    (fingerprint included), codec and rows, split by split."""
    from sa_ray.codec.mel_kmeans import MelKMeansCodec
    from sa_ray.data.prepare import SPLITS

    (local, _, local_summary), (job, _, job_summary) = prepared_in_process, prepared_tiny
    assert local_summary == job_summary
    local_dir, job_dir = Path(local.run_dir), Path(job.run_dir)
    assert MelKMeansCodec.load(local_dir / "codec").content_hash == MelKMeansCodec.load(job_dir / "codec").content_hash
    for split in (*SPLITS, "quarantine"):
        rows = pq.read_table(local_dir / "data" / split).to_pylist()
        assert rows == pq.read_table(job_dir / "data" / split).to_pylist(), split
        assert rows or split == "quarantine", split


@pytest.mark.slow
def test_pretrain_job_trains_on_ray_exports_and_evaluates(prepared_tiny, tmp_path, capsys):
    from jobs import pretrain
    from sa_ray import tracking
    from sa_ray.models.ar import load_ar
    from sa_ray.models.nar import NARModel

    cfg, argv, _ = prepared_tiny
    argv = [
        *argv,
        *TINY_MODEL,
        "pretrain.steps=40",
        "pretrain.batch_size=8",
        "pretrain.eval_every=20",
        "pretrain.checkpoint_every=20",
        "pretrain.warmup_steps=5",
        "pretrain.lr=3e-3",
        "pretrain.eval_utterances=3",
    ]
    out = pretrain.main(argv)
    model_dir = Path(out["model_dir"])
    ar, vocab = load_ar(model_dir / "ar")
    assert ar.config.vocab_size == vocab.size and (model_dir / "ar" / "model.safetensors").is_file()
    NARModel.from_pretrained(model_dir / "nar")
    m = out["metrics"]
    assert set(m) == {"heldout_sentences", "heldout_voices"}
    for split in m.values():
        assert 0.0 <= split["wer"] and -1.0 <= split["sim"] <= 1.0 and split["n"] == 3
    assert "WER" in capsys.readouterr().out

    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(cfg.experiment)
    run = client.search_runs(
        [exp.experiment_id], filter_string="tags.`sa_ray.job` = 'pretrain'", order_by=["start_time DESC"]
    )[0]
    heldout = [h.value for h in client.get_metric_history(run.info.run_id, "heldout_ar_loss")]
    assert len(heldout) == 2 and heldout[-1] < heldout[0]  # training lowers the held-out loss
    assert "heldout_sentences_wer" in run.data.metrics

    # re-running the same command resumes from the latest checkpoint: here, the finished run's last one,
    # so nothing trains again and the exported model is the same
    weights = (model_dir / "ar" / "model.safetensors").read_bytes()
    pretrain.main(argv)
    rerun = client.search_runs(
        [exp.experiment_id], filter_string="tags.`sa_ray.job` = 'pretrain'", order_by=["start_time DESC"]
    )[0]
    assert rerun.info.run_id != run.info.run_id and "ar_loss" not in rerun.data.metrics
    assert (model_dir / "ar" / "model.safetensors").read_bytes() == weights

    # a new run warm-started from the exported model: its held-out curve starts where the first run's ended
    warm_dir = tmp_path / "warm"
    for part in ("data", "codec"):
        shutil.copytree(Path(cfg.run_dir) / part, warm_dir / part)
    pretrain.main(
        [
            *argv,
            f"run_dir={warm_dir}",
            "pretrain.steps=60",
            f"pretrain.warm_start={model_dir}",
            "pretrain.warm_start_step=40",
            "pretrain.eval_utterances=0",
        ]
    )
    warm = client.search_runs(
        [exp.experiment_id], filter_string="tags.`sa_ray.job` = 'pretrain'", order_by=["start_time DESC"]
    )[0]
    curve = {h.step: h.value for h in client.get_metric_history(warm.info.run_id, "heldout_ar_loss")}
    assert sorted(curve) == [40, 60] and curve[40] == pytest.approx(heldout[-1], abs=1e-5)

    # synthesis of one sentence through the job: a wav of plausible length for the text
    from jobs import synthesize
    from sa_ray.audio import read_wav
    from sa_ray.corpus.voices import Voice

    text = "The cat sat on the mat."
    wav_path = synthesize.main(
        [
            "--config",
            argv[1],
            "--text",
            text,
            "--speaker",
            "mbrola-us2",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "cat.wav"),
            *argv[2:],
        ]
    )
    wav, sr = read_wav(wav_path)
    expected = sum(Voice.parse("mbrola-us1").phones(text)[1]) / 1000
    assert 0.05 < len(wav) / sr <= 2.5 * expected


def test_init_from_makes_a_given_model_the_runs_base_without_starting_ray(
    prepared_in_process, base_in_process, tmp_path
):
    """`make demo`'s second step: the shipped model copied in as the run's base and registered; a copy needs no
    Ray (the unit tier fails a test that leaves Ray running)."""
    import sys

    from jobs import pretrain
    from sa_ray import tracking
    from tests.conftest import copy_prepared, mlflow_store

    cfg, argv, _ = prepared_in_process
    run_dir, uri = copy_prepared(cfg.run_dir, tmp_path), mlflow_store(tmp_path / "mlflow.db")
    out = pretrain.main(
        [*argv, f"run_dir={run_dir}", f"pretrain.init_from={base_in_process}", "pretrain.eval_utterances=0",
         f"tracking.uri={uri}"]
    )  # fmt: skip
    model_dir = Path(out["model_dir"])
    assert model_dir == run_dir / "pretrain" / "model" and out["metrics"] == {}
    given = {p.relative_to(base_in_process): p.read_bytes() for p in base_in_process.rglob("*") if p.is_file()}
    assert given and {p: (model_dir / p).read_bytes() for p in given} == given
    assert tracking.alias_version(f"{cfg.name}-base", "latest", uri) is not None
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
