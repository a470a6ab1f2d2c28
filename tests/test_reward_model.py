"""The learned reward model (`sa_ray.reward_model`, `actors/reward_model.py`, `jobs.reward_model`): the
Bradley-Terry loss, the held-out split by sentence, golden told from the tiny base's samples on sentences never
trained on, the checkpoint round trip, and the job's bad input."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import _cli
from jobs import reward_model as job
from sa_ray import reward_model as rm
from sa_ray.config import RewardModelConfig
from sa_ray.data.examples import PromptBank
from sa_ray.lineage import LineageError
from sa_ray.models.vocab import Vocab
from sa_ray.preference import commit_pairs, golden_pairs, rollout_requests
from tests.conftest import REPO, mlflow_store

# seconds on one thread: 30 steps of 8 pairs (held-out accuracy 0.9-1.0 over seeds 0-4; 20 steps: 0.85-0.95)
TINY = RewardModelConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, heldout_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def pairs(prepared_in_process, base_in_process) -> list[dict]:
    """Golden vs synthetic on the tiny slice: every training utterance's golden target is chosen, the tiny base's
    own sample of the same prompt rejected (42 sentences in 2 voices)."""
    from sa_ray.engines.torch_engine import TorchEngine

    cfg, _, _ = prepared_in_process
    rows = pq.read_table(Path(cfg.run_dir) / "data" / "train").to_pylist()
    vocab = Vocab.load(base_in_process / "ar")
    bank = PromptBank.from_rows(rows, 20, 1)
    reqs = rollout_requests(rows, vocab, bank, 43.066, 0, seed=0, samples=1, max_len=1024)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outs = TorchEngine(base_in_process / "ar", max_model_len=1024).generate(
            [r["prompt_ids"] for r in reqs],
            vocab.generation_ids(),
            2,
            [r["budget"] for r in reqs],
            [r["seed"] for r in reqs],
        )
    finally:
        torch.set_num_threads(threads)
    return golden_pairs([{**r, "sample_ids": o} for r, o in zip(reqs, outs)])


@pytest.fixture(scope="module")
def trained(pairs, base_in_process):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return rm.train(base_in_process, pairs, TINY, made_from={"base_fingerprint": "f00d", "config": "test"})
    finally:
        torch.set_num_threads(threads)


def test_bradley_terry_loss_and_gradient_match_a_hand_computation():
    chosen = torch.tensor([1.5, -0.25, 0.0, 3.0], requires_grad=True)
    rejected = torch.tensor([0.5, 0.75, 0.0, -1.0], requires_grad=True)
    loss = rm.bradley_terry_loss(chosen, rejected)
    loss.backward()
    margins = [1.0, -1.0, 0.0, 4.0]
    assert float(loss.detach()) == pytest.approx(sum(math.log(1 + math.exp(-m)) for m in margins) / 4, rel=1e-6)
    # d/dr_chosen of -log sigmoid(m) / n is -sigmoid(-m) / n; the rejected's is its negative
    by_hand = [-1 / (1 + math.exp(m)) / 4 for m in margins]
    assert chosen.grad.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert rejected.grad.tolist() == pytest.approx([-g for g in by_hand], rel=1e-6)


def test_the_held_out_split_keeps_each_sentence_on_one_side(pairs):
    train, heldout = rm.split_pairs(pairs, 0.25, seed=0)
    assert len(train) + len(heldout) == len(pairs) and heldout
    sentences = [{rm.sentence_key(p) for p in side} for side in (train, heldout)]
    utts = [{p["utt_id"] for p in side} for side in (train, heldout)]
    assert not sentences[0] & sentences[1] and not utts[0] & utts[1]
    assert len(sentences[1]) == round(0.25 * len(sentences[0] | sentences[1]))
    # each sentence is spoken by two voices here: both of its utterances go to the same side
    assert len(utts[1]) == 2 * len(sentences[1])
    shuffled = random.Random(1).sample(pairs, len(pairs))
    assert {p["utt_id"] for p in rm.split_pairs(shuffled, 0.25, seed=0)[1]} == utts[1]  # not the order's doing
    assert {p["utt_id"] for p in rm.split_pairs(pairs, 0.25, seed=1)[1]} != utts[1]
    assert rm.split_pairs(pairs, 0.0, seed=0) == (pairs, [])
    one_sentence = [p for p in pairs if rm.sentence_key(p) == rm.sentence_key(pairs[0])]
    with pytest.raises(rm.PairSetError, match="at least 2 are needed"):
        rm.split_pairs(one_sentence, 0.25, seed=0)


def test_the_reward_model_tells_golden_from_synthetic_on_sentences_never_trained_on(trained):
    model, report = trained
    history = report["history"]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a zero head scores everything 0
    assert report["heldout_pairs"] >= 16 and report["heldout_sentences"] >= 8
    assert report["heldout_accuracy"] >= 0.8, report  # chance is 0.5
    assert report["heldout_loss"] < math.log(2) and report["heldout_margin"] > 0
    assert sum(h["loss"] for h in history[-5:]) / 5 < 0.6 * math.log(2)


def test_a_saved_reward_model_scores_the_same_after_loading(trained, pairs, base_in_process, tmp_path):
    from actors.reward_model import RewardModelRole

    model, report = trained
    prompts, targets = [p["prompt_ids"] for p in pairs[:10]], [p["rejected_ids"] for p in pairs[:10]]
    before = model.score(prompts, targets)
    model.save(tmp_path / "rm")
    assert {p.name for p in (tmp_path / "rm").iterdir()} == {rm.WEIGHTS, rm.INFO, "lineage.json"}
    role = RewardModelRole(str(tmp_path / "rm"), base_fingerprint="f00d")
    assert role.score(prompts, targets) == before
    info = role.info()
    assert info["heldout_accuracy"] == report["heldout_accuracy"] and info["pairs"] == len(pairs)
    assert info["base_dir"] == str(base_in_process) and info["made_from"]["base_fingerprint"] == "f00d"
    assert RewardModelConfig(**info["settings"]) == TINY
    with pytest.raises(LineageError, match="f00d"):
        rm.RewardModel.load(tmp_path / "rm", base_fingerprint="another")


def test_best_of_by_the_reward_model_keeps_its_highest_scored_candidate(trained, pairs, tmp_path):
    """best_of's reward_model scorer: the model's scores of each candidate's (prompt, target), the argmax kept; on
    held-out sentences it keeps the golden target over the base's own sample."""
    from sa_ray import best_of
    from sa_ray.config import load_config

    model, _ = trained
    scorer = best_of.RewardModelScorer(model)
    _, heldout = rm.split_pairs(pairs, 0.25, seed=0)
    kept = []
    for p in heldout:
        candidates = [
            best_of.Candidate(None, p["prompt_ids"], side, []) for side in (p["rejected_ids"], p["chosen_ids"])
        ]
        scores = scorer.scores(candidates)
        assert scores == model.score([p["prompt_ids"]] * 2, [p["rejected_ids"], p["chosen_ids"]])
        kept.append(best_of.choose(scores))
    assert sum(kept) >= 0.8 * len(kept)  # index 1, the golden target, mostly
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"run_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="python -m jobs.reward_model"):
        rm.checkpoint_dir(cfg)
    model.save(tmp_path / "reward_model")
    assert rm.checkpoint_dir(cfg) == tmp_path / "reward_model"


