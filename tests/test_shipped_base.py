"""The base model shipped in checkpoints/base, the job that ships one, and using a shipped codec."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open

from sa_ray.codec import load_or_fit_codec
from sa_ray.codec.mel_kmeans import MelKMeansCodec
from sa_ray.config import CodecConfig, ConfigError
from sa_ray.models.ar import load_ar
from sa_ray.models.nar import NARModel
from tests.conftest import REPO

BASE = REPO / "checkpoints" / "base"
SHIPPED = [BASE, REPO / "checkpoints" / "base-big"]  # base-big: the base trained on with 3,000 more sentences


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_base_is_small_complete_and_consistent_with_its_codec(shipped):
    size = sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    ar, vocab = load_ar(shipped / "ar")
    nar = NARModel.from_pretrained(shipped / "nar")
    codec = MelKMeansCodec.load(shipped / "codec")
    assert next(ar.parameters()).dtype == torch.float32  # bf16 on disk, float32 in memory
    assert ar.config.vocab_size == vocab.size and vocab.codebook_size == codec.codebook_size
    assert nar.cfg.n_codebooks == codec.n_codebooks and nar.cfg.n_text_tokens == len(vocab.text_tokens)
    assert vocab.aligned  # trained on the built-in corpus: phones interleaved with their frames


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_base_has_no_file_over_5mb_and_its_weights_are_sharded_bf16(shipped):
    from jobs.ship_base import read_weights

    big = [str(f) for f in shipped.rglob("*") if f.is_file() and f.stat().st_size > 5 * 10**6]
    assert not big, f"files over 5 MB cannot be committed: {big}"
    for model in ("ar", "nar"):
        assert (shipped / model / "model.safetensors.index.json").is_file()
        assert not (shipped / model / "model.safetensors").exists()
        assert {t.dtype for t in read_weights(shipped / model).values()} == {torch.bfloat16}


def test_both_shipped_bases_speak_with_one_vocabulary_and_codec():
    """base-big was trained on from base's weights: a run prepared for one serves the other (make demo BASE=...)."""
    assert load_ar(SHIPPED[0] / "ar")[1] == load_ar(SHIPPED[1] / "ar")[1]
    for f in (SHIPPED[0] / "codec").iterdir():
        assert f.read_bytes() == (SHIPPED[1] / "codec" / f.name).read_bytes(), f.name


def test_ship_base_writes_bf16_that_loads_back_as_the_rounded_weights(
    base_in_process, prepared_in_process, tmp_path, monkeypatch
):
    from jobs import ship_base

    tiny_base = base_in_process
    cfg, _, _ = prepared_in_process
    monkeypatch.setattr(ship_base, "SHARD_SIZE", "100KB")  # the tiny model is sharded like the shipped one
    out = ship_base.main(["--model", str(tiny_base), "--codec", f"{cfg.run_dir}/codec", "--out", str(tmp_path / "b")])
    for model in ("ar", "nar"):
        shards = sorted((out / model).glob("model-*-of-*.safetensors"))
        assert len(shards) > 1 and not (out / model / "model.safetensors").exists(), model
        assert max(f.stat().st_size for f in shards) < 200_000
        for shard in shards:
            with safe_open(shard, "pt") as f:
                assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    original, _ = load_ar(tiny_base / "ar")
    shipped, _ = load_ar(out / "ar")
    for (name, a), (_, b) in zip(original.state_dict().items(), shipped.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    original_nar, shipped_nar = NARModel.from_pretrained(tiny_base / "nar"), NARModel.from_pretrained(out / "nar")
    for name, a in original_nar.state_dict().items():
        assert torch.equal(a.to(torch.bfloat16).float(), shipped_nar.state_dict()[name]), name
    sharded = tmp_path / "sharded"  # a base model whose weights are sharded already ships as well
    for model in ("ar", "nar"):
        shutil.copytree(out / model, sharded / model)
    again = ship_base.main(["--model", str(sharded), "--codec", str(out / "codec"), "--out", str(tmp_path / "again")])
    assert torch.equal(NARModel.from_pretrained(again / "nar").head_weight, shipped_nar.head_weight)
    assert (out / "codec" / "codec.json").is_file()
    with pytest.raises(FileNotFoundError, match="no fitted codec"):
        ship_base.main(["--model", str(tiny_base), "--codec", str(tmp_path), "--out", str(tmp_path / "c")])


def test_a_shipped_codec_is_used_as_is_and_checked_against_the_config(tmp_path):
    cfg = CodecConfig(path=str(BASE / "codec"))  # the defaults: 8 x 256, stack 2, as shipped
    codec = load_or_fit_codec(cfg, tmp_path / "codec", 0, training_audio=lambda: pytest.fail("must not fit"))
    assert (tmp_path / "codec" / "codec.json").is_file() and codec.n_codebooks == 8
    with pytest.raises(ConfigError, match="codec.path=.* is a 8 x 256 codec"):
        load_or_fit_codec(CodecConfig(path=str(BASE / "codec"), n_codebooks=4), tmp_path / "c2", 0, lambda: [])
