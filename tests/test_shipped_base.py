"""The base model shipped in checkpoints/base, the job that ships one, and using a shipped codec."""

from __future__ import annotations

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


def test_shipped_base_is_small_complete_and_consistent_with_its_codec():
    size = sum(f.stat().st_size for f in BASE.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    ar, vocab = load_ar(BASE / "ar")
    nar = NARModel.from_pretrained(BASE / "nar")
    codec = MelKMeansCodec.load(BASE / "codec")
    assert next(ar.parameters()).dtype == torch.float32  # bf16 on disk, float32 in memory
    assert ar.config.vocab_size == vocab.size and vocab.codebook_size == codec.codebook_size
    assert nar.cfg.n_codebooks == codec.n_codebooks and nar.cfg.n_text_tokens == len(vocab.text_tokens)
    assert vocab.aligned  # trained on the built-in corpus: phones interleaved with their frames


def test_ship_base_writes_bf16_that_loads_back_as_the_rounded_weights(tiny_base, prepared_tiny, tmp_path):
    from jobs import ship_base

    cfg, _, _ = prepared_tiny
    out = ship_base.main(["--model", str(tiny_base), "--codec", f"{cfg.run_dir}/codec", "--out", str(tmp_path / "b")])
    with safe_open(out / "ar" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    original, _ = load_ar(tiny_base / "ar")
    shipped, _ = load_ar(out / "ar")
    for (name, a), (_, b) in zip(original.state_dict().items(), shipped.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    assert (out / "codec" / "codec.json").is_file()
    with pytest.raises(FileNotFoundError, match="no fitted codec"):
        ship_base.main(["--model", str(tiny_base), "--codec", str(tmp_path), "--out", str(tmp_path / "c")])


def test_a_shipped_codec_is_used_as_is_and_checked_against_the_config(tmp_path):
    cfg = CodecConfig(path=str(BASE / "codec"))  # the defaults: 8 x 256, stack 2, as shipped
    codec = load_or_fit_codec(cfg, tmp_path / "codec", 0, training_audio=lambda: pytest.fail("must not fit"))
    assert (tmp_path / "codec" / "codec.json").is_file() and codec.n_codebooks == 8
    with pytest.raises(ConfigError, match="codec.path=.* is a 8 x 256 codec"):
        load_or_fit_codec(CodecConfig(path=str(BASE / "codec"), n_codebooks=4), tmp_path / "c2", 0, lambda: [])