def test_the_job_names_what_is_missing_in_one_line(base_in_process, tmp_path, capsys):
    """Before Ray starts: no pair set in the run, a directory that is not a committed pair set, an empty one."""
    argv = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        f"run_dir={tmp_path / 'run'}",
        f"align.base_model={base_in_process}",
    ]
    empty = tmp_path / "pairs_empty"
    (staging := tmp_path / "staging").mkdir()
    commit_pairs(staging, empty, {})
    for extra, needle in [
        ([], f"no committed pair set in {tmp_path / 'run' / 'align' / 'pairs'}"),
        (["--pairs", str(tmp_path)], f"{tmp_path} is not a committed pair set"),
        (["--pairs", str(empty)], f"no preference pairs in {empty}"),
    ]:
        with pytest.raises(SystemExit) as stop:
            _cli.run(job.main, [*argv, *extra])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and needle in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_job_trains_saves_and_registers_the_reward_model(pairs, base_in_process, tmp_path, ray_local, capsys):
    from sa_ray import tracking

    run_dir = tmp_path / "run"
    (staging := tmp_path / "staging").mkdir()
    pq.write_table(pa.Table.from_pylist(pairs), staging / "part-0.parquet")
    (run_dir / "align" / "pairs").mkdir(parents=True)
    commit_pairs(staging, run_dir / "align" / "pairs" / "iter_0", {})
    uri = mlflow_store(tmp_path / "mlflow.db")
    out = job.main(
        [
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            f"run_dir={run_dir}",
            f"align.base_model={base_in_process}",
            f"tracking.uri={uri}",
            *(f"reward_model.{k}={v}" for k, v in [("steps", 4), ("batch_size", 4), ("heldout_fraction", 0.25)]),
        ]
    )
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "registered as tiny-reward version 1" in printed
    assert (run_dir / "reward_model" / rm.WEIGHTS).is_file() and out["report"]["heldout_pairs"] > 0
    tags = tracking.version_tags("tiny-reward", out["version"], tracking.resolve_uri(uri))
    assert tags["sa_ray.heldout_accuracy"] == str(out["report"]["heldout_accuracy"])
    assert (
        tags["sa_ray.base_fingerprint"] == rm.RewardModel.load(run_dir / "reward_model").made_from["base_fingerprint"]
    )
