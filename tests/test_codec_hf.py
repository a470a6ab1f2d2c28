"""HFCodec on tiny randomly initialised EnCodec and Mimi models (no weights, no network)."""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from sa_ray.audio import resample
from sa_ray.codec.hf_codec import HFCodec

# Tiny but real architectures: full-size rates (24 kHz; 75 Hz / 12.5 Hz frames), few channels.
TINY = {
    "encodec": dict(
        num_filters=4, hidden_size=16, num_lstm_layers=1, codebook_size=64, target_bandwidths=[0.75, 1.5, 3.0]
    ),  # 1, 3, 6 layers (6 bits at 75 Hz = 450 bps)
    "mimi": dict(
        num_filters=4,
        hidden_size=16,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_hidden_layers=1,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        upsample_groups=16,
        num_quantizers=4,
        codebook_size=64,
    ),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(kind: str, **kwargs) -> HFCodec:
    return HFCodec.from_config(kind, n_codebooks=4, **kwargs, **TINY[kind])


def speechlike(sr: int, seconds: float = 1.0, seed: int = 1) -> np.ndarray:
    """A gliding harmonic tone with a syllable-rate envelope and a little noise."""
    t = np.arange(int(sr * seconds)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.2 * tone + 0.01 * noise).astype(np.float32)


@pytest.fixture(scope="module", params=["encodec", "mimi"])
def codec(request) -> HFCodec:
    return tiny(request.param)


def test_attributes(codec: HFCodec):
    assert codec.sample_rate == 24000
    assert codec.frame_rate == {"encodec": 75.0, "mimi": 12.5}[codec.kind]
    assert codec.n_codebooks == 4 and codec.codebook_size == 64


def test_encode_shapes_and_codebooks_initialised(codec: HFCodec):
    codes = codec.encode(speechlike(24000, 2.0), 24000)
    assert codes.dtype == np.int64
    assert codes.shape[0] == 4
    assert abs(codes.shape[1] - 2.0 * codec.frame_rate) <= 1
    assert codes.min() >= 0 and codes.max() < codec.codebook_size
    for layer in codes:  # zero-initialised codebooks would give one code everywhere
        assert len(np.unique(layer)) > 3


def test_encode_is_deterministic_and_seeded(codec: HFCodec):
    wav = speechlike(24000)
    assert np.array_equal(codec.encode(wav, 24000), codec.encode(wav, 24000))
    assert np.array_equal(tiny(codec.kind).encode(wav, 24000), codec.encode(wav, 24000))
    assert not np.array_equal(tiny(codec.kind, seed=1).encode(wav, 24000), codec.encode(wav, 24000))


def test_fewer_codebooks_are_a_prefix(codec: HFCodec):
    wav = speechlike(24000)
    two = HFCodec.from_config(codec.kind, n_codebooks=2, **TINY[codec.kind])
    assert two.n_codebooks == 2
    assert np.array_equal(two.encode(wav, 24000), codec.encode(wav, 24000)[:2])


def test_decode_length_and_dtype(codec: HFCodec):
    codes = codec.encode(speechlike(24000), 24000)
    hop = codec.sample_rate / codec.frame_rate
    for layers in (codes, codes[:1]):  # decoding the first k layers is allowed
        wav = codec.decode(layers)
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert abs(len(wav) - codes.shape[1] * hop) <= hop
        assert np.isfinite(wav).all()
    assert codec.decode(codes[:, :0]).shape == (0,)


def test_save_and_load_gives_identical_codes(codec: HFCodec, tmp_path):
    codec.save_pretrained(tmp_path / "codec")
    assert (tmp_path / "codec" / "config.json").is_file()
    assert list((tmp_path / "codec").glob("*.safetensors"))
    loaded = HFCodec.from_pretrained(tmp_path / "codec", n_codebooks=4)
    assert loaded.kind == codec.kind
    assert (loaded.sample_rate, loaded.frame_rate, loaded.codebook_size) == (
        codec.sample_rate,
        codec.frame_rate,
        codec.codebook_size,
    )
    wav = speechlike(24000)
    codes = codec.encode(wav, 24000)
    assert np.array_equal(loaded.encode(wav, 24000), codes)
    np.testing.assert_allclose(loaded.decode(codes), codec.decode(codes), atol=1e-6)


def test_other_sample_rates_are_resampled(codec: HFCodec):
    wav16k = speechlike(16000)
    codes = codec.encode(wav16k, 16000)
    assert abs(codes.shape[1] - codec.frame_rate) <= 1
    assert np.array_equal(codes, codec.encode(resample(wav16k, 16000, 24000), 24000))
    stereo = np.stack([wav16k, wav16k], axis=1)  # soundfile layout [samples, channels]
    assert np.array_equal(codec.encode(stereo, 16000), codes)


def test_bad_inputs_raise(codec: HFCodec):
    codes = codec.encode(speechlike(24000, 0.5), 24000)
    for bad in (np.full_like(codes, codec.codebook_size), np.full_like(codes, -1)):
        with pytest.raises(ValueError, match="codes must lie in"):
            codec.decode(bad)
    with pytest.raises(ValueError, match="layers"):
        codec.decode(np.concatenate([codes, codes]))
    with pytest.raises(ValueError, match="non-empty"):
        codec.encode(np.zeros(0, np.float32), 24000)


def test_encodec_layer_choice():
    assert tiny("encodec").bandwidth == 3.0
    assert HFCodec.from_config("encodec", **TINY["encodec"]).n_codebooks == 1  # transformers' default
    assert HFCodec.from_config("encodec", bandwidth=1.5, **TINY["encodec"]).n_codebooks == 3
    with pytest.raises(ValueError, match="does not fit"):
        HFCodec.from_config("encodec", bandwidth=1.5, n_codebooks=4, **TINY["encodec"])
    with pytest.raises(ValueError, match="bandwidth must be one of"):
        HFCodec.from_config("encodec", bandwidth=6.0, **TINY["encodec"])
    with pytest.raises(ValueError, match="exceeds"):
        HFCodec.from_config("encodec", n_codebooks=7, **TINY["encodec"])
    with pytest.raises(ValueError, match="bandwidth applies to EnCodec only"):
        HFCodec.from_config("mimi", bandwidth=1.5, **TINY["mimi"])


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "no_such_codec"
    with pytest.raises(FileNotFoundError, match="no_such_codec"):
        HFCodec.from_pretrained(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        HFCodec.from_pretrained(tmp_path / "empty")


def test_unreachable_hub_id_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import; flip its constant too so no request is made.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"no-such-org/no-such-codec(.|\n)*local path"):
        HFCodec.from_pretrained("no-such-org/no-such-codec")
